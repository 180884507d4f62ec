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

#![deny(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::index::Probe;
use crate::layout::*;
use crate::records::{decode_payload, records_path, LogTables, RecFile};
use crate::ring::{Reply, Ring};
use crate::segment::{Rec, Segment};
use crate::shm;

static FORK_GEN: AtomicU64 = AtomicU64::new(0);
static FORK_HOOK: std::sync::Once = std::sync::Once::new();

extern "C" fn after_fork_in_child() {
    FORK_GEN.fetch_add(1, Ordering::SeqCst);
}

/// File names inside a data directory.
pub fn data_path(dir: &Path) -> PathBuf {
    dir.join("data.surp")
}
pub fn ring_path(dir: &Path) -> PathBuf {
    dir.join("ring.surp")
}
pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join("surpd.lock")
}

struct Producer {
    /// Box this process owns, with the fork generation and pid that claimed it.
    boxno: u32,
    fork_gen: u64,
    tail: u64,
    next_ticket: u64,
    /// Results drained from the ring before their waiter asked (bounded).
    kept: HashMap<u64, Reply>,
    /// Tickets handed out and not yet collected, oldest first.
    wanted: BTreeMap<u64, ()>,
    /// Last ticket whose result was moved out of the ring.
    seen: u64,
    /// Failures of fire-and-forget requests whose results were dropped before anyone
    /// collected them.
    dropped_errors: u64,
}

/// Most results kept for tickets nobody waited on yet.
const MAX_KEPT: usize = 100_000;

/// A client attached to one data directory.
pub struct Client {
    pub dir: PathBuf,
    pub seg: Segment,
    pub ring: Ring,
    pub timeout: Duration,
    prod: Mutex<Producer>,
    /// Box used by readers (mirrors prod.boxno; read without taking the mutex).
    reader_box: AtomicU32,
    reader_gen: AtomicU64,
    pins: AtomicU32,
    /// The record store's file (opened on first use) and its tables as read so far.
    recs: std::sync::OnceLock<RecFile>,
    tables: Mutex<LogTables>,
}

/// Pass as `now_ms` to read the clock only when a record has an expiry.
pub const NOW_LAZY: u64 = u64::MAX;

/// Count one event in this process's slot. Only this process writes its slot (and reads hold
/// the GIL), so a load and a store do, without a locked read-modify-write.
#[inline]
fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

/// A pinned read section; unpins on drop.
pub struct Pin<'a> {
    c: &'a Client,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        if self.c.pins.fetch_sub(1, Ordering::Relaxed) == 1 {
            let ctl = self.c.ring.ctl(self.c.reader_box.load(Ordering::Relaxed));
            // Release: our reads of the record happen before the slot says "not reading".
            ctl.epoch.store(0, Ordering::Release);
        }
    }
}

/// Outcome of a lookup.
pub enum Lookup<'a> {
    Hit(Rec<'a>),
    Miss,
}

impl Client {
    /// Attach to the daemon's files in `dir`. Reads work even while the daemon is down;
    /// writes wait up to `timeout` for its answer.
    pub fn connect(dir: &Path, timeout: Duration) -> Result<Client> {
        FORK_HOOK.call_once(|| shm::at_fork_child(after_fork_in_child));
        let seg = Segment::open(&data_path(dir), false)?;
        let ring = Ring::open(&ring_path(dir))?;
        if ring.hdr().seg_seed.load(Ordering::Relaxed) != seg.seed {
            return Err(Error::Incompatible(format!(
                "{}: the ring and the data segment belong to different stores",
                dir.display()
            )));
        }
        let gen = FORK_GEN.load(Ordering::SeqCst);
        let boxno =
            ring.claim(shm::getpid(), shm::process_start_time(shm::getpid()).unwrap_or(0))?;
        let prod = Producer {
            boxno,
            fork_gen: gen,
            tail: 0,
            next_ticket: 1,
            kept: HashMap::new(),
            wanted: BTreeMap::new(),
            seen: 0,
            dropped_errors: 0,
        };
        Ok(Client {
            dir: dir.to_path_buf(),
            seg,
            ring,
            timeout,
            prod: Mutex::new(prod),
            reader_box: AtomicU32::new(boxno),
            reader_gen: AtomicU64::new(gen),
            pins: AtomicU32::new(0),
            recs: std::sync::OnceLock::new(),
            tables: Mutex::new(LogTables::default()),
        })
    }

