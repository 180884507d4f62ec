//! Typed requests: what each operation puts in a request's header fields. The ring carries
//! `(op, flags, key, payload, arg, arg2)` (see `layout::op` for the wire values); the meaning of
//! `arg`/`arg2` depends on the op (a TTL, a delta, a max length, a record id, a length), and
//! it is written here once, by one constructor per operation, instead of at every call site.
//! `Client::send` queues a [`Request`], `Client::call` queues it and waits for its reply, and
//! `Pipeline::push` windows many.
//!
//! Replies come back with a wire status; [`Status`] names it, and [`outcome`] is the one
//! mapping of statuses onto [`Error`]s (with the key, the limit or the stored type in the
//! message) that the core client and the Python binding both use.

use crate::error::{Error, Result};
use crate::layout::{flag, op, status};
use crate::ring::Reply;

/// One request as a client queues it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub op: u8,
    pub flags: u8,
    pub key: &'a [u8],
    pub payload: &'a [u8],
    pub arg: u64,
    pub arg2: u64,
}

impl<'a> Request<'a> {
    /// A request with a payload whose length travels in `arg2`, as the daemon checks.
    fn with_value(op: u8, flags: u8, key: &'a [u8], value: &'a [u8], arg: u64) -> Self {
        Request { op, flags, key, payload: value, arg, arg2: value.len() as u64 }
    }

    fn bare(op: u8, key: &'a [u8], arg: u64) -> Self {
        Request { op, flags: 0, key, payload: &[], arg, arg2: 0 }
    }

    /// Store an encoded value; `ttl_ms` 0 = no expiry.
    pub fn set(key: &'a [u8], value: &'a [u8], ttl_ms: u64) -> Self {
        Self::with_value(op::SET, 0, key, value, ttl_ms)
    }

    /// Store only if the key is absent (or expired).
    pub fn add(key: &'a [u8], value: &'a [u8], ttl_ms: u64) -> Self {
        Self::with_value(op::ADD, 0, key, value, ttl_ms)
    }

    pub fn delete(key: &'a [u8]) -> Self {
        Self::bare(op::DELETE, key, 0)
    }

    /// Add `delta` to an integer value; a missing key starts from `create_from` if given.
    pub fn incr(key: &'a [u8], delta: i64, create_from: Option<i64>) -> Self {
        Request {
            op: op::INCR,
            flags: if create_from.is_some() { flag::INCR_CREATE } else { 0 },
            key,
            payload: &[],
            arg: delta as u64,
            arg2: create_from.unwrap_or(0) as u64,
        }
    }

    /// Set a new TTL (`ttl_ms` 0 = none) on an existing key.
    pub fn touch(key: &'a [u8], ttl_ms: u64) -> Self {
        Self::bare(op::TOUCH, key, ttl_ms)
    }

    /// Append an encoded item to a list, keeping its newest `max_len` (0 = unbounded).
    pub fn append(key: &'a [u8], item: &'a [u8], max_len: u64) -> Self {
        Self::with_value(op::APPEND, 0, key, item, max_len)
    }

    /// Merge an encoded dict's fields into a dict value (`deep`: nested dicts too).
    pub fn merge(key: &'a [u8], dict: &'a [u8], deep: bool) -> Self {
        Self::with_value(op::MERGE, if deep { flag::DEEP } else { 0 }, key, dict, 0)
    }

    /// Compare-and-set: `payload` is the expected version (8 bytes LE) then the value.
    pub fn cas(key: &'a [u8], payload: &'a [u8], ttl_ms: u64) -> Self {
        Self::with_value(op::CAS, 0, key, payload, ttl_ms)
    }

    /// Add scored members (an encoded ZSET) to a sorted set, keeping `max_len` (0 = all).
    pub fn zadd(key: &'a [u8], members: &'a [u8], max_len: u64) -> Self {
        Self::with_value(op::ZADD, 0, key, members, max_len)
    }

