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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::index::Probe;
use crate::layout::*;
use crate::protocol::Request;
use crate::records::{decode_payload, records_path, LogTables, RecFile};
use crate::ring::{Reply, Ring, Waited};
use crate::segment::{Rec, Segment};
use crate::shm;

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

/// Producer state, behind the client's mutex. Tickets handed to callers are consecutive
/// per client: `base + box ticket` of the current box.
struct Producer {
    fork_gen: u64,
    tail: u64,
    /// Next ticket of the current box, and the last one whose result was moved out.
    next: u64,
    seen: u64,
    base: u64,
    /// Client tickets up to this one were issued by the parent before a fork.
    parent_upto: u64,
    /// The one ticket ledger: every client ticket handed out and not yet collected, with
    /// what it asked (for shaping a reply later) and its reply once drained from the ring.
    ledger: BTreeMap<u64, Ticket>,
    /// Entries of `ledger` holding a reply (bounded by [`MAX_KEPT`]).
    answered: usize,
    /// Failures of fire-and-forget requests whose results were dropped before anyone
    /// collected them.
    dropped_errors: u64,
    /// Box tickets not yet answered, with the box position after each request; and the
    /// position up to which the daemon has certainly taken requests out (the end of the
    /// last answered one): the producer's flow control, kept here rather than read from
    /// the box's shared `head` word.
    ends: std::collections::VecDeque<(u64, u64)>,
    consumed: u64,
}

impl Producer {
    fn fresh(fork_gen: u64, base: u64) -> Producer {
        Producer {
            fork_gen,
            tail: 0,
            next: 1,
            seen: 0,
            base,
            parent_upto: 0,
            ledger: BTreeMap::new(),
            answered: 0,
            dropped_errors: 0,
            ends: Default::default(),
            consumed: 0,
        }
    }

    /// The next client ticket.
    fn next_ticket(&self) -> u64 {
        self.base + self.next
    }
}

/// What the ledger keeps of one request: its op, its key when the sender asked to keep it
/// ([`Client::send_kept`]: a reply collected later is shaped by them), its reply once drained.
#[derive(Debug, Clone, Default)]
pub struct Ticket {
    pub op: u8,
    pub key: Option<Box<[u8]>>,
    reply: Option<Reply>,
}

/// Most results kept for tickets nobody waited on yet.
const MAX_KEPT: usize = 100_000;

/// Requests a pipeline keeps in flight before it collects the oldest answer.
pub const PIPELINE_WINDOW: usize = 1024;

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
    /// The records file (opened on first use) and its tables as read so far.
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

/// A pinned read section; unpins on drop. Without a box (every box taken), nothing is
/// pinned: the read is confirmed afterwards instead ([`Pin::confirm`]).
pub struct Pin<'a> {
    ep: &'a Endpoint,
    seg: &'a Segment,
    /// The epoch pinned (boxed), or the heap's published head when the pin began (boxless).
    mark: u64,
    /// Boxless: the heap's geometry generation when the pin began.
    geom: u64,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        if let Some(ctl) = self.ep.ctl() {
            if self.ep.pins.fetch_sub(1, Ordering::Relaxed) == 1 {
                // Release: our reads of the record happen before the slot says "not reading".
                ctl.epoch.store(0, Ordering::Release);
            }
        }
    }
}

