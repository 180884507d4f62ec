//! Static symbol distributions: every distribution of a trained model lives in one pool,
//! quantised to 12-bit frequencies that sum to exactly 4096, so that every slot decodes to
//! some symbol (a corrupt stream decodes to garbage that the end check rejects, never to an
//! out-of-bounds read).

use super::rans::{Decoder, Encoder};
use crate::error::{Error, Result};

pub const SCALE: u32 = 12;
pub const TOT: u32 = 1 << SCALE;
/// Distributions with more entries than this get a 64-bucket table (slot / 64 -> first
/// candidate entry, 64 bytes after the entries), then a short scan: profiling showed the
/// bisection's unpredictable branches as the largest single cost of decoding.
const LINEAR_MAX: u32 = 16;
/// Up to this many entries the bucket table's u8 indexes reach; beyond, bisection.
const BUCKET_MAX: u32 = 255;
const BUCKET_WORDS: usize = 16;

/// Bucket words of a distribution of `n` entries, between its header and its entries.
#[inline(always)]
fn extra_words(n: u32) -> usize {
    if n <= LINEAR_MAX {
        0
    } else if n <= BUCKET_MAX {
        BUCKET_WORDS
    } else {
        WIDE_WORDS
    }
}

/// Where the model format before `SRM2` (whose ids were pool offsets) placed the next
/// distribution after one of `n` entries at `d`: its ids are mapped to this pool's.
pub fn v1_next(d: u32, n: u32) -> u32 {
    d + n + 2 + if n > LINEAR_MAX && n <= BUCKET_MAX { BUCKET_WORDS as u32 } else { 0 }
}
/// A distribution's id is its offset in the pool: one word holding the entry count (and
/// rank number, see [`Ranks`]), then its bucket table if it has more than [`LINEAR_MAX`]
/// entries (64 u8 buckets up to [`BUCKET_MAX`], 256 u16 ones past it), then one word per
/// entry (cumulative frequency | symbol << 16), then a sentinel (4096). A decode step
/// touches one short contiguous run (the measured cost of decoding is cache misses:
/// separate arrays and 4 KiB slot tables made it 3x slower over a 2 MB model); the bucket
/// word's address depends on the id and the slot only, not on the header, so both loads
/// start at once. Models store ids as ordinals, so this layout is free to change.
pub type DistId = u32;
pub const NO_DIST: DistId = u32::MAX;

/// The pool of a model's distributions.
#[derive(Default, Debug)]
pub struct Pool {
    w: Vec<u32>,
    count: usize,
    /// Distributions that get a rank index, numbered from 1 in their header word's upper
    /// 16 bits (more than [`LINEAR_MAX`] entries, every symbol below [`RANK_SYMS`]).
    ranked: u32,
    /// The encoder's rank index, built on the first encode (see [`Ranks`]): readers, which
    /// only decode, never pay for it.
    ranks: std::sync::OnceLock<Ranks>,
    /// The counts of distributions learned from at most [`TOT`] observations, in entry
    /// order: a model stores these instead of the frequencies (smaller numbers: links'
    /// models 9% smaller compressed), and readers quantise them again ([`quantize`] is
    /// exact and deterministic).
    counted: std::collections::HashMap<DistId, Box<[u16]>>,
}

/// Buckets of a wide distribution's table (more than [`BUCKET_MAX`] entries: token
/// contexts), per `TOT / WIDE_BUCKETS` slots the index of the entry holding its first slot,
/// two u16 per word. A decode step scans at most one bucket's entries (one or two cache
/// lines) instead of bisecting over up to 2,048 (eleven dependent loads, unpredictable
/// branches).
const WIDE_BUCKETS: usize = 256;
const WIDE_WORDS: usize = WIDE_BUCKETS / 2;
const WIDE_SHIFT: u32 = SCALE - 8;

/// Symbols below this get a rank bitmap (every token id, the end and the escape).
const RANK_SYMS: usize = 2048;

/// Which entry holds a symbol, for distributions of more than [`LINEAR_MAX`] entries whose
/// symbols are all below [`RANK_SYMS`]: a presence bitmap and per-word counts, so the
/// encoder finds a symbol with two loads and a popcount. Binary search over the entries was
/// 35% of encoding time (profiled on the dev corpus). Per distribution, the bitmap reaches
/// its largest symbol only.
#[derive(Debug, Default)]
struct Ranks {
    /// Per ranked distribution: (first word in `bits`, words).
    at: Vec<(u32, u32)>,
    bits: Vec<u64>,
    /// Per word: the distribution's symbols in the words before it.
    before: Vec<u16>,
}

