//! Simulated power loss: images of the segment before and after a batch of writes are mixed
//! page by page (each 4 KiB page from one or the other, at random), as a machine crash can
//! leave a file whose pages reached the disk at different times. Recovery on each hybrid must
//! give a consistent segment (surpdb check finds nothing) whose every readable value was once
//! written for that key, and the daemon must keep serving writes on it.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use surpd::client::{data_path, Client, Lookup};
use surpd::protocol::Request;

mod common;
use common::{str_value, tmpdir, Rng};
use surpd::config::Config;
use surpd::layout::status;
use surpd::segment::Segment;
use surpd::server::Daemon;

fn config(dir: &Path) -> Config {
    let mut c = Config::new(dir);
    c.size = 2 << 20;
    c.max_value = 4 << 10;
    c.max_clients = 4;
    c
}

/// Apply `ops` (key, Some(value) = set, None = delete) through a client and the daemon in
/// this thread, recording every value ever written per key.
fn apply(
    d: &mut Daemon,
    c: &Client,
    ops: &[(String, Option<String>)],
    written: &mut HashMap<String, HashSet<Vec<u8>>>,
) {
    for (k, v) in ops {
        let t = match v {
            Some(v) => {
                let enc = str_value(v);
                written.entry(k.clone()).or_default().insert(enc.clone());
                c.send(&Request::set(k.as_bytes(), &enc, 0)).unwrap()
            }
            None => c.send(&Request::delete(k.as_bytes())).unwrap(),
        };
        d.poll_once(usize::MAX);
        let r = c.wait(t).unwrap();
        assert!(r.status == status::OK || r.status == status::NOT_DONE);
    }
}

fn ops(rng: &mut Rng, round: u32, n: usize) -> Vec<(String, Option<String>)> {
    (0..n)
        .map(|i| {
            let k = format!("key{}", rng.next() % 700);
            if rng.next().is_multiple_of(8) {
                (k, None)
            } else {
                let pad = "#".repeat((rng.next() % 300) as usize);
                (k.clone(), Some(format!("{k}:r{round}:{i}:{pad}")))
            }
        })
        .collect()
}

#[test]
fn hybrid_images_recover_to_consistent_segments() {
    let dir = tmpdir("src");
    let mut rng = Rng(0x5eed_1234_abcd);
    let mut written = HashMap::new();
    let mut d = Daemon::attach(config(&dir)).unwrap();
    let c = Client::connect(&dir, Duration::from_secs(5)).unwrap();
    // Enough data that the 2 MiB heap wraps between the two images.
    apply(&mut d, &c, &ops(&mut rng, 0, 8000), &mut written);
    d.store.seg.region.flush().unwrap();
    let before = std::fs::read(data_path(&dir)).unwrap();
    apply(&mut d, &c, &ops(&mut rng, 1, 8000), &mut written);
    d.store.seg.region.flush().unwrap();
    let after = std::fs::read(data_path(&dir)).unwrap();
    let head = c.seg.hdr().head.load(Ordering::Relaxed);
    assert!(head > c.seg.cap(), "the heap wrapped between the images ({head} bytes written)");
    assert_eq!(before.len(), after.len());
    drop(c);
    drop(d); // no clean stop
    let pages = before.len() / 4096;
    for trial in 0..12 {
        let hdir = tmpdir(&format!("hybrid{trial}"));
        let mut img = Vec::with_capacity(after.len());
        for p in 0..pages {
            let src = if rng.next().is_multiple_of(2) { &before } else { &after };
            img.extend_from_slice(&src[p * 4096..(p + 1) * 4096]);
        }
        std::fs::write(data_path(&hdir), &img).unwrap();
        // A machine crash: the boot id recorded in the segment is not this boot's.
        {
            let seg = Segment::open(&data_path(&hdir), true).unwrap();
            seg.hdr().boot_id[0].store(0xdead, Ordering::Relaxed);
        }
        let mut d = Daemon::attach(config(&hdir)).unwrap_or_else(|e| panic!("trial {trial}: {e}"));
        let report = surpd::check::check(&hdir).unwrap();
        assert_eq!(report.problem_count, 0, "trial {trial}: {:?}", report.problems);
        let c = Client::connect(&hdir, Duration::from_secs(5)).unwrap();
        let check_reads = |c: &Client, written: &HashMap<String, HashSet<Vec<u8>>>| {
            let mut hits = 0;
            for (k, vals) in written {
                let pin = c.pin().unwrap();
                if let Lookup::Hit(r) = c.lookup(&pin, k.as_bytes(), 0) {
                    assert!(
                        vals.contains(r.value),
                        "trial {trial}: {k} holds a value never written"
                    );
                    hits += 1;
                }
            }
            hits
        };
        let hits = check_reads(&c, &written);
        assert!(hits > 0, "trial {trial}: something survives");
        // It keeps serving: more writes through the repaired heap, reads still sound.
        let mut more = written.clone();
        apply(&mut d, &c, &ops(&mut rng, 2 + trial, 1500), &mut more);
        check_reads(&c, &more);
        d.shutdown().unwrap();
        let report = surpd::check::check(&hdir).unwrap();
        assert_eq!(report.problem_count, 0, "trial {trial} after writes: {:?}", report.problems);
        std::fs::remove_dir_all(hdir).unwrap();
    }
    std::fs::remove_dir_all(dir).unwrap();
}
