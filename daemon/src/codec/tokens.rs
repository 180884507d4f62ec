//! Token text: a field's text as trained tokens (the 256 bytes, plus byte-pair merges of up
//! to [`MAX_TOKEN_LEN`] bytes), each coded from a static distribution chosen by the token
//! before it, with PPM-style escapes to order 0.
//!
//! Why (docs/DESIGN.md, "Record codec", `examples/token_eval.rs`): the byte model spends a
//! chain of dependent loads per byte (context hash, map, distribution), which bounds decoding
//! by latency; tokens of about 2.7 bytes on average make a third as many steps, and a token's
//! context is a plain array index. On link titles and URL remainders, 2,040 tokens under
//! order-1 contexts take 26.3 B/record all-in against the order-3 byte model's 28.5, and
//! decode in 1.8 µs against 3.3.

use std::collections::HashMap;

use super::dist::{CtxMap, DistId, Pool, NO_DIST};
use super::FxBuild;

/// Most tokens, the 256 bytes included (a distribution holds at most 2,048 symbols: the
/// tokens, the end and the escape).
pub const MAX_TOKENS: usize = 2040;
/// Longest token.
pub const MAX_TOKEN_LEN: usize = 16;
/// Strings the merges are learned from (spread over the field's sample).
const MERGE_SAMPLE: usize = 20_000;
/// Merges made per pass over the sample (pairs sharing no token).
const MERGES_PER_PASS: usize = 64;
/// A pair seen fewer times than this is not merged.
const MIN_PAIR: u32 = 8;

type Map<K, V> = HashMap<K, V, FxBuild>;

/// A field's token table and its context model.
#[derive(Debug, Default)]
pub struct TokenText {
    /// Every token's bytes (ids 0..256 are the bytes themselves), back to back, then
    /// [`MAX_TOKEN_LEN`] zeros, so that any token can be copied as a fixed 16 bytes.
    flat: Vec<u8>,
    /// (start in `flat`, length) per token id.
    spans: Vec<(u32, u8)>,
    /// Encoding's index (built on the first split: readers never need it).
    split: std::sync::OnceLock<SplitIndex>,
    /// Every token and the end ([`TokenText::eos`]).
    pub o0: DistId,
    /// Per previous token (and, last, the start of the text): its tokens, the end and the
    /// escape ([`TokenText::esc`]), or NO_DIST to go to order 0 at once.
    pub o1: Vec<DistId>,
    /// The compact codec: per pair of previous tokens ([`ctx2`]), escaping to `o1`; empty
    /// in the default one.
    pub o2: CtxMap,
}

/// The order-2 context of tokens `p2` then `p1` (each at most [`MAX_TOKENS`]: the start).
#[inline]
pub fn ctx2(p2: usize, p1: usize) -> u32 {
    (p2 * 2048 + p1) as u32
}

impl TokenText {
    /// A table from the merged tokens (ids 256 on, each 2 to [`MAX_TOKEN_LEN`] bytes).
    /// None if one is out of bounds or there are too many.
    pub fn from_merged(merged: &[Vec<u8>]) -> Option<TokenText> {
        if merged.len() > MAX_TOKENS - 256 {
            return None;
        }
        let mut t = TokenText { flat: (0..=255u8).collect(), ..Default::default() };
        t.spans = (0..256u32).map(|b| (b, 1u8)).collect();
        for m in merged {
            if m.len() < 2 || m.len() > MAX_TOKEN_LEN {
                return None;
            }
            t.spans.push((t.flat.len() as u32, m.len() as u8));
            t.flat.extend_from_slice(m);
        }
        t.flat.extend_from_slice(&[0; MAX_TOKEN_LEN]);
        Some(t)
    }

    /// Tokens of two bytes or more by their first two bytes, longest first.
    fn split_index(&self) -> SplitIndex {
        let mut by2: Vec<Vec<u16>> = vec![Vec::new(); 1 << 16];
        for id in 256..self.spans.len() as u16 {
            let b = self.token(id);
            by2[u16::from_le_bytes([b[0], b[1]]) as usize].push(id);
        }
        let mut x = SplitIndex { first: Vec::with_capacity((1 << 16) + 1), cand: Vec::new() };
        for ids in &mut by2 {
            ids.sort_unstable_by_key(|&i| std::cmp::Reverse(self.spans[i as usize].1));
            x.first.push(x.cand.len() as u32);
            for &id in ids.iter() {
                let (s, n) = self.spans[id as usize];
                let bytes = &self.flat[s as usize..s as usize + MAX_TOKEN_LEN];
                let word = u128::from_le_bytes(bytes.try_into().expect("padded"));
                let mask = if n as usize == MAX_TOKEN_LEN { !0 } else { (1u128 << (8 * n)) - 1 };
                x.cand.push(Cand { word: word & mask, mask, id, len: n });
            }
        }
        x.first.push(x.cand.len() as u32);
        x
    }

