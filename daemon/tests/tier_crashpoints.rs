//! Tiered mode, crash at every ordering point: a real `surpd` in front of a real
//! `redis-server` (Debian's package, started here on loopback) aborts at each point of a
//! sequence of upstream writes, a clean daemon takes its place, and the client keeps
//! waiting for the same tickets. A restarted daemon sends the unanswered requests upstream
//! again; afterwards every answer is the one a single application gives, and the upstream
//! holds exactly what the model says: an incr counted once, an add or delete answered as
//! the first application answered it. Run twice: one request at a time, and the whole
//! sequence pipelined (every request in flight at once, answered in order).

use std::path::Path;
use std::time::{Duration, Instant};

use redis::Commands;
use surpd::client::Client;
use surpd::layout::status;
use surpd::protocol::Request;
use surpd::ring::Reply;
use surpd::value;

mod common;
use common::{shm_dir, str_value, Surpd};

const PREFIX: &str = "t:";

struct Redis {
    child: std::process::Child,
    port: u16,
}

impl Redis {
    /// A redis-server on a free loopback port; None (the test is skipped) without one.
    fn start() -> Option<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let r = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.conn().is_none() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn conn(&self) -> Option<redis::Connection> {
        let c = redis::Client::open(self.url()).ok()?;
        let mut c = c.get_connection_with_timeout(Duration::from_secs(1)).ok()?;
        redis::cmd("PING").query::<String>(&mut c).ok()?;
        Some(c)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Set(&'static str, &'static str),
    Add(&'static str, &'static str),
    Delete(&'static str),
    Incr(&'static str, i64),
    Touch(&'static str),
    /// Add members with scores (all new but the ones given twice).
    Zadd(&'static str, &'static [(&'static str, f64)]),
    Append(&'static str, i64),
}

/// What each op answers when applied exactly once, in order, from an empty upstream.
const OPS: &[(Op, u32, Option<u64>)] = &[
    (Op::Set("a", "one"), status::OK, None),
    (Op::Add("b", "bee"), status::OK, None),
    (Op::Add("b", "other"), status::NOT_DONE, None),
    (Op::Incr("n", 5), status::OK, Some(5)),
    (Op::Incr("n", 2), status::OK, Some(7)),
    (Op::Delete("a"), status::OK, None),
    (Op::Delete("a"), status::NOT_DONE, None),
    (Op::Touch("b"), status::OK, None),
    (Op::Incr("n", 1), status::OK, Some(8)),
    (Op::Zadd("z", &[("m1", 1.0), ("m2", 2.0)]), status::OK, Some(2)),
    (Op::Zadd("z", &[("m1", 5.0), ("m3", 3.0)]), status::OK, Some(1)),
    (Op::Append("l", 1), status::OK, Some(1)),
    (Op::Append("l", 2), status::OK, Some(2)),
];

fn send(c: &Client, o: Op) -> u64 {
    let v;
    let r = match o {
        Op::Set(k, s) => {
            v = str_value(s);
            Request::set(k.as_bytes(), &v, 0)
        }
        Op::Add(k, s) => {
            v = str_value(s);
            Request::add(k.as_bytes(), &v, 0)
        }
        Op::Delete(k) => Request::delete(k.as_bytes()),
        Op::Incr(k, d) => Request::incr(k.as_bytes(), d, Some(0)),
        Op::Touch(k) => Request::touch(k.as_bytes(), 3_600_000),
        Op::Zadd(k, members) => {
            let owned: Vec<value::ZEntry<'_>> = members
                .iter()
                .map(|(m, s)| value::ZEntry { score: *s, member: m.as_bytes(), is_str: true })
                .collect();
            let mut buf = Vec::new();
            value::encode_zset(&mut buf, &owned);
            v = buf;
            Request::zadd(k.as_bytes(), &v, 0)
        }
        Op::Append(k, n) => {
            let mut buf = Vec::new();
            value::encode_int(&mut buf, n as i128);
            v = buf;
            Request::append(k.as_bytes(), &v, 0)
        }
    };
    c.send(&r).expect("enqueue")
}

fn args(url: &str) -> Vec<String> {
    ["--size", "4MiB", "--max-value", "64KiB", "--max-clients", "4", "--records-size", "16MiB"]
        .iter()
        .map(|s| s.to_string())
        .chain(["--upstream".into(), url.into(), "--upstream-prefix".into(), PREFIX.into()])
        .collect()
}

/// Wait for `ticket`, restarting the daemon (unarmed) whenever it has died.
fn wait(
    c: &Client,
    d: &mut Option<Surpd>,
    dir: &Path,
    args: &[&str],
    ticket: u64,
    restarts: &mut u32,
) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.wait_for(ticket, Duration::from_millis(20)) {
            Ok(r) => return r,
            Err(surpd::Error::Unavailable(_)) => {}
            Err(e) => panic!("ticket {ticket}: {e}"),
        }
        if d.as_mut().is_none_or(|d| d.exited()) {
            d.take().map(Surpd::kill);
            *d = Surpd::start(dir, args, &[]).ok();
            *restarts += 1;
        }
        assert!(Instant::now() < deadline, "ticket {ticket} unanswered for 30 s");
    }
}

/// One run with the daemon aborting at point `at` (0: never). Returns the points passed
/// (when it did not crash) and whether it crashed.
fn run(redis: &Redis, pipelined: bool, at: u64) -> (u64, bool) {
    let mut up = redis.conn().expect("redis");
    redis::cmd("FLUSHALL").exec(&mut up).unwrap();
    let dir = shm_dir("tier-crash");
    let owned = args(&redis.url());
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let env = [("SURPD_TEST_CRASH_AT", at.to_string())];
    let mut d = Surpd::start(&dir, &args, &env).ok();
    let mut crashed = d.is_none();
    let c = Client::connect(&dir, Duration::from_secs(10)).unwrap();
    // Wait for the upstream connection (a write before it would answer UNAVAILABLE).
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.stats().iter().all(|(k, v)| *k != "upstream_connected" || *v != 1) {
        assert!(Instant::now() < deadline, "no upstream connection");
        if d.as_mut().is_none_or(|d| d.exited()) {
            crashed = true;
            d.take().map(Surpd::kill);
            d = Surpd::start(&dir, &args, &[]).ok();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let when = |i: usize| format!("pipelined={pipelined} crash at {at}: op {i} {:?}", OPS[i].0);
    let mut tickets = Vec::new();
    let mut restarts = 0;
    for (i, (o, _, _)) in OPS.iter().enumerate() {
        tickets.push(send(&c, *o));
        if !pipelined {
            let r = wait(&c, &mut d, &dir, &args, tickets[i], &mut restarts);
            check(r, i, &when(i));
        }
    }
    if pipelined {
        for (i, &t) in tickets.iter().enumerate() {
            let r = wait(&c, &mut d, &dir, &args, t, &mut restarts);
            check(r, i, &when(i));
        }
    }
    let log = d.take().map(Surpd::stop).unwrap_or_default();
    let passed = log
        .lines()
        .find_map(|l| l.split("crash points passed: ").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    crashed |= restarts > 0;
    // The upstream holds exactly one application of each write.
    let key = |k: &str| format!("{PREFIX}{k}");
    let n: Option<i64> = up.get(key("n")).unwrap();
    assert_eq!(n, Some(8), "pipelined={pipelined} crash at {at}: counter");
    assert!(!up.exists::<_, bool>(key("a")).unwrap(), "crash at {at}: a deleted");
    let b: Vec<u8> = up.get(key("b")).unwrap();
    assert_eq!(surpd::tier::from_upstream(&b), str_value("bee"), "crash at {at}: b");
    let ttl: i64 = up.pttl(key("b")).unwrap();
    assert!(ttl > 0, "crash at {at}: b touched ({ttl})");
    let z: Vec<(String, f64)> = up.zrange_withscores(key("z"), 0, -1).unwrap();
    assert_eq!(
        z,
        [("m2".to_string(), 2.0), ("m3".to_string(), 3.0), ("m1".to_string(), 5.0)],
        "crash at {at}: each zadd once"
    );
    let l: Vec<Vec<u8>> = up.lrange(key("l"), 0, -1).unwrap();
    assert_eq!(l, [b"1".to_vec(), b"2".to_vec()], "crash at {at}: each append once");
    drop(c);
    std::fs::remove_dir_all(&dir).unwrap();
    (passed, crashed)
}

fn check(r: Reply, i: usize, when: &str) {
    let (_, st, v) = OPS[i];
    assert_eq!(r.status, st, "{when}: {r:?}");
    if let Some(v) = v {
        assert_eq!(r.value, v, "{when}: {r:?}");
    }
}

#[test]
fn every_crash_point_of_upstream_writes_applies_each_once() {
    let Some(redis) = Redis::start() else {
        eprintln!("skipped: no redis-server (apt install redis-server)");
        return;
    };
    for pipelined in [false, true] {
        let (points, crashed) = run(&redis, pipelined, 0);
        assert!(!crashed && points > 0, "counting run passed {points} points");
        let mut crashes = 0;
        for at in 1..=points {
            let (_, crashed) = run(&redis, pipelined, at);
            crashes += crashed as u64;
        }
        assert!(crashes * 10 >= points * 8, "crashed at {crashes} of {points} points");
        eprintln!("pipelined={pipelined}: crashed at each of {crashes} of {points} points");
    }
}

/// Found by review: a panic in the upstream thread left the daemon serving with nobody to
/// answer tiered writes; clients timed out and their boxes stayed busy. Now the daemon
/// aborts, and a restarted one applies the request once.
#[test]
fn a_panic_in_the_upstream_thread_stops_the_daemon_and_loses_nothing() {
    let Some(redis) = Redis::start() else {
        eprintln!("redis-server not found: skipped");
        return;
    };
    let dir = shm_dir("tier-panic");
    let owned = args(&redis.url());
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let env = [("SURPD_TEST_PANIC", "upstream batch".to_string())];
    let mut d = Surpd::start(&dir, &args, &env).unwrap();
    let c = Client::connect(&dir, Duration::from_secs(10)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.stats().iter().all(|(k, v)| *k != "upstream_connected" || *v != 1) {
        assert!(Instant::now() < deadline, "no upstream connection");
        std::thread::sleep(Duration::from_millis(5));
    }
    let t = c.send(&Request::incr(b"n", 5, Some(0))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.exited() {
        assert!(Instant::now() < deadline, "the daemon kept serving without its upstream thread");
        std::thread::sleep(Duration::from_millis(5));
    }
    let log = d.kill();
    assert!(log.contains("upstream thread panicked"), "{log}");
    let d = Surpd::start(&dir, &args, &[]).unwrap();
    let r = c.wait_for(t, Duration::from_secs(20)).unwrap();
    assert_eq!((r.status, r.value), (status::OK, 5), "applied once, by the restarted daemon");
    let mut up = redis.conn().unwrap();
    let n: Option<i64> = up.get(format!("{PREFIX}n")).unwrap();
    assert_eq!(n, Some(5));
    drop(c);
    d.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}