/// Quantise counts (symbol, count > 0) to frequencies >= 1 summing to [`TOT`].
pub fn quantize(counts: &[(u16, u64)]) -> Vec<(u16, u16)> {
    assert!(!counts.is_empty() && counts.len() <= TOT as usize / 2);
    let total: u64 = counts.iter().map(|c| c.1).sum();
    let mut f: Vec<(u16, i64)> = counts
        .iter()
        .map(|&(s, c)| (s, ((c as f64 * TOT as f64 / total as f64).round() as i64).max(1)))
        .collect();
    let mut diff = TOT as i64 - f.iter().map(|x| x.1).sum::<i64>();
    while diff != 0 {
        // Take from (or give to) the largest entry: the smallest relative error.
        let i = (0..f.len()).max_by_key(|&i| f[i].1).unwrap();
        if diff > 0 {
            f[i].1 += diff;
            diff = 0;
        } else {
            let take = (-diff).min(f[i].1 - 1);
            if take == 0 {
                break; // cannot happen: n <= TOT / 2
            }
            f[i].1 -= take;
            diff += take;
        }
    }
    f.into_iter().map(|(s, x)| (s, x as u16)).collect()
}

impl Pool {
    /// Number of distributions.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether `d` is the id of a distribution (ids come from untrusted model bytes).
    pub fn valid(&self, d: DistId) -> bool {
        self.ids().any(|x| x == d)
    }

