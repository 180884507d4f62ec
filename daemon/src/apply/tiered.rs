//! Tiered mode's local half: what the apply loop does with the upstream's answers and
//! invalidations (see `upstream.rs` for the ordering argument). Upstream-sourced entries are
//! ordinary records; their currency is carried by two header words readers check: records
//! below `up_min_version` are unproven (a generation bump drops them all at once), and none
//! is served past `up_lease_ms`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;

use super::{Store, MAX_TTL_MS};
use crate::heap::CleanStats;
use crate::layout::{flag, op, status, MAX_KEY_LEN};
use crate::protocol::{Op, Request};
use crate::ring::{Reply, Req, Ring};
use crate::upstream::{Answer, Event, Fetched, Job, Origin, Upstream, MAX_IN_FLIGHT};

impl Store {
    /// Enter or leave tiered mode at attach. Entering, nothing stored before is provably
    /// current (the daemon may have missed invalidations while it was down): every record
    /// is below the new minimum version, and nothing is served until the upstream answers.
    pub fn set_tiered(&mut self, on: bool) {
        let h = self.seg.hdr();
        if on {
            h.up_min_version.store(h.version.load(Ordering::Relaxed), Ordering::Release);
            h.up_lease_ms.store(1, Ordering::Release);
        } else {
            h.up_lease_ms.store(0, Ordering::Release);
            h.up_min_version.store(0, Ordering::Release);
        }
    }

    /// Every upstream-sourced entry stored so far is unproven from now on (a FLUSHALL, or a
    /// lost connection that may have lost invalidations). O(1); the sweep reclaims them.
    pub fn drop_upstream_generation(&mut self) {
        let h = self.seg.hdr();
        h.up_min_version.store(h.version.load(Ordering::Relaxed), Ordering::Release);
    }

    /// Local copies may be served until `until_ms` (unix ms); never moves back.
    pub fn extend_lease(&mut self, until_ms: u64) {
        self.seg.hdr().up_lease_ms.fetch_max(until_ms, Ordering::Release);
    }

    /// Drop the local copy of `key` (an invalidation, or a write whose upstream outcome is
    /// unknown). Outside any request: nothing is journaled (a restart in tiered mode
    /// drops every local copy anyway).
    pub fn drop_key(&mut self, key: &[u8]) -> bool {
        self.disarm();
        self.ctx = None;
        self.in_operation(|s| s.delete(key).status == crate::layout::status::OK)
    }

    /// Store `value` for `key`, expiring at `expires_ms` (0: never), as part of request
    /// `req` (journaled like the request's own write); `answer` is the request's reply.
    pub fn put_for(
        &mut self,
        ring: &Ring,
        req: &Req<'_>,
        key: &[u8],
        value: &[u8],
        expires_ms: u64,
        answer: Reply,
    ) -> Reply {
        self.disarm();
        self.ctx = Some((req.ring_id, req.boxno, req.ticket, req.head_after));
        self.in_operation(|s| {
            let mut st = CleanStats::default();
            let hash = s.seg.hash(key);
            let r = s.put(ring, key, hash, value, expires_ms, &mut st, |_| answer);
            s.account(&st);
            r
        })
    }
}

// ---- Requests sent to the upstream ------------------------------------------------------

/// A request sent upstream and not answered yet: an owned copy of it (the box's bytes stay
/// in place until it is answered, but the copy is what the answer is applied with).
#[derive(Debug)]
pub struct Waiting {
    pub origin: Origin,
    pub op: u8,
    pub flags: u8,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub arg: u64,
    pub arg2: u64,
}

/// The apply loop's tiered state: the upstream handle and, per box (ring id, box), the
/// requests in flight, oldest first. The upstream answers them in the order they were sent,
/// so each box's requests are answered in its order.
pub struct Tier {
    pub up: Upstream,
    pub waiting: HashMap<(u64, u32), VecDeque<Waiting>>,
}

/// The stored local key a push names under our prefix; None for what no local key can be
/// (a box's exactly-once record, a namespace this store has not opened).
fn invalidated(store: &Store, up: &Upstream, key: &[u8]) -> Option<Vec<u8>> {
    crate::tier::local_key(up.local(key)?, |n| store.seg.ns_find(n))
}

