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
//! producer side is serialised by the core client's mutex, so each box is strictly SPSC and
//! needs no CAS on the hot path. Order: requests of one process are applied in the order they
//! were enqueued; a request enqueued after another one was acknowledged is applied after it.
//!
//! Why a mapped file and not the `shared_memory` crate: the ring must survive the daemon
//! (requests enqueued while it is down are applied when it returns) and carry Unix
//! permissions (0660, the service group); a file in the data directory gives both, and
//! memmap2 maps it the same way as the segment.
//!
//! Here: the file's geometry, creation and validation, the shared words by box. `producer`:
//! the client side (claim, frame, wait). `consumer`: the daemon side (take, validate, answer,
//! poison, reap). `hints`: the readers' access counts the cleaner reads.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::layout::*;
use crate::protocol::{Op, Request};
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
    /// How far requests were taken (>= `head`), and the ticket of the last one taken: the
    /// requests between `head` and `taken` are in flight (tiered mode pipelines a box's
    /// writes to the upstream and answers them in order). Never in shared memory: a
    /// restarted daemon takes them again from `head`.
    taken: AtomicU64,
    taken_ticket: AtomicU64,
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
}

/// A request as the daemon sees it (validated framing, copied out of the box).
pub struct Req<'a> {
    /// Where it came from (ring, box), and where its box's head goes once it is done (for
    /// the journal).
    pub ring_id: u64,
    pub boxno: u32,
    /// The box's claim count when it was taken (a request answered later checks that its
    /// box was not claimed anew meanwhile).
    pub claim: u64,
    pub ticket: u64,
    pub head_after: u64,
    /// The box's owner (pid, process start time) when it was taken: the caller a lease
    /// names, whichever ring the box is in.
    pub owner: (u32, u64),
    /// The request itself, as the client built it (`req.op`, `req.key`... through Deref).
    pub request: Request<'a>,
}

impl<'a> std::ops::Deref for Req<'a> {
    type Target = Request<'a>;
    fn deref(&self) -> &Request<'a> {
        &self.request
    }
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

mod consumer;
mod hints;
mod producer;
pub use producer::BoxWriter;
#[cfg(test)]
mod tests;
