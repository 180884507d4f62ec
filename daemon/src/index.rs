//! The key index: open addressing with linear probing over one-word slots
//! (`tag:16 | offset/8:48`, 0 = empty), read lock-free by any number of processes and
//! written by the daemon alone.
//!
//! * Insert fills the first empty slot of the probe sequence; replace stores the new offset
//!   into the key's slot. Both are one Release store after the record is fully written, so a
//!   reader sees the old record or the new one, each complete.
//! * Delete uses backward-shift deletion (no tombstones, so probe sequences never rot). Moving
//!   an entry could make a concurrent reader walk past it, so the writer wraps every delete
//!   in the `idx_seq` seqlock and a reader that found nothing re-checks the sequence and
//!   retries. Hits need no check: the record is verified by key and checksum.

use std::sync::atomic::{fence, Ordering};

use crate::layout::{slot_off, slot_pack, slot_tag_matches};
use crate::segment::{Rec, Segment};

/// Result of a reader's probe.
pub enum Probe<'a> {
    Hit {
        slot: u64,
        rec: Rec<'a>,
    },
    Miss,
    /// A slot pointed at a record that failed validation (torn or corrupt).
    Corrupt,
}

/// Most moved records the sweep keeps to look at again (past it, its lap counts again).
const SWEEP_RECHECK_MAX: usize = 4096;

