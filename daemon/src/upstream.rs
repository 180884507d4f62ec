//! Tiered mode: this host's surpd as a shared near cache in front of Redis/Valkey.
//!
//! One thread owns one RESP3 connection to the upstream, with
//! `CLIENT TRACKING ON BCAST PREFIX <upstream_prefix> NOLOOP`. The apply loop hands it jobs
//! (the writes and read-throughs of client requests, whose boxes wait meanwhile) and it
//! sends back one ordered stream of events: answers, invalidated keys, "everything
//! unproven" (a FLUSHALL, or a lost connection), and proofs of liveness.
//!
//! Why one connection and one stream: Redis writes a BCAST invalidation into a tracking
//! client's output after the write ran, so on one connection a reply is followed by the
//! pushes of every write that ran after the command it answers. Applying events in the
//! order they were read therefore never leaves a value cached that an invalidation read
//! after it should have dropped: a read-through's value is stored before the push of any
//! later write is applied (redis-py needs an in-progress marker for the same race because
//! its reads and pushes travel on different paths).
//!
//! Staleness is bounded by a lease: readers serve local copies only before
//! `SegHeader::up_lease_ms`, which the apply loop moves to `sent + upstream_timeout` when a
//! round trip sent at `sent` comes back (every invalidation of a write before `sent` was
//! read before that reply). A heartbeat PING keeps it moving while idle; when the upstream
//! stalls, the lease runs out by itself and reads raise `Unavailable` instead of serving.
//!
//! The redis crate's sync connection only reads while a command is in flight, and treats a
//! timed-out read as a reply still owed; so every timeout or I/O error drops the
//! connection (never reused), which also drops every local copy (a generation bump).

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::{Connection, ConnectionInfo, IntoConnectionInfo, PushInfo, PushKind, Value};

use crate::error::{Error, Result};
use crate::layout::status;
use crate::log;

/// What the daemon was told about its upstream (the `upstream*` settings).
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: String,
    /// The key space shared with other hosts: local key `k` is upstream key `prefix + k`.
    pub prefix: Vec<u8>,
    /// Longest wait for any upstream answer; also the staleness bound of local copies.
    pub timeout: Duration,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl Settings {
    /// The connection to open: the URL (with `protocol=resp3` forced), its user and
    /// password replaced by the configured ones.
    pub fn connection_info(&self) -> Result<ConnectionInfo> {
        let mut info = self.url.as_str().into_connection_info().map_err(|e| {
            Error::Config(format!("upstream {:?} is not a Redis URL: {e}", redact(&self.url)))
        })?;
        info.redis.protocol = redis::ProtocolVersion::RESP3;
        if self.user.is_some() {
            info.redis.username = self.user.clone();
        }
        if self.password.is_some() {
            info.redis.password = self.password.clone();
        }
        Ok(info)
    }
}

/// The URL with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let auth = &url[s + 3..at];
            match auth.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &auth[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Which request a job answers: the box waits on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub ring_id: u64,
    pub boxno: u32,
    pub ticket: u64,
    pub head_after: u64,
}

/// Work for the upstream, keys already prefixed.
#[derive(Debug)]
pub enum Job {
    /// Read these keys (value and remaining TTL of each) in one round trip.
    Fetch(Vec<Vec<u8>>),
    Set {
        key: Vec<u8>,
        value: Vec<u8>,
        ttl_ms: u64,
        only_if_absent: bool,
    },
    Delete(Vec<u8>),
    Incr {
        key: Vec<u8>,
        delta: i64,
        create_from: Option<i64>,
    },
    Touch {
        key: Vec<u8>,
        ttl_ms: u64,
    },
    /// Remove every key under the prefix.
    Clear,
}

/// The upstream's answer to a job.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Per key: its bytes and remaining TTL in ms (-1: none), or None if absent.
    Fetched(Vec<Option<(Vec<u8>, i64)>>),
    /// A wire status: OK, NOT_DONE (add of a present key, delete or touch of an absent
    /// one, incr of an absent key without a start), NOT_INTEGER, OVERFLOW, WRONG_TYPE,
    /// UNAVAILABLE (no answer in time: nothing acknowledged).
    Status(u32),
    /// An incr's result and the key's remaining TTL (-1: none).
    Int { value: i64, pttl_ms: i64 },
}

