//! Upgrading a segment of the format before namespaces (re-keying its bytes keys that would
//! now read as namespaced), with the daemon crashing at every point of the upgrade: after a
//! clean restart every key reads back under its escaped name exactly once.

use std::path::Path;
use std::time::Duration;

use surpd::client::Client;

mod common;
use common::{get, shm_dir, str_value, Surpd};

const ARGS: &[&str] = &["--size", "1MiB", "--max-value", "64", "--log-level", "warn"];

/// Written by a version-1 build (tests/golden/make_golden.py): raw bytes keys "\xff" + a
/// byte below 0x20, which version 2 reads as namespaced unless stored escaped.
const RAW: &[(&[u8], Option<&str>)] = &[
    (b"\xff\x05bin", Some("was raw, reads as namespace 5 unless escaped")),
    (b"\xff\x00zero", Some("starts like an escaped key")),
    (b"\xff\x1fedge", None), // the int 31
];

fn unpack(dir: &Path) {
    let image =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/upgrade-v1-binkeys.surp.gz");
    let out = std::process::Command::new("gzip").arg("-dc").arg(&image).output().unwrap();
    assert!(out.status.success(), "gzip -dc {}", image.display());
    std::fs::write(dir.join("data.surp"), out.stdout).unwrap();
}

/// Start the upgrade with the daemon aborting at crash point `at` (0: never); then a clean
/// daemon. Returns the points the armed daemon passed when it did not crash.
fn run(at: u64) -> u64 {
    let dir = shm_dir("upgrade");
    unpack(&dir);
    let armed = Surpd::start(&dir, ARGS, &[("SURPD_TEST_CRASH_AT", at.to_string())]);
    let passed = match armed {
        Ok(d) => d
            .stop()
            .lines()
            .find_map(|l| l.split("crash points passed: ").nth(1))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0),
        Err(_) => 0, // crashed while attaching
    };
    let d = Surpd::start(&dir, ARGS, &[]).unwrap();
    let c = Client::connect(&dir, Duration::from_secs(10)).unwrap();
    let when = format!("crashing at point {at}");
    for &(raw, text) in RAW {
        let escaped = [&[0xff, 0][..], raw].concat();
        let got = get(&c, &escaped);
        assert!(got.is_some(), "{when}: {raw:?} lost");
        if let Some(t) = text {
            assert_eq!(got.unwrap(), str_value(t), "{when}: {raw:?}");
        }
        let twice = [&[0xff, 0, 0xff, 0][..], raw].concat();
        assert_eq!(get(&c, &twice), None, "{when}: {raw:?} escaped twice");
    }
    assert!(get(&c, b"plain").is_some(), "{when}: plain");
    let items = c.stats().into_iter().find(|(k, _)| *k == "items").unwrap().1;
    assert_eq!(items, 5, "{when}: every key once");
    drop(c);
    d.stop();
    let r = surpd::check::check(&dir).unwrap();
    assert_eq!(r.problem_count, 0, "{when}: {:?}", r.problems);
    std::fs::remove_dir_all(&dir).unwrap();
    passed
}

#[test]
fn a_crash_at_any_point_of_the_upgrade_loses_and_doubles_no_key() {
    let points = run(0);
    assert!(points >= 6, "the upgrade of three keys passes its crash points: {points}");
    for at in 1..=points {
        run(at);
    }
}
