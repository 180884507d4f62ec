//! The read path: pin the reader epoch, probe the index, validate the record, hand it over,
//! unpin. No syscall and no lock on a hit.

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::RwLockReadGuard;

use super::{Client, Endpoint};
use crate::codec::RecordEncoder;
use crate::error::{Error, Result};
use crate::index::Probe;
use crate::layout::*;
use crate::records::{decode_payload, records_path, LogTables, RecFile};
use crate::segment::{Rec, Segment};
use crate::shm;

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
    /// Tiered mode: no local copy that is provably current (none, one from before the
    /// daemon last lost its invalidation stream, or the upstream has not answered within
    /// `upstream_timeout`). Read it through ([`Client::fetch`]) and look again.
    Unknown,
}

impl Client {
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

    /// Look a key up, reading the clock only for a record that has an expiry. The record
    /// borrows the pin, so it cannot outlive it:
    ///
    /// ```compile_fail,E0505
    /// fn f(c: &surpd::client::Client) {
    ///     let pin = c.pin().unwrap();
    ///     let hit = c.get(&pin, b"k");
    ///     drop(pin); // error: `pin` is still borrowed by `hit`
    ///     let _keep = hit;
    /// }
    /// ```
    #[inline]
    pub fn get<'p>(&self, pin: &'p Pin<'_>, key: &[u8]) -> Lookup<'p> {
        self.lookup(pin, key, NOW_LAZY)
    }

    /// Look a key up as of `now_ms` (unix ms; [`NOW_LAZY`]: read the clock if needed).
    #[inline]
    pub fn lookup<'p>(&self, pin: &'p Pin<'_>, key: &[u8], now_ms: u64) -> Lookup<'p> {
        let seg: &'p Segment = pin.seg;
        let hash = seg.hash(key);
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
        let h = seg.hdr();
        // Tiered mode when a lease was ever given (0: a standalone store).
        let lease = h.up_lease_ms.load(Ordering::Acquire);
        // Before the probe: see prefix.rs.
        let pre = seg.prefixes();
        match seg.probe(key, hash) {
            // A stampede lease: the key's value is being computed (`get_or_set`).
            Probe::Hit { rec, .. } if rec.value.first() == Some(&crate::value::LEASE) => {
                count(|c| &c.misses, |h| &h.retired_misses);
                Lookup::Miss
            }
            Probe::Hit { rec, .. }
                if seg.ns_cleared(key, rec.version)
                    || crate::prefix::deleted(&pre, seg, key, rec.version) =>
            {
                // Its namespace was cleared, or its prefix deleted, after it was written.
                count(|c| &c.misses, |h| &h.retired_misses);
                if lease != 0 {
                    Lookup::Unknown
                } else {
                    Lookup::Miss
                }
            }
            Probe::Hit { rec, .. } => {
                if lease != 0 {
                    let now = if now_ms == NOW_LAZY { shm::now_ms() } else { now_ms };
                    if rec.version < h.up_min_version.load(Ordering::Acquire) || now >= lease {
                        count(|c| &c.misses, |h| &h.retired_misses);
                        return Lookup::Unknown;
                    }
                    if rec.expired(now) {
                        count(|c| &c.misses, |h| &h.retired_misses);
                        return Lookup::Unknown;
                    }
                    if rec.value == crate::tier::ABSENT_VALUE {
                        count(|c| &c.hits, |h| &h.retired_hits);
                        return Lookup::Miss; // known absent upstream
                    }
                } else if rec.expires_ms != 0 {
                    let now = if now_ms == NOW_LAZY { shm::now_ms() } else { now_ms };
                    if rec.expired(now) {
                        count(|c| &c.misses, |h| &h.retired_misses);
                        return Lookup::Miss;
                    }
                }
                let mut rec = rec;
                if rec.value.first() == Some(&crate::value::TAGGED) {
                    // A tagged value: a miss once one of its tags was invalidated.
                    let touch = |off: u64| ring.touch_hint(off - seg.heap_off);
                    match seg.untagged(key, rec.value, now_ms, &pre, touch) {
                        Some(v) => rec.value = v,
                        None => {
                            count(|c| &c.misses, |h| &h.retired_misses);
                            return Lookup::Miss;
                        }
                    }
                }
                count(|c| &c.hits, |h| &h.retired_hits);
                ring.touch_hint(rec.off - self.seg.heap_off);
                Lookup::Hit(rec)
            }
            Probe::Miss => {
                count(|c| &c.misses, |h| &h.retired_misses);
                if lease != 0 {
                    Lookup::Unknown
                } else {
                    Lookup::Miss
                }
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
        let mut fetched = 0;
        let mut answer = None;
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
                Lookup::Unknown => {
                    drop(pin);
                    if let Some(v) = answer.take().and_then(|a| self.fetched(key, a)) {
                        return Ok(f(v.rec(key).as_ref()));
                    }
                    answer = self.read_through(&[key], &mut fetched)?;
                }
            }
        }
        Ok(f(None))
    }

