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
//! pushes of every write that ran after the command it answers. The thread reads replies
//! and pushes one value at a time, exactly as they arrive, and turns each into an event in
//! that order; applying events in that order never leaves a value cached that an
//! invalidation read after it should have dropped: a read-through's value is stored before
//! the push of any later write is applied (redis-py needs an in-progress marker for the
//! same race because its reads and pushes travel on different paths).
//!
//! Pipelining: every job queued when the thread looks is sent in one write, and a box may
//! have up to [`MAX_IN_FLIGHT`] requests in flight (the apply loop answers them in order), so
//! writes from many boxes and the many requests of one box's `set_many` share round trips.
//! Redis runs one connection's commands in order, so this changes nothing about ordering.
//!
//! Waiting: the thread waits in `poll` on the socket and on an eventfd that each new job
//! bumps, so a push is read the moment it arrives (not at the next command), and a job is
//! sent the moment it is queued. The socket is ours (`conn`): reads never wait, writes wait
//! at most the timeout; the redis crate packs commands and parses values.
//!
//! Staleness is bounded by a lease: readers serve local copies only before
//! `SegHeader::up_lease_ms`, which the apply loop moves to `sent + upstream_timeout` when a
//! round trip sent at `sent` comes back (every invalidation of a write before `sent` was
//! read before that reply). A heartbeat PING keeps it moving while idle; when the upstream
//! stalls, the lease runs out by itself and reads raise `Unavailable` instead of serving.
//!
//! Exactly once across a daemon crash: a request the upstream applied but the daemon was
//! killed before answering is taken again by the restarted daemon, with the requests behind
//! it. Every write is a script that records the request's id and result in a small hash per
//! box (`token_key`) in the same atomic step; a request sent again returns the recorded
//! result instead of applying twice (an incr counted twice, or a set sent again after the
//! delete behind it bringing the key back).
//!
//! Any timeout or I/O error drops the connection, which also drops every local copy (a
//! generation bump); what was in flight answers UNAVAILABLE (its outcome is unknown).

use std::collections::VecDeque;
use std::io;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::{Cmd, ConnectionInfo, ErrorKind, IntoConnectionInfo, PushKind, RedisError, Value};

use crate::error::{Error, Result};
use crate::layout::status;
use crate::log;
use crate::shm::EventFd;

mod conn;
use conn::Conn;

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
    /// `rediss://`: a PEM file of the certificate authorities to trust instead of the
    /// system's (a private CA).
    pub ca_file: Option<std::path::PathBuf>,
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

/// Which request a job answers. `claim` and `ticket` name the request for good (a box's
/// claim count and the request's ticket): the id its exactly-once record is kept under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub ring_id: u64,
    pub boxno: u32,
    pub claim: u64,
    pub ticket: u64,
    pub head_after: u64,
}

/// Most requests of one box in flight at once (and slots of its exactly-once record).
pub const MAX_IN_FLIGHT: usize = 64;

/// Most jobs sent in one write.
const MAX_BATCH: usize = 1024;

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
    /// Sorted sets onto Redis sorted sets: add (score, member) pairs, keeping the `max_len`
    /// highest scores (0: all).
    Zadd {
        key: Vec<u8>,
        pairs: Vec<(f64, Vec<u8>)>,
        max_len: u64,
    },
    Zrem {
        key: Vec<u8>,
        members: Vec<Vec<u8>>,
    },
    /// Lists onto Redis lists (each item as `tier::to_upstream`), keeping the newest `max_len`.
    Append {
        key: Vec<u8>,
        item: Vec<u8>,
        max_len: u64,
    },
    /// A shallow merge of dicts onto a Redis hash (fields and values already mapped).
    Merge {
        key: Vec<u8>,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// Remove every key under the prefix matching `pattern` (a SCAN pattern, after the
    /// prefix), except those starting with (the prefix and) one of `keep`.
    Clear {
        pattern: Vec<u8>,
        keep: Vec<Vec<u8>>,
    },
}

/// The upstream's answer to a job.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Per key, what the upstream holds.
    Fetched(Vec<Fetched>),
    /// A wire status: OK, NOT_DONE (add of a present key, delete or touch of an absent
    /// one, incr of an absent key without a start), NOT_INTEGER, OVERFLOW, WRONG_TYPE,
    /// UNAVAILABLE (no answer in time: the outcome is unknown).
    Status(u32),
    /// An incr's result and the key's remaining TTL (-1: none; None: a replay after a
    /// restart, whose result was recorded, not computed now).
    Int { value: i64, pttl_ms: Option<i64> },
    /// A replayed add or delete: its recorded status (the key may have changed since).
    Replayed(u32),
    /// What a sorted-set or list update answers (members added or removed, the new length).
    Count { value: u64, replayed: bool },
}

