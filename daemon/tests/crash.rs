//! Crashes simulated between two steps of the apply loop: the writer is stopped (a panic
//! unwinding out of the apply callback) after a request's publish and before its result is
//! written to the ring; a new daemon then attaches to the same files. The request must take
//! effect exactly once and its client must get the right answer.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use surpd::client::Client;
use surpd::protocol::Request;

mod common;
use common::{get, tmpdir};
use surpd::config::Config;
use surpd::layout::status;
use surpd::server::Daemon;
use surpd::value;

fn config(dir: &PathBuf) -> Config {
    let mut c = Config::new(dir);
    c.size = 4 << 20;
    c.max_value = 16 << 10;
    c.max_clients = 8;
    c
}

/// Apply everything queued except that the request with `ticket` in the client's box
/// "crashes" the daemon right after its apply step (before its result is written); then
/// drop the daemon without a clean stop and attach a new one.
fn crash_after_apply(dir: &PathBuf, c: &Client, ticket: u64) -> Daemon {
    let mut d = Daemon::attach(config(dir)).unwrap();
    let b = c.boxno();
    let r = catch_unwind(AssertUnwindSafe(|| {
        let Daemon { store, ring, .. } = &mut d;
        let mut scratch = Vec::new();
        ring.poll(b, usize::MAX, &mut scratch, |req| {
            let reply = store.apply(ring, req);
            if req.ticket == ticket {
                panic!("simulated crash after the publish of ticket {ticket}");
            }
            reply
        });
    }));
    assert!(r.is_err(), "the simulated crash happened");
    assert!(c.ring().ctl(b).done.load(Ordering::Acquire) < ticket, "no result was written");
    drop(d); // no shutdown: the segment stays marked unclean
    Daemon::attach(config(dir)).unwrap()
}

#[test]
fn incr_published_before_a_crash_is_answered_not_applied_again() {
    let dir = tmpdir("incr");
    drop(Daemon::attach(config(&dir)).unwrap());
    let c = Client::connect(&dir, Duration::from_secs(5)).unwrap();
    let t1 = c.send(&Request::incr(b"n", 5, Some(0))).unwrap();
    let t2 = c.send(&Request::incr(b"n", 1, Some(0))).unwrap();
    let mut d = crash_after_apply(&dir, &c, t1);
    // The recovered daemon answered t1 from the journal; t2 is still queued.
    let r1 = c.wait(t1).unwrap();
    assert_eq!((r1.status, r1.value), (status::OK, 5));
    d.poll_once(usize::MAX);
    let r2 = c.wait(t2).unwrap();
    assert_eq!((r2.status, r2.value), (status::OK, 6), "t1 applied once, then t2");
    assert_eq!(value::decode_int(&get(&c, b"n").unwrap()).unwrap(), Some(6));
    d.shutdown().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn append_and_delete_published_before_a_crash_take_effect_once() {
    let dir = tmpdir("append");
    drop(Daemon::attach(config(&dir)).unwrap());
    let c = Client::connect(&dir, Duration::from_secs(5)).unwrap();
    let item = [value::INT, 2]; // the int 1
    let t1 = c.send(&Request::append(b"l", &item, 0)).unwrap();
    let mut d = crash_after_apply(&dir, &c, t1);
    assert_eq!(c.wait(t1).unwrap(), surpd::ring::Reply::ok(1));
    d.poll_once(usize::MAX);
    assert_eq!(get(&c, b"l").unwrap(), vec![value::LIST, 1, value::INT, 2], "one item, not two");
    drop(d);

    let t2 = c.send(&Request::delete(b"l")).unwrap();
    let t3 = c.send(&Request::append(b"l", &item, 0)).unwrap();
    let mut d = crash_after_apply(&dir, &c, t2);
    assert_eq!(c.wait(t2).unwrap().status, status::OK, "the delete is reported done");
    d.poll_once(usize::MAX);
    assert_eq!(
        c.wait(t3).unwrap(),
        surpd::ring::Reply::ok(1),
        "append after the delete starts anew"
    );
    d.shutdown().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_request_that_crashed_before_its_publish_is_applied_on_restart() {
    let dir = tmpdir("before");
    drop(Daemon::attach(config(&dir)).unwrap());
    let c = Client::connect(&dir, Duration::from_secs(5)).unwrap();
    let t1 = c.send(&Request::incr(b"n", 1, Some(0))).unwrap();
    {
        let mut d = Daemon::attach(config(&dir)).unwrap();
        let b = c.boxno();
        let r = catch_unwind(AssertUnwindSafe(|| {
            let Daemon { ring, .. } = &mut d;
            let mut scratch = Vec::new();
            ring.poll(b, usize::MAX, &mut scratch, |_| panic!("crash before applying"));
        }));
        assert!(r.is_err());
    }
    let mut d = Daemon::attach(config(&dir)).unwrap();
    d.poll_once(usize::MAX);
    assert_eq!(c.wait(t1).unwrap().value, 1);
    d.shutdown().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}
