//! The client side of a box: claim and release it, frame requests into it, wait for their
//! answers. One producer per box, as a type: a claim hands out the box's one [`BoxWriter`].

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;

/// The right to write requests into one box, with the producer's private positions in it.
/// Only a successful [`Ring::claim`] makes one (its compare-and-swap on the box's owner word
/// makes this the box's only producer on the host), and it is neither `Clone` nor `Copy`:
/// [`Ring::enqueue`] takes it by `&mut`, so the single-producer rule of a box is kept by the
/// type system, not by a convention among callers.
#[derive(Debug)]
pub struct BoxWriter {
    boxno: u32,
    /// The producer's own copy of the box's tail (the shared word is never trusted).
    tail: u64,
    /// Where the daemon has certainly taken requests out up to (the end of the last
    /// request whose answer the producer collected).
    consumed: u64,
}

impl BoxWriter {
    pub fn boxno(&self) -> u32 {
        self.boxno
    }

    /// The producer's tail: where the next request goes.
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Bytes sent and not yet known to be taken out.
    pub fn pending(&self) -> u64 {
        self.tail - self.consumed
    }

    /// Every request ending at or before `pos` was answered: its room is free again.
    pub fn consumed_to(&mut self, pos: u64) {
        self.consumed = self.consumed.max(pos.min(self.tail));
    }
}

