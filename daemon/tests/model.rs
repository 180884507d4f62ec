//! The daemon's apply loop and the client read path, in one process, against a HashMap model.
//! A thread plays the daemon (poll_once in a loop); clients enqueue, wait and read.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use surpd::client::{Client, Lookup};

mod common;
use common::{bytes_value, get, tmpdir, Rng};
use surpd::config::Config;
use surpd::layout::{status, POLICY_EVICT, POLICY_NOEVICTION};
use surpd::protocol::Request;
use surpd::server::Daemon;

/// A daemon thread serving `dir` until the returned flag is set.
fn spawn_daemon(
    dir: &PathBuf,
    size: u64,
    max_value: u64,
    policy: u32,
) -> (Arc<AtomicBool>, thread::JoinHandle<()>) {
    spawn_daemon_sweeping(dir, size, max_value, policy, 1000, 1024)
}

/// [`spawn_daemon`], sweeping `budget` slots every `every` idle polls.
fn spawn_daemon_sweeping(
    dir: &PathBuf,
    size: u64,
    max_value: u64,
    policy: u32,
    every: u32,
    budget: u64,
) -> (Arc<AtomicBool>, thread::JoinHandle<()>) {
    let mut cfg = Config::new(dir);
    cfg.size = size;
    cfg.max_value = max_value;
    cfg.policy = policy;
    cfg.max_clients = 16;
    let mut d = Daemon::attach(cfg).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let h = thread::spawn(move || {
        let mut idle = 0u32;
        while !s.load(Ordering::Relaxed) {
            if d.poll_once(256) == 0 {
                idle += 1;
                if idle.is_multiple_of(every) {
                    d.reap();
                    d.store.sweep_expired(budget);
                }
                thread::yield_now();
            }
        }
        d.shutdown().unwrap();
    });
    (stop, h)
}

fn set(c: &Client, key: &[u8], v: &[u8]) -> u32 {
    c.call(&Request::set(key, v, 0)).unwrap().status
}

