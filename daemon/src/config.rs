//! Daemon settings and their validation.

#![deny(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::layout::*;

/// How writes reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The kernel writes dirty pages back on its own (survives any process crash).
    Os,
    /// Also msync every `flush_interval`.
    Periodic,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub dir: PathBuf,
    /// Segment size for a new segment (an existing one keeps its size).
    pub size: u64,
    pub max_value: u64,
    pub policy: u32,
    /// Client slots (processes attached at once).
    pub max_clients: u32,
    /// Bytes of request queue per client (raised to at least 2 x the largest request).
    pub queue_bytes: u64,
    pub durability: Durability,
    pub flush_interval: Duration,
    /// Write "READY=1\n" to this descriptor once serving (used by surpdb.Server).
    pub ready_fd: Option<i32>,
    pub data_mode: u32,
    pub ring_mode: u32,
}

impl Config {
    pub fn new(dir: impl Into<PathBuf>) -> Config {
        Config {
            dir: dir.into(),
            size: 256 << 20,
            max_value: DEFAULT_MAX_VALUE,
            policy: POLICY_EVICT,
            max_clients: 256,
            queue_bytes: 0,
            durability: Durability::Os,
            flush_interval: Duration::from_secs(1),
            ready_fd: None,
            data_mode: 0o640,
            ring_mode: 0o660,
        }
    }

    /// Request queue bytes per client: at least twice the largest request (so that one
    /// always fits after a pad to the buffer's end), in whole pages.
    pub fn effective_queue_bytes(&self) -> u64 {
        let largest = align_up(REQ_HEADER_BYTES + MAX_KEY_LEN as u64 + self.max_value, 8);
        align_up(self.queue_bytes.max(2 * largest), PAGE)
    }

    pub fn validate(&self) -> Result<()> {
        if self.max_value < 64 || self.max_value > 512 << 20 {
            return Err(Error::Config(format!(
                "max_value {} is out of range (64 bytes to 512 MiB)",
                self.max_value
            )));
        }
        if self.max_clients == 0 || self.max_clients > 65536 {
            return Err(Error::Config(format!(
                "max_clients {} is out of range (1 to 65536)",
                self.max_clients
            )));
        }
        crate::segment::Geometry::for_size(self.size, self.max_value)?;
        Ok(())
    }
}

/// Parse a size: "256MiB", "1GiB", "512M", "4096", "1.5G" (binary units; K/M/G/T as KiB...).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 =
        num.parse().map_err(|_| Error::Config(format!("bad size {s:?}: expected e.g. 256MiB")))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => {
            return Err(Error::Config(format!(
                "bad size unit {u:?} in {s:?}: use B, KiB, MiB, GiB or TiB"
            )))
        }
    };
    let v = n * mult as f64;
    if !(v.is_finite() && (0.0..1.8e19).contains(&v)) {
        return Err(Error::Config(format!("size {s:?} is out of range")));
    }
    Ok(v as u64)
}

pub fn parse_policy(s: &str) -> Result<u32> {
    match s {
        "allkeys-lru" | "lru" | "evict" => Ok(POLICY_EVICT),
        "noeviction" => Ok(POLICY_NOEVICTION),
        _ => Err(Error::Config(format!(
            "unknown eviction policy {s:?}: use allkeys-lru or noeviction"
        ))),
    }
}

pub fn parse_durability(s: &str) -> Result<Durability> {
    match s {
        "os" => Ok(Durability::Os),
        "periodic" => Ok(Durability::Periodic),
        _ => Err(Error::Config(format!("unknown durability {s:?}: use os or periodic"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1.5 KiB").unwrap(), 1536);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn queue_fits_two_largest_requests() {
        let c = Config::new("/tmp/x");
        assert!(c.effective_queue_bytes() >= 2 * (DEFAULT_MAX_VALUE + MAX_KEY_LEN as u64));
        assert_eq!(c.effective_queue_bytes() % PAGE, 0);
        assert!(crate::ring::max_request(c.effective_queue_bytes()) >= c.max_value + 4096 + 32);
    }
}
