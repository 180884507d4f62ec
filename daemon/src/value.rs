//! The value encoding shared by clients and the daemon: compact, msgpack-like, typed so that
//! every Python value of a native type round-trips exactly (a tuple stays a tuple, a bool
//! stays a bool, ints of any size).
//!
//! ```text
//! value  := tag payload
//! NONE 0x00 | FALSE 0x01 | TRUE 0x02
//! INT    0x03 zigzag-varint(i64)
//! BIGINT 0x04 varint(n) n bytes of two's-complement little-endian
//! FLOAT  0x05 8 bytes IEEE-754 little-endian
//! STR    0x06 varint(n) n bytes UTF-8
//! BYTES  0x07 varint(n) n bytes
//! LIST   0x08 varint(count) value*
//! TUPLE  0x09 varint(count) value*
//! DICT   0x0a varint(count) (value value)*     keys in insertion order
//! PICKLE 0x0b varint(n) n bytes of pickle      any other Python object
//! ZSET   0x0c varint(count) (f64-LE score, STR|BYTES member)*   sorted by (score, member)
//! COMPRESSED 0x0f varint(n) zstd-frame         a whole value of n bytes, compressed
//! ```
//! COMPRESSED stands only for a whole stored value (never inside a container, never itself
//! compressed): clients compress large values when that saves space, and every reader,
//! the daemon included, sees the value it stands for through [`plain`].
//! Decoders take arbitrary bytes and never panic: every length is checked against what is
//! left, nesting is bounded by [`MAX_DEPTH`].

use crate::error::{Error, Result};

pub const NONE: u8 = 0x00;
pub const FALSE: u8 = 0x01;
pub const TRUE: u8 = 0x02;
pub const INT: u8 = 0x03;
pub const BIGINT: u8 = 0x04;
pub const FLOAT: u8 = 0x05;
pub const STR: u8 = 0x06;
pub const BYTES: u8 = 0x07;
pub const LIST: u8 = 0x08;
pub const TUPLE: u8 = 0x09;
pub const DICT: u8 = 0x0a;
pub const PICKLE: u8 = 0x0b;
pub const ZSET: u8 = 0x0c;
/// Tiered mode: the whole stored value of a key the upstream does not hold, cached as
/// absent until an invalidation drops it. Only the daemon stores it: it is not a value
/// ([`validate`] refuses it), so no client can write one.
pub const ABSENT: u8 = 0x0d;
/// A stampede lease: the whole stored value of a key one client is computing (`get_or_set`).
/// Reads as a miss. Only the daemon stores it ([`validate`] refuses it): tag, then the
/// holder's pid (u32 LE), process start time (u64 LE) and token (u64 LE).
pub const LEASE: u8 = 0x0e;

/// A whole value compressed with zstd (see the module comment and [`plain`]).
pub const COMPRESSED: u8 = 0x0f;
/// The most a compressed value may declare, whatever the segment (max_value's own bound).
pub const MAX_PLAIN: u64 = 512 << 20;

/// A whole value stored with tags (`set(..., tags=[...])`, see `tags.rs`): tag, count (1 to
/// [`MAX_TAGS`]), then per tag its tag key (length-prefixed, as the namespace's users know
/// it: it lives in the namespace of the value's key) and the token (u64 LE) that key held,
/// then the value itself (plain or [`COMPRESSED`]). It reads as a
/// miss once any of its tag keys holds another token or none ([`split_tagged`]).
pub const TAGGED: u8 = 0x10;
/// The most tags one value may carry.
pub const MAX_TAGS: usize = 32;

/// Deepest nesting of containers accepted by encoders and decoders.
pub const MAX_DEPTH: usize = 200;

#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// A cursor over untrusted bytes.
pub struct Reader<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
}

fn corrupt(what: &str, pos: usize) -> Error {
    Error::Corrupted(format!("bad value encoding: {what} at byte {pos}"))
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    #[inline]
    pub fn u8(&mut self) -> Result<u8> {
        let b = *self.buf.get(self.pos).ok_or_else(|| corrupt("truncated", self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    pub fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                return Err(corrupt("varint overflow", self.pos));
            }
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
            if shift > 63 {
                return Err(corrupt("varint too long", self.pos));
            }
        }
    }

    #[inline]
    pub fn bytes(&mut self, n: u64) -> Result<&'a [u8]> {
        let n = usize::try_from(n).map_err(|_| corrupt("length", self.pos))?;
        let end = self.pos.checked_add(n).ok_or_else(|| corrupt("length", self.pos))?;
        let s = self.buf.get(self.pos..end).ok_or_else(|| corrupt("truncated", self.pos))?;
        self.pos = end;
        Ok(s)
    }

    /// A length-prefixed byte string.
    #[inline]
    pub fn lbytes(&mut self) -> Result<&'a [u8]> {
        let n = self.varint()?;
        self.bytes(n)
    }

    /// A container count, bounded by the bytes left (each element takes at least one byte).
    #[inline]
    pub fn count(&mut self, per_item: usize) -> Result<usize> {
        let n = self.varint()?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(per_item as u64) > left {
            return Err(corrupt("count exceeds data", self.pos));
        }
        Ok(n as usize)
    }

    pub fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }
}