impl Ring {
    /// Claim a box for this process: a free one, or else one whose owner provably died
    /// with nothing left in its queue (its reader slot pins nothing once the owner is dead,
    /// and no request of it is waiting). Allocates the box's disk blocks. Returns the box's
    /// writer, or None when every box belongs to a live process or holds queued requests.
    pub fn claim(&self, pid: u32, start: u64) -> Result<Option<BoxWriter>> {
        for pass in 0..2 {
            for b in 0..self.nboxes {
                let c = self.ctl(b);
                let owner = c.owner_pid.load(Ordering::Relaxed);
                let take = if pass == 0 {
                    owner == 0
                } else {
                    // A dead owner's box with an empty queue: nothing in it is still owed.
                    owner != 0
                        && owner != OWNER_RESETTING
                        && owner != pid
                        && c.tail.load(Ordering::Acquire) == c.head.load(Ordering::Acquire)
                        && !shm::process_alive(owner, c.owner_start.load(Ordering::Relaxed))
                };
                if !take {
                    continue;
                }
                if c.owner_pid
                    .compare_exchange(owner, pid, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                // Ours now. Not yet active (the daemon polls only active boxes), so nothing
                // else touches it while it is reset: whatever a dead owner or a stray
                // writer left in it is cleared, not trusted.
                c.active.store(BOX_FREE, Ordering::Release);
                if owner != 0 {
                    self.fold_counters(c);
                }
                self.reset_fields(c);
                c.owner_start.store(start, Ordering::Relaxed);
                c.claims.fetch_add(1, Ordering::Relaxed);
                let results = self.results_off + b as u64 * self.nresults as u64 * 32;
                let allocated = shm::allocate(&self.file, self.box_data(b), self.box_bytes)
                    .and_then(|()| shm::allocate(&self.file, results, self.nresults as u64 * 32));
                if let Err(e) = allocated {
                    c.owner_start.store(0, Ordering::Relaxed);
                    c.owner_pid.store(0, Ordering::Release);
                    return Err(shm::allocate_error(&self.path, self.box_bytes, e));
                }
                // The daemon frees a box whose owner has no start time at two reaper
                // passes; a claimer stopped between its CAS and the start time's store for
                // that long finds its box gone and looks further.
                if c.owner_pid.load(Ordering::Acquire) != pid {
                    continue;
                }
                // SYNC POINT: Release; the daemon's Acquire load of `active` sees the reset
                // fields before it polls the box.
                c.active.store(BOX_ACTIVE, Ordering::Release);
                return Ok(Some(BoxWriter { boxno: b, tail: 0, consumed: 0 }));
            }
        }
        Ok(None)
    }

    /// Zero a box's queue, ticket and reader words (its owner is being replaced).
    pub(super) fn reset_fields(&self, c: &BoxCtl) {
        c.epoch.store(0, Ordering::Relaxed);
        c.view_epoch.store(0, Ordering::Relaxed);
        c.tail.store(0, Ordering::Relaxed);
        c.head.store(0, Ordering::Relaxed);
        c.done.store(0, Ordering::Relaxed);
        c.done32.store(0, Ordering::Relaxed);
        c.poisoned.store(0, Ordering::Relaxed);
        c.errors.store(0, Ordering::Relaxed);
    }

    /// Move a box's counters into the ring header's totals (the box is changing hands).
    pub(super) fn fold_counters(&self, c: &BoxCtl) -> (u64, u64, u64) {
        let h = self.hdr();
        let (hits, misses, corrupt) = (
            c.hits.swap(0, Ordering::Relaxed),
            c.misses.swap(0, Ordering::Relaxed),
            c.corrupt.swap(0, Ordering::Relaxed),
        );
        h.retired_hits.fetch_add(hits, Ordering::Relaxed);
        h.retired_misses.fetch_add(misses, Ordering::Relaxed);
        h.retired_corrupt.fetch_add(corrupt, Ordering::Relaxed);
        h.retired_queue_waits
            .fetch_add(c.queue_waits.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        (hits, misses, corrupt)
    }

    /// Give up box `b` (its owner is done with it). With everything it sent answered and
    /// consumed, the owner frees it at once, so that a new client can claim it without
    /// waiting for the daemon's reaper (or for a daemon at all); otherwise it is marked
    /// released and the daemon frees it once its queue is empty.
    pub fn release(&self, b: u32, last_ticket: u64) {
        let c = self.ctl(b);
        c.epoch.store(0, Ordering::Release);
        c.view_epoch.store(0, Ordering::Release);
        // SYNC POINT: Acquire; pairs with the daemon's Release stores of `done` and then
        // `head` in `complete`: once head reaches tail the daemon is done with the box.
        let drained = c.done.load(Ordering::Acquire) == last_ticket
            && c.head.load(Ordering::Acquire) == c.tail.load(Ordering::Relaxed)
            && c.poisoned.load(Ordering::Relaxed) == 0;
        if !drained {
            c.active.store(BOX_RELEASED, Ordering::Release);
            return;
        }
        c.active.store(BOX_FREE, Ordering::Release);
        self.fold_counters(c);
        self.reset_fields(c);
        c.owner_start.store(0, Ordering::Relaxed);
        // SYNC POINT: Release; the next claimer's CAS (AcqRel) sees the reset fields.
        c.owner_pid.store(0, Ordering::Release);
    }

    /// Bytes a request takes in a box whose tail is at `tail` (with the pad that keeps it
    /// from wrapping), or ValueTooLarge.
    pub fn request_bytes(&self, tail: u64, key: &[u8], payload: &[u8]) -> Result<u64> {
        let len = request_len(key, payload);
        if len > max_request(self.box_bytes) {
            return Err(Error::ValueTooLarge { size: payload.len() as u64, max: self.max_value });
        }
        let phys = tail % self.box_bytes;
        Ok(if phys + len > self.box_bytes { self.box_bytes - phys + len } else { len })
    }

    /// Publish one request into `w`'s box. The writer's own tail and consumed positions are
    /// used, never the box's `head` and `tail` words: another process could have written
    /// them, and a head pushed ahead would make the producer overwrite requests not yet
    /// taken. The caller has made room (`request_bytes` fits between consumed and the tail
    /// plus the box size), or this is QueueFull.
    pub fn enqueue(&self, w: &mut BoxWriter, ticket: u64, r: &Request<'_>) -> Result<()> {
        let (b, tail, consumed) = (w.boxno, &mut w.tail, w.consumed);
        let Request { op, flags, key, payload, arg, arg2 } = *r;
        let need = self.request_bytes(*tail, key, payload)?;
        if *tail + need - consumed > self.box_bytes {
            return Err(Error::QueueFull(format!(
                "no room for a {need}-byte request: {} of {} bytes pending",
                *tail - consumed,
                self.box_bytes
            )));
        }
        let len = request_len(key, payload);
        let c = self.ctl(b);
        let phys = *tail % self.box_bytes;
        let base = self.box_data(b);
        if need > len {
            let pad = need - len;
            self.region.write(base + phys, &ReqFields::pad(pad as u32));
            *tail += pad;
        }
        let at = base + *tail % self.box_bytes;
        let h =
            ReqFields { len: len as u32, op, flags, key_len: key.len() as u16, ticket, arg, arg2 }
                .encode();
        // The checksum is computed from our own copies (never from the box, which another
        // process may be writing), over the bytes exactly as they are laid out.
        let zeros =
            (len - REQ_CHECK_BYTES) - (REQ_HEADER_BYTES + (key.len() + payload.len()) as u64);
        let mut x = xxhash_rust::xxh3::Xxh3::with_seed(self.check_seed);
        x.update(&h);
        x.update(key);
        x.update(payload);
        x.update(&[0u8; 8][..zeros as usize]);
        let check = x.digest();
        self.region.write(at, &h);
        self.region.write(at + REQ_HEADER_BYTES, key);
        self.region.write(at + REQ_HEADER_BYTES + key.len() as u64, payload);
        let end = at + len - REQ_CHECK_BYTES;
        self.region.write(end - zeros, &[0u8; 8][..zeros as usize]);
        self.region.write(end, &check.to_le_bytes());
        *tail += len;
        // SYNC POINT: Release; pairs with the daemon's Acquire load of `tail` in `poll`:
        // the request bytes above are visible before the new tail.
        c.tail.store(*tail, Ordering::Release);
        self.ring_doorbell();
        Ok(())
    }

    /// Wake the daemon if it sleeps.
    #[inline]
    pub fn ring_doorbell(&self) {
        let h = self.hdr();
        // SYNC POINT: SeqCst pair with the daemon's store of `sleeping` then load of
        // `doorbell`: either it sees our increment or we see it sleeping (no lost wake-up).
        h.doorbell.fetch_add(1, Ordering::SeqCst);
        if h.sleeping.load(Ordering::SeqCst) != 0 {
            futex_wake(&h.doorbell, 1);
        }
    }

    /// Wait until box `b` has completed `ticket`, up to `timeout`. Returns early when the
    /// daemon poisons the box. `done` is a shared word: the caller bounds what it trusts
    /// by the tickets it issued and checks each result entry's ticket.
    pub fn wait_done(&self, b: u32, ticket: u64, timeout: Duration) -> Waited {
        let c = self.ctl(b);
        let entry = self.result(b, ticket);
        // SYNC POINT: Acquire; pairs with the daemon's Release store of `done` made after it
        // wrote the result entry. Done means `done` reached the ticket *and* the entry names
        // it: a `done` word another process pushed ahead does not make us read an entry the
        // daemon has not written yet (we keep waiting, up to the timeout).
        let state = |c: &BoxCtl| {
            if c.done.load(Ordering::Acquire) >= ticket
                && entry.ticket.load(Ordering::Relaxed) == ticket
            {
                Some(Waited::Done)
            } else if c.poisoned.load(Ordering::Acquire) != 0 {
                Some(Waited::Poisoned)
            } else {
                None
            }
        };
        if let Some(w) = state(c) {
            return w;
        }
        // Spin briefly: the daemon usually answers within a few microseconds, far less than
        // a futex sleep and wake-up cost.
        let spin_until = Instant::now() + Duration::from_micros(30).min(timeout);
        while Instant::now() < spin_until {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            if let Some(w) = state(c) {
                return w;
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(w) = state(c) {
                return w;
            }
            let now = Instant::now();
            if now >= deadline {
                return Waited::TimedOut;
            }
            self.sleep_on_done(b, deadline - now, |c| state(c).is_some());
        }
    }

    /// One futex sleep on the box's `done32` word, at most 100 ms (so that callers re-check
    /// the daemon's liveness and their deadline), unless `ready` already holds.
    ///
    /// The box's `waiters` word tells the daemon to wake us. It is stored from this
    /// process's own count of its sleeping threads, never incremented in place: a value
    /// another process wrote into it is replaced at the next sleep instead of skewing every
    /// later count (a count left at zero would cost each wait a full slice).
    pub(super) fn sleep_on_done(&self, b: u32, left: Duration, ready: impl Fn(&BoxCtl) -> bool) {
        let c = self.ctl(b);
        let mine = &self.consumers[b as usize].waiting;
        let n = mine.fetch_add(1, Ordering::SeqCst) + 1;
        c.waiters.store(n, Ordering::SeqCst);
        let seen = c.done32.load(Ordering::SeqCst);
        // SYNC POINT: SeqCst pair with the daemon's store of done32 then load of waiters:
        // either it sees us waiting and wakes us, or we see the new value and do not sleep.
        if !ready(c) {
            futex_wait(&c.done32, seen, left.min(Duration::from_millis(100)));
        }
        let n = mine.fetch_sub(1, Ordering::SeqCst) - 1;
        c.waiters.store(n, Ordering::SeqCst);
    }

    /// Whether a live daemon serves this ring.
    pub fn daemon_alive(&self) -> bool {
        let h = self.hdr();
        h.ready.load(Ordering::Acquire) == 1
            && shm::process_alive(h.daemon_pid.load(Ordering::Acquire), 0)
    }

    /// A short note on the daemon's state for error messages.
    pub fn daemon_note(&self) -> String {
        let h = self.hdr();
        let pid = h.daemon_pid.load(Ordering::Acquire);
        if h.retired.load(Ordering::Acquire) != 0 {
            "; this ring was replaced by a newer daemon".into()
        } else if pid == 0 || h.ready.load(Ordering::Acquire) == 0 {
            "; no daemon is serving this directory".into()
        } else if !shm::process_alive(pid, 0) {
            format!("; the daemon (pid {pid}) is not running")
        } else {
            format!("; the daemon (pid {pid}) is running but did not answer")
        }
    }
}
