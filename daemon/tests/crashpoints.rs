//! Crash at every ordering point, not only at random moments (the approach of CrashMonkey
//! and ACE: most crash bugs need a few operations, and a crash between two particular
//! stores). Each scenario is a short sequence of operations against a real `surpd` process
//! built with the test-only crash points. A first run counts the points the daemon passes;
//! then for every N the scenario runs again on a fresh directory with the daemon aborting at
//! its Nth point (SIGABRT: no unwinding, no flush, what SIGKILL leaves), a clean daemon is
//! started in its place, and the client keeps waiting for the same tickets. Afterwards:
//! every acknowledged operation got the answer the model predicts and took effect exactly
//! once, `surpd check` finds the files consistent, and a further lap of writes around the
//! heap keeps every key.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use surpd::client::{Client, Lookup};
use surpd::layout::status;
use surpd::protocol::Request;
use surpd::ring::Reply;
use surpd::value;

mod common;
use common::{bytes_value, shm_dir, str_value, Surpd};

const ARGS: &[&str] = &[
    "--policy",
    "noeviction",
    "--size",
    "4MiB",
    "--max-value",
    "64KiB",
    "--max-clients",
    "8",
    "--records-size",
    "64MiB",
    "--train-after",
    "0",
    "--log-level",
    "warn",
];

