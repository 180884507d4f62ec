//! Text model experiment for the record codec (issue: a record in 1.5 µs): trained tokens
//! (byte-pair merges, up to 16 bytes) coded by a static token-context model, against the
//! codec's order-3 byte model, on the same strings.
//!
//! `cargo run --release -p surpd --example token_eval -- FILE [TOKENS] [ORDER]` where FILE is
//! what `benchmarks/records_bench.py --dump` writes. It takes each record's `title` and the
//! part of its `url` after the prefix the codec makes one symbol (scheme, host, first path
//! segment), trains both models on every fifth record, and prints bytes per record (one rANS
//! stream per record holding both strings, as the codec stores them) and the decode time
//! over records in random order. ORDER is 1 (previous token) or 2 (previous two).
use std::collections::HashMap;
use std::time::Instant;

use surpd::codec::dist::{DistId, Pool, NO_DIST};
use surpd::codec::rans::{Decoder, Encoder};
use surpd::codec::{self, MemTables, RecordEncoder};

/// Token table: ids 0..256 are the bytes, the rest merges of two tokens.
struct Tokens {
    bytes: Vec<Vec<u8>>,
    ids: HashMap<Vec<u8>, u16>,
    longest: usize,
}

const MAX_TOKEN: usize = 16;

impl Tokens {
    /// Byte-pair merges on `sample` until `k` tokens: each round counts adjacent pairs and
    /// merges the most frequent 16 (a token longer than MAX_TOKEN is never made).
    fn train(sample: &[&[u8]], k: usize) -> Tokens {
        let mut bytes: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        let mut seqs: Vec<Vec<u16>> =
            sample.iter().map(|s| s.iter().map(|&b| b as u16).collect()).collect();
        while bytes.len() < k {
            let mut pairs: HashMap<(u16, u16), u32> = HashMap::new();
            for s in &seqs {
                for w in s.windows(2) {
                    if bytes[w[0] as usize].len() + bytes[w[1] as usize].len() <= MAX_TOKEN {
                        *pairs.entry((w[0], w[1])).or_default() += 1;
                    }
                }
            }
            let mut top: Vec<((u16, u16), u32)> = pairs.into_iter().filter(|p| p.1 >= 4).collect();
            if top.is_empty() {
                break;
            }
            top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            for &((a, b), _) in top.iter().take(16.min(k - bytes.len())) {
                let id = bytes.len() as u16;
                let mut t = bytes[a as usize].clone();
                t.extend_from_slice(&bytes[b as usize]);
                bytes.push(t);
                for s in seqs.iter_mut() {
                    let mut out = Vec::with_capacity(s.len());
                    let mut i = 0;
                    while i < s.len() {
                        if i + 1 < s.len() && s[i] == a && s[i + 1] == b {
                            out.push(id);
                            i += 2;
                        } else {
                            out.push(s[i]);
                            i += 1;
                        }
                    }
                    *s = out;
                }
            }
        }
        let ids = bytes.iter().enumerate().map(|(i, t)| (t.clone(), i as u16)).collect();
        let longest = bytes.iter().map(|t| t.len()).max().unwrap_or(1);
        Tokens { bytes, ids, longest }
    }

    /// Greedy longest match.
    fn split(&self, s: &[u8], out: &mut Vec<u16>) {
        let mut i = 0;
        while i < s.len() {
            let mut n = self.longest.min(s.len() - i);
            loop {
                if let Some(&id) = self.ids.get(&s[i..i + n]) {
                    out.push(id);
                    i += n;
                    break;
                }
                n -= 1;
            }
        }
    }
}

/// Static token-context model with PPM-style escapes to order 0.
struct TokModel {
    tokens: Tokens,
    /// Flat token bytes and (start, len) per token, for decoding.
    flat: Vec<u8>,
    spans: Vec<(u32, u8)>,
    o0: DistId,
    /// Context: the previous token (order 1) or the previous two (order 2), START at the
    /// beginning; dense for order 1, hashed for order 2.
    o1: Vec<DistId>,
    o2: HashMap<u32, DistId>,
    order: u8,
}