/// The upstream key of a stored local key (its namespace by name).
fn upstream_key(store: &Store, up: &Upstream, stored: &[u8]) -> Option<Vec<u8>> {
    crate::tier::upstream_key(stored, |id| store.seg.ns_name(id)).map(|k| up.key(&k))
}

impl Tier {
    pub fn new(up: Upstream) -> Tier {
        Tier { up, waiting: HashMap::new() }
    }

    /// Requests in flight, all boxes.
    pub fn in_flight(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }

    /// Send a cache request to the upstream first. Some(reply): refused now, PIPELINED
    /// (sent; answered later, in order, while the box's next request may be taken), or
    /// LATER (not taken: the request must wait for those of its box in flight). None: a
    /// request that stays local (the record store, growth, noop), with nothing in flight
    /// before it.
    pub fn forward(&mut self, store: &mut Store, req: &Req<'_>) -> Option<Reply> {
        let queue = (req.ring_id, req.boxno);
        let busy = self.waiting.get(&queue).map_or(0, VecDeque::len);
        let now = match self.job(store, req) {
            Ok(job) if busy < MAX_IN_FLIGHT => job,
            // Answered now (or local) only once nothing of its box is in flight, so that a
            // box's answers keep its order.
            Ok(_) => return Some(Reply::status(status::LATER)),
            Err(_) if busy > 0 => return Some(Reply::status(status::LATER)),
            Err(reply) => return reply,
        };
        let origin = Origin {
            ring_id: req.ring_id,
            boxno: req.boxno,
            claim: req.claim,
            ticket: req.ticket,
            head_after: req.head_after,
        };
        if !self.up.submit(origin, now) {
            return match busy {
                0 => Some(Reply::status(status::UNAVAILABLE)),
                _ => Some(Reply::status(status::LATER)),
            };
        }
        self.waiting.entry(queue).or_default().push_back(Waiting {
            origin,
            op: req.op,
            flags: req.flags,
            key: req.key.to_vec(),
            payload: req.payload.to_vec(),
            arg: req.arg,
            arg2: req.arg2,
        });
        Some(Reply::status(status::PIPELINED))
    }