    /// Tokens (the 256 bytes included).
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The end-of-text symbol (one past the last token); also the start context's index.
    pub fn eos(&self) -> u16 {
        self.spans.len() as u16
    }

    /// The escape symbol of order-1 distributions.
    pub fn esc(&self) -> u16 {
        self.spans.len() as u16 + 1
    }

    /// The merged tokens (for serialising).
    pub fn merged(&self) -> impl Iterator<Item = &[u8]> {
        (256..self.spans.len() as u16).map(|i| self.token(i))
    }

    #[inline]
    pub fn token(&self, id: u16) -> &[u8] {
        let (s, n) = self.spans[id as usize];
        &self.flat[s as usize..s as usize + n as usize]
    }

    /// Append token `id`'s bytes to `out`: a fixed-size copy (no call to memcpy for a few
    /// bytes), cut back to the token's length.
    #[inline]
    pub fn push_token(&self, id: u16, out: &mut Vec<u8>) {
        let (s, n) = self.spans[id as usize];
        let len = out.len();
        let block: &[u8; MAX_TOKEN_LEN] =
            self.flat[s as usize..s as usize + MAX_TOKEN_LEN].try_into().expect("padded");
        out.extend_from_slice(block);
        out.truncate(len + n as usize);
    }

    /// `s` as tokens (greedy, longest first), appended to `out`.
    pub fn split(&self, s: &[u8], out: &mut Vec<u16>) {
        let x = self.split.get_or_init(|| self.split_index());
        // The text in 16-byte windows: one masked compare per candidate token.
        let mut i = 0;
        while i < s.len() {
            let left = s.len() - i;
            let window = if left >= MAX_TOKEN_LEN {
                u128::from_le_bytes(s[i..i + MAX_TOKEN_LEN].try_into().expect("16 bytes"))
            } else {
                let mut pad = [0u8; MAX_TOKEN_LEN];
                pad[..left].copy_from_slice(&s[i..]);
                u128::from_le_bytes(pad)
            };
            let (mut id, mut len) = (s[i] as u16, 1usize);
            if left >= 2 {
                let k = (window & 0xffff) as usize;
                let cands = &x.cand[x.first[k] as usize..x.first[k + 1] as usize];
                if let Some(c) =
                    cands.iter().find(|c| c.len as usize <= left && window & c.mask == c.word)
                {
                    (id, len) = (c.id, c.len as usize);
                }
            }
            i += len;
            out.push(id);
        }
    }
}

/// The encoder's index of a token table: candidates by first two bytes.
#[derive(Debug)]
struct SplitIndex {
    /// Per two-byte prefix (little-endian): its candidates in `cand`, to the next entry's.
    first: Vec<u32>,
    cand: Vec<Cand>,
}

/// A token as the splitter compares it: its bytes in the low `len` bytes of a word.
#[derive(Debug)]
struct Cand {
    word: u128,
    mask: u128,
    id: u16,
    len: u8,
}