/// One key as a read-through found it upstream.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    Absent,
    /// Its value, already in the local encoding, and its remaining TTL in ms (-1: none).
    Value(Vec<u8>, i64),
    /// A type surpdb has no value for (a Redis set, stream, ...): named.
    Unsupported(String),
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
    bell: Arc<EventFd>,
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
        // rustls needs a process-wide crypto provider for rediss:// (an error here means one
        // is installed already, which serves as well). *ring* rather than aws-lc-rs: it
        // builds with a C compiler alone (no cmake) and in a fraction of the time; what it
        // lacks, post-quantum key exchange, is not offered by Redis/Valkey's OpenSSL-based
        // TLS anyway (hence the allow: rustls deprecates it for that reason only).
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (jobs, job_rx) = mpsc::channel();
        let (ev_tx, events) = mpsc::channel();
        let bell = Arc::new(EventFd::new().map_err(|e| Error::io("cannot make an eventfd", e))?);
        let worker = Worker {
            s: settings.clone(),
            info,
            jobs: job_rx,
            bell: bell.clone(),
            events: ev_tx,
            wake: Box::new(wake),
            conn: None,
            inflight: VecDeque::new(),
            replies: Vec::new(),
            last_attempt: None,
            was_up: false,
            scripts: Scripts::new(),
            told: false,
        };
        let thread = std::thread::Builder::new()
            .name("surpd-upstream".into())
            .spawn(move || {
                // A bug here must not leave requests waiting for answers that never come
                // (their clients would time out, their boxes stay busy): the daemon stops
                // at once, as a crash, and its restart sends what was in flight again,
                // exactly once (the per-box records).
                let run = std::panic::AssertUnwindSafe(|| worker.run());
                if std::panic::catch_unwind(run).is_err() {
                    crate::log::error(
                        "the upstream thread panicked: aborting (a restart sends the \
                         requests in flight again, each applied once)",
                    );
                    std::process::abort();
                }
            })
            .map_err(|e| Error::io("cannot start the upstream thread", e))?;
        Ok(Upstream { jobs: Some(jobs), bell, events, settings, thread: Some(thread) })
    }

    /// Queue a job; false if the thread is gone (its answer will never come).
    pub fn submit(&self, origin: Origin, job: Job) -> bool {
        let sent = self.jobs.as_ref().is_some_and(|j| j.send((origin, job)).is_ok());
        self.bell.signal();
        sent
    }

    /// The upstream key of what follows the prefix.
    pub fn key(&self, rest: &[u8]) -> Vec<u8> {
        [&self.settings.prefix[..], rest].concat()
    }

    /// What follows the prefix in an upstream key (None: not under our prefix).
    pub fn local<'k>(&self, up: &'k [u8]) -> Option<&'k [u8]> {
        up.strip_prefix(&self.settings.prefix[..])
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        drop(self.jobs.take());
        self.bell.signal();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The upstream key of box `boxno`'s exactly-once record: under the prefix (an ACL that
/// allows the prefix allows it), behind a 0xff byte, which no str key's UTF-8 starts with.
/// One small hash per box of this host's ring (`ring_id` is random per ring file), with a
/// field per in-flight slot, expiring a week after its last use.
pub fn token_key(prefix: &[u8], ring_id: u64, boxno: u32) -> Vec<u8> {
    let mut k = token_prefix(prefix);
    k.extend_from_slice(format!("{ring_id:016x}:{boxno}").as_bytes());
    k
}

/// What every exactly-once record's name starts with.
pub fn token_prefix(prefix: &[u8]) -> Vec<u8> {
    [prefix, TOKEN_MARK].concat()
}

/// After the prefix, the start of an exactly-once record's name.
pub const TOKEN_MARK: &[u8] = b"\xffsurpd-once:";

/// The exactly-once prologue of every write script. KEYS[1] is the box's record, ARGV[1]
/// the request's slot in it, ARGV[2] the request's id. A request applied already returns
/// `{1, recorded result}`; `done(r)` records a result in the same atomic step as the write.
/// Every write goes through one: replaying even a plain set is wrong once a box has several
/// requests in flight (a set sent again after the delete behind it would bring the key
/// back). A request that changes nothing is recorded too (`'nd'`: an incr of an absent key;
/// `fail(e)`: an error), or its replay could apply it after a later request made it
/// possible (an incr of a key a later set created).
macro_rules! once_script {
    ($body:literal) => {
        concat!(
            "local t = redis.call('HGET', KEYS[1], ARGV[1]) ",
            "if t and string.sub(t, 1, #ARGV[2] + 1) == ARGV[2] .. '|' then ",
            "return {1, string.sub(t, #ARGV[2] + 2)} end ",
            "local function done(r) ",
            "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. r) ",
            "redis.call('PEXPIRE', KEYS[1], 604800000) return r end ",
            "local function fail(e) done('e:' .. e) return redis.error_reply(e) end ",
            "local function holds_other(want) local t = redis.call('TYPE', KEYS[2])['ok'] ",
            "return t ~= 'none' and t ~= want end ",
            "local wrongtype = 'WRONGTYPE Operation against a key ' .. ",
            "'holding the wrong kind of value' ",
            $body
        )
    };
}

