//! Server-side atomic updates: append to a list, merge into a dict, compare-and-set, and
//! sorted sets (zadd with trimming, zrem). The daemon is the only writer, so each is a plain
//! read-modify-write of one value: decode the current record, build the new value, publish it
//! with one store (see apply.rs). What Redis needs WATCH/MULTI/EXEC or a Lua script for.
//!
//! A value of the wrong type is refused with WRONG_TYPE and left as it is. A result larger
//! than max_value is refused with TOO_LARGE, one that would not be a valid value (nested
//! deeper than readers decode) with INVALID_RESULT. The key's TTL is kept.

use std::collections::HashMap;

use crate::apply::Store;
use crate::heap::CleanStats;
use crate::layout::*;
use crate::ring::{Reply, Req, Ring};
use crate::shm;
use crate::value::{self, ZEntry};

/// The current unexpired value of `key` (copied: writing the new record may clean and reuse
/// the old one's space; a compressed one decompressed, and stored plain once updated) and
/// its expiry.
fn current(store: &Store, key: &[u8], hash: u64) -> Option<(Vec<u8>, u64, u64)> {
    let now = shm::now_ms();
    match store.seg.current(key, hash) {
        Some(r) if store.seg.alive(&r, now) => {
            // A compressed value that does not decompress (outside damage) is no list or
            // dict: WRONG_TYPE, as for any other value of another type. A tagged one is
            // updated inside its tags (`finish` puts them back).
            let inner = value::split_tagged(r.value).map_or(&[][..], |(_, v)| v);
            let v = value::plain(inner, store.seg.max_value)
                .map_or_else(|_| vec![value::COMPRESSED], |v| v.into_owned());
            Some((v, r.expires_ms, r.version))
        }
        _ => None,
    }
}

impl Store {
    /// Publish the new value `v` of `key` (its bytes and hash), keeping expiry `exp` and the
    /// tags of its current value, and reply `ok` on success.
    fn finish(
        &mut self,
        ring: &Ring,
        (key, hash): (&[u8], u64),
        v: &[u8],
        exp: u64,
        st: &mut CleanStats,
        ok: u64,
    ) -> Reply {
        // The value read (`current`) is still the key's: this thread is the only writer.
        let now = shm::now_ms();
        let head = match self.seg.current(key, hash) {
            Some(r) if self.seg.alive(&r, now) => {
                value::split_tagged(r.value).map_or_else(|_| Vec::new(), |(h, _)| h.to_vec())
            }
            _ => Vec::new(),
        };
        if (head.len() + v.len()) as u64 > self.seg.max_value {
            return Reply::status(status::TOO_LARGE);
        }
        // The daemon validates what it builds as it validates what it is sent: an append of
        // a 200-deep item makes a 201-deep list, which no reader (nor `dump`) could decode.
        if value::validate(v).is_err() {
            return Reply::status(status::INVALID_RESULT);
        }
        if head.is_empty() {
            return self.put(ring, key, hash, v, exp, st, |_| Reply::ok(ok));
        }
        let tagged = [&head[..], v].concat();
        self.put(ring, key, hash, &tagged, exp, st, |_| Reply::ok(ok))
    }

    /// APPEND: `payload` is one encoded item; arg = max_len (0: unbounded). Returns the new
    /// length.
    pub(crate) fn append(&mut self, ring: &Ring, req: &Req<'_>, st: &mut CleanStats) -> Reply {
        if value::validate(req.payload).is_err() || req.arg2 != req.payload.len() as u64 {
            return Reply::status(status::BAD_REQUEST);
        }
        let hash = self.seg.hash(req.key);
        let (old, exp) = match current(self, req.key, hash) {
            Some((v, exp, _)) => (v, exp),
            None => (vec![value::LIST, 0], 0),
        };
        let Ok(items) = value::list_items(&old) else { return Reply::status(status::WRONG_TYPE) };
        // max_len >= 1 when given, so the new item always stays; the oldest go first.
        let max_len = if req.arg == 0 { usize::MAX } else { req.arg as usize };
        let drop = (items.len() + 1).saturating_sub(max_len);
        let kept = &items[drop..];
        let mut out = Vec::with_capacity(old.len() + req.payload.len() + 10);
        out.push(value::LIST);
        value::put_varint(&mut out, kept.len() as u64 + 1);
        for r in kept {
            out.extend_from_slice(&old[r.clone()]);
        }
        out.extend_from_slice(req.payload);
        let len = kept.len() as u64 + 1;
        self.finish(ring, (req.key, hash), &out, exp, st, len)
    }

