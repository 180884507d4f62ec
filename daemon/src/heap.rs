//! The record heap: a circular log written only by the daemon.
//!
//! New records are appended at `head`; space is recovered at `tail`. When an allocation does
//! not fit, the cleaner walks records from the tail:
//! * pads, deleted and replaced records (no index slot points at them) are skipped;
//! * expired records are unlinked (counted as expirations);
//! * live records are relocated to the head if they were read since the cleaner last passed
//!   (the access hint a reader sets, CLOCK-style second chance) or if the policy is
//!   `noeviction`; otherwise they are evicted (counted).
//!
//! Why a log and not size-class free lists: values of any size share one pool with no
//! internal fragmentation and no slab calcification (memcached's problem with changing value
//! sizes), a big value never waits for neighbouring blocks to coalesce, and FIFO with a second
//! chance approximates LRU as well as sampling does, with no per-access write to the segment
//! (clients map it read-only; hints live in the ring file).
//!
//! Reclamation: space the tail passed may still be read by a reader that pinned an older
//! epoch. Each cleaning step records `(tail, epoch)` and bumps the epoch; `free_limit`
//! advances to a recorded tail once no reader holds an epoch at or below its stamp. The head
//! never passes `free_limit + heap_cap`.

use std::collections::VecDeque;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::layout::*;
use crate::ring::Ring;
use crate::segment::Segment;
use crate::shm;

/// The daemon's view of the heap, mirrored into the segment header after every change.
pub struct Heap {
    pub head: u64,
    pub tail: u64,
    pub free_limit: u64,
    /// (tail position, epoch at which everything before it was unlinked)
    pending: VecDeque<(u64, u64)>,
    /// Space kept free for relocations, so that cleaning can always make progress.
    pub policy: u32,
    /// How long an allocation may wait for readers to leave old space.
    pub reclaim_wait: Duration,
    /// Request rings this daemon replaced (restarted with other ring settings) and still
    /// serves until their clients have moved: their reader slots may still pin epochs.
    pub retired_rings: Vec<(std::path::PathBuf, Ring)>,
    /// Keys evicted recently (their hashes): one written again soon after is given a read's
    /// credit, so that it survives its first pass of the cleaner (S3-FIFO's ghost queue).
    pub ghost: Ghost,
}

/// A bounded set of recently evicted key hashes: two generations of a Bloom filter (two bits
/// per key, eight bits of filter per key); when the current generation has taken its share,
/// the older one is dropped. False positives (about 5%) only give a new key a read's credit.
pub struct Ghost {
    gens: [Vec<u64>; 2],
    cur: usize,
    added: usize,
    per_gen: usize,
}

impl Ghost {
    /// A ghost remembering about `n` keys (at least 1024).
    pub fn new(n: usize) -> Ghost {
        let per_gen = n.max(1024);
        let words = (per_gen * 8).div_ceil(64);
        Ghost { gens: [vec![0; words], vec![0; words]], cur: 0, added: 0, per_gen }
    }

    fn bits(&self, hash: u64) -> [usize; 2] {
        let n = self.gens[0].len() * 64;
        // The key hash is xxh3: its halves are independent enough for two probes.
        [(hash as u32 as usize) % n, ((hash >> 32) as usize) % n]
    }

    pub fn insert(&mut self, hash: u64) {
        if self.added >= self.per_gen {
            self.cur ^= 1;
            self.gens[self.cur].iter_mut().for_each(|w| *w = 0);
            self.added = 0;
        }
        for b in self.bits(hash) {
            self.gens[self.cur][b / 64] |= 1 << (b % 64);
        }
        self.added += 1;
    }

    pub fn contains(&self, hash: u64) -> bool {
        let bits = self.bits(hash);
        self.gens.iter().any(|g| bits.iter().all(|&b| g[b / 64] & (1 << (b % 64)) != 0))
    }
}

