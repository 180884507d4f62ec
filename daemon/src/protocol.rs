//! Typed requests: what each operation puts in a request's header fields. The ring carries
//! `(op, flags, key, payload, arg, arg2)` (see `layout::op` for the wire values); the meaning of
//! `arg`/`arg2` depends on the op (a TTL, a delta, a max length, a record id, a length), and
//! it is written here once, by one constructor per operation, instead of at every call site.
//! `Client::send` queues a [`Request`], `Client::call` queues it and waits for its reply, and
//! `Pipeline::push_request` windows many.

use crate::layout::{flag, op};

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
}