    /// MERGE: `payload` is an encoded dict; its fields replace or join the stored dict's
    /// (in place, new fields at the end, like dict.update). With DEEP, a field that is a dict
    /// on both sides is merged recursively. Keys match by encoding (same type and value).
    pub(crate) fn merge(&mut self, ring: &Ring, req: &Req<'_>, st: &mut CleanStats) -> Reply {
        if value::dict_items(req.payload).is_err() || req.arg2 != req.payload.len() as u64 {
            return Reply::status(status::BAD_REQUEST);
        }
        let hash = self.seg.hash(req.key);
        let (old, exp) = match current(self, req.key, hash) {
            Some((v, exp, _)) => (v, exp),
            None => (vec![value::DICT, 0], 0),
        };
        let mut out = Vec::with_capacity(old.len() + req.payload.len());
        match merge_dicts(&old, req.payload, req.flags & flag::DEEP != 0, &mut out, 0) {
            Ok(()) => self.finish(ring, (req.key, hash), &out, exp, st, 0),
            Err(()) => Reply::status(status::WRONG_TYPE),
        }
    }

    /// CAS: payload = expected version (8 bytes LE) + value; version 0 means "absent".
    pub(crate) fn cas(&mut self, ring: &Ring, req: &Req<'_>, st: &mut CleanStats) -> Reply {
        if req.payload.len() < 8 || req.arg2 != req.payload.len() as u64 {
            return Reply::status(status::BAD_REQUEST);
        }
        let (ver, val) = req.payload.split_at(8);
        let expected = u64::from_le_bytes(ver.try_into().unwrap());
        if val.len() as u64 > self.seg.max_value {
            return Reply::status(status::TOO_LARGE);
        }
        if value::validate_stored(val, self.seg.max_value).is_err() {
            return Reply::status(status::BAD_REQUEST);
        }
        let hash = self.seg.hash(req.key);
        let cur = current(self, req.key, hash).map_or(0, |(_, _, v)| v);
        if cur != expected {
            return Reply::status(status::NOT_DONE);
        }
        let exp =
            if req.arg == 0 { 0 } else { shm::now_ms() + req.arg.min(100 * 365 * 86_400_000) };
        self.put(ring, req.key, hash, val, exp, st, Reply::ok)
    }

    /// ZADD: payload is a ZSET value of (score, member) pairs in any order; existing members
    /// get the new score. arg = max_len: keep the highest scores. Returns how many members
    /// were new.
    pub(crate) fn zadd(&mut self, ring: &Ring, req: &Req<'_>, st: &mut CleanStats) -> Reply {
        let Ok(add) = value::zset_entries(req.payload) else {
            return Reply::status(status::BAD_REQUEST);
        };
        if req.arg2 != req.payload.len() as u64 || add.iter().any(|e| e.score.is_nan()) {
            return Reply::status(status::BAD_REQUEST);
        }
        let hash = self.seg.hash(req.key);
        let (old, exp) = match current(self, req.key, hash) {
            Some((v, exp, _)) => (v, exp),
            None => (vec![value::ZSET, 0], 0),
        };
        let Ok(mut entries) = value::zset_entries(&old) else {
            return Reply::status(status::WRONG_TYPE);
        };
        let mut at: HashMap<&[u8], usize> =
            entries.iter().enumerate().map(|(i, e)| (e.member, i)).collect();
        let mut added = 0u64;
        for e in add {
            match at.get(e.member) {
                Some(&i) => entries[i] = e,
                None => {
                    at.insert(e.member, entries.len());
                    entries.push(e);
                    added += 1;
                }
            }
        }
        entries.sort_by(value::zcmp);
        if req.arg != 0 && entries.len() as u64 > req.arg {
            let cut = entries.len() - req.arg as usize;
            entries.drain(..cut);
        }
        let mut out = Vec::with_capacity(old.len() + req.payload.len());
        value::encode_zset(&mut out, &entries);
        self.finish(ring, (req.key, hash), &out, exp, st, added)
    }