/// What happened to make room.
#[derive(Default, Debug, Clone, Copy)]
pub struct CleanStats {
    pub evicted: u64,
    pub expired: u64,
    pub relocated: u64,
}

impl Heap {
    pub fn load(seg: &Segment) -> Heap {
        let h = seg.hdr();
        Heap {
            head: h.head.load(Ordering::Relaxed),
            tail: h.tail.load(Ordering::Relaxed),
            // After a restart, readers of the previous run may still hold the old epoch:
            // everything before the tail is queued for reclamation again below.
            free_limit: h.free_limit.load(Ordering::Relaxed),
            pending: VecDeque::new(),
            policy: h.policy.load(Ordering::Relaxed),
            reclaim_wait: Duration::from_millis(500),
            retired_rings: Vec::new(),
            ghost: Ghost::new((seg.slots * INDEX_MAX_LOAD_16THS / 16 / 4) as usize),
        }
    }

    pub fn store(&self, seg: &Segment) {
        let h = seg.hdr();
        h.head.store(self.head, Ordering::Relaxed);
        h.tail.store(self.tail, Ordering::Relaxed);
        h.free_limit.store(self.free_limit, Ordering::Relaxed);
    }

    /// Bytes between the tail and the head (live, dead and padding).
    pub fn used(&self) -> u64 {
        self.head - self.free_limit
    }

    /// The high-water mark: while live data (plus the record being made room for) fits under
    /// it, the cleaner relocates every live record it meets instead of evicting it. Nine
    /// tenths of the heap outside the cleaner's reserve: relocating needs free space, and a
    /// log cleaned at 90% live copies about nine bytes for each one it frees.
    pub fn high_water(&self, seg: &Segment) -> u64 {
        high_water(seg)
    }

    /// Whether `n` more bytes put live data over the high-water mark (eviction allowed).
    pub fn under_pressure(&self, seg: &Segment, n: u64) -> bool {
        seg.hdr().live_bytes.load(Ordering::Relaxed) + n > self.high_water(seg)
    }

    /// Reserve `n` bytes (a multiple of REC_ALIGN) at the head, or None if it would pass
    /// `free_limit + cap - keep`. Only the daemon's copy of `head` moves: the caller writes
    /// the record into the space, then calls [`Heap::publish_head`]. So the header's `head`
    /// only ever covers entries that are completely written, and a crash in between leaves
    /// bytes past the head, which nothing reads and the next record overwrites.
    fn try_reserve(&mut self, seg: &Segment, ring: &Ring, n: u64, keep: u64) -> Option<u64> {
        // The file grew: the heap takes the new space now (see `Heap::switch_geometry`).
        self.switch_geometry(seg, ring);
        let g = seg.geom();
        let cap = g.cap;
        let phys = seg.lap_offset(self.head);
        let pad = if phys + n > cap { cap - phys } else { 0 };
        // What the head may not pass: `free_limit` plus a capacity. While positions written
        // before the last growth are still in the window, the head may not reach their
        // offsets in this lap either (the old capacity) until it is past the old heap's end.
        let guard = if g.prev_cap != 0 && self.free_limit < g.base && phys < g.prev_cap {
            g.prev_cap
        } else {
            cap
        };
        if self.head + pad + n + keep > self.free_limit + guard {
            return None;
        }
        if pad > 0 {
            seg.write_pad(seg.heap_off + phys, pad);
            self.head += pad;
        }
        let off = seg.phys(self.head);
        self.head += n;
        ring.clear_hint(off - seg.heap_off);
        Some(off)
    }