    /// The upstream job for a request; Err(Some(reply)) if it is answered without one,
    /// Err(None) if it stays local.
    fn job(&self, store: &Store, req: &Req<'_>) -> Result<Job, Option<Reply>> {
        let Some(kind) = req.kind() else { return Err(None) };
        let bad = || Err(Some(Reply::status(status::BAD_REQUEST)));
        if store.pickle_refused(req) {
            return Err(Some(Reply::status(status::PICKLE_REFUSED)));
        }
        if req.key.len() > MAX_KEY_LEN {
            return bad();
        }
        let Some(key) = upstream_key(store, &self.up, req.key) else { return bad() };
        Ok(match kind {
            Op::Set | Op::Add => {
                if req.payload.len() as u64 > store.seg.max_value {
                    return Err(Some(Reply::status(status::TOO_LARGE)));
                }
                if req.payload.first() == Some(&crate::value::TAGGED) {
                    // Tags live in one host's segment: another host could not see them go.
                    return Err(Some(Reply::status(status::NOT_SUPPORTED)));
                }
                if req.arg2 != req.payload.len() as u64
                    || crate::value::validate_stored(req.payload, store.seg.max_value).is_err()
                {
                    return bad();
                }
                Job::Set {
                    key,
                    value: crate::tier::to_upstream(req.payload),
                    ttl_ms: req.arg.min(MAX_TTL_MS),
                    only_if_absent: kind == Op::Add,
                }
            }
            Op::Delete => Job::Delete(key),
            Op::Incr => Job::Incr {
                key,
                delta: req.arg as i64,
                create_from: (req.flags & flag::INCR_CREATE != 0).then_some(req.arg2 as i64),
            },
            Op::Touch => Job::Touch { key, ttl_ms: req.arg.min(MAX_TTL_MS) },
            // Everything under the prefix (but the boxes' exactly-once records).
            Op::Clear => Job::Clear { pattern: b"*".to_vec(), keep: Vec::new() },
            Op::Fetch => {
                let Some(keys) = crate::protocol::unframe_keys(req.payload) else { return bad() };
                if keys.is_empty() {
                    return Err(Some(Reply::ok(0)));
                }
                let up: Option<Vec<Vec<u8>>> =
                    keys.iter().map(|k| upstream_key(store, &self.up, k)).collect();
                let Some(up) = up else { return bad() };
                Job::Fetch(up)
            }
            Op::Zadd => {
                let Ok(entries) = crate::value::zset_entries(req.payload) else { return bad() };
                if req.arg2 != req.payload.len() as u64 || entries.iter().any(|e| e.score.is_nan())
                {
                    return bad();
                }
                let pairs = entries.iter().map(|e| (e.score, e.member.to_vec())).collect();
                Job::Zadd { key, pairs, max_len: req.arg }
            }
            Op::Zrem => {
                let Some(members) = list_members(req.payload) else { return bad() };
                Job::Zrem { key, members }
            }
            Op::Append => {
                if req.arg2 != req.payload.len() as u64
                    || crate::value::validate(req.payload).is_err()
                {
                    return bad();
                }
                let item = crate::tier::to_upstream(req.payload);
                Job::Append { key, item, max_len: req.arg }
            }
            // A deep merge has no Redis equivalent (a hash holds one level).
            Op::Merge if req.flags & flag::DEEP != 0 => {
                return Err(Some(Reply::status(status::NOT_SUPPORTED)))
            }
            Op::Merge => {
                let Ok(items) = crate::value::dict_items(req.payload) else { return bad() };
                let fields = items
                    .iter()
                    .map(|(k, v)| {
                        let (k, v) = (&req.payload[k.clone()], &req.payload[v.clone()]);
                        (crate::tier::field_upstream(k), crate::tier::to_upstream(v))
                    })
                    .collect();
                Job::Merge { key, fields }
            }
            // Versions are this host's: the upstream has none to compare. Leases are held by
            // this host's processes (another host could not tell its holder dead).
            Op::Cas | Op::Lease | Op::Unlease => {
                return Err(Some(Reply::status(status::NOT_SUPPORTED)))
            }
            Op::Noop
            | Op::Insert
            | Op::Remove
            | Op::Update
            | Op::Train
            | Op::Resize
            | Op::NsOpen => return Err(None),
            // Culling (Django's MAX_ENTRIES) picks a namespace's oldest local entries: the
            // upstream holds the data, and its own maxmemory policy evicts there.
            Op::NsCull => return Err(Some(Reply::status(status::NOT_SUPPORTED))),
            // The upstream holds the keys: a scan there deletes them (its invalidations
            // drop every host's copies), as a namespace's clear does.
            Op::DeletePrefix => {
                if crate::namespace::user_key(req.key).is_empty() {
                    return bad();
                }
                let Some(rel) = crate::tier::upstream_key(req.key, |id| store.seg.ns_name(id))
                else {
                    return bad();
                };
                let mut p = crate::upstream::glob_escape(&rel);
                p.push(b'*');
                let keep = if crate::namespace::ns_of(req.key) == 0 {
                    vec![crate::tier::NS_TAG.to_vec()]
                } else {
                    Vec::new()
                };
                Job::Clear { pattern: p, keep }
            }
            Op::NsClear => match req.arg as usize {
                // The default namespace: everything but the other namespaces' keys.
                0 => {
                    Job::Clear { pattern: b"*".to_vec(), keep: vec![crate::tier::NS_TAG.to_vec()] }
                }
                id => {
                    let Some(name) = store.seg.ns_name(id) else { return bad() };
                    let mut p =
                        crate::upstream::glob_escape(&[crate::tier::NS_TAG, &name, b"\0"].concat());
                    p.push(b'*');
                    Job::Clear { pattern: p, keep: Vec::new() }
                }
            },
        })
    }

