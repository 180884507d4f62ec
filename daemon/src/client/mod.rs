//! The client side: attach to a data directory, read records straight from the mapping, and
//! enqueue writes into this process's mailbox. Used by the Python binding and by tests.
//!
//! Read path (no syscall, no lock): pin the reader epoch (one store and a fence in this
//! process's own slot), hash, probe the index, validate the record (bounds, checksum, key),
//! hand the value bytes to the caller, unpin.
//!
//! Threads: the Python binding calls the read path with the GIL held, so one reader per
//! process is inside a pinned section at a time; the nesting counter covers reads that
//! start while a view is being created. Producer state sits behind a mutex.
//!
//! Fork: a handler registered with pthread_atfork bumps a counter in the child. The next
//! call notices and claims a fresh mailbox and reader slot, so a client created before a
//! gunicorn pre-fork works in every worker.
//!
//! Files: this one attaches (connect, endpoints, fork, drop); `read.rs` is the read path
//! (pins, lookups, records, scans); `write.rs` the write path (the producer, the ticket
//! ledger, waits and pipelines).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::layout::*;
use crate::records::{LogTables, RecFile};
use crate::ring::{BoxWriter, Ring};
use crate::segment::Segment;

mod read;
mod write;
use crate::shm;
pub use read::{glob_match, glob_prefix, Fetched, Lookup, Pin, NOW_LAZY};
use write::Producer;
pub use write::{Pipeline, Ticket, PIPELINE_WINDOW};

static FORK_GEN: AtomicU64 = AtomicU64::new(0);
static FORK_HOOK: std::sync::Once = std::sync::Once::new();

extern "C" fn after_fork_in_child() {
    FORK_GEN.fetch_add(1, Ordering::SeqCst);
}

pub use crate::layout::files::{data_path, lock_path, ring_path};

/// Where this process sends its requests and keeps its reader pins: one box of one ring
/// file. A client moves to a new endpoint after a fork (the child's own box), when its box
/// was poisoned, and when the daemon replaced the ring; old endpoints stay mapped (their
/// boxes owned) until no read of this process is pinned in them.
pub struct Endpoint {
    pub ring: Arc<Ring>,
    /// [`NO_BOX`] for a read-only client that found every box taken.
    pub boxno: u32,
    /// The process that claimed the box (a forked child never touches its parent's).
    pid: u32,
    /// Reads in flight pinned in this box (one pin store for any number of them).
    pins: AtomicU32,
    /// Last ticket sent through this box, once the client has moved on from it.
    last: AtomicU64,
}

/// `Endpoint::boxno` of a client without a box: it reads without pinning (each read is
/// validated against the heap's head instead) and cannot write.
pub const NO_BOX: u32 = u32::MAX;

impl Endpoint {
    fn new(ring: Arc<Ring>, boxno: Option<u32>) -> Endpoint {
        Endpoint {
            ring,
            boxno: boxno.unwrap_or(NO_BOX),
            pid: shm::getpid(),
            pins: AtomicU32::new(0),
            last: AtomicU64::new(0),
        }
    }

    #[inline]
    fn ctl(&self) -> Option<&BoxCtl> {
        (self.boxno != NO_BOX).then(|| self.ring.ctl(self.boxno))
    }
}

/// A client attached to one data directory.
pub struct Client {
    pub dir: PathBuf,
    pub seg: Segment,
    pub timeout: Duration,
    ep: shm::Swap<Endpoint>,
    prod: Mutex<Producer>,
    reader_gen: AtomicU64,
    /// Epochs of this process's live zero-copy views (epoch -> count); the oldest is
    /// published in the current box's `view_epoch`.
    views: Mutex<BTreeMap<u64, usize>>,
    /// The records file (opened on first use) and its tables as read so far: read-locked
    /// to decode or encode records (threads side by side), write-locked only while entries
    /// the daemon appended are parsed ([`Client::tables`]).
    recs: std::sync::OnceLock<RecFile>,
    tables: RwLock<LogTables>,
}