impl Pin<'_> {
    /// The epoch this pin holds (0 without a box).
    pub fn epoch(&self) -> u64 {
        if self.ep.ctl().is_some() {
            self.mark
        } else {
            0
        }
    }

    /// Whether the pin holds records in place (false: a boxless read, see `confirm`).
    pub fn holds(&self) -> bool {
        self.ep.ctl().is_some()
    }

    /// Whether the bytes of `rec`, read under this pin, were intact for the whole read. A
    /// pinned read is, unless another process tampered with our box's pin. A boxless read is
    /// confirmed by the heap's head: the daemon only
    /// writes at or after its published head (at most a pad and a record beyond it), so a
    /// record whose next reuse lies beyond that frontier was not touched. A false answer
    /// means: discard what was decoded and read again.
    pub fn confirm(&self, rec: &Rec<'_>) -> bool {
        if let Some(ctl) = self.ep.ctl() {
            // Our pin is still in our box (a word any group member can write: one zeroed or
            // an owner changed under us could have let the daemon reuse the space we read).
            return ctl.epoch.load(Ordering::Relaxed) != 0
                && ctl.owner_pid.load(Ordering::Relaxed) == self.ep.pid;
        }
        // SYNC POINT: Acquire fence; the record bytes were read before this load of the
        // head (pairs with the Release store of `head` in Heap::publish_head).
        fence(Ordering::Acquire);
        let h = self.seg.hdr();
        let h2 = h.head.load(Ordering::Relaxed);
        if h.geom_gen.load(Ordering::Acquire) != self.geom {
            return false; // the heap's geometry changed during the read: read again
        }
        let (base, cap) = (h.heap_base.load(Ordering::Relaxed), self.seg.cap());
        let rel = rec.off - self.seg.heap_off;
        // The first position at or after the pin's head that maps onto this record.
        let next_use = self.mark + (rel + cap - self.mark.wrapping_sub(base) % cap) % cap;
        let in_flight = 2 * crate::segment::max_record(self.seg.max_value);
        h2.saturating_add(in_flight) <= next_use
    }
}