    /// Remove members (an encoded LIST of str/bytes) from a sorted set.
    pub fn zrem(key: &'a [u8], members: &'a [u8]) -> Self {
        Self::with_value(op::ZREM, 0, key, members, 0)
    }

    /// Remove every key.
    pub fn clear() -> Self {
        Self::bare(op::CLEAR, b"", 0)
    }

    /// Nothing: its answer means every earlier request of this client was applied.
    pub fn noop() -> Self {
        Self::bare(op::NOOP, b"", 0)
    }

    /// Grow the data segment to `size` bytes.
    pub fn resize(size: u64) -> Self {
        Self::bare(op::RESIZE, b"", size)
    }

    /// Record store: insert an encoded record; the reply's value is its id.
    pub fn insert(record: &'a [u8]) -> Self {
        Self::with_value(op::INSERT, 0, b"", record, 0)
    }

    /// Record store: insert a record compressed with model number `model` (1-based, as
    /// [`crate::client::Client::encode_record`] gives it; `model` holds it as the key);
    /// the reply's value is its id.
    pub fn insert_encoded(model: &'a [u8; 4], record: &'a [u8]) -> Self {
        Self::with_value(op::INSERT, flag::ENCODED, model, record, 0)
    }

    /// Record store: [`Request::update`] with a record compressed with model number `model`.
    pub fn update_encoded(id: u64, model: &'a [u8; 4], record: &'a [u8]) -> Self {
        Self::with_value(op::UPDATE, flag::ENCODED, model, record, id)
    }

    /// Record store: replace record `id`; the reply's value is the new id.
    pub fn update(id: u64, record: &'a [u8]) -> Self {
        Self::with_value(op::UPDATE, 0, b"", record, id)
    }

    /// Record store: remove record `id`.
    pub fn remove(id: u64) -> Self {
        Self::bare(op::REMOVE, b"", id)
    }

    /// Record store: train a codec model (`compact`: the compact codec) on the stored records
    /// or on the samples sent before it.
    pub fn train(compact: bool) -> Self {
        Request { flags: if compact { flag::COMPACT } else { 0 }, ..Self::bare(op::TRAIN, b"", 0) }
    }

    /// Record store: one sample record for the next `train`.
    pub fn train_sample(record: &'a [u8]) -> Self {
        Self::with_value(op::TRAIN, flag::SAMPLE, b"", record, 0)
    }

    /// Tiered mode: read `keys` (framed by [`frame_keys`]) through from the upstream.
    pub fn fetch(keys: &'a [u8]) -> Self {
        Self::with_value(op::FETCH, 0, b"", keys, 0)
    }

    /// Namespaces: the id of namespace `name` (made if new). With `quota`, also set its
    /// quotas: at most `max_items` entries and `max_bytes` bytes (0: no limit).
    pub fn ns_open(name: &'a [u8], quota: Option<(u64, u64)>, buf: &'a mut Vec<u8>) -> Self {
        let (max_items, max_bytes) = quota.unwrap_or((0, 0));
        buf.clear();
        buf.extend_from_slice(&max_bytes.to_le_bytes());
        buf.extend_from_slice(name);
        let flags = if quota.is_some() { flag::QUOTA } else { 0 };
        Self::with_value(op::NS_OPEN, flags, b"", buf, max_items)
    }

    /// Namespaces: empty namespace `id` (O(1)).
    pub fn ns_clear(id: u64) -> Self {
        Self::bare(op::NS_CLEAR, b"", id)
    }

    /// Namespaces: remove the oldest entries of namespace `id` until at most `keep` remain
    /// (a target, so that the request applied twice after a crash removes nothing more).
    pub fn ns_cull(id: u64, keep: u64) -> Self {
        Request { arg2: keep, ..Self::bare(op::NS_CULL, b"", id) }
    }

