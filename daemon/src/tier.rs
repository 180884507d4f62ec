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
        if value::validate(enc).is_ok() {
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
}
