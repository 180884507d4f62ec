//! The record codec: values (in the value encoding of [`crate::value`]) compressed with a
//! model trained on the data, into one rANS stream per record.
//!
//! What each part of a value costs, and why it is coded so (docs/DESIGN.md, "Record codec",
//! has the measurements):
//! - **types**: one symbol per value from the field's distribution of types (near 0 bits
//!   when a field always holds the same type);
//! - **dict keys**: field names live in the field-name table; which field follows which is
//!   modelled (the usual record shape costs well under a bit per field); unseen names escape
//!   to their table id;
//! - **whole values** that repeat in a field (a source name, an author) are one symbol;
//! - **URLs**: a trained prefix (scheme + host + first path segment, e.g.
//!   `https://pypi.org/project/`) is one symbol; other hosts go to the domain table (scheme +
//!   host -> id); the rest of the URL goes to the text model;
//! - **text**: tokens learned from the field's sample (byte-pair merges, [`tokens`]), each
//!   from a static distribution chosen by the token before it (and, in compact mode, by the
//!   two before it), escaping to order 0; models of order 3, from stores made before, use a
//!   static PPM byte model instead (contexts of the previous 3 bytes). A static model decodes
//!   several times faster than an adaptive one and needs no per-record warm-up, which is what
//!   makes 40-byte strings small. LZMA (lzma-rs) was measured and is not used: its encoder emits
//!   literals only, so per-string output is larger than the input's UTF-8 for short strings;
//! - **ints**: repeating values are symbols; others are a bit length symbol plus raw bits.
//!
//! Decoding checks that the stream ends exactly where the encoder stopped, and never panics
//! on arbitrary bytes (fuzzed: `fuzz/fuzz_targets/record_decode.rs`).

pub mod dist;
pub mod model;
pub mod rans;
pub mod tokens;

use std::hash::{BuildHasherDefault, Hasher};

use dist::{DistId, NO_DIST};
use model::{ctx2, ctx3, last3, TextModel};
pub use model::{train, FieldModel, Model};
use rans::{Decoder, Encoder};
use tokens::TokenText;

use crate::error::{Error, Result};
use crate::value::{self, put_varint, unzigzag, zigzag, Reader};

/// Text symbols: bytes are 0..=255.
pub const EOS: u16 = 256;
pub const ESC: u16 = 257;
/// Value types: the value encoding's tags, plus a dict whose keys are not all strings.
pub const NTAGS: usize = 14;
pub const TAG_DICTANY: u8 = 13;
/// The field context of values outside a dict with string keys.
pub const GENERIC_FIELD: u32 = u32::MAX;
/// Largest decoded record (a corrupt stream stops here).
pub const MAX_DECODED: usize = 64 << 20;

/// The shared tables a codec reads (and, in the daemon, appends to).
pub trait Tables {
    /// Id of a field name, added if new (daemon only; readers return an error).
    fn field_id(&mut self, name: &str) -> Result<u32>;
    /// Id of a URL's scheme + host, added if new (daemon only).
    fn domain_id(&mut self, domain: &str) -> Result<u32>;
    fn field_name(&self, id: u32) -> Option<&str>;
    fn domain(&self, id: u32) -> Option<&str>;
}

/// An append-only table of names: an id is a name's position, so ids never change.
#[derive(Default, Debug, Clone)]
pub struct Names {
    list: Vec<String>,
    ids: std::collections::HashMap<String, u32>,
}

impl Names {
    pub fn id(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    /// The id of `name`, added at the end if new.
    pub fn add(&mut self, name: &str) -> u32 {
        if let Some(i) = self.id(name) {
            return i;
        }
        let i = self.list.len() as u32;
        self.list.push(name.to_owned());
        self.ids.insert(name.to_owned(), i);
        i
    }

    pub fn name(&self, id: u32) -> Option<&str> {
        self.list.get(id as usize).map(|s| s.as_str())
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|s| s.as_str())
    }
}

/// Tables held in memory: tests, training tools, the evaluation harness, and (inside
/// `records::LogTables`) each process's copy of the records file's table log.
#[derive(Default, Debug, Clone)]
pub struct MemTables {
    pub fields: Names,
    pub domains: Names,
}

