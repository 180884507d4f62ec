//! The apply loop's operations: each request, validated and applied atomically by the one
//! writer. Readers never see a half-applied request: every change becomes visible through one
//! Release store into an index slot (or a backward-shift delete under the seqlock).

use std::sync::atomic::Ordering;

use crate::heap::{CleanStats, Heap};
use crate::layout::*;
use crate::records::RecStore;
use crate::ring::{Reply, Req, Ring};
use crate::segment::{NewRec, Segment};
use crate::shm;
use crate::value;

/// The daemon's writable store: the segment plus the heap's in-memory state.
pub struct Store {
    pub seg: Segment,
    pub heap: Heap,
    /// The record store (the daemon attaches one; model tests run without).
    pub recs: Option<RecStore>,
    sweep_cursor: u64,
    /// (ring id, box, ticket, head after) of the request being applied, for the journal.
    ctx: Option<(u64, u32, u64, u64)>,
    /// Boxes (ring id, box) whose head request is answered later (a training): not polled
    /// until then.
    pub held: Vec<(u64, u32)>,
    /// The segment file, open read-write (the daemon grows it; it also holds its lock).
    pub data_file: Option<std::fs::File>,
}

/// Largest TTL accepted (about 100 years), so that expiry arithmetic never overflows.
const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

impl Store {
    pub fn new(seg: Segment) -> Store {
        let heap = Heap::load(&seg);
        Store {
            seg,
            heap,
            recs: None,
            sweep_cursor: 0,
            ctx: None,
            held: Vec::new(),
            data_file: None,
        }
    }

    /// Apply one request and produce its reply. Never panics on bad input.
    pub fn apply(&mut self, ring: &Ring, req: &Req<'_>) -> Reply {
        // The previous request is complete (its result is in the ring): the journal is stale.
        self.disarm();
        self.ctx = Some((req.ring_id, req.boxno, req.ticket, req.head_after));
        let h = self.seg.hdr();
        h.c_requests.fetch_add(1, Ordering::Relaxed);
        h.op_active.store(1, Ordering::Relaxed);
        crate::crash::point("operation begun");
        let reply = self.apply_inner(ring, req);
        // Counters are consistent with the index again.
        self.seg.hdr().op_active.store(0, Ordering::Release);
        crate::crash::point("operation ended");
        reply
    }

    fn apply_inner(&mut self, ring: &Ring, req: &Req<'_>) -> Reply {
        if req.key.len() > MAX_KEY_LEN {
            return Reply::status(status::BAD_REQUEST);
        }
        let mut st = CleanStats::default();
        let reply = match req.op {
            op::SET | op::ADD => self.set(ring, req, &mut st),
            op::DELETE => self.delete(req.key),
            op::INCR => self.incr(ring, req, &mut st),
            op::TOUCH => self.touch(ring, req, &mut st),
            op::CLEAR => {
                self.clear();
                Reply::ok(0)
            }
            op::NOOP => Reply::ok(0),
            op::APPEND => self.append(ring, req, &mut st),
            op::MERGE => self.merge(ring, req, &mut st),
            op::CAS => self.cas(ring, req, &mut st),
            op::ZADD => self.zadd(ring, req, &mut st),
            op::ZREM => self.zrem(ring, req, &mut st),
            op::INSERT | op::UPDATE => self.insert(req),
            op::REMOVE => self.remove_record(req.arg),
            op::TRAIN => self.train(req),
            op::RESIZE => match self.grow(req.arg) {
                Ok(n) if n <= req.arg => Reply::ok(n),
                Ok(n) => Reply { status: status::NOT_DONE, value: n, aux: 0 },
                Err(crate::Error::ValueTooLarge { max, .. }) => {
                    Reply { status: status::TOO_LARGE, value: max, aux: 0 }
                }
                Err(e) => {
                    crate::log::error(&format!("growth refused: {e}"));
                    Reply::status(status::NO_DISK_SPACE)
                }
            },
            _ => Reply::status(status::BAD_REQUEST),
        };
        self.account(&st);
        let h = self.seg.hdr();
        if reply.status == status::SEGMENT_FULL {
            h.c_full.fetch_add(1, Ordering::Relaxed);
        }
        if !matches!(reply.status, status::OK | status::NOT_DONE | status::WRONG_TYPE) {
            h.c_errors.fetch_add(1, Ordering::Relaxed);
        }
        reply
    }

    fn account(&self, st: &CleanStats) {
        let h = self.seg.hdr();
        if st.evicted > 0 {
            h.c_evictions.fetch_add(st.evicted, Ordering::Relaxed);
        }
        if st.expired > 0 {
            h.c_expirations.fetch_add(st.expired, Ordering::Relaxed);
        }
        if st.relocated > 0 {
            h.c_relocations.fetch_add(st.relocated, Ordering::Relaxed);
        }
    }