impl Client {
    /// Attach to the daemon's files in `dir`. Reads work even while the daemon is down;
    /// writes wait up to `timeout` for its answer. When every client box is taken, the
    /// client still reads (without a box) and claims one for its first write.
    pub fn connect(dir: &Path, timeout: Duration) -> Result<Client> {
        FORK_HOOK.call_once(|| shm::at_fork_child(after_fork_in_child));
        let seg = Segment::open(&data_path(dir), false)?;
        let ring = Self::open_ring(dir, &seg)?;
        let gen = FORK_GEN.load(Ordering::SeqCst);
        let writer = ring.claim(shm::getpid(), Self::start_time())?;
        let boxno = writer.as_ref().map(BoxWriter::boxno);
        Ok(Client {
            dir: dir.to_path_buf(),
            seg,
            timeout,
            ep: shm::Swap::new(Endpoint::new(Arc::new(ring), boxno)),
            prod: Mutex::new(Producer::fresh(gen, 0, writer)),
            reader_gen: AtomicU64::new(gen),
            views: Mutex::new(BTreeMap::new()),
            recs: std::sync::OnceLock::new(),
            tables: RwLock::new(LogTables::default()),
        })
    }

    fn open_ring(dir: &Path, seg: &Segment) -> Result<Ring> {
        let ring = Ring::open(&ring_path(dir))?;
        if ring.legacy {
            return Err(Error::Incompatible(format!(
                "{}: the request ring was made by an older surpd (ring format 1); start this \
                 version's daemon, which replaces it",
                dir.display()
            )));
        }
        if ring.hdr().seg_seed.load(Ordering::Relaxed) != seg.seed {
            return Err(Error::Incompatible(format!(
                "{}: the ring and the data segment belong to different stores",
                dir.display()
            )));
        }
        Ok(ring)
    }

    fn start_time() -> u64 {
        shm::process_start_time(shm::getpid()).unwrap_or(0)
    }

    /// The ring this client currently uses.
    pub fn ring(&self) -> &Ring {
        &self.ep.get().ring
    }

    /// This process's box ([`NO_BOX`] without one).
    pub fn boxno(&self) -> u32 {
        self.ep.get().boxno
    }

