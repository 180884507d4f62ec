//! Records a client compressed itself, from a client that does not play by the rules: the
//! daemon decodes every one in full before storing it, so garbage, truncations, bit flips,
//! unknown models and bombs are refused (nothing stored, never a panic), a record
//! compressed with an older model is compressed again, and whatever it accepts reads back as
//! exactly the value it decoded.

use std::sync::atomic::Ordering;
use std::time::Duration;

use surpd::client::Client;
use surpd::codec::RecordEncoder;
use surpd::layout::{features, status};
use surpd::protocol::Request;
use surpd::records::{decode_payload, LogTables};
use surpd::value;

mod common;
use common::{shm_dir, str_value, Rng, Surpd};

fn link(n: usize) -> Vec<u8> {
    let mut v = vec![value::DICT, 2];
    v.extend(str_value("url"));
    v.extend(str_value(&format!("https://example.org/projects/item-{}/", n % 97)));
    v.extend(str_value("title"));
    v.extend(str_value(&format!("The shared record number {n} of the store")));
    v
}

fn read(c: &Client, rid: u64) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    c.record(rid, &mut out).unwrap().ok().map(|()| out)
}

#[test]
fn the_daemon_checks_every_record_a_client_compressed() {
    let dir = shm_dir("encoded");
    let started = std::time::Instant::now();
    let d = Surpd::start(
        &dir,
        &["--size", "4MiB", "--max-value", "64KiB", "--train-after", "700"],
        &[],
    )
    .unwrap();
    let c = Client::connect(&dir, Duration::from_secs(20)).unwrap();
    // Model 1: trained by the daemon at 700 records (too few for a small first model before
    // it); model 2: asked for.
    for i in 0..2500 {
        assert_eq!(c.call(&Request::insert(&link(i))).unwrap().status, status::OK);
    }
    assert_eq!(c.call(&Request::train(false)).unwrap().status, status::OK);
    let mut enc = RecordEncoder::new();
    let mut bytes = Vec::new();
    let val = link(7_000);
    assert_eq!(c.encode_record(&val, &mut enc, &mut bytes).unwrap(), Some(2));
    let good = bytes.clone();
    // Records that would not get smaller go as they are.
    let mut noise = Rng(5);
    let random: Vec<u8> = (0..300).map(|_| noise.next() as u8).collect();
    let blob = common::bytes_value(&random);
    assert_eq!(c.encode_record(&blob, &mut enc, &mut bytes).unwrap(), None);
    // A daemon of an earlier version (the features word is not its own) would take the
    // bytes for a plain value: records go as they are.
    let rh = c.ring().hdr();
    let word = rh.daemon_features.load(Ordering::Relaxed);
    let gen = rh.daemon_generation.load(Ordering::Relaxed);
    rh.daemon_features.store(features::word(gen + 1, features::ALL), Ordering::Relaxed);
    assert_eq!(c.encode_record(&val, &mut enc, &mut bytes).unwrap(), None);
    rh.daemon_features.store(word, Ordering::Relaxed);
    assert_eq!(c.encode_record(&val, &mut enc, &mut bytes).unwrap(), Some(2));
    let insert = |model: u32, b: &[u8]| c.call(&Request::insert_encoded(&model.to_le_bytes(), b));

    // Stored as sent, and read back exactly.
    let r = insert(2, &good).unwrap();
    assert_eq!(r.status, status::OK);
    assert_eq!(read(&c, r.value).as_deref(), Some(&val[..]));
    let stats = |name: &str| c.stats().into_iter().find(|s| s.0 == name).unwrap().1;
    assert_eq!(stats("records_encoded_by_clients"), 1);

    // Compressed with model 1 (a client that had not seen model 2 yet): decoded with it,
    // stored under model 2, read back exactly.
    let mut t = LogTables::default();
    t.refresh(c.records().unwrap()).unwrap();
    let mut old = Vec::new();
    enc.encode(&t.models[0].clone(), &mut t, &val, &mut old).unwrap();
    assert_ne!(old, good);
    let r = insert(1, &old).unwrap();
    assert_eq!(r.status, status::OK);
    assert_eq!(read(&c, r.value).as_deref(), Some(&val[..]));
    assert_eq!(stats("records_encoded_by_clients"), 1, "compressed again, not as sent");

    // An update sent compressed: a new id, the old one gone.
    let u = c.call(&Request::update_encoded(r.value, &2u32.to_le_bytes(), &good)).unwrap();
    assert_eq!(u.status, status::OK);
    assert_eq!(read(&c, u.value).as_deref(), Some(&val[..]));
    assert_eq!(read(&c, r.value), None);

    // No such model, or no model number: refused.
    for m in [0u32, 3, u32::MAX] {
        assert_eq!(insert(m, &good).unwrap().status, status::BAD_REQUEST, "model {m}");
    }
    let short = Request { key: &[2, 0, 0], ..Request::insert_encoded(&[2, 0, 0, 0], &good) };
    assert_eq!(c.call(&short).unwrap().status, status::BAD_REQUEST);

    // A bomb: a value over max_value, small once compressed.
    let mut big = vec![value::DICT, 1];
    big.extend(str_value("title"));
    big.extend(str_value(&"The shared record number 5 of the store".repeat(2_000)));
    let mut bomb = Vec::new();
    enc.encode(&t.models[1].clone(), &mut t, &big, &mut bomb).unwrap();
    assert!(bomb.len() < 64 << 10 && big.len() > 64 << 10, "{} {}", bomb.len(), big.len());
    assert_eq!(insert(2, &bomb).unwrap().status, status::TOO_LARGE);

    // Truncations, bit flips and random bytes: refused, or (when they happen to decode)
    // stored and read back as exactly what they decode to, never as an error or another
    // record's value.
    let mut forged: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
    for bit in 0..good.len() * 8 {
        let mut f = good.clone();
        f[bit / 8] ^= 1 << (bit % 8);
        forged.push(f);
    }
    let mut rng = Rng(11);
    for _ in 0..300 {
        let n = rng.below(80) as usize;
        forged.push((0..n).map(|_| rng.next() as u8).collect());
    }
    let (mut refused, mut accepted) = (0, 0);
    let live_before = stats("records");
    for f in &forged {
        let r = insert(2, f).unwrap();
        // TOO_LARGE: it claims more items than max_value could hold.
        if r.status == status::BAD_REQUEST || r.status == status::TOO_LARGE {
            refused += 1;
            continue;
        }
        assert_eq!(r.status, status::OK);
        accepted += 1;
        let mut want = Vec::new();
        decode_payload(&t, 2, f, &mut want).unwrap();
        value::validate(&want).unwrap();
        assert_eq!(read(&c, r.value), Some(want));
    }
    assert_eq!(stats("records"), live_before + accepted);
    assert!(refused > forged.len() * 9 / 10, "{refused} of {}", forged.len());

    // The honest records are all there.
    assert_eq!(read(&c, insert(2, &good).unwrap().value).as_deref(), Some(&val[..]));
    drop(c);
    let log = d.stop();
    assert!(!log.contains("panic"), "{log}");
    // Hundreds refused, a warning a second at most: a client sending garbage cannot flood
    // the log (before, one line each).
    let lines = log.matches("encoded record refused").count() as u64;
    assert!(refused > 200 && lines >= 1, "{refused} refused, {lines} lines");
    assert!(lines <= 1 + started.elapsed().as_secs(), "{lines} lines in {:?}", started.elapsed());
}