    /// Take the capacity of a grown file (`heap_cap_next`). Positions are rebased on the
    /// start of the head's current lap, so every position of that lap keeps its physical
    /// offset, and the lap goes on past the old heap's end into the new space; positions of
    /// the lap before (still in the window, below the new base) keep the old geometry
    /// (`prev_base`, `prev_cap`) until the tail and `free_limit` are past them. Done only
    /// when no older geometry is still in the window. Stores are ordered so that a crash
    /// between any two leaves a geometry that maps every position in the window right.
    fn switch_geometry(&mut self, seg: &Segment, ring: &Ring) -> bool {
        let h = seg.hdr();
        let g = seg.geom();
        let next = h.heap_cap_next.load(Ordering::Acquire);
        if next <= g.cap || (g.prev_cap != 0 && self.free_limit < g.base) {
            return false;
        }
        // The access hints of the new space (the ring's hint array covers the largest heap;
        // its blocks are allocated as the heap grows).
        if let Err(e) = ring.allocate_hints(next) {
            static L: crate::log::Limited = crate::log::Limited::new();
            L.warn(|| format!("growth waits: {e}"));
            return false;
        }
        let lap_start = self.head - seg.lap_offset(self.head);
        h.prev_base.store(g.base, Ordering::Release);
        h.prev_cap.store(g.cap, Ordering::Release);
        crate::crash::point("old geometry kept");
        h.heap_base.store(lap_start, Ordering::Release);
        crate::crash::point("heap base moved");
        h.heap_cap.store(next, Ordering::Release);
        h.heap_cap_next.store(0, Ordering::Release);
        h.geom_gen.fetch_add(1, Ordering::Release);
        crate::crash::point("heap capacity switched");
        crate::log::info(&format!(
            "the heap grew: capacity {} -> {next} bytes from log position {lap_start}",
            g.cap
        ));
        true
    }

    /// Publish everything reserved so far (written by now) as part of the log: the header's
    /// `head` moves after the bytes it covers, never before (a cleaner or `check` walking
    /// from the tail after a crash always finds whole entries).
    pub fn publish_head(&self, seg: &Segment) {
        // SYNC POINT: Release; the entry bytes written above are visible before the head
        // that covers them (for readers of the log after a crash: the restarted daemon,
        // `surpdb check`).
        seg.hdr().head.store(self.head, Ordering::Release);
        crate::crash::point("heap head published");
    }

    /// Allocate `n` bytes for a new record, cleaning, evicting and waiting for readers as the
    /// policy allows. Under `noeviction`, fails with SegmentFull when live data would not fit.
    pub fn alloc(
        &mut self,
        seg: &Segment,
        ring: &Ring,
        n: u64,
        st: &mut CleanStats,
    ) -> Result<u64> {
        // The reserve covers the new record while it is allocated; a record refused never
        // enters the log, so its mark is taken back (else one refused large value would
        // raise the reserve for good, and a full noeviction store then refuses every write).
        let mark = seg.hdr().max_record.load(Ordering::Relaxed);
        note_record(seg, n);
        let r = self.alloc_noted(seg, ring, n, st);
        if r.is_err() {
            seg.hdr().max_record.store(mark, Ordering::Relaxed);
        }
        r
    }

    fn alloc_noted(
        &mut self,
        seg: &Segment,
        ring: &Ring,
        n: u64,
        st: &mut CleanStats,
    ) -> Result<u64> {
        if self.policy == POLICY_NOEVICTION {
            let live = seg.hdr().live_bytes.load(Ordering::Relaxed);
            // A grown file counts already: the cleaner moves the head to the end of its lap
            // (relocating), where the log takes the new space.
            let usable = seg.target_cap().saturating_sub(2 * reserve(seg));
            if live + n > usable {
                return Err(Error::SegmentFull(format!(
                    "segment full under noeviction: {live} bytes live + {n} new > {usable} usable \
                     of a {}-byte heap",
                    seg.cap()
                )));
            }
        }
        let start = Instant::now();
        let deadline = start + self.reclaim_wait;
        loop {
            if let Some(off) = self.try_reserve(seg, ring, n, reserve(seg)) {
                return Ok(off);
            }
            if self.reclaim(seg, ring) {
                continue;
            }
            // Clean ahead of need: at least n, and a batch, so that reclamation is amortised.
            // Without memory pressure the cleaner only relocates; if readers hold the space it
            // needs for that for half the wait, it evicts after all (counted: it should not
            // happen) rather than fail the write.
            let want = n + seg.cap() / 512;
            let pressure = self.policy != POLICY_NOEVICTION
                && (self.under_pressure(seg, n) || start.elapsed() > self.reclaim_wait / 2);
            if self.tail < self.head && self.tail - self.free_limit < want {
                let before = self.tail;
                self.clean(seg, ring, want, pressure, st);
                if self.tail != before {
                    continue;
                }
            }
            // Everything cleanable is cleaned; wait for readers to leave the old space.
            if Instant::now() >= deadline {
                return Err(Error::SegmentFull(format!(
                    "no space for a {n}-byte record: {} bytes wait for readers to leave{}",
                    self.tail - self.free_limit,
                    self.pinning_reader(ring)
                )));
            }
            seg.hdr().c_reclaim_waits.fetch_add(1, Ordering::Relaxed);
            std::thread::yield_now();
        }
    }

