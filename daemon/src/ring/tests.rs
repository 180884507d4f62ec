use super::*;
use std::time::Duration;

fn ring(box_bytes: u64) -> (Ring, std::path::PathBuf) {
    let d =
        std::env::temp_dir().join(format!("surpd-ring-{}-{}", shm::getpid(), shm::random_u64()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("ring.surp");
    let params = RingParams {
        nboxes: 4,
        box_bytes,
        nresults: 64,
        hints_len: 4096,
        seg_seed: 1,
        max_value: 1024,
    };
    Ring::create(&p, &params, 0o660).unwrap();
    (Ring::open(&p).unwrap(), d)
}

#[test]
fn requests_round_trip_in_order_across_wraps() {
    let (r, d) = ring(4096);
    let mut w = r.claim(shm::getpid(), 0).unwrap().unwrap();
    let b = w.boxno();
    let mut scratch = Vec::new();
    let mut seen = Vec::new();
    for t in 1..=500u64 {
        let payload = vec![t as u8; (t % 300) as usize];
        // The box is drained every third request: what it consumed is its head.
        w.consumed_to(r.consumed(b).0.max(r.ctl(b).head.load(Ordering::Acquire)));
        r.enqueue(&mut w, t, &Request::set(b"key", &payload, t)).unwrap();
        // Drain every few requests so that the box wraps many times.
        if t % 3 == 0 {
            r.poll(b, 100, &mut scratch, |q| {
                assert_eq!(q.key, b"key");
                assert!(q.payload.iter().all(|&x| x == q.arg as u8));
                seen.push(q.arg);
                Reply::ok(q.arg * 2)
            });
        }
    }
    r.poll(b, 100, &mut scratch, |q| {
        seen.push(q.arg);
        Reply::ok(q.arg * 2)
    });
    assert_eq!(seen, (1..=500).collect::<Vec<_>>());
    assert_eq!(r.wait_done(b, 500, Duration::from_millis(10)), Waited::Done);
    assert_eq!(r.result(b, 500).value.load(Ordering::Relaxed), 1000);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_full_box_is_queue_full() {
    let (r, d) = ring(4096);
    let mut w = r.claim(shm::getpid(), 0).unwrap().unwrap();
    let payload = vec![0u8; 1000];
    let mut t = 1;
    let err = loop {
        match r.enqueue(&mut w, t, &Request::set(b"k", &payload, 0)) {
            Ok(()) => t += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::QueueFull(ref m) if m.contains("4096")), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn garbage_in_a_box_poisons_it_without_panicking() {
    let (r, d) = ring(4096);
    let b = r.claim(shm::getpid(), 0).unwrap().unwrap().boxno();
    let base = r.data_off + b as u64 * r.box_bytes;
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut scratch = Vec::new();
    let mut poisoned = 0;
    for round in 0..200 {
        let mut junk = [0u8; 256];
        for byte in junk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        r.region.write(base, &junk);
        let c = r.ctl(b);
        c.head.store(0, Ordering::Relaxed);
        c.done.store(0, Ordering::Relaxed);
        c.poisoned.store(0, Ordering::Relaxed);
        c.claims.fetch_add(1, Ordering::Relaxed); // as a new claim: the daemon resyncs
        let tail = 8 * (1 + round % 32);
        c.tail.store(tail, Ordering::Release);
        let mut applied = 0;
        r.poll(b, 10, &mut scratch, |q| {
            applied += 1;
            assert_eq!(q.ticket, applied, "only a request with the next ticket is applied");
            Reply::ok(0)
        });
        // Garbage is either skipped as a whole (poisoned: head jumps to the tail) or,
        // rarely, parses as requests with consecutive tickets; it never stops half-way
        // without a poison.
        let (head, _) = r.consumed(b);
        if c.poisoned.load(Ordering::Acquire) == 1 {
            poisoned += 1;
            assert_eq!(head, tail, "a poisoned box's queue is skipped to its tail");
        } else {
            assert!(head == tail || applied == 10, "round {round}: stopped at {head}");
        }
    }
    assert!(poisoned > 150, "random bytes are refused: {poisoned} of 200 poisoned");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_pad_behind_pipelined_requests_keeps_their_answers() {
    // A request taken and answered later (PIPELINED), then a wrap: the producer wrote a PAD
    // and the next request at the box's start. Before, the PAD moved the box's head past the
    // request still in flight, and its answer was then dropped as stale: its client waited
    // out its timeout.
    let (r, d) = ring(4096);
    let mut w = r.claim(shm::getpid(), 0).unwrap().unwrap();
    let b = w.boxno();
    let mut scratch = Vec::new();
    let payload = vec![7u8; 900];
    let mut t = 1;
    // Fill and drain three requests so that the next ones wrap.
    for _ in 0..3 {
        r.enqueue(&mut w, t, &Request::set(b"k", &payload, t)).unwrap();
        t += 1;
    }
    r.poll(b, 10, &mut scratch, |q| Reply::ok(q.arg));
    w.consumed_to(r.consumed(b).0);
    let first = t;
    // One request fits before the end; the next one needs a PAD and wraps.
    for _ in 0..2 {
        r.enqueue(&mut w, t, &Request::set(b"k", &payload, t)).unwrap();
        t += 1;
    }
    let mut taken = Vec::new();
    let n = r.poll(b, 10, &mut scratch, |q| {
        taken.push((q.ticket, q.head_after));
        Reply::status(status::PIPELINED)
    });
    assert_eq!(n, 2, "both requests are taken");
    assert_eq!(taken.iter().map(|x| x.0).collect::<Vec<_>>(), vec![first, first + 1]);
    let len = request_len(b"k", &payload);
    assert!(taken[1].1 - taken[0].1 > len, "the second one wrapped behind a PAD");
    for &(ticket, head_after) in &taken {
        r.complete(b, ticket, head_after, Reply::ok(ticket * 10));
        assert_eq!(r.wait_done(b, ticket, Duration::from_millis(10)), Waited::Done);
        assert_eq!(r.result(b, ticket).value.load(Ordering::Relaxed), ticket * 10);
    }
    assert_eq!(r.consumed(b).0, taken[1].1, "the head ends past both requests");
    std::fs::remove_dir_all(d).unwrap();
}
