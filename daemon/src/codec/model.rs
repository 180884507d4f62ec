//! A trained model: per-field distributions for value types, frequent whole values, URL
//! prefixes, integers, and a PPM-style byte model for text (order-2 contexts by default,
//! order-3 in compact mode), falling back through lower orders by escape symbols.
//!
//! A model is built by [`train`] from sample values, serialised into the records file's
//! table log ([`Model::to_bytes`]) and loaded by every reader ([`Model::from_bytes`], which
//! checks everything: a corrupt model is an error, never a panic).

use std::collections::HashMap;

use super::dist::{CtxMap, DistId, Pool, NO_DIST};
use super::tokens::{TokenText, MAX_TOKENS};
use super::{
    is_url_start, url_domain_end, FxBuild, Tables, EOS, ESC, GENERIC_FIELD, NTAGS, TAG_DICTANY,
};
use crate::error::{Error, Result};
use crate::value::{self, put_varint, zigzag, Reader};

type Map<K, V> = HashMap<K, V, FxBuild>;

/// Models as written since distributions learned from few observations store their counts
/// (a flag in each distribution's entry count); [`MODEL_MAGIC_V1`] ones are still read.
pub const MODEL_MAGIC: &[u8; 4] = b"SRM2";
/// Models whose distributions all store quantised frequencies.
pub const MODEL_MAGIC_V1: &[u8; 4] = b"SRM1";
/// Whole values kept per field at most (each needs a 12-bit frequency >= 1).
const MAX_TABLE: usize = 1500;
/// A string or int is kept as a whole value if it occurs at least this often in the sample.
const MIN_REPEAT: usize = 4;
/// Text contexts seen fewer times than this in the sample are left to lower orders. Measured
/// on the links corpus (`examples/codec_eval.rs`, trained on 112k of 562k records; B/record
/// of records + model): order 3 with min 300 -> 30.0 + 0.9; min 100 -> 29.3 + 1.4; min 30 ->
/// 29.0 + 2.1; min 1000 -> 31.9 + 0.5; order 2 (min 6) -> 33.9 + 0.9. Decode time did not
/// change with the model's size (it is bound by the latency of each symbol's dependent loads,
/// not by cache misses), so the default keeps the smallest model near the best total, and
/// compact keeps more contexts (smaller records, a bigger model: it pays off only for stores
/// with several times more records than the corpus).
const MIN_CTX_FAST: u64 = 300;
const MIN_CTX_COMPACT: u64 = 30;
/// Token contexts seen fewer times go to order 0 (token text).
const MIN_CTX_TOKENS: u64 = 30;
/// `Model::order` of models whose text is tokens ([`super::tokens`]): the default since
/// model format 4; 3 (the compact codec, and models made before) is the order-3 byte model.
pub const TOKEN_ORDER: u8 = 4;
/// `Model::order` of compact models since model format 5: token text with order-2 token
/// contexts too (before, compact models were order 3, the byte model with more contexts).
pub const TOKEN2_ORDER: u8 = 5;
/// Pairs of tokens seen fewer times go to order 1 (compact token text).
const MIN_CTX_TOKENS2: u64 = 60;
/// A field gets its own model from this many sample values; rarer ones use the generic one.
const MIN_FIELD: usize = 64;

/// Dense order-2 contexts or hashed order-3 contexts.
#[derive(Debug, Default)]
pub struct TextModel {
    pub o0: DistId,
    pub o1: Vec<DistId>,
    pub o2: CtxMap,
    pub o3: CtxMap,
}

#[derive(Debug, Default)]
pub struct FieldModel {
    pub tags: DistId,
    /// Frequent whole strings; symbol 0 = literal, i + 1 = svals[i].
    pub svals: Vec<Box<str>>,
    pub svals_map: HashMap<Box<str>, u16>,
    pub sval_dist: DistId,
    /// URL prefixes; symbol 0 = not a URL, 1 = a URL with a domain-table host, i + 2 = prefix i.
    pub prefixes: Vec<Box<str>>,
    pub prefix_map: HashMap<Box<str>, u16>,
    pub url_dist: DistId,
    pub text: TextModel,
    /// Token text (models of [`TOKEN_ORDER`]): used instead of `text`.
    pub tok: Option<TokenText>,
    pub ivals: Vec<i64>,
    pub ivals_map: Map<i64, u16>,
    pub ival_dist: DistId,
    /// Bit length (0..=64) of zigzag ints, and of counts (lengths, container sizes, ids).
    pub ilen: DistId,
    pub clen: DistId,
}