/// What the upstream thread tells the apply loop, in the order it learned it.
#[derive(Debug)]
pub enum Event {
    Done(Origin, Answer),
    /// These upstream keys changed: drop the local copies.
    Invalidate(Vec<Vec<u8>>),
    /// Anything cached before now may be stale (a FLUSHALL, a new connection after a lost
    /// one): every upstream-sourced entry is dropped at once.
    Flush,
    /// A round trip sent at this wall-clock time (unix ms) came back: every invalidation of
    /// a write that ran before it has been delivered.
    Alive(u64),
    /// Connected with tracking on (`reconnect`: a connection was up before).
    Connected {
        reconnect: bool,
    },
    /// The connection was lost (or never came up).
    Disconnected,
}

/// The handle the daemon keeps: send jobs, receive events.
pub struct Upstream {
    jobs: Option<Sender<(Origin, Job)>>,
    pub events: Receiver<Event>,
    pub settings: Settings,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Start the upstream thread. `wake` is called after events were sent (it rings the
    /// apply loop's doorbell). Connecting happens in the thread: a daemon starts (and
    /// serves reads of nothing, writes with `Unavailable`) while the upstream is down.
    pub fn start(settings: Settings, wake: impl Fn() + Send + 'static) -> Result<Upstream> {
        let info = settings.connection_info()?;
        let (jobs, job_rx) = mpsc::channel();
        let (ev_tx, events) = mpsc::channel();
        let s = settings.clone();
        let thread = std::thread::Builder::new()
            .name("surpd-upstream".into())
            .spawn(move || Worker::new(s, info, job_rx, ev_tx, Box::new(wake)).run())
            .map_err(|e| Error::io("cannot start the upstream thread", e))?;
        Ok(Upstream { jobs: Some(jobs), events, settings, thread: Some(thread) })
    }

    /// Queue a job; false if the thread is gone (its answer will never come).
    pub fn submit(&self, origin: Origin, job: Job) -> bool {
        self.jobs.as_ref().is_some_and(|j| j.send((origin, job)).is_ok())
    }

    /// The upstream key of a local key.
    pub fn key(&self, local: &[u8]) -> Vec<u8> {
        [&self.settings.prefix[..], local].concat()
    }

    /// The local key of an upstream key (None: not under our prefix).
    pub fn local<'k>(&self, up: &'k [u8]) -> Option<&'k [u8]> {
        up.strip_prefix(&self.settings.prefix[..])
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Wake = Box<dyn Fn() + Send>;

struct Worker {
    s: Settings,
    info: ConnectionInfo,
    jobs: Receiver<(Origin, Job)>,
    events: Sender<Event>,
    wake: Wake,
    conn: Option<(Connection, Receiver<PushInfo>)>,
    last_attempt: Option<Instant>,
    /// A connection was up before (the next one is a reconnect).
    was_up: bool,
}

/// Lua for incr: surpdb's incr of a missing key is refused unless a start is given, and
/// returns the key's TTL with the value so the local copy expires with the upstream's.
const INCR_LUA: &str = "if redis.call('EXISTS', KEYS[1]) == 0 then \
    if ARGV[2] == '0' then return false end \
    redis.call('SET', KEYS[1], ARGV[3]) end \
    local v = redis.call('INCRBY', KEYS[1], ARGV[1]) \
    return {v, redis.call('PTTL', KEYS[1])}";

/// Lua for clear: unlink every key under the prefix, a SCAN page at a time.
const CLEAR_LUA: &str = "local c = '0' local n = 0 repeat \
    local r = redis.call('SCAN', c, 'MATCH', ARGV[1], 'COUNT', 1000) c = r[1] \
    if #r[2] > 0 then n = n + redis.call('UNLINK', unpack(r[2])) end \
    until c == '0' return n";

impl Worker {
    fn new(
        s: Settings,
        info: ConnectionInfo,
        jobs: Receiver<(Origin, Job)>,
        events: Sender<Event>,
        wake: Wake,
    ) -> Worker {
        Worker { s, info, jobs, events, wake, conn: None, last_attempt: None, was_up: false }
    }

    fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    fn run(mut self) {
        let beat = (self.s.timeout / 4).max(Duration::from_millis(10));
        self.connect();
        loop {
            let job = self.jobs.recv_timeout(beat);
            match job {
                Ok((origin, job)) => {
                    if self.conn.is_none() {
                        self.connect();
                    }
                    let answer = match self.conn.is_some() {
                        true => self.execute(&job),
                        false => Answer::Status(status::UNAVAILABLE),
                    };
                    self.emit(Event::Done(origin, answer));
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.conn.is_some() {
                        let sent = crate::shm::now_ms();
                        let r = self.round_trip(|c| redis::cmd("PING").query::<Value>(c));
                        if r.is_ok() {
                            self.emit(Event::Alive(sent));
                        }
                    } else if self.last_attempt.is_none_or(|t| t.elapsed() >= beat) {
                        self.connect();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
            (self.wake)();
        }
    }

    /// Open the connection, turn tracking on, and tell the apply loop. Nothing cached
    /// before can be proven current now (invalidations may have been missed): a Flush.
    fn connect(&mut self) {
        self.last_attempt = Some(Instant::now());
        let t = self.s.timeout.max(Duration::from_millis(100));
        let r = (|| -> redis::RedisResult<(Connection, Receiver<PushInfo>)> {
            let client = redis::Client::open(self.info.clone())?;
            let mut c = client.get_connection_with_timeout(t)?;
            c.set_read_timeout(Some(t))?;
            c.set_write_timeout(Some(t))?;
            let (tx, rx) = mpsc::channel();
            c.set_push_sender(tx);
            let mut cmd = redis::cmd("CLIENT");
            cmd.arg("TRACKING").arg("ON").arg("BCAST");
            if !self.s.prefix.is_empty() {
                cmd.arg("PREFIX").arg(&self.s.prefix[..]);
            }
            cmd.arg("NOLOOP").exec(&mut c)?;
            Ok((c, rx))
        })();
        match r {
            Ok(c) => {
                let sent = crate::shm::now_ms();
                self.conn = Some(c);
                log::info(&format!(
                    "upstream {}: connected, invalidations on for prefix {:?}",
                    redact(&self.s.url),
                    String::from_utf8_lossy(&self.s.prefix)
                ));
                self.emit(Event::Flush);
                self.emit(Event::Connected { reconnect: self.was_up });
                self.was_up = true;
                self.emit(Event::Alive(sent));
            }
            Err(e) => {
                if self.was_up || self.last_attempt.is_some() {
                    log::warn(&format!("upstream {}: cannot connect: {e}", redact(&self.s.url)));
                }
            }
        }
    }

    /// Run `f` on the connection. Pushes read meanwhile become events first (they came
    /// before the reply). A timeout or an I/O error drops the connection; a server error
    /// (a wrong type, not an integer) does not.
    fn round_trip<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let Some((c, _)) = self.conn.as_mut() else {
            return Err(redis::RedisError::from((redis::ErrorKind::IoError, "not connected")));
        };
        let r = f(c);
        self.drain_pushes();
        if let Err(e) = &r {
            if e.is_timeout()
                || e.is_io_error()
                || e.is_connection_dropped()
                || e.is_unrecoverable_error()
            {
                log::warn(&format!(
                    "upstream {}: connection lost ({e}); local copies are dropped until it is back",
                    redact(&self.s.url)
                ));
                self.conn = None;
                self.emit(Event::Disconnected);
                self.emit(Event::Flush);
            }
        }
        r
    }

    fn drain_pushes(&mut self) {
        let Some((_, pushes)) = self.conn.as_ref() else { return };
        let mut keys = Vec::new();
        let mut flush = false;
        while let Ok(p) = pushes.try_recv() {
            match p.kind {
                PushKind::Invalidate => match p.data.first() {
                    Some(Value::Array(ks)) => {
                        for k in ks {
                            if let Value::BulkString(b) = k {
                                keys.push(b.clone());
                            }
                        }
                    }
                    _ => flush = true, // null: FLUSHALL / FLUSHDB
                },
                PushKind::Disconnection => flush = true,
                _ => {}
            }
        }
        if !keys.is_empty() {
            self.emit(Event::Invalidate(keys));
        }
        if flush {
            self.emit(Event::Flush);
        }
    }

    fn execute(&mut self, job: &Job) -> Answer {
        let sent = crate::shm::now_ms();
        let a = match job {
            Job::Fetch(keys) => self
                .round_trip(|c| {
                    let mut p = redis::pipe();
                    for k in keys {
                        p.cmd("GET").arg(&k[..]).cmd("PTTL").arg(&k[..]);
                    }
                    p.query::<Vec<Value>>(c)
                })
                .map(|vals| {
                    Answer::Fetched(
                        vals.chunks(2)
                            .map(|pair| match pair {
                                [Value::BulkString(b), Value::Int(t)] => Some((b.clone(), *t)),
                                [Value::SimpleString(s), Value::Int(t)] => {
                                    Some((s.clone().into_bytes(), *t))
                                }
                                _ => None,
                            })
                            .collect(),
                    )
                }),
            Job::Set { key, value, ttl_ms, only_if_absent } => self
                .round_trip(|c| {
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(&key[..]).arg(&value[..]);
                    if *ttl_ms > 0 {
                        cmd.arg("PX").arg(*ttl_ms);
                    }
                    if *only_if_absent {
                        cmd.arg("NX");
                    }
                    cmd.query::<Value>(c)
                })
                .map(|v| {
                    Answer::Status(if v == Value::Nil { status::NOT_DONE } else { status::OK })
                }),
            Job::Delete(key) => self
                .round_trip(|c| redis::cmd("DEL").arg(&key[..]).query::<i64>(c))
                .map(|n| Answer::Status(if n > 0 { status::OK } else { status::NOT_DONE })),
            Job::Touch { key, ttl_ms } => self
                .round_trip(|c| match ttl_ms {
                    0 => redis::cmd("PERSIST").arg(&key[..]).query::<i64>(c).map(|_| {
                        // PERSIST answers 0 for a key without a TTL too: ask whether it exists.
                        0
                    }),
                    t => redis::cmd("PEXPIRE").arg(&key[..]).arg(*t).query::<i64>(c),
                })
                .and_then(|n| match (n, ttl_ms) {
                    (0, 0) => {
                        self.round_trip(|c| redis::cmd("EXISTS").arg(&key[..]).query::<i64>(c))
                    }
                    _ => Ok(n),
                })
                .map(|n| Answer::Status(if n > 0 { status::OK } else { status::NOT_DONE })),
            Job::Incr { key, delta, create_from } => self
                .round_trip(|c| {
                    redis::cmd("EVAL")
                        .arg(INCR_LUA)
                        .arg(1)
                        .arg(&key[..])
                        .arg(*delta)
                        .arg(if create_from.is_some() { "1" } else { "0" })
                        .arg(create_from.unwrap_or(0))
                        .query::<Value>(c)
                })
                .map(|v| match v {
                    Value::Array(a) => match a.as_slice() {
                        [Value::Int(v), Value::Int(t)] => Answer::Int { value: *v, pttl_ms: *t },
                        _ => Answer::Status(status::BAD_REQUEST),
                    },
                    _ => Answer::Status(status::NOT_DONE),
                }),
            Job::Clear => {
                let mut pattern = Vec::new();
                for &b in &self.s.prefix {
                    if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
                        pattern.push(b'\\');
                    }
                    pattern.push(b);
                }
                pattern.push(b'*');
                self.round_trip(|c| {
                    redis::cmd("EVAL").arg(CLEAR_LUA).arg(0).arg(&pattern[..]).query::<i64>(c)
                })
                .map(|_| Answer::Status(status::OK))
            }
        };
        match a {
            Ok(a) => {
                self.emit(Event::Alive(sent));
                a
            }
            Err(e) if self.conn.is_none() => {
                log::warn(&format!("upstream: {job:?} unanswered: {e}"));
                Answer::Status(status::UNAVAILABLE)
            }
            Err(e) => Answer::Status(server_error_status(&e)),
        }
    }
}

/// The status a Redis error reply means for the request.
fn server_error_status(e: &redis::RedisError) -> u32 {
    let text = e.to_string();
    if text.contains("WRONGTYPE") {
        status::WRONG_TYPE
    } else if text.contains("overflow") {
        status::OVERFLOW
    } else if text.contains("not an integer") {
        status::NOT_INTEGER
    } else {
        log::warn(&format!("upstream error: {text}"));
        status::BAD_REQUEST
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_a_log_line() {
        assert_eq!(redact("redis://u:secret@h:6379/0"), "redis://u:***@h:6379/0");
        assert_eq!(redact("redis://:secret@h"), "redis://:***@h");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }
}

// ---- The apply loop's side --------------------------------------------------------------

/// A request whose box waits for the upstream: an owned copy of it (the box's bytes stay
/// in place, but the copy is what the answer is applied with).
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

/// The apply loop's tiered state: the upstream handle and the requests waiting on it.
pub struct Tier {
    pub up: Upstream,
    pub waiting: std::collections::HashMap<(u64, u32), Waiting>,
}

/// Largest TTL accepted (as for a local set).
const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

impl Tier {
    /// Send a cache request to the upstream first; Some(reply) if it is answered now
    /// (refused, or DEFERRED: its box waits for the answer), None for requests that stay
    /// local (the record store, growth, noop).
    pub fn forward(
        &mut self,
        store: &mut crate::apply::Store,
        req: &crate::ring::Req<'_>,
    ) -> Option<crate::ring::Reply> {
        use crate::protocol::Op;
        use crate::ring::Reply;
        let kind = req.kind()?;
        let bad = || Some(Reply::status(status::BAD_REQUEST));
        if req.key.len() > crate::layout::MAX_KEY_LEN {
            return bad();
        }
        let key = self.up.key(req.key);
        let job = match kind {
            Op::Set | Op::Add => {
                if req.payload.len() as u64 > store.seg.max_value {
                    return Some(Reply::status(status::TOO_LARGE));
                }
                if req.arg2 != req.payload.len() as u64
                    || crate::value::validate(req.payload).is_err()
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
                create_from: (req.flags & crate::layout::flag::INCR_CREATE != 0)
                    .then_some(req.arg2 as i64),
            },
            Op::Touch => Job::Touch { key, ttl_ms: req.arg.min(MAX_TTL_MS) },
            Op::Clear => Job::Clear,
            Op::Fetch => {
                let Some(keys) = crate::protocol::unframe_keys(req.payload) else { return bad() };
                if keys.is_empty() {
                    return Some(Reply::ok(0));
                }
                Job::Fetch(keys.iter().map(|k| self.up.key(k)).collect())
            }
            Op::Append | Op::Merge | Op::Cas | Op::Zadd | Op::Zrem => {
                return Some(Reply::status(status::NOT_SUPPORTED))
            }
            Op::Noop | Op::Insert | Op::Remove | Op::Update | Op::Train | Op::Resize => {
                return None
            }
        };
        let origin = Origin {
            ring_id: req.ring_id,
            boxno: req.boxno,
            ticket: req.ticket,
            head_after: req.head_after,
        };
        if !self.up.submit(origin, job) {
            return Some(Reply::status(status::UNAVAILABLE));
        }
        self.waiting.insert(
            (req.ring_id, req.boxno),
            Waiting {
                origin,
                op: req.op,
                flags: req.flags,
                key: req.key.to_vec(),
                payload: req.payload.to_vec(),
                arg: req.arg,
                arg2: req.arg2,
            },
        );
        store.held.push((req.ring_id, req.boxno));
        Some(Reply::status(status::DEFERRED))
    }

    /// Apply what the upstream thread reported, in its order. `rings`: the current ring
    /// and the retired ones (a waiting box may be in either).
    pub fn finish(&mut self, store: &mut crate::apply::Store, rings: &[&crate::ring::Ring]) {
        let events: Vec<Event> = self.up.events.try_iter().collect();
        let Some(main) = rings.first() else { return };
        let rh = main.hdr();
        let timeout_ms = self.up.settings.timeout.as_millis() as u64;
        for ev in events {
            match ev {
                Event::Done(o, a) => self.answer(store, rings, o, a),
                Event::Invalidate(keys) => {
                    let mut n = 0;
                    for k in &keys {
                        if let Some(l) = self.up.local(k) {
                            store.drop_key(l);
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
    }

    fn answer(
        &mut self,
        store: &mut crate::apply::Store,
        rings: &[&crate::ring::Ring],
        o: Origin,
        a: Answer,
    ) {
        use crate::protocol::{Op, Request};
        use crate::ring::{Reply, Req};
        let Some(w) = self.waiting.remove(&(o.ring_id, o.boxno)) else { return };
        let Some(ring) =
            rings.iter().find(|r| r.hdr().ring_id.load(Ordering::Relaxed) == o.ring_id)
        else {
            return;
        };
        let rh = rings[0].hdr();
        let req = Req {
            ring_id: o.ring_id,
            boxno: o.boxno,
            ticket: o.ticket,
            head_after: o.head_after,
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
            rh.up_connected.store(0, Ordering::Relaxed);
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
                let local = Req { request: Request { op: crate::layout::op::SET, ..*req }, ..req };
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
                match expiry(pttl_ms) {
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
            (Some(Op::Clear), Answer::Status(status::OK)) => store.apply(ring, &req),
            (Some(Op::Fetch), Answer::Fetched(vals)) => {
                let keys = crate::protocol::unframe_keys(&w.payload).unwrap_or_default();
                for (k, v) in keys.iter().zip(vals) {
                    let stored = match v {
                        Some((bytes, pttl)) => expiry(pttl).map(|e| {
                            let local = crate::tier::from_upstream(&bytes);
                            store.put_for(ring, &req, k, &local, e, Reply::ok(0))
                        }),
                        None => Some(store.put_for(
                            ring,
                            &req,
                            k,
                            crate::tier::ABSENT_VALUE,
                            0,
                            Reply::ok(0),
                        )),
                    };
                    if stored.is_none_or(|r| r.status != status::OK) {
                        store.drop_key(k);
                    }
                }
                rh.up_read_throughs.fetch_add(keys.len() as u64, Ordering::Relaxed);
                Reply::ok(0)
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
        store.held.retain(|&h| h != (o.ring_id, o.boxno));
    }
}