    /// A stampede lease on `key` for `ms` milliseconds (see `op::LEASE`), for the caller
    /// that `token` names (random per call: threads and coroutines of one process are
    /// callers of their own).
    pub fn lease(key: &'a [u8], ms: u64, token: u64) -> Self {
        Request { arg2: token, ..Self::bare(op::LEASE, key, ms) }
    }

    /// Give back the lease on `key` that `token` holds.
    pub fn unlease(key: &'a [u8], token: u64) -> Self {
        Request { arg2: token, ..Self::bare(op::UNLEASE, key, 0) }
    }

    /// Delete every key of a namespace that starts with a prefix (`stored`: the prefix in
    /// the namespace's stored form, as a key would be), in O(1).
    pub fn delete_prefix(stored: &'a [u8]) -> Self {
        Self::bare(op::DELETE_PREFIX, stored, 0)
    }

    /// Only what names a request in an error message (its op and key): for replies
    /// collected later, shaped from what the ticket ledger kept.
    pub fn named(op: u8, key: &'a [u8]) -> Self {
        Self::bare(op, key, 0)
    }

    /// The op this request names (None: a byte no op has).
    pub fn kind(&self) -> Option<Op> {
        Op::of(self.op)
    }

    /// Whether the request goes to the record store (its errors speak of records).
    pub fn is_record_op(&self) -> bool {
        self.kind().is_some_and(Op::is_record_op)
    }
}

/// An operation (the wire values are [`crate::layout::op`]). Requests carry the wire byte,
/// since the daemon must answer any byte a client writes; [`Request::kind`] names it, and
/// the apply step dispatches on the name (an unknown byte is refused as a bad request).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Set = op::SET,
    Add = op::ADD,
    Delete = op::DELETE,
    Incr = op::INCR,
    Touch = op::TOUCH,
    Clear = op::CLEAR,
    Noop = op::NOOP,
    Append = op::APPEND,
    Merge = op::MERGE,
    Cas = op::CAS,
    Zadd = op::ZADD,
    Zrem = op::ZREM,
    Insert = op::INSERT,
    Remove = op::REMOVE,
    Update = op::UPDATE,
    Train = op::TRAIN,
    Resize = op::RESIZE,
    Fetch = op::FETCH,
    NsOpen = op::NS_OPEN,
    NsClear = op::NS_CLEAR,
    NsCull = op::NS_CULL,
    Lease = op::LEASE,
    Unlease = op::UNLEASE,
    DeletePrefix = op::DELETE_PREFIX,
}

impl Op {
    pub const ALL: [Op; 24] = [
        Op::Set,
        Op::Add,
        Op::Delete,
        Op::Incr,
        Op::Touch,
        Op::Clear,
        Op::Noop,
        Op::Append,
        Op::Merge,
        Op::Cas,
        Op::Zadd,
        Op::Zrem,
        Op::Insert,
        Op::Remove,
        Op::Update,
        Op::Train,
        Op::Resize,
        Op::Fetch,
        Op::NsOpen,
        Op::NsClear,
        Op::NsCull,
        Op::Lease,
        Op::Unlease,
        Op::DeletePrefix,
    ];

    /// The op a wire byte names, None for a byte no op has (or the box filler).
    #[inline]
    pub fn of(wire: u8) -> Option<Op> {
        Some(match wire {
            op::SET => Op::Set,
            op::ADD => Op::Add,
            op::DELETE => Op::Delete,
            op::INCR => Op::Incr,
            op::TOUCH => Op::Touch,
            op::CLEAR => Op::Clear,
            op::NOOP => Op::Noop,
            op::APPEND => Op::Append,
            op::MERGE => Op::Merge,
            op::CAS => Op::Cas,
            op::ZADD => Op::Zadd,
            op::ZREM => Op::Zrem,
            op::INSERT => Op::Insert,
            op::REMOVE => Op::Remove,
            op::UPDATE => Op::Update,
            op::TRAIN => Op::Train,
            op::RESIZE => Op::Resize,
            op::FETCH => Op::Fetch,
            op::NS_OPEN => Op::NsOpen,
            op::NS_CLEAR => Op::NsClear,
            op::NS_CULL => Op::NsCull,
            op::LEASE => Op::Lease,
            op::UNLEASE => Op::Unlease,
            op::DELETE_PREFIX => Op::DeletePrefix,
            _ => return None,
        })
    }

