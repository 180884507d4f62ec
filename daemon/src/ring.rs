//! The request ring file: one mailbox per client process, each a single-producer /
//! single-consumer byte ring, plus per-box results, reader-epoch slots and access hints.
//!
//! ```text
//! 0          4096                     results_off               data_off            hints_off
//! | RingHeader | BoxCtl x nboxes      | ResultEntry x nboxes x R | box data x nboxes | hints |
//! ```
//!
//! Why a mailbox per process rather than one shared MPSC ring: a producer that dies between
//! reserving space and publishing it would wedge a shared ring for every client; here it can
//! only leave its own box unpublished, which the daemon reaps by pid. Within a process the
//! producer side is serialised by a mutex (see pyclient), so each box is strictly SPSC and
//! needs no CAS on the hot path. Order: requests of one process are applied in the order they
//! were enqueued; a request enqueued after another one was acknowledged is applied after it.
//!
//! Why a mapped file and not the `shared_memory` crate: the ring must survive the daemon
//! (requests enqueued while it is down are applied when it returns) and carry Unix
//! permissions (0660, the service group); a file in the data directory gives both, and
//! memmap2 maps it the same way as the segment.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::layout::*;
use crate::shm::{self, futex_wait, futex_wake, Region};

/// Ring parameters chosen by the daemon.
#[derive(Clone, Copy, Debug)]
pub struct RingParams {
    pub nboxes: u32,
    pub box_bytes: u64,
    pub nresults: u32,
    pub hints_len: u64,
    pub seg_seed: u64,
    pub max_value: u64,
}

/// A mapped ring file.
pub struct Ring {
    pub region: Region,
    pub nboxes: u32,
    pub nresults: u32,
    pub box_bytes: u64,
    pub boxes_off: u64,
    pub results_off: u64,
    pub data_off: u64,
    pub hints_off: u64,
    pub hints_len: u64,
    pub max_value: u64,
}

struct Offsets {
    boxes: u64,
    results: u64,
    data: u64,
    hints: u64,
    total: u64,
}

fn offsets(p: &RingParams) -> Option<Offsets> {
    let boxes = HEADER_BYTES;
    let results = align_up(boxes.checked_add((p.nboxes as u64).checked_mul(256)?)?, PAGE);
    let rbytes = (p.nboxes as u64).checked_mul(p.nresults as u64)?.checked_mul(32)?;
    let data = align_up(results.checked_add(rbytes)?, PAGE);
    let hints = align_up(data.checked_add((p.nboxes as u64).checked_mul(p.box_bytes)?)?, PAGE);
    let total = align_up(hints.checked_add(p.hints_len)?, PAGE);
    Some(Offsets { boxes, results, data, hints, total })
}

/// Largest request a box of `box_bytes` accepts: half the box, so that a request always
/// fits after at most one pad to the buffer's end.
pub fn max_request(box_bytes: u64) -> u64 {
    box_bytes / 2
}

impl Ring {
    /// Create a ring file (under a temporary name, then renamed over `path`).
    pub fn create(path: &Path, p: &RingParams, mode: u32) -> Result<()> {
        let o = offsets(p).ok_or_else(|| Error::Config("ring parameters overflow".into()))?;
        let nf = shm::NewFile::create(path, mode, o.total)?;
        let region = &nf.region;
        let h: &RingHeader = region.get(0);
        h.nboxes.store(p.nboxes, Ordering::Relaxed);
        h.nresults.store(p.nresults, Ordering::Relaxed);
        h.box_bytes.store(p.box_bytes, Ordering::Relaxed);
        h.boxes_off.store(o.boxes, Ordering::Relaxed);
        h.results_off.store(o.results, Ordering::Relaxed);
        h.data_off.store(o.data, Ordering::Relaxed);
        h.hints_off.store(o.hints, Ordering::Relaxed);
        h.hints_len.store(p.hints_len, Ordering::Relaxed);
        h.seg_seed.store(p.seg_seed, Ordering::Relaxed);
        h.max_value.store(p.max_value, Ordering::Relaxed);
        h.format_version.store(FORMAT_VERSION, Ordering::Relaxed);
        h.layout_sig.store(LAYOUT_SIG, Ordering::Relaxed);
        h.magic.store(RING_MAGIC, Ordering::Release);
        nf.install(false)
    }

