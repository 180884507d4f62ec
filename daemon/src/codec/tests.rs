use super::*;

/// Encode a Python-like value by hand (the tests build values with the value encoding).
enum V<'a> {
    N,
    B(bool),
    I(i64),
    F(f64),
    S(&'a str),
    Y(&'a [u8]),
    L(Vec<V<'a>>),
    D(Vec<(&'a str, V<'a>)>),
    DI(Vec<(V<'a>, V<'a>)>),
}

fn enc(v: &V<'_>, out: &mut Vec<u8>) {
    match v {
        V::N => out.push(value::NONE),
        V::B(b) => out.push(if *b { value::TRUE } else { value::FALSE }),
        V::I(i) => value::encode_int(out, *i as i128),
        V::F(f) => {
            out.push(value::FLOAT);
            out.extend_from_slice(&f.to_le_bytes());
        }
        V::S(s) => {
            out.push(value::STR);
            put_varint(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        V::Y(b) => {
            out.push(value::BYTES);
            put_varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
        V::L(items) => {
            out.push(value::LIST);
            put_varint(out, items.len() as u64);
            items.iter().for_each(|i| enc(i, out));
        }
        V::D(items) => {
            out.push(value::DICT);
            put_varint(out, items.len() as u64);
            for (k, v) in items {
                enc(&V::S(k), out);
                enc(v, out);
            }
        }
        V::DI(items) => {
            out.push(value::DICT);
            put_varint(out, items.len() as u64);
            for (k, v) in items {
                enc(k, out);
                enc(v, out);
            }
        }
    }
}

fn bytes(v: &V<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    enc(v, &mut out);
    out
}

fn link(i: u64) -> Vec<u8> {
    let hosts =
        ["https://pypi.org/project/", "https://www.npmjs.com/package/", "http://example.org/"];
    let url = format!("{}pkg{}/{}.{}.0/", hosts[(i % 3) as usize], i * 7919 % 1000, i % 5, i % 11);
    let title = format!("A library for thing number {} and other words", i % 97);
    bytes(&V::D(vec![
        ("url", V::S(&url)),
        ("title", V::S(&title)),
        ("source", V::S(["pypi", "npm", "debian/libs"][(i % 3) as usize])),
        ("published", V::I(1_600_000_000 + (i % 40) as i64 * 2_592_000)),
    ]))
}

fn trained(compact: bool) -> (Model, MemTables) {
    let samples: Vec<Vec<u8>> = (0..3000).map(link).collect();
    let refs: Vec<&[u8]> = samples.iter().map(|s| s.as_slice()).collect();
    let mut t = MemTables::default();
    let m = train(&refs, compact, &mut t).unwrap();
    (m, t)
}

fn round_trip(m: &Model, t: &mut MemTables, v: &[u8]) -> usize {
    let mut c = Vec::new();
    RecordEncoder::new().encode(m, t, v, &mut c).unwrap();
    let mut out = Vec::new();
    decode(m, t, &c, &mut out).unwrap();
    assert_eq!(out, v, "round trip changed the value");
    c.len()
}

#[test]
fn links_round_trip_and_compress() {
    for order in [false, true] {
        let (m, mut t) = trained(order);
        let mut total = 0;
        for i in 5000..6000 {
            let v = link(i);
            total += round_trip(&m, &mut t, &v);
        }
        // The generated links are about 130 bytes of value encoding each.
        assert!(total / 1000 < 40, "order {order}: {} bytes per link", total / 1000);
    }
}

#[test]
fn edge_cases_round_trip() {
    for compact in [false, true] {
        edge_cases_round_trip_with(compact);
    }
}

fn edge_cases_round_trip_with(compact: bool) {
    let (m, mut t) = trained(compact);
    let long = "x".repeat(100_000);
    let cases = vec![
        V::S(""),
        V::S(&long),
        V::S("not/a/url/but/slashes"),
        V::S("https://"),
        V::S("https://xn--bcher-kva.example/ünïcödé?q=1#frag"),
        V::S("http://new-host.example:8080"),
        V::S("😀 emoji \u{0} nul"),
        V::I(0),
        V::I(i64::MIN),
        V::I(i64::MAX),
        V::F(-0.0),
        V::F(f64::NAN),
        V::B(true),
        V::N,
        V::Y(b"\x00\xffbytes"),
        V::L(vec![V::I(1), V::S("two"), V::L(vec![])]),
        V::D(vec![]),
        V::D(vec![
            ("url", V::I(5)),
            ("title", V::N),
            ("new field", V::D(vec![("url", V::S("ftp://x"))])),
        ]),
        V::DI(vec![(V::I(1), V::S("one")), (V::S("k"), V::N)]),
        V::D(vec![("published", V::I(-1)), ("url", V::S("https://pypi.org/project/"))]),
    ];
    for c in &cases {
        round_trip(&m, &mut t, &bytes(c));
    }
    // A huge int (beyond i64) and a tuple, built with the value encoder.
    let mut big = Vec::new();
    value::encode_int(&mut big, i128::MAX);
    round_trip(&m, &mut t, &big);
}

#[test]
fn model_serialises_exactly() {
    for order in [false, true] {
        let (m, mut t) = trained(order);
        let b = m.to_bytes();
        let m2 = Model::from_bytes(&b).unwrap();
        assert_eq!(m2.to_bytes(), b);
        let v = link(77_777);
        let mut c1 = Vec::new();
        RecordEncoder::new().encode(&m, &mut t, &v, &mut c1).unwrap();
        let mut out = Vec::new();
        decode(&m2, &t, &c1, &mut out).unwrap();
        assert_eq!(out, v);
        // Truncated or patched models are errors, not panics.
        for cut in (0..b.len()).step_by(b.len() / 50 + 1) {
            assert!(Model::from_bytes(&b[..cut]).is_err());
        }
        let mut p = b.clone();
        for i in (5..p.len()).step_by(97) {
            p[i] ^= 0x5a;
            let _ = Model::from_bytes(&p);
        }
    }
}

#[test]
fn models_store_counts_and_models_of_frequencies_still_read() {
    for compact in [false, true] {
        let (m, mut t) = trained(compact);
        let (b2, b1) = (m.to_bytes(), m.to_bytes_v1());
        let z = |b: &[u8]| zstd::bulk::compress(b, 3).unwrap().len();
        assert!(z(&b2) < z(&b1), "counts {} >= frequencies {}", z(&b2), z(&b1));
        let v = link(4_242);
        let mut c = Vec::new();
        RecordEncoder::new().encode(&m, &mut t, &v, &mut c).unwrap();
        for b in [&b2, &b1] {
            let m2 = Model::from_bytes(b).unwrap();
            let mut out = Vec::new();
            decode(&m2, &t, &c, &mut out).unwrap();
            assert_eq!(out, v);
            if b == &b2 {
                assert_eq!(m2.to_bytes(), b2);
            }
        }
    }
    // Stored counts are checked before they are quantised again.
    let mut p = crate::codec::dist::Pool::default();
    let d = p.add_counts(&[(3, 5), (9, 1), (40, 250)]);
    let e = p.add_counted(&[(3, 5), (9, 1), (40, 250)]).unwrap();
    assert_eq!((p.entries(d), p.counts(d)), (p.entries(e), p.counts(e)));
    let many: Vec<(u16, u16)> = (0..2049).map(|s| (s, 1)).collect();
    for bad in
        [&[][..], &[(3, 5), (3, 1)], &[(9, 1), (3, 5)], &[(3, 0)], &[(3, 4000), (4, 97)], &many]
    {
        assert!(p.add_counted(bad).is_err(), "{:?}", &bad[..bad.len().min(3)]);
    }
}

#[test]
fn garbage_never_panics_and_is_usually_rejected() {
    let (m, t) = trained(false);
    let mut x: u64 = 0x1234_5678;
    let mut accepted = 0;
    for n in 0..20_000 {
        let len = n % 64;
        let buf: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut out = Vec::new();
        if decode(&m, &t, &buf, &mut out).is_ok() {
            accepted += 1;
            value::validate(&out).unwrap();
        }
    }
    assert!(accepted < 20, "{accepted} random streams decoded cleanly");
}