impl TokModel {
    fn eos(&self) -> u16 {
        self.tokens.bytes.len() as u16
    }

    fn train(pool: &mut Pool, sample: &[&[u8]], k: usize, order: u8) -> TokModel {
        let tokens = Tokens::train(&sample[..sample.len().min(20_000)], k);
        let (eos, esc, start) = (k as u16, k as u16 + 1, k as u32);
        let mut c0 = vec![0u64; k + 1];
        let mut c1: Vec<HashMap<u16, u64>> = vec![HashMap::new(); k + 1];
        let mut c2: HashMap<u32, HashMap<u16, u64>> = HashMap::new();
        let mut toks = Vec::new();
        for s in sample {
            toks.clear();
            tokens.split(s, &mut toks);
            toks.push(eos);
            let (mut p1, mut p2) = (start, start);
            for &t in &toks {
                c0[t as usize] += 1;
                *c1[p1 as usize].entry(t).or_default() += 1;
                if order >= 2 {
                    *c2.entry(p2 << 13 | p1).or_default().entry(t).or_default() += 1;
                }
                (p2, p1) = (p1, t as u32);
            }
        }
        let all: Vec<(u16, u64)> = (0..=k as u16).map(|s| (s, c0[s as usize] * 4 + 1)).collect();
        let o0 = pool.add_counts(&all);
        let mut ctx_dist = |m: &HashMap<u16, u64>, min: u64| -> DistId {
            let total: u64 = m.values().sum();
            if total < min {
                return NO_DIST;
            }
            let mut kept: Vec<(u16, u64)> =
                m.iter().filter(|x| *x.1 >= 2).map(|(&s, &n)| (s, n * 4)).collect();
            kept.push((esc, (m.len() as u64 * 3).max(1)));
            pool.add_counts(&kept)
        };
        let o1: Vec<DistId> = if order == 0 {
            vec![NO_DIST; k + 1]
        } else {
            c1.iter().map(|m| ctx_dist(m, 30)).collect()
        };
        let o2 = c2.iter().map(|(&c, m)| (c, ctx_dist(m, 60))).filter(|x| x.1 != NO_DIST).collect();
        let mut flat = Vec::new();
        let mut spans = Vec::new();
        for t in &tokens.bytes {
            spans.push((flat.len() as u32, t.len() as u8));
            flat.extend_from_slice(t);
        }
        TokModel { tokens, flat, spans, o0, o1, o2, order }
    }

    fn ctx(&self, p2: u32, p1: u32) -> DistId {
        if self.order >= 2 {
            if let Some(&d) = self.o2.get(&(p2 << 13 | p1)) {
                return d;
            }
        }
        self.o1[p1 as usize]
    }

    fn encode(&self, pool: &Pool, s: &[u8], e: &mut Encoder, toks: &mut Vec<u16>) {
        toks.clear();
        self.tokens.split(s, toks);
        toks.push(self.eos());
        let start = self.eos() as u32;
        let esc = self.eos() + 1;
        let (mut p1, mut p2) = (start, start);
        for &t in toks.iter() {
            let d = self.ctx(p2, p1);
            if d == NO_DIST || !pool.put(d, t, e) {
                if d != NO_DIST {
                    assert!(pool.put(d, esc, e));
                    // Order 2 missed: try order 1 before order 0.
                    let d1 = self.o1[p1 as usize];
                    if self.order >= 2 && d1 != NO_DIST && d1 != d {
                        if pool.put(d1, t, e) {
                            (p2, p1) = (p1, t as u32);
                            continue;
                        }
                        assert!(pool.put(d1, esc, e));
                    }
                } else if self.order >= 2 && self.o1[p1 as usize] != NO_DIST {
                    let d1 = self.o1[p1 as usize];
                    if pool.put(d1, t, e) {
                        (p2, p1) = (p1, t as u32);
                        continue;
                    }
                    assert!(pool.put(d1, esc, e));
                }
                assert!(pool.put(self.o0, t, e));
            }
            (p2, p1) = (p1, t as u32);
        }
    }