    /// Advance the tail until `want` bytes lie between free_limit and tail (or tail == head).
    fn clean(&mut self, seg: &Segment, ring: &Ring, want: u64, evict: bool, st: &mut CleanStats) {
        let now = shm::now_ms();
        let h = seg.hdr();
        while self.tail < self.head && self.tail - self.free_limit < want {
            let off = seg.phys(self.tail);
            let size = match entry_at(seg, self.tail, self.head, false) {
                Entry::Pad(size) => size,
                Entry::Item(size) => {
                    if !self.clean_one(seg, ring, off, size, now, evict, st) {
                        break; // a live record that cannot move yet: the tail stays before it
                    }
                    size
                }
                Entry::Torn => {
                    // Cannot happen for a log this daemon wrote (a record is whole before the
                    // head covers it); after outside damage, re-frame instead of guessing.
                    reframe(seg, self.tail, self.head);
                    continue;
                }
            };
            self.tail += size;
        }
        h.tail.store(self.tail, Ordering::Relaxed);
        crate::crash::point("tail stored");
        self.retire(seg);
    }

    /// Deal with the item at the tail. False if it is live and must stay (no eviction allowed
    /// and no room to relocate it yet); true once nothing reachable remains at `off`. `evict`:
    /// memory is under pressure (or the cleaner is stuck), so a live record the policy does
    /// not keep may be evicted.
    #[allow(clippy::too_many_arguments)]
    fn clean_one(
        &mut self,
        seg: &Segment,
        ring: &Ring,
        off: u64,
        size: u64,
        now: u64,
        evict: bool,
        st: &mut CleanStats,
    ) -> bool {
        let h = seg.hdr();
        let rec = match seg.record(off) {
            Some(r) => r,
            None => {
                // Torn or corrupt: no reader can validly reach it (readers check too). Quarantine
                // means: never served, counted, logged, and its space reused.
                h.c_corrupt.fetch_add(1, Ordering::Relaxed);
                crate::log::warn(&format!(
                    "quarantined a record that fails its checksum at offset {off}"
                ));
                // Its key is unreadable, so find its slot by offset (rare: a scan is fine).
                if let Some(i) =
                    (0..seg.slots).find(|&i| slot_off(seg.slot(i).load(Ordering::Relaxed)) == off)
                {
                    seg.unlink(i);
                    h.items.fetch_sub(1, Ordering::Relaxed);
                    h.live_bytes.fetch_sub(
                        size.min(h.live_bytes.load(Ordering::Relaxed)),
                        Ordering::Relaxed,
                    );
                }
                return true;
            }
        };
        let slot = match seg.find_key(rec.key, rec.hash) {
            Some((slot, c)) if c.off == off => slot,
            _ => return true, // dead: deleted or replaced
        };
        // Read, not taken: a record that cannot move yet keeps its count for the cleaner's
        // next look (taking it here cost a read record its credit at every failed try, and
        // with a small reserve those are frequent).
        let reads = ring.peek_hint(off - seg.heap_off);
        let hot = reads > 0;
        if !seg.alive(&rec, now) {
            // Expired, left by its namespace's clear or invalidated by a tag: dropped, never
            // moved.
            seg.unlink(slot);
            seg.count_removed(rec.key, rec.version, size);
            crate::crash::point("expired at the tail");
            st.expired += 1;
            return true;
        }
        let keep = !evict || hot;
        if keep {
            // Relocations may use the reserve: that is what it is for.
            if let Some(dst) = self.try_reserve(seg, ring, size, 0) {
                seg.copy_record(off, dst, size);
                crate::crash::point("relocated copy written");
                self.publish_head(seg);
                seg.publish(slot, rec.hash, dst);
                crate::crash::point("relocated slot published");
                // FIFO with reinsertion and a 2-bit count (S3-FIFO's main queue): a record
                // read k times since the last pass keeps k - 1 of them for the next.
                ring.set_hint(dst - seg.heap_off, reads.saturating_sub(1));
                st.relocated += 1;
                return true;
            }
            // No room to move it yet: stop here, so that the caller reclaims what the tail
            // has passed and comes back (a record worth keeping is never evicted for want of
            // relocation space; before, each cleaning batch could move only the reserve's
            // worth of read records and evicted the rest).
            return false;
        }
        seg.unlink(slot);
        seg.count_removed(rec.key, rec.version, size);
        seg.ns(crate::namespace::ns_of(rec.key)).evictions.fetch_add(1, Ordering::Relaxed);
        crate::crash::point("evicted at the tail");
        st.evicted += 1;
        self.ghost.insert(rec.hash);
        let pressure = self.under_pressure(seg, 0);
        if !pressure {
            h.c_evictions_no_pressure.fetch_add(1, Ordering::Relaxed);
        }
        if crate::log::enabled(crate::log::Level::Debug) {
            let age = h.version.load(Ordering::Relaxed).saturating_sub(rec.version);
            crate::log::debug(&format!(
                "evicted key={:?} bytes={size} age_writes={age} read_since_last_pass={hot} \
                 live_bytes={} high_water={} pressure={pressure}",
                String::from_utf8_lossy(&rec.key[..rec.key.len().min(80)]),
                h.live_bytes.load(Ordering::Relaxed),
                self.high_water(seg)
            ));
        }
        true
    }

