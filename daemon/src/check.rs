//! `surpdb check DIR`: verify a segment without changing it (safe while the daemon runs, though
//! then counts may move under the check). Every index slot must point at a valid record inside
//! the heap's live window, reachable from its home slot, once; the log from tail to head must
//! parse; the header's counters must match. The record store's chunks must parse and every
//! live record decode with its chunk's model.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::client::data_path;
use crate::error::Result;
use crate::heap::{entry_at, next_whole_entry, Entry};
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
    /// Live records in the record store.
    pub records: u64,
    /// The daemon stopped inside a delete and left one entry in two slots (its restart
    /// removes the copy): expected after a crash, not a problem.
    pub duplicate_from_delete: bool,
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
    if !(free <= tail && tail <= head && head - free <= seg.cap()) {
        r.problem(format!("heap positions inconsistent: free {free}, tail {tail}, head {head}"));
        return Ok(r);
    }
    // The index.
    let interrupted_delete = !r.clean && h.idx_seq.load(Ordering::Relaxed) & 1 == 1;
    let mut seen = HashSet::new();
    let mut ns_counts = [(0u64, 0u64); MAX_NAMESPACES];
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
        if !seg.in_window(off, tail, head) {
            r.problem(format!("slot {i}: record at offset {off} is outside the log window"));
        }
        if !seen.insert(off) {
            if interrupted_delete && !r.duplicate_from_delete {
                // A daemon killed inside a backward-shift delete leaves one entry in two
                // slots (the index sequence is odd); its restart removes the copy.
                r.duplicate_from_delete = true;
            } else {
                r.problem(format!("slot {i}: offset {off} is referenced twice"));
            }
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
        if !seg.ns_cleared(rec.key, rec.version) {
            let c = &mut ns_counts[crate::namespace::ns_of(rec.key)];
            c.0 += 1;
            c.1 += rec.size;
        }
    }
    // The log, with the walker the cleaner uses: every entry from tail to head must parse.
    let mut pos = tail;
    while pos < head {
        match entry_at(&seg, pos, head, false) {
            Entry::Pad(size) => {
                r.log_pads += 1;
                r.log_bytes += size;
                pos += size;
            }
            Entry::Item(size) => {
                r.log_records += 1;
                r.log_bytes += size;
                pos += size;
            }
            Entry::Torn => {
                let (size, kind) = seg.raw_kind(seg.phys(pos)).unwrap_or((0, 0));
                let next = next_whole_entry(&seg, pos, head);
                r.problem(format!(
                    "log position {pos}: unreadable entry (size {size}, kind {kind}); the next \
                     whole entry is at {next}"
                ));
                pos = next;
            }
        }
    }
    if r.clean && (r.items != r.header_items || r.live_bytes != r.header_live_bytes) {
        r.problem(format!(
            "header counts {} items / {} bytes; the index holds {} / {}",
            r.header_items, r.header_live_bytes, r.items, r.live_bytes
        ));
    }
    // Namespaces (a segment of the format before them has no table yet: its upgrade counts).
    let counted = h.format_version.load(Ordering::Relaxed) == FORMAT_VERSION
        && seg.ns(0).used.load(Ordering::Relaxed) == 1;
    for (id, &(items, bytes)) in ns_counts.iter().enumerate() {
        let e = seg.ns(id);
        let named = id == 0 || e.used.load(Ordering::Relaxed) == 1;
        if !named && items > 0 {
            r.problem(format!("namespace {id}: {items} keys, but no such namespace"));
        }
        let want = (e.items.load(Ordering::Relaxed), e.bytes.load(Ordering::Relaxed));
        if r.clean && counted && named && want != (items, bytes) {
            r.problem(format!(
                "namespace {id}: counts {} items / {} bytes; the index holds {items} / {bytes}",
                want.0, want.1
            ));
        }
    }
    // The record store, if there is one.
    let rp = crate::records::records_path(dir);
    if rp.exists() {
        let rf = crate::records::RecFile::open(&rp, false)?;
        let mut problems = Vec::new();
        let (records, _) = rf.check(r.clean, &mut problems);
        r.records = records;
        for p in problems {
            r.problem(format!("records: {p}"));
        }
    }
    Ok(r)
}