    /// Whether the request carries a payload whose length travels in `arg2` (the daemon
    /// checks the two agree).
    pub fn carries_payload(self) -> bool {
        matches!(
            self,
            Op::Set
                | Op::Add
                | Op::Append
                | Op::Merge
                | Op::Cas
                | Op::Zadd
                | Op::Zrem
                | Op::Insert
                | Op::Update
                | Op::Train
                | Op::Fetch
                | Op::NsOpen
        )
    }

    /// The op's name as the Python API spells it.
    pub fn name(self) -> &'static str {
        match self {
            Op::Set => "set",
            Op::Add => "add",
            Op::Delete => "delete",
            Op::Incr => "incr",
            Op::Touch => "touch",
            Op::Clear => "clear",
            Op::Noop => "noop",
            Op::Append => "append",
            Op::Merge => "merge",
            Op::Cas => "cas",
            Op::Zadd => "zadd",
            Op::Zrem => "zrem",
            Op::Insert => "insert",
            Op::Remove => "remove",
            Op::Update => "update",
            Op::Train => "train",
            Op::Resize => "resize",
            Op::Fetch => "fetch",
            Op::NsOpen => "namespace",
            Op::NsClear => "clear",
            Op::NsCull => "cull",
            Op::Lease => "get_or_set",
            Op::Unlease => "get_or_set",
            Op::DeletePrefix => "delete_prefix",
        }
    }

    /// Whether it goes to the record store (its errors speak of records).
    pub fn is_record_op(self) -> bool {
        matches!(self, Op::Insert | Op::Update | Op::Remove | Op::Train)
    }
}

/// The payload of a FETCH: each key as a varint length, then its bytes.
pub fn frame_keys<'k>(keys: impl IntoIterator<Item = &'k [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for k in keys {
        crate::value::put_varint(&mut out, k.len() as u64);
        out.extend_from_slice(k);
    }
    out
}

/// The keys of a FETCH payload, or None if it is not well framed (or a key is too long).
pub fn unframe_keys(mut b: &[u8]) -> Option<Vec<&[u8]>> {
    let mut keys = Vec::new();
    while !b.is_empty() {
        let mut r = crate::value::Reader::new(b);
        let n = r.varint().ok()?;
        if n > crate::layout::MAX_KEY_LEN as u64 {
            return None;
        }
        let k = r.bytes(n).ok()?;
        keys.push(k);
        b = &b[r.pos..];
    }
    Some(keys)
}

/// A reply's status (the wire values are [`crate::layout::status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Not done, for a reason the op gives: an add of an existing key, a delete, touch or
    /// incr of a missing one, a cas whose version moved, an update of a removed record.
    NotDone,
    SegmentFull,
    TooLarge,
    BadRequest,
    NotInteger,
    Overflow,
    WrongType,
    NotDurable,
    InvalidResult,
    NoDiskSpace,
    NotSupported,
    Unavailable,
    PickleRefused,
    /// A status this build does not know (a newer daemon, or a scribbled result entry).
    Unknown(u32),
}

impl Status {
    pub fn of(wire: u32) -> Status {
        match wire {
            status::OK => Status::Ok,
            status::NOT_DONE => Status::NotDone,
            status::SEGMENT_FULL => Status::SegmentFull,
            status::TOO_LARGE => Status::TooLarge,
            status::BAD_REQUEST => Status::BadRequest,
            status::NOT_INTEGER => Status::NotInteger,
            status::OVERFLOW => Status::Overflow,
            status::WRONG_TYPE => Status::WrongType,
            status::NOT_DURABLE => Status::NotDurable,
            status::INVALID_RESULT => Status::InvalidResult,
            status::NO_DISK_SPACE => Status::NoDiskSpace,
            status::NOT_SUPPORTED => Status::NotSupported,
            status::UNAVAILABLE => Status::Unavailable,
            status::PICKLE_REFUSED => Status::PickleRefused,
            s => Status::Unknown(s),
        }
    }
}