    /// Evict or expire from the tail until the index has room for one more item.
    pub fn make_index_room(
        &mut self,
        seg: &Segment,
        ring: &Ring,
        st: &mut CleanStats,
    ) -> Result<()> {
        let max_items = seg.slots * INDEX_MAX_LOAD_16THS / 16;
        let h = seg.hdr();
        let mut guard = 0;
        while h.items.load(Ordering::Relaxed) >= max_items {
            if self.policy == POLICY_NOEVICTION || self.tail >= self.head || guard > 1_000_000 {
                return Err(Error::SegmentFull(format!(
                    "index full: {} items, the most this segment's {} slots hold",
                    h.items.load(Ordering::Relaxed),
                    seg.slots
                )));
            }
            let before = st.evicted + st.expired;
            let step = seg.cap() / 256;
            // A full index is pressure: evict.
            self.clean(seg, ring, self.tail - self.free_limit + step, true, st);
            if st.evicted + st.expired == before {
                guard += 1;
            }
        }
        Ok(())
    }

    /// Mark everything before the current tail as unlinked at the current epoch, and bump it.
    pub fn retire(&mut self, seg: &Segment) {
        let h = seg.hdr();
        if self.pending.back().is_some_and(|&(t, _)| t == self.tail) || self.tail == self.free_limit
        {
            return;
        }
        let e = h.epoch.load(Ordering::Relaxed);
        self.pending.push_back((self.tail, e));
        // SYNC POINT: SeqCst; a reader that loads the new epoch (SeqCst) sees every unlink
        // made before it, so it cannot reach space retired at `e`.
        h.epoch.store(e + 1, Ordering::SeqCst);
        crate::crash::point("epoch bumped");
    }