/// set: KEYS[2] the key, ARGV[3] the value, ARGV[4] the TTL in ms (0: none).
const SET_LUA: &str = once_script!(
    "if ARGV[4] ~= '0' then redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4]) \
     else redis.call('SET', KEYS[2], ARGV[3]) end done(1) return {0, 1}"
);

/// add: SET NX. `{0, 1}` stored, `{0, 0}` present.
const ADD_LUA: &str = once_script!(
    "local r if ARGV[4] ~= '0' then \
     r = redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) \
     else r = redis.call('SET', KEYS[2], ARGV[3], 'NX') end \
     local n = 0 if r then n = 1 end done(n) return {0, n}"
);

/// delete: `{0, keys removed}`.
const DEL_LUA: &str = once_script!("local n = redis.call('DEL', KEYS[2]) done(n) return {0, n}");

/// touch: ARGV[3] the new TTL in ms (0: none); `{0, 1}` if the key exists. (PERSIST answers
/// 0 for a key without a TTL too: EXISTS says whether it is there.)
const TOUCH_LUA: &str = once_script!(
    "local n if ARGV[3] == '0' then redis.call('PERSIST', KEYS[2]) \
     n = redis.call('EXISTS', KEYS[2]) else n = redis.call('PEXPIRE', KEYS[2], ARGV[3]) end \
     done(n) return {0, n}"
);

/// incr: surpdb's incr of a missing key is refused unless a start is given (ARGV[4] = '1',
/// start ARGV[5]); the result is read back as text (Lua numbers are doubles: an integer
/// past 2^53 would lose digits), with the key's TTL so the local copy expires with the
/// upstream's. A failed INCRBY (not an integer, overflow) undoes the key it created: a
/// script's earlier writes are not rolled back by an error.
const INCR_LUA: &str = once_script!(
    "local created = false \
     if redis.call('EXISTS', KEYS[2]) == 0 then \
     if ARGV[4] == '0' then done('nd') return {0} end \
     redis.call('SET', KEYS[2], ARGV[5]) created = true end \
     local r = redis.pcall('INCRBY', KEYS[2], ARGV[3]) \
     if type(r) == 'table' and r.err then \
     if created then redis.call('DEL', KEYS[2]) end return fail(r.err) end \
     local v = redis.call('GET', KEYS[2]) done(v) \
     return {0, v, redis.call('PTTL', KEYS[2])}"
);

/// zadd: ARGV[3] the max_len (0: none), then score, member pairs. `{0, members added}`.
const ZADD_LUA: &str = once_script!(
    "if holds_other('zset') then return fail(wrongtype) end \
     local n = 0 for i = 4, #ARGV, 2 do \
     n = n + redis.call('ZADD', KEYS[2], ARGV[i], ARGV[i + 1]) end \
     if ARGV[3] ~= '0' then \
     redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[3]) + 1)) end \
     done(n) return {0, n}"
);

/// zrem: ARGV[3..] the members. `{0, members removed}`.
const ZREM_LUA: &str = once_script!(
    "if holds_other('zset') then return fail(wrongtype) end \
     local n = 0 for i = 3, #ARGV do n = n + redis.call('ZREM', KEYS[2], ARGV[i]) end \
     done(n) return {0, n}"
);

/// append: ARGV[3] the max_len (0: none), ARGV[4] the item. `{0, new length}`.
const APPEND_LUA: &str = once_script!(
    "if holds_other('list') then return fail(wrongtype) end \
     local n = redis.call('RPUSH', KEYS[2], ARGV[4]) \
     if ARGV[3] ~= '0' and n > tonumber(ARGV[3]) then \
     redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1) n = tonumber(ARGV[3]) end \
     done(n) return {0, n}"
);

/// merge: ARGV[3..] field, value pairs (HSET). `{0, 1}`.
const MERGE_LUA: &str = once_script!(
    "if holds_other('hash') then return fail(wrongtype) end \
     for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end \
     done(1) return {0, 1}"
);

