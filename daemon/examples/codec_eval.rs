//! Codec evaluation harness: `cargo run --release -p surpd --example codec_eval -- FILE [fast|compact]
//! [SAMPLE]` where FILE holds values in the value encoding, each preceded by a u32 LE length
//! (benchmarks/records_bench.py --dump writes one from the links corpus). Trains on every
//! SAMPLE-th value, compresses all, checks every round trip, prints bytes and decode time.
//! Environment: SURP_TRAIN_FIRST=N samples only the first N values; SURP_TRAIN_FILE=F trains
//! on every value of F (same format) instead; SURP_DUMP_MODEL=F writes the model's bytes to F.
use std::time::Instant;

use surpd::codec::{self, MemTables, RecordEncoder};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let data = std::fs::read(&args[1]).expect("read FILE");
    let compact = args.get(2).is_some_and(|s| s == "compact");
    let every: usize = args.get(3).map_or(5, |s| s.parse().unwrap());
    let mut vals: Vec<&[u8]> = Vec::new();
    let mut p = 0;
    while p + 4 <= data.len() {
        let n = u32::from_le_bytes(data[p..p + 4].try_into().unwrap()) as usize;
        vals.push(&data[p + 4..p + 4 + n]);
        p += 4 + n;
    }
    let first: usize = std::env::var("SURP_TRAIN_FIRST").map_or(vals.len(), |s| s.parse().unwrap());
    let tdata =
        std::env::var("SURP_TRAIN_FILE").map(|p| std::fs::read(p).unwrap()).unwrap_or_default();
    let mut sample: Vec<&[u8]> =
        vals[..first.min(vals.len())].iter().step_by(every).copied().collect();
    if !tdata.is_empty() {
        sample.clear();
        let mut p = 0;
        while p + 4 <= tdata.len() {
            let n = u32::from_le_bytes(tdata[p..p + 4].try_into().unwrap()) as usize;
            sample.push(&tdata[p + 4..p + 4 + n]);
            p += 4 + n;
        }
    }
    let mut t = MemTables::default();
    let t0 = Instant::now();
    let m = codec::train(&sample, compact, &mut t).unwrap();
    let model_bytes = m.to_bytes().len();
    if let Ok(p) = std::env::var("SURP_DUMP_MODEL") {
        std::fs::write(p, m.to_bytes()).unwrap();
    }
    println!(
        "trained on {} values in {:.2?}; model {} bytes",
        sample.len(),
        t0.elapsed(),
        model_bytes
    );
    for level in [3, 9, 19] {
        let t1 = Instant::now();
        let z = zstd::bulk::compress(&m.to_bytes(), level).unwrap();
        println!("model with zstd -{level}: {} bytes in {:.2?}", z.len(), t1.elapsed());
    }
    let mut enc = RecordEncoder::new();
    let mut comp: Vec<Vec<u8>> = Vec::with_capacity(vals.len());
    let t0 = Instant::now();
    for v in &vals {
        let mut c = Vec::new();
        enc.encode(&m, &mut t, v, &mut c).unwrap();
        comp.push(c);
    }
    let enc_s = t0.elapsed().as_secs_f64();
    let total: usize = comp.iter().map(|c| c.len()).sum();
    let raw: usize = vals.iter().map(|v| v.len()).sum();
    let domains: usize = t.domains.iter().map(|d| d.len() + 1).sum();
    let n = vals.len() as f64;
    println!(
        "{} values: value encoding {:.1} B, compressed {:.2} B/value, + model {:.2} + domains {:.2} ({} hosts) = {:.2} B",
        vals.len(), raw as f64 / n, total as f64 / n, model_bytes as f64 / n, domains as f64 / n,
        t.domains.len(), (total + model_bytes + domains) as f64 / n
    );
    println!("encode {:.0} ns/value ({:.0}k/s)", enc_s * 1e9 / n, n / enc_s / 1e3);
    let mut out = Vec::new();
    if std::env::var("SURP_DECODE_ONLY").is_ok() {
        let t0 = Instant::now();
        let mut x = 0usize;
        for i in 0..3_000_000usize {
            out.clear();
            codec::decode(&m, &t, &comp[i.wrapping_mul(2654435761) % comp.len()], &mut out)
                .unwrap();
            x += out.len();
        }
        println!("decode-only {:.0} ns [{x}]", t0.elapsed().as_secs_f64() * 1e9 / 3e6);
        return;
    }
    for (v, c) in vals.iter().zip(&comp) {
        out.clear();
        codec::decode(&m, &t, c, &mut out).unwrap();
        assert_eq!(&out[..], *v);
    }
    let t0 = Instant::now();
    let mut x = 0usize;
    let idx: Vec<usize> =
        (0..200_000usize).map(|i| (i.wrapping_mul(2654435761)) % vals.len()).collect();
    for &i in &idx {
        out.clear();
        codec::decode(&m, &t, &comp[i], &mut out).unwrap();
        x += out.len();
    }
    println!(
        "decode {:.0} ns/value (random order) [{x}]",
        t0.elapsed().as_secs_f64() * 1e9 / idx.len() as f64
    );
    for k in [10usize, 100, 1000, 10_000, 100_000] {
        let t0 = Instant::now();
        for j in 0..200_000usize {
            out.clear();
            codec::decode(&m, &t, &comp[idx[j % k]], &mut out).unwrap();
            x += out.len();
        }
        println!(
            "decode cycling {k} random values: {:.0} ns/value",
            t0.elapsed().as_secs_f64() * 1e9 / 200_000.0
        );
    }
    let t0 = Instant::now();
    for _ in 0..200_000 {
        out.clear();
        codec::decode(&m, &t, &comp[12345], &mut out).unwrap();
        x += out.len();
    }
    println!(
        "decode {:.0} ns/value (one value, hot) [{x}] {} bytes",
        t0.elapsed().as_secs_f64() * 1e9 / 200_000.0,
        comp[12345].len()
    );
}
