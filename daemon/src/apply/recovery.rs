//! The journal (what the request being applied is, so that a restart can tell whether it
//! took effect) and the repairs a restart runs: journal settlement, index dedupe, recount,
//! and the power-loss rebuild.

use std::sync::atomic::Ordering;

use super::Store;
use crate::layout::*;
use crate::ring::{Reply, Ring};

impl Store {
    pub(super) fn journal(&self) -> &Journal {
        self.seg.region.get(JOURNAL_OFF)
    }

    /// Clear the journal (the request it named is complete).
    pub fn disarm(&self) {
        let j = self.journal();
        if j.armed.load(Ordering::Relaxed) != 0 {
            j.armed.store(0, Ordering::Release);
            crate::crash::point("journal disarmed");
        }
    }

    /// Arm the journal for the current request just before its one publishing store:
    /// after a crash, `key` holding `new_version` (or, for a delete with new_version 0, no
    /// longer holding `old_version`) proves the request took effect, and `reply` is its answer.
    pub(super) fn arm(&self, key: &[u8], new_version: u64, old_version: u64, reply: Reply) {
        self.arm_kind(0, key, new_version, old_version, reply);
    }

    pub(super) fn arm_kind(
        &self,
        kind: u64,
        key: &[u8],
        new_version: u64,
        old_version: u64,
        reply: Reply,
    ) {
        let Some((ring_id, b, t, h)) = self.ctx else { return };
        let j = self.journal();
        j.kind.store(kind, Ordering::Relaxed);
        j.ring_id.store(ring_id, Ordering::Relaxed);
        self.seg.region.write(JOURNAL_KEY_OFF, key);
        j.key_len.store(key.len() as u32, Ordering::Relaxed);
        j.boxno.store(b, Ordering::Relaxed);
        j.ticket.store(t, Ordering::Relaxed);
        j.head_after.store(h, Ordering::Relaxed);
        j.new_version.store(new_version, Ordering::Relaxed);
        j.old_version.store(old_version, Ordering::Relaxed);
        j.status.store(reply.status, Ordering::Relaxed);
        j.value.store(reply.value, Ordering::Relaxed);
        j.aux.store(reply.aux, Ordering::Relaxed);
        j.armed.store(1, Ordering::Release);
        crate::crash::point("journal armed");
    }

    /// After an unclean stop: if the journal names a request that was not completed, decide
    /// from the index whether its publish happened; if so, answer it (so it is not applied
    /// again), else leave it queued to be applied. Returns what was done, for the log.
    pub fn recover_journal(&mut self, rings: &[&Ring]) -> Option<String> {
        if self.journal().armed.load(Ordering::Acquire) == 0 {
            return None;
        }
        let what = self.settle_journal(rings);
        // Only now: a crash while settling (say, in the middle of answering) must find the
        // journal still armed at the next start, or the request would be applied again.
        self.disarm();
        what
    }