/// fetch: one key's type, remaining TTL and contents (a string, a sorted set with scores, a
/// list, a hash), in one atomic step.
const FETCH_LUA: &str = "local k = KEYS[1] local t = redis.call('TYPE', k)['ok'] \
    if t == 'none' then return {t} end local ttl = redis.call('PTTL', k) \
    if t == 'string' then return {t, ttl, redis.call('GET', k)} end \
    if t == 'zset' then return {t, ttl, redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')} end \
    if t == 'list' then return {t, ttl, redis.call('LRANGE', k, 0, -1)} end \
    if t == 'hash' then return {t, ttl, redis.call('HGETALL', k)} end \
    return {t, ttl}";

/// clear: unlink every key matching ARGV[3] (a SCAN pattern), a SCAN page at a time, except
/// those starting with one of ARGV[4..] (the boxes' exactly-once records; for the default
/// namespace, the other namespaces' keys).
const CLEAR_LUA: &str = once_script!(
    "local c = '0' local n = 0 repeat \
     local r = redis.call('SCAN', c, 'MATCH', ARGV[3], 'COUNT', 1000) c = r[1] \
     local ks = {} for _, k in ipairs(r[2]) do local keep = false \
     for i = 4, #ARGV do if string.sub(k, 1, #ARGV[i]) == ARGV[i] then keep = true end end \
     if not keep then ks[#ks + 1] = k end end \
     if #ks > 0 then n = n + redis.call('UNLINK', unpack(ks)) end \
     until c == '0' done(n) return {0, n}"
);

/// The write scripts, loaded (SCRIPT LOAD) at each connect and run by hash (EVALSHA).
struct Scripts {
    set: redis::Script,
    add: redis::Script,
    del: redis::Script,
    touch: redis::Script,
    incr: redis::Script,
    clear: redis::Script,
    zadd: redis::Script,
    zrem: redis::Script,
    append: redis::Script,
    merge: redis::Script,
    fetch: redis::Script,
}

/// Every script, loaded at each connect.
const SCRIPTS: [&str; 11] = [
    SET_LUA, ADD_LUA, DEL_LUA, TOUCH_LUA, INCR_LUA, CLEAR_LUA, ZADD_LUA, ZREM_LUA, APPEND_LUA,
    MERGE_LUA, FETCH_LUA,
];

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            set: redis::Script::new(SET_LUA),
            add: redis::Script::new(ADD_LUA),
            del: redis::Script::new(DEL_LUA),
            touch: redis::Script::new(TOUCH_LUA),
            incr: redis::Script::new(INCR_LUA),
            clear: redis::Script::new(CLEAR_LUA),
            zadd: redis::Script::new(ZADD_LUA),
            zrem: redis::Script::new(ZREM_LUA),
            append: redis::Script::new(APPEND_LUA),
            merge: redis::Script::new(MERGE_LUA),
            fetch: redis::Script::new(FETCH_LUA),
        }
    }

    fn load(&self, c: &mut Conn) -> redis::RedisResult<()> {
        for s in SCRIPTS {
            c.call(redis::cmd("SCRIPT").arg("LOAD").arg(s))?;
        }
        Ok(())
    }
}

type Wake = Box<dyn Fn() + Send>;

struct Worker {
    s: Settings,
    info: ConnectionInfo,
    jobs: Receiver<(Origin, Job)>,
    /// Bumped with each job sent to the thread: what its wait wakes on besides the socket.
    bell: Arc<EventFd>,
    events: Sender<Event>,
    wake: Wake,
    conn: Option<Conn>,
    /// What was sent and is not answered yet, oldest first (Redis answers in order).
    inflight: VecDeque<Sent>,
    /// Replies read so far for the oldest in flight.
    replies: Vec<Value>,
    last_attempt: Option<Instant>,
    /// A connection was up before (the next one is a reconnect).
    was_up: bool,
    scripts: Scripts,
    /// Events were sent since the apply loop was last woken.
    told: bool,
}

/// A job sent upstream (None: the heartbeat PING): how many replies it waits for, and when
/// it was sent (wall clock, for the lease; monotonic, for the timeout).
struct Sent {
    origin: Option<Origin>,
    job: Option<Job>,
    replies: usize,
    sent_ms: u64,
    sent: Instant,
}

impl Worker {
    fn emit(&mut self, e: Event) {
        let _ = self.events.send(e);
        self.told = true;
    }