/// Skip one encoded value; checks structure only (used by validation and fuzzing).
pub fn skip(r: &mut Reader<'_>, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(corrupt("nesting too deep", r.pos));
    }
    match r.u8()? {
        NONE | FALSE | TRUE => Ok(()),
        INT => r.varint().map(|_| ()),
        FLOAT => r.bytes(8).map(|_| ()),
        BIGINT | BYTES | PICKLE => r.lbytes().map(|_| ()),
        STR => {
            let s = r.lbytes()?;
            std::str::from_utf8(s).map_err(|_| corrupt("invalid UTF-8", r.pos))?;
            Ok(())
        }
        LIST | TUPLE => {
            let n = r.count(1)?;
            for _ in 0..n {
                skip(r, depth + 1)?;
            }
            Ok(())
        }
        DICT => {
            let n = r.count(2)?;
            for _ in 0..2 * n {
                skip(r, depth + 1)?;
            }
            Ok(())
        }
        ZSET => {
            let n = r.count(10)?;
            for _ in 0..n {
                zentry(r)?;
            }
            Ok(())
        }
        t => Err(corrupt(&format!("unknown tag {t:#x}"), r.pos - 1)),
    }
}

/// Whether a well-formed value holds a pickle anywhere in it (a value that does not parse
/// counts as holding one: nothing is known of it). A compressed value is looked into.
pub fn has_pickle(buf: &[u8]) -> bool {
    has_pickle_within(buf, MAX_PLAIN)
}