    /// After fork: claim a new box for this (child) process.
    fn refresh_after_fork(&self) -> Result<()> {
        let gen = FORK_GEN.load(Ordering::SeqCst);
        let mut p = self.prod.lock().unwrap_or_else(|e| e.into_inner());
        if p.fork_gen != gen {
            let pid = shm::getpid();
            let b = self.ring.claim(pid, shm::process_start_time(pid).unwrap_or(0))?;
            *p = Producer {
                boxno: b,
                fork_gen: gen,
                tail: 0,
                next_ticket: 1,
                kept: HashMap::new(),
                wanted: BTreeMap::new(),
                seen: 0,
                dropped_errors: 0,
            };
            self.pins.store(0, Ordering::Relaxed);
            self.reader_box.store(b, Ordering::Relaxed);
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

    /// Pin the reader epoch: records reachable now stay intact until the pin is dropped.
    #[inline]
    pub fn pin(&self) -> Result<Pin<'_>> {
        self.check_fork()?;
        if self.pins.fetch_add(1, Ordering::Relaxed) == 0 {
            let ctl = self.ring.ctl(self.reader_box.load(Ordering::Relaxed));
            let e = self.seg.hdr().epoch.load(Ordering::SeqCst);
            // A plain store and one full fence (xchg plus mfence would be two barriers).
            ctl.epoch.store(e, Ordering::Relaxed);
            // SYNC POINT: SeqCst fence; pairs with the fence in heap::min_reader_epoch. Either
            // the daemon sees this pin, or our index reads see its unlinks.
            fence(Ordering::SeqCst);
        }
        Ok(Pin { c: self })
    }

    /// Current epoch (for views: they pin it until released).
    pub fn epoch(&self) -> u64 {
        self.seg.hdr().epoch.load(Ordering::SeqCst)
    }

    /// Record a view's pin in this process's slot (`oldest` = oldest live view epoch, 0 = none).
    pub fn set_view_epoch(&self, oldest: u64) {
        let ctl = self.ring.ctl(self.reader_box.load(Ordering::Relaxed));
        ctl.view_epoch.store(oldest, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Look a key up, reading the clock only for a record that has an expiry. The caller
    /// holds a pin for as long as it uses the record.
    #[inline]
    pub fn get<'p>(&'p self, pin: &Pin<'p>, key: &[u8]) -> Lookup<'p> {
        self.lookup(pin, key, NOW_LAZY)
    }

    /// Look a key up as of `now_ms` (unix ms; [`NOW_LAZY`]: read the clock if needed).
    #[inline]
    pub fn lookup<'p>(&'p self, _pin: &Pin<'p>, key: &[u8], now_ms: u64) -> Lookup<'p> {
        let hash = self.seg.hash(key);
        let ctl = self.ring.ctl(self.reader_box.load(Ordering::Relaxed));
        match self.seg.probe(key, hash) {
            Probe::Hit { rec, .. } => {
                if rec.expires_ms != 0 {
                    let now = if now_ms == NOW_LAZY { shm::now_ms() } else { now_ms };
                    if rec.expired(now) {
                        bump(&ctl.misses);
                        return Lookup::Miss;
                    }
                }
                bump(&ctl.hits);
                self.ring.touch_hint(rec.off - self.seg.heap_off);
                Lookup::Hit(rec)
            }
            Probe::Miss => {
                bump(&ctl.misses);
                Lookup::Miss
            }
            Probe::Corrupt => {
                bump(&ctl.corrupt);
                bump(&ctl.misses);
                Lookup::Miss
            }
        }
    }

    /// The records file (the daemon creates it when it attaches).
    pub fn records(&self) -> Result<&RecFile> {
        if let Some(r) = self.recs.get() {
            return Ok(r);
        }
        let rf = RecFile::open(&records_path(&self.dir), false)?;
        Ok(self.recs.get_or_init(|| rf))
    }

    /// Read record `rid` into `out` (value encoding). Err(reason) when there is no such
    /// live record (a bad, removed or stale id); other failures are errors.
    pub fn record(
        &self,
        rid: u64,
        out: &mut Vec<u8>,
    ) -> Result<std::result::Result<(), &'static str>> {
        let rf = self.records()?;
        let _pin = self.pin()?;
        let (payload, model) = match rf.lookup(rid) {
            Ok(x) => x,
            Err(why) => return Ok(Err(why)),
        };
        let mut t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if rf.hdr().tables_end.load(Ordering::Acquire) != t.parsed {
            t.refresh(rf)?;
        }
        decode_payload(&t, model, payload, out)
            .map_err(|e| Error::Corrupted(format!("record {rid} in {}: {e}", rf.path.display())))?;
        Ok(Ok(()))
    }

    /// Record-store counters: (live records, bytes used by the records file, models).
    pub fn record_stats(&self) -> Option<(u64, u64, u64, u64, u64)> {
        let rf = self.records().ok()?;
        let h = rf.hdr();
        Some((
            h.live.load(Ordering::Relaxed),
            rf.bytes_used(),
            h.nmodels.load(Ordering::Relaxed),
            h.inserted.load(Ordering::Relaxed),
            h.removed.load(Ordering::Relaxed),
        ))
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

    /// Enqueue a request; returns its ticket.
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue(
        &self,
        op: u8,
        flags: u8,
        key: &[u8],
        payload: &[u8],
        arg: u64,
        arg2: u64,
    ) -> Result<u64> {
        Self::check_key(key)?;
        if payload.len() as u64 > self.seg.max_value {
            return Err(Error::ValueTooLarge {
                size: payload.len() as u64,
                max: self.seg.max_value,
            });
        }
        self.check_fork()?;
        if self.ring.hdr().retired.load(Ordering::Relaxed) != 0 {
            return Err(Error::Unavailable(format!(
                "{}: the daemon replaced the request ring; reconnect",
                self.dir.display()
            )));
        }
        let mut p = self.prod.lock().unwrap_or_else(|e| e.into_inner());
        let b = p.boxno;
        // Keep at most nresults-1 results outstanding in the ring: older ones are moved into
        // `kept` before their entries can be overwritten.
        let ticket = p.next_ticket;
        if ticket - p.seen >= self.ring.nresults as u64 {
            let oldest = ticket - self.ring.nresults as u64 + 1;
            if !self.ring.wait_done(b, oldest, self.timeout) {
                return Err(self.unavailable("waiting for room in the result ring"));
            }
            self.drain(&mut p);
        }
        let mut tail = p.tail;
        self.ring.enqueue(
            b,
            &mut tail,
            ticket,
            op,
            flags,
            key,
            payload,
            arg,
            arg2,
            self.timeout,
        )?;
        p.tail = tail;
        p.next_ticket += 1;
        p.wanted.insert(ticket, ());
        Ok(ticket)
    }

    /// Move completed results out of the ring into `kept` (for tickets still wanted).
    fn drain(&self, p: &mut Producer) {
        let done = self.ring.ctl(p.boxno).done.load(Ordering::Acquire);
        while p.seen < done {
            let t = p.seen + 1;
            let r = self.ring.result(p.boxno, t);
            let reply = Reply {
                status: r.status.load(Ordering::Relaxed),
                value: r.value.load(Ordering::Relaxed),
                aux: r.aux.load(Ordering::Relaxed),
            };
            if p.wanted.contains_key(&t) {
                p.kept.insert(t, reply);
            }
            p.seen = t;
        }
        while p.kept.len() > MAX_KEPT {
            let Some((&oldest, _)) = p.wanted.iter().next() else { break };
            p.wanted.remove(&oldest);
            if let Some(r) = p.kept.remove(&oldest) {
                if r.status != status::OK && r.status != status::NOT_DONE {
                    p.dropped_errors += 1;
                }
            }
        }
    }

    fn unavailable(&self, what: &str) -> Error {
        Error::Unavailable(format!(
            "{}: no answer from surpd after {:.1}s {what}{}",
            self.dir.display(),
            self.timeout.as_secs_f64(),
            self.ring.daemon_note()
        ))
    }

    /// Wait for a ticket's result. Releases nothing itself: the binding calls it with the
    /// GIL released.
    pub fn wait(&self, ticket: u64) -> Result<Reply> {
        let (b, gen) = {
            let mut p = self.prod.lock().unwrap_or_else(|e| e.into_inner());
            if p.fork_gen != FORK_GEN.load(Ordering::Relaxed)
                || ticket == 0
                || ticket >= p.next_ticket
            {
                return Err(Error::BadRequest(format!(
                    "ticket {ticket} was not issued by this client{}",
                    if p.next_ticket > 1 {
                        format!(" (last issued: {})", p.next_ticket - 1)
                    } else {
                        String::new()
                    }
                )));
            }
            if let Some(r) = p.kept.remove(&ticket) {
                p.wanted.remove(&ticket);
                return Ok(r);
            }
            if !p.wanted.contains_key(&ticket) {
                return Err(Error::BadRequest(format!(
                    "ticket {ticket} was already collected, or its result dropped after \
                     {MAX_KEPT} newer uncollected results"
                )));
            }
            (p.boxno, p.fork_gen)
        };
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.ring.wait_done(b, ticket, left.min(Duration::from_millis(250))) {
                break;
            }
            if self.ring.ctl(b).poisoned.load(Ordering::Acquire) != 0 {
                return Err(Error::BadRequest(
                    "the daemon refused a malformed request from this client".into(),
                ));
            }
            if Instant::now() >= deadline {
                return Err(self.unavailable(&format!(
                    "waiting for request #{ticket}; it stays queued and is applied if the daemon comes back"
                )));
            }
        }
        let mut p = self.prod.lock().unwrap_or_else(|e| e.into_inner());
        if p.fork_gen != gen {
            return Err(Error::BadRequest(format!(
                "ticket {ticket} belongs to the parent process"
            )));
        }
        if p.seen < ticket {
            self.drain(&mut p);
        }
        p.wanted.remove(&ticket);
        p.kept
            .remove(&ticket)
            .ok_or_else(|| Error::BadRequest(format!("result of ticket {ticket} was lost")))
    }

    /// Enqueue and wait.
    pub fn call(
        &self,
        op: u8,
        flags: u8,
        key: &[u8],
        payload: &[u8],
        arg: u64,
        arg2: u64,
    ) -> Result<Reply> {
        let t = self.enqueue(op, flags, key, payload, arg, arg2)?;
        self.wait(t)
    }

    /// Failures of fire-and-forget requests nobody collected before their results were dropped.
    pub fn dropped_errors(&self) -> u64 {
        self.prod.lock().map(|p| p.dropped_errors).unwrap_or(0)
    }

    /// This process's box (for tests and stats).
    pub fn boxno(&self) -> u32 {
        self.reader_box.load(Ordering::Relaxed)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // A forked child must not release its parent's box.
        if self.reader_gen.load(Ordering::Relaxed) == FORK_GEN.load(Ordering::Relaxed) {
            self.ring.release(self.boxno());
        }
    }
}