    fn run(mut self) {
        let beat = (self.s.timeout / 4).max(Duration::from_millis(10));
        let mut last_sent = Instant::now();
        self.connect();
        loop {
            let mut batch = Vec::new();
            let mut closing = false;
            while batch.len() < MAX_BATCH {
                match self.jobs.try_recv() {
                    Ok((o, j)) => batch.push((Some(o), Some(j))),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closing = true;
                        break;
                    }
                }
            }
            if closing {
                return;
            }
            if !batch.is_empty() {
                crate::crash::panic_point("upstream batch");
                if self.conn.is_none() {
                    self.connect();
                }
                self.send_batch(batch);
                last_sent = Instant::now();
            }
            let now = Instant::now();
            if self.conn.is_some() && self.inflight.is_empty() && now >= last_sent + beat {
                self.send_batch(vec![(None, None)]);
                last_sent = now;
            } else if self.conn.is_none() && self.last_attempt.is_none_or(|t| t.elapsed() >= beat) {
                self.connect();
            }
            if self.conn.is_some() {
                self.read_all();
            }
            if let Some(f) = self.inflight.front() {
                if f.sent.elapsed() > self.s.timeout {
                    let e = io::Error::new(io::ErrorKind::TimedOut, "no answer in time");
                    self.lost(&RedisError::from(e));
                }
            }
            if std::mem::take(&mut self.told) {
                (self.wake)();
            }
            // Wait for a job, a reply or push, the next heartbeat, or the oldest request's
            // deadline, whichever comes first.
            let now = Instant::now();
            let mut until = last_sent + beat;
            if let Some(f) = self.inflight.front() {
                until = until.min(f.sent + self.s.timeout);
            }
            let fd = self.conn.as_ref().map_or(-1, Conn::fd);
            let wait = until.saturating_duration_since(now).max(Duration::from_micros(100));
            if let Err(e) = crate::shm::poll_readable(&[self.bell.fd(), fd], wait) {
                log::warn(&format!("upstream: poll failed: {e}"));
                std::thread::sleep(Duration::from_millis(10));
            }
            self.bell.drain();
        }
    }

    /// Open the connection, turn tracking on, load the scripts, and tell the apply loop.
    /// Nothing cached before can be proven current now (invalidations may have been
    /// missed): a Flush.
    fn connect(&mut self) {
        self.last_attempt = Some(Instant::now());
        let t = self.s.timeout.max(Duration::from_millis(100));
        let r = (|| -> redis::RedisResult<Conn> {
            let mut c = Conn::open(&self.info, self.s.ca_file.as_deref(), t)?;
            let mut cmd = redis::cmd("CLIENT");
            cmd.arg("TRACKING").arg("ON").arg("BCAST");
            if !self.s.prefix.is_empty() {
                cmd.arg("PREFIX").arg(&self.s.prefix[..]);
            }
            c.call(cmd.arg("NOLOOP"))?;
            self.scripts.load(&mut c)?;
            Ok(c)
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
                log::warn(&format!("upstream {}: cannot connect: {e}", redact(&self.s.url)));
            }
        }
    }

    /// The connection failed (a timeout, an I/O error): drop it, and every local copy;
    /// whatever was in flight is answered UNAVAILABLE (its outcome is unknown).
    fn lost(&mut self, e: &redis::RedisError) {
        log::warn(&format!(
            "upstream {}: connection lost ({e}); local copies are dropped until it is back",
            redact(&self.s.url)
        ));
        self.conn = None;
        self.replies.clear();
        self.emit(Event::Disconnected);
        self.emit(Event::Flush);
        for s in std::mem::take(&mut self.inflight) {
            if let (Some(o), Some(j)) = (s.origin, &s.job) {
                log::warn(&format!("upstream: {} unanswered: {e}", job_name(j)));
                self.emit(Event::Done(o, Answer::Status(status::UNAVAILABLE)));
            }
        }
    }

    /// Send every job of `batch` in one write (`(None, None)`: a PING). Their answers come
    /// from `read_all`, in order.
    fn send_batch(&mut self, batch: Vec<(Option<Origin>, Option<Job>)>) {
        if self.conn.is_none() {
            for (o, _) in batch {
                if let Some(o) = o {
                    self.emit(Event::Done(o, Answer::Status(status::UNAVAILABLE)));
                }
            }
            return;
        }
        let (sent_ms, sent) = (crate::shm::now_ms(), Instant::now());
        let mut out = Vec::new();
        for (origin, job) in batch {
            let cmds = match (&origin, &job) {
                (Some(o), Some(j)) => self.commands(o, j),
                _ => vec![redis::cmd("PING")],
            };
            for c in &cmds {
                c.write_packed_command(&mut out);
            }
            self.inflight.push_back(Sent { origin, job, replies: cmds.len(), sent_ms, sent });
        }
        let r = self.conn.as_mut().expect("checked above").send(&out);
        if let Err(e) = r {
            self.lost(&RedisError::from(e));
        }
    }

    /// Read every value the socket has now, in order: a push becomes an event where it
    /// came; a reply completes the oldest job in flight, whose answer becomes an event as
    /// soon as its last reply is read. Then one Alive for the newest job answered.
    fn read_all(&mut self) {
        let mut alive = None;
        let mut noscript = false;
        loop {
            let Some(conn) = self.conn.as_mut() else { return };
            let v = match conn.read_value() {
                Ok(Some(v)) => v,
                Ok(None) => break,
                Err(e) => {
                    self.lost(&e);
                    return;
                }
            };
            if let Value::Push { kind, data } = v {
                self.push(kind, data);
                continue;
            }
            if matches!(&v, Value::ServerError(e) if e.code() == "NOSCRIPT") {
                // The scripts were flushed (SCRIPT FLUSH, a failover): the next connection
                // loads them again; this request answers UNAVAILABLE.
                noscript = true;
            }
            let Some(want) = self.inflight.front().map(|s| s.replies) else {
                let e = RedisError::from((ErrorKind::ParseError, "a reply nothing asked for"));
                self.lost(&e);
                return;
            };
            self.replies.push(v);
            if self.replies.len() == want {
                let s = self.inflight.pop_front().expect("checked above");
                let replies = std::mem::take(&mut self.replies);
                alive = Some(s.sent_ms);
                if let (Some(o), Some(j)) = (s.origin, &s.job) {
                    let a = answer(j, replies);
                    self.emit(Event::Done(o, a));
                }
            }
        }
        if let Some(t) = alive {
            self.emit(Event::Alive(t));
        }
        if noscript {
            let e = RedisError::from((ErrorKind::NoScriptError, "scripts gone from the upstream"));
            self.lost(&e);
        }
    }

    /// A push read between replies: invalidated keys, or a FLUSHALL (a null list).
    fn push(&mut self, kind: PushKind, data: Vec<Value>) {
        if kind != PushKind::Invalidate {
            return;
        }
        match data.into_iter().next() {
            Some(Value::Array(ks)) => {
                let keys: Vec<Vec<u8>> = ks
                    .into_iter()
                    .filter_map(|k| match k {
                        Value::BulkString(b) => Some(b),
                        _ => None,
                    })
                    .collect();
                if !keys.is_empty() {
                    self.emit(Event::Invalidate(keys));
                }
            }
            _ => self.emit(Event::Flush),
        }
    }

    /// The commands a job sends (their replies are read back in this order).
    fn commands(&self, o: &Origin, job: &Job) -> Vec<Cmd> {
        let once = |script: &redis::Script, keys: &[&[u8]]| {
            let mut c = redis::cmd("EVALSHA");
            c.arg(script.get_hash()).arg(1 + keys.len()).arg(token_key(
                &self.s.prefix,
                o.ring_id,
                o.boxno,
            ));
            for k in keys {
                c.arg(*k);
            }
            c.arg(o.ticket % MAX_IN_FLIGHT as u64).arg(format!("{}:{}", o.claim, o.ticket));
            c
        };
        let sc = &self.scripts;
        let c = match job {
            Job::Fetch(keys) => {
                return keys
                    .iter()
                    .map(|k| {
                        let mut c = redis::cmd("EVALSHA");
                        c.arg(sc.fetch.get_hash()).arg(1).arg(&k[..]);
                        c
                    })
                    .collect()
            }
            Job::Zadd { key, pairs, max_len } => {
                let mut c = once(&sc.zadd, &[key]);
                c.arg(*max_len);
                for (score, member) in pairs {
                    c.arg(score.to_string()).arg(&member[..]);
                }
                c
            }
            Job::Zrem { key, members } => {
                let mut c = once(&sc.zrem, &[key]);
                for m in members {
                    c.arg(&m[..]);
                }
                c
            }
            Job::Append { key, item, max_len } => {
                let mut c = once(&sc.append, &[key]);
                c.arg(*max_len).arg(&item[..]);
                c
            }
            Job::Merge { key, fields } => {
                let mut c = once(&sc.merge, &[key]);
                for (f, v) in fields {
                    c.arg(&f[..]).arg(&v[..]);
                }
                c
            }
            Job::Set { key, value, ttl_ms, only_if_absent } => {
                let mut c = once(if *only_if_absent { &sc.add } else { &sc.set }, &[key]);
                c.arg(&value[..]).arg(*ttl_ms);
                c
            }
            Job::Delete(key) => once(&sc.del, &[key]),
            Job::Incr { key, delta, create_from } => {
                let mut c = once(&sc.incr, &[key]);
                c.arg(*delta).arg(if create_from.is_some() { "1" } else { "0" });
                c.arg(create_from.unwrap_or(0));
                c
            }
            Job::Touch { key, ttl_ms } => {
                let mut c = once(&sc.touch, &[key]);
                c.arg(*ttl_ms);
                c
            }
            Job::Clear { pattern, keep } => {
                let mut c = once(&sc.clear, &[]);
                c.arg([&glob_escape(&self.s.prefix)[..], pattern].concat());
                c.arg(token_prefix(&self.s.prefix));
                for k in keep {
                    c.arg([&self.s.prefix[..], k].concat());
                }
                c
            }
        };
        vec![c]
    }
}