    /// Tiered mode: the value a read-through of one key stored (`answer`: its record's
    /// offset and version), copied out, even if an invalidation unlinked it since: it was
    /// current when the upstream read it, which was during this read. None if the record is
    /// gone (read through again).
    pub fn fetched(&self, key: &[u8], answer: (u64, u64)) -> Option<Fetched> {
        let (value, expires_ms) = self.seg.copy_item(answer.0, key, answer.1)?;
        Some(Fetched { off: answer.0, version: answer.1, expires_ms, value })
    }

    /// Whether the store is in tiered mode (its daemon caches in front of an upstream).
    pub fn tiered(&self) -> bool {
        self.seg.hdr().up_lease_ms.load(Ordering::Relaxed) != 0
    }

    /// Tiered mode: have the daemon read `keys` through from the upstream into the local
    /// store (one round trip for all of them), waiting for it. `Unavailable` if the
    /// upstream does not answer in time.
    /// For one key, the answer names the record stored for it: (offset, version), for
    /// [`Client::fetched`].
    pub fn fetch(&self, keys: &[&[u8]]) -> Result<Option<(u64, u64)>> {
        let budget = (self.max_value() as usize).max(1);
        let mut batch: Vec<&[u8]> = Vec::new();
        let mut size = 0;
        let mut answer = None;
        let mut send = |batch: &mut Vec<&[u8]>| -> Result<()> {
            let payload = crate::protocol::frame_keys(batch.iter().copied());
            let r = crate::protocol::Request::fetch(&payload);
            let reply = self.call(&r)?;
            let reply = self.outcome(&r, reply)?;
            answer = (batch.len() == 1 && reply.value != 0).then_some((reply.value, reply.aux));
            batch.clear();
            Ok(())
        };
        for &k in keys {
            Self::check_key(k)?;
            if size + k.len() + 10 > budget && !batch.is_empty() {
                send(&mut batch)?;
                size = 0;
            }
            size += k.len() + 10;
            batch.push(k);
        }
        if !batch.is_empty() {
            send(&mut batch)?;
        }
        Ok(answer)
    }

    /// One read-through for a lookup that found no current copy; after three for the same
    /// read (each stored copy dropped again before it could be read: a key written that
    /// often, or a value the local store cannot hold), `Unavailable`.
    pub fn read_through(&self, keys: &[&[u8]], tries: &mut u32) -> Result<Option<(u64, u64)>> {
        *tries += 1;
        if *tries > 3 {
            return Err(Error::Unavailable(format!(
                "{}: key {} could not be cached locally after 3 reads through the upstream \
                 (changing on every read, or larger than this store's max_value of {} bytes)",
                self.dir.display(),
                crate::protocol::key_repr(keys[0]),
                self.max_value()
            )));
        }
        self.fetch(keys)
    }

    /// The records file (the daemon creates it when it attaches).
    pub fn records(&self) -> Result<&RecFile> {
        if let Some(r) = self.recs.get() {
            return Ok(r);
        }
        let rf = RecFile::open(&records_path(&self.dir), false)?;
        Ok(self.recs.get_or_init(|| rf))
    }

    /// The record file's tables, brought up to what the daemon has appended: a read lock,
    /// taken by many threads at once; the write lock only to parse new entries.
    fn tables(&self, rf: &RecFile) -> Result<RwLockReadGuard<'_, LogTables>> {
        let current = |t: &LogTables| t.parsed == rf.hdr().tables_end.load(Ordering::Acquire);
        let t = self.tables.read().unwrap_or_else(|e| e.into_inner());
        if current(&t) {
            return Ok(t);
        }
        drop(t);
        let mut w = self.tables.write().unwrap_or_else(|e| e.into_inner());
        if !current(&w) {
            w.refresh(rf)?;
        }
        drop(w);
        Ok(self.tables.read().unwrap_or_else(|e| e.into_inner()))
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
            let t = self.tables(rf)?;
            let r = decode_payload(&t, model, payload, out);
            drop(t);
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

