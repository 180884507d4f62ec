//! Arbitrary bytes through the record codec's decoders: a compressed record decoded with a
//! trained model (default and compact), with and without a limit (the daemon's check of a
//! record a client compressed), and a model parsed from bytes. Errors, never a panic;
//! whatever decodes cleanly is a well-formed value.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use surpd::codec::{self, MemTables, Model, Tables};
use surpd::value;

fn s(out: &mut Vec<u8>, x: &str) {
    out.push(value::STR);
    value::put_varint(out, x.len() as u64);
    out.extend_from_slice(x.as_bytes());
}

fn models() -> &'static (Model, Model, MemTables) {
    static M: OnceLock<(Model, Model, MemTables)> = OnceLock::new();
    M.get_or_init(|| {
        let mut vals = Vec::new();
        for i in 0..3000u64 {
            let mut v = vec![value::DICT];
            value::put_varint(&mut v, 4);
            s(&mut v, "url");
            let host = ["https://pypi.org/project/", "https://www.npmjs.com/package/", "http://x.org/"];
            s(&mut v, &format!("{}p{}/{}.{}/", host[(i % 3) as usize], i * 7 % 500, i % 9, i % 4));
            s(&mut v, "title");
            s(&mut v, &format!("a title with words number {}", i % 77));
            s(&mut v, "source");
            s(&mut v, ["pypi", "npm", "debian"][(i % 3) as usize]);
            s(&mut v, "n");
            value::encode_int(&mut v, (i * 2_592_000) as i128);
            vals.push(v);
        }
        let refs: Vec<&[u8]> = vals.iter().map(|v| v.as_slice()).collect();
        let mut t = MemTables::default();
        let fast = codec::train(&refs, false, &mut t).unwrap();
        let compact = codec::train(&refs, true, &mut t).unwrap();
        t.domain_id("http://other.example").unwrap();
        (fast, compact, t)
    })
}

fuzz_target!(|data: &[u8]| {
    let (fast, compact, t) = models();
    let Some((&sel, rest)) = data.split_first() else { return };
    match sel % 3 {
        0 | 1 => {
            let m = if sel % 3 == 0 { fast } else { compact };
            let mut out = Vec::new();
            let full = codec::decode(m, t, rest, &mut out);
            if full.is_ok() {
                value::validate(&out).expect("a clean decode is a well-formed value");
            }
            // The daemon's check of a record a client compressed: within a limit, the same
            // value or an error, never more than the limit.
            let mut within = Vec::new();
            match codec::decode_within(m, t, rest, &mut within, 200) {
                Ok(()) => {
                    assert!(within.len() <= 200);
                    assert!(full.is_ok() && within == out, "decode_within differs from decode");
                }
                Err(_) => assert!(full.is_err() || out.len() > 200),
            }
        }
        _ => {
            let _ = Model::from_bytes(rest);
        }
    }
});