    /// Every distribution id, in order.
    pub fn ids(&self) -> impl Iterator<Item = DistId> + '_ {
        let mut p = 0usize;
        std::iter::from_fn(move || {
            if p >= self.w.len() {
                return None;
            }
            let d = p as u32;
            let n = self.w[p] & 0xffff;
            p += n as usize + 2 + extra_words(n);
            Some(d)
        })
    }

    /// Add a distribution from counts; entries are sorted by symbol.
    pub fn add_counts(&mut self, counts: &[(u16, u64)]) -> DistId {
        let mut c: Vec<(u16, u64)> = counts.iter().copied().filter(|c| c.1 > 0).collect();
        c.sort_unstable_by_key(|x| x.0);
        let d = self.add_quantized(&quantize(&c)).expect("quantize produces a valid distribution");
        if c.iter().map(|x| x.1).sum::<u64>() <= TOT as u64 {
            self.counted.insert(d, c.iter().map(|x| x.1 as u16).collect());
        }
        d
    }

    /// Add a distribution from stored counts (symbol, count), as [`Pool::add_counts`] made
    /// it, checking them: ascending symbols, counts of at least 1 summing to at most
    /// [`TOT`], at most `TOT / 2` entries.
    pub fn add_counted(&mut self, entries: &[(u16, u16)]) -> Result<DistId> {
        let total: u32 = entries.iter().map(|e| e.1 as u32).sum();
        let sorted = entries.windows(2).all(|w| w[0].0 < w[1].0);
        if entries.is_empty()
            || entries.len() > TOT as usize / 2
            || total > TOT
            || !sorted
            || entries.iter().any(|e| e.1 == 0)
        {
            return Err(Error::Corrupted("model: bad distribution counts".into()));
        }
        let c: Vec<(u16, u64)> = entries.iter().map(|&(s, n)| (s, n as u64)).collect();
        let d = self.add_quantized(&quantize(&c))?;
        self.counted.insert(d, entries.iter().map(|e| e.1).collect());
        Ok(d)
    }

    /// The counts `d` was quantised from, if it came from at most [`TOT`] observations.
    pub fn counts(&self, d: DistId) -> Option<&[u16]> {
        self.counted.get(&d).map(|c| &c[..])
    }

    /// Add a quantised distribution (as stored in a model), checking it.
    pub fn add_quantized(&mut self, entries: &[(u16, u16)]) -> Result<DistId> {
        let sum: u32 = entries.iter().map(|e| e.1 as u32).sum();
        let sorted = entries.windows(2).all(|w| w[0].0 < w[1].0);
        if entries.is_empty() || sum != TOT || !sorted || entries.iter().any(|e| e.1 == 0) {
            return Err(Error::Corrupted("model: bad distribution".into()));
        }
        let base = self.w.len() as u32;
        let n = entries.len() as u32;
        let mut header = n;
        if n > LINEAR_MAX
            && entries.iter().all(|e| (e.0 as usize) < RANK_SYMS)
            && self.ranked < 0xffff
        {
            self.ranked += 1;
            header |= self.ranked << 16;
        }
        self.w.push(header);
        // The bucket table: per bucket of slots, the index of the entry holding its first
        // slot (the last entry whose start is at or below it).
        let mut starts = Vec::with_capacity(entries.len());
        let mut cum = 0u32;
        for e in entries {
            starts.push(cum);
            cum += e.1 as u32;
        }
        let holding = |slot: u32| starts.partition_point(|&c| c <= slot) - 1;
        if n > BUCKET_MAX {
            for k in (0..WIDE_BUCKETS as u32).step_by(2) {
                let (lo, hi) = (holding(k << WIDE_SHIFT), holding((k + 1) << WIDE_SHIFT));
                self.w.push(lo as u32 | (hi as u32) << 16);
            }
        } else if n > LINEAR_MAX {
            let buckets: Vec<u8> = (0..64u32).map(|k| holding(k * 64) as u8).collect();
            for c in buckets.chunks(4) {
                self.w.push(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            }
        }
        for (&(s, _), &c) in entries.iter().zip(&starts) {
            self.w.push(c | (s as u32) << 16);
        }
        self.w.push(TOT);
        self.count += 1;
        Ok(base)
    }

    /// The quantised entries of a distribution (for serialising).
    pub fn entries(&self, d: DistId) -> Vec<(u16, u16)> {
        let (b, n) = self.span(d);
        (0..n)
            .map(|i| {
                let (e, next) = (self.w[b + i], self.w[b + i + 1]);
                ((e >> 16) as u16, ((next & 0xffff) - (e & 0xffff)) as u16)
            })
            .collect()
    }

    /// Where `d`'s entries start in `w`, and how many there are.
    #[inline]
    fn span(&self, d: DistId) -> (usize, usize) {
        let n = self.w[d as usize] & 0xffff;
        (d as usize + 1 + extra_words(n), n as usize)
    }

    #[inline]
    fn find(&self, d: DistId, sym: u16) -> Option<usize> {
        let head = self.w[d as usize];
        let (b, n) = self.span(d);
        if head >> 16 != 0 {
            let r = self.ranks.get_or_init(|| self.build_ranks());
            if let Some(&(at, words)) = r.at.get((head >> 16) as usize - 1) {
                let w = sym as usize / 64;
                if w >= words as usize {
                    return None;
                }
                let (word, bit) = (r.bits[at as usize + w], 1u64 << (sym % 64));
                if word & bit == 0 {
                    return None;
                }
                let before = r.before[at as usize + w] as usize;
                return Some(b + before + (word & (bit - 1)).count_ones() as usize);
            }
        }
        let e = &self.w[b..b + n];
        e.binary_search_by_key(&sym, |&x| (x >> 16) as u16).ok().map(|i| b + i)
    }

    /// The rank index of every distribution whose header names one (in id order, as
    /// numbered by [`Pool::add_quantized`]).
    fn build_ranks(&self) -> Ranks {
        let mut r = Ranks::default();
        for d in self.ids() {
            let head = self.w[d as usize];
            if head >> 16 == 0 {
                continue;
            }
            let (b, n) = self.span(d);
            let syms = || self.w[b..b + n].iter().map(|&x| (x >> 16) as usize);
            let words = syms().max().unwrap_or(0) / 64 + 1;
            let at = r.bits.len();
            r.bits.resize(at + words, 0);
            for s in syms() {
                r.bits[at + s / 64] |= 1 << (s % 64);
            }
            let mut before = 0u16;
            for w in 0..words {
                r.before.push(before);
                before += r.bits[at + w].count_ones() as u16;
            }
            r.at.push((at as u32, words as u32));
        }
        r
    }

    /// Encode `sym`; false if the distribution does not contain it.
    #[inline]
    pub fn put(&self, d: DistId, sym: u16, e: &mut Encoder) -> bool {
        match self.find(d, sym) {
            Some(i) => {
                let cum = self.w[i] & 0xffff;
                e.put(cum, (self.w[i + 1] & 0xffff) - cum, SCALE);
                true
            }
            None => false,
        }
    }

    /// Decode one symbol.
    #[inline(always)]
    pub fn get(&self, d: DistId, dec: &mut Decoder<'_>) -> u16 {
        let head = self.w[d as usize];
        let (b, n) = (d as usize + 1, head & 0xffff);
        let slot = dec.peek(SCALE);
        // The bucket word's address needs only `d` and the slot: on the predicted branch it
        // loads beside the header, not after it.
        let mut i = if n <= LINEAR_MAX {
            b
        } else if n <= BUCKET_MAX {
            let word = self.w[b + (slot as usize >> 8)];
            b + BUCKET_WORDS + (word >> (((slot >> 6) & 3) * 8)) as u8 as usize
        } else {
            let word = self.w[b + (slot as usize >> (WIDE_SHIFT + 1))];
            let k = (slot >> WIDE_SHIFT) & 1;
            b + WIDE_WORDS + ((word >> (k * 16)) & 0xffff) as usize
        };
        while self.w[i + 1] & 0xffff <= slot {
            i += 1;
        }
        let (e, next) = (self.w[i], self.w[i + 1] & 0xffff);
        let cum = e & 0xffff;
        dec.advance(cum, next - cum, SCALE);
        (e >> 16) as u16
    }
}