    /// Compress record `val` (value encoding) for the record store in this process, with
    /// the store's current model, into `out`. Returns the model number to send it with
    /// ([`Request::insert_encoded`]), or None to send it as it is:
    /// - no model yet;
    /// - it names a field or URL host the table log does not have yet (only the daemon adds
    ///   names);
    /// - it is not a valid value (the daemon reports it);
    /// - it does not get smaller;
    /// - the daemon serving the ring is of a version that does not accept compressed records.
    ///
    /// Encoding here takes the daemon's largest cost off its one writer thread: it only
    /// decodes the record to check it.
    ///
    /// [`Request::insert_encoded`]: crate::protocol::Request::insert_encoded
    pub fn encode_record(
        &self,
        val: &[u8],
        enc: &mut RecordEncoder,
        out: &mut Vec<u8>,
    ) -> Result<Option<u32>> {
        // A daemon of an earlier version would take the bytes for a plain value.
        let rh = self.ring().hdr();
        let gen = rh.daemon_generation.load(Ordering::Acquire);
        let word = rh.daemon_features.load(Ordering::Acquire);
        if features::of(word, gen) & features::ENCODED_RECORDS == 0 {
            return Ok(None);
        }
        let rf = self.records()?;
        let t = self.tables(rf)?;
        let Some(m) = t.models.last() else { return Ok(None) };
        let model = t.models.len() as u32;
        out.clear();
        if enc.encode(m, &mut &*t, val, out).is_err() {
            return Ok(None);
        }
        // Text unlike the model's can come out larger than it went in, even over max_value:
        // such a record goes as it is (the daemon stores it as well as it can).
        if out.len() >= val.len() || out.len() as u64 > self.max_value() {
            return Ok(None);
        }
        Ok(Some(model))
    }

    /// Live record ids in storage order, a page at a time ([`RecFile::scan`]), under a
    /// reader pin (a chunk is not reused while a pinned scan reads it).
    pub fn record_ids(&self, cursor: u64, count: usize) -> Result<(u64, Vec<u64>)> {
        let rf = self.records()?;
        let _pin = self.pin()?;
        Ok(rf.scan(cursor, count))
    }

