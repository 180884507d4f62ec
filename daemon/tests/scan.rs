//! A scan returns every key present for the whole of it exactly once, even when a delete
//! between two of its steps shifts a key back across the boundary between them (linear
//! probing with backward-shift deletion moves keys toward their home slot). Built on keys
//! chosen by their hash: X, Y and S share a probe run that crosses the boundary, S sits past
//! it with its home before it, and Y's delete between the two steps moves S back.

use std::time::Duration;

use surpd::client::Client;
use surpd::protocol::Request;

mod common;
use common::{shm_dir, str_value, Surpd};

#[test]
fn a_key_shifted_back_across_a_step_boundary_is_returned_once() {
    let dir = shm_dir("scan");
    let d = Surpd::start(&dir, &["--size", "16MiB", "--max-value", "4KiB"], &[]).unwrap();
    let c = Client::connect(&dir, Duration::from_secs(10)).unwrap();
    let step = 64u64;
    // Keys whose home slot is step - 2 (X) and step - 1 (Y, S): inserted in that order they
    // sit at step - 2, step - 1 and step, S past the boundary.
    let home = |k: &str| c.seg.hash(k.as_bytes()) & c.seg.mask;
    let find = |want: u64, skip: &[String]| {
        (0u64..).map(|i| format!("k{i}")).find(|k| home(k) == want && !skip.contains(k)).unwrap()
    };
    let x = find(step - 2, &[]);
    let y = find(step - 1, &[]);
    let s = find(step - 1, std::slice::from_ref(&y));
    for k in [&x, &y, &s] {
        let v = str_value("v");
        c.call(&Request::set(k.as_bytes(), &v, 0)).unwrap();
    }
    let (next, first) = c.scan_keys(0, b"", 0, step).unwrap();
    assert_eq!(next, step);
    c.call(&Request::delete(y.as_bytes())).unwrap(); // S moves back to step - 1
    let mut seen = first;
    let mut cursor = next;
    while cursor != 0 {
        let (n, keys) = c.scan_keys(0, b"", cursor, step).unwrap();
        seen.extend(keys);
        cursor = n;
    }
    let count = |k: &String| seen.iter().filter(|s| *s == k.as_bytes()).count();
    assert_eq!((count(&x), count(&s)), (1, 1), "{seen:?}");
    drop(c);
    d.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