/// Learn a token table for `texts` (the merges from at most `MERGE_SAMPLE` of them, spread
/// over all) and its context model from all of them. Contexts seen fewer than `min_ctx`
/// times go to order 0; with `min_ctx2`, pairs of tokens seen that often get order-2
/// contexts (the compact codec).
pub fn train(pool: &mut Pool, texts: &[&[u8]], min_ctx: u64, min_ctx2: Option<u64>) -> TokenText {
    let step = texts.len().div_ceil(MERGE_SAMPLE).max(1);
    let sample: Vec<&[u8]> = texts.iter().step_by(step).copied().collect();
    let merged = merges(&sample, MAX_TOKENS);
    let mut t = TokenText::from_merged(&merged).expect("merges stay within bounds");
    let n = t.len();
    let (eos, esc) = (t.eos(), t.esc());
    // Counts by (previous token or start, token or end): a dense table (16 MiB at most,
    // for the training's duration) counts several times faster than maps.
    let w = n + 1;
    let mut c1 = vec![0u32; w * w];
    // Order 2: (context << 11 | token) per step, sorted and counted in runs.
    let mut c2: Vec<u64> = Vec::new();
    let mut toks = Vec::new();
    for s in texts {
        toks.clear();
        t.split(s, &mut toks);
        toks.push(eos);
        let (mut p2, mut prev) = (eos as usize, eos as usize);
        for &tok in &toks {
            c1[prev * w + tok as usize] += 1;
            if min_ctx2.is_some() {
                c2.push((ctx2(p2, prev) as u64) << 11 | tok as u64);
            }
            (p2, prev) = (prev, tok as usize);
        }
    }
    if let Some(min2) = min_ctx2 {
        c2.sort_unstable();
        let mut i = 0;
        let mut syms: Vec<(u16, u64)> = Vec::new();
        let mut o2 = Vec::new();
        while i < c2.len() {
            let ctx = c2[i] >> 11;
            syms.clear();
            while i < c2.len() && c2[i] >> 11 == ctx {
                let key = c2[i];
                let mut n = 0u64;
                while i < c2.len() && c2[i] == key {
                    n += 1;
                    i += 1;
                }
                syms.push(((key & 0x7ff) as u16, n));
            }
            let total: u64 = syms.iter().map(|x| x.1).sum();
            if total >= min2 {
                let mut kept: Vec<(u16, u64)> =
                    syms.iter().filter(|x| x.1 >= 5).map(|&(s, c)| (s, c * 4)).collect();
                kept.push((esc, (syms.len() as u64 * 3).max(1)));
                o2.push((total, ctx as u32, pool.add_counts(&kept)));
            }
        }
        t.o2 = CtxMap::with_capacity(o2.len());
        for (_, ctx, d) in o2 {
            t.o2.insert(ctx, d);
        }
    }
    // Order 0 holds every token, so anything can be coded.
    let mut c0 = vec![0u64; w];
    for row in c1.chunks(w) {
        for (c, &x) in c0.iter_mut().zip(row) {
            *c += x as u64;
        }
    }
    let all: Vec<(u16, u64)> = (0..=eos).map(|s| (s, c0[s as usize] * 4 + 1)).collect();
    t.o0 = pool.add_counts(&all);
    t.o1 = c1
        .chunks(w)
        .map(|row| {
            let total: u64 = row.iter().map(|&x| x as u64).sum();
            if total < min_ctx {
                return NO_DIST;
            }
            // As the byte model, tokens seen less than 3 times are left to order 0 (about
            // as many bits there, and a smaller model); the escape weighs 3/4 of the distinct
            // count.
            let distinct = row.iter().filter(|&&x| x > 0).count() as u64;
            let mut kept: Vec<(u16, u64)> =
                (0..w).filter(|&s| row[s] >= 3).map(|s| (s as u16, row[s] as u64 * 4)).collect();
            kept.push((esc, (distinct * 3).max(1)));
            pool.add_counts(&kept)
        })
        .collect();
    t
}