    /// Walk the index from slot `cursor`, handing up to `count` unexpired items to `f` under
    /// one pin; returns the cursor to continue from (0: the end). Keys changed during a scan
    /// may be seen twice or missed (dump and load use it on a quiet store).
    pub fn scan(&self, cursor: u64, count: usize, mut f: impl FnMut(&Rec<'_>)) -> Result<u64> {
        let now = shm::now_ms();
        let _pin = self.pin()?;
        let seg = &self.seg;
        let pre = seg.prefixes();
        let (mut i, mut n) = (cursor, 0);
        while i < seg.slots && n < count {
            let v = seg.slot(i).load(Ordering::Acquire);
            i += 1;
            if v == 0 {
                continue;
            }
            if let Some(rec) = seg.record(slot_off(v)) {
                let lease = rec.value.first() == Some(&crate::value::LEASE);
                if !lease && seg.alive_under(&rec, now, &pre) {
                    f(&rec);
                    n += 1;
                }
            }
        }
        Ok(if i >= seg.slots { 0 } else { i })
    }

    /// The keys of namespace `ns` starting with `prefix` (user keys, the namespace prefix
    /// stripped) whose home slot lies in `[cursor, cursor + count)`, and the cursor to go on
    /// from (0: the end). Every key present for the whole scan is returned exactly once:
    /// a key is visited with its home slot (fixed by its hash), and a key only ever sits at
    /// or after its home (a backward-shift delete moves keys back, never past their home),
    /// so the chunk reads from `cursor` on until the first empty slot past its end; and a
    /// chunk is read again whenever a delete ran meanwhile (the index seqlock moved).
    pub fn scan_keys(
        &self,
        ns: usize,
        prefix: &[u8],
        cursor: u64,
        count: u64,
    ) -> Result<(u64, Vec<Vec<u8>>)> {
        let now = shm::now_ms();
        let _pin = self.pin()?;
        let seg = &self.seg;
        let (a, b) = (cursor.min(seg.slots), cursor.saturating_add(count.max(1)).min(seg.slots));
        let seq = &seg.hdr().idx_seq;
        let mut out = Vec::new();
        for tries in 0.. {
            // SYNC POINT: Acquire; pairs with the writer's Release store that ends a delete.
            let s1 = seq.load(Ordering::Acquire);
            if s1 & 1 == 1 && tries < 10_000 {
                std::hint::spin_loop();
                continue;
            }
            out.clear();
            let pre = seg.prefixes();
            for p in a..a + seg.slots {
                let v = seg.slot(p & seg.mask).load(Ordering::Acquire);
                if v == 0 {
                    if p >= b {
                        break;
                    }
                    continue;
                }
                let Some(rec) = seg.record(slot_off(v)) else { continue };
                let home = rec.hash & seg.mask;
                let ours = home >= a && home < b && crate::namespace::ns_of(rec.key) == ns;
                let live = ours
                    && rec.value.first() != Some(&crate::value::LEASE)
                    && !crate::tags::is_tag_key(rec.key)
                    && seg.alive_under(&rec, now, &pre);
                if live {
                    let k = crate::namespace::user_key(rec.key);
                    if k.starts_with(prefix) {
                        out.push(k.to_vec());
                    }
                }
            }
            // SYNC POINT: the slot loads above happen before this re-read (seqlock read side).
            fence(Ordering::Acquire);
            if seq.load(Ordering::Relaxed) == s1 || tries >= 10_000 {
                break;
            }
        }
        Ok((if b >= seg.slots { 0 } else { b }, out))
    }

    /// Record-store counters: (live records, bytes used by the records file, models,
    /// inserted, removed); None without a records file.
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
}

/// Whether `s` matches the glob `pattern` as Redis's SCAN MATCH reads one: `*` any run, `?`
/// any byte, `[abc]`, `[a-z]` and `[^abc]` a class, `\\x` the byte x itself.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
        // p starts after '['; returns (matched, bytes of the class incl. ']').
        let mut i = 0;
        let neg = p.first() == Some(&b'^');
        if neg {
            i += 1;
        }
        let mut hit = false;
        let start = i;
        while i < p.len() && (p[i] != b']' || i == start) {
            if p[i] == b'\\' && i + 1 < p.len() {
                hit |= p[i + 1] == c;
                i += 2;
            } else if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
                hit |= p[i] <= c && c <= p[i + 2];
                i += 3;
            } else {
                hit |= p[i] == c;
                i += 1;
            }
        }
        (i < p.len()).then_some((hit != neg, i + 1))
    }
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < s.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some(p);
                mark = t;
                p += 1;
                continue;
            }
            Some(b'?') => Some(1),
            Some(b'[') => match class(&pattern[p + 1..], s[t]) {
                Some((true, n)) => Some(n + 1),
                _ => None,
            },
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == s[t]).then_some(2),
            Some(&c) => (c == s[t]).then_some(1),
            None => None,
        };
        match step {
            Some(n) => {
                p += n;
                t += 1;
            }
            None => match star {
                Some(sp) => {
                    p = sp + 1;
                    mark += 1;
                    t = mark;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The literal start of a glob (what every match starts with).
pub fn glob_prefix(pattern: &[u8]) -> &[u8] {
    let end = pattern.iter().position(|c| matches!(c, b'*' | b'?' | b'[' | b'\\'));
    &pattern[..end.unwrap_or(pattern.len())]
}

/// A value a read-through stored, copied out of the segment (see [`Client::fetched`]).
pub struct Fetched {
    off: u64,
    version: u64,
    expires_ms: u64,
    value: Vec<u8>,
}

impl Fetched {
    /// As a record of `key`: None when it says the key is absent upstream, or has expired.
    pub fn rec<'a>(&'a self, key: &'a [u8]) -> Option<Rec<'a>> {
        let live = self.expires_ms == 0 || self.expires_ms > shm::now_ms();
        (live && self.value != crate::tier::ABSENT_VALUE).then_some(Rec {
            off: self.off,
            size: 0,
            hash: 0,
            version: self.version,
            expires_ms: self.expires_ms,
            key,
            value: &self.value,
        })
    }
}

#[cfg(test)]
mod glob_tests {
    use super::*;

    #[test]
    fn globs_match_as_redis_scan_does() {
        for (p, s, m) in [
            ("user:*", "user:42", true),
            ("user:*", "usr:42", false),
            ("*:42", "user:42", true),
            ("u?er", "user", true),
            ("u[sx]er", "uxer", true),
            ("u[^s]er", "user", false),
            ("k[0-9]", "k7", true),
            ("k[0-9]", "ka", false),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("*", "", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
        ] {
            assert_eq!(glob_match(p.as_bytes(), s.as_bytes()), m, "{p} ~ {s}");
        }
        assert_eq!(glob_prefix(b"user:*:x"), b"user:");
        assert_eq!(glob_prefix(b"plain"), b"plain");
    }
}