/// `b` with the SCAN pattern's special characters escaped.
pub fn glob_escape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + 4);
    for &c in b {
        if matches!(c, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(c);
    }
    out
}

fn job_name(j: &Job) -> &'static str {
    match j {
        Job::Fetch(_) => "fetch",
        Job::Set { only_if_absent: false, .. } => "set",
        Job::Set { only_if_absent: true, .. } => "add",
        Job::Delete(_) => "delete",
        Job::Incr { .. } => "incr",
        Job::Touch { .. } => "touch",
        Job::Zadd { .. } => "zadd",
        Job::Zrem { .. } => "zrem",
        Job::Append { .. } => "append",
        Job::Merge { .. } => "merge",
        Job::Clear { .. } => "clear",
    }
}

/// The answer to `job` from its replies (as many as `commands` sent, in order).
fn answer(job: &Job, replies: Vec<Value>) -> Answer {
    if let Some(Value::ServerError(e)) = replies.iter().find(|v| matches!(v, Value::ServerError(_)))
    {
        return Answer::Status(server_error_status(e.code(), e.details().unwrap_or("")));
    }
    let int = |v: &Value| match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    };
    let flag = |n: Option<i64>| match n {
        Some(n) if n > 0 => status::OK,
        Some(_) => status::NOT_DONE,
        None => status::BAD_REQUEST,
    };
    let once = |v: &Value| match v {
        Value::Array(a) => match a.as_slice() {
            [r, rest @ ..] => int(r).map(|replayed| (replayed == 1, rest.to_vec())),
            [] => None,
        },
        _ => None,
    };
    // A replayed request that changed nothing: what it answered the first time.
    if let [v] = replies.as_slice() {
        if let Some((true, r)) = once(v) {
            match r.first() {
                Some(Value::BulkString(b)) if b == b"nd" => {
                    return Answer::Status(status::NOT_DONE)
                }
                Some(Value::BulkString(b)) if b.starts_with(b"e:") => {
                    return Answer::Status(server_error_status(
                        &String::from_utf8_lossy(&b[2..]),
                        "",
                    ))
                }
                _ => {}
            }
        }
    }
    match (job, replies.as_slice()) {
        (Job::Fetch(_), vals) => Answer::Fetched(vals.iter().map(fetched).collect()),
        (Job::Zadd { .. } | Job::Zrem { .. } | Job::Append { .. }, [v]) => match once(v) {
            Some((replayed, r)) => match r.first().and_then(int) {
                Some(n) => Answer::Count { value: n.max(0) as u64, replayed },
                None => Answer::Status(status::BAD_REQUEST),
            },
            None => Answer::Status(status::BAD_REQUEST),
        },
        (Job::Merge { .. }, [v]) => match once(v) {
            Some((false, _)) => Answer::Status(status::OK),
            Some((true, _)) => Answer::Replayed(status::OK),
            None => Answer::Status(status::BAD_REQUEST),
        },
        (Job::Clear { .. }, [v]) => match once(v) {
            Some((false, _)) => Answer::Status(status::OK),
            Some((true, _)) => Answer::Replayed(status::OK),
            None => Answer::Status(status::BAD_REQUEST),
        },
        (Job::Set { .. } | Job::Delete(_) | Job::Touch { .. }, [v]) => match once(v) {
            Some((false, r)) => Answer::Status(flag(r.first().and_then(int))),
            Some((true, r)) => Answer::Replayed(flag(r.first().and_then(int))),
            None => Answer::Status(status::BAD_REQUEST),
        },
        (Job::Incr { .. }, [v]) => match once(v) {
            Some((false, r)) if r.is_empty() => Answer::Status(status::NOT_DONE),
            Some((false, r)) => match (r.first().and_then(int), r.get(1).and_then(int)) {
                (Some(value), Some(pttl)) => Answer::Int { value, pttl_ms: Some(pttl) },
                _ => Answer::Status(status::BAD_REQUEST),
            },
            Some((true, r)) => match r.first().and_then(int) {
                Some(value) => Answer::Int { value, pttl_ms: None },
                None => Answer::Status(status::BAD_REQUEST),
            },
            None => Answer::Status(status::BAD_REQUEST),
        },
        _ => Answer::Status(status::BAD_REQUEST),
    }
}