    /// ZREM: payload is a LIST of str/bytes members. Returns how many were removed.
    pub(crate) fn zrem(&mut self, ring: &Ring, req: &Req<'_>, st: &mut CleanStats) -> Reply {
        let Ok(items) = value::list_items(req.payload) else {
            return Reply::status(status::BAD_REQUEST);
        };
        let mut gone: Vec<&[u8]> = Vec::with_capacity(items.len());
        for r in items {
            let mut rd = value::Reader::new(&req.payload[r]);
            match rd.u8() {
                Ok(value::STR) | Ok(value::BYTES) => match rd.lbytes() {
                    Ok(m) => gone.push(m),
                    Err(_) => return Reply::status(status::BAD_REQUEST),
                },
                _ => return Reply::status(status::BAD_REQUEST),
            }
        }
        let hash = self.seg.hash(req.key);
        let Some((old, exp, _)) = current(self, req.key, hash) else { return Reply::ok(0) };
        let Ok(entries) = value::zset_entries(&old) else {
            return Reply::status(status::WRONG_TYPE);
        };
        let gone: std::collections::HashSet<&[u8]> = gone.into_iter().collect();
        let kept: Vec<ZEntry<'_>> =
            entries.iter().copied().filter(|e| !gone.contains(e.member)).collect();
        let removed = (entries.len() - kept.len()) as u64;
        if removed == 0 {
            return Reply::ok(0);
        }
        let mut out = Vec::with_capacity(old.len());
        value::encode_zset(&mut out, &kept);
        self.finish(ring, (req.key, hash), &out, exp, st, removed)
    }
}

/// Merge encoded dict `upd` into encoded dict `old`, writing the result to `out`.
/// Err if `old` is not a dict.
fn merge_dicts(
    old: &[u8],
    upd: &[u8],
    deep: bool,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), ()> {
    let old_items = value::dict_items(old).map_err(|_| ())?;
    let upd_items = value::dict_items(upd).map_err(|_| ())?;
    let mut pos: HashMap<&[u8], usize> = HashMap::new();
    // (key bytes, value bytes as owned, since a deep merge builds new ones)
    let mut fields: Vec<(&[u8], Vec<u8>)> = Vec::with_capacity(old_items.len() + upd_items.len());
    for (k, v) in &old_items {
        pos.insert(&old[k.clone()], fields.len());
        fields.push((&old[k.clone()], old[v.clone()].to_vec()));
    }
    for (k, v) in &upd_items {
        let key = &upd[k.clone()];
        let new = &upd[v.clone()];
        match pos.get(key) {
            Some(&i) => {
                let cur = &fields[i].1;
                if deep
                    && depth < value::MAX_DEPTH
                    && cur.first() == Some(&value::DICT)
                    && new.first() == Some(&value::DICT)
                {
                    let mut merged = Vec::with_capacity(cur.len() + new.len());
                    merge_dicts(cur, new, true, &mut merged, depth + 1)?;
                    fields[i].1 = merged;
                } else {
                    fields[i].1 = new.to_vec();
                }
            }
            None => {
                pos.insert(key, fields.len());
                fields.push((key, new.to_vec()));
            }
        }
    }
    out.push(value::DICT);
    value::put_varint(out, fields.len() as u64);
    for (k, v) in fields {
        out.extend_from_slice(k);
        out.extend_from_slice(&v);
    }
    Ok(())
}