/// Field-order model: after field `prev` (or the start of a dict), which field comes next.
#[derive(Debug, Default)]
pub struct Trans {
    /// Symbol 0 = a field outside `ids` (its id follows), i + 1 = ids[i].
    pub ids: Vec<u32>,
    pub dist: DistId,
}

#[derive(Debug, Default)]
pub struct Model {
    pub order: u8,
    pub pool: Pool,
    pub generic: FieldModel,
    pub fields: Map<u32, FieldModel>,
    /// Key: previous field id + 1, or 0 at the start of a dict.
    pub trans: Map<u32, Trans>,
    /// Used when `trans` has no entry: only the escape symbol.
    pub trans_any: DistId,
}

impl Model {
    #[inline]
    pub fn field(&self, id: u32) -> &FieldModel {
        self.fields.get(&id).unwrap_or(&self.generic)
    }

    /// Renumber field ids (`map`: old id -> new id; ids not in it stay). A model trained in
    /// the background names fields by ids it assigned itself; the daemon, installing it,
    /// maps them to the ids the table log gave the same names.
    pub fn remap_fields(&mut self, map: &HashMap<u32, u32>) {
        if map.is_empty() {
            return;
        }
        let id = |x: u32| map.get(&x).copied().unwrap_or(x);
        self.fields =
            std::mem::take(&mut self.fields).into_iter().map(|(k, v)| (id(k), v)).collect();
        // `trans` keys are previous field id + 1 (0: the start of a dict).
        self.trans = std::mem::take(&mut self.trans)
            .into_iter()
            .map(|(k, mut t)| {
                for x in t.ids.iter_mut() {
                    *x = id(*x);
                }
                (if k == 0 { 0 } else { id(k - 1) + 1 }, t)
            })
            .collect();
    }
}

// ---------------------------------------------------------------------------------------
// Training

#[derive(Default)]
struct FieldSample {
    tags: [u64; NTAGS],
    strs: Vec<String>,
    ints: Vec<i64>,
    counts: Vec<u64>,
    nvalues: usize,
}

/// Walks sample values, sorting what they hold by field.
struct Collector<'t> {
    tables: &'t mut dyn Tables,
    fields: HashMap<u32, FieldSample>,
    trans: HashMap<u32, HashMap<u32, u64>>,
}

impl Collector<'_> {
    fn value(&mut self, r: &mut Reader<'_>, field: u32, depth: usize) -> Result<()> {
        if depth > value::MAX_DEPTH {
            return Err(Error::Corrupted("nesting too deep".into()));
        }
        let start = r.pos;
        let tag = r.u8()?;
        let mut t = tag as usize;
        if tag == value::DICT && !dict_has_str_keys(r)? {
            t = TAG_DICTANY as usize;
        }
        if t >= NTAGS {
            return Err(Error::Corrupted(format!("unknown tag {tag:#x}")));
        }
        let fs = self.fields.entry(field).or_default();
        fs.tags[t] += 1;
        fs.nvalues += 1;
        match tag {
            value::INT => {
                let v = value::unzigzag(r.varint()?);
                fs.ints.push(v);
            }
            value::STR => {
                let s = r.lbytes()?;
                let s = std::str::from_utf8(s).map_err(|_| Error::Corrupted("utf-8".into()))?;
                fs.strs.push(s.to_owned());
            }
            value::LIST | value::TUPLE => {
                let n = r.count(1)?;
                fs.counts.push(n as u64);
                for _ in 0..n {
                    self.value(r, field, depth + 1)?;
                }
            }
            value::DICT => {
                let n = r.count(2)?;
                fs.counts.push(n as u64);
                if t == TAG_DICTANY as usize {
                    for _ in 0..2 * n {
                        self.value(r, GENERIC_FIELD, depth + 1)?;
                    }
                } else {
                    let mut prev = 0u32;
                    for _ in 0..n {
                        r.u8()?;
                        let k = r.lbytes()?;
                        let k =
                            std::str::from_utf8(k).map_err(|_| Error::Corrupted("utf-8".into()))?;
                        let id = self.tables.field_id(k)?;
                        *self.trans.entry(prev).or_default().entry(id).or_default() += 1;
                        prev = id + 1;
                        self.value(r, id, depth + 1)?;
                    }
                }
            }
            _ => {
                r.pos = start;
                value::skip(r, depth)?;
            }
        }
        Ok(())
    }
}