    /// Move `free_limit` forward past retired space no reader can see. True if it moved.
    pub fn reclaim(&mut self, seg: &Segment, ring: &Ring) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let min = self.min_reader_epoch(ring, self.pending.front().map_or(0, |&(_, e)| e));
        let mut moved = false;
        while let Some(&(pos, e)) = self.pending.front() {
            if min.is_some_and(|m| m <= e) {
                break;
            }
            self.free_limit = pos;
            self.pending.pop_front();
            moved = true;
        }
        if moved {
            seg.hdr().free_limit.store(self.free_limit, Ordering::Relaxed);
            crate::crash::point("free limit stored");
        }
        moved
    }

    /// Drop every record at once (clear): the whole log is retired.
    pub fn clear(&mut self, seg: &Segment) {
        self.tail = self.head;
        seg.hdr().tail.store(self.tail, Ordering::Relaxed);
        self.retire(seg);
    }

    fn pinning_reader(&self, ring: &Ring) -> String {
        let oldest = self.pending.front().map(|&(_, e)| e).unwrap_or(0);
        for r in std::iter::once(ring).chain(self.retired_rings.iter().map(|(_, r)| r)) {
            for b in 0..r.nboxes {
                let c = r.ctl(b);
                let pid = c.owner_pid.load(Ordering::Relaxed);
                let e = c.epoch.load(Ordering::Relaxed);
                let v = c.view_epoch.load(Ordering::Relaxed);
                if pid != 0 && ((e != 0 && e <= oldest) || (v != 0 && v <= oldest)) {
                    return format!(" (pid {pid} holds a read or a view open)");
                }
            }
        }
        String::new()
    }

    /// The oldest epoch pinned by a live reader in `ring` or in a retired ring still served.
    pub fn min_reader_epoch(&self, ring: &Ring, blocking: u64) -> Option<u64> {
        let mut min = min_reader_epoch(ring, blocking);
        for (_, r) in &self.retired_rings {
            if let Some(e) = min_reader_epoch(r, blocking) {
                min = Some(min.map_or(e, |m: u64| m.min(e)));
            }
        }
        min
    }
}

/// The high-water mark of a segment's heap (see [`Heap::high_water`]): 97% of the heap less
/// twice the cleaner's reserve.
pub fn high_water(seg: &Segment) -> u64 {
    seg.target_cap().saturating_sub(2 * reserve(seg)) / 100 * 97
}

/// Space the cleaner keeps free for relocating: two of the largest records the heap has been
/// asked to hold (one for a pad at the end of a lap, one for the record), at least two of a
/// maximum-length key's. Sized by the records that exist, not by max_value: a 1 MiB
/// max_value no longer keeps 4 MiB of a 32 MiB segment from holding data. It only grows, so
/// every record in the log is covered (see [`Heap::note_record`]).
pub fn reserve(seg: &Segment) -> u64 {
    let m = seg.hdr().max_record.load(Ordering::Relaxed);
    let m = if m == 0 { crate::segment::max_record(seg.max_value) } else { m };
    2 * m.max(crate::segment::max_record(0))
}

/// Raise the largest-record mark to `n` (before the record's space is taken, so that the
/// reserve covers it by the time it can reach the tail).
pub fn note_record(seg: &Segment, n: u64) {
    let h = seg.hdr();
    if n > h.max_record.load(Ordering::Relaxed) && h.max_record.load(Ordering::Relaxed) != 0 {
        h.max_record.store(n, Ordering::Relaxed);
    }
}

/// One entry of the log, as the walkers (the cleaner, `check`, power-loss repair) see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A record of this many bytes (framing checked; with `strict`, its checksum too).
    Item(u64),
    /// A pad of this many bytes (never crosses the heap's end).
    Pad(u64),
    /// Not an entry: damaged bytes.
    Torn,
}