    fn decode(&self, pool: &Pool, dec: &mut Decoder<'_>, out: &mut Vec<u8>) {
        let eos = self.eos();
        let esc = eos + 1;
        let (mut p1, mut p2) = (eos as u32, eos as u32);
        loop {
            let d = self.ctx(p2, p1);
            let mut t = if d == NO_DIST { esc } else { pool.get(d, dec) };
            if t == esc && self.order >= 2 {
                let d1 = self.o1[p1 as usize];
                if d1 != NO_DIST && d1 != d {
                    t = pool.get(d1, dec);
                }
            }
            if t == esc {
                t = pool.get(self.o0, dec);
            }
            if t >= eos || dec.overrun() {
                return;
            }
            let (s, n) = self.spans[t as usize];
            out.extend_from_slice(&self.flat[s as usize..s as usize + n as usize]);
            (p2, p1) = (p1, t as u32);
        }
    }
}

/// A distribution laid out for decoding: cumulative frequencies, symbols, and a bucket
/// table (slot >> shift -> first candidate entry) sized to about two buckets per entry.
struct Fast {
    cum: Vec<u16>,
    sym: Vec<u16>,
    bucket: Vec<u16>,
    shift: u32,
}

impl Fast {
    fn of(pool: &Pool, d: DistId) -> Fast {
        let e = pool.entries(d);
        let mut cum = Vec::with_capacity(e.len() + 1);
        let mut acc = 0u32;
        for &(_, f) in &e {
            cum.push(acc as u16);
            acc += f as u32;
        }
        let sym = e.iter().map(|x| x.0).collect();
        let nb = (e.len() * 2).next_power_of_two().clamp(16, 4096);
        let shift = 12 - nb.trailing_zeros();
        let mut bucket = Vec::with_capacity(nb);
        let mut i = 0usize;
        for b in 0..nb {
            let slot = (b << shift) as u32;
            while i + 1 < cum.len() && cum[i + 1] as u32 <= slot {
                i += 1;
            }
            bucket.push(i as u16);
        }
        cum.push(0); // end sentinel as 4096 does not fit: handled by the length check below
        Fast { cum, sym, bucket, shift }
    }

    #[inline(always)]
    fn get(&self, dec: &mut Decoder<'_>) -> u16 {
        let slot = dec.peek(12);
        let n = self.sym.len();
        let mut i = self.bucket[(slot >> self.shift) as usize] as usize;
        while i + 1 < n && self.cum[i + 1] as u32 <= slot {
            i += 1;
        }
        let start = self.cum[i] as u32;
        let end = if i + 1 < n { self.cum[i + 1] as u32 } else { 4096 };
        dec.advance(start, end - start, 12);
        self.sym[i]
    }
}

/// The order-1 token model with [`Fast`] distributions.
struct FastModel {
    o0: Fast,
    o1: Vec<Option<Fast>>,
    flat: Vec<u8>,
    spans: Vec<(u32, u8)>,
    eos: u16,
}

impl FastModel {
    fn of(pool: &Pool, m: &TokModel) -> FastModel {
        FastModel {
            o0: Fast::of(pool, m.o0),
            o1: m.o1.iter().map(|&d| (d != NO_DIST).then(|| Fast::of(pool, d))).collect(),
            flat: m.flat.clone(),
            spans: m.spans.clone(),
            eos: m.eos(),
        }
    }

    fn decode(&self, dec: &mut Decoder<'_>, out: &mut Vec<u8>) {
        let mut p1 = self.eos as usize;
        loop {
            let mut t = match &self.o1[p1] {
                Some(f) => f.get(dec),
                None => self.eos + 1,
            };
            if t == self.eos + 1 {
                t = self.o0.get(dec);
            }
            if t >= self.eos || dec.overrun() {
                return;
            }
            let (s, n) = self.spans[t as usize];
            out.extend_from_slice(&self.flat[s as usize..s as usize + n as usize]);
            p1 = t as usize;
        }
    }
}