/// Whether the dict at `r` (just after its tag) has only str keys; `r` is not moved.
pub fn dict_has_str_keys(r: &Reader<'_>) -> Result<bool> {
    let mut c = Reader { buf: r.buf, pos: r.pos };
    let n = c.count(2)?;
    for _ in 0..n {
        if c.buf.get(c.pos) != Some(&value::STR) {
            return Ok(false);
        }
        value::skip(&mut c, 1)?;
        value::skip(&mut c, 1)?;
    }
    Ok(true)
}

fn bitlen(v: u64) -> u16 {
    (64 - v.leading_zeros()) as u16
}

fn len_dist(pool: &mut Pool, vals: impl Iterator<Item = u64>) -> DistId {
    let mut c = [0u64; 65];
    for v in vals {
        c[bitlen(v) as usize] += 8;
    }
    // Every length stays encodable.
    let counts: Vec<(u16, u64)> = (0..65).map(|i| (i as u16, c[i] + 1)).collect();
    pool.add_counts(&counts)
}

/// Frequent values: those repeating at least MIN_REPEAT times, most frequent first; and the
/// distribution over "literal" (symbol 0) and each of them.
fn frequent<T: std::hash::Hash + Eq + Clone + Ord>(
    vals: &[T],
    pool: &mut Pool,
) -> (Vec<T>, DistId) {
    let mut c: HashMap<&T, u64> = HashMap::new();
    for v in vals {
        *c.entry(v).or_default() += 1;
    }
    let mut top: Vec<(&T, u64)> = c.into_iter().filter(|x| x.1 >= MIN_REPEAT as u64).collect();
    top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    top.truncate(MAX_TABLE);
    if top.is_empty() {
        return (Vec::new(), NO_DIST);
    }
    let covered: u64 = top.iter().map(|x| x.1).sum();
    let lit = (vals.len() as u64 - covered).max(1);
    let mut counts = vec![(0u16, lit)];
    counts.extend(top.iter().enumerate().map(|(i, x)| (i as u16 + 1, x.1)));
    let d = pool.add_counts(&counts);
    (top.into_iter().map(|x| x.0.clone()).collect(), d)
}

/// The text a string leaves for the byte model after its URL prefix, and the context bytes
/// it starts from.
pub fn text_part<'s>(s: &'s str, fm: &FieldModel, tables: &dyn Tables) -> (&'s str, [u8; 3]) {
    if fm.url_dist == NO_DIST || !is_url_start(s) {
        return (s, [0; 3]);
    }
    let de = url_domain_end(s);
    if let Some(p) = super::longest_prefix(s, de, fm) {
        return (&s[p.len()..], last3(p.as_bytes()));
    }
    let _ = tables;
    (&s[de..], last3(&s.as_bytes()[..de]))
}

pub fn last3(b: &[u8]) -> [u8; 3] {
    let n = b.len();
    [
        if n >= 1 { b[n - 1] } else { 0 },
        if n >= 2 { b[n - 2] } else { 0 },
        if n >= 3 { b[n - 3] } else { 0 },
    ]
}

#[inline]
pub fn ctx2(c: [u8; 3]) -> u32 {
    (c[0] as u32) | ((c[1] as u32) << 8)
}

#[inline]
pub fn ctx3(c: [u8; 3]) -> u32 {
    (c[0] as u32) | ((c[1] as u32) << 8) | ((c[2] as u32) << 16)
}

