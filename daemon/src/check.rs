//! `surpdb check DIR`: verify a segment without changing it (safe while the daemon runs, though
//! then counts may move under the check). Every index slot must point at a valid record inside
//! the heap's live window, reachable from its home slot, once; the log from tail to head must
//! parse; the header's counters must match.

#![deny(unsafe_code)]

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::client::data_path;
use crate::error::Result;
use crate::layout::*;
use crate::segment::Segment;

/// What the check found. `problems` lists at most 100 descriptions; `problem_count` all.
#[derive(Debug, Default)]
pub struct Report {
    pub items: u64,
    pub live_bytes: u64,
    pub header_items: u64,
    pub header_live_bytes: u64,
    pub log_records: u64,
    pub log_pads: u64,
    pub log_bytes: u64,
    pub clean: bool,
    pub daemon_pid: u32,
    pub problem_count: u64,
    pub problems: Vec<String>,
}

impl Report {
    fn problem(&mut self, p: String) {
        self.problem_count += 1;
        if self.problems.len() < 100 {
            self.problems.push(p);
        }
    }
}

/// Whether heap offset `off` lies in the log window [tail, head).
fn in_window(seg: &Segment, off: u64, tail: u64, head: u64) -> bool {
    let rel = off - seg.heap_off;
    let cap = seg.heap_cap;
    let pos = tail + (rel + cap - tail % cap) % cap;
    pos < head
}

pub fn check(dir: &Path) -> Result<Report> {
    let seg = Segment::open(&data_path(dir), false)?;
    let h = seg.hdr();
    let mut r = Report {
        header_items: h.items.load(Ordering::Relaxed),
        header_live_bytes: h.live_bytes.load(Ordering::Relaxed),
        clean: h.clean.load(Ordering::Relaxed) == 1,
        daemon_pid: h.daemon_pid.load(Ordering::Relaxed),
        ..Report::default()
    };
    let (head, tail, free) = (
        h.head.load(Ordering::Relaxed),
        h.tail.load(Ordering::Relaxed),
        h.free_limit.load(Ordering::Relaxed),
    );
    if !(free <= tail && tail <= head && head - free <= seg.heap_cap) {
        r.problem(format!("heap positions inconsistent: free {free}, tail {tail}, head {head}"));
        return Ok(r);
    }
    // The index.
    let mut seen = HashSet::new();
    for i in 0..seg.slots {
        let v = seg.slot(i).load(Ordering::Relaxed);
        if v == 0 {
            continue;
        }
        let off = slot_off(v);
        let Some(rec) = seg.record(off) else {
            r.problem(format!("slot {i}: record at offset {off} fails validation"));
            continue;
        };
        if !slot_tag_matches(v, rec.hash) {
            r.problem(format!("slot {i}: tag does not match the record's hash"));
        }
        if !in_window(&seg, off, tail, head) {
            r.problem(format!("slot {i}: record at offset {off} is outside the log window"));
        }
        if !seen.insert(off) {
            r.problem(format!("slot {i}: offset {off} is referenced twice"));
        }
        // Linear probing: no empty slot between the home slot and this one.
        let home = rec.hash & seg.mask;
        let mut j = home;
        while j != i {
            if seg.slot(j).load(Ordering::Relaxed) == 0 {
                r.problem(format!("slot {i}: unreachable from its home slot {home}"));
                break;
            }
            j = (j + 1) & seg.mask;
        }
        r.items += 1;
        r.live_bytes += rec.size;
    }
    // The log.
    let mut pos = tail;
    while pos < head {
        let off = seg.phys(pos);
        let (size, kind) = seg.raw_kind(off).unwrap_or((0, 0));
        if size < 8 || size % REC_ALIGN != 0 || pos + size > head || (off + size > seg.size) {
            r.problem(format!("log position {pos}: unreadable entry (size {size})"));
            break;
        }
        match kind {
            KIND_PAD => r.log_pads += 1,
            KIND_ITEM => r.log_records += 1,
            k => r.problem(format!("log position {pos}: unknown kind {k}")),
        }
        r.log_bytes += size;
        pos += size;
    }
    if r.clean && (r.items != r.header_items || r.live_bytes != r.header_live_bytes) {
        r.problem(format!(
            "header counts {} items / {} bytes; the index holds {} / {}",
            r.header_items, r.header_live_bytes, r.items, r.live_bytes
        ));
    }
    Ok(r)
}