/// Byte-pair merges: each pass counts adjacent token pairs and merges the most frequent
/// [`MERGES_PER_PASS`] that share no token (so that merges of one pass never overlap),
/// until `max` tokens or no pair is seen [`MIN_PAIR`] times.
fn merges(texts: &[&[u8]], max: usize) -> Vec<Vec<u8>> {
    const SEP: u16 = u16::MAX;
    let mut seq: Vec<u16> = Vec::with_capacity(texts.iter().map(|s| s.len() + 1).sum());
    for s in texts {
        seq.extend(s.iter().map(|&b| b as u16));
        seq.push(SEP);
    }
    let mut lens: Vec<u8> = vec![1; 256];
    let mut merged: Vec<Vec<u8>> = Vec::new();
    let bytes_of = |merged: &Vec<Vec<u8>>, id: u16| -> Vec<u8> {
        if id < 256 {
            vec![id as u8]
        } else {
            merged[id as usize - 256].clone()
        }
    };
    // Pair counts in a dense table (16 MiB at most, while training), cleared through the
    // list of pairs a pass touched: no hashing.
    let mut counts = vec![0u32; max * max];
    let mut touched: Vec<u32> = Vec::new();
    while 256 + merged.len() < max {
        for w in seq.windows(2) {
            if w[0] != SEP
                && w[1] != SEP
                && lens[w[0] as usize] as usize + lens[w[1] as usize] as usize <= MAX_TOKEN_LEN
            {
                let k = w[0] as usize * max + w[1] as usize;
                if counts[k] == 0 {
                    touched.push(k as u32);
                }
                counts[k] += 1;
            }
        }
        let mut top: Vec<(u32, u32)> = Vec::new();
        for &k in &touched {
            let c = std::mem::take(&mut counts[k as usize]);
            if c >= MIN_PAIR {
                let (a, b) = (k as usize / max, k as usize % max);
                top.push(((a as u32) << 16 | b as u32, c));
            }
        }
        touched.clear();
        if top.is_empty() {
            break;
        }
        top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut used = vec![false; 256 + merged.len()];
        let mut now: Map<u32, u16> = Map::default();
        for (pair, _) in top {
            if now.len() >= MERGES_PER_PASS || 256 + merged.len() >= max {
                break;
            }
            let (a, b) = ((pair >> 16) as u16, pair as u16);
            if used[a as usize] || used[b as usize] {
                continue;
            }
            used[a as usize] = true;
            used[b as usize] = true;
            let id = (256 + merged.len()) as u16;
            let mut bytes = bytes_of(&merged, a);
            bytes.extend_from_slice(&bytes_of(&merged, b));
            lens.push(bytes.len() as u8);
            merged.push(bytes);
            now.insert(pair, id);
        }
        let (mut r, mut w) = (0usize, 0usize);
        while r < seq.len() {
            if r + 1 < seq.len() {
                if let Some(&id) = now.get(&((seq[r] as u32) << 16 | seq[r + 1] as u32)) {
                    seq[w] = id;
                    (r, w) = (r + 2, w + 1);
                    continue;
                }
            }
            seq[w] = seq[r];
            (r, w) = (r + 1, w + 1);
        }
        seq.truncate(w);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_every_byte_and_prefers_long_tokens() {
        let t =
            TokenText::from_merged(&[b"ab".to_vec(), b"abc".to_vec(), b"xyz".to_vec()]).unwrap();
        let mut out = Vec::new();
        t.split(b"abcab\xffxyzx", &mut out);
        let back: Vec<u8> = out.iter().flat_map(|&i| t.token(i).to_vec()).collect();
        assert_eq!(back, b"abcab\xffxyzx");
        assert_eq!(out, vec![257, 256, 0xff, 258, b'x' as u16]);
    }

    /// The indexed split is the plain greedy one: at each position the longest token that
    /// the rest of the text starts with, near the end of the text too (where the 16-byte
    /// window reads padding that a token must not match).
    #[test]
    fn split_matches_a_plain_longest_match() {
        let mut merged: Vec<Vec<u8>> = vec![vec![0, 0], vec![0, 0, 0], vec![b'a'; 16]];
        let mut x = 7u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        while merged.len() < 600 {
            let n = 2 + (next() % 15) as usize;
            let t: Vec<u8> = (0..n).map(|_| b"ab\0c"[(next() % 4) as usize]).collect();
            if !merged.contains(&t) {
                merged.push(t);
            }
        }
        let t = TokenText::from_merged(&merged).unwrap();
        for _ in 0..2000 {
            let n = (next() % 40) as usize;
            let s: Vec<u8> = (0..n).map(|_| b"ab\0cd"[(next() % 5) as usize]).collect();
            let mut want = Vec::new();
            let mut i = 0;
            while i < s.len() {
                let id = (0..t.len() as u16)
                    .filter(|&id| s[i..].starts_with(t.token(id)))
                    .max_by_key(|&id| t.token(id).len())
                    .unwrap();
                want.push(id);
                i += t.token(id).len();
            }
            let mut got = Vec::new();
            t.split(&s, &mut got);
            assert_eq!(got, want, "{s:?}");
        }
    }

    #[test]
    fn tables_out_of_bounds_are_refused() {
        assert!(TokenText::from_merged(&[b"a".to_vec()]).is_none());
        assert!(TokenText::from_merged(&[vec![b'a'; MAX_TOKEN_LEN + 1]]).is_none());
        assert!(TokenText::from_merged(&vec![b"ab".to_vec(); MAX_TOKENS - 255]).is_none());
    }

    #[test]
    fn merges_learn_repeated_words_within_bounds() {
        let texts: Vec<Vec<u8>> =
            (0..500).map(|i| format!("the shared cache {i} the records").into_bytes()).collect();
        let refs: Vec<&[u8]> = texts.iter().map(|t| &t[..]).collect();
        let m = merges(&refs, 400);
        assert!(m.iter().all(|t| t.len() >= 2 && t.len() <= MAX_TOKEN_LEN));
        assert!(m.iter().any(|t| t.starts_with(b"the ")), "{m:?}");
        assert!(256 + m.len() <= 400);
    }
}