fn train_text(pool: &mut Pool, texts: &[(&str, [u8; 3])], order: u8, min_ctx: u64) -> TextModel {
    let mut c0 = vec![0u64; 257];
    let mut c1: Vec<Map<u16, u64>> = vec![Map::default(); 256];
    let mut c2: Map<u32, Map<u16, u64>> = Map::default();
    let mut c3: Map<u32, Map<u16, u64>> = Map::default();
    for (s, start) in texts {
        let mut c = *start;
        for sym in s.bytes().map(|b| b as u16).chain(std::iter::once(EOS)) {
            c0[sym as usize] += 1;
            *c1[c[0] as usize].entry(sym).or_default() += 1;
            *c2.entry(ctx2(c)).or_default().entry(sym).or_default() += 1;
            if order >= 3 {
                *c3.entry(ctx3(c)).or_default().entry(sym).or_default() += 1;
            }
            c = [sym as u8, c[0], c[1]];
        }
    }
    // Order 0 holds every symbol, so anything can be coded.
    let counts: Vec<(u16, u64)> = (0..257u16).map(|s| (s, c0[s as usize] * 4 + 1)).collect();
    let o0 = pool.add_counts(&counts);
    let mut ctx_dist = |m: &Map<u16, u64>| -> DistId {
        let total: u64 = m.values().sum();
        if total < min_ctx {
            return NO_DIST;
        }
        // Symbols seen once are left to the lower order; the escape weighs 3/4 of the number
        // of distinct symbols (PPM method C, scaled: measured best of 1/2, 3/4 and 1).
        let kept: Vec<(u16, u64)> =
            m.iter().filter(|x| *x.1 >= 2).map(|(&s, &n)| (s, n * 4)).collect();
        let esc = (m.len() as u64 * 3).max(1);
        let mut counts = kept;
        counts.push((ESC, esc));
        pool.add_counts(&counts)
    };
    // Distributions are laid out most used first, so that the ones most records touch share
    // cache lines and pages (measured: decoding is bound by the first load of each).
    let mut all: Vec<(u64, u8, u32, &Map<u16, u64>)> = Vec::new();
    for (k, m) in c1.iter().enumerate() {
        all.push((m.values().sum(), 1, k as u32, m));
    }
    for (order, map) in [(2u8, &c2), (3, &c3)] {
        for (&k, m) in map.iter() {
            all.push((m.values().sum(), order, k, m));
        }
    }
    all.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut o1 = vec![NO_DIST; 256];
    let (mut o2, mut o3) = (CtxMap::default(), CtxMap::default());
    for (_, order, k, m) in all {
        let d = ctx_dist(m);
        if d == NO_DIST {
            continue;
        }
        match order {
            1 => o1[k as usize] = d,
            2 => o2.insert(k, d),
            _ => o3.insert(k, d),
        }
    }
    TextModel { o0, o1, o2, o3 }
}

fn train_field(pool: &mut Pool, fs: &FieldSample, p: (u8, u64), tables: &dyn Tables) -> FieldModel {
    let counts: Vec<(u16, u64)> = (0..NTAGS).map(|t| (t as u16, fs.tags[t] * 16 + 1)).collect();
    let mut fm = FieldModel { tags: pool.add_counts(&counts), ..Default::default() };
    let svals: Vec<&str> = fs.strs.iter().map(|s| s.as_str()).filter(|s| s.len() <= 256).collect();
    let (top, d) = frequent(&svals, pool);
    fm.sval_dist = d;
    fm.svals = top.iter().map(|s| Box::<str>::from(*s)).collect();
    fm.svals_map = fm.svals.iter().enumerate().map(|(i, s)| (s.clone(), i as u16)).collect();
    let rest: Vec<&str> =
        fs.strs.iter().map(|s| s.as_str()).filter(|s| !fm.svals_map.contains_key(*s)).collect();
    // URL mode when most strings are URLs: prefixes (scheme + host, with and without the
    // first path segment) that repeat become symbols; other hosts go to the domain table.
    let nurl = rest.iter().filter(|s| is_url_start(s)).count();
    if nurl * 2 > rest.len() && nurl >= MIN_FIELD {
        let mut cands: Vec<&str> = Vec::new();
        let mut nonurl = 1u64;
        for s in &rest {
            if !is_url_start(s) {
                nonurl += 1;
                continue;
            }
            let de = url_domain_end(s);
            cands.push(&s[..de]);
            if let Some(p) = super::first_segment_end(s, de) {
                cands.push(&s[..p]);
            }
        }
        let mut c: HashMap<&str, u64> = HashMap::new();
        for p in &cands {
            *c.entry(p).or_default() += 1;
        }
        let mut top: Vec<(&str, u64)> =
            c.into_iter().filter(|x| x.1 >= 8 && x.0.len() <= 200).collect();
        top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        top.truncate(MAX_TABLE);
        fm.prefixes = top.iter().map(|x| Box::<str>::from(x.0)).collect();
        fm.prefix_map =
            fm.prefixes.iter().enumerate().map(|(i, s)| (s.clone(), i as u16)).collect();
        // Count which symbol each URL actually uses (longest prefix wins).
        fm.url_dist = 0; // placeholder so longest_prefix sees URL mode
        let mut uc: HashMap<u16, u64> = HashMap::new();
        let mut newdom = 1u64;
        for s in &rest {
            if !is_url_start(s) {
                continue;
            }
            let de = url_domain_end(s);
            match super::longest_prefix(s, de, &fm) {
                Some(p) => *uc.entry(fm.prefix_map[p] + 2).or_default() += 1,
                None => newdom += 1,
            }
        }
        let mut counts = vec![(0u16, nonurl), (1u16, newdom)];
        counts.extend(
            (0..fm.prefixes.len() as u16).map(|i| (i + 2, uc.get(&(i + 2)).unwrap_or(&0) + 1)),
        );
        fm.url_dist = pool.add_counts(&counts);
    } else {
        fm.url_dist = NO_DIST;
    }
    let texts: Vec<(&str, [u8; 3])> = rest.iter().map(|s| text_part(s, &fm, tables)).collect();
    if p.0 >= TOKEN_ORDER {
        let texts: Vec<&[u8]> = texts.iter().map(|t| t.0.as_bytes()).collect();
        let min2 = (p.0 == TOKEN2_ORDER).then_some(MIN_CTX_TOKENS2);
        fm.tok = Some(super::tokens::train(pool, &texts, MIN_CTX_TOKENS, min2));
    } else {
        fm.text = train_text(pool, &texts, p.0, p.1);
    }
    let (iv, d) = frequent(&fs.ints, pool);
    fm.ivals = iv;
    fm.ival_dist = d;
    fm.ivals_map = fm.ivals.iter().enumerate().map(|(i, &v)| (v, i as u16)).collect();
    let lits = fs.ints.iter().filter(|v| !fm.ivals_map.contains_key(v));
    fm.ilen = len_dist(pool, lits.map(|&v| zigzag(v)));
    fm.clen = len_dist(pool, fs.counts.iter().copied());
    fm
}