fn str_of(buf: &[u8], r: std::ops::Range<usize>) -> Option<&[u8]> {
    let mut rd = surpd::value::Reader::new(&buf[r]);
    (rd.u8().ok()? == surpd::value::STR).then(|| rd.lbytes().ok()).flatten()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let data = std::fs::read(&args[1]).expect("read FILE");
    let k: usize = args.get(2).map_or(2048, |s| s.parse().unwrap());
    let order: u8 = args.get(3).map_or(1, |s| s.parse().unwrap());
    let (mut titles, mut rests): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (Vec::new(), Vec::new());
    let mut p = 0;
    while p + 4 <= data.len() {
        let n = u32::from_le_bytes(data[p..p + 4].try_into().unwrap()) as usize;
        let v = &data[p + 4..p + 4 + n];
        p += 4 + n;
        let (mut title, mut rest) = (Vec::new(), Vec::new());
        for (kr, vr) in surpd::value::dict_items(v).unwrap_or_default() {
            match str_of(v, kr) {
                Some(b"title") => title = str_of(v, vr).unwrap_or_default().to_vec(),
                Some(b"url") => {
                    let u = std::str::from_utf8(str_of(v, vr).unwrap_or_default()).unwrap();
                    let de = codec::url_domain_end(u);
                    let cut = codec::first_segment_end(u, de).unwrap_or(de);
                    rest = u.as_bytes()[cut..].to_vec();
                }
                _ => {}
            }
        }
        titles.push(title);
        rests.push(rest);
    }
    let n = titles.len();
    println!("{n} records; title {:.1} B, url rest {:.1} B", avg(&titles), avg(&rests));

    // The codec's byte model, on records holding just these two strings.
    let vals: Vec<Vec<u8>> = (0..n).map(|i| two_field_value(&titles[i], &rests[i])).collect();
    let sample: Vec<&[u8]> = vals.iter().step_by(5).map(|v| &v[..]).collect();
    let mut t = MemTables::default();
    let t0 = Instant::now();
    let m = codec::train(&sample, false, &mut t).unwrap();
    let train_s = t0.elapsed().as_secs_f64();
    let mut enc = RecordEncoder::new();
    let comp: Vec<Vec<u8>> = vals
        .iter()
        .map(|v| {
            let mut c = Vec::new();
            enc.encode(&m, &mut t, v, &mut c).unwrap();
            c
        })
        .collect();
    let idx: Vec<usize> = (0..300_000usize).map(|i| i.wrapping_mul(2654435761) % n).collect();
    let mut out = Vec::new();
    let t0 = Instant::now();
    for &i in &idx {
        out.clear();
        codec::decode(&m, &t, &comp[i], &mut out).unwrap();
    }
    let ns = t0.elapsed().as_secs_f64() * 1e9 / idx.len() as f64;
    let model = m.to_bytes().len();
    report("order-3 bytes (the codec)", &comp, model, n, train_s, ns);

    // Tokens.
    let mut pool = Pool::default();
    let t0 = Instant::now();
    let ts: Vec<&[u8]> = titles.iter().step_by(5).map(|v| &v[..]).collect();
    let rs: Vec<&[u8]> = rests.iter().step_by(5).map(|v| &v[..]).collect();
    let mt = TokModel::train(&mut pool, &ts, k, order);
    let mr = TokModel::train(&mut pool, &rs, k, order);
    let train_s = t0.elapsed().as_secs_f64();
    let mut e = Encoder::new();
    let mut toks = Vec::new();
    let mut ntok = 0usize;
    let comp: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut c = Vec::new();
            e.clear();
            mt.encode(&pool, &titles[i], &mut e, &mut toks);
            ntok += toks.len();
            mr.encode(&pool, &rests[i], &mut e, &mut toks);
            ntok += toks.len();
            e.finish(&mut c);
            c
        })
        .collect();
    for (i, c) in comp.iter().enumerate() {
        let mut dec = Decoder::new(c);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        mt.decode(&pool, &mut dec, &mut a);
        mr.decode(&pool, &mut dec, &mut b);
        assert!(a == titles[i] && b == rests[i] && dec.finish().is_ok(), "record {i}");
    }
    let t0 = Instant::now();
    for &i in &idx {
        out.clear();
        let mut dec = Decoder::new(&comp[i]);
        mt.decode(&pool, &mut dec, &mut out);
        mr.decode(&pool, &mut dec, &mut out);
        assert!(dec.finish().is_ok());
    }
    let ns = t0.elapsed().as_secs_f64() * 1e9 / idx.len() as f64;
    if order <= 1 {
        let (ft, fr) = (FastModel::of(&pool, &mt), FastModel::of(&pool, &mr));
        for (i, c) in comp.iter().enumerate().take(50_000) {
            let mut dec = Decoder::new(c);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            ft.decode(&mut dec, &mut a);
            fr.decode(&mut dec, &mut b);
            assert!(a == titles[i] && b == rests[i] && dec.finish().is_ok(), "fast {i}");
        }
        let t0 = Instant::now();
        for &i in &idx {
            out.clear();
            let mut dec = Decoder::new(&comp[i]);
            ft.decode(&mut dec, &mut out);
            fr.decode(&mut dec, &mut out);
        }
        let fns = t0.elapsed().as_secs_f64() * 1e9 / idx.len() as f64;
        let mem: usize = [&ft, &fr]
            .iter()
            .flat_map(|m| m.o1.iter().flatten().chain(std::iter::once(&m.o0)))
            .map(|f| f.cum.len() * 4 + f.bucket.len() * 2)
            .sum();
        println!("decode with finer buckets: {fns:.0} ns ({mem} bytes of decode tables)");
    }
    if std::env::var("TOKEN_SIZES").is_ok() {
        // How large the distributions decoding goes through are (weighted by use).
        let mut hist = [0usize; 6];
        let mut esc = 0usize;
        for c in comp.iter().take(20_000) {
            let mut dec = Decoder::new(c);
            for m in [&mt, &mr] {
                let eos = m.eos();
                let mut p1 = eos as u32;
                loop {
                    let d = m.o1[p1 as usize];
                    let mut t = eos + 1;
                    if d != NO_DIST {
                        let n = pool.entries(d).len();
                        hist[[16, 64, 255, 1024, 4096]
                            .iter()
                            .position(|&x| n <= x)
                            .unwrap_or(5)] += 1;
                        t = pool.get(d, &mut dec);
                    }
                    if t == eos + 1 {
                        esc += 1;
                        hist[4] += 1;
                        t = pool.get(m.o0, &mut dec);
                    }
                    if t >= eos {
                        break;
                    }
                    p1 = t as u32;
                }
            }
        }
        println!("gets by distribution size (<=16, 64, 255, 1024, more): {hist:?}; escapes {esc}");
    }
    // Model size: the token bytes and each distribution's entries (3 bytes each).
    let model = mt.flat.len()
        + mr.flat.len()
        + pool.ids().map(|d| pool.entries(d).len() * 3).sum::<usize>();
    report(
        &format!("{k} tokens, order {order} ({:.1} tokens/record)", ntok as f64 / n as f64),
        &comp,
        model,
        n,
        train_s,
        ns,
    );
}

fn avg(v: &[Vec<u8>]) -> f64 {
    v.iter().map(|s| s.len()).sum::<usize>() as f64 / v.len() as f64
}

fn report(name: &str, comp: &[Vec<u8>], model: usize, n: usize, train_s: f64, ns: f64) {
    let total: usize = comp.iter().map(|c| c.len()).sum();
    println!(
        "{name:44} {:6.2} B/record + model {:5.2} ({:7} B) = {:6.2}; train {:.2} s; decode {:5.0} ns",
        total as f64 / n as f64,
        model as f64 / n as f64,
        model,
        (total + model) as f64 / n as f64,
        train_s,
        ns
    );
}

/// `{"title": title, "u": rest}` in the value encoding.
fn two_field_value(title: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut v = vec![surpd::value::DICT];
    surpd::value::put_varint(&mut v, 2);
    for (k, s) in [(&b"title"[..], title), (&b"u"[..], rest)] {
        v.push(surpd::value::STR);
        surpd::value::put_varint(&mut v, k.len() as u64);
        v.extend_from_slice(k);
        v.push(surpd::value::STR);
        surpd::value::put_varint(&mut v, s.len() as u64);
        v.extend_from_slice(s);
    }
    v
}
