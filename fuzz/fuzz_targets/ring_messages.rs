//! Arbitrary bytes published as requests in a client's box: the daemon's apply loop answers,
//! skips or poisons, and never panics; the segment stays consistent for the offline check.
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
        surpd::log::set_level(surpd::log::Level::Error);
        Mutex::new((Daemon::attach(cfg).unwrap(), dir))
    });
    let mut g = cell.lock().unwrap();
    let (d, _dir) = &mut *g;
    let ring = &d.ring;
    let c = ring.ctl(0);
    // Reset box 0 as a new claim would, and publish the input as its queue contents.
    c.owner_pid.store(std::process::id(), Ordering::Relaxed);
    c.head.store(0, Ordering::Relaxed);
    c.done.store(0, Ordering::Relaxed);
    c.poisoned.store(0, Ordering::Relaxed);
    c.claims.fetch_add(1, Ordering::Relaxed);
    c.active.store(1, Ordering::Release);
    let n = data.len().min(ring.box_bytes as usize) & !7;
    ring.region.write(ring.data_off, &data[..n]);
    c.tail.store(n as u64, Ordering::Release);
    d.poll_once(usize::MAX);
    let report = surpd::check::check(&d.cfg.dir).unwrap();
    assert!(
        report.problems.iter().all(|p| !p.contains("fails validation")),
        "{:?}",
        report.problems
    );
});