/// Train a model from sample values (each in the value encoding), for the default mode or
/// the compact one. Field names met are added to `tables`.
pub fn train(samples: &[&[u8]], compact: bool, tables: &mut dyn Tables) -> Result<Model> {
    let order = if compact { TOKEN2_ORDER } else { TOKEN_ORDER };
    let p = (order, if compact { MIN_CTX_COMPACT } else { MIN_CTX_FAST });
    let mut col = Collector { tables, fields: HashMap::new(), trans: HashMap::new() };
    for s in samples {
        let mut r = Reader::new(s);
        col.value(&mut r, GENERIC_FIELD, 0)?;
    }
    let Collector { tables, mut fields, trans } = col;
    let mut m = Model { order, ..Default::default() };
    // The generic model learns from every value, so unfamiliar fields still compress.
    let mut all = FieldSample::default();
    for fs in fields.values() {
        for t in 0..NTAGS {
            all.tags[t] += fs.tags[t];
        }
        all.strs.extend(fs.strs.iter().take(20_000).cloned());
        all.ints.extend(fs.ints.iter().take(20_000));
        all.counts.extend(fs.counts.iter().take(20_000));
    }
    m.generic = train_field(&mut m.pool, &all, p, tables);
    let mut ids: Vec<u32> = fields.keys().copied().filter(|&f| f != GENERIC_FIELD).collect();
    ids.sort_unstable();
    for id in ids {
        let fs = fields.remove(&id).unwrap();
        if fs.nvalues >= MIN_FIELD {
            let fm = train_field(&mut m.pool, &fs, p, tables);
            m.fields.insert(id, fm);
        }
    }
    let mut prevs: Vec<&u32> = trans.keys().collect();
    prevs.sort_unstable();
    for prev in prevs {
        let next = &trans[prev];
        let mut top: Vec<(u32, u64)> =
            next.iter().filter(|x| *x.1 >= 2).map(|(&a, &b)| (a, b)).collect();
        top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top.truncate(MAX_TABLE);
        let total: u64 = next.values().sum();
        if top.is_empty() {
            continue;
        }
        let esc = (total - top.iter().map(|x| x.1).sum::<u64>()).max(1) + 1;
        let mut counts = vec![(0u16, esc)];
        counts.extend(top.iter().enumerate().map(|(i, x)| (i as u16 + 1, x.1 * 4)));
        let dist = m.pool.add_counts(&counts);
        m.trans.insert(*prev, Trans { ids: top.iter().map(|x| x.0).collect(), dist });
    }
    m.trans_any = m.pool.add_counts(&[(0, 1)]);
    Ok(m)
}

// ---------------------------------------------------------------------------------------
// Serialisation

/// A model being written: its bytes, the pool's distribution ids (ascending) and what is
/// written for each (its ordinal; in the previous format, its offset there).
struct W(Vec<u8>, Vec<DistId>, Vec<u32>);