/// Many more bytes written than the segment holds, under noeviction with a live set that
/// fits: the cleaner must relocate live records and drop dead ones, and every read must
/// match the model exactly.
#[test]
fn noeviction_churn_matches_the_model() {
    let dir = tmpdir("noevict");
    let (stop, h) = spawn_daemon(&dir, 4 << 20, 16 << 10, POLICY_NOEVICTION);
    let c = Client::connect(&dir, Duration::from_secs(10)).unwrap();
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut rng = Rng(0x1234_5678);
    let mut written = 0u64;
    // Keys written once and never again: the cleaner must carry them along as it wraps.
    for i in 0..100u64 {
        let (k, v) = (format!("static{i}").into_bytes(), bytes_value(&[i as u8; 300]));
        assert_eq!(set(&c, &k, &v), status::OK);
        model.insert(k, v);
    }
    for i in 0..60_000u64 {
        let key = format!("key{}", rng.below(400)).into_bytes();
        match rng.below(10) {
            0 | 1 => {
                let r = c.call(&Request::delete(&key)).unwrap();
                assert_eq!(r.status == status::OK, model.remove(&key).is_some(), "delete {i}");
            }
            2 => {
                let v = bytes_value(format!("add{i}").as_bytes());
                let r = c.call(&Request::add(&key, &v, 0)).unwrap();
                let absent = !model.contains_key(&key);
                assert_eq!(r.status == status::OK, absent, "add {i}");
                if absent {
                    model.insert(key.clone(), v);
                }
            }
            _ => {
                let len = rng.below(1200) as usize;
                let v = bytes_value(&vec![(i % 251) as u8; len]);
                written += v.len() as u64;
                assert_eq!(set(&c, &key, &v), status::OK, "set {i}");
                model.insert(key.clone(), v);
            }
        }
        assert_eq!(get(&c, &key), model.get(&key).cloned(), "after op {i}");
    }
    assert!(written > 3 * (4 << 20), "the heap must have wrapped several times ({written} bytes)");
    for (k, v) in &model {
        assert_eq!(get(&c, k).as_ref(), Some(v));
    }
    let st: HashMap<_, _> = surpd::stats::gather(&c.seg, c.ring()).into_iter().collect();
    assert_eq!(st["items"], model.len() as u64);
    assert_eq!(st["evictions"], 0);
    assert!(st["relocations"] > 0, "live records must have been relocated");
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    // Reattach after a clean stop: same contents.
    let (stop, h) = spawn_daemon(&dir, 4 << 20, 16 << 10, POLICY_NOEVICTION);
    let c = Client::connect(&dir, Duration::from_secs(10)).unwrap();
    for (k, v) in &model {
        assert_eq!(get(&c, k).as_ref(), Some(v));
    }
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// Under eviction, a read returns the model's current value or nothing, never a stale or
/// foreign one; deleted keys are gone.
#[test]
fn eviction_never_returns_stale_values() {
    let dir = tmpdir("evict");
    let (stop, h) = spawn_daemon(&dir, 4 << 20, 16 << 10, POLICY_EVICT);
    let c = Client::connect(&dir, Duration::from_secs(10)).unwrap();
    let mut model: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    let mut rng = Rng(0xdead_beef);
    for i in 0..60_000u64 {
        let key = format!("key{}", rng.below(20_000)).into_bytes();
        if rng.below(10) == 0 {
            c.call(&Request::delete(&key)).unwrap();
            model.insert(key.clone(), None);
        } else {
            let v = bytes_value(
                format!(
                    "{}:{i}:{}",
                    String::from_utf8_lossy(&key),
                    "x".repeat(rng.below(900) as usize)
                )
                .as_bytes(),
            );
            assert_eq!(set(&c, &key, &v), status::OK);
            model.insert(key.clone(), Some(v));
        }
        let probe = format!("key{}", rng.below(20_000)).into_bytes();
        if let Some(got) = get(&c, &probe) {
            assert_eq!(
                Some(&Some(got)),
                model.get(&probe),
                "read of {:?} after op {i}",
                String::from_utf8_lossy(&probe)
            );
        }
    }
    let st: HashMap<_, _> = surpd::stats::gather(&c.seg, c.ring()).into_iter().collect();
    assert!(st["evictions"] > 10_000, "{st:?}");
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// Readers in other threads (each its own client and reader slot) while the writer churns
/// through the heap many times: every value read belongs to the key read (epoch
/// reclamation never lets space be reused under a reader).
#[test]
fn concurrent_readers_never_see_reused_space() {
    let dir = tmpdir("readers");
    let (stop, h) = spawn_daemon(&dir, 4 << 20, 16 << 10, POLICY_EVICT);
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for t in 0..2 {
        let (dir, done, reads) = (dir.clone(), done.clone(), reads.clone());
        readers.push(thread::spawn(move || {
            let c = Client::connect(&dir, Duration::from_secs(10)).unwrap();
            let mut rng = Rng(99 + t);
            while !done.load(Ordering::Relaxed) {
                let key = format!("key{}", rng.below(3000));
                let pin = c.pin().unwrap();
                if let Lookup::Hit(r) = c.lookup(&pin, key.as_bytes(), 0) {
                    // Spend a little time inside the pinned section, as a decoder would.
                    let body = &r.value[2..];
                    assert!(
                        body.starts_with(key.as_bytes()),
                        "value of {key} is {:?}",
                        String::from_utf8_lossy(body)
                    );
                    assert!(body.iter().skip(key.len() + 1).all(|&b| b == b'#'));
                }
                drop(pin);
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let c = Client::connect(&dir, Duration::from_secs(10)).unwrap();
    let mut rng = Rng(7);
    for i in 0..40_000u64 {
        let key = format!("key{}", rng.below(3000));
        let mut payload = format!("{key}:").into_bytes();
        payload.resize(key.len() + 1 + (i % 100) as usize, b'#');
        // Values under 128 bytes: a one-byte varint, so the body starts at offset 2.
        let v = bytes_value(&payload);
        c.send(&Request::set(key.as_bytes(), &v, 0)).unwrap();
    }
    c.call(&Request::noop()).unwrap();
    done.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(reads.load(Ordering::Relaxed) > 1000);
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// Prefix deletions against the model, with the sweep freeing entries as it laps a small
/// index while deletes shift entries under it: a freed entry whose records were not all
/// unlinked would bring deleted values back, which the model catches.
#[test]
fn prefix_deletions_match_the_model() {
    let dir = tmpdir("prefix");
    // A sweep of a few slots at every idle turn: it laps the index often, so entries are
    // freed often, and unlinks land around its cursor often.
    let (stop, h) = spawn_daemon_sweeping(&dir, 1 << 20, 4 << 10, POLICY_NOEVICTION, 1, 16);
    let c = Client::connect(&dir, Duration::from_secs(10)).unwrap();
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut rng = Rng(0x7072_6566);
    let mut deletions = 0;
    for i in 0..150_000u64 {
        let key = format!("p{}:{}", rng.below(40), rng.below(140)).into_bytes();
        match rng.below(50) {
            0 => {
                let prefix = format!("p{}:", rng.below(40)).into_bytes();
                let r = c.call(&Request::delete_prefix(&prefix)).unwrap();
                assert_eq!(r.status, status::OK, "delete_prefix {i}");
                model.retain(|k, _| !k.starts_with(&prefix));
                deletions += 1;
            }
            1..=12 => {
                let r = c.call(&Request::delete(&key)).unwrap();
                assert_eq!(r.status == status::OK, model.remove(&key).is_some(), "delete {i}");
            }
            _ => {
                let v = bytes_value(format!("v{i}").as_bytes());
                assert_eq!(set(&c, &key, &v), status::OK, "set {i}");
                model.insert(key.clone(), v);
            }
        }
        assert_eq!(get(&c, &key), model.get(&key).cloned(), "after op {i}");
        if i % 10_000 == 9_999 {
            for a in 0..40 {
                for b in 0..140 {
                    let k = format!("p{a}:{b}").into_bytes();
                    assert_eq!(get(&c, &k), model.get(&k).cloned(), "{a}:{b} after op {i}");
                }
            }
        }
    }
    assert!(deletions > 2_000, "{deletions}");
    let st: HashMap<_, _> = surpd::stats::gather(&c.seg, c.ring()).into_iter().collect();
    assert!(st["items"] >= model.len() as u64);
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    // After a restart the deletions still hold (entries not yet freed are in the file).
    let (stop, h) = spawn_daemon(&dir, 1 << 20, 4 << 10, POLICY_NOEVICTION);
    let c = Client::connect(&dir, Duration::from_secs(10)).unwrap();
    for a in 0..40 {
        for b in 0..140 {
            let k = format!("p{a}:{b}").into_bytes();
            assert_eq!(get(&c, &k), model.get(&k).cloned(), "{a}:{b} after the restart");
        }
    }
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// The case a lap can miss, built from keys chosen by their hash, with the sweep driven one
/// step at a time: a deleted record one slot after the sweep's cursor is moved behind it by
/// a delete in its probe run. The deletion's entry is freed at the end of that lap; the
/// record must have been unlinked first, or it reads again.
#[test]
fn a_deleted_record_moved_behind_the_sweep_stays_deleted() {
    let dir = tmpdir("prefix-moved");
    let mut cfg = Config::new(&dir);
    cfg.size = 1 << 20;
    cfg.max_value = 4 << 10;
    cfg.max_clients = 4;
    let mut d = Daemon::attach(cfg).unwrap();
    let c = Client::connect(&dir, Duration::from_secs(10)).unwrap();
    let call = |d: &mut Daemon, r: &Request<'_>| {
        let t = c.send(r).unwrap();
        while d.poll_once(64) == 0 {}
        c.wait_for(t, Duration::from_secs(10)).unwrap().status
    };
    // A key that stays ("x...") and a key the deletion takes ("g..."), same home slot.
    let (seg, mask) = (&c.seg, c.seg.mask);
    let home_of = |k: &[u8]| seg.hash(k) & mask;
    let xs: HashMap<u64, Vec<u8>> =
        (0..20_000u32).map(|n| format!("x{n}").into_bytes()).map(|x| (home_of(&x), x)).collect();
    // (Not at the index's last slot: the lap must not wrap between them.)
    let (x, g) = (0u32..)
        .map(|n| format!("g{n}").into_bytes())
        .find_map(|g| {
            xs.get(&home_of(&g)).filter(|_| home_of(&g) + 1 < mask).map(|x| (x.clone(), g))
        })
        .unwrap();
    let h = home_of(&x);
    let v = bytes_value(b"value");
    assert_eq!(call(&mut d, &Request::set(&x, &v, 0)), status::OK);
    assert_eq!(call(&mut d, &Request::set(&g, &v, 0)), status::OK);
    assert_eq!(call(&mut d, &Request::delete_prefix(b"g")), status::OK);
    assert_eq!(get(&c, &g), None);
    // The sweep looks at slots 0..=h (x is live; g, at h + 1, is next).
    d.store.sweep_expired(h + 1);
    // Deleting x moves g to slot h, behind the sweep.
    assert_eq!(call(&mut d, &Request::delete(&x)), status::OK);
    // The rest of the lap: the deletion's entry is freed at its end.
    d.store.sweep_expired(c.seg.slots - (h + 1));
    assert_eq!(c.seg.prefix_live(), 0, "the lap is complete: the entry is freed");
    assert_eq!(get(&c, &g), None, "a deleted record came back");
    d.shutdown().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}