    pub(super) fn settle_journal(&mut self, rings: &[&Ring]) -> Option<String> {
        let j = self.journal();
        let ring_id = j.ring_id.load(Ordering::Relaxed);
        let ring = match rings.iter().find(|r| r.hdr().ring_id.load(Ordering::Relaxed) == ring_id) {
            Some(r) => *r,
            None if ring_id == 0 => rings[0],
            None => {
                return Some(format!("journal names ring {ring_id:#x}, which is gone; ignored"))
            }
        };
        let (b, t, h) = (
            j.boxno.load(Ordering::Relaxed),
            j.ticket.load(Ordering::Relaxed),
            j.head_after.load(Ordering::Relaxed),
        );
        let key_len = (j.key_len.load(Ordering::Relaxed) as u64).min(MAX_KEY_LEN as u64);
        let key = self.seg.region.slice(JOURNAL_KEY_OFF, key_len).unwrap_or_default().to_vec();
        let (new_v, old_v) =
            (j.new_version.load(Ordering::Relaxed), j.old_version.load(Ordering::Relaxed));
        let reply = Reply {
            status: j.status.load(Ordering::Relaxed),
            value: j.value.load(Ordering::Relaxed),
            aux: j.aux.load(Ordering::Relaxed),
        };
        let kind = j.kind.load(Ordering::Relaxed);
        if b >= ring.nboxes {
            return Some(format!("journal names box {b} beyond the ring; ignored"));
        }
        let c = ring.ctl(b);
        let (head, done) = ring.consumed(b);
        if done == t && head < h && h <= c.tail.load(Ordering::Acquire) {
            // Answered, killed before the head moved past it (Ring::complete stores `done`
            // first): move it now, so the client's next request is the one expected.
            ring.set_head(b, h);
            return Some(format!(
                "request box={b} ticket={t} was answered: moved the head past it"
            ));
        }
        if done >= t || done.wrapping_add(1) != t || head >= h || h > c.tail.load(Ordering::Acquire)
        {
            return None; // completed before the crash, or the box moved on
        }
        let applied = if kind == JOURNAL_RECORD {
            let Some(rs) = self.recs.as_mut() else {
                return Some(
                    "journal names a record request but no record store is attached".into(),
                );
            };
            // A new id that is live proves the insert; an update also removes the old one
            // (finished here if the crash came between the two).
            let done = new_v == 0 || rs.is_live(new_v);
            if done && old_v != 0 {
                rs.remove(old_v);
            }
            done && (new_v != 0 || !rs.is_live(old_v))
        } else {
            let hash = self.seg.hash(&key);
            let cur = self.seg.current(&key, hash).map(|r| r.version);
            if new_v != 0 {
                cur == Some(new_v)
            } else {
                cur != Some(old_v)
            }
        };
        if applied {
            ring.complete(b, t, h, reply);
            Some(format!(
                "request box={b} ticket={t} had taken effect: answered, not applied again"
            ))
        } else {
            Some(format!("request box={b} ticket={t} had not taken effect: it will be applied"))
        }
    }

    /// Remove the copy of an entry that a delete interrupted between two slot stores left
    /// in two slots: the copy farther from its home slot is the stale one.
    pub(super) fn dedupe_index(&self) {
        let mut seen: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
        let mut dup = None;
        for i in 0..self.seg.slots {
            let v = self.seg.slot(i).load(Ordering::Relaxed);
            if v == 0 {
                continue;
            }
            if let Some(&first) = seen.get(&slot_off(v)) {
                dup = Some((first, i, v));
                break;
            }
            seen.insert(slot_off(v), i);
        }
        let Some((a, b, v)) = dup else { return };
        let home = self.seg.record(slot_off(v)).map(|r| r.hash & self.seg.mask).unwrap_or(a);
        let dist = |i: u64| i.wrapping_sub(home) & self.seg.mask;
        let far = if dist(a) > dist(b) { a } else { b };
        self.seg.unlink(far);
        crate::log::warn(&format!("recovery: removed a duplicated index entry at slot {far}"));
    }