    fn expiry(ttl_ms: u64, now: u64) -> u64 {
        if ttl_ms == 0 {
            0
        } else {
            now + ttl_ms.min(MAX_TTL_MS)
        }
    }

    fn journal(&self) -> &Journal {
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
    fn arm(&self, key: &[u8], new_version: u64, old_version: u64, reply: Reply) {
        self.arm_kind(0, key, new_version, old_version, reply);
    }

    fn arm_kind(&self, kind: u64, key: &[u8], new_version: u64, old_version: u64, reply: Reply) {
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

    fn settle_journal(&mut self, rings: &[&Ring]) -> Option<String> {
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
                crate::log::error(&format!("set refused: {e}"));
                return Reply::status(status::SEGMENT_FULL);
            }
        };
        let answer = reply(version);
        self.arm(key, version, 0, answer);
        self.seg.publish(slot, hash, off);
        crate::crash::point("slot published");
        match cur {
            Some(old) => {
                h.live_bytes.fetch_sub(old.size, Ordering::Relaxed);
            }
            None => {
                h.items.fetch_add(1, Ordering::Relaxed);
                // Evicted not long ago and wanted again: one read's credit (see Ghost).
                if self.heap.ghost.contains(hash) {
                    ring.set_hint(off - self.seg.heap_off, 1);
                }
            }
        }
        h.live_bytes.fetch_add(size, Ordering::Relaxed);
        h.c_sets.fetch_add(1, Ordering::Relaxed);
        crate::crash::point("set counted");
        answer
    }

    /// Record store: insert (or update: insert, then remove the old id).
    fn insert(&mut self, req: &Req<'_>) -> Reply {
        if req.arg2 != req.payload.len() as u64 || req.payload.len() as u64 > self.seg.max_value {
            return Reply::status(if req.payload.len() as u64 > self.seg.max_value {
                status::TOO_LARGE
            } else {
                status::BAD_REQUEST
            });
        }
        let Some(rs) = self.recs.as_mut() else { return Reply::status(status::BAD_REQUEST) };
        let old = if req.op == op::UPDATE { req.arg } else { 0 };
        if old != 0 && !rs.is_live(old) {
            return Reply::status(status::NOT_DONE);
        }
        let ins = match rs.prepare(req.payload) {
            Ok(i) => i,
            Err(crate::Error::SegmentFull(m)) => {
                crate::log::warn(&m);
                return Reply::status(status::SEGMENT_FULL);
            }
            Err(e @ crate::Error::Io { .. }) => {
                crate::log::error(&format!("insert refused: {e}"));
                return Reply::status(status::NO_DISK_SPACE);
            }
            Err(crate::Error::ValueTooLarge { .. }) => return Reply::status(status::TOO_LARGE),
            Err(e) => {
                crate::log::warn(&format!("insert refused: {e}"));
                return Reply::status(status::BAD_REQUEST);
            }
        };
        let answer = Reply::ok(ins.rid);
        self.arm_kind(JOURNAL_RECORD, b"", ins.rid, old, answer);
        let rs = self.recs.as_mut().expect("checked above");
        rs.publish(&ins);
        if old != 0 {
            rs.remove(old);
        }
        if rs.auto_train_due() {
            let compact = rs.rf.hdr().compact.load(Ordering::Relaxed) != 0;
            crate::log::info(&format!(
                "training the record codec in the background records={}",
                rs.train_after
            ));
            rs.start_training(compact, None);
        }
        answer
    }

    fn remove_record(&mut self, rid: u64) -> Reply {
        let Some(rs) = self.recs.as_mut() else { return Reply::status(status::BAD_REQUEST) };
        if !rs.is_live(rid) {
            return Reply::ok(0);
        }
        let answer = Reply::ok(1);
        self.arm_kind(JOURNAL_RECORD, b"", 0, rid, answer);
        self.recs.as_mut().expect("checked above").remove(rid);
        answer
    }

    fn train(&mut self, req: &Req<'_>) -> Reply {
        let Some(rs) = self.recs.as_mut() else { return Reply::status(status::BAD_REQUEST) };
        if req.flags & flag::SAMPLE != 0 {
            if value::validate(req.payload).is_err() {
                return Reply::status(status::BAD_REQUEST);
            }
            return Reply::ok(rs.add_sample(req.payload) as u64);
        }
        // Training runs in a background thread; this request is answered when it is done
        // (its box waits, every other client's requests keep flowing).
        rs.start_training(
            req.flags & flag::COMPACT != 0,
            Some((req.ring_id, req.boxno, req.ticket, req.head_after)),
        );
        self.held.push((req.ring_id, req.boxno));
        Reply::status(status::DEFERRED)
    }

