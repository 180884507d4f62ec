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
use std::sync::atomic::{fence, AtomicU64, Ordering};
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
    /// The open file (its blocks are allocated as boxes are claimed) and its identity, to
    /// tell a ring that was really replaced on disk from a forged `retired` word.
    file: File,
    ident: (u64, u64),
    path: std::path::PathBuf,
    pub nboxes: u32,
    pub nresults: u32,
    pub box_bytes: u64,
    pub boxes_off: u64,
    pub results_off: u64,
    pub data_off: u64,
    pub hints_off: u64,
    pub hints_len: u64,
    pub max_value: u64,
    /// A version-1 ring (requests without checksums), found by a daemon that now drains
    /// it as a replaced ring; clients do not attach to one.
    pub legacy: bool,
    /// Seed of request checksums (the ring file's id).
    check_seed: u64,
    /// The daemon's own copy of each box's consumer state (private memory): it applies
    /// requests by these, never by `head` and `done` read back from the shared box while it
    /// runs, so another process writing them cannot make it skip or replay requests.
    consumers: Vec<Consumer>,
}

/// This process's private state for one box: the daemon's view of its consumer words
/// (see `Ring::consumers`), and, in a client, how many of its threads sleep on it.
#[derive(Default)]
struct Consumer {
    /// `BoxCtl::claims` when last taken from the box; u64::MAX: not taken yet.
    claims: AtomicU64,
    head: AtomicU64,
    done: AtomicU64,
    waiting: std::sync::atomic::AtomicU32,
    /// The daemon's reaper: owner words it found implausible at its last pass (see
    /// [`Ring::reap`]); 0: none.
    suspect: AtomicU64,
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

/// Bytes of a request with this key and payload, checksum included (before any pad).
pub fn request_len(key: &[u8], payload: &[u8]) -> u64 {
    align_up(REQ_HEADER_BYTES + key.len() as u64 + payload.len() as u64, 8) + REQ_CHECK_BYTES
}

fn file_ident(f: &File) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    Ok((m.dev(), m.ino()))
}

/// Largest read count an access hint holds.
pub const HINT_MAX: u8 = 3;

/// `owner_pid` of a box the daemon is resetting (never a real pid: pids fit in 22 bits).
pub const OWNER_RESETTING: u32 = u32::MAX;

/// Box states (`BoxCtl::active`).
pub const BOX_FREE: u32 = 0;
/// Owned and serving requests.
pub const BOX_ACTIVE: u32 = 1;
/// The owner is done with it: the daemon frees it once its queue is empty.
pub const BOX_RELEASED: u32 = 2;