/// Open-addressing map from a context (up to 24 bits) to a distribution: one probe usually
/// reads one cache line.
#[derive(Debug, Default, Clone)]
pub struct CtxMap {
    slots: Vec<u64>,
    shift: u32,
    len: usize,
}

impl CtxMap {
    pub fn with_capacity(n: usize) -> CtxMap {
        let cap = (n * 2).next_power_of_two().max(8);
        CtxMap { slots: vec![0; cap], shift: 64 - cap.trailing_zeros(), len: 0 }
    }

    #[inline]
    fn home(&self, ctx: u32) -> usize {
        ((ctx as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize
    }

    pub fn insert(&mut self, ctx: u32, d: DistId) {
        if (self.len + 1) * 2 > self.slots.len() {
            let mut bigger = CtxMap::with_capacity(self.slots.len());
            for (k, v) in self.iter() {
                bigger.insert(k, v);
            }
            *self = bigger;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(ctx);
        loop {
            let s = self.slots[i];
            if s == 0 || (s >> 32) as u32 == ctx + 1 {
                if s == 0 {
                    self.len += 1;
                }
                self.slots[i] = ((ctx as u64 + 1) << 32) | d as u64;
                return;
            }
            i = (i + 1) & mask;
        }
    }

    #[inline]
    pub fn get(&self, ctx: u32) -> DistId {
        if self.slots.is_empty() {
            return NO_DIST;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(ctx);
        loop {
            let s = self.slots[i];
            if s == 0 {
                return NO_DIST;
            }
            if (s >> 32) as u32 == ctx + 1 {
                return s as u32;
            }
            i = (i + 1) & mask;
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// (context, distribution) pairs, sorted by context.
    pub fn iter(&self) -> impl Iterator<Item = (u32, DistId)> + '_ {
        let mut v: Vec<(u32, DistId)> = self
            .slots
            .iter()
            .filter(|&&s| s != 0)
            .map(|&s| ((s >> 32) as u32 - 1, s as u32))
            .collect();
        v.sort_unstable();
        v.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_sums_and_keeps_every_symbol() {
        let counts: Vec<(u16, u64)> = (0..258u16).map(|s| (s, 1 + (s as u64 % 7) * 1000)).collect();
        let q = quantize(&counts);
        assert_eq!(q.iter().map(|x| x.1 as u32).sum::<u32>(), TOT);
        assert!(q.iter().all(|x| x.1 >= 1));
        let q = quantize(&[(3, 1), (9, 1_000_000)]);
        assert_eq!(q, vec![(3, 1), (9, 4095)]);
    }

    #[test]
    fn small_and_large_dists_round_trip() {
        let mut p = Pool::default();
        let small = p.add_counts(&[(1, 5), (7, 90), (300, 2)]);
        let big = p.add_counts(&(0..258u16).map(|s| (s, 1 + s as u64)).collect::<Vec<_>>());
        let seq: Vec<(DistId, u16)> = (0..3000u32)
            .map(|i| {
                if i % 3 == 0 {
                    (small, [1, 7, 300][(i as usize / 3) % 3])
                } else {
                    (big, (i % 258) as u16)
                }
            })
            .collect();
        let mut e = Encoder::new();
        for &(d, s) in &seq {
            assert!(p.put(d, s, &mut e));
        }
        assert!(!p.put(small, 2, &mut e));
        let mut out = Vec::new();
        e.finish(&mut out);
        let mut dec = Decoder::new(&out);
        for &(d, s) in &seq {
            assert_eq!(p.get(d, &mut dec), s);
        }
        dec.finish().unwrap();
    }
}