    /// Move to a new endpoint (a fresh box in `ring`, or none): this process's view pins
    /// move with it, and boxes of earlier endpoints that no read is pinned in are given up.
    /// Called with the producer lock held.
    fn switch_endpoint(&self, ring: Arc<Ring>, boxno: Option<u32>) -> &Endpoint {
        let old = self.ep.get();
        let pid = shm::getpid();
        let new = self.ep.set(Endpoint::new(ring, boxno));
        let views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ctl) = new.ctl() {
            let oldest = views.keys().next().copied().unwrap_or(0);
            ctl.view_epoch.store(oldest, Ordering::SeqCst);
            fence(Ordering::SeqCst);
        }
        if old.pid == pid {
            if let Some(ctl) = old.ctl() {
                ctl.view_epoch.store(0, Ordering::SeqCst);
            }
        }
        drop(views);
        // The endpoint just left keeps its box until the next move (a read that loaded it a
        // moment ago may still pin it); older idle ones are given up now.
        self.release_idle_endpoints(&[old, new]);
        new
    }

    /// Give up the boxes of this process's endpoints that no read is pinned in, except
    /// those in `keep`.
    fn release_idle_endpoints(&self, keep: &[&Endpoint]) {
        let pid = shm::getpid();
        self.ep.for_each(|e| {
            if keep.iter().any(|k| std::ptr::eq(*k, e)) || e.pid != pid {
                return;
            }
            if e.ctl().is_some() && e.pins.load(Ordering::Acquire) == 0 {
                let last = e.last.swap(u64::MAX, Ordering::AcqRel);
                if last != u64::MAX {
                    e.ring.release(e.boxno, last);
                }
            }
        });
    }

    /// After fork: the child gets its own box (the parent's box, pins and tickets stay the
    /// parent's). Views inherited from the parent are pinned in the child's box too.
    fn refresh_after_fork(&self) -> Result<()> {
        let gen = FORK_GEN.load(Ordering::SeqCst);
        let mut p = self.prod.lock().unwrap_or_else(|e| e.into_inner());
        if p.fork_gen != gen {
            let issued = p.next_ticket() - 1;
            let ring = self.ep.get().ring.clone();
            let writer = ring.claim(shm::getpid(), Self::start_time())?;
            let b = writer.as_ref().map(BoxWriter::boxno);
            let mut fresh = Producer::fresh(gen, issued, writer);
            fresh.parent_upto = issued;
            *p = fresh;
            self.switch_endpoint(ring, b);
            self.reader_gen.store(gen, Ordering::Relaxed);
        }
        Ok(())
    }

    #[inline]
    fn check_fork(&self) -> Result<()> {
        if self.reader_gen.load(Ordering::Relaxed) != FORK_GEN.load(Ordering::Relaxed) {
            self.refresh_after_fork()?;
        }
        Ok(())
    }

    /// Every statistic a client reports (`surpdb.Client.stats`): the segment's and ring's
    /// counters ([`crate::stats::gather`]), this client's dropped errors, and the record
    /// store's counts if it has one. `bytes_used` covers both files; `cache_bytes_used` is
    /// the data segment's alone. `eviction_policy` is 1 for noeviction, 0 for allkeys-lru.
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        let mut v = crate::stats::gather(&self.seg, self.ring());
        let cache = v.iter().find(|s| s.0 == "bytes_used").map_or(0, |s| s.1);
        v.push(("client_dropped_errors", self.dropped_errors()));
        v.push(("cache_bytes_used", cache));
        if let Some((live, bytes, models, inserted, removed)) = self.record_stats() {
            v.extend([
                ("records", live),
                ("records_bytes", bytes),
                ("record_models", models),
                ("records_inserted", inserted),
                ("records_removed", removed),
            ]);
            for s in v.iter_mut().filter(|s| s.0 == "bytes_used") {
                s.1 = cache + bytes;
            }
            if let Ok(rf) = self.records() {
                let h = rf.hdr();
                let size = if rf.growable {
                    rf.chunks_off + rf.nchunks() * crate::layout::CHUNK
                } else {
                    h.size.load(Ordering::Relaxed)
                };
                v.extend([
                    // The file grows a chunk at a time up to records_size (a version 1 file
                    // keeps the size it was made with).
                    ("records_file_bytes", size),
                    (
                        "records_max_bytes",
                        if rf.growable { h.limit.load(Ordering::Relaxed) } else { size },
                    ),
                    ("records_file_version", h.version.load(Ordering::Relaxed) as u64),
                    ("record_model_sample", h.train_sample.load(Ordering::Relaxed)),
                    // Growth retrains at four or ten times this many records (at
                    // train_after if under it).
                    ("record_model_trained_at", h.trained_live.load(Ordering::Relaxed)),
                    (
                        "record_models_trained_automatically",
                        h.auto_trainings.load(Ordering::Relaxed),
                    ),
                    // Bytes per record x1000: of the last records stored, and of the current
                    // model's first measure (a drift retrains when the first is 15% over).
                    ("record_recent_bpr_milli", h.recent_bpr_milli.load(Ordering::Relaxed)),
                    ("record_baseline_bpr_milli", h.baseline_bpr_milli.load(Ordering::Relaxed)),
                    (
                        "record_drift_models_discarded",
                        h.drift_models_discarded.load(Ordering::Relaxed),
                    ),
                    ("record_trainings_waited_for", h.trainings_waited_for.load(Ordering::Relaxed)),
                    // Inserted before any model, so stored uncompressed.
                    ("records_inserted_plain", h.plain_inserted.load(Ordering::Relaxed)),
                    // Compressed by the client that sent them; the daemon checked them.
                    ("records_encoded_by_clients", h.client_encoded.load(Ordering::Relaxed)),
                ]);
            }
        }
        v
    }

    /// Check a key before it is sent.
    pub fn check_key(key: &[u8]) -> Result<()> {
        if key.len() > MAX_KEY_LEN {
            return Err(Error::KeyTooLong { len: key.len(), max: MAX_KEY_LEN });
        }
        Ok(())
    }

    pub fn max_value(&self) -> u64 {
        self.seg.max_value
    }

    /// Failures of fire-and-forget requests nobody collected before their results were dropped.
    pub fn dropped_errors(&self) -> u64 {
        self.prod.lock().map(|p| p.dropped_errors).unwrap_or(0)
    }

    /// Whether this client has a box (it can pin and write).
    pub fn has_box(&self) -> bool {
        self.ep.get().boxno != NO_BOX
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Give up every box this process claimed (a forked child leaves its parent's alone).
        let p = self.prod.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.ep.get();
        if cur.pid == shm::getpid() && p.fork_gen == FORK_GEN.load(Ordering::Relaxed) {
            cur.last.store(p.next - 1, Ordering::Release);
        }
        drop(p);
        let pid = shm::getpid();
        self.ep.for_each(|e| {
            if e.pid == pid && e.ctl().is_some() {
                let last = e.last.swap(u64::MAX, Ordering::AcqRel);
                if last != u64::MAX {
                    e.ring.release(e.boxno, last);
                }
            }
        });
    }
}