impl W {
    fn v(&mut self, x: u64) {
        put_varint(&mut self.0, x);
    }
    fn d(&mut self, d: DistId) {
        let x = match self.1.binary_search(&d) {
            _ if d == NO_DIST => 0,
            Ok(k) => self.2[k] as u64 + 1,
            Err(_) => unreachable!("a distribution of another pool"),
        };
        self.v(x);
    }
    fn s(&mut self, s: &str) {
        self.v(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }
}

/// The ids the previous model format gave distributions of these sizes, in order: their
/// offsets in its pool layout.
fn v1_offsets(sizes: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut at = 0u32;
    sizes
        .map(|n| {
            let d = at;
            at = super::dist::v1_next(d, n);
            d
        })
        .collect()
}

struct R<'a> {
    r: Reader<'a>,
    /// The pool's distribution ids, ascending.
    ids: Vec<DistId>,
    /// What the model's bytes call each of them, ascending: ordinals (0, 1, ...), or in the
    /// previous format their offsets in that format's pool.
    written: Vec<u32>,
}

impl R<'_> {
    fn v(&mut self) -> Result<u64> {
        self.r.varint()
    }
    /// A count of entries of at least `per_item` bytes each, at most `max`: bounded by the
    /// bytes left too, so a forged count cannot make a large allocation.
    fn entries(&mut self, max: u64, per_item: usize) -> Result<usize> {
        let n = self.r.count(per_item)?;
        if n as u64 > max {
            return Err(Error::Corrupted(format!("model: count {n} over {max}")));
        }
        Ok(n)
    }
    fn n(&mut self, max: u64) -> Result<usize> {
        let n = self.v()?;
        if n > max {
            return Err(Error::Corrupted(format!("model: count {n} over {max}")));
        }
        Ok(n as usize)
    }
    fn d(&mut self) -> Result<DistId> {
        match self.v()? {
            0 => Ok(NO_DIST),
            x => match u32::try_from(x - 1).map(|x| self.written.binary_search(&x)) {
                Ok(Ok(k)) => Ok(self.ids[k]),
                _ => Err(Error::Corrupted(format!("model: no distribution {x}"))),
            },
        }
    }
    fn dd(&mut self) -> Result<DistId> {
        let d = self.d()?;
        if d == NO_DIST {
            return Err(Error::Corrupted("model: missing distribution".into()));
        }
        Ok(d)
    }
    fn s(&mut self) -> Result<Box<str>> {
        let b = self.r.lbytes()?;
        Ok(std::str::from_utf8(b).map_err(|_| Error::Corrupted("model: utf-8".into()))?.into())
    }
}

fn write_field(w: &mut W, f: &FieldModel, order: u8) {
    w.d(f.tags);
    w.v(f.svals.len() as u64);
    for s in &f.svals {
        w.s(s);
    }
    w.d(f.sval_dist);
    w.v(f.prefixes.len() as u64);
    for s in &f.prefixes {
        w.s(s);
    }
    w.d(f.url_dist);
    if order >= TOKEN_ORDER {
        let t = f.tok.as_ref().expect("a token model's fields have token text");
        w.v(t.len() as u64 - 256);
        for m in t.merged() {
            w.v(m.len() as u64);
            w.0.extend_from_slice(m);
        }
        w.d(t.o0);
        for &d in &t.o1 {
            w.d(d);
        }
        if order == TOKEN2_ORDER {
            w.v(t.o2.len() as u64);
            for (k, d) in t.o2.iter() {
                w.v(k as u64);
                w.d(d);
            }
        }
    } else {
        w.d(f.text.o0);
        for &d in &f.text.o1 {
            w.d(d);
        }
        for o in [&f.text.o2, &f.text.o3] {
            w.v(o.len() as u64);
            for (k, d) in o.iter() {
                w.v(k as u64);
                w.d(d);
            }
        }
    }
    w.v(f.ivals.len() as u64);
    for &v in &f.ivals {
        w.v(zigzag(v));
    }
    w.d(f.ival_dist);
    w.d(f.ilen);
    w.d(f.clen);
}