impl Segment {
    /// Reader-side lookup. The caller has pinned its reader epoch, so records it reaches stay
    /// immutable until it unpins.
    #[inline]
    pub fn probe(&self, key: &[u8], hash: u64) -> Probe<'_> {
        let seq = &self.hdr().idx_seq;
        // Bounded: a daemon killed inside `unlink` leaves the sequence odd until it restarts;
        // readers must keep working meanwhile (at worst a false miss for a moved key).
        let mut tries = 0u32;
        loop {
            // SYNC POINT: pairs with the writer's Release store that ends a delete.
            let s1 = seq.load(Ordering::Acquire);
            tries += 1;
            let settled = tries > 10_000;
            if s1 & 1 == 1 && !settled {
                std::hint::spin_loop();
                continue;
            }
            let mut i = hash & self.mask;
            let mut corrupt = false;
            for _ in 0..self.slots {
                // SYNC POINT: pairs with the Release store in `publish`; the record's bytes,
                // written before it, are visible once we see the slot.
                let v = self.slot(i).load(Ordering::Acquire);
                if v == 0 {
                    break;
                }
                if slot_tag_matches(v, hash) {
                    match self.record(slot_off(v)) {
                        Some(rec) if rec.hash == hash && rec.key == key => {
                            return Probe::Hit { slot: i, rec };
                        }
                        Some(_) => {}
                        None => corrupt = true,
                    }
                }
                i = (i + 1) & self.mask;
            }
            // SYNC POINT: the slot loads above happen before this re-read of the sequence
            // (seqlock read side); pairs with the writer's fence after making it odd.
            fence(Ordering::Acquire);
            if settled || seq.load(Ordering::Relaxed) == s1 {
                return if corrupt { Probe::Corrupt } else { Probe::Miss };
            }
        }
    }

    /// Writer-side: the slot holding `key`, or the empty slot where it would go.
    /// Returns (slot index, Some(record) if present). An index with no empty slot at all
    /// (the load limit is kept by the counters; damage could break it) is `SegmentFull`,
    /// never a panic: index state comes from a file.
    pub fn find_for_write(&self, key: &[u8], hash: u64) -> crate::Result<(u64, Option<Rec<'_>>)> {
        let mut i = hash & self.mask;
        for _ in 0..self.slots {
            let v = self.slot(i).load(Ordering::Relaxed);
            if v == 0 {
                return Ok((i, None));
            }
            if slot_tag_matches(v, hash) {
                if let Some(rec) = self.record(slot_off(v)) {
                    if rec.hash == hash && rec.key == key {
                        return Ok((i, Some(rec)));
                    }
                }
            }
            i = (i + 1) & self.mask;
        }
        Err(crate::Error::SegmentFull(format!(
            "the key index has no empty slot among its {} (items counted: {})",
            self.slots,
            self.hdr().items.load(Ordering::Relaxed)
        )))
    }

    /// Writer-side: the key's slot and record, if present.
    pub fn find_key(&self, key: &[u8], hash: u64) -> Option<(u64, Rec<'_>)> {
        let mut i = hash & self.mask;
        for _ in 0..self.slots {
            let v = self.slot(i).load(Ordering::Relaxed);
            if v == 0 {
                return None;
            }
            if slot_tag_matches(v, hash) {
                if let Some(rec) = self.record(slot_off(v)) {
                    if rec.hash == hash && rec.key == key {
                        return Some((i, rec));
                    }
                }
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    /// Writer-side: the key's current record, if present (a record its namespace's last
    /// clear removed is not: only its index slot is left, for the sweep).
    pub fn current(&self, key: &[u8], hash: u64) -> Option<Rec<'_>> {
        self.find_key(key, hash).map(|(_, r)| r).filter(|r| !self.ns_cleared(key, r.version))
    }

    /// Writer-side: unlink every slot whose record fails validation, does not match the
    /// slot's tag, or lies outside the log window [tail, head) (its space may be reused),
    /// then recount items and live bytes from what remains. Returns how many were unlinked.
    /// Reads every slot and its record header: for recovery only.
    pub fn scrub_index(&self) -> u64 {
        let h = self.hdr();
        let (tail, head) = (h.tail.load(Ordering::Relaxed), h.head.load(Ordering::Relaxed));
        let in_window = |off: u64| self.in_window(off, tail, head);
        let bad = |v: u64| match self.record(slot_off(v)) {
            Some(r) => !slot_tag_matches(v, r.hash) || !in_window(r.off),
            None => true,
        };
        let mut n = 0;
        // Backward shift moves later entries into a freed slot (and entries at the start of
        // the array to its end): look at a slot again after unlinking it, and pass again
        // until a pass unlinks nothing.
        loop {
            let mut this_pass = 0;
            let mut i = 0;
            while i < self.slots {
                let v = self.slot(i).load(Ordering::Relaxed);
                if v != 0 && bad(v) {
                    self.unlink(i);
                    this_pass += 1;
                    continue;
                }
                i += 1;
            }
            n += this_pass;
            if this_pass == 0 {
                break;
            }
        }
        self.recount_index();
        n
    }

    /// Writer-side: set `items` and `live_bytes` from the index (every occupied slot counts
    /// as an item, so the load limit holds whatever the slots point at).
    pub fn recount_index(&self) {
        let (mut items, mut bytes) = (0u64, 0u64);
        for i in 0..self.slots {
            let v = self.slot(i).load(Ordering::Relaxed);
            if v != 0 {
                items += 1;
                bytes += self.record(slot_off(v)).map_or(0, |r| r.size);
            }
        }
        let h = self.hdr();
        h.items.store(items, Ordering::Relaxed);
        h.live_bytes.store(bytes, Ordering::Relaxed);
        self.recount_namespaces();
    }

    /// Writer-side: make the fully written record at `off` reachable from slot `i`.
    #[inline]
    pub fn publish(&self, i: u64, hash: u64, off: u64) {
        // SYNC POINT: Release; pairs with the Acquire slot load in `probe`.
        self.slot(i).store(slot_pack(hash, off), Ordering::Release);
    }

    /// Writer-side: remove the entry in slot `i` by backward shift, under the seqlock.
    pub fn unlink(&self, i: u64) {
        let seq = &self.hdr().idx_seq;
        let s = seq.load(Ordering::Relaxed);
        seq.store(s + 1, Ordering::Relaxed);
        // SYNC POINT: the odd sequence is visible before any slot moves (seqlock write side).
        fence(Ordering::Release);
        let mut hole = i & self.mask;
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            let v = self.slot(j).load(Ordering::Relaxed);
            if v == 0 {
                break;
            }
            let home = match self.record_hash_at(slot_off(v)) {
                Some(h) => h & self.mask,
                // An unreadable record: leave it where it is (it will be a miss anyway).
                None => j,
            };
            // Move the entry at j into the hole if its home is not cyclically in (hole, j].
            let dist_home = j.wrapping_sub(home) & self.mask;
            let dist_hole = j.wrapping_sub(hole) & self.mask;
            if dist_home >= dist_hole {
                // From the sweep's next slot or after it to before it: the sweep's lap
                // misses this entry.
                let at = self.sweep_at.load(Ordering::Relaxed);
                let ahead = at.wrapping_sub(hole) & self.mask;
                if at != u64::MAX && ahead != 0 && ahead <= dist_hole {
                    self.moved_behind_sweep(v);
                }
                self.slot(hole).store(v, Ordering::Release);
                crate::crash::point("delete shifted an entry");
                hole = j;
            }
        }
        self.slot(hole).store(0, Ordering::Release);
        crate::crash::point("delete emptied a slot");
        // SYNC POINT: Release; pairs with the Acquire sequence load in `probe`.
        seq.store(s + 2, Ordering::Release);
    }

    /// Daemon-side: the entry `v` was moved behind the sweep. Only a record a prefix
    /// deletion removed matters (its entry is freed after a lap: the sweep must still
    /// unlink it); any other is live, or is reclaimed for its own reason later.
    fn moved_behind_sweep(&self, v: u64) {
        let Some(rec) = self.record(slot_off(v)) else { return };
        if !crate::prefix::deleted(&self.prefixes(), self, rec.key, rec.version) {
            return;
        }
        let mut r = self.sweep_recheck.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() < SWEEP_RECHECK_MAX {
            r.push(v);
        } else {
            self.sweep_missed.store(true, Ordering::Relaxed);
        }
    }

    fn record_hash_at(&self, off: u64) -> Option<u64> {
        self.record(off).map(|r| r.hash)
    }

    /// Writer-side: drop every entry (clear), under the seqlock.
    pub fn clear_index(&self) {
        let seq = &self.hdr().idx_seq;
        let s = seq.load(Ordering::Relaxed);
        seq.store(s + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        for i in 0..self.slots {
            if self.slot(i).load(Ordering::Relaxed) != 0 {
                self.slot(i).store(0, Ordering::Release);
            }
        }
        seq.store(s + 2, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::*;
    use crate::segment::{Geometry, NewRec};

    fn seg() -> (Segment, std::path::PathBuf) {
        let d = std::env::temp_dir().join(format!(
            "surpd-idx-{}-{}",
            crate::shm::getpid(),
            crate::shm::random_u64()
        ));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("data.surp");
        let geo = Geometry::for_size(4 << 20, 16 << 10).unwrap();
        Segment::create(&p, &geo, 16 << 10, POLICY_EVICT, 0o640).unwrap();
        (Segment::open(&p, true).unwrap(), d)
    }

    /// Insert keys whose hashes collide on the home slot (forced by a tiny probe window),
    /// delete from the middle of runs, and check that every remaining key is still found.
    #[test]
    fn backward_shift_keeps_every_key_reachable() {
        let (s, d) = seg();
        let mut off = s.heap_off;
        let mut keys = Vec::new();
        for n in 0..600u32 {
            let key = format!("key-{n}").into_bytes();
            let h = s.hash(&key);
            let (i, old) = s.find_for_write(&key, h).unwrap();
            assert!(old.is_none());
            s.write_record(
                off,
                &NewRec { key: &key, value: b"\x00", hash: h, version: 1, expires_ms: 0 },
            );
            s.publish(i, h, off);
            off += record_size(key.len() as u64, 1);
            keys.push(key);
        }
        // Delete every third key.
        for (n, key) in keys.iter().enumerate() {
            if n % 3 == 0 {
                let h = s.hash(key);
                match s.probe(key, h) {
                    Probe::Hit { slot, .. } => s.unlink(slot),
                    _ => panic!("key {n} missing before delete"),
                }
            }
        }
        for (n, key) in keys.iter().enumerate() {
            let found = matches!(s.probe(key, s.hash(key)), Probe::Hit { .. });
            assert_eq!(found, n % 3 != 0, "key {n}");
        }
        let occupied = (0..s.slots).filter(|&i| s.slot(i).load(Ordering::Relaxed) != 0).count();
        assert_eq!(occupied, 400);
        s.clear_index();
        assert!(keys.iter().all(|k| matches!(s.probe(k, s.hash(k)), Probe::Miss)));
        std::fs::remove_dir_all(d).unwrap();
    }

    /// The sweep must hear of an unlink that moves a record a prefix deletion removed from
    /// where it looks next (or after) to before it: its lap would miss that record, and the
    /// deletion's entry is freed after the lap (prefix.rs). Live records moved so are not
    /// its concern.
    #[test]
    fn an_unlink_that_moves_a_deleted_record_behind_the_sweep_says_so() {
        let (s, d) = seg();
        s.hdr().version.store(10, Ordering::Relaxed);
        let mut off = s.heap_off;
        let mut put = |key: &[u8]| {
            let h = s.hash(key);
            let (i, _) = s.find_for_write(key, h).unwrap();
            s.write_record(
                off,
                &NewRec { key, value: b"\x00", hash: h, version: 1, expires_ms: 0 },
            );
            s.publish(i, h, off);
            off += record_size(key.len() as u64, 1);
            i
        };
        // Three keys with the same home slot, each one slot after the one before.
        let mut homes: std::collections::HashMap<u64, Vec<Vec<u8>>> = Default::default();
        let keys = (0u32..)
            .find_map(|n| {
                let k = format!("k{n}").into_bytes();
                let v = homes.entry(s.hash(&k) & s.mask).or_default();
                v.push(k);
                (v.len() == 3).then(|| v.clone())
            })
            .unwrap();
        let home = s.hash(&keys[0]) & s.mask;
        for (n, k) in keys.iter().enumerate() {
            assert_eq!(put(k), (home + n as u64) & s.mask);
        }
        let recheck = || std::mem::take(&mut *s.sweep_recheck.lock().unwrap());
        let word = |i: u64| s.slot(i & s.mask).load(Ordering::Relaxed);
        // The sweep looks at home + 1 next; a delete at home moves keys[1] behind it: a live
        // record, nothing to say.
        s.sweep_at.store((home + 1) & s.mask, Ordering::Relaxed);
        s.unlink(home);
        assert!(recheck().is_empty());
        // Every "k" key deleted by prefix: the next such move is reported, with the slot word.
        assert!(s.prefix_delete(0, b"k").is_some());
        s.sweep_at.store((home + 1) & s.mask, Ordering::Relaxed);
        let moved = word(home + 1); // keys[2], moved to home by the next unlink
        s.unlink(home);
        assert_eq!(recheck(), vec![moved]);
        assert_eq!(word(home), moved);
        // The sweep's own unlink (at its cursor) moves nothing behind it.
        let _ = put(&keys[0]);
        s.sweep_at.store(home, Ordering::Relaxed);
        s.unlink(home);
        assert!(recheck().is_empty());
        // Nor does an unlink when the sweep is elsewhere.
        let _ = put(&keys[1]);
        s.sweep_at.store((home + 100) & s.mask, Ordering::Relaxed);
        s.unlink(home);
        assert!(recheck().is_empty() && !s.sweep_missed.load(Ordering::Relaxed));
        std::fs::remove_dir_all(d).unwrap();
    }
}
