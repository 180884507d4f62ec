//! Tiered mode's value mapping, shared by the daemon (which talks to the upstream) and
//! tests: how a surpdb value is stored in Redis/Valkey, and how bytes found there become a
//! surpdb value.
//!
//! Integers are stored as Redis integers (decimal text), so `INCRBY` from any host, or from
//! any other Redis client, counts the same counter. Every other value is stored as its
//! surpdb encoding behind [`MAGIC`], so that it reads back with its exact type on every
//! host. Bytes without the magic (a value another program wrote, `redis-cli SET`) read as an
//! int if they are a decimal 64-bit integer, else as a str if they are UTF-8, else as bytes.

use crate::value::{self, put_varint};

/// First bytes of a surpdb-encoded value in the upstream. 0xff never starts UTF-8 text, so
/// no string another program stores is mistaken for one.
pub const MAGIC: &[u8] = b"\xffsurp1";

/// The bytes to store upstream for an encoded surpdb value.
pub fn to_upstream(local: &[u8]) -> Vec<u8> {
    if local.first() == Some(&value::INT) {
        if let Ok(Some(v)) = value::decode_int(local) {
            return v.to_string().into_bytes();
        }
    }
    let mut out = Vec::with_capacity(MAGIC.len() + local.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(local);
    out
}

/// The encoded surpdb value for bytes read from the upstream.
pub fn from_upstream(b: &[u8]) -> Vec<u8> {
    if let Some(enc) = b.strip_prefix(MAGIC) {
        // A large value a host stored compressed stays compressed upstream.
        if enc.first() != Some(&value::TAGGED)
            && value::validate_stored(enc, value::MAX_PLAIN).is_ok()
        {
            return enc.to_vec();
        }
    }
    let mut out = Vec::with_capacity(b.len() + 10);
    if let Some(n) = std::str::from_utf8(b).ok().and_then(parse_int) {
        value::encode_int(&mut out, n as i128);
        return out;
    }
    let tag = if std::str::from_utf8(b).is_ok() { value::STR } else { value::BYTES };
    out.push(tag);
    put_varint(&mut out, b.len() as u64);
    out.extend_from_slice(b);
    out
}

/// A decimal integer as Redis writes one (no sign but '-', no leading zeros, no spaces).
fn parse_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|c| c.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && s != "-0";
    canonical.then(|| s.parse().ok()).flatten()
}

/// After the prefix, the start of a namespaced key upstream: `\xffns:` + the namespace's
/// name + NUL + the key. Names, not the host-local ids of the stored keys, so that every
/// host maps a namespace to the same upstream keys.
pub const NS_TAG: &[u8] = b"\xffns:";

/// The upstream key (after the prefix) of a stored local key; `name` names a namespace id.
/// None for a namespace this store does not know (no request can name one), and for a bytes
/// key of the default namespace that starts like a namespaced or exactly-once key upstream
/// (its invalidations would come back as another key's: refused in tiered mode).
pub fn upstream_key(stored: &[u8], name: impl Fn(usize) -> Option<Vec<u8>>) -> Option<Vec<u8>> {
    use crate::namespace::{ns_of, user_key};
    match ns_of(stored) {
        0 => {
            let k = user_key(stored);
            let reserved = k.starts_with(NS_TAG) || k.starts_with(crate::upstream::TOKEN_MARK);
            (!reserved).then(|| k.to_vec())
        }
        id => {
            let n = name(id)?;
            Some([NS_TAG, &n, b"\0", user_key(stored)].concat())
        }
    }
}

/// The stored local key of an upstream key (after the prefix), or None if it names nothing
/// this store can hold (a namespace it has not opened, a box's exactly-once record).
pub fn local_key(up: &[u8], find: impl Fn(&[u8]) -> Option<usize>) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    if up.starts_with(crate::upstream::TOKEN_MARK) {
        return None;
    }
    if let Some(rest) = up.strip_prefix(NS_TAG) {
        let nul = rest.iter().position(|&b| b == 0)?;
        let id = find(&rest[..nul])?;
        return Some(crate::namespace::stored_key(id, &rest[nul + 1..], &mut buf).to_vec());
    }
    Some(crate::namespace::stored_key(0, up, &mut buf).to_vec())
}

/// A sorted set read from the upstream (`ZRANGE 0 -1 WITHSCORES`: member, score, ...) as a
/// local ZSET value. Members are bytes upstream, as locally (a str and a bytes member of the
/// same bytes are one member); they read back as str when they are UTF-8.
pub fn local_zset(flat: &[Vec<u8>]) -> Option<Vec<u8>> {
    if !flat.len().is_multiple_of(2) {
        return None;
    }
    let mut entries = Vec::with_capacity(flat.len() / 2);
    for pair in flat.chunks(2) {
        let score: f64 = std::str::from_utf8(&pair[1]).ok()?.parse().ok()?;
        if score.is_nan() {
            return None;
        }
        let is_str = std::str::from_utf8(&pair[0]).is_ok();
        entries.push(value::ZEntry { score, member: &pair[0], is_str });
    }
    entries.sort_by(value::zcmp);
    let mut out = Vec::new();
    value::encode_zset(&mut out, &entries);
    Some(out)
}

/// A list read from the upstream (`LRANGE 0 -1`, each item as [`to_upstream`] wrote it) as a
/// local LIST value.
pub fn local_list(items: &[Vec<u8>]) -> Option<Vec<u8>> {
    let mut out = vec![value::LIST];
    put_varint(&mut out, items.len() as u64);
    for it in items {
        out.extend_from_slice(&from_upstream(it));
    }
    value::validate(&out).is_ok().then_some(out)
}