/// What a fetch script answered for one key, in the local encoding.
fn fetched(v: &Value) -> Fetched {
    let bytes = |v: &Value| match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        Value::Double(d) => Some(d.to_string().into_bytes()),
        _ => None,
    };
    let list = |v: &Value| match v {
        Value::Array(a) => a.iter().map(bytes).collect::<Option<Vec<_>>>(),
        _ => None,
    };
    let Value::Array(a) = v else { return Fetched::Unsupported("no answer".into()) };
    let kind = a.first().and_then(bytes).unwrap_or_default();
    let ttl = match a.get(1) {
        Some(Value::Int(t)) => *t,
        _ => -1,
    };
    let local = match (&kind[..], a.get(2)) {
        (b"none", _) => return Fetched::Absent,
        (b"string", Some(v)) => bytes(v).map(|b| crate::tier::from_upstream(&b)),
        (b"zset", Some(v)) => list(v).and_then(|l| crate::tier::local_zset(&l)),
        (b"list", Some(v)) => list(v).and_then(|l| crate::tier::local_list(&l)),
        (b"hash", Some(v)) => list(v).and_then(|l| crate::tier::local_dict(&l)),
        _ => None,
    };
    match local {
        Some(l) => Fetched::Value(l, ttl),
        None => Fetched::Unsupported(format!("a Redis {}", String::from_utf8_lossy(&kind))),
    }
}