/// The entry at log position `pos` (below `head`). `strict` also validates a record's
/// checksum (re-framing looks for the next entry that is certainly whole).
pub fn entry_at(seg: &Segment, pos: u64, head: u64, strict: bool) -> Entry {
    let off = seg.phys(pos);
    let Some((size, kind)) = seg.raw_kind(off) else { return Entry::Torn };
    let heap_end = seg.heap_off + seg.cap();
    if size < 8 || size % REC_ALIGN != 0 || pos + size > head || off + size > heap_end {
        return Entry::Torn;
    }
    match kind {
        KIND_PAD => Entry::Pad(size),
        KIND_ITEM if !strict => Entry::Item(size),
        KIND_ITEM => match seg.record(off) {
            Some(r) if r.size == size => Entry::Item(size),
            _ => Entry::Torn,
        },
        _ => Entry::Torn,
    }
}

/// The first position after `pos` (8-aligned, before `head`, not past the heap's end) where
/// a whole entry starts: what a torn stretch from `pos` is padded up to.
pub fn next_whole_entry(seg: &Segment, pos: u64, head: u64) -> u64 {
    let mut q = pos + REC_ALIGN;
    while q < head && seg.lap_offset(q) != 0 && entry_at(seg, q, head, true) == Entry::Torn {
        q += REC_ALIGN;
    }
    q.min(head)
}

/// Pad over the torn stretch at `pos` up to the next whole entry, and unlink every index
/// slot that points into it (none of them can name a valid record), so that no slot keeps
/// naming space the log no longer accounts for. Counters are recounted. Returns the end of
/// the padded stretch. Rare (outside damage only): scans the whole index.
pub fn reframe(seg: &Segment, pos: u64, head: u64) -> u64 {
    let q = next_whole_entry(seg, pos, head);
    let (start, len) = (seg.phys(pos), q - pos);
    seg.write_pad(start, len);
    let bad: Vec<u64> = (0..seg.slots)
        .map(|i| seg.slot(i).load(Ordering::Relaxed))
        .filter(|&v| v != 0 && (start..start + len).contains(&slot_off(v)))
        .collect();
    for v in &bad {
        if let Some(i) = (0..seg.slots).find(|&i| seg.slot(i).load(Ordering::Relaxed) == *v) {
            seg.unlink(i);
        }
    }
    let h = seg.hdr();
    h.c_corrupt.fetch_add(bad.len() as u64, Ordering::Relaxed);
    seg.recount_index();
    crate::log::error(&format!(
        "damaged heap entry at log position {pos}: padded {len} bytes up to the next whole \
         entry, unlinked {} index entries pointing into them",
        bad.len()
    ));
    q
}

/// The oldest epoch pinned by a live reader, if any. Slots of dead processes are ignored
/// (their owners cannot read any more); the daemon reaps them separately. Liveness (a
/// syscall and a /proc read) is checked only for pins at or below `blocking`, the ones that
/// hold reclamation back.
pub fn min_reader_epoch(ring: &Ring, blocking: u64) -> Option<u64> {
    // SYNC POINT: SeqCst fence; pairs with the reader's SeqCst pin (store epoch, fence,
    // then read the index): either we see its pin, or it sees our unlinks.
    fence(Ordering::SeqCst);
    let mut min: Option<u64> = None;
    for b in 0..ring.nboxes {
        let c = ring.ctl(b);
        let pid = c.owner_pid.load(Ordering::Relaxed);
        if pid == 0 || pid == crate::ring::OWNER_RESETTING {
            continue;
        }
        for e in [c.epoch.load(Ordering::SeqCst), c.view_epoch.load(Ordering::SeqCst)] {
            if e != 0 && min.is_none_or(|m| e < m) {
                if e <= blocking && !shm::process_alive(pid, c.owner_start.load(Ordering::Relaxed))
                {
                    continue;
                }
                min = Some(e);
            }
        }
    }
    min
}