/// A hash read from the upstream (`HGETALL`: field, value, ...) as a local DICT value.
pub fn local_dict(flat: &[Vec<u8>]) -> Option<Vec<u8>> {
    if !flat.len().is_multiple_of(2) {
        return None;
    }
    let mut out = vec![value::DICT];
    put_varint(&mut out, (flat.len() / 2) as u64);
    for pair in flat.chunks(2) {
        out.extend_from_slice(&field_local(&pair[0]));
        out.extend_from_slice(&from_upstream(&pair[1]));
    }
    value::validate(&out).is_ok().then_some(out)
}

/// The upstream hash field of an encoded dict key: a str as its text (readable by other
/// programs), anything else behind [`MAGIC`].
pub fn field_upstream(key: &[u8]) -> Vec<u8> {
    if key.first() == Some(&value::STR) {
        let mut r = value::Reader::new(key);
        r.pos = 1;
        if let Ok(b) = r.lbytes() {
            return b.to_vec();
        }
    }
    [MAGIC, key].concat()
}

/// The encoded dict key of an upstream hash field (text stays a str: "42" is not an int).
pub fn field_local(b: &[u8]) -> Vec<u8> {
    if let Some(enc) = b.strip_prefix(MAGIC) {
        if value::validate(enc).is_ok() {
            return enc.to_vec();
        }
    }
    let tag = if std::str::from_utf8(b).is_ok() { value::STR } else { value::BYTES };
    let mut out = vec![tag];
    put_varint(&mut out, b.len() as u64);
    out.extend_from_slice(b);
    out
}

/// The stored value of a key cached as absent upstream.
pub const ABSENT_VALUE: &[u8] = &[value::ABSENT];

#[cfg(test)]
mod tests {
    use super::*;

    fn enc_str(s: &str) -> Vec<u8> {
        let mut v = vec![value::STR];
        put_varint(&mut v, s.len() as u64);
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn values_round_trip_through_the_upstream_with_their_types() {
        let mut int = Vec::new();
        value::encode_int(&mut int, -42);
        assert_eq!(to_upstream(&int), b"-42");
        assert_eq!(from_upstream(b"-42"), int);
        let s = enc_str("42"); // a str that looks like an int stays a str
        assert_eq!(from_upstream(&to_upstream(&s)), s);
        assert_eq!(from_upstream(b"hello"), enc_str("hello"));
        assert_eq!(from_upstream(b"007"), enc_str("007"));
        assert_eq!(from_upstream(b"\xff\x00"), {
            let mut v = vec![value::BYTES, 2];
            v.extend_from_slice(b"\xff\x00");
            v
        });
        // A forged magic with a bad encoding after it is just bytes.
        let forged = [MAGIC, b"\x0b"].concat();
        assert_eq!(from_upstream(&forged)[0], value::BYTES);
        assert!(value::validate(ABSENT_VALUE).is_err(), "clients must not be able to store it");
    }

    #[test]
    fn sorted_sets_lists_and_hashes_come_back_as_local_values() {
        let b = |s: &str| s.as_bytes().to_vec();
        let z = local_zset(&[b("b"), b("2.5"), b("a"), b("1"), vec![0xff], b("inf")]).unwrap();
        let e = value::zset_entries(&z).unwrap();
        assert_eq!(e.iter().map(|e| e.score).collect::<Vec<_>>(), [1.0, 2.5, f64::INFINITY]);
        assert!(e[0].is_str && !e[2].is_str);
        assert!(local_zset(&[b("m"), b("nan")]).is_none() && local_zset(&[b("m")]).is_none());
        let mut int = Vec::new();
        value::encode_int(&mut int, 7);
        let l = local_list(&[to_upstream(&int), b("text")]).unwrap();
        assert_eq!(value::list_items(&l).unwrap().len(), 2);
        let key = enc_str("42");
        assert_eq!(field_upstream(&key), b"42");
        assert_eq!(field_local(b"42"), key, "a text field stays a str");
        assert_eq!(field_local(&field_upstream(&int)), int);
        let d = local_dict(&[b("42"), to_upstream(&int)]).unwrap();
        assert_eq!(value::dict_items(&d).unwrap().len(), 1);
    }

    #[test]
    fn namespaced_keys_travel_by_name_and_come_back_by_id() {
        let names = |id: usize| (id == 3).then(|| b"sessions".to_vec());
        let find = |n: &[u8]| (n == b"sessions").then_some(3);
        for stored in [&b"plain"[..], b"\xffraw", b"\xff\x00\xff\x05raw", b"\xff\x03user:1"] {
            let up = upstream_key(stored, names).unwrap();
            assert_eq!(local_key(&up, find).as_deref(), Some(stored), "{up:?}");
        }
        assert_eq!(upstream_key(b"\xff\x03k", names).unwrap(), b"\xffns:sessions\0k");
        assert_eq!(upstream_key(b"\xff\x04k", names), None, "a namespace not opened here");
        assert_eq!(upstream_key(b"\xffns:sessions\0k", names), None, "reads as namespaced");
        assert_eq!(upstream_key(b"\xffsurpd-once:x", names), None);
        assert_eq!(local_key(b"\xffns:other\0k", find), None);
        assert_eq!(local_key(b"\xffsurpd-once:0:1", find), None);
    }
}