/// The status a Redis error reply means for the request.
fn server_error_status(code: &str, detail: &str) -> u32 {
    let text = format!("{code} {detail}");
    if text.contains("WRONGTYPE") {
        status::WRONG_TYPE
    } else if text.contains("overflow") {
        status::OVERFLOW
    } else if text.contains("not an integer") {
        status::NOT_INTEGER
    } else {
        log::warn(&format!("upstream error: {text}"));
        status::UNAVAILABLE
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

    #[test]
    fn replies_become_answers() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let incr = Job::Incr { key: b"k".to_vec(), delta: 1, create_from: None };
        // A value past 2^53 keeps every digit (it travels as text).
        let big = Value::Array(vec![Value::Int(0), bulk("9007199254740993"), Value::Int(-1)]);
        assert_eq!(
            answer(&incr, vec![big]),
            Answer::Int { value: 9007199254740993, pttl_ms: Some(-1) }
        );
        let replay = Value::Array(vec![Value::Int(1), bulk("7")]);
        assert_eq!(answer(&incr, vec![replay]), Answer::Int { value: 7, pttl_ms: None });
        assert_eq!(
            answer(&incr, vec![Value::Array(vec![Value::Int(0)])]),
            Answer::Status(status::NOT_DONE)
        );
        let del = Job::Delete(b"k".to_vec());
        let replayed = Value::Array(vec![Value::Int(1), bulk("1")]);
        assert_eq!(answer(&del, vec![replayed]), Answer::Replayed(status::OK));
        let gone = Value::Array(vec![Value::Int(0), Value::Int(0)]);
        assert_eq!(answer(&del, vec![gone]), Answer::Status(status::NOT_DONE));
        let touch = Job::Touch { key: b"k".to_vec(), ttl_ms: 0 };
        let there = Value::Array(vec![Value::Int(0), Value::Int(1)]);
        assert_eq!(answer(&touch, vec![there]), Answer::Status(status::OK));
        let clear = Job::Clear { pattern: b"*".to_vec(), keep: Vec::new() };
        let cleared = Value::Array(vec![Value::Int(0), Value::Int(0)]);
        assert_eq!(answer(&clear, vec![cleared]), Answer::Status(status::OK));
        // A replayed request that changed nothing answers as it did the first time.
        let absent = Value::Array(vec![Value::Int(1), bulk("nd")]);
        assert_eq!(answer(&incr, vec![absent]), Answer::Status(status::NOT_DONE));
        let failed = Value::Array(vec![Value::Int(1), bulk("e:WRONGTYPE Operation against")]);
        assert_eq!(answer(&incr, vec![failed]), Answer::Status(status::WRONG_TYPE));
        assert_eq!(server_error_status("WRONGTYPE", "Operation against"), status::WRONG_TYPE);
        assert_eq!(
            server_error_status("ERR", "value is not an integer or out of range"),
            status::NOT_INTEGER
        );
    }

    #[test]
    fn the_exactly_once_record_sits_under_the_prefix_apart_from_str_keys() {
        let k = token_key(b"app:", 0xabc, 3);
        assert_eq!(k, b"app:\xffsurpd-once:0000000000000abc:3");
        assert!(std::str::from_utf8(&k[4..]).is_err(), "no str key can name it");
    }
}