impl Tables for MemTables {
    fn field_id(&mut self, name: &str) -> Result<u32> {
        Ok(self.fields.add(name))
    }
    fn domain_id(&mut self, d: &str) -> Result<u32> {
        Ok(self.domains.add(d))
    }
    fn field_name(&self, id: u32) -> Option<&str> {
        self.fields.name(id)
    }
    fn domain(&self, id: u32) -> Option<&str> {
        self.domains.name(id)
    }
}

/// A fast hasher for integer keys (FxHash's multiply-rotate), for maps on the decode path.
#[derive(Default, Clone, Copy)]
pub struct Fx(u64);

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

pub type FxBuild = BuildHasherDefault<Fx>;

/// Whether `s` starts like an http(s) URL with a host.
pub fn is_url_start(s: &str) -> bool {
    let rest = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.starts_with('/'))
}

/// End of scheme + host (+ port): the first '/', '?' or '#' after "://", or the end.
pub fn url_domain_end(s: &str) -> usize {
    let start = s.find("://").map_or(0, |i| i + 3);
    s[start..].find(['/', '?', '#']).map_or(s.len(), |i| start + i)
}

/// End of the first path segment including its '/', if the URL has one ("…/project/").
pub fn first_segment_end(s: &str, domain_end: usize) -> Option<usize> {
    let rest = s.get(domain_end..)?;
    let rest = rest.strip_prefix('/')?;
    rest.find('/').map(|i| domain_end + 1 + i + 1)
}

/// The longest trained prefix of URL `s`.
pub fn longest_prefix<'m>(s: &str, de: usize, fm: &'m FieldModel) -> Option<&'m str> {
    if let Some(e) = first_segment_end(s, de) {
        if let Some(&i) = fm.prefix_map.get(&s[..e]) {
            return Some(&fm.prefixes[i as usize]);
        }
    }
    fm.prefix_map.get(&s[..de]).map(|&i| &*fm.prefixes[i as usize])
}

fn bad(what: &str) -> Error {
    Error::Corrupted(format!("compressed record: {what}"))
}

fn bitlen(v: u64) -> u32 {
    64 - v.leading_zeros()
}

// ---------------------------------------------------------------------------------------
// Encoding

/// Encodes values with one model; keeps its buffers between records.
pub struct RecordEncoder {
    e: Encoder,
    toks: Vec<u16>,
}

impl Default for RecordEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordEncoder {
    pub fn new() -> Self {
        RecordEncoder { e: Encoder::new(), toks: Vec::new() }
    }

    /// Compress one value (in the value encoding) and append it to `out`.
    pub fn encode(
        &mut self,
        m: &Model,
        t: &mut dyn Tables,
        val: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        self.e.clear();
        let mut r = Reader::new(val);
        let mut enc = Enc { m, e: &mut self.e, toks: &mut self.toks };
        enc.value(&mut r, GENERIC_FIELD, t, 0)?;
        if !r.at_end() {
            return Err(bad("trailing bytes after the value"));
        }
        self.e.finish(out);
        Ok(())
    }
}

struct Enc<'a> {
    m: &'a Model,
    e: &'a mut Encoder,
    toks: &'a mut Vec<u16>,
}