/// Outcome of a lookup.
pub enum Lookup<'a> {
    Hit(Rec<'a>),
    Miss,
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
        let boxno = ring.claim(shm::getpid(), Self::start_time())?;
        Ok(Client {
            dir: dir.to_path_buf(),
            seg,
            timeout,
            ep: shm::Swap::new(Endpoint::new(Arc::new(ring), boxno)),
            prod: Mutex::new(Producer::fresh(gen, 0)),
            reader_gen: AtomicU64::new(gen),
            views: Mutex::new(BTreeMap::new()),
            recs: std::sync::OnceLock::new(),
            tables: Mutex::new(LogTables::default()),
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
            let mut fresh = Producer::fresh(gen, issued);
            fresh.parent_upto = issued;
            *p = fresh;
            let ring = self.ep.get().ring.clone();
            let b = ring.claim(shm::getpid(), Self::start_time())?;
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

    /// Pin the reader epoch: records reachable now stay intact until the pin is dropped.
    #[inline]
    pub fn pin(&self) -> Result<Pin<'_>> {
        self.check_fork()?;
        let ep = self.ep.get();
        let h = self.seg.hdr();
        let Some(ctl) = ep.ctl() else {
            let geom = h.geom_gen.load(Ordering::Acquire);
            // SYNC POINT: Acquire; pairs with Heap::publish_head (see Pin::confirm).
            return Ok(Pin { ep, seg: &self.seg, mark: h.head.load(Ordering::Acquire), geom });
        };
        let e = h.epoch.load(Ordering::SeqCst);
        if ep.pins.fetch_add(1, Ordering::Relaxed) == 0 {
            // A plain store and one full fence (xchg plus mfence would be two barriers).
            ctl.epoch.store(e, Ordering::Relaxed);
            // SYNC POINT: SeqCst fence; pairs with the fence in heap::min_reader_epoch. Either
            // the daemon sees this pin, or our index reads see its unlinks.
            fence(Ordering::SeqCst);
        }
        Ok(Pin { ep, seg: &self.seg, mark: e, geom: 0 })
    }

    /// Current epoch.
    pub fn epoch(&self) -> u64 {
        self.seg.hdr().epoch.load(Ordering::SeqCst)
    }

    /// Register a zero-copy view made under `pin`: the space it shows stays in place until
    /// [`Client::unpin_view`] with the returned epoch. None without a box (nothing can pin
    /// space then: the caller copies instead).
    pub fn pin_view(&self, pin: &Pin<'_>) -> Option<u64> {
        let ctl = pin.ep.ctl()?;
        let epoch = pin.epoch();
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        *views.entry(epoch).or_insert(0) += 1;
        let oldest = *views.keys().next().expect("just inserted");
        ctl.view_epoch.store(oldest, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        Some(epoch)
    }

    /// Release a view's pin. In a forked child this updates the child's own box, never the
    /// parent's.
    pub fn unpin_view(&self, epoch: u64) {
        let _ = self.check_fork();
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = views.get_mut(&epoch) {
            *n -= 1;
            if *n == 0 {
                views.remove(&epoch);
            }
        }
        let ep = self.ep.get();
        if ep.pid == shm::getpid() {
            if let Some(ctl) = ep.ctl() {
                ctl.view_epoch.store(views.keys().next().copied().unwrap_or(0), Ordering::SeqCst);
                fence(Ordering::SeqCst);
            }
        }
    }

    /// Look a key up, reading the clock only for a record that has an expiry. The caller
    /// holds a pin for as long as it uses the record.
    #[inline]
    pub fn get<'p>(&'p self, pin: &Pin<'p>, key: &[u8]) -> Lookup<'p> {
        self.lookup(pin, key, NOW_LAZY)
    }

    /// Look a key up as of `now_ms` (unix ms; [`NOW_LAZY`]: read the clock if needed).
    #[inline]
    pub fn lookup<'p>(&'p self, pin: &Pin<'p>, key: &[u8], now_ms: u64) -> Lookup<'p> {
        let hash = self.seg.hash(key);
        let ring = &pin.ep.ring;
        let count =
            |which: fn(&BoxCtl) -> &AtomicU64, total: fn(&RingHeader) -> &AtomicU64| match pin
                .ep
                .ctl()
            {
                Some(ctl) => bump(which(ctl)),
                None => {
                    total(ring.hdr()).fetch_add(1, Ordering::Relaxed);
                }
            };
        match self.seg.probe(key, hash) {
            Probe::Hit { rec, .. } => {
                if rec.expires_ms != 0 {
                    let now = if now_ms == NOW_LAZY { shm::now_ms() } else { now_ms };
                    if rec.expired(now) {
                        count(|c| &c.misses, |h| &h.retired_misses);
                        return Lookup::Miss;
                    }
                }
                count(|c| &c.hits, |h| &h.retired_hits);
                ring.touch_hint(rec.off - self.seg.heap_off);
                Lookup::Hit(rec)
            }
            Probe::Miss => {
                count(|c| &c.misses, |h| &h.retired_misses);
                Lookup::Miss
            }
            Probe::Corrupt => {
                count(|c| &c.corrupt, |h| &h.retired_corrupt);
                count(|c| &c.misses, |h| &h.retired_misses);
                Lookup::Miss
            }
        }
    }

    /// Look `key` up and hand the record (or None) to `f`; for a boxless read, `f` runs
    /// again if the record changed under it (what `f` returned then is discarded). A read
    /// that keeps colliding with the writer gives up after 1000 tries and reads as a miss.
    pub fn read<R>(&self, key: &[u8], mut f: impl FnMut(Option<&Rec<'_>>) -> R) -> Result<R> {
        for _ in 0..1000 {
            let pin = self.pin()?;
            match self.get(&pin, key) {
                Lookup::Hit(rec) => {
                    let r = f(Some(&rec));
                    if pin.confirm(&rec) {
                        return Ok(r);
                    }
                }
                Lookup::Miss => return Ok(f(None)),
            }
        }
        Ok(f(None))
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
        for _ in 0..1000 {
            let pin = self.pin()?;
            let (payload, model) = match rf.lookup(rid) {
                Ok(x) => x,
                Err(why) => return Ok(Err(why)),
            };
            let mut t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
            if rf.hdr().tables_end.load(Ordering::Acquire) != t.parsed {
                t.refresh(rf)?;
            }
            let r = decode_payload(&t, model, payload, out);
            // A boxless read: the record's chunk may have been reused meanwhile; looking the
            // id up again proves it was not (reuse changes the generation, which the id's
            // check covers).
            if !pin.holds() && rf.lookup(rid).map(|(p, _)| p.as_ptr()) != Ok(payload.as_ptr()) {
                continue;
            }
            r.map_err(|e| Error::Corrupted(format!("record {rid} in {}: {e}", rf.path.display())))?;
            return Ok(Ok(()));
        }
        Ok(Err("no such record (it kept changing while being read)"))
    }

    /// Record-store counters: (live records, bytes used by the records file, models).
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
        }
        v
    }

    /// Walk the index from slot `cursor`, handing up to `count` unexpired items to `f` under
    /// one pin; returns the cursor to continue from (0: the end). Keys changed during a scan
    /// may be seen twice or missed (dump and load use it on a quiet store).
    pub fn scan(&self, cursor: u64, count: usize, mut f: impl FnMut(&Rec<'_>)) -> Result<u64> {
        let now = shm::now_ms();
        let _pin = self.pin()?;
        let seg = &self.seg;
        let (mut i, mut n) = (cursor, 0);
        while i < seg.slots && n < count {
            let v = seg.slot(i).load(Ordering::Acquire);
            i += 1;
            if v == 0 {
                continue;
            }
            if let Some(rec) = seg.record(slot_off(v)) {
                if !rec.expired(now) {
                    f(&rec);
                    n += 1;
                }
            }
        }
        Ok(if i >= seg.slots { 0 } else { i })
    }

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

    /// Make sure the current endpoint can take a request: claim a box if this client has
    /// none, move to a fresh box if the daemon poisoned this one, move to the new ring if the
    /// daemon replaced it. Called with the producer lock held.
    fn writable_endpoint(&self, p: &mut Producer) -> Result<&Endpoint> {
        let ep = self.ep.get();
        let Some(ctl) = ep.ctl() else {
            // Every box was taken when this client attached: try again now.
            let ring = ep.ring.clone();
            return match self.claim_within_timeout(&ring)? {
                Some(b) => {
                    self.abandon(p);
                    Ok(self.switch_endpoint(ring, Some(b)))
                }
                None => Err(Error::Unavailable(format!(
                    "{}: all {} client slots of the request ring stayed taken by live \
                     processes for {:.1}s (raise surpd's max_clients); this client can read but \
                     not write",
                    self.dir.display(),
                    ring.nboxes,
                    self.timeout.as_secs_f64()
                ))),
            };
        };
        let h = ep.ring.hdr();
        if h.retired.load(Ordering::Acquire) != 0 && ep.ring.replaced_at(&ring_path(&self.dir)) {
            return self.move_to_new_ring(p);
        }
        // A box whose ownership words are no longer ours (another process wrote them; the
        // daemon would not serve it, or another client could claim it) is left like a
        // poisoned one.
        let tampered = ctl.owner_pid.load(Ordering::Relaxed) != ep.pid
            || ctl.active.load(Ordering::Relaxed) != crate::ring::BOX_ACTIVE;
        if tampered {
            ctl.poisoned.store(1, Ordering::Release);
        }
        if ctl.poisoned.load(Ordering::Acquire) != 0 {
            crate::log::warn(&format!(
                "{}: the daemon refused a malformed request in this client's box; moving to a \
                 fresh box ({} unanswered requests are lost)",
                self.dir.display(),
                p.ledger.len()
            ));
            let ring = ep.ring.clone();
            let b = self.claim_within_timeout(&ring)?;
            self.abandon(p);
            return match b {
                Some(_) => Ok(self.switch_endpoint(ring, b)),
                None => {
                    self.switch_endpoint(ring, None);
                    Err(Error::Unavailable(format!(
                        "no client slot freed within {:.1}s to replace a poisoned one",
                        self.timeout.as_secs_f64()
                    )))
                }
            };
        }
        Ok(ep)
    }

    /// Claim a box, waiting up to the client's timeout for one to free (the daemon frees the
    /// boxes of exited clients every 200 ms; nothing signals it, so this looks every 2 ms).
    fn claim_within_timeout(&self, ring: &Ring) -> Result<Option<u32>> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(b) = ring.claim(shm::getpid(), Self::start_time())? {
                return Ok(Some(b));
            }
            if Instant::now() >= deadline || !ring.daemon_alive() {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Start a new ticket sequence (the current box is being left): results of tickets not
    /// answered yet are lost (tickets up to `base` then report so); answered ones are moved
    /// out of the ring first.
    fn abandon(&self, p: &mut Producer) {
        self.drain(p);
        let ep = self.ep.get();
        ep.last.store(p.next - 1, Ordering::Release);
        p.base = p.next_ticket() - 1;
        p.next = 1;
        p.seen = 0;
        p.tail = 0;
        p.ends.clear();
        p.consumed = 0;
    }

    /// The daemon replaced the ring (restarted with other ring settings): wait until every
    /// request sent through the old one is answered (it serves both until their clients
    /// moved), then claim a box in the new one. Requests of this process stay in order.
    fn move_to_new_ring(&self, p: &mut Producer) -> Result<&Endpoint> {
        let ep = self.ep.get();
        let last = p.next - 1;
        if last > 0 {
            if let Some(b) = ep.ctl().map(|_| ep.boxno) {
                if ep.ring.wait_done(b, last, self.timeout) != Waited::Done {
                    return Err(self.unavailable("waiting for the old request ring to drain"));
                }
            }
        }
        let ring = Arc::new(Self::open_ring(&self.dir, &self.seg)?);
        let b = ring.claim(shm::getpid(), Self::start_time())?;
        self.abandon(p); // everything was answered above: the results are in the ledger
        crate::log::info(&format!(
            "{}: moved to the daemon's new request ring",
            self.dir.display()
        ));
        match b {
            Some(_) => Ok(self.switch_endpoint(ring, b)),
            None => {
                self.switch_endpoint(ring, None);
                Err(Error::Unavailable("the new request ring has no free client slot".into()))
            }
        }
    }

    /// Queue a typed request; returns its ticket (see [`Client::wait`]).
    pub fn send(&self, r: &Request<'_>) -> Result<u64> {
        self.enqueue_kept(r, false)
    }

    /// Queue a typed request whose reply is collected later by whoever holds the ticket: the
    /// ledger keeps its op and key ([`Client::wait_ticket`] hands them back with the reply).
    pub fn send_kept(&self, r: &Request<'_>) -> Result<u64> {
        self.enqueue_kept(r, true)
    }

    /// Queue a typed request and wait for its reply.
    pub fn call(&self, r: &Request<'_>) -> Result<Reply> {
        let t = self.send(r)?;
        self.wait(t)
    }

    /// `r`'s reply as a result: Ok for OK and NOT_DONE, else the error its status means
    /// (see [`crate::protocol::outcome`], the one mapping).
    pub fn outcome(&self, r: &Request<'_>, reply: Reply) -> Result<Reply> {
        let stored = |key: &[u8]| {
            self.read(key, |rec| match rec {
                Some(rec) => crate::value::describe(rec.value),
                None => "missing value".to_string(),
            })
            .unwrap_or_else(|_| "unknown".into())
        };
        let cx = crate::protocol::Context {
            max_value: self.max_value(),
            dir: &self.dir,
            stored: &stored,
        };
        crate::protocol::outcome(r, reply, &cx)
    }

    /// Enqueue a request from its raw header fields; returns its ticket. [`Client::send`]
    /// with a [`Request`] constructor says what each field means.
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
        self.enqueue_kept(&Request { op, flags, key, payload, arg, arg2 }, false)
    }

    fn enqueue_kept(&self, r: &Request<'_>, keep_key: bool) -> Result<u64> {
        let Request { op, key, payload, .. } = *r;
        Self::check_key(key)?;
        if payload.len() as u64 > self.seg.max_value {
            return Err(Error::ValueTooLarge {
                size: payload.len() as u64,
                max: self.seg.max_value,
            });
        }
        self.check_fork()?;
        let mut p = self.prod.lock().unwrap_or_else(|e| e.into_inner());
        let ep = self.writable_endpoint(&mut p)?;
        let (ring, b) = (&ep.ring, ep.boxno);
        // Keep at most nresults-1 results outstanding in the ring: older ones are moved into
        // `kept` before their entries can be overwritten.
        let ticket = p.next;
        if ticket - p.seen >= ring.nresults as u64 {
            let oldest = ticket - ring.nresults as u64 + 1;
            match ring.wait_done(b, oldest, self.timeout) {
                Waited::Done => self.drain(&mut p),
                Waited::Poisoned => {
                    return Err(Error::BadRequest(
                        "the daemon refused a malformed request from this client".into(),
                    ))
                }
                Waited::TimedOut => {
                    if ep.ctl().is_some_and(|c| c.done.load(Ordering::Acquire) >= oldest) {
                        // The daemon says it answered, but the entry names another ticket:
                        // someone wrote into this box. Leave it (the next request moves).
                        if let Some(c) = ep.ctl() {
                            c.poisoned.store(1, Ordering::Release);
                        }
                        return Err(Error::BadRequest(
                            "this client's result entries were overwritten by another process; \
                             moving to a fresh box"
                                .into(),
                        ));
                    }
                    return Err(self.unavailable("waiting for room in the result ring"));
                }
            }
        }
        self.make_room(&mut p, ep, key, payload)?;
        let mut tail = p.tail;
        let consumed = p.consumed;
        ring.enqueue(b, &mut tail, consumed, ticket, r)?;
        p.tail = tail;
        p.ends.push_back((ticket, tail));
        p.next += 1;
        let t = p.base + ticket;
        let key = keep_key.then(|| key.into());
        p.ledger.insert(t, Ticket { op, key, reply: None });
        Ok(t)
    }

    /// Wait (up to the timeout) until the request fits in the box: the oldest unanswered
    /// requests are answered and their room free.
    fn make_room(&self, p: &mut Producer, ep: &Endpoint, key: &[u8], payload: &[u8]) -> Result<()> {
        let ring = &ep.ring;
        let need = ring.request_bytes(p.tail, key, payload)?;
        if p.tail + need - p.consumed <= ring.box_bytes {
            return Ok(());
        }
        let ctl = ep.ctl().expect("a writable endpoint has a box");
        ctl.queue_waits.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.timeout;
        while p.tail + need - p.consumed > ring.box_bytes {
            let Some(&(oldest, _)) = p.ends.front() else { break };
            let left = deadline.saturating_duration_since(Instant::now());
            match ring.wait_done(ep.boxno, oldest, left) {
                Waited::Done => self.drain(p),
                Waited::Poisoned => {
                    return Err(Error::BadRequest(
                        "the daemon refused a malformed request from this client".into(),
                    ))
                }
                Waited::TimedOut => {
                    if ctl.done.load(Ordering::Acquire) >= oldest {
                        // Answered, says `done`, but the entry names another ticket: someone
                        // wrote into this box. Leave it (the next request moves).
                        ctl.poisoned.store(1, Ordering::Release);
                    }
                    return Err(Error::QueueFull(format!(
                        "request queue full for {:.1}s: {} of {} bytes pending{}",
                        self.timeout.as_secs_f64(),
                        p.tail - p.consumed,
                        ring.box_bytes,
                        ring.daemon_note()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Move completed results out of the ring into the ledger (for tickets still in it).
    /// Bounded by what this process sent: the ring's `done` word is shared memory, and a
    /// value past our last ticket (or a result entry naming another ticket) was not written
    /// by the daemon.
    fn drain(&self, p: &mut Producer) {
        let ep = self.ep.get();
        let Some(ctl) = ep.ctl() else { return };
        let done = ctl.done.load(Ordering::Acquire).min(p.next - 1);
        while p.seen < done {
            let t = p.seen + 1;
            let r = ep.ring.result(ep.boxno, t);
            if r.ticket.load(Ordering::Relaxed) != t {
                // Not written yet (`done` was pushed ahead by someone else), or overwritten:
                // stop here; a wait for it times out rather than read a wrong answer.
                break;
            }
            let reply = Reply {
                status: r.status.load(Ordering::Relaxed),
                value: r.value.load(Ordering::Relaxed),
                aux: r.aux.load(Ordering::Relaxed),
            };
            let ct = p.base + t;
            if let Some(e) = p.ledger.get_mut(&ct) {
                if e.reply.replace(reply).is_none() {
                    p.answered += 1;
                }
            }
            p.seen = t;
            while p.ends.front().is_some_and(|&(et, _)| et <= t) {
                p.consumed = p.ends.pop_front().expect("checked").1;
            }
        }
        while p.answered > MAX_KEPT {
            let Some((_, e)) = p.ledger.pop_first() else { break };
            if let Some(r) = e.reply {
                p.answered -= 1;
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
            self.ring().daemon_note()
        ))
    }

    /// Wait for a ticket's result, up to the client's timeout. Releases nothing itself: the
    /// binding calls it with the GIL released.
    pub fn wait(&self, ticket: u64) -> Result<Reply> {
        self.wait_for(ticket, self.timeout)
    }

    /// Wait for a ticket's result, up to `timeout`.
    pub fn wait_for(&self, ticket: u64, timeout: Duration) -> Result<Reply> {
        self.wait_ticket(ticket, Some(timeout))
            .map(|r| r.expect("a wait with a deadline ends with an answer or an error").0)
    }

    /// The result of `ticket` if the daemon has answered it (collecting it, as a wait does),
    /// None if not yet; never sleeps. For event loops: poll, yield, poll again.
    pub fn poll(&self, ticket: u64) -> Result<Option<Reply>> {
        Ok(self.wait_ticket(ticket, None)?.map(|r| r.0))
    }

    /// Wait for `ticket` up to `timeout`, or with None only look once (Ok(None): not yet).
    /// The reply comes with what the ledger kept of the request (its op; its key if it was
    /// sent with [`Client::send_kept`]).
    pub fn wait_ticket(
        &self,
        ticket: u64,
        timeout: Option<Duration>,
    ) -> Result<Option<(Reply, Ticket)>> {
        let (ring, b, bt, gen) = {
            let mut p = self.prod.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(r) = self.collected(&mut p, ticket)? {
                return Ok(Some(r));
            }
            let ep = self.ep.get();
            (ep.ring.clone(), ep.boxno, ticket - p.base, p.fork_gen)
        };
        let deadline = Instant::now() + timeout.unwrap_or_default();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match ring.wait_done(b, bt, left.min(Duration::from_millis(250))) {
                Waited::Done => break,
                Waited::Poisoned => {
                    let mut p = self.prod.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(r) = self.collected(&mut p, ticket)? {
                        return Ok(Some(r)); // answered before the poisoning
                    }
                    p.ledger.remove(&ticket);
                    return Err(Error::BadRequest(
                        "the daemon refused a malformed request from this client; its queue \
                         was skipped (the client moves to a fresh box on its next request)"
                            .into(),
                    ));
                }
                Waited::TimedOut if timeout.is_none() => return Ok(None),
                Waited::TimedOut => {}
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
        if p.base + p.seen < ticket {
            self.drain(&mut p);
        }
        match self.collected(&mut p, ticket)? {
            Some(r) => Ok(Some(r)),
            None => Err(Error::BadRequest(format!("result of ticket {ticket} was lost"))),
        }
    }

    /// The result of `ticket` if it was already moved out of the ring (taking it), None if
    /// it is still to come, an error for a ticket this client cannot answer.
    fn collected(&self, p: &mut Producer, ticket: u64) -> Result<Option<(Reply, Ticket)>> {
        if p.fork_gen != FORK_GEN.load(Ordering::Relaxed) || ticket <= p.parent_upto {
            return Err(Error::BadRequest(format!(
                "ticket {ticket} belongs to the parent process"
            )));
        }
        if ticket == 0 || ticket >= p.next_ticket() {
            let last = p.next_ticket() - 1;
            return Err(Error::BadRequest(format!(
                "ticket {ticket} was not issued by this client{}",
                if last > 0 { format!(" (last issued: {last})") } else { String::new() }
            )));
        }
        if let Some(e) = p.ledger.get_mut(&ticket) {
            if let Some(r) = e.reply.take() {
                p.answered -= 1;
                let e = p.ledger.remove(&ticket).expect("just seen");
                return Ok(Some((r, e)));
            }
        }
        if !p.ledger.contains_key(&ticket) {
            return Err(Error::BadRequest(format!(
                "ticket {ticket} was already collected, or its result dropped after \
                 {MAX_KEPT} newer uncollected results"
            )));
        }
        if ticket <= p.base {
            p.ledger.remove(&ticket);
            return Err(Error::BadRequest(format!(
                "request #{ticket} was lost: the daemon skipped this client's queue after a \
                 malformed request"
            )));
        }
        Ok(None)
    }

    /// Wait for a ticket's result for as long as the daemon is alive (a training takes what
    /// it takes); `Unavailable` once a wait of the client's timeout ends with no live daemon.
    pub fn wait_while_alive(&self, ticket: u64) -> Result<Reply> {
        loop {
            match self.wait(ticket) {
                Err(Error::Unavailable(m)) if !self.ring().daemon_alive() => {
                    return Err(Error::Unavailable(m))
                }
                Err(Error::Unavailable(_)) => continue,
                r => return r,
            }
        }
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

/// Requests sent back to back, at most [`PIPELINE_WINDOW`] in flight: the oldest answer is
/// collected before another request goes out, so a pipeline of any length keeps a bounded
/// number of uncollected results (and never outruns the result ring).
pub struct Pipeline<'c> {
    c: &'c Client,
    pending: std::collections::VecDeque<u64>,
    /// Answers, in the order the requests were pushed.
    pub replies: Vec<Result<Reply>>,
}

impl<'c> Pipeline<'c> {
    pub fn new(c: &'c Client) -> Pipeline<'c> {
        Pipeline { c, pending: Default::default(), replies: Vec::new() }
    }

    /// Whether the next push would first wait for an answer.
    pub fn full(&self) -> bool {
        self.pending.len() >= PIPELINE_WINDOW
    }

    /// Collect answers until there is room for one more request (call without the GIL).
    pub fn make_room(&mut self) {
        while self.full() {
            self.collect_one();
        }
    }

    fn collect_one(&mut self) {
        if let Some(t) = self.pending.pop_front() {
            self.replies.push(self.c.wait(t));
        }
    }

    /// Send one typed request (see [`Pipeline::push`]).
    pub fn push_request(&mut self, r: &Request<'_>) {
        self.push(r.op, r.flags, r.key, r.payload, r.arg, r.arg2)
    }

    /// Send one request (collecting the oldest answer first if the window is full). An
    /// error sending it is that request's answer.
    #[allow(clippy::too_many_arguments)]
    pub fn push(&mut self, op: u8, flags: u8, key: &[u8], payload: &[u8], arg: u64, arg2: u64) {
        self.make_room();
        match self.c.enqueue(op, flags, key, payload, arg, arg2) {
            Ok(t) => self.pending.push_back(t),
            Err(e) => {
                // Keep the order: answers before this one first.
                while !self.pending.is_empty() {
                    self.collect_one();
                }
                self.replies.push(Err(e));
            }
        }
    }

    /// Collect every remaining answer.
    pub fn finish(mut self) -> Vec<Result<Reply>> {
        while !self.pending.is_empty() {
            self.collect_one();
        }
        self.replies
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