/// [`has_pickle`], for a compressed value that may stand for at most `max` bytes (more
/// counts as holding one).
pub fn has_pickle_within(buf: &[u8], max: u64) -> bool {
    fn walk(r: &mut Reader<'_>, depth: usize) -> Result<bool> {
        if depth > MAX_DEPTH {
            return Err(corrupt("too deep", r.pos));
        }
        let start = r.pos;
        match r.u8()? {
            PICKLE => Ok(true),
            LIST | TUPLE => {
                let n = r.count(1)?;
                for _ in 0..n {
                    if walk(r, depth + 1)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            DICT => {
                let n = r.count(2)?;
                for _ in 0..2 * n {
                    if walk(r, depth + 1)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            _ => {
                r.pos = start;
                skip(r, depth)?;
                Ok(false)
            }
        }
    }
    let Ok((_, inner)) = split_tagged(buf) else { return true };
    match plain(inner, max) {
        Ok(v) => walk(&mut Reader::new(&v), 0).unwrap_or(true),
        Err(_) => true,
    }
}

type Contexts =
    (Option<(i32, zstd::bulk::Compressor<'static>)>, Option<zstd::bulk::Decompressor<'static>>);

thread_local! {
    /// A thread's zstd contexts, kept: making one per value cost more than decompressing a
    /// 23 KB page (tables and window buffers allocated and freed each time).
    static ZSTD: std::cell::RefCell<Contexts> = const { std::cell::RefCell::new((None, None)) };
}

/// The encoded value a stored value stands for: `buf` itself, or what a COMPRESSED one
/// decompresses to (its declared length, at most `max` bytes, and not compressed again).
/// Untrusted bytes: a bad frame, a wrong length or a bomb is an error, never a panic.
pub fn plain(buf: &[u8], max: u64) -> Result<std::borrow::Cow<'_, [u8]>> {
    if buf.first() != Some(&COMPRESSED) {
        return Ok(std::borrow::Cow::Borrowed(buf));
    }
    let mut r = Reader::new(buf);
    r.u8()?;
    let n = r.varint()?;
    if n > max.min(MAX_PLAIN) {
        return Err(corrupt(&format!("a compressed value of {n} bytes, over {max}"), 1));
    }
    let out = ZSTD
        .with(|z| {
            let mut z = z.borrow_mut();
            if z.1.is_none() {
                z.1 = Some(zstd::bulk::Decompressor::new()?);
            }
            z.1.as_mut().expect("made above").decompress(&buf[r.pos..], n as usize)
        })
        .map_err(|e| corrupt(&format!("compressed value does not decompress ({e})"), r.pos))?;
    if out.len() as u64 != n {
        return Err(corrupt(&format!("compressed value is {} bytes, not {n}", out.len()), 1));
    }
    if out.first() == Some(&COMPRESSED) {
        return Err(corrupt("a compressed value compressed again", r.pos));
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// `buf` (an encoded value) compressed with zstd at `level` into a COMPRESSED value.
pub fn compress(buf: &[u8], level: i32) -> Option<Vec<u8>> {
    let frame = ZSTD
        .with(|z| {
            let mut z = z.borrow_mut();
            match &mut z.0 {
                Some((l, c)) if *l == level => {}
                slot => *slot = Some((level, zstd::bulk::Compressor::new(level)?)),
            }
            z.0.as_mut().expect("made above").1.compress(buf)
        })
        .ok()?;
    let mut out = Vec::with_capacity(frame.len() + 10);
    out.push(COMPRESSED);
    put_varint(&mut out, buf.len() as u64);
    out.extend_from_slice(&frame);
    Some(out)
}

/// A whole stored value's tag header (empty if it has none) and the value it carries.
/// Untrusted bytes: a header that does not parse is an error.
pub fn split_tagged(buf: &[u8]) -> Result<(&[u8], &[u8])> {
    if buf.first() != Some(&TAGGED) {
        return Ok((&buf[..0], buf));
    }
    let mut r = Reader::new(buf);
    r.u8()?;
    let n = r.varint()?;
    if n == 0 || n > MAX_TAGS as u64 {
        return Err(corrupt(&format!("{n} tags (1 to {MAX_TAGS})"), 1));
    }
    for _ in 0..n {
        let k = r.lbytes()?;
        if k.is_empty() || k.len() > crate::layout::MAX_KEY_LEN {
            return Err(corrupt(&format!("a tag key of {} bytes", k.len()), r.pos));
        }
        r.bytes(8)?;
    }
    if r.buf.get(r.pos) == Some(&TAGGED) {
        return Err(corrupt("a tagged value tagged again", r.pos));
    }
    Ok(buf.split_at(r.pos))
}

/// The tags of a header [`split_tagged`] returned: each tag key's stored form and token.
pub fn tag_entries(head: &[u8]) -> impl Iterator<Item = (&[u8], u64)> {
    let mut r = Reader::new(head);
    let n = if head.is_empty() { 0 } else { r.u8().and_then(|_| r.varint()).unwrap_or(0) };
    (0..n).map_while(move |_| {
        let k = r.lbytes().ok()?;
        let t = r.bytes(8).ok()?;
        Some((k, u64::from_le_bytes(t.try_into().expect("8 bytes"))))
    })
}

/// A tag header for `tags` (stored tag keys and their tokens), to put before a value.
pub fn tag_header(tags: &[(Vec<u8>, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + tags.iter().map(|(k, _)| k.len() + 10).sum::<usize>());
    out.push(TAGGED);
    put_varint(&mut out, tags.len() as u64);
    for (k, t) in tags {
        put_varint(&mut out, k.len() as u64);
        out.extend_from_slice(k);
        out.extend_from_slice(&t.to_le_bytes());
    }
    out
}

/// Check a whole value a client stores under a key: [`validate`], for a COMPRESSED one
/// that it decompresses to at most `max` bytes of a valid value, for a TAGGED one that its
/// header parses and the value it carries is one of those.
pub fn validate_stored(buf: &[u8], max: u64) -> Result<()> {
    let (_, inner) = split_tagged(buf)?;
    validate(&plain(inner, max)?)
}

/// Check that `buf` is exactly one well-formed value.
pub fn validate(buf: &[u8]) -> Result<()> {
    let mut r = Reader::new(buf);
    skip(&mut r, 0)?;
    if !r.at_end() {
        return Err(corrupt("trailing bytes", r.pos));
    }
    Ok(())
}

/// Encode an integer (i128 covers what incr can produce).
pub fn encode_int(out: &mut Vec<u8>, v: i128) {
    if let Ok(small) = i64::try_from(v) {
        out.push(INT);
        put_varint(out, zigzag(small));
    } else {
        let bytes = v.to_le_bytes();
        // Minimal two's-complement length: drop redundant sign bytes.
        let mut n = 16;
        while n > 1 {
            let top = bytes[n - 1];
            let next_sign = bytes[n - 2] & 0x80;
            if (top == 0 && next_sign == 0) || (top == 0xff && next_sign != 0) {
                n -= 1;
            } else {
                break;
            }
        }
        out.push(BIGINT);
        put_varint(out, n as u64);
        out.extend_from_slice(&bytes[..n]);
    }
}

/// Decode an encoded value that must be an integer of at most 128 bits (for incr).
/// Ok(None) when the value is of another type.
pub fn decode_int(buf: &[u8]) -> Result<Option<i128>> {
    let mut r = Reader::new(buf);
    let v = match r.u8()? {
        INT => unzigzag(r.varint()?) as i128,
        BIGINT => {
            let b = r.lbytes()?;
            if b.is_empty() || b.len() > 16 {
                return Ok(None);
            }
            let fill = if b[b.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
            let mut full = [fill; 16];
            full[..b.len()].copy_from_slice(b);
            i128::from_le_bytes(full)
        }
        _ => return Ok(None),
    };
    if !r.at_end() {
        return Err(corrupt("trailing bytes", r.pos));
    }
    Ok(Some(v))
}

/// Human name of an encoded value's type (for error messages).
pub fn type_name(buf: &[u8]) -> &'static str {
    match buf.first() {
        Some(&NONE) => "NoneType",
        Some(&FALSE) | Some(&TRUE) => "bool",
        Some(&INT) | Some(&BIGINT) => "int",
        Some(&FLOAT) => "float",
        Some(&STR) => "str",
        Some(&BYTES) => "bytes",
        Some(&LIST) => "list",
        Some(&TUPLE) => "tuple",
        Some(&DICT) => "dict",
        Some(&PICKLE) => "pickled object",
        Some(&ZSET) => "sorted set",
        Some(&ABSENT) => "absent marker",
        Some(&LEASE) => "lease",
        Some(&COMPRESSED) => "compressed value",
        _ => "unknown",
    }
}

/// The type of an encoded value with its article, for messages ("a str", "an int"); an
/// int beyond what incr computes with says so.
pub fn describe(buf: &[u8]) -> String {
    if buf.first() == Some(&BIGINT) && decode_int(buf).ok().flatten().is_none() {
        let mut r = Reader::new(&buf[1..]);
        let bits = r.lbytes().map_or(0, |b| b.len() * 8);
        return format!(
            "an int of about {bits} bits, outside the 128-bit range incr and decr work in"
        );
    }
    let t = type_name(buf);
    let article = if t.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} {t}")
}

/// One sorted-set member with its score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ZEntry<'a> {
    pub score: f64,
    pub member: &'a [u8],
    /// The member was a str (else bytes).
    pub is_str: bool,
}

/// Read one (score, member) entry.
pub fn zentry<'a>(r: &mut Reader<'a>) -> Result<ZEntry<'a>> {
    let score = f64::from_le_bytes(r.bytes(8)?.try_into().unwrap());
    let is_str = match r.u8()? {
        STR => true,
        BYTES => false,
        _ => return Err(corrupt("sorted set member is not str or bytes", r.pos - 1)),
    };
    let member = r.lbytes()?;
    if is_str && std::str::from_utf8(member).is_err() {
        return Err(corrupt("invalid UTF-8", r.pos));
    }
    Ok(ZEntry { score, member, is_str })
}

/// The entries of an encoded sorted set (in stored order).
pub fn zset_entries(buf: &[u8]) -> Result<Vec<ZEntry<'_>>> {
    let mut r = Reader::new(buf);
    if r.u8()? != ZSET {
        return Err(corrupt("not a sorted set", 0));
    }
    let n = r.count(10)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(zentry(&mut r)?);
    }
    if !r.at_end() {
        return Err(corrupt("trailing bytes", r.pos));
    }
    Ok(out)
}

/// Encode a sorted set from entries already in order.
pub fn encode_zset(out: &mut Vec<u8>, entries: &[ZEntry<'_>]) {
    out.push(ZSET);
    put_varint(out, entries.len() as u64);
    for e in entries {
        out.extend_from_slice(&e.score.to_le_bytes());
        out.push(if e.is_str { STR } else { BYTES });
        put_varint(out, e.member.len() as u64);
        out.extend_from_slice(e.member);
    }
}

/// The order of a sorted set: by score, then by member bytes (as Redis orders ties).
pub fn zcmp(a: &ZEntry<'_>, b: &ZEntry<'_>) -> std::cmp::Ordering {
    a.score.total_cmp(&b.score).then_with(|| a.member.cmp(b.member))
}

/// Byte ranges of the items of an encoded list (tag LIST), for append.
pub fn list_items(buf: &[u8]) -> Result<Vec<std::ops::Range<usize>>> {
    let mut r = Reader::new(buf);
    if r.u8()? != LIST {
        return Err(corrupt("not a list", 0));
    }
    let n = r.count(1)?;
    let mut out = Vec::with_capacity(n + 1);
    for _ in 0..n {
        let start = r.pos;
        skip(&mut r, 1)?;
        out.push(start..r.pos);
    }
    if !r.at_end() {
        return Err(corrupt("trailing bytes", r.pos));
    }
    Ok(out)
}

/// (key bytes, value bytes) ranges of the pairs of an encoded dict (tag DICT), for merge.
pub fn dict_items(buf: &[u8]) -> Result<Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>> {
    let mut r = Reader::new(buf);
    if r.u8()? != DICT {
        return Err(corrupt("not a dict", 0));
    }
    let n = r.count(2)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let k = r.pos;
        skip(&mut r, 1)?;
        let v = r.pos;
        skip(&mut r, 1)?;
        out.push((k..v, v..r.pos));
    }
    if !r.at_end() {
        return Err(corrupt("trailing bytes", r.pos));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_round_trip_through_incr_codec() {
        for v in [
            0i128,
            1,
            -1,
            127,
            128,
            -129,
            i64::MAX as i128,
            i64::MIN as i128,
            i64::MAX as i128 + 1,
            i64::MIN as i128 - 1,
            i128::MAX,
            i128::MIN,
        ] {
            let mut out = Vec::new();
            encode_int(&mut out, v);
            validate(&out).unwrap();
            assert_eq!(decode_int(&out).unwrap(), Some(v), "{v}");
        }
    }

    #[test]
    fn bigint_is_minimal() {
        let mut out = Vec::new();
        encode_int(&mut out, i64::MAX as i128 + 1); // 2^63 needs 9 bytes (sign byte 0)
        assert_eq!(out[0], BIGINT);
        assert_eq!(out[1], 9);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz pass; cargo-fuzz targets go further.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..2000usize {
            let mut buf = Vec::with_capacity(len % 64);
            for _ in 0..(len % 64) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push((x % 13) as u8 | if x & 0x100 != 0 { 0x80 } else { 0 });
            }
            let _ = validate(&buf);
            let _ = decode_int(&buf);
        }
        // Deep nesting is refused, not a stack overflow.
        let deep = [LIST, 1].repeat(100_000);
        assert!(validate(&deep).is_err());
    }

    #[test]
    fn a_tag_header_round_trips_and_damage_is_refused() {
        let tags = vec![(b"\0~tag\0a".to_vec(), 7u64), (b"\xff\x03\0~tag\0b".to_vec(), u64::MAX)];
        let head = tag_header(&tags);
        let value = [&head[..], &[STR, 2, b'h', b'i']].concat();
        let (h, inner) = split_tagged(&value).unwrap();
        assert_eq!((h, inner), (&head[..], &[STR, 2, b'h', b'i'][..]));
        let got: Vec<(Vec<u8>, u64)> = tag_entries(h).map(|(k, t)| (k.to_vec(), t)).collect();
        assert_eq!(got, tags);
        assert!(validate_stored(&value, 1 << 20).is_ok());
        assert!(validate(&value).is_err(), "never inside a container");
        // An untagged value is its own inner value.
        assert_eq!(split_tagged(&[NONE]).unwrap(), (&[][..], &[NONE][..]));
        // No tags, too many, an empty key, a cut token, tagged twice, a bad value inside.
        let mut too_many = vec![TAGGED];
        put_varint(&mut too_many, MAX_TAGS as u64 + 1);
        let twice = [&head[..], &head[..], &[NONE]].concat();
        let bad_inner = [&head[..], &[0x7f]].concat();
        for bad in [
            &[TAGGED, 0, NONE][..],
            &too_many,
            &[TAGGED, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, NONE],
            &[TAGGED, 1, 1, b'k', 0, 0],
            &twice,
            &bad_inner,
        ] {
            assert!(validate_stored(bad, 1 << 20).is_err(), "{bad:?}");
            assert!(has_pickle_within(bad, 1 << 20), "unknown counts as holding one: {bad:?}");
        }
        // A pickle inside a tagged value is found.
        let pickled = [&head[..], &[PICKLE, 1, b'x']].concat();
        assert!(has_pickle(&pickled));
        assert!(!has_pickle(&value));
    }
}