#[test]
fn threads_of_one_client_read_and_compress_records_while_models_arrive() {
    let dir = shm_dir("encoded-threads");
    let d = Surpd::start(
        &dir,
        &["--size", "4MiB", "--max-value", "64KiB", "--train-after", "700"],
        &[],
    )
    .unwrap();
    let c = Client::connect(&dir, Duration::from_secs(20)).unwrap();
    let mut ids = Vec::new();
    for i in 0..2500 {
        let r = c.call(&Request::insert(&link(i))).unwrap();
        assert_eq!(r.status, status::OK);
        ids.push(r.value);
    }
    let trained = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..4u64)
            .map(|w| {
                let (c, ids, trained) = (&c, &ids, &trained);
                s.spawn(move || {
                    let (mut enc, mut bytes, mut rng) = (RecordEncoder::new(), Vec::new(), Rng(w));
                    let mut rounds = 0u64;
                    // Until the models below are in, and a few hundred rounds at least.
                    while rounds < 300 || !trained.load(Ordering::Acquire) {
                        let i = rng.below(ids.len() as u64) as usize;
                        assert_eq!(read(c, ids[i]), Some(link(i)), "record {i}");
                        let model = c.encode_record(&link(i), &mut enc, &mut bytes).unwrap();
                        assert!(model.is_some_and(|m| m >= 1), "{model:?}");
                        rounds += 1;
                    }
                    rounds
                })
            })
            .collect();
        // Each model the daemon appends makes the threads parse the table log again.
        for _ in 0..3 {
            assert_eq!(c.call(&Request::train(false)).unwrap().status, status::OK);
        }
        trained.store(true, Ordering::Release);
        for w in workers {
            assert!(w.join().unwrap() >= 300);
        }
    });
    let mut t = LogTables::default();
    t.refresh(c.records().unwrap()).unwrap();
    assert_eq!(t.models.len(), 4);
    drop(c);
    let log = d.stop();
    assert!(!log.contains("panic"), "{log}");
}