    /// Apply what the upstream thread reported, in its order. `rings`: the current ring
    /// and the retired ones (a waiting box may be in either). Returns the requests answered.
    pub fn finish(&mut self, store: &mut Store, rings: &[&Ring]) -> usize {
        let events: Vec<Event> = self.up.events.try_iter().collect();
        let Some(main) = rings.first() else { return 0 };
        let rh = main.hdr();
        let timeout_ms = self.up.settings.timeout.as_millis() as u64;
        let mut answered = 0;
        for ev in events {
            match ev {
                Event::Done(o, a) => {
                    self.answer(store, rings, o, a);
                    answered += 1;
                }
                Event::Invalidate(keys) => {
                    let mut n = 0;
                    for k in &keys {
                        if let Some(l) = invalidated(store, &self.up, k) {
                            store.drop_key(&l);
                            n += 1;
                        }
                    }
                    rh.up_invalidations.fetch_add(n, Ordering::Relaxed);
                }
                Event::Flush => {
                    store.drop_upstream_generation();
                    rh.up_flushes.fetch_add(1, Ordering::Relaxed);
                }
                Event::Alive(sent) => {
                    store.extend_lease(sent + timeout_ms);
                    rh.up_round_trips.fetch_add(1, Ordering::Relaxed);
                }
                Event::Connected { reconnect } => {
                    rh.up_connected.store(1, Ordering::Relaxed);
                    if reconnect {
                        rh.up_reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Event::Disconnected => rh.up_connected.store(0, Ordering::Relaxed),
            }
        }
        answered
    }

    fn answer(&mut self, store: &mut Store, rings: &[&Ring], o: Origin, a: Answer) {
        let queue = (o.ring_id, o.boxno);
        let Some(q) = self.waiting.get_mut(&queue) else { return };
        if q.front().is_none_or(|w| w.origin != o) {
            // Not the oldest of its box: cannot happen (one ordered connection); drop the
            // local copy it may have changed and leave the box to be answered in order.
            crate::log::warn(&format!("upstream answer out of order for box {}", o.boxno));
            return;
        }
        let w = q.pop_front().expect("checked above");
        if q.is_empty() {
            self.waiting.remove(&queue);
        }
        // The upstream applied it; nothing local has changed yet (a crash here makes the
        // restarted daemon send it again: the exactly-once record answers).
        crate::crash::point("upstream answered");
        let Some(ring) =
            rings.iter().find(|r| r.hdr().ring_id.load(Ordering::Relaxed) == o.ring_id)
        else {
            return;
        };
        let rh = rings[0].hdr();
        if ring.claim_of(o.boxno) != o.claim {
            // The box was claimed anew while this was in flight (its owner died): the answer
            // has no one to go to. The upstream may have changed the key: drop our copy.
            store.drop_key(&w.key);
            return;
        }
        let req = Req {
            ring_id: o.ring_id,
            boxno: o.boxno,
            claim: o.claim,
            ticket: o.ticket,
            head_after: o.head_after,
            owner: (
                ring.ctl(o.boxno).owner_pid.load(Ordering::Relaxed),
                ring.ctl(o.boxno).owner_start.load(Ordering::Relaxed),
            ),
            request: Request {
                op: w.op,
                flags: w.flags,
                key: &w.key,
                payload: &w.payload,
                arg: w.arg,
                arg2: w.arg2,
            },
        };
        if matches!(a, Answer::Status(status::UNAVAILABLE)) {
            rh.up_errors.fetch_add(1, Ordering::Relaxed);
        }
        let now = crate::shm::now_ms();
        let expiry = |pttl: i64| match pttl {
            -1 => Some(0),
            t if t > 0 => Some(now + t as u64),
            _ => None, // gone meanwhile: not cached
        };
        let reply = match (req.kind(), a) {
            (Some(Op::Set | Op::Add), Answer::Status(status::OK)) => {
                // Acknowledged upstream: the local copy follows (as a set: the upstream
                // said the key was absent for an add).
                let local = Req { request: Request { op: op::SET, ..*req }, ..req };
                let r = store.apply(ring, &local);
                if r.status != status::OK {
                    store.drop_key(&w.key);
                    Reply::ok(0)
                } else {
                    r
                }
            }
            (Some(Op::Delete), Answer::Status(s)) => {
                store.drop_key(&w.key);
                Reply::status(s)
            }
            (Some(Op::Incr), Answer::Int { value, pttl_ms }) => {
                let mut buf = Vec::with_capacity(12);
                crate::value::encode_int(&mut buf, value as i128);
                let answer = Reply {
                    status: status::OK,
                    value: value as u64,
                    aux: ((value as i128) >> 64) as u64,
                };
                // A replay's value was recorded earlier: the key may have moved on since,
                // so no local copy is made of it.
                match pttl_ms.and_then(expiry) {
                    Some(e)
                        if store.put_for(ring, &req, &w.key, &buf, e, answer).status
                            == status::OK => {}
                    _ => {
                        store.drop_key(&w.key);
                    }
                }
                answer
            }
            (Some(Op::Touch), Answer::Status(status::OK)) => {
                store.apply(ring, &req);
                Reply::ok(0)
            }
            // A clear (or a prefix deletion) sent again after a restart clears locally too (the
            // local store may hold copies read through since; clearing them again is harmless).
            (
                Some(Op::Clear | Op::NsClear | Op::DeletePrefix),
                Answer::Status(status::OK) | Answer::Replayed(status::OK),
            ) => store.apply(ring, &req),
            (Some(Op::Fetch), Answer::Fetched(vals)) => {
                let keys = crate::protocol::unframe_keys(&w.payload).unwrap_or_default();
                let mut unsupported = None;
                for (k, v) in keys.iter().zip(vals) {
                    let stored = match v {
                        Fetched::Value(local, pttl) => expiry(pttl)
                            .map(|e| store.put_for(ring, &req, k, &local, e, Reply::ok(0))),
                        Fetched::Absent => Some(store.put_for(
                            ring,
                            &req,
                            k,
                            crate::tier::ABSENT_VALUE,
                            0,
                            Reply::ok(0),
                        )),
                        Fetched::Unsupported(what) => {
                            crate::log::warn(&format!(
                                "upstream key {} holds {what}, which surpdb has no value for",
                                crate::protocol::key_repr(k)
                            ));
                            unsupported = Some(k.to_vec());
                            None
                        }
                    };
                    if stored.is_none_or(|r| r.status != status::OK) {
                        store.drop_key(k);
                    }
                }
                rh.up_read_throughs.fetch_add(keys.len() as u64, Ordering::Relaxed);
                if unsupported.is_some() {
                    // A type surpdb cannot hold (a Redis set, a stream): the read says so.
                    return ring.complete(
                        o.boxno,
                        o.ticket,
                        o.head_after,
                        Reply::status(status::WRONG_TYPE),
                    );
                }
                // One key: the answer names the record stored for it (offset, version), so
                // the reader can take that value even if an invalidation unlinks it before
                // the reader looks (a key written elsewhere faster than a round trip would
                // otherwise never be read). It was current when the upstream read it.
                match keys.as_slice() {
                    [k] => match store.seg.current(k, store.seg.hash(k)) {
                        Some(r) => Reply { status: status::OK, value: r.off, aux: r.version },
                        None => Reply::ok(0),
                    },
                    _ => Reply::ok(0),
                }
            }
            // Sorted sets, lists and hashes live upstream as Redis's own types: the local copy
            // is dropped and the next read fetches the new whole.
            (Some(Op::Zadd | Op::Zrem | Op::Append), Answer::Count { value, replayed }) => {
                if replayed {
                    rh.up_replays.fetch_add(1, Ordering::Relaxed);
                }
                store.drop_key(&w.key);
                Reply::ok(value)
            }
            (Some(Op::Merge), Answer::Status(status::OK)) => {
                store.drop_key(&w.key);
                Reply::ok(0)
            }
            (_, Answer::Replayed(s)) => {
                rh.up_replays.fetch_add(1, Ordering::Relaxed);
                store.drop_key(&w.key);
                Reply::status(s)
            }
            (_, Answer::Status(s)) => {
                if s != status::NOT_DONE {
                    store.drop_key(&w.key);
                }
                Reply::status(s)
            }
            _ => Reply::status(status::BAD_REQUEST),
        };
        ring.complete(o.boxno, o.ticket, o.head_after, reply);
    }
}

/// The members of a ZREM payload (a LIST of str or bytes), as bytes.
fn list_members(payload: &[u8]) -> Option<Vec<Vec<u8>>> {
    let items = crate::value::list_items(payload).ok()?;
    items
        .into_iter()
        .map(|r| {
            let mut rd = crate::value::Reader::new(&payload[r]);
            match rd.u8().ok()? {
                crate::value::STR | crate::value::BYTES => rd.lbytes().ok().map(<[u8]>::to_vec),
                _ => None,
            }
        })
        .collect()
}