impl Enc<'_> {
    #[inline]
    fn sym(&mut self, d: DistId, s: u16) -> Result<()> {
        if self.m.pool.put(d, s, self.e) {
            Ok(())
        } else {
            Err(bad("symbol missing from its distribution (model bug)"))
        }
    }

    fn count(&mut self, d: DistId, v: u64) -> Result<()> {
        let n = bitlen(v);
        self.sym(d, n as u16)?;
        if n > 1 {
            self.e.put_bits(v & ((1u64 << (n - 1)) - 1), n - 1);
        }
        Ok(())
    }

    fn raw(&mut self, fm: &FieldModel, b: &[u8]) -> Result<()> {
        self.count(fm.clen, b.len() as u64)?;
        for &x in b {
            self.e.put(x as u32, 1, 8);
        }
        Ok(())
    }

    fn text(&mut self, tm: &TextModel, s: &[u8], mut c: [u8; 3]) -> Result<()> {
        let m = self.m;
        for sym in s.iter().map(|&b| b as u16).chain(std::iter::once(EOS)) {
            'found: {
                if m.order >= 3 {
                    let d = tm.o3.get(ctx3(c));
                    if d != NO_DIST {
                        if m.pool.put(d, sym, self.e) {
                            break 'found;
                        }
                        self.sym(d, ESC)?;
                    }
                }
                let d = tm.o2.get(ctx2(c));
                if d != NO_DIST {
                    if m.pool.put(d, sym, self.e) {
                        break 'found;
                    }
                    self.sym(d, ESC)?;
                }
                let d = tm.o1[c[0] as usize];
                if d != NO_DIST {
                    if m.pool.put(d, sym, self.e) {
                        break 'found;
                    }
                    self.sym(d, ESC)?;
                }
                self.sym(tm.o0, sym)?;
            }
            c = [sym as u8, c[0], c[1]];
        }
        Ok(())
    }

    /// A string's text (after its URL prefix): tokens, or bytes from context `c`.
    fn text_of(&mut self, fm: &FieldModel, s: &[u8], c: [u8; 3]) -> Result<()> {
        match &fm.tok {
            Some(t) => self.tokens(t, s),
            None => self.text(&fm.text, s, c),
        }
    }

    fn tokens(&mut self, t: &TokenText, s: &[u8]) -> Result<()> {
        let mut toks = std::mem::take(self.toks);
        toks.clear();
        t.split(s, &mut toks);
        toks.push(t.eos());
        let (mut p2, mut prev) = (t.eos() as usize, t.eos() as usize);
        let mut r = Ok(());
        let pool = &self.m.pool;
        for &tok in &toks {
            'coded: {
                if !t.o2.is_empty() {
                    let d = t.o2.get(tokens::ctx2(p2, prev));
                    if d != NO_DIST {
                        if pool.put(d, tok, self.e) {
                            break 'coded;
                        }
                        r = r.and(self.sym(d, t.esc()));
                    }
                }
                let d = t.o1[prev];
                if d != NO_DIST {
                    if pool.put(d, tok, self.e) {
                        break 'coded;
                    }
                    r = r.and(self.sym(d, t.esc()));
                }
                r = r.and(self.sym(t.o0, tok));
            }
            (p2, prev) = (prev, tok as usize);
        }
        *self.toks = toks;
        r
    }

    fn string(&mut self, fm: &FieldModel, s: &str, t: &mut dyn Tables) -> Result<()> {
        if fm.sval_dist != NO_DIST {
            if let Some(&i) = fm.svals_map.get(s) {
                return self.sym(fm.sval_dist, i + 1);
            }
            self.sym(fm.sval_dist, 0)?;
        }
        if fm.url_dist == NO_DIST {
            return self.text_of(fm, s.as_bytes(), [0; 3]);
        }
        if !is_url_start(s) {
            self.sym(fm.url_dist, 0)?;
            return self.text_of(fm, s.as_bytes(), [0; 3]);
        }
        let de = url_domain_end(s);
        if let Some(p) = longest_prefix(s, de, fm) {
            self.sym(fm.url_dist, fm.prefix_map[p] + 2)?;
            return self.text_of(fm, &s.as_bytes()[p.len()..], last3(p.as_bytes()));
        }
        self.sym(fm.url_dist, 1)?;
        let id = t.domain_id(&s[..de])?;
        self.count(fm.clen, id as u64)?;
        self.text_of(fm, &s.as_bytes()[de..], last3(&s.as_bytes()[..de]))
    }

    fn value(
        &mut self,
        r: &mut Reader<'_>,
        field: u32,
        t: &mut dyn Tables,
        depth: usize,
    ) -> Result<()> {
        if depth > value::MAX_DEPTH {
            return Err(bad("nesting too deep"));
        }
        let m = self.m;
        let fm = m.field(field);
        let start = r.pos;
        let tag = r.u8()?;
        let anykeys = tag == value::DICT && !model::dict_has_str_keys(r)?;
        let sym = if anykeys { TAG_DICTANY } else { tag };
        if sym as usize >= NTAGS {
            return Err(bad("unknown value tag"));
        }
        self.sym(fm.tags, sym as u16)?;
        match tag {
            value::NONE | value::FALSE | value::TRUE => {}
            value::INT => {
                let v = unzigzag(r.varint()?);
                if fm.ival_dist != NO_DIST {
                    if let Some(&i) = fm.ivals_map.get(&v) {
                        return self.sym(fm.ival_dist, i + 1);
                    }
                    self.sym(fm.ival_dist, 0)?;
                }
                self.count(fm.ilen, zigzag(v))?;
            }
            value::STR => {
                let s = r.lbytes()?;
                let s = std::str::from_utf8(s).map_err(|_| bad("invalid UTF-8"))?;
                self.string(fm, s, t)?;
            }
            value::LIST | value::TUPLE => {
                let n = r.count(1)?;
                self.count(fm.clen, n as u64)?;
                for _ in 0..n {
                    self.value(r, field, t, depth + 1)?;
                }
            }
            value::DICT if anykeys => {
                let n = r.count(2)?;
                self.count(fm.clen, n as u64)?;
                for _ in 0..2 * n {
                    self.value(r, GENERIC_FIELD, t, depth + 1)?;
                }
            }
            value::DICT => {
                let n = r.count(2)?;
                self.count(fm.clen, n as u64)?;
                let mut prev = 0u32;
                for _ in 0..n {
                    r.u8()?;
                    let k = std::str::from_utf8(r.lbytes()?).map_err(|_| bad("invalid UTF-8"))?;
                    let id = t.field_id(k)?;
                    match m.trans.get(&prev) {
                        Some(tr) => match tr.ids.iter().position(|&x| x == id) {
                            Some(i) => self.sym(tr.dist, i as u16 + 1)?,
                            None => {
                                self.sym(tr.dist, 0)?;
                                self.count(m.generic.clen, id as u64)?;
                            }
                        },
                        None => {
                            self.sym(m.trans_any, 0)?;
                            self.count(m.generic.clen, id as u64)?;
                        }
                    }
                    prev = id.wrapping_add(1);
                    self.value(r, id, t, depth + 1)?;
                }
            }
            _ => {
                // Floats, big ints, bytes, pickles, sorted sets: stored as they are encoded.
                r.pos = start;
                value::skip(r, depth)?;
                let body = &r.buf[start + 1..r.pos];
                self.raw(fm, body)?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Decoding

/// Decompress a record into the value encoding (appended to `out`).
pub fn decode(m: &Model, t: &dyn Tables, payload: &[u8], out: &mut Vec<u8>) -> Result<()> {
    decode_within(m, t, payload, out, MAX_DECODED)
}

/// [`decode`], refusing a record that decodes to more than `limit` bytes (a record sent
/// encoded by a client, checked against `max_value`), before it holds much more than twice
/// that much memory.
pub fn decode_within(
    m: &Model,
    t: &dyn Tables,
    payload: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<()> {
    let start = out.len();
    let limit = limit.min(MAX_DECODED);
    let mut d = Dec {
        m,
        d: Decoder::new(payload),
        scratch: Vec::new(),
        limit: start + limit,
        text_limit: limit,
    };
    d.value(out, GENERIC_FIELD, t, 0)?;
    d.d.finish()?;
    if out.len() - start > limit {
        return Err(Error::ValueTooLarge { size: (out.len() - start) as u64, max: limit as u64 });
    }
    Ok(())
}

struct Dec<'a> {
    m: &'a Model,
    d: Decoder<'a>,
    scratch: Vec<u8>,
    /// Most bytes `out` may reach.
    limit: usize,
    /// Most bytes one string being decoded (in `scratch`) may reach.
    text_limit: usize,
}

impl Dec<'_> {
    #[inline]
    fn count(&mut self, d: DistId) -> Result<u64> {
        let n = self.m.pool.get(d, &mut self.d) as u32;
        if n > 64 {
            return Err(bad("length out of range"));
        }
        Ok(match n {
            0 => 0,
            1 => 1,
            n => (1u64 << (n - 1)) | self.d.get_bits(n - 1),
        })
    }

    fn check(&self, out: &[u8]) -> Result<()> {
        self.check_len(out.len(), self.limit)
    }

    /// [`Dec::check`] for the string being decoded.
    fn check_text(&self) -> Result<()> {
        self.check_len(self.scratch.len(), self.text_limit)
    }

    fn check_len(&self, len: usize, limit: usize) -> Result<()> {
        if self.d.overrun() {
            return Err(bad("stream ends early"));
        }
        if len > limit {
            return Err(Error::ValueTooLarge { size: len as u64, max: limit as u64 });
        }
        Ok(())
    }

    /// A count of items about to be decoded into `out`: each takes a byte at least, so
    /// more than the room left is refused before the loop (a forged count of 2^63 items
    /// would otherwise overflow `2 * n`).
    fn items(&self, n: u64, per_item: u64, out: &[u8]) -> Result<u64> {
        let room = self.limit.saturating_sub(out.len()) as u64;
        match n.checked_mul(per_item) {
            Some(total) if total <= room => Ok(total),
            _ => Err(Error::ValueTooLarge { size: n, max: room }),
        }
    }

    /// Token text into `self.scratch`.
    fn tokens(&mut self, t: &TokenText) -> Result<()> {
        let pool = &self.m.pool;
        self.scratch.clear();
        let (eos, esc) = (t.eos(), t.esc());
        let (mut p2, mut prev) = (eos as usize, eos as usize);
        let mut next_check = 4096;
        loop {
            let mut sym = esc;
            if !t.o2.is_empty() {
                let d = t.o2.get(tokens::ctx2(p2, prev));
                if d != NO_DIST {
                    sym = pool.get(d, &mut self.d);
                }
            }
            if sym == esc {
                let d = t.o1[prev];
                if d != NO_DIST {
                    sym = pool.get(d, &mut self.d);
                }
            }
            if sym == esc {
                sym = pool.get(t.o0, &mut self.d);
            }
            // The model's check keeps order 0's symbols at or below the end.
            if sym >= eos {
                return if sym == eos { Ok(()) } else { Err(bad("escape in order 0")) };
            }
            t.push_token(sym, &mut self.scratch);
            (p2, prev) = (prev, sym as usize);
            if self.scratch.len() >= next_check {
                self.check_text()?;
                next_check += 4096;
            }
        }
    }

    /// Text into `self.scratch`.
    fn text(&mut self, tm: &TextModel, mut c: [u8; 3]) -> Result<()> {
        let (m, pool) = (self.m, &self.m.pool);
        self.scratch.clear();
        loop {
            let mut sym = ESC;
            if m.order >= 3 {
                let d = tm.o3.get(ctx3(c));
                if d != NO_DIST {
                    sym = pool.get(d, &mut self.d);
                }
            }
            if sym == ESC {
                let d = tm.o2.get(ctx2(c));
                if d != NO_DIST {
                    sym = pool.get(d, &mut self.d);
                }
            }
            if sym == ESC {
                let d = tm.o1[c[0] as usize];
                if d != NO_DIST {
                    sym = pool.get(d, &mut self.d);
                }
            }
            if sym == ESC {
                sym = pool.get(tm.o0, &mut self.d);
            }
            if sym >= EOS {
                return if sym == EOS { Ok(()) } else { Err(bad("escape in order 0")) };
            }
            self.scratch.push(sym as u8);
            c = [sym as u8, c[0], c[1]];
            if self.scratch.len() & 0xfff == 0 {
                self.check_text()?;
            }
        }
    }

    fn put_str(out: &mut Vec<u8>, parts: &[&[u8]]) {
        out.push(value::STR);
        put_varint(out, parts.iter().map(|p| p.len() as u64).sum());
        for p in parts {
            out.extend_from_slice(p);
        }
    }

    fn string(&mut self, fm: &FieldModel, out: &mut Vec<u8>, t: &dyn Tables) -> Result<()> {
        if fm.sval_dist != NO_DIST {
            let s = self.m.pool.get(fm.sval_dist, &mut self.d);
            if s > 0 {
                let v = fm.svals.get(s as usize - 1).ok_or_else(|| bad("value symbol"))?;
                Self::put_str(out, &[v.as_bytes()]);
                return Ok(());
            }
        }
        let (prefix, c): (&[u8], [u8; 3]) = if fm.url_dist == NO_DIST {
            (b"", [0; 3])
        } else {
            match self.m.pool.get(fm.url_dist, &mut self.d) {
                0 => (b"", [0; 3]),
                1 => {
                    let id = self.count(fm.clen)?;
                    let d = u32::try_from(id).ok().and_then(|id| t.domain(id));
                    let d = d.ok_or_else(|| bad("domain id not in the table"))?.as_bytes();
                    (d, last3(d))
                }
                s => {
                    let p = fm.prefixes.get(s as usize - 2).ok_or_else(|| bad("prefix symbol"))?;
                    (p.as_bytes(), last3(p.as_bytes()))
                }
            }
        };
        match &fm.tok {
            Some(tt) => self.tokens(tt)?,
            None => self.text(&fm.text, c)?,
        }
        let scratch = std::mem::take(&mut self.scratch);
        if std::str::from_utf8(&scratch).is_err() {
            return Err(bad("invalid UTF-8 in text"));
        }
        Self::put_str(out, &[prefix, &scratch]);
        self.scratch = scratch;
        Ok(())
    }

    fn value(&mut self, out: &mut Vec<u8>, field: u32, t: &dyn Tables, depth: usize) -> Result<()> {
        if depth > value::MAX_DEPTH {
            return Err(bad("nesting too deep"));
        }
        self.check(out)?;
        let m = self.m;
        let fm = m.field(field);
        let tag = m.pool.get(fm.tags, &mut self.d) as u8;
        out.push(if tag == TAG_DICTANY { value::DICT } else { tag });
        match tag {
            value::NONE | value::FALSE | value::TRUE => {}
            value::INT => {
                let v = if fm.ival_dist != NO_DIST {
                    match m.pool.get(fm.ival_dist, &mut self.d) {
                        0 => None,
                        s => Some(*fm.ivals.get(s as usize - 1).ok_or_else(|| bad("int symbol"))?),
                    }
                } else {
                    None
                };
                let z = match v {
                    Some(v) => zigzag(v),
                    None => self.count(fm.ilen)?,
                };
                put_varint(out, z);
            }
            value::STR => {
                out.pop();
                self.string(fm, out, t)?;
            }
            value::LIST | value::TUPLE => {
                let n = self.count(fm.clen)?;
                self.items(n, 1, out)?;
                put_varint(out, n);
                for _ in 0..n {
                    self.value(out, field, t, depth + 1)?;
                }
            }
            TAG_DICTANY => {
                let n = self.count(fm.clen)?;
                let items = self.items(n, 2, out)?;
                put_varint(out, n);
                for _ in 0..items {
                    self.value(out, GENERIC_FIELD, t, depth + 1)?;
                }
            }
            value::DICT => {
                let n = self.count(fm.clen)?;
                self.items(n, 2, out)?;
                put_varint(out, n);
                let mut prev = 0u32;
                for _ in 0..n {
                    let id = match m.trans.get(&prev) {
                        Some(tr) => match m.pool.get(tr.dist, &mut self.d) {
                            0 => self.count(m.generic.clen)?,
                            s => *tr.ids.get(s as usize - 1).ok_or_else(|| bad("field symbol"))?
                                as u64,
                        },
                        None => {
                            m.pool.get(m.trans_any, &mut self.d);
                            self.count(m.generic.clen)?
                        }
                    };
                    let id = u32::try_from(id).map_err(|_| bad("field id"))?;
                    let name = t.field_name(id).ok_or_else(|| bad("field id not in the table"))?;
                    Self::put_str(out, &[name.as_bytes()]);
                    prev = id.wrapping_add(1);
                    self.value(out, id, t, depth + 1)?;
                }
            }
            value::BIGINT | value::FLOAT | value::BYTES | value::PICKLE | value::ZSET => {
                let n = self.count(fm.clen)?;
                if n > self.limit.saturating_sub(out.len()) as u64 {
                    let size = (out.len() as u64).saturating_add(n);
                    return Err(Error::ValueTooLarge { size, max: self.limit as u64 });
                }
                let at = out.len() - 1; // the tag
                for i in 0..n {
                    let b = self.d.peek(8);
                    self.d.advance(b, 1, 8);
                    out.push(b as u8);
                    if i & 0xfff == 0 {
                        self.check(out)?;
                    }
                }
                // The bytes are the value's own encoding after its tag: a forged stream
                // could give a length that does not match them (found by fuzzing), which
                // must not decode cleanly.
                let mut r = Reader::new(&out[at..]);
                value::skip(&mut r, depth)?;
                if !r.at_end() {
                    return Err(bad("a raw value's bytes do not match its encoding"));
                }
            }
            _ => return Err(bad("unknown value tag")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