/// A key as error messages show it: quoted text, cut after 60 characters; bytes that are
/// not UTF-8 shown lossily.
pub fn key_repr(key: &[u8]) -> String {
    // A namespaced key as its namespace's users wrote it.
    let key = crate::namespace::user_key(key);
    match std::str::from_utf8(key) {
        Ok(s) if s.len() <= 80 => format!("{s:?}"),
        Ok(s) => format!("{:?}...", &s[..s.char_indices().nth(60).map_or(s.len(), |(i, _)| i)]),
        Err(_) => format!("{:?}", String::from_utf8_lossy(&key[..key.len().min(60)])),
    }
}

/// What an error message about a reply needs from the store it came from.
pub struct Context<'a> {
    pub max_value: u64,
    pub dir: &'a std::path::Path,
    /// A description of what `key` holds now ("a str", "no readable value (...)").
    pub stored: &'a dyn Fn(&[u8]) -> String,
}

/// The one mapping of a reply onto a result: `Ok` for OK and NOT_DONE (whose meaning the
/// op gives: False, a KeyError...), the error every other status means, worded for `req`.
pub fn outcome(req: &Request<'_>, r: Reply, cx: &Context<'_>) -> Result<Reply> {
    let k = || key_repr(req.key);
    let what = || match req.kind() {
        _ if req.is_record_op() => "the record request".to_string(),
        Some(Op::Resize) => "growing the segment".to_string(),
        Some(Op::Clear) => "the clear".to_string(),
        _ => format!("the request for key {}", k()),
    };
    Err(match Status::of(r.status) {
        Status::Ok | Status::NotDone => return Ok(r),
        Status::SegmentFull if req.is_record_op() => {
            Error::SegmentFull(crate::records::full_message(cx.dir))
        }
        Status::SegmentFull => Error::SegmentFull(format!(
            "no space for key {}: the segment is full under noeviction, or space is pinned by \
             readers (see surpdb stats: items, bytes, heap_capacity)",
            k()
        )),
        Status::TooLarge if req.kind() == Some(Op::Resize) => Error::InvalidValue(format!(
            "{} bytes is beyond this segment's max_size of {} bytes (fixed when it was \
             created: growing further needs a new segment)",
            req.arg, r.value
        )),
        Status::TooLarge if req.is_record_op() => Error::TooLarge(format!(
            "record exceeds the largest storable record ({} bytes max_value, {} compressed)",
            cx.max_value,
            crate::records::MAX_RECORD
        )),
        Status::TooLarge => Error::TooLarge(format!(
            "value for key {} exceeds this segment's max_value of {} bytes",
            k(),
            cx.max_value
        )),
        Status::NotInteger => Error::NotInteger(format!(
            "cannot increment key {}: it holds {}, not an int",
            k(),
            (cx.stored)(req.key)
        )),
        Status::WrongType => {
            let verb = match req.kind() {
                Some(Op::Append) => "append to",
                Some(Op::Merge) => "merge into",
                _ => "update the sorted set at",
            };
            Error::WrongType(format!(
                "cannot {verb} key {}: it holds {}; nothing was changed",
                k(),
                (cx.stored)(req.key)
            ))
        }
        Status::Overflow => {
            Error::Overflow(format!("increment of key {} leaves the 128-bit integer range", k()))
        }
        Status::NotDurable => Error::NotDurable(format!(
            "{} was applied but the daemon could not flush it to disk (durability = sync); \
             see the daemon's log",
            what()
        )),
        Status::NoDiskSpace => {
            let space = crate::shm::fs_space(cx.dir)
                .map(|(free, total)| format!(": {free} of {total} bytes free"))
                .unwrap_or_default();
            Error::DiskFull(format!(
                "{} was refused: the filesystem holding {} is full{space}; nothing was changed",
                what(),
                cx.dir.display()
            ))
        }
        Status::NotSupported => Error::NotSupported(format!(
            "{} is not supported in tiered mode (an upstream is configured): it has no \
             upstream equivalent; nothing was changed",
            req.kind().map_or("this operation", Op::name)
        )),
        Status::Unavailable => Error::Unavailable(format!(
            "{} got no answer from the upstream in time (see surpdb stats: \
             upstream_connected); nothing was acknowledged",
            what()
        )),
        Status::PickleRefused => Error::UnsafeValue(format!(
            "{} was refused: it holds a pickled value, and this store refuses pickles \
             (pickle = false: loading one runs code); nothing was changed",
            what()
        )),
        Status::InvalidResult => Error::InvalidValue(format!(
            "{} was refused: the value it would build is not storable (nested deeper than {} \
             levels); nothing was changed",
            what(),
            crate::value::MAX_DEPTH
        )),
        Status::BadRequest => Error::BadRequest(format!(
            "the daemon refused {} as malformed (status {})",
            what(),
            r.status
        )),
        Status::Unknown(s) => {
            Error::BadRequest(format!("the daemon refused {} (status {s})", what()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_op_puts_its_arguments_where_the_daemon_reads_them() {
        let r = Request::set(b"k", b"vv", 5);
        assert_eq!((r.op, r.arg, r.arg2, r.payload), (op::SET, 5, 2, &b"vv"[..]));
        let r = Request::incr(b"k", -3, Some(7));
        assert_eq!((r.flags, r.arg as i64, r.arg2), (flag::INCR_CREATE, -3, 7));
        assert_eq!(Request::incr(b"k", 1, None).flags, 0);
        assert_eq!(Request::update(9, b"r").arg, 9);
        assert_eq!(Request::train(true).flags, flag::COMPACT);
        assert_eq!(Request::train_sample(b"s").flags, flag::SAMPLE);
        assert_eq!(Request::merge(b"k", b"d", true).flags, flag::DEEP);
    }

    #[test]
    fn every_error_status_maps_to_its_error_naming_the_request() {
        let dir = std::path::Path::new("/nonexistent");
        let stored = |_: &[u8]| "a str".to_string();
        let cx = Context { max_value: 100, dir, stored: &stored };
        let set = Request::set(b"user:1", b"v", 0);
        let out = |req: &Request<'_>, s: u32| outcome(req, Reply::status(s), &cx);
        assert!(out(&set, status::OK).is_ok() && out(&set, status::NOT_DONE).is_ok());
        let m = |e: Result<Reply>| e.unwrap_err().to_string();
        assert!(m(out(&set, status::TOO_LARGE)).contains("max_value of 100"));
        assert!(m(out(&set, status::SEGMENT_FULL)).contains("\"user:1\""));
        let incr = Request::incr(b"n", 1, None);
        assert!(
            matches!(out(&incr, status::NOT_INTEGER), Err(Error::NotInteger(m)) if m.contains("a str"))
        );
        assert!(matches!(out(&set, status::WRONG_TYPE), Err(Error::WrongType(_))));
        assert!(matches!(out(&set, status::NO_DISK_SPACE), Err(Error::DiskFull(_))));
        assert!(matches!(out(&set, status::NOT_DURABLE), Err(Error::NotDurable(_))));
        assert!(matches!(out(&set, status::INVALID_RESULT), Err(Error::InvalidValue(_))));
        assert!(matches!(out(&set, 77), Err(Error::BadRequest(m)) if m.contains("status 77")));
        let ins = Request::insert(b"r");
        assert!(m(out(&ins, status::SEGMENT_FULL)).contains("records file is full"));
        assert_eq!(Status::of(status::WRONG_TYPE), Status::WrongType);
    }
}