fn read_field(r: &mut R<'_>, pool: &Pool, order: u8) -> Result<FieldModel> {
    let mut f = FieldModel { tags: r.dd()?, ..Default::default() };
    let n = r.n(MAX_TABLE as u64)?;
    for _ in 0..n {
        f.svals.push(r.s()?);
    }
    f.sval_dist = r.d()?;
    check_table(pool, f.sval_dist, f.svals.len(), 0)?;
    f.svals_map = f.svals.iter().enumerate().map(|(i, s)| (s.clone(), i as u16)).collect();
    let n = r.n(MAX_TABLE as u64)?;
    for _ in 0..n {
        f.prefixes.push(r.s()?);
    }
    f.url_dist = r.d()?;
    check_table(pool, f.url_dist, f.prefixes.len(), 1)?;
    f.prefix_map = f.prefixes.iter().enumerate().map(|(i, s)| (s.clone(), i as u16)).collect();
    if order >= TOKEN_ORDER {
        let n = r.n((MAX_TOKENS - 256) as u64)?;
        let mut merged = Vec::with_capacity(n);
        for _ in 0..n {
            merged.push(r.r.lbytes()?.to_vec());
        }
        let mut t = TokenText::from_merged(&merged)
            .ok_or_else(|| Error::Corrupted("model: bad token table".into()))?;
        t.o0 = r.dd()?;
        check_syms(pool, t.o0, t.eos() + 1)?;
        for _ in 0..=t.len() {
            let d = r.d()?;
            check_syms(pool, d, t.esc() + 1)?;
            t.o1.push(d);
        }
        if order == TOKEN2_ORDER {
            let max = super::tokens::ctx2(t.len(), t.len()) as u64;
            let n = r.entries(max + 1, 2)?;
            t.o2 = CtxMap::with_capacity(n);
            for _ in 0..n {
                let k = r.n(max)? as u32;
                let d = r.dd()?;
                check_syms(pool, d, t.esc() + 1)?;
                t.o2.insert(k, d);
            }
        }
        f.tok = Some(t);
    } else {
        read_text(r, pool, &mut f)?;
    }
    let n = r.n(MAX_TABLE as u64)?;
    for _ in 0..n {
        f.ivals.push(value::unzigzag(r.v()?));
    }
    f.ival_dist = r.d()?;
    check_table(pool, f.ival_dist, f.ivals.len(), 0)?;
    f.ivals_map = f.ivals.iter().enumerate().map(|(i, &v)| (v, i as u16)).collect();
    f.ilen = r.dd()?;
    f.clen = r.dd()?;
    check_syms(pool, f.tags, NTAGS as u16)?;
    check_syms(pool, f.ilen, 65)?;
    check_syms(pool, f.clen, 65)?;
    Ok(f)
}

/// The order-3 byte model of a field (models before [`TOKEN_ORDER`], and compact ones).
fn read_text(r: &mut R<'_>, pool: &Pool, f: &mut FieldModel) -> Result<()> {
    f.text.o0 = r.dd()?;
    check_syms(pool, f.text.o0, 257)?;
    for _ in 0..256 {
        let d = r.d()?;
        check_syms(pool, d, 258)?;
        f.text.o1.push(d);
    }
    for (o, max) in [(&mut f.text.o2, 1u64 << 16), (&mut f.text.o3, 1 << 24)] {
        let n = r.entries(max, 2)?;
        *o = CtxMap::with_capacity(n);
        for _ in 0..n {
            let k = r.n(max - 1)? as u32;
            let d = r.dd()?;
            check_syms(pool, d, 258)?;
            o.insert(k, d);
        }
    }
    Ok(())
}

/// Every symbol of `d` is below `limit`.
fn check_syms(pool: &Pool, d: DistId, limit: u16) -> Result<()> {
    if d != NO_DIST && pool.entries(d).iter().any(|e| e.0 >= limit) {
        return Err(Error::Corrupted("model: symbol out of range".into()));
    }
    Ok(())
}

/// A table's distribution: symbols 0..=extra are special, then one per entry.
fn check_table(pool: &Pool, d: DistId, n: usize, extra: u16) -> Result<()> {
    if d == NO_DIST {
        return if n == 0 {
            Ok(())
        } else {
            Err(Error::Corrupted("model: table without dist".into()))
        };
    }
    check_syms(pool, d, (n as u16) + extra + 1)
}

impl Model {
    pub fn to_bytes(&self) -> Vec<u8> {
        self.write(false)
    }

    /// The model as the previous version wrote it ([`MODEL_MAGIC_V1`]: frequencies only).
    #[cfg(test)]
    pub(crate) fn to_bytes_v1(&self) -> Vec<u8> {
        self.write(true)
    }