/// What a wait for a ticket saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    Done,
    /// The daemon refused a malformed request in this box and skipped its queue.
    Poisoned,
    TimedOut,
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
        // Blocks for what every process stores into (the header, control blocks and access
        // hints); a box's queue and result entries are allocated by the client that claims
        // it. A store into a hole of a full filesystem would be a SIGBUS.
        nf.allocate(0, o.results)?;
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
        h.ring_id.store(shm::random_u64() | 1, Ordering::Relaxed);
        h.format_version.store(RING_VERSION, Ordering::Relaxed);
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
        let version = h.format_version.load(Ordering::Relaxed);
        if !(version == RING_VERSION || version == 1)
            || h.layout_sig.load(Ordering::Relaxed) != LAYOUT_SIG
        {
            return Err(Error::Incompatible(format!(
                "{} has ring format {version} layout {:#010x}; this surpdb uses {RING_VERSION} \
                 {LAYOUT_SIG:#010x}",
                path.display(),
                h.layout_sig.load(Ordering::Relaxed)
            )));
        }
        let legacy = version == 1;
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
        let ident = file_ident(f).map_err(|e| Error::io("cannot stat the ring", e))?;
        let file = f.try_clone().map_err(|e| Error::io("cannot keep the ring open", e))?;
        let consumers = (0..p.nboxes)
            .map(|_| Consumer { claims: AtomicU64::new(u64::MAX), ..Default::default() })
            .collect();
        Ok(Ring {
            legacy,
            check_seed: h.ring_id.load(Ordering::Relaxed),
            consumers,
            region,
            file,
            ident,
            path: path.to_path_buf(),
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

    /// Allocate the blocks every process stores into (header and control blocks), for a
    /// ring file made before allocation was done at creation.
    pub fn allocate_shared(&self, path: &Path) -> Result<()> {
        shm::allocate(&self.file, 0, self.results_off)
            .map_err(|e| shm::allocate_error(path, self.results_off, e))
    }

    /// Allocate the access hints of a heap of `heap_cap` bytes (the hint array is sized for
    /// the largest heap the segment may grow to; its blocks come as the heap grows).
    pub fn allocate_hints(&self, heap_cap: u64) -> Result<()> {
        let len = heap_cap.div_ceil(HINT_GRANULE).min(self.hints_len);
        shm::allocate(&self.file, self.hints_off, align_up(len, PAGE))
            .map_err(|e| shm::allocate_error(&self.path, len, e))
    }

    /// Whether the file at `path` is another file than this mapping (the daemon replaced
    /// the ring), as opposed to a `retired` word some client wrote into a ring still in use.
    pub fn replaced_at(&self, path: &Path) -> bool {
        match std::fs::metadata(path) {
            Ok(m) => {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino()) != self.ident
            }
            Err(_) => false,
        }
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

    /// Count a read of the record at a heap offset: the hint is a saturating count of reads
    /// (0-3) since the cleaner last passed it, which decides whether it is kept.
    #[inline]
    pub fn touch_hint(&self, heap_rel: u64) {
        let i = heap_rel / HINT_GRANULE;
        if i < self.hints_len {
            let h: &std::sync::atomic::AtomicU8 = self.region.get(self.hints_off + i);
            // Load first: a count already at its top is not written again (no ping-pong for
            // hot records). A lost increment between two readers costs nothing that matters.
            let v = h.load(Ordering::Relaxed);
            if v < HINT_MAX {
                h.store(v + 1, Ordering::Relaxed);
            }
        }
    }

    /// The read count of a heap offset, left as it is.
    #[inline]
    pub fn peek_hint(&self, heap_rel: u64) -> u8 {
        let i = heap_rel / HINT_GRANULE;
        if i >= self.hints_len {
            return 0;
        }
        let h: &std::sync::atomic::AtomicU8 = self.region.get(self.hints_off + i);
        h.load(Ordering::Relaxed).min(HINT_MAX)
    }

    /// Set the read count of a heap offset (daemon: a relocated record keeps part of it).
    #[inline]
    pub fn set_hint(&self, heap_rel: u64, v: u8) {
        let i = heap_rel / HINT_GRANULE;
        if i < self.hints_len {
            let h: &std::sync::atomic::AtomicU8 = self.region.get(self.hints_off + i);
            h.store(v.min(HINT_MAX), Ordering::Relaxed);
        }
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

    /// Claim a box for this process: a free one, or else one whose owner provably died
    /// with nothing left in its queue (its reader slot pins nothing once the owner is dead,
    /// and no request of it is waiting). Allocates the box's disk blocks. Returns its index,
    /// or None when every box belongs to a live process or holds queued requests.
    pub fn claim(&self, pid: u32, start: u64) -> Result<Option<u32>> {
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
                return Ok(Some(b));
            }
        }
        Ok(None)
    }

    /// Zero a box's queue, ticket and reader words (its owner is being replaced).
    fn reset_fields(&self, c: &BoxCtl) {
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
    fn fold_counters(&self, c: &BoxCtl) -> (u64, u64, u64) {
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

    /// Publish one request into box `b`. `tail` is the producer's private copy of the box's
    /// tail, `consumed` the position up to which it knows the daemon has taken requests out
    /// (the end of the last request whose answer it collected): the box's own `head` and
    /// `tail` words are never trusted, since another process could have written them, and a
    /// head pushed ahead would make the producer overwrite requests not yet taken. The
    /// caller has made room (`request_bytes` fits between `consumed` and `tail + box`).
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue(
        &self,
        b: u32,
        tail: &mut u64,
        consumed: u64,
        ticket: u64,
        op: u8,
        flags: u8,
        key: &[u8],
        payload: &[u8],
        arg: u64,
        arg2: u64,
    ) -> Result<()> {
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
    fn sleep_on_done(&self, b: u32, left: Duration, ready: impl Fn(&BoxCtl) -> bool) {
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

    // ------------------------------------------------------------------ daemon side

    /// The daemon's copy of box `b`'s consumer words: taken from the box the first time this
    /// daemon looks at it (they carry what a previous daemon consumed), and reset to zero
    /// whenever the box was claimed anew (a claim starts a box from zero), never read back
    /// from the box otherwise.
    fn consumer(&self, b: u32) -> &Consumer {
        let st = &self.consumers[b as usize];
        let c = self.ctl(b);
        let claims = c.claims.load(Ordering::Acquire);
        let known = st.claims.load(Ordering::Relaxed);
        if known != claims {
            let (head, done) = if known == u64::MAX {
                (c.head.load(Ordering::Acquire), c.done.load(Ordering::Acquire))
            } else {
                (0, 0)
            };
            st.head.store(head, Ordering::Relaxed);
            st.done.store(done, Ordering::Relaxed);
            st.claims.store(claims, Ordering::Relaxed);
        }
        st
    }

    /// Take every box's consumer words as a previous daemon left them (the daemon calls
    /// this once, when it attaches); from then on only a new claim changes them (to zero).
    pub fn adopt_consumers(&self) {
        for b in 0..self.nboxes {
            self.consumer(b);
        }
    }

    /// Move box `b`'s consumer position (journal recovery).
    pub fn set_head(&self, b: u32, head: u64) {
        self.consumer(b).head.store(head, Ordering::Relaxed);
        self.ctl(b).head.store(head, Ordering::Release);
    }

    /// The daemon's consumer position and last completed ticket of box `b`.
    pub fn consumed(&self, b: u32) -> (u64, u64) {
        let st = self.consumer(b);
        (st.head.load(Ordering::Relaxed), st.done.load(Ordering::Relaxed))
    }

    /// Whether the daemon should look at box `b`: owned and initialised by its claimer (an
    /// unclaimed box is never read, whatever its words say).
    #[inline]
    pub fn serves(&self, b: u32) -> bool {
        let c = self.ctl(b);
        let owner = c.owner_pid.load(Ordering::Acquire);
        owner != 0
            && owner != OWNER_RESETTING
            && matches!(c.active.load(Ordering::Acquire), BOX_ACTIVE | BOX_RELEASED)
    }

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
        let st = self.consumer(b);
        let mut head = st.head.load(Ordering::Relaxed);
        // SYNC POINT: Acquire; pairs with the producer's Release store of `tail`.
        let tail = c.tail.load(Ordering::Acquire);
        if tail < head || tail - head > self.box_bytes {
            if tail != head {
                self.poison(
                    b,
                    tail,
                    &format!("queue words inconsistent (head {head}, tail {tail})"),
                );
            }
            return 0;
        }
        let base = self.box_data(b);
        let mut n = 0;
        while head < tail && n < budget {
            let avail = tail - head;
            let phys = head % self.box_bytes;
            let mut h = [0u8; REQ_HEADER_BYTES as usize];
            let hlen = (REQ_HEADER_BYTES).min(self.box_bytes - phys).min(avail) as usize;
            if hlen < 8 || !self.region.read(base + phys, &mut h[..hlen]) {
                self.poison(b, tail, "truncated request header");
                return n;
            }
            let len = u32::from_le_bytes(h[0..4].try_into().unwrap()) as u64;
            let opc = h[4];
            if len < 8 || !len.is_multiple_of(8) || len > avail || phys + len > self.box_bytes {
                self.poison(b, tail, &format!("request length {len} at {head}"));
                return n;
            }
            if opc == op::PAD {
                head += len;
                st.head.store(head, Ordering::Relaxed);
                c.head.store(head, Ordering::Release);
                continue;
            }
            if len < REQ_HEADER_BYTES || hlen < REQ_HEADER_BYTES as usize {
                self.poison(b, tail, "short request");
                return n;
            }
            let key_len = u16::from_le_bytes(h[6..8].try_into().unwrap()) as u64;
            let ticket = u64::from_le_bytes(h[8..16].try_into().unwrap());
            let arg = u64::from_le_bytes(h[16..24].try_into().unwrap());
            let arg2 = u64::from_le_bytes(h[24..32].try_into().unwrap());
            let done = st.done.load(Ordering::Relaxed);
            if ticket == done && ticket != 0 {
                // Answered before a crash that came between storing `done` and moving
                // `head` past it (see `complete`): skip it, it is not applied twice.
                head += len;
                st.head.store(head, Ordering::Relaxed);
                c.head.store(head, Ordering::Release);
                continue;
            }
            let expected = done.wrapping_add(1);
            if ticket != expected
                || key_len > MAX_KEY_LEN as u64
                || REQ_HEADER_BYTES + key_len > len
            {
                self.poison(
                    b,
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
            let body = if self.legacy {
                &scratch[..]
            } else {
                let Some(data_len) = body.checked_sub(REQ_CHECK_BYTES) else {
                    self.poison(b, tail, "request too short for its checksum");
                    return n;
                };
                let (data, check) = scratch.split_at(data_len as usize);
                let mut x = xxhash_rust::xxh3::Xxh3::with_seed(self.check_seed);
                x.update(&h);
                x.update(data);
                if x.digest().to_le_bytes() != check || REQ_HEADER_BYTES + key_len > len - 8 {
                    self.poison(b, tail, &format!("request checksum at {head} (ticket {ticket})"));
                    return n;
                }
                data
            };
            let (key, rest) = body.split_at(key_len as usize);
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
                ring_id: self.hdr().ring_id.load(Ordering::Relaxed),
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
            if reply.status == status::DEFERRED {
                // Answered later (Ring::complete from the daemon loop): the box waits here.
                return n;
            }
            head += len;
            self.complete(b, ticket, head, reply);
            n += 1;
        }
        n
    }

    /// Publish the result of `ticket` in box `b` and move the box's head to `head`.
    ///
    /// Order, and what a crash between two stores leaves: the result entry, then `done`
    /// (the client may now collect it), then `head`. Killed after `done`, the restarted
    /// daemon finds the request still at the head with a ticket equal to `done`: it skips
    /// it (see `poll`), so it is answered once and applied once.
    pub fn complete(&self, b: u32, ticket: u64, head: u64, reply: Reply) {
        let c = self.ctl(b);
        let st = self.consumer(b);
        st.done.store(ticket, Ordering::Relaxed);
        st.head.store(head, Ordering::Relaxed);
        let r = self.result(b, ticket);
        r.status.store(reply.status, Ordering::Relaxed);
        r.value.store(reply.value, Ordering::Relaxed);
        r.aux.store(reply.aux, Ordering::Relaxed);
        r.ticket.store(ticket, Ordering::Relaxed);
        if reply.status != status::OK && reply.status != status::NOT_DONE {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
        crate::crash::point("result entry written");
        // SYNC POINT: SeqCst (a Release store, and the store half of the no-lost-wake-up pair
        // with the client's waiters increment): the result entry is visible before `done`.
        c.done.store(ticket, Ordering::SeqCst);
        c.done32.store(ticket as u32, Ordering::SeqCst);
        crate::crash::point("done stored");
        // SYNC POINT: Release; pairs with the producer's Acquire load of `head` (the request's
        // bytes may now be overwritten) and with `release`'s check that the box is drained.
        c.head.store(head, Ordering::Release);
        crate::crash::point("box head stored");
        if c.waiters.load(Ordering::SeqCst) != 0 {
            futex_wake(&c.done32, i32::MAX);
        }
    }

    fn poison(&self, b: u32, tail: u64, why: &str) {
        let c = self.ctl(b);
        crate::log::warn(&format!(
            "malformed request, skipping the client's queue owner_pid={} why={why}",
            c.owner_pid.load(Ordering::Relaxed)
        ));
        c.poisoned.store(1, Ordering::Release);
        self.consumer(b).head.store(tail, Ordering::Relaxed);
        c.head.store(tail, Ordering::Release);
        c.errors.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        c.done32.fetch_add(1, Ordering::SeqCst);
        futex_wake(&c.done32, i32::MAX);
    }

    /// Free box `b` if its owner exited (or released it) and nothing in its queue can still
    /// be applied (drained, poisoned, or words no client writes). The
    /// owner word is taken with a CAS first, so a client taking the dead owner's box over at
    /// the same moment (see `claim`) and the reaper never both think they own it. Returns
    /// the folded counters when it freed the box.
    pub fn reap(&self, b: u32) -> Option<(u64, u64, u64)> {
        let c = self.ctl(b);
        let pid = c.owner_pid.load(Ordering::Acquire);
        let start = c.owner_start.load(Ordering::Relaxed);
        let suspect = &self.consumer(b).suspect;
        if pid == 0 {
            suspect.store(0, Ordering::Relaxed);
            return None;
        }
        // Owner words no claim leaves standing: OWNER_RESETTING is written only by this
        // daemon, inside this function (so it is left over from a crash, or bytes a group
        // member wrote), and a live owner without a start time, where start times exist, is
        // a claim between its two stores, which takes microseconds. Seen at two passes of the
        // reaper (200 ms apart), either is garbage that would hold the box forever: before,
        // random words that named pid 2 (a kernel thread) or RESETTING took every box.
        let implausible = pid == OWNER_RESETTING
            || (start == 0 && shm::process_start_time(shm::getpid()).is_some());
        let stale = if implausible {
            let mark = (pid as u64) << 32 | 1;
            suspect.swap(mark, Ordering::Relaxed) == mark
        } else {
            suspect.store(0, Ordering::Relaxed);
            false
        };
        if pid == OWNER_RESETTING && !stale {
            return None;
        }
        let (tail, head) = (c.tail.load(Ordering::Acquire), self.consumed(b).0);
        let active = c.active.load(Ordering::Acquire);
        // Nothing in it can still be applied: drained; or refused (poisoned); or words no
        // client writes (the daemon would never serve it: an active state or a queue that
        // makes no sense).
        let nothing_owed = tail == head
            || c.poisoned.load(Ordering::Acquire) != 0
            || !matches!(active, BOX_ACTIVE | BOX_RELEASED)
            || tail < head
            || tail - head > self.box_bytes;
        if !nothing_owed {
            return None;
        }
        let released = active != BOX_ACTIVE;
        if !released && !stale && shm::process_alive(pid, start) {
            return None;
        }
        suspect.store(0, Ordering::Relaxed);
        if c.owner_pid
            .compare_exchange(pid, OWNER_RESETTING, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        c.active.store(BOX_FREE, Ordering::Release);
        let counts = self.fold_counters(c);
        self.reset_fields(c);
        c.owner_start.store(0, Ordering::Relaxed);
        // SYNC POINT: Release; the next claimer's CAS (AcqRel) sees the reset fields.
        c.owner_pid.store(0, Ordering::Release);
        crate::crash::point("box reaped");
        Some(counts)
    }
}

/// A request as the daemon sees it (validated framing, copied out of the box).
pub struct Req<'a> {
    /// Where it came from (ring, box), and where its box's head goes once it is done (for
    /// the journal).
    pub ring_id: u64,
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
        let b = r.claim(shm::getpid(), 0).unwrap().unwrap();
        let mut tail = 0;
        let mut scratch = Vec::new();
        let mut seen = Vec::new();
        for t in 1..=500u64 {
            let payload = vec![t as u8; (t % 300) as usize];
            // The box is drained every third request: what it consumed is its head.
            let consumed = r.consumed(b).0.max(r.ctl(b).head.load(Ordering::Acquire));
            r.enqueue(
                b,
                &mut tail,
                consumed,
                t,
                op::SET,
                0,
                b"key",
                &payload,
                t,
                payload.len() as u64,
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
        assert_eq!(r.wait_done(b, 500, Duration::from_millis(10)), Waited::Done);
        assert_eq!(r.result(b, 500).value.load(Ordering::Relaxed), 1000);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_full_box_is_queue_full() {
        let (r, d) = ring(4096);
        let b = r.claim(shm::getpid(), 0).unwrap().unwrap();
        let mut tail = 0;
        let payload = vec![0u8; 1000];
        let mut t = 1;
        let err = loop {
            match r.enqueue(b, &mut tail, 0, t, op::SET, 0, b"k", &payload, 0, 1000) {
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
        let b = r.claim(shm::getpid(), 0).unwrap().unwrap();
        let base = r.data_off + b as u64 * r.box_bytes;
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut scratch = Vec::new();
        let mut poisoned = 0;
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
            c.poisoned.store(0, Ordering::Relaxed);
            c.claims.fetch_add(1, Ordering::Relaxed); // as a new claim: the daemon resyncs
            let tail = 8 * (1 + round % 32);
            c.tail.store(tail, Ordering::Release);
            let mut applied = 0;
            r.poll(b, 10, &mut scratch, |q| {
                applied += 1;
                assert_eq!(q.ticket, applied, "only a request with the next ticket is applied");
                Reply::ok(0)
            });
            // Garbage is either skipped as a whole (poisoned: head jumps to the tail) or,
            // rarely, parses as requests with consecutive tickets; it never stops half-way
            // without a poison.
            let (head, _) = r.consumed(b);
            if c.poisoned.load(Ordering::Acquire) == 1 {
                poisoned += 1;
                assert_eq!(head, tail, "a poisoned box's queue is skipped to its tail");
            } else {
                assert!(head == tail || applied == 10, "round {round}: stopped at {head}");
            }
        }
        assert!(poisoned > 150, "random bytes are refused: {poisoned} of 200 poisoned");
        std::fs::remove_dir_all(d).unwrap();
    }
}