    /// After a machine crash (power loss): the file may hold any mix of older and newer
    /// pages. Keep only what is provably consistent: re-frame the log (a torn stretch becomes
    /// a pad up to the next record that validates), then rebuild the index from the slots
    /// whose records validate, lie inside the log window and are the newest version of their
    /// key, and recount. Reads every slot and the whole log: only for this rare path.
    /// Returns (entries kept, entries dropped, log bytes padded over).
    pub fn repair_after_power_loss(&mut self) -> (u64, u64, u64) {
        let seg = &self.seg;
        let h = seg.hdr();
        let (tail, head) = (h.tail.load(Ordering::Relaxed), h.head.load(Ordering::Relaxed));
        // 1. The log: every entry from tail to head must parse for the cleaner; a torn
        //    stretch is padded over up to the next whole entry.
        let mut padded = 0u64;
        let mut pos = tail;
        let mut largest = crate::segment::max_record(0);
        while pos < head {
            match crate::heap::entry_at(seg, pos, head, true) {
                crate::heap::Entry::Item(size) => {
                    largest = largest.max(size);
                    pos += size
                }
                crate::heap::Entry::Pad(size) => pos += size,
                crate::heap::Entry::Torn => {
                    let q = crate::heap::next_whole_entry(seg, pos, head);
                    seg.write_pad(seg.phys(pos), q - pos);
                    padded += q - pos;
                    pos = q;
                }
            }
        }
        // The reserve's mark may not have reached the disk before the machine went down.
        if h.max_record.load(Ordering::Relaxed) != 0 {
            h.max_record
                .store(largest.max(h.max_record.load(Ordering::Relaxed)), Ordering::Relaxed);
        }
        // 2. The index: collect valid entries, newest version per key.
        let in_window = |off: u64| seg.in_window(off, tail, head);
        let mut best: std::collections::HashMap<Vec<u8>, (u64, u64, u64)> = Default::default();
        let mut dropped = 0u64;
        for i in 0..seg.slots {
            let v = seg.slot(i).load(Ordering::Relaxed);
            if v == 0 {
                continue;
            }
            let off = slot_off(v);
            match seg.record(off) {
                Some(r)
                    if slot_tag_matches(v, r.hash)
                        && r.hash == seg.hash(r.key)
                        && in_window(off) =>
                {
                    let e = best.entry(r.key.to_vec()).or_insert((r.version, off, r.hash));
                    if r.version > e.0 {
                        dropped += 1;
                        *e = (r.version, off, r.hash);
                    } else if e.1 != off {
                        dropped += 1;
                    }
                }
                _ => dropped += 1,
            }
        }
        // 3. Rebuild: clear the index and insert every kept entry at its probe position.
        seg.clear_index();
        let (mut items, mut bytes) = (0u64, 0u64);
        for (_, (_, off, hash)) in best.iter() {
            let mut i = hash & seg.mask;
            while seg.slot(i).load(Ordering::Relaxed) != 0 {
                i = (i + 1) & seg.mask;
            }
            seg.publish(i, *hash, *off);
            items += 1;
            bytes += seg.record(*off).map_or(0, |r| r.size);
        }
        h.items.store(items, Ordering::Relaxed);
        h.live_bytes.store(bytes, Ordering::Relaxed);
        seg.recount_namespaces();
        h.op_active.store(0, Ordering::Release);
        let s = h.idx_seq.load(Ordering::Relaxed);
        if s & 1 == 1 {
            h.idx_seq.store(s + 1, Ordering::Release);
        }
        (items, dropped, padded)
    }

    /// After an unclean stop: recount items and live bytes from the index (the counters are
    /// updated after each step, so a crash can leave them off by one operation), and leave
    /// the index seqlock even. Reads every live record's header once.
    /// Returns whether it had to read the index (the daemon died inside an operation).
    pub fn recount(&mut self) -> bool {
        let h = self.seg.hdr();
        let s = h.idx_seq.load(Ordering::Relaxed);
        if s & 1 == 1 {
            // Killed inside a backward-shift delete: an entry may sit in two slots.
            h.idx_seq.store(s + 1, Ordering::Release);
            self.dedupe_index();
        } else if h.op_active.load(Ordering::Acquire) == 0 {
            return false; // died between operations: the counters are exact
        }
        // Reading the index anyway: a slot that names no valid record in the log window
        // (damage only: a crash cannot leave one) is unlinked, never left to be counted.
        let dropped = self.seg.scrub_index();
        if dropped > 0 {
            crate::log::warn(&format!(
                "recovery: unlinked {dropped} index entries that named no valid record"
            ));
        }
        h.op_active.store(0, Ordering::Release);
        true
    }
}