    fn write(&self, v1: bool) -> Vec<u8> {
        let ids: Vec<DistId> = self.pool.ids().collect();
        let written = match v1 {
            true => v1_offsets(ids.iter().map(|&d| self.pool.entries(d).len() as u32)),
            false => (0..ids.len() as u32).collect(),
        };
        let mut w = W(Vec::new(), ids, written);
        w.0.extend_from_slice(if v1 { MODEL_MAGIC_V1 } else { MODEL_MAGIC });
        w.v(self.order as u64);
        w.v(self.pool.len() as u64);
        for d in self.pool.ids() {
            let e = self.pool.entries(d);
            let counts = self.pool.counts(d).filter(|_| !v1);
            match v1 {
                true => w.v(e.len() as u64),
                false => w.v((e.len() as u64) << 1 | counts.is_some() as u64),
            }
            let mut prev = 0u16;
            for (i, (s, f)) in e.into_iter().enumerate() {
                w.v((s - prev) as u64);
                w.v(counts.map_or(f, |c| c[i]) as u64);
                prev = s;
            }
        }
        write_field(&mut w, &self.generic, self.order);
        let mut ids: Vec<&u32> = self.fields.keys().collect();
        ids.sort_unstable();
        w.v(ids.len() as u64);
        for id in ids {
            w.v(*id as u64);
            write_field(&mut w, &self.fields[id], self.order);
        }
        let mut prevs: Vec<&u32> = self.trans.keys().collect();
        prevs.sort_unstable();
        w.v(prevs.len() as u64);
        for p in prevs {
            let t = &self.trans[p];
            w.v(*p as u64);
            w.v(t.ids.len() as u64);
            for &id in &t.ids {
                w.v(id as u64);
            }
            w.d(t.dist);
        }
        w.d(self.trans_any);
        w.0
    }

    pub fn from_bytes(buf: &[u8]) -> Result<Model> {
        let v1 = match buf.get(..4) {
            Some(m) if m == MODEL_MAGIC => false,
            Some(m) if m == MODEL_MAGIC_V1 => true,
            _ => return Err(Error::Corrupted("model: bad magic".into())),
        };
        let mut r = R { r: Reader { buf, pos: 4 }, ids: Vec::new(), written: Vec::new() };
        let mut m = Model { order: r.n(TOKEN2_ORDER as u64)? as u8, ..Default::default() };
        if m.order < 2 {
            return Err(Error::Corrupted("model: bad order".into()));
        }
        let nd = r.n(1 << 22)?;
        let (mut entries, mut sizes) = (Vec::new(), Vec::new());
        for _ in 0..nd {
            let (n, counted) = match v1 {
                true => (r.n(4096)?, false),
                false => {
                    let h = r.n(4096 << 1 | 1)?;
                    (h >> 1, h & 1 == 1)
                }
            };
            entries.clear();
            let mut s = 0u64;
            for i in 0..n {
                let delta = r.v()?;
                s += delta;
                if (i > 0 && delta == 0) || s > u16::MAX as u64 {
                    return Err(Error::Corrupted("model: bad symbol".into()));
                }
                let f = r.n(4096)?;
                entries.push((s as u16, f as u16));
            }
            if counted {
                m.pool.add_counted(&entries)?;
            } else {
                m.pool.add_quantized(&entries)?;
            }
            sizes.push(n as u32);
        }
        r.ids = m.pool.ids().collect();
        r.written = match v1 {
            true => v1_offsets(sizes.into_iter()),
            false => (0..r.ids.len() as u32).collect(),
        };
        m.generic = read_field(&mut r, &m.pool, m.order)?;
        let nf = r.n(1 << 20)?;
        for _ in 0..nf {
            let id = r.n(u32::MAX as u64)? as u32;
            let f = read_field(&mut r, &m.pool, m.order)?;
            m.fields.insert(id, f);
        }
        let nt = r.n(1 << 20)?;
        for _ in 0..nt {
            let p = r.n(u32::MAX as u64)? as u32;
            let n = r.n(MAX_TABLE as u64)?;
            let mut ids = Vec::with_capacity(n);
            for _ in 0..n {
                ids.push(r.n(u32::MAX as u64 - 1)? as u32);
            }
            let dist = r.dd()?;
            check_syms(&m.pool, dist, n as u16 + 1)?;
            m.trans.insert(p, Trans { ids, dist });
        }
        m.trans_any = r.dd()?;
        check_syms(&m.pool, m.trans_any, 1)?;
        if !r.r.at_end() {
            return Err(Error::Corrupted("model: trailing bytes".into()));
        }
        Ok(m)
    }
}
