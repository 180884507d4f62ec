//! Cache operations of the single writer: each validated, applied, and published by one
//! Release store into an index slot (or a backward-shift delete under the seqlock).

use std::sync::atomic::Ordering;

use super::Store;
use crate::heap::CleanStats;
use crate::layout::*;
use crate::ring::{Reply, Req, Ring};
use crate::segment::NewRec;
use crate::shm;
use crate::value;

impl Store {
    /// Write a new record for `key` and publish it, replacing any current one. `reply`
    /// gives the answer from the new record's version (journaled before the publish).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn put(
        &mut self,
        ring: &Ring,
        key: &[u8],
        hash: u64,
        value: &[u8],
        expires_ms: u64,
        st: &mut CleanStats,
        reply: impl FnOnce(u64) -> Reply,
    ) -> Reply {
        let size = record_size(key.len() as u64, value.len() as u64);
        // Room in the index first: evicting from the tail after the new record is written
        // could reach it before it is published.
        let max_items = self.seg.slots * INDEX_MAX_LOAD_16THS / 16;
        if self.seg.hdr().items.load(Ordering::Relaxed) >= max_items
            && self.seg.current(key, hash).is_none()
            && self.heap.make_index_room(&self.seg, ring, st).is_err()
        {
            return Reply::status(status::SEGMENT_FULL); // counted in stats (full_errors)
        }
        // A namespace's quota first: its oldest entries make room (never this key's).
        self.ns_make_room(key, hash, size);
        let off = match self.heap.alloc(&self.seg, ring, size, st) {
            Ok(off) => off,
            Err(_) => return Reply::status(status::SEGMENT_FULL), // counted in stats
        };
        let h = self.seg.hdr();
        let version = h.version.fetch_add(1, Ordering::Relaxed);
        self.seg.write_record(off, &NewRec { key, value, hash, version, expires_ms });
        crate::crash::point("record written");
        self.heap.publish_head(&self.seg);
        // Cleaning during alloc may have moved index entries: find the slot again.
        let (slot, cur) = match self.seg.find_for_write(key, hash) {
            Ok(x) => x,
            Err(e) => {
                // The record is in the log but unreachable: dead space for the cleaner.
                static L: crate::log::Limited = crate::log::Limited::new();
                L.error(|| format!("set refused: {e}"));
                return Reply::status(status::SEGMENT_FULL);
            }
        };
        let answer = reply(version);
        self.arm(key, version, 0, answer);
        self.seg.publish(slot, hash, off);
        crate::crash::point("slot published");
        match cur {
            Some(old) => self.seg.count_replaced(key, old.version, old.size, size),
            None => {
                self.seg.count_added(key, size);
                // Evicted not long ago and wanted again: one read's credit (see Ghost).
                if self.heap.ghost.contains(hash) {
                    ring.set_hint(off - self.seg.heap_off, 1);
                }
            }
        }
        h.c_sets.fetch_add(1, Ordering::Relaxed);
        crate::crash::point("set counted");
        answer
    }

    pub(super) fn set(&mut self, ring: &Ring, req: &Req<'_>, st: &mut CleanStats) -> Reply {
        if req.payload.len() as u64 > self.seg.max_value {
            return Reply::status(status::TOO_LARGE);
        }
        if req.arg2 != req.payload.len() as u64
            || value::validate_stored(req.payload, self.seg.max_value).is_err()
        {
            return Reply::status(status::BAD_REQUEST);
        }
        let now = shm::now_ms();
        let hash = self.seg.hash(req.key);
        if req.op == op::ADD {
            if let Some(cur) = self.seg.current(req.key, hash) {
                if self.seg.alive(&cur, now) {
                    return Reply::status(status::NOT_DONE);
                }
            }
        }
        self.put(ring, req.key, hash, req.payload, Self::expiry(req.arg, now), st, Reply::ok)
    }

    pub(super) fn delete(&mut self, key: &[u8]) -> Reply {
        let hash = self.seg.hash(key);
        let Some((slot, cur)) = self.seg.find_key(key, hash) else {
            return Reply::status(status::NOT_DONE);
        };
        let now = shm::now_ms();
        let expired = cur.expired(now);
        // Expired, left by its namespace's clear, or invalidated by a tag: not there.
        let gone = !self.seg.alive(&cur, now);
        let (size, version) = (cur.size, cur.version);
        let answer = if gone { Reply::status(status::NOT_DONE) } else { Reply::ok(1) };
        self.arm(key, 0, version, answer);
        self.seg.unlink(slot);
        self.seg.count_removed(key, version, size);
        let h = self.seg.hdr();
        crate::crash::point("delete counted");
        if gone {
            if expired {
                h.c_expirations.fetch_add(1, Ordering::Relaxed);
            }
            return Reply::status(status::NOT_DONE);
        }
        h.c_deletes.fetch_add(1, Ordering::Relaxed);
        Reply::ok(1)
    }

    pub(super) fn incr(&mut self, ring: &Ring, req: &Req<'_>, st: &mut CleanStats) -> Reply {
        let now = shm::now_ms();
        let hash = self.seg.hash(req.key);
        let delta = req.arg as i64 as i128;
        // A tagged int keeps its tags (the header is copied before the new int).
        let (base, expires, head) = match self.seg.current(req.key, hash) {
            Some(cur) if self.seg.alive(&cur, now) => {
                let Ok((head, inner)) = value::split_tagged(cur.value) else {
                    return Reply::status(status::NOT_INTEGER);
                };
                match value::decode_int(inner) {
                    Ok(Some(v)) => (v, cur.expires_ms, head.to_vec()),
                    _ => return Reply::status(status::NOT_INTEGER),
                }
            }
            _ if req.flags & flag::INCR_CREATE != 0 => (req.arg2 as i64 as i128, 0, Vec::new()),
            _ => return Reply::status(status::NOT_DONE),
        };
        let Some(new) = base.checked_add(delta) else {
            return Reply::status(status::OVERFLOW);
        };
        let mut buf = head;
        value::encode_int(&mut buf, new);
        let answer = Reply { status: status::OK, value: new as u64, aux: (new >> 64) as u64 };
        let r = self.put(ring, req.key, hash, &buf, expires, st, |_| answer);
        if r.status == status::OK {
            self.seg.hdr().c_incrs.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    pub(super) fn touch(&mut self, ring: &Ring, req: &Req<'_>, st: &mut CleanStats) -> Reply {
        let now = shm::now_ms();
        let hash = self.seg.hash(req.key);
        let value = match self.seg.current(req.key, hash) {
            // Copy: allocating the new record may clean and reuse the old one's space.
            Some(cur) if self.seg.alive(&cur, now) => cur.value.to_vec(),
            _ => return Reply::status(status::NOT_DONE),
        };
        let r = self.put(ring, req.key, hash, &value, Self::expiry(req.arg, now), st, Reply::ok);
        if r.status == status::OK {
            self.seg.hdr().c_touches.fetch_add(1, Ordering::Relaxed);
            // A touch is not a set.
            self.seg.hdr().c_sets.fetch_sub(1, Ordering::Relaxed);
        }
        r
    }

    /// DELETE_PREFIX: every key of `stored`'s namespace starting with its user part is gone
    /// (O(1)); a full table is first emptied by a sweep of the whole index.
    pub(super) fn delete_prefix(&mut self, stored: &[u8]) -> Reply {
        let (ns, prefix) = (crate::namespace::ns_of(stored), crate::namespace::user_key(stored));
        if prefix.is_empty() {
            return Reply::status(status::BAD_REQUEST); // a whole namespace: clear it
        }
        if self.seg.prefix_live().count_ones() as usize == MAX_PREFIXES {
            // A lap at once. Nothing else runs meanwhile (the sweep's own unlinks move
            // nothing behind it), so afterwards no slot names a record an entry removed.
            let start = self.sweep_cursor;
            while self.sweep_cursor.wrapping_sub(start) < self.seg.slots {
                self.sweep_inner(self.seg.slots - self.sweep_cursor.wrapping_sub(start));
            }
            for i in 0..MAX_PREFIXES {
                self.seg.prefix_free(i);
            }
        }
        let Some(i) = self.seg.prefix_delete(ns, prefix) else {
            return Reply::status(status::SEGMENT_FULL); // not reached: a lap frees them all
        };
        self.prefix_born[i] = self.sweep_cursor;
        self.seg.hdr().c_deletes.fetch_add(1, Ordering::Relaxed);
        Reply::ok(0)
    }

    /// Whether prefix deletions wait for the sweep (it then runs under load too).
    pub fn prefixes_pending(&self) -> bool {
        self.seg.prefix_live() != 0
    }

    pub fn clear(&mut self) {
        self.seg.clear_index();
        // No record is left for a prefix deletion to remove.
        for i in 0..MAX_PREFIXES {
            if self.seg.prefix_live() & (1 << i) != 0 {
                self.seg.prefix_free(i);
            }
        }
        let h = self.seg.hdr();
        h.items.store(0, Ordering::Relaxed);
        h.live_bytes.store(0, Ordering::Relaxed);
        h.c_clears.fetch_add(1, Ordering::Relaxed);
        self.seg.recount_namespaces();
        self.heap.clear(&self.seg);
        self.ns_cursors = [0; MAX_NAMESPACES];
    }

    /// Grow the segment file to `new_size` bytes (rounded down to a page; at most the
    /// segment's max_size, else ValueTooLarge). Blocks are allocated first (a full disk is
    /// an error here, not a SIGBUS later), then the new size is published (clients accept
    /// offsets up to it), then the heap's next capacity; the log takes the new space at the
    /// end of its current lap (`Heap::switch_geometry`). A smaller size changes nothing (a
    /// segment does not shrink). Returns the size now. A daemon killed part-way leaves a
    /// longer file, which the next one finishes growing into.
    pub fn grow(&mut self, new_size: u64) -> crate::Result<u64> {
        let seg = &self.seg;
        let (cur, max) = (seg.size(), seg.max_size());
        let new = new_size / PAGE * PAGE;
        if new <= cur {
            // A growth a crash interrupted after publishing the size: the heap takes it.
            let h = seg.hdr();
            if seg.target_cap() < cur - seg.heap_off {
                h.heap_cap_next.store(cur - seg.heap_off, Ordering::Release);
                h.geom_gen.fetch_add(1, Ordering::Release);
            }
            return Ok(cur);
        }
        if new > max {
            return Err(crate::Error::ValueTooLarge { size: new, max });
        }
        let Some(f) = self.data_file.as_ref() else {
            return Err(crate::Error::Config("no writable segment file to grow".into()));
        };
        let path = std::path::Path::new(crate::layout::files::DATA);
        f.set_len(new).map_err(|e| shm::allocate_error(path, new - cur, e))?;
        crate::crash::point("segment file extended");
        if let Err(e) = shm::allocate(f, cur, new - cur) {
            let _ = f.set_len(cur);
            return Err(shm::allocate_error(path, new - cur, e));
        }
        seg.region.grow_valid(new);
        let h = seg.hdr();
        h.size.store(new, Ordering::Release);
        crate::crash::point("segment size published");
        h.heap_cap_next.store(new - seg.heap_off, Ordering::Release);
        h.geom_gen.fetch_add(1, Ordering::Release);
        crate::log::info(&format!(
            "grew the segment bytes={cur} -> {new}; the heap takes the space at the end of its \
             current lap"
        ));
        Ok(new)
    }

    /// Housekeeping: look at up to `budget` index slots and unlink expired items.
    /// Returns how many expired.
    pub fn sweep_expired(&mut self, budget: u64) -> u64 {
        self.seg.hdr().op_active.store(1, Ordering::Relaxed);
        let n = self.sweep_inner(budget);
        self.seg.hdr().op_active.store(0, Ordering::Release);
        n
    }

    pub(super) fn sweep_inner(&mut self, budget: u64) -> u64 {
        let now = shm::now_ms();
        if self.seg.sweep_missed.swap(false, Ordering::Relaxed) {
            // More records were moved behind the cursor than were kept: count again.
            self.lap_from = self.sweep_cursor;
        }
        let mut n = self.sweep_moved();
        // Tiered mode: records below the minimum version are never served again (a
        // generation bump): reclaimed like expired ones.
        let unproven = self.seg.hdr().up_min_version.load(Ordering::Relaxed);
        let mut looked = 0;
        while looked < budget {
            let i = self.sweep_cursor & self.seg.mask;
            let v = self.seg.slot(i).load(Ordering::Relaxed);
            looked += 1;
            if v != 0 {
                if let Some(rec) = self.seg.record(slot_off(v)) {
                    // A namespace's clear or a tag's invalidation left it: reclaimed too.
                    if rec.version < unproven || !self.seg.alive(&rec, now) {
                        let (size, version) = (rec.size, rec.version);
                        let key = rec.key.to_vec();
                        // Its own unlink moves nothing behind it (see `Segment::unlink`).
                        self.seg.sweep_at.store(i, Ordering::Relaxed);
                        self.seg.unlink(i);
                        self.seg.count_removed(&key, version, size);
                        crate::crash::point("expired by the sweep");
                        n += 1;
                        // Backward shift may have moved another entry into slot i: look again.
                        continue;
                    }
                }
            }
            self.sweep_cursor = self.sweep_cursor.wrapping_add(1);
        }
        self.seg.sweep_at.store(self.sweep_cursor & self.seg.mask, Ordering::Relaxed);
        if n > 0 {
            self.seg.hdr().c_expirations.fetch_add(n, Ordering::Relaxed);
        }
        self.free_swept_prefixes();
        n
    }

    /// Unlink the records a prefix deletion removed that other unlinks moved from ahead of
    /// the sweep to behind it since its last look (`Segment::sweep_recheck`): its lap would
    /// miss them. Returns how many.
    fn sweep_moved(&mut self) -> u64 {
        let mut n = 0;
        loop {
            let moved = std::mem::take(
                &mut *self.seg.sweep_recheck.lock().unwrap_or_else(|e| e.into_inner()),
            );
            if moved.is_empty() {
                return n;
            }
            for v in moved {
                let Some(rec) = self.seg.record(slot_off(v)) else { continue };
                if !crate::prefix::deleted(&self.seg.prefixes(), &self.seg, rec.key, rec.version) {
                    continue;
                }
                let (key, hash, size, version) =
                    (rec.key.to_vec(), rec.hash, rec.size, rec.version);
                match self.seg.find_key(&key, hash) {
                    Some((slot, cur)) if cur.off == slot_off(v) => {
                        // (This unlink may move others behind the sweep: the loop takes them.)
                        self.seg.unlink(slot);
                        self.seg.count_removed(&key, version, size);
                        crate::crash::point("moved record swept");
                        n += 1;
                    }
                    _ => {}
                }
            }
        }
    }

    /// Free the prefix entries a whole lap of the sweep has passed since they were made.
    fn free_swept_prefixes(&mut self) {
        let live = self.seg.prefix_live();
        for i in 0..MAX_PREFIXES {
            let from = self.lap_from.max(self.prefix_born[i]);
            if live & (1 << i) != 0 && self.sweep_cursor.wrapping_sub(from) >= self.seg.slots {
                self.seg.prefix_free(i);
            }
        }
    }
}
