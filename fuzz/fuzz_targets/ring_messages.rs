//! Arbitrary bytes through the apply loop, two ways: published raw as a client's queue
//! contents (the daemon answers, skips or poisons: a request without a valid checksum is
//! never applied), or cut into well-framed requests with arbitrary ops, flags, keys,
//! payloads and arguments (what a buggy or hostile client can send through its own box:
//! the daemon refuses or applies each, and never panics). Afterwards the segment is
//! consistent for the offline check.
#![no_main]
use std::sync::atomic::Ordering;
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use surpd::config::Config;
use surpd::server::Daemon;

static DAEMON: OnceLock<Mutex<(Daemon, std::path::PathBuf)>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let cell = DAEMON.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("surpd-fuzz-ring-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = Config::new(&dir);
        cfg.size = 1 << 20;
        cfg.max_value = 256;
        cfg.max_clients = 2;
        cfg.records_size = 16 << 20;
        surpd::log::set_level(surpd::log::Level::Error);
        Mutex::new((Daemon::attach(cfg).unwrap(), dir))
    });
    let mut g = cell.lock().unwrap();
    let (d, _dir) = &mut *g;
    let ring = &d.ring;
    // Free box 0 as a scribbling process could (its owner word cleared), then claim it the
    // way every client does: the claim resets whatever the last input left in the box.
    let c = ring.ctl(0);
    c.owner_pid.store(0, Ordering::Relaxed);
    c.active.store(surpd::ring::BOX_FREE, Ordering::Release);
    let Some(mut w) = ring.claim(std::process::id(), 0).unwrap() else { return };
    let b = w.boxno();
    let c = ring.ctl(b);
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        let n = rest.len().min(ring.box_bytes as usize) & !7;
        ring.region.write(ring.data_off + b as u64 * ring.box_bytes, &rest[..n]);
        c.tail.store(n as u64, Ordering::Release);
    } else {
        // [op][flags][key_len][payload_len][arg: 8][arg2: 8] key payload, repeated.
        let (mut ticket, mut r) = (1u64, rest);
        while r.len() >= 20 && ticket < 64 {
            let (op, flags, klen, plen) = (r[0], r[1], r[2] as usize, r[3] as usize);
            let arg = u64::from_le_bytes(r[4..12].try_into().unwrap());
            let arg2 = u64::from_le_bytes(r[12..20].try_into().unwrap());
            r = &r[20..];
            let (key, rest2) = r.split_at(klen.min(r.len()));
            let (payload, rest3) = rest2.split_at(plen.min(rest2.len()));
            r = rest3;
            w.consumed_to(ring.consumed(b).0);
            let req = surpd::protocol::Request { op, flags, key, payload, arg, arg2 };
            if ring.enqueue(&mut w, ticket, &req).is_err() {
                break;
            }
            ticket += 1;
        }
    }
    d.poll_once(usize::MAX);
    // A TRAIN request is answered when its background training ends.
    for _ in 0..100 {
        if d.store.held.is_empty() {
            break;
        }
        if let Some(rs) = d.store.recs.as_ref() {
            rs.training_done_by(std::time::Instant::now() + std::time::Duration::from_secs(10));
        }
        d.finish_training();
        d.poll_once(usize::MAX);
    }
    let report = surpd::check::check(&d.cfg.dir).unwrap();
    assert!(
        report.problems.iter().all(|p| !p.contains("fails validation")),
        "{:?}",
        report.problems
    );
});