    fn set(&mut self, ring: &Ring, req: &Req<'_>, st: &mut CleanStats) -> Reply {
        if req.payload.len() as u64 > self.seg.max_value {
            return Reply::status(status::TOO_LARGE);
        }
        if req.arg2 != req.payload.len() as u64 || value::validate(req.payload).is_err() {
            return Reply::status(status::BAD_REQUEST);
        }
        let now = shm::now_ms();
        let hash = self.seg.hash(req.key);
        if req.op == op::ADD {
            if let Some(cur) = self.seg.current(req.key, hash) {
                if !cur.expired(now) {
                    return Reply::status(status::NOT_DONE);
                }
            }
        }
        self.put(ring, req.key, hash, req.payload, Self::expiry(req.arg, now), st, Reply::ok)
    }

    fn delete(&mut self, key: &[u8]) -> Reply {
        let hash = self.seg.hash(key);
        let Some((slot, cur)) = self.seg.find_key(key, hash) else {
            return Reply::status(status::NOT_DONE);
        };
        let expired = cur.expired(shm::now_ms());
        let size = cur.size;
        let answer = if expired { Reply::status(status::NOT_DONE) } else { Reply::ok(1) };
        self.arm(key, 0, cur.version, answer);
        self.seg.unlink(slot);
        let h = self.seg.hdr();
        h.items.fetch_sub(1, Ordering::Relaxed);
        h.live_bytes.fetch_sub(size, Ordering::Relaxed);
        crate::crash::point("delete counted");
        if expired {
            h.c_expirations.fetch_add(1, Ordering::Relaxed);
            return Reply::status(status::NOT_DONE);
        }
        h.c_deletes.fetch_add(1, Ordering::Relaxed);
        Reply::ok(1)
    }

    fn incr(&mut self, ring: &Ring, req: &Req<'_>, st: &mut CleanStats) -> Reply {
        let now = shm::now_ms();
        let hash = self.seg.hash(req.key);
        let delta = req.arg as i64 as i128;
        let (base, expires) = match self.seg.current(req.key, hash) {
            Some(cur) if !cur.expired(now) => match value::decode_int(cur.value) {
                Ok(Some(v)) => (v, cur.expires_ms),
                _ => return Reply::status(status::NOT_INTEGER),
            },
            _ if req.flags & flag::INCR_CREATE != 0 => (req.arg2 as i64 as i128, 0),
            _ => return Reply::status(status::NOT_DONE),
        };
        let Some(new) = base.checked_add(delta) else {
            return Reply::status(status::OVERFLOW);
        };
        let mut buf = Vec::with_capacity(20);
        value::encode_int(&mut buf, new);
        let answer = Reply { status: status::OK, value: new as u64, aux: (new >> 64) as u64 };
        let r = self.put(ring, req.key, hash, &buf, expires, st, |_| answer);
        if r.status == status::OK {
            self.seg.hdr().c_incrs.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn touch(&mut self, ring: &Ring, req: &Req<'_>, st: &mut CleanStats) -> Reply {
        let now = shm::now_ms();
        let hash = self.seg.hash(req.key);
        let value = match self.seg.current(req.key, hash) {
            // Copy: allocating the new record may clean and reuse the old one's space.
            Some(cur) if !cur.expired(now) => cur.value.to_vec(),
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

    pub fn clear(&mut self) {
        self.seg.clear_index();
        let h = self.seg.hdr();
        h.items.store(0, Ordering::Relaxed);
        h.live_bytes.store(0, Ordering::Relaxed);
        h.c_clears.fetch_add(1, Ordering::Relaxed);
        self.heap.clear(&self.seg);
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

    fn sweep_inner(&mut self, budget: u64) -> u64 {
        let now = shm::now_ms();
        let mut n = 0;
        let mut looked = 0;
        while looked < budget {
            let i = self.sweep_cursor & self.seg.mask;
            let v = self.seg.slot(i).load(Ordering::Relaxed);
            looked += 1;
            if v != 0 {
                if let Some(rec) = self.seg.record(slot_off(v)) {
                    if rec.expired(now) {
                        let size = rec.size;
                        self.seg.unlink(i);
                        let h = self.seg.hdr();
                        h.items.fetch_sub(1, Ordering::Relaxed);
                        h.live_bytes.fetch_sub(size, Ordering::Relaxed);
                        crate::crash::point("expired by the sweep");
                        n += 1;
                        // Backward shift may have moved another entry into slot i: look again.
                        continue;
                    }
                }
            }
            self.sweep_cursor = self.sweep_cursor.wrapping_add(1);
        }
        if n > 0 {
            self.seg.hdr().c_expirations.fetch_add(n, Ordering::Relaxed);
        }
        n
    }

    /// Remove the copy of an entry that a delete interrupted between two slot stores left
    /// in two slots: the copy farther from its home slot is the stale one.
    fn dedupe_index(&self) {
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