#[derive(Clone, Debug)]
enum Op {
    Set(&'static str, usize),
    Delete(&'static str),
    Incr(&'static str, i64),
    Append(&'static str, i64),
    Zadd(&'static str, &'static str, f64),
    Touch(&'static str),
    Clear,
    Insert(usize),
    /// Insert record `.0` with a blob of `.1` bytes (fills chunks, so the file grows).
    InsertBig(usize, usize),
    Update(usize, usize),
    Remove(usize),
    Train,
    /// Grow the segment to this many bytes.
    Resize(u64),
    /// Open namespace `.0` (ids are given in the order namespaces are first opened), with a
    /// max_items quota (0: none).
    NsOpen(&'static str, u64),
    /// Set key `.1` of namespace `.0` to a value of `.2` bytes.
    NsSet(u8, &'static str, usize),
    NsClear(u8),
    /// Remove the `.1` oldest entries of namespace `.0`.
    NsCull(u8, u64),
    /// Every key of the default namespace starting with `.0` is gone (O(1)).
    DeletePrefix(&'static str),
}

/// The stored form of key `k` of namespace `id`.
fn ns_key(id: u8, k: &str) -> Vec<u8> {
    [&[0xff, id][..], k.as_bytes()].concat()
}

/// What the store should hold: cache keys with their encoded values, records by the order
/// they were inserted (id, encoded value; None once removed or replaced).
#[derive(Default)]
struct Model {
    keys: HashMap<Vec<u8>, Vec<u8>>,
    zsets: HashMap<Vec<u8>, BTreeMap<Vec<u8>, f64>>,
    records: Vec<(u64, Option<Vec<u8>>)>,
    seq: u64,
    /// Namespaces: ids by name, max_items quotas, and each namespaced key's last write.
    ns_ids: Vec<&'static str>,
    ns_quota: HashMap<u8, u64>,
    ns_written: HashMap<Vec<u8>, u64>,
    /// Keys that must read as absent (cleared, culled or evicted from a namespace).
    gone: std::collections::HashSet<Vec<u8>>,
}

fn int_value(n: i128) -> Vec<u8> {
    let mut v = Vec::new();
    value::encode_int(&mut v, n);
    v
}

fn list_value(items: &[i64]) -> Vec<u8> {
    let mut v = vec![value::LIST];
    value::put_varint(&mut v, items.len() as u64);
    for &i in items {
        v.extend(int_value(i as i128));
    }
    v
}

fn zset_payload(member: &str, score: f64) -> Vec<u8> {
    let mut v = vec![value::ZSET, 1];
    v.extend_from_slice(&score.to_le_bytes());
    v.push(value::STR);
    value::put_varint(&mut v, member.len() as u64);
    v.extend_from_slice(member.as_bytes());
    v
}

fn record_value(n: usize) -> Vec<u8> {
    // A small dict, like the records the store is for.
    let mut v = vec![value::DICT, 2];
    v.extend(str_value("url"));
    v.extend(str_value(&format!("https://example.org/item/{n}")));
    v.extend(str_value("title"));
    v.extend(str_value(&format!("Record number {n}")));
    v
}

fn big_record_value(n: usize, size: usize) -> Vec<u8> {
    let mut v = vec![value::DICT, 2];
    v.extend(str_value("n"));
    v.extend(str_value(&n.to_string()));
    v.extend(str_value("blob"));
    v.extend(bytes_value(&vec![(n % 251) as u8; size]));
    v
}

/// The value a Set of size `n` writes (distinct per write, so a stale copy is detected).
fn blob(seq: u64, n: usize) -> Vec<u8> {
    let mut p = format!("{seq}:").into_bytes();
    p.resize(n.max(p.len()), b'a' + (seq % 26) as u8);
    bytes_value(&p)
}

impl Model {
    /// Send `op` and return its ticket with the reply the model expects (None: any OK).
    fn send(&mut self, c: &Client, o: &Op) -> (u64, Expect) {
        self.seq += 1;
        let t = |r: surpd::Result<u64>| r.expect("enqueue");
        match *o {
            Op::Set(k, n) => {
                let v = blob(self.seq, n);
                let tk = t(c.send(&Request::set(k.as_bytes(), &v, 0)));
                self.zsets.remove(k.as_bytes());
                self.gone.remove(k.as_bytes());
                self.keys.insert(k.as_bytes().to_vec(), v);
                (tk, Expect::Status(status::OK))
            }
            Op::Delete(k) => {
                let had = self.keys.remove(k.as_bytes()).is_some();
                self.zsets.remove(k.as_bytes());
                let tk = t(c.send(&Request::delete(k.as_bytes())));
                (tk, Expect::Status(if had { status::OK } else { status::NOT_DONE }))
            }
            Op::Incr(k, d) => {
                let cur = match self.keys.get(k.as_bytes()) {
                    Some(v) => value::decode_int(v).unwrap().unwrap(),
                    None => 0,
                };
                let new = cur + d as i128;
                self.keys.insert(k.as_bytes().to_vec(), int_value(new));
                let tk = t(c.send(&Request::incr(k.as_bytes(), d, Some(0))));
                (tk, Expect::Value(new as u64))
            }
            Op::Append(k, item) => {
                let mut items: Vec<i64> = match self.keys.get(k.as_bytes()) {
                    Some(v) => value::list_items(v)
                        .unwrap()
                        .iter()
                        .map(|r| value::decode_int(&v[r.clone()]).unwrap().unwrap() as i64)
                        .collect(),
                    None => Vec::new(),
                };
                items.push(item);
                self.keys.insert(k.as_bytes().to_vec(), list_value(&items));
                let p = int_value(item as i128);
                let tk = t(c.send(&Request::append(k.as_bytes(), &p, 0)));
                (tk, Expect::Value(items.len() as u64))
            }
            Op::Zadd(k, m, score) => {
                let z = self.zsets.entry(k.as_bytes().to_vec()).or_default();
                let new = z.insert(m.as_bytes().to_vec(), score).is_none();
                self.keys.remove(k.as_bytes());
                let p = zset_payload(m, score);
                let tk = t(c.send(&Request::zadd(k.as_bytes(), &p, 0)));
                (tk, Expect::Value(new as u64))
            }
            Op::Touch(k) => {
                let present = self.keys.contains_key(k.as_bytes());
                let tk = t(c.send(&Request::touch(k.as_bytes(), 3_600_000)));
                (tk, Expect::Status(if present { status::OK } else { status::NOT_DONE }))
            }
            Op::Clear => {
                self.keys.clear();
                self.zsets.clear();
                (t(c.send(&Request::clear())), Expect::Status(status::OK))
            }
            Op::Insert(_) | Op::InsertBig(..) => {
                let v = match *o {
                    Op::InsertBig(n, size) => big_record_value(n, size),
                    Op::Insert(n) => record_value(n),
                    _ => unreachable!(),
                };
                let tk = t(c.send(&Request::insert(&v)));
                self.records.push((0, Some(v)));
                (tk, Expect::NewRecord(self.records.len() - 1))
            }
            Op::Update(i, n) => {
                let v = record_value(n);
                let old = self.records[i].0;
                let tk = t(c.send(&Request::update(old, &v)));
                self.records[i].1 = None;
                self.records.push((0, Some(v)));
                (tk, Expect::NewRecord(self.records.len() - 1))
            }
            Op::Remove(i) => {
                let tk = t(c.send(&Request::remove(self.records[i].0)));
                self.records[i].1 = None;
                (tk, Expect::Value(1))
            }
            Op::Train => (t(c.send(&Request::train(false))), Expect::Status(status::OK)),
            Op::NsOpen(name, max_items) => {
                let id = match self.ns_ids.iter().position(|&n| n == name) {
                    Some(i) => i + 1,
                    None => {
                        self.ns_ids.push(name);
                        self.ns_ids.len()
                    }
                } as u8;
                self.ns_quota.insert(id, max_items);
                let quota = (max_items > 0).then_some((max_items, 0));
                let mut buf = Vec::new();
                let tk = t(c.send(&Request::ns_open(name.as_bytes(), quota, &mut buf)));
                self.ns_evict(id);
                (tk, Expect::Value(id as u64))
            }
            Op::NsSet(id, k, n) => {
                let key = ns_key(id, k);
                let v = blob(self.seq, n);
                let tk = t(c.send(&Request::set(&key, &v, 0)));
                self.gone.remove(&key);
                self.keys.insert(key.clone(), v);
                self.ns_written.insert(key, self.seq);
                self.ns_evict(id);
                (tk, Expect::Status(status::OK))
            }
            Op::NsClear(id) => {
                for k in self.ns_live(id) {
                    self.drop_ns_key(&k);
                }
                (t(c.send(&Request::ns_clear(id as u64))), Expect::Status(status::OK))
            }
            Op::NsCull(id, n) => {
                let live = self.ns_live(id);
                let gone = live.len().min(n as usize);
                for k in &live[..gone] {
                    self.drop_ns_key(k);
                }
                let keep = (live.len() - gone) as u64;
                (t(c.send(&Request::ns_cull(id as u64, keep))), Expect::Value(keep))
            }
            Op::Resize(n) => (t(c.send(&Request::resize(n))), Expect::Value(n)),
            Op::DeletePrefix(p) => {
                let gone: Vec<Vec<u8>> =
                    self.keys.keys().filter(|k| k.starts_with(p.as_bytes())).cloned().collect();
                for k in gone {
                    self.keys.remove(&k);
                    self.gone.insert(k);
                }
                self.zsets.retain(|k, _| !k.starts_with(p.as_bytes()));
                (t(c.send(&Request::delete_prefix(p.as_bytes()))), Expect::Status(status::OK))
            }
        }
    }

    /// The live keys of namespace `id`, oldest write first.
    fn ns_live(&self, id: u8) -> Vec<Vec<u8>> {
        let mut v: Vec<(u64, Vec<u8>)> = self
            .ns_written
            .iter()
            .filter(|(k, _)| k[1] == id && self.keys.contains_key(*k))
            .map(|(k, &s)| (s, k.clone()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, k)| k).collect()
    }

    fn drop_ns_key(&mut self, k: &[u8]) {
        self.keys.remove(k);
        self.ns_written.remove(k);
        self.gone.insert(k.to_vec());
    }

    /// Evict namespace `id`'s oldest keys while it is over its max_items quota.
    fn ns_evict(&mut self, id: u8) {
        let max = self.ns_quota.get(&id).copied().unwrap_or(0) as usize;
        if max == 0 {
            return;
        }
        let live = self.ns_live(id);
        if live.len() > max {
            for k in &live[..live.len() - max] {
                self.drop_ns_key(k);
            }
        }
    }

    fn check_reply(&mut self, o: &Op, e: &Expect, r: Reply, when: &str) {
        match *e {
            Expect::Status(s) => assert_eq!(r.status, s, "{when}: {o:?}: {r:?}"),
            Expect::Value(v) => {
                assert_eq!((r.status, r.value), (status::OK, v), "{when}: {o:?}: answered {r:?}")
            }
            Expect::NewRecord(i) => {
                assert_eq!(r.status, status::OK, "{when}: {o:?}: {r:?}");
                self.records[i].0 = r.value;
            }
        }
    }

    /// Everything the model says is there is, exactly (and removed records are gone).
    fn verify(&self, c: &Client, when: &str) {
        for (k, v) in &self.keys {
            assert_eq!(get(c, k).as_ref(), Some(v), "{when}: key {:?}", String::from_utf8_lossy(k));
        }
        for k in &self.gone {
            assert_eq!(
                get(c, k),
                None,
                "{when}: key {:?} should be gone",
                String::from_utf8_lossy(k)
            );
        }
        for (k, z) in &self.zsets {
            let got = get(c, k).unwrap_or_else(|| panic!("{when}: sorted set {k:?} missing"));
            let entries = value::zset_entries(&got).unwrap();
            let got: BTreeMap<Vec<u8>, f64> =
                entries.iter().map(|e| (e.member.to_vec(), e.score)).collect();
            assert_eq!(&got, z, "{when}: sorted set {k:?}");
        }
        let mut out = Vec::new();
        for (i, (id, v)) in self.records.iter().enumerate() {
            let r = c.record(*id, &mut out).unwrap();
            match v {
                Some(v) => {
                    assert!(r.is_ok(), "{when}: record {i} (id {id:#x}) missing: {r:?}");
                    assert_eq!(&out, v, "{when}: record {i}");
                }
                None => assert!(r.is_err(), "{when}: removed record {i} still reads"),
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Expect {
    Status(u32),
    Value(u64),
    /// An insert's (or update's) new id for record `.0`.
    NewRecord(usize),
}

fn get(c: &Client, key: &[u8]) -> Option<Vec<u8>> {
    let pin = c.pin().unwrap();
    match c.get(&pin, key) {
        Lookup::Hit(r) => Some(r.value.to_vec()),
        Lookup::Miss | Lookup::Unknown => None,
    }
}

struct Scenario {
    name: &'static str,
    /// Run by a daemon without crash points armed, stopped cleanly, before the crash run.
    setup: Vec<Op>,
    ops: Vec<Op>,
}

fn scenarios() -> Vec<Scenario> {
    // A heap of ~3.7 MiB nearly full of live data: the operations then pad at the heap's end,
    // clean and relocate live records (noeviction is the default for these runs).
    // 52 keys of 60 KB (3.1 MB live, in a 3.9 MB heap), then one more key written 10 times:
    // the next allocation wraps the heap with the tail among live records, which it must
    // relocate (noeviction), all 52 of them, before the dead ones come up.
    let fill: Vec<Op> = (0..62)
        .map(|i| Op::Set(if i < 52 { leak(format!("f{i}")) } else { "churn" }, 60_000))
        .collect();
    let many: Vec<Op> = (0..1500).map(|i| Op::Set(leak(format!("s{i}")), 40)).collect();
    vec![
        Scenario {
            name: "set-overwrite-delete",
            setup: vec![Op::Set("a", 100)],
            ops: vec![Op::Set("a", 200), Op::Set("b", 50), Op::Delete("a")],
        },
        Scenario {
            name: "incr-append",
            setup: vec![Op::Incr("n", 1)],
            ops: vec![Op::Incr("n", 5), Op::Append("l", 1), Op::Append("l", 2)],
        },
        Scenario {
            name: "zadd-touch",
            setup: vec![Op::Set("t", 10)],
            ops: vec![Op::Zadd("z", "m1", 1.0), Op::Zadd("z", "m2", 2.0), Op::Touch("t")],
        },
        Scenario {
            name: "heap-wrap-relocate",
            setup: fill,
            ops: vec![Op::Set("big1", 60_000), Op::Delete("f3"), Op::Set("big2", 60_000)],
        },
        Scenario {
            name: "delete-in-probe-runs",
            setup: many,
            ops: vec![Op::Delete("s3"), Op::Delete("s700"), Op::Delete("s1499")],
        },
        Scenario {
            name: "clear",
            setup: vec![Op::Set("a", 10)],
            ops: vec![Op::Clear, Op::Set("b", 10)],
        },
        Scenario {
            name: "records",
            setup: vec![Op::Insert(0)],
            ops: vec![Op::Insert(1), Op::Update(0, 2), Op::Remove(1)],
        },
        Scenario {
            // The records file's first chunk nearly full, then inserts that need a second
            // one: the file grows (extended, then the chunk count published), a removal.
            name: "records-grow",
            setup: (0..68).map(|i| Op::InsertBig(i, 60_000)).collect(),
            ops: vec![
                Op::InsertBig(68, 60_000),
                Op::InsertBig(69, 60_000),
                Op::Remove(3),
                Op::InsertBig(70, 60_000),
            ],
        },
        Scenario {
            // The heap full of live records (noeviction), the file grown, then writes that
            // only fit once the log has moved into the new space.
            name: "grow",
            setup: (0..58).map(|i| Op::Set(leak(format!("g{i}")), 60_000)).collect(),
            ops: vec![
                Op::Resize(8 << 20),
                Op::Set("after1", 60_000),
                Op::Set("after2", 60_000),
                Op::Set("after3", 60_000),
                Op::Set("after4", 60_000),
            ],
        },
        Scenario {
            // Namespaces: open (with a quota), writes that evict by the quota, an O(1) clear,
            // a cull; `check` verifies each namespace's counts after every crash.
            name: "namespaces",
            setup: vec![
                Op::NsOpen("a", 0),
                Op::NsSet(1, "x", 10),
                Op::NsSet(1, "y", 10),
                Op::Set("plain", 10),
            ],
            ops: vec![
                Op::NsOpen("b", 2),
                Op::NsSet(2, "p", 10),
                Op::NsSet(2, "q", 10),
                Op::NsSet(2, "r", 10),
                Op::NsClear(1),
                Op::NsSet(1, "z", 10),
                Op::NsCull(2, 1),
            ],
        },
        Scenario {
            // Prefix deletions: the entry, its live bit, then writes under the prefix again
            // and a second deletion, with keys that shift in the index meanwhile.
            name: "delete-prefix",
            setup: (0..40).map(|i| Op::Set(leak(format!("u:{i}")), 20)).collect(),
            ops: vec![
                Op::DeletePrefix("u:1"),
                Op::Set("u:10", 30),
                Op::Delete("u:2"),
                Op::DeletePrefix("u:"),
                Op::Set("u:3", 30),
            ],
        },
        Scenario {
            name: "train-then-insert",
            setup: (0..300).map(Op::Insert).collect(),
            ops: vec![Op::Train, Op::Insert(1000)],
        },
    ]
}

/// A key name that lives as long as the test (Op holds &'static str).
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Restarts after a crash: the first one may itself crash at a point of its recovery
/// (`then`), later ones do not.
struct Restarts {
    n: u32,
    then: Option<u64>,
}

/// Wait for `ticket`, restarting the daemon whenever it has died.
fn wait(c: &Client, d: &mut Option<Surpd>, dir: &Path, ticket: u64, rs: &mut Restarts) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.wait_for(ticket, Duration::from_millis(20)) {
            Ok(r) => return r,
            Err(surpd::Error::Unavailable(_)) => {}
            Err(e) => panic!("ticket {ticket}: {e}"),
        }
        if d.as_mut().is_none_or(|d| d.exited()) {
            if let Some(log) = d.take().map(|d| d.kill()) {
                if std::env::var_os("SURPD_CRASH_ONLY").is_some() {
                    eprintln!("--- daemon log ---\n{log}");
                }
            }
            // What the crash left, before any recovery: `check` accepts every state a
            // crash can leave (what recovery repairs is not corruption).
            assert_check_clean(dir, &format!("{} right after a crash", dir.display()));
            let env: Vec<(&str, String)> = match rs.then.take() {
                Some(m) => vec![("SURPD_TEST_CRASH_AT", m.to_string())],
                None => Vec::new(),
            };
            // An armed restart may die before it is ready: the next pass starts another.
            *d = Surpd::start(dir, ARGS, &env).ok();
            rs.n += 1;
        }
        assert!(Instant::now() < deadline, "ticket {ticket} unanswered for 30 s");
    }
}

/// Apply `ops` through `c`, checking every answer against the model.
fn run_ops(
    c: &Client,
    m: &mut Model,
    ops: &[Op],
    d: &mut Option<Surpd>,
    dir: &Path,
    then: Option<u64>,
) -> u32 {
    let mut rs = Restarts { n: 0, then };
    let then = rs.then;
    for o in ops {
        let (t, e) = m.send(c, o);
        let r = wait(c, d, dir, t, &mut rs);
        m.check_reply(o, &e, r, &format!("{} then {then:?}", dir.display()));
    }
    rs.n
}

fn assert_check_clean(dir: &Path, when: &str) {
    let r = surpd::check::check(dir).unwrap();
    assert!(
        r.problem_count == 0,
        "{when}: check found {} problems: {:?}",
        r.problem_count,
        r.problems
    );
}

/// One run of a scenario with the daemon aborting at crash point `at` (0: never), and the
/// daemon restarted after it aborting again at point `then` of its own (recovery included).
/// Returns the number of crash points the armed daemon passed (when it did not crash) and
/// whether it crashed.
fn run(sc: &Scenario, at: u64, then: Option<u64>) -> (u64, bool) {
    let dir = shm_dir(sc.name);
    let mut m = Model::default();
    {
        let mut d = Some(Surpd::start(&dir, ARGS, &[]).unwrap());
        let c = Client::connect(&dir, Duration::from_secs(10)).unwrap();
        run_ops(&c, &mut m, &sc.setup, &mut d, &dir, None);
        drop(c);
        d.take().unwrap().stop();
    }
    let env = [("SURPD_TEST_CRASH_AT", at.to_string())];
    eprintln!("{} at {at} then {then:?}", sc.name);
    let mut d = Surpd::start(&dir, ARGS, &env).ok();
    let crashed_at_start = d.is_none();
    let c = Client::connect(&dir, Duration::from_secs(10)).unwrap();
    let restarts = run_ops(&c, &mut m, &sc.ops, &mut d, &dir, then);
    let log = d.take().map(|d| d.stop()).unwrap_or_default();
    let passed = log
        .lines()
        .find_map(|l| l.split("crash points passed: ").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let crashed = crashed_at_start || restarts > 0;
    // A clean daemon over whatever the crash left: everything acknowledged is there.
    let mut d = Some(Surpd::start(&dir, ARGS, &[]).unwrap());
    let when = format!("{} crashing at point {at} then {then:?}", sc.name);
    m.verify(&c, &when);
    assert_check_clean(&dir, &when);
    // A lap of writes around the heap: cleaning carries every live key along.
    let lap: Vec<Op> = (0..300).map(|_| Op::Set("lap", 15_000)).collect();
    run_ops(&c, &mut m, &lap, &mut d, &dir, None);
    m.verify(&c, &format!("{when}, after a lap of the heap"));
    assert_check_clean(&dir, &format!("{when}, after a lap"));
    drop(c);
    d.take().unwrap().stop();
    assert_check_clean(&dir, &format!("{when}, after a clean stop"));
    std::fs::remove_dir_all(&dir).unwrap();
    (passed, crashed)
}

#[test]
fn every_crash_point_of_every_scenario_loses_nothing() {
    let only = std::env::var("SURPD_CRASH_SCENARIO").ok();
    let mut total = 0;
    for sc in scenarios() {
        if only.as_deref().is_some_and(|o| o != sc.name) {
            continue;
        }
        if let Some((at, then)) = std::env::var("SURPD_CRASH_ONLY")
            .ok()
            .and_then(|v| v.split_once(',').map(|(a, b)| (a.parse().ok(), b.parse().ok())))
        {
            // Reproduce one run: SURPD_CRASH_ONLY=at,then (then 0: none).
            run(&sc, at.unwrap_or(0), then.filter(|&t: &u64| t > 0));
            continue;
        }
        let (points, crashed) = run(&sc, 0, None);
        assert!(!crashed && points > 0, "{}: the counting run passed {points} points", sc.name);
        let mut crashes = 0;
        for at in 1..=points {
            let (_, crashed) = run(&sc, at, None);
            crashes += crashed as u64;
            // A crash of the recovering daemon too, at its first points (journal recovery,
            // recount, the re-applied request), for the scenarios of a few operations.
            if crashed && points < 100 {
                for then in 1..=3 {
                    run(&sc, at, Some(then));
                }
            }
        }
        // Timing decides some points (housekeeping), but most must have been hit.
        assert!(crashes * 10 >= points * 8, "{}: crashed at {crashes} of {points} points", sc.name);
        eprintln!("{}: crashed at each of {crashes} of {points} points; nothing lost", sc.name);
        total += crashes;
    }
    eprintln!("crash points exercised: {total}");
}
