//! Compressed values from a client that does not play by the rules: the daemon stores a
//! COMPRESSED value only if it decompresses to at most max_value bytes of a valid value,
//! exactly the length it declares; everything else is refused, never stored, never a panic.

use std::time::Duration;

use surpd::client::Client;
use surpd::layout::status;
use surpd::protocol::Request;
use surpd::value::{self, put_varint, COMPRESSED};

mod common;
use common::{bytes_value, get, shm_dir, str_value, Surpd};

const MAX_VALUE: u64 = 64 << 10;

fn compressed(declared: u64, frame: &[u8]) -> Vec<u8> {
    let mut v = vec![COMPRESSED];
    put_varint(&mut v, declared);
    v.extend_from_slice(frame);
    v
}

/// A zstd frame holding `data` (under 256 bytes) in one raw block, built by hand.
fn raw_frame(data: &[u8]) -> Vec<u8> {
    assert!(data.len() < 256);
    let block = (1 | (data.len() as u32) << 3).to_le_bytes();
    [&[0x28, 0xb5, 0x2f, 0xfd, 0x20, data.len() as u8][..], &block[..3], data].concat()
}

#[test]
fn the_daemon_refuses_compressed_values_that_lie() {
    let dir = shm_dir("compressed");
    let d = Surpd::start(&dir, &["--size", "4MiB", "--max-value", "64KiB"], &[]).unwrap();
    let c = Client::connect(&dir, Duration::from_secs(10)).unwrap();
    let set = |key: &[u8], v: &[u8]| c.call(&Request::set(key, v, 0)).unwrap().status;

    let page = str_value(&"<p>same paragraph</p>".repeat(2000));
    let good = value::compress(&page, 3).unwrap();
    assert!(good.len() * 10 < page.len());
    assert_eq!(set(b"good", &good), status::OK);
    assert_eq!(get(&c, b"good").as_deref(), Some(&good[..]), "stored as sent");
    let frame = &good[1 + (good[1..].iter().position(|b| b & 0x80 == 0).unwrap() + 1)..];
    let n = page.len() as u64;
    assert_eq!(compressed(n, frame), good);
    let hand = str_value("hand-made");
    assert_eq!(set(b"hand", &compressed(hand.len() as u64, &raw_frame(&hand))), status::OK);

    // 8 MiB of zeros compress to a few hundred bytes: a bomb against a 64 KiB max_value.
    let zeros = bytes_value(&vec![0; 8 << 20]);
    let bomb = value::compress(&zeros, 3).unwrap();
    assert!(bomb.len() < 4096);
    let bomb_frame = &bomb[1 + 4..]; // varint of 8 MiB + 5 bytes is 4 bytes
    let twice = compressed(hand.len() as u64, &raw_frame(&hand));
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("declares less than it holds", compressed(n - 1, frame)),
        ("declares more than it holds", compressed(n + 1, frame)),
        ("a bomb, declared", bomb.clone()),
        ("a bomb, declared small", compressed(100, bomb_frame)),
        ("a bomb, declared at max_value", compressed(MAX_VALUE, bomb_frame)),
        ("not a frame", compressed(n, &[0; 40])),
        ("truncated", compressed(n, &frame[..frame.len() / 2])),
        ("compressed twice", compressed(twice.len() as u64, &raw_frame(&twice))),
        ("not a value inside", compressed(3, &raw_frame(&[0xee; 3]))),
        ("only the tag", vec![COMPRESSED]),
        ("declared length only", compressed(10, &[])),
        ("inside a list", [&[value::LIST, 1][..], &good].concat()),
    ];
    for (what, v) in &bad {
        assert_eq!(set(b"bad", v), status::BAD_REQUEST, "{what}");
        assert_eq!(get(&c, b"bad"), None, "{what}");
        assert!(value::validate_stored(v, MAX_VALUE).is_err(), "{what}");
    }
    // An append to, or a merge into, a compressed value of another type: WRONG_TYPE.
    let r = c.call(&Request::append(b"good", &str_value("x"), 0)).unwrap();
    assert_eq!(r.status, status::WRONG_TYPE);
    assert_eq!(get(&c, b"good").as_deref(), Some(&good[..]));
    drop(c);
    let log = d.stop();
    assert!(!log.contains("panic"), "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}
