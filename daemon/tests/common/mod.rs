//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use surpd::client::{Client, Lookup};
use surpd::value;

/// A fresh directory under the system temp dir.
pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "surpd-test-{tag}-{}-{}",
        std::process::id(),
        surpd::shm::random_u64()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// xorshift64: deterministic test randomness without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The encoding of a bytes value.
pub fn bytes_value(payload: &[u8]) -> Vec<u8> {
    let mut v = vec![value::BYTES];
    value::put_varint(&mut v, payload.len() as u64);
    v.extend_from_slice(payload);
    v
}

/// The encoding of a str value.
pub fn str_value(s: &str) -> Vec<u8> {
    let mut v = vec![value::STR];
    value::put_varint(&mut v, s.len() as u64);
    v.extend_from_slice(s.as_bytes());
    v
}

/// The stored value bytes of `key`, read through the client's pinned read path.
pub fn get(c: &Client, key: &[u8]) -> Option<Vec<u8>> {
    let pin = c.pin().unwrap();
    match c.get(&pin, key) {
        Lookup::Hit(r) => Some(r.value.to_vec()),
        Lookup::Miss => None,
    }
}