    pub fn open(path: &Path) -> Result<Ring> {
        let f =
            OpenOptions::new().read(true).write(true).open(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::Unavailable(format!(
                    "no request ring at {} (is surpd running?)",
                    path.display()
                )),
                std::io::ErrorKind::PermissionDenied => {
                    shm::permission_error(path, "opening the request ring for writing", e)
                }
                _ => Error::io(format!("cannot open {} for writing requests", path.display()), e),
            })?;
        Self::from_file(&f, path)
    }

    pub fn from_file(f: &File, path: &Path) -> Result<Ring> {
        let len = f.metadata().map_err(|e| Error::io("cannot stat the ring", e))?.len();
        if len < HEADER_BYTES {
            return Err(Error::Incompatible(format!("{} is not a surpdb ring", path.display())));
        }
        let region = Region::map_rw(f).map_err(|e| Error::io("cannot map the ring", e))?;
        let h: &RingHeader = region.get(0);
        if h.magic.load(Ordering::Acquire) != RING_MAGIC {
            return Err(Error::Incompatible(format!("{} is not a surpdb ring", path.display())));
        }
        if h.format_version.load(Ordering::Relaxed) != FORMAT_VERSION
            || h.layout_sig.load(Ordering::Relaxed) != LAYOUT_SIG
        {
            return Err(Error::Incompatible(format!(
                "{} has ring format {} layout {:#010x}; this surpdb uses {FORMAT_VERSION} {LAYOUT_SIG:#010x}",
                path.display(),
                h.format_version.load(Ordering::Relaxed),
                h.layout_sig.load(Ordering::Relaxed)
            )));
        }
        let p = RingParams {
            nboxes: h.nboxes.load(Ordering::Relaxed),
            box_bytes: h.box_bytes.load(Ordering::Relaxed),
            nresults: h.nresults.load(Ordering::Relaxed),
            hints_len: h.hints_len.load(Ordering::Relaxed),
            seg_seed: h.seg_seed.load(Ordering::Relaxed),
            max_value: h.max_value.load(Ordering::Relaxed),
        };
        let bad = |m: &str| Error::Corrupted(format!("{}: bad ring header: {m}", path.display()));
        if p.nboxes == 0 || !p.box_bytes.is_multiple_of(PAGE) || p.box_bytes < 4096 {
            return Err(bad("box geometry"));
        }
        if !p.nresults.is_power_of_two() {
            return Err(bad("result count"));
        }
        let o = offsets(&p).ok_or_else(|| bad("overflow"))?;
        if o.total != len
            || o.boxes != h.boxes_off.load(Ordering::Relaxed)
            || o.results != h.results_off.load(Ordering::Relaxed)
            || o.data != h.data_off.load(Ordering::Relaxed)
            || o.hints != h.hints_off.load(Ordering::Relaxed)
        {
            return Err(bad("offsets"));
        }
        Ok(Ring {
            region,
            nboxes: p.nboxes,
            nresults: p.nresults,
            box_bytes: p.box_bytes,
            boxes_off: o.boxes,
            results_off: o.results,
            data_off: o.data,
            hints_off: o.hints,
            hints_len: p.hints_len,
            max_value: p.max_value,
        })
    }

    pub fn params(&self) -> RingParams {
        RingParams {
            nboxes: self.nboxes,
            box_bytes: self.box_bytes,
            nresults: self.nresults,
            hints_len: self.hints_len,
            seg_seed: self.hdr().seg_seed.load(Ordering::Relaxed),
            max_value: self.max_value,
        }
    }

    #[inline]
    pub fn hdr(&self) -> &RingHeader {
        self.region.get(0)
    }

    #[inline]
    pub fn ctl(&self, b: u32) -> &BoxCtl {
        self.region.get(self.boxes_off + b as u64 * 256)
    }

    #[inline]
    pub fn result(&self, b: u32, ticket: u64) -> &ResultEntry {
        let i = ticket & (self.nresults as u64 - 1);
        self.region.get(self.results_off + (b as u64 * self.nresults as u64 + i) * 32)
    }

    #[inline]
    fn box_data(&self, b: u32) -> u64 {
        self.data_off + b as u64 * self.box_bytes
    }

    /// Mark a heap offset as recently read (a hint for eviction's second chance).
    #[inline]
    pub fn touch_hint(&self, heap_rel: u64) {
        let i = heap_rel / HINT_GRANULE;
        if i < self.hints_len {
            let h: &std::sync::atomic::AtomicU8 = self.region.get(self.hints_off + i);
            // Load first: a line already marked is not written again (no ping-pong).
            if h.load(Ordering::Relaxed) == 0 {
                h.store(1, Ordering::Relaxed);
            }
        }
    }

    /// Read and clear the hint for a heap offset (daemon).
    #[inline]
    pub fn take_hint(&self, heap_rel: u64) -> bool {
        let i = heap_rel / HINT_GRANULE;
        if i >= self.hints_len {
            return false;
        }
        let h: &std::sync::atomic::AtomicU8 = self.region.get(self.hints_off + i);
        h.swap(0, Ordering::Relaxed) != 0
    }

    /// Clear a hint without reading it (daemon, when space is reused).
    #[inline]
    pub fn clear_hint(&self, heap_rel: u64) {
        let i = heap_rel / HINT_GRANULE;
        if i < self.hints_len {
            let h: &std::sync::atomic::AtomicU8 = self.region.get(self.hints_off + i);
            if h.load(Ordering::Relaxed) != 0 {
                h.store(0, Ordering::Relaxed);
            }
        }
    }

    // ------------------------------------------------------------------ client side

    /// Claim a free box for this process. Returns its index.
    pub fn claim(&self, pid: u32, start: u64) -> Result<u32> {
        for b in 0..self.nboxes {
            let c = self.ctl(b);
            if c.owner_pid.load(Ordering::Relaxed) != 0 {
                continue;
            }
            if c.owner_pid.compare_exchange(0, pid, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                c.owner_start.store(start, Ordering::Relaxed);
                c.epoch.store(0, Ordering::Relaxed);
                c.view_epoch.store(0, Ordering::Relaxed);
                // head/tail/done were reset by the daemon before it freed the box.
                // SYNC POINT: Release; the daemon's Acquire load of `active` sees the fields.
                c.active.store(1, Ordering::Release);
                return Ok(b);
            }
        }
        Err(Error::Unavailable(format!(
            "all {} client slots of the request ring are taken (raise surpd's max_clients)",
            self.nboxes
        )))
    }

    /// Release a box at clean client exit (the daemon would reap it by pid otherwise). Only
    /// marks it idle: the daemon resets and frees it once its requests are applied.
    pub fn release(&self, b: u32) {
        let c = self.ctl(b);
        c.epoch.store(0, Ordering::Release);
        c.view_epoch.store(0, Ordering::Release);
        c.active.store(2, Ordering::Release);
    }

    /// Publish one request into box `b`. `tail` is the producer's private copy of the box's
    /// tail. Waits up to `timeout` for space, then fails with QueueFull.
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue(
        &self,
        b: u32,
        tail: &mut u64,
        ticket: u64,
        op: u8,
        flags: u8,
        key: &[u8],
        payload: &[u8],
        arg: u64,
        arg2: u64,
        timeout: Duration,
    ) -> Result<()> {
        let len = align_up(REQ_HEADER_BYTES + key.len() as u64 + payload.len() as u64, 8);
        if len > max_request(self.box_bytes) {
            return Err(Error::ValueTooLarge { size: payload.len() as u64, max: self.max_value });
        }
        let c = self.ctl(b);
        let phys = *tail % self.box_bytes;
        let pad = if phys + len > self.box_bytes { self.box_bytes - phys } else { 0 };
        let need = pad + len;
        // SYNC POINT: Acquire; pairs with the daemon's Release store of `head`, after which
        // the consumed bytes may be overwritten.
        if *tail + need - c.head.load(Ordering::Acquire) > self.box_bytes {
            c.queue_waits.fetch_add(1, Ordering::Relaxed);
            self.wait_space(c, *tail + need, timeout)?;
        }
        let base = self.box_data(b);
        if pad > 0 {
            let mut h = [0u8; 8];
            h[0..4].copy_from_slice(&(pad as u32).to_le_bytes());
            h[4] = op::PAD;
            self.region.write(base + phys, &h);
            *tail += pad;
        }
        let at = base + *tail % self.box_bytes;
        let mut h = [0u8; REQ_HEADER_BYTES as usize];
        h[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        h[4] = op;
        h[5] = flags;
        h[6..8].copy_from_slice(&(key.len() as u16).to_le_bytes());
        h[8..16].copy_from_slice(&ticket.to_le_bytes());
        h[16..24].copy_from_slice(&arg.to_le_bytes());
        h[24..32].copy_from_slice(&arg2.to_le_bytes());
        self.region.write(at, &h);
        self.region.write(at + REQ_HEADER_BYTES, key);
        self.region.write(at + REQ_HEADER_BYTES + key.len() as u64, payload);
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

    fn wait_space(&self, c: &BoxCtl, need_end: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if need_end - c.head.load(Ordering::Acquire) <= self.box_bytes {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                let pending = c.tail.load(Ordering::Relaxed) - c.head.load(Ordering::Relaxed);
                return Err(Error::QueueFull(format!(
                    "request queue full for {:.1}s: {pending} of {} bytes pending{}",
                    timeout.as_secs_f64(),
                    self.box_bytes,
                    self.daemon_note()
                )));
            }
            self.sleep_on_done(c, deadline - now, |c| {
                need_end - c.head.load(Ordering::Acquire) <= self.box_bytes
            });
        }
    }

    /// Wait until box `b` has completed `ticket`, up to `timeout`. Ok(false) on timeout.
    pub fn wait_done(&self, b: u32, ticket: u64, timeout: Duration) -> bool {
        let c = self.ctl(b);
        // SYNC POINT: Acquire; pairs with the daemon's Release store of `done` made after it
        // wrote the result entry.
        if c.done.load(Ordering::Acquire) >= ticket {
            return true;
        }
        // Spin briefly: the daemon usually answers within a few microseconds, far less than
        // a futex sleep and wake-up cost.
        let spin_until = Instant::now() + Duration::from_micros(30);
        while Instant::now() < spin_until {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            if c.done.load(Ordering::Acquire) >= ticket {
                return true;
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            if c.done.load(Ordering::Acquire) >= ticket {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            self.sleep_on_done(c, deadline - now, |c| c.done.load(Ordering::Acquire) >= ticket);
        }
    }

    /// One futex sleep on the box's `done32` word, at most 100 ms (so that callers re-check
    /// the daemon's liveness and their deadline), unless `ready` already holds.
    fn sleep_on_done(&self, c: &BoxCtl, left: Duration, ready: impl Fn(&BoxCtl) -> bool) {
        c.waiters.fetch_add(1, Ordering::SeqCst);
        let seen = c.done32.load(Ordering::SeqCst);
        // SYNC POINT: SeqCst pair with the daemon's store of done32 then load of waiters:
        // either it sees us waiting and wakes us, or we see the new value and do not sleep.
        if !ready(c) {
            futex_wait(&c.done32, seen, left.min(Duration::from_millis(100)));
        }
        c.waiters.fetch_sub(1, Ordering::SeqCst);
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

    // ------------------------------------------------------------------ daemon side

    /// Take the requests published in box `b` since `head` (at most `budget`), calling
    /// `apply(header fields, key, payload)` for each, writing its result and advancing the
    /// box. Returns how many requests were applied. A malformed request poisons the box:
    /// everything pending in it is skipped and the owner is told to reset.
    pub fn poll(
        &self,
        b: u32,
        budget: usize,
        scratch: &mut Vec<u8>,
        mut apply: impl FnMut(&Req<'_>) -> Reply,
    ) -> usize {
        let c = self.ctl(b);
        let mut head = c.head.load(Ordering::Relaxed);
        // SYNC POINT: Acquire; pairs with the producer's Release store of `tail`.
        let tail = c.tail.load(Ordering::Acquire);
        let base = self.box_data(b);
        let mut n = 0;
        while head < tail && n < budget {
            let avail = tail - head;
            let phys = head % self.box_bytes;
            let mut h = [0u8; REQ_HEADER_BYTES as usize];
            let hlen = (REQ_HEADER_BYTES).min(self.box_bytes - phys).min(avail) as usize;
            if hlen < 8 || !self.region.read(base + phys, &mut h[..hlen]) {
                self.poison(c, tail, "truncated request header");
                return n;
            }
            let len = u32::from_le_bytes(h[0..4].try_into().unwrap()) as u64;
            let opc = h[4];
            if len < 8 || !len.is_multiple_of(8) || len > avail || phys + len > self.box_bytes {
                self.poison(c, tail, &format!("request length {len} at {head}"));
                return n;
            }
            if opc == op::PAD {
                head += len;
                c.head.store(head, Ordering::Release);
                continue;
            }
            if len < REQ_HEADER_BYTES || hlen < REQ_HEADER_BYTES as usize {
                self.poison(c, tail, "short request");
                return n;
            }
            let key_len = u16::from_le_bytes(h[6..8].try_into().unwrap()) as u64;
            let ticket = u64::from_le_bytes(h[8..16].try_into().unwrap());
            let arg = u64::from_le_bytes(h[16..24].try_into().unwrap());
            let arg2 = u64::from_le_bytes(h[24..32].try_into().unwrap());
            let expected = c.done.load(Ordering::Relaxed) + 1;
            if ticket != expected
                || key_len > MAX_KEY_LEN as u64
                || REQ_HEADER_BYTES + key_len > len
            {
                self.poison(
                    c,
                    tail,
                    &format!("ticket {ticket} (expected {expected}) key {key_len}"),
                );
                return n;
            }
            // Copy out: the producer could scribble over its own box; the copy is what we
            // validate and apply.
            let body = len - REQ_HEADER_BYTES;
            scratch.resize(body as usize, 0);
            self.region.read(base + phys + REQ_HEADER_BYTES, scratch);
            let (key, rest) = scratch.split_at(key_len as usize);
            // Ops with a payload carry its length in arg2 (checked again by the apply step).
            let has_payload = matches!(
                opc,
                op::SET
                    | op::ADD
                    | op::APPEND
                    | op::MERGE
                    | op::CAS
                    | op::ZADD
                    | op::ZREM
                    | op::INSERT
                    | op::UPDATE
                    | op::TRAIN
            );
            let payload_len = if has_payload { arg2.min(rest.len() as u64) } else { 0 };
            let req = Req {
                boxno: b,
                ticket,
                head_after: head + len,
                op: opc,
                flags: h[5],
                key,
                payload: &rest[..payload_len as usize],
                arg,
                arg2,
            };
            let reply = apply(&req);
            head += len;
            self.complete(b, ticket, head, reply);
            n += 1;
        }
        n
    }

    /// Publish the result of `ticket` in box `b` and move the box's head to `head`.
    pub fn complete(&self, b: u32, ticket: u64, head: u64, reply: Reply) {
        let c = self.ctl(b);
        let r = self.result(b, ticket);
        r.status.store(reply.status, Ordering::Relaxed);
        r.value.store(reply.value, Ordering::Relaxed);
        r.aux.store(reply.aux, Ordering::Relaxed);
        r.ticket.store(ticket, Ordering::Relaxed);
        if reply.status != status::OK && reply.status != status::NOT_DONE {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
        c.head.store(head, Ordering::Release);
        // SYNC POINT: SeqCst (a Release store, and the store half of the no-lost-wake-up pair
        // with the client's waiters increment): the result entry is visible before `done`.
        c.done.store(ticket, Ordering::SeqCst);
        c.done32.store(ticket as u32, Ordering::SeqCst);
        if c.waiters.load(Ordering::SeqCst) != 0 {
            futex_wake(&c.done32, i32::MAX);
        }
    }

    fn poison(&self, c: &BoxCtl, tail: u64, why: &str) {
        crate::log::warn(&format!(
            "malformed request, skipping the client's queue owner_pid={} why={why}",
            c.owner_pid.load(Ordering::Relaxed)
        ));
        c.poisoned.store(1, Ordering::Release);
        c.head.store(tail, Ordering::Release);
        c.errors.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        c.done32.fetch_add(1, Ordering::SeqCst);
        futex_wake(&c.done32, i32::MAX);
    }

    /// Reset a box whose owner is gone and whose queue is drained, and free it.
    pub fn reap(&self, b: u32) -> (u64, u64, u64) {
        let c = self.ctl(b);
        self.hdr()
            .retired_queue_waits
            .fetch_add(c.queue_waits.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        let counts = (
            c.hits.swap(0, Ordering::Relaxed),
            c.misses.swap(0, Ordering::Relaxed),
            c.corrupt.swap(0, Ordering::Relaxed),
        );
        c.active.store(0, Ordering::Relaxed);
        c.epoch.store(0, Ordering::Relaxed);
        c.view_epoch.store(0, Ordering::Relaxed);
        c.tail.store(0, Ordering::Relaxed);
        c.head.store(0, Ordering::Relaxed);
        c.done.store(0, Ordering::Relaxed);
        c.done32.store(0, Ordering::Relaxed);
        c.poisoned.store(0, Ordering::Relaxed);
        c.errors.store(0, Ordering::Relaxed);
        c.owner_start.store(0, Ordering::Relaxed);
        // SYNC POINT: Release; the next claimer's CAS (AcqRel) sees the reset fields.
        c.owner_pid.store(0, Ordering::Release);
        counts
    }
}

/// A request as the daemon sees it (validated framing, copied out of the box).
pub struct Req<'a> {
    /// Where it came from, and where its box's head goes once it is done (for the journal).
    pub boxno: u32,
    pub ticket: u64,
    pub head_after: u64,
    pub op: u8,
    pub flags: u8,
    pub key: &'a [u8],
    pub payload: &'a [u8],
    pub arg: u64,
    pub arg2: u64,
}

/// The daemon's answer to one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub value: u64,
    pub aux: u64,
}

impl Reply {
    pub fn ok(value: u64) -> Reply {
        Reply { status: status::OK, value, aux: 0 }
    }
    pub fn status(status: u32) -> Reply {
        Reply { status, value: 0, aux: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(box_bytes: u64) -> (Ring, std::path::PathBuf) {
        let d = std::env::temp_dir().join(format!(
            "surpd-ring-{}-{}",
            shm::getpid(),
            shm::random_u64()
        ));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("ring.surp");
        let params = RingParams {
            nboxes: 4,
            box_bytes,
            nresults: 64,
            hints_len: 4096,
            seg_seed: 1,
            max_value: 1024,
        };
        Ring::create(&p, &params, 0o660).unwrap();
        (Ring::open(&p).unwrap(), d)
    }

    #[test]
    fn requests_round_trip_in_order_across_wraps() {
        let (r, d) = ring(4096);
        let b = r.claim(shm::getpid(), 0).unwrap();
        let mut tail = 0;
        let mut scratch = Vec::new();
        let mut seen = Vec::new();
        for t in 1..=500u64 {
            let payload = vec![t as u8; (t % 300) as usize];
            r.enqueue(
                b,
                &mut tail,
                t,
                op::SET,
                0,
                b"key",
                &payload,
                t,
                payload.len() as u64,
                Duration::from_secs(1),
            )
            .unwrap();
            // Drain every few requests so that the box wraps many times.
            if t % 3 == 0 {
                r.poll(b, 100, &mut scratch, |q| {
                    assert_eq!(q.key, b"key");
                    assert!(q.payload.iter().all(|&x| x == q.arg as u8));
                    seen.push(q.arg);
                    Reply::ok(q.arg * 2)
                });
            }
        }
        r.poll(b, 100, &mut scratch, |q| {
            seen.push(q.arg);
            Reply::ok(q.arg * 2)
        });
        assert_eq!(seen, (1..=500).collect::<Vec<_>>());
        assert!(r.wait_done(b, 500, Duration::from_millis(10)));
        assert_eq!(r.result(b, 500).value.load(Ordering::Relaxed), 1000);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn full_box_times_out_with_queue_full() {
        let (r, d) = ring(4096);
        let b = r.claim(shm::getpid(), 0).unwrap();
        let mut tail = 0;
        let payload = vec![0u8; 1000];
        let mut t = 1;
        let err = loop {
            match r.enqueue(
                b,
                &mut tail,
                t,
                op::SET,
                0,
                b"k",
                &payload,
                0,
                1000,
                Duration::from_millis(20),
            ) {
                Ok(()) => t += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, Error::QueueFull(ref m) if m.contains("4096")), "{err}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn garbage_in_a_box_poisons_it_without_panicking() {
        let (r, d) = ring(4096);
        let b = r.claim(shm::getpid(), 0).unwrap();
        let base = r.data_off + b as u64 * r.box_bytes;
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut scratch = Vec::new();
        for round in 0..200 {
            let mut junk = [0u8; 256];
            for byte in junk.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            r.region.write(base, &junk);
            let c = r.ctl(b);
            c.head.store(0, Ordering::Relaxed);
            c.done.store(0, Ordering::Relaxed);
            c.tail.store(8 * (1 + round % 32), Ordering::Release);
            r.poll(b, 10, &mut scratch, |_| Reply::ok(0));
        }
        std::fs::remove_dir_all(d).unwrap();
    }
}
