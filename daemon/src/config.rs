//! Daemon settings: defaults, a TOML file, `SURPDB_*` environment variables and command-line
//! flags, in that order of precedence (a flag beats the environment, which beats the file).
//! Every value is validated at start with a message that names the setting and its source.
//!
//! | setting | TOML / flag | env | live on SIGHUP |
//! |---|---|---|---|
//! | data directory | `dir` / positional | `SURPDB_DIR` | no |
//! | segment size | `size` / `--size` | `SURPDB_SIZE` | grows (up to `max_size`) |
//! | largest size to grow to live | `max_size` | `SURPDB_MAX_SIZE` | no (fixed at creation) |
//! | largest value | `max_value` | `SURPDB_MAX_VALUE` | no |
//! | eviction policy | `eviction_policy` / `--policy` | `SURPDB_EVICTION_POLICY` | yes |
//! | client processes at once | `max_clients` | `SURPDB_MAX_CLIENTS` | no |
//! | request queue per client | `queue_bytes` | `SURPDB_QUEUE_BYTES` | no |
//! | durability | `durability` | `SURPDB_DURABILITY` | yes |
//! | periodic flush interval | `flush_interval_ms` | `SURPDB_FLUSH_INTERVAL_MS` | yes |
//! | group owning the files | `group` | `SURPDB_GROUP` | no |
//! | log level | `log_level` | `SURPDB_LOG_LEVEL` | yes |

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::layout::*;
use crate::log::Level;

/// How writes reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The kernel writes dirty pages back on its own (survives any process crash).
    Os,
    /// Also msync every `flush_interval`.
    Periodic,
    /// msync before every acknowledgement (survives a machine crash; an fsync per write).
    Sync,
}

/// Every setting, with whether SIGHUP can change it in a running daemon.
pub const SETTINGS: &[(&str, bool)] = &[
    ("dir", false),
    ("size", true),
    ("max_size", false),
    ("max_value", false),
    ("eviction_policy", true),
    ("max_clients", false),
    ("queue_bytes", false),
    ("durability", true),
    ("flush_interval_ms", true),
    ("group", false),
    ("log_level", true),
    ("records_size", true),
    ("codec", false),
    ("train_after", false),
    ("upstream", false),
    ("upstream_prefix", false),
    ("upstream_timeout_ms", false),
    ("upstream_user", false),
    ("upstream_password", false),
    ("upstream_password_file", false),
    ("upstream_ca_file", false),
    ("pickle", true),
];

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub dir: PathBuf,
    /// Segment size: of a new segment, or what an existing one grows to (never shrinks).
    pub size: u64,
    /// Largest size the segment may grow to while serving (0: four times `size`), fixed
    /// when the segment is created (every process reserves that much address space).
    pub max_size: u64,
    pub max_value: u64,
    pub policy: u32,
    /// Client slots (processes attached at once).
    pub max_clients: u32,
    /// Bytes of request queue per client (raised to at least 2 x the largest request).
    pub queue_bytes: u64,
    pub durability: Durability,
    pub flush_interval: Duration,
    /// Group that owns the files (clients in it may attach); None = the daemon's group.
    pub group: Option<String>,
    pub log_level: Level,
    /// The most the records file grows to (it starts with no chunk and grows 4 MiB at a
    /// time; record ids address 64 GiB of chunks, the real cap). A reload applies it.
    pub records_size: u64,
    /// Compact codec (smaller, slower to decode) for models trained automatically.
    pub compact: bool,
    /// Train the record codec automatically at this many records (a small model at an eighth
    /// of it; 0 = never): see `RecStore::auto_train_due`.
    pub train_after: u64,
    /// Write "READY=1\n" to this descriptor once serving (used by surpdb.Server).
    pub ready_fd: Option<i32>,
    /// The read end of a pipe whose write end the starting process holds (surpdb.Server):
    /// once every holder has exited, the daemon stops as on SIGTERM, so that a parent that
    /// dies without stopping it leaves no daemon behind.
    pub parent_fd: Option<i32>,
    pub data_mode: u32,
    pub ring_mode: u32,
    /// Tiered mode: the Redis/Valkey URL in front of which this daemon caches (None: a
    /// standalone store). `redis://[user@]host:port/db` or `unix:///path?db=N`.
    pub upstream: Option<String>,
    /// The upstream key space shared by every host: local key `k` is `prefix + k` there.
    pub upstream_prefix: String,
    /// Longest wait for an upstream answer, and the staleness bound of local copies.
    pub upstream_timeout: Duration,
    pub upstream_user: Option<String>,
    /// From the config file, `SURPDB_UPSTREAM_PASSWORD` or `upstream_password_file`,
    /// never from the command line (where every user of the host can read it).
    pub upstream_password: Option<String>,
    /// `rediss://`: PEM certificate authorities to trust instead of the system's.
    pub upstream_ca_file: Option<PathBuf>,
    /// false: values holding a pickle are refused (a client that can write then can never
    /// make a reader run code).
    pub pickle: bool,
    /// Where the settings came from, for SIGHUP reloads.
    pub file: Option<PathBuf>,
    pub flags: Vec<(String, String)>,
}

impl Config {
    pub fn new(dir: impl Into<PathBuf>) -> Config {
        Config {
            dir: dir.into(),
            size: 256 << 20,
            max_size: 0,
            max_value: DEFAULT_MAX_VALUE,
            policy: POLICY_EVICT,
            max_clients: 256,
            queue_bytes: 0,
            durability: Durability::Os,
            flush_interval: Duration::from_secs(1),
            group: None,
            log_level: Level::Info,
            records_size: 64 << 30,
            compact: false,
            train_after: 2_000,
            ready_fd: None,
            parent_fd: None,
            data_mode: 0o640,
            ring_mode: 0o660,
            upstream: None,
            upstream_prefix: String::new(),
            upstream_timeout: Duration::from_millis(500),
            upstream_user: None,
            upstream_password: None,
            upstream_ca_file: None,
            pickle: true,
            file: None,
            flags: Vec::new(),
        }
    }

    /// Build a config from defaults, then `file`, then the environment, then `flags`
    /// (pairs of setting name and value), and validate it.
    pub fn load(file: Option<&Path>, flags: &[(String, String)]) -> Result<Config> {
        let mut cfg = Config::new(PathBuf::new());
        let mut have_dir = false;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::io(format!("cannot read config file {}", path.display()), e))?;
            let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                Error::Config(format!("config file {}: {}", path.display(), e.message()))
            })?;
            let src = format!("config file {}", path.display());
            for (k, v) in &table {
                let s = match v {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    other => {
                        return Err(Error::Config(format!(
                            "{src}: {k} must be a string or a number, not {}",
                            other.type_str()
                        )))
                    }
                };
                have_dir |= k == "dir";
                cfg.set(k, &s, &src)?;
            }
        }
        for (k, _) in SETTINGS {
            let var = format!("SURPDB_{}", k.to_ascii_uppercase());
            if let Ok(v) = std::env::var(&var) {
                have_dir |= *k == "dir";
                cfg.set(k, &v, &format!("environment variable {var}"))?;
            }
        }
        for (k, v) in flags {
            have_dir |= k == "dir";
            cfg.set(k, v, &format!("option --{}", k.replace('_', "-")))?;
        }
        if !have_dir {
            return Err(Error::Config(
                "no data directory: give DIR, dir = \"...\" in the config file, or SURPDB_DIR"
                    .into(),
            ));
        }
        cfg.file = file.map(Path::to_path_buf);
        cfg.flags = flags.to_vec();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Set one setting from its text form; `src` names where it came from for errors.
    pub fn set(&mut self, key: &str, val: &str, src: &str) -> Result<()> {
        let bad = |m: String| Error::Config(format!("{src}: {key}: {m}"));
        let num = |v: &str| {
            v.trim().parse::<u64>().map_err(|_| bad(format!("{v:?} is not a whole number")))
        };
        match key {
            "dir" => self.dir = PathBuf::from(val),
            "size" => self.size = parse_size(val).map_err(|e| bad(e.to_string()))?,
            "max_size" => self.max_size = parse_size(val).map_err(|e| bad(e.to_string()))?,
            "max_value" => self.max_value = parse_size(val).map_err(|e| bad(e.to_string()))?,
            "eviction_policy" | "policy" => {
                self.policy = parse_policy(val).map_err(|e| bad(e.to_string()))?
            }
            "max_clients" => {
                self.max_clients =
                    u32::try_from(num(val)?).map_err(|_| bad(format!("{val} is too large")))?
            }
            "queue_bytes" => self.queue_bytes = parse_size(val).map_err(|e| bad(e.to_string()))?,
            "durability" => {
                self.durability = parse_durability(val).map_err(|e| bad(e.to_string()))?
            }
            "flush_interval_ms" => {
                let ms = num(val)?;
                if !(1..=3_600_000).contains(&ms) {
                    return Err(bad(format!("{ms} is out of range (1 to 3600000 ms)")));
                }
                self.flush_interval = Duration::from_millis(ms)
            }
            "group" => self.group = if val.is_empty() { None } else { Some(val.to_string()) },
            "log_level" => self.log_level = Level::parse(val).map_err(|e| bad(e.to_string()))?,
            "records_size" => {
                self.records_size = parse_size(val).map_err(|e| bad(e.to_string()))?
            }
            "codec" => {
                self.compact = match val.trim() {
                    "fast" => false,
                    "compact" => true,
                    v => return Err(bad(format!("{v:?} is not a codec (fast or compact)"))),
                }
            }
            "train_after" => self.train_after = num(val)?,
            "pickle" => {
                self.pickle = match val.trim() {
                    "true" | "yes" | "1" => true,
                    "false" | "no" | "0" => false,
                    v => return Err(bad(format!("{v:?} is not true or false"))),
                }
            }
            "upstream" => {
                let v = val.trim();
                if src.starts_with("option")
                    && v.contains('@')
                    && v[..v.rfind('@').unwrap_or(0)].contains(':')
                {
                    return Err(bad(
                        "the URL holds a password, which every user of the host could read \
                         on a command line: give it in upstream_password_file or \
                         SURPDB_UPSTREAM_PASSWORD instead"
                            .into(),
                    ));
                }
                if !v.is_empty()
                    && !["redis://", "rediss://", "unix://", "redis+unix://"]
                        .iter()
                        .any(|p| v.starts_with(p))
                {
                    return Err(bad(format!(
                        "{v:?} is not a redis://host:port/db, rediss://host:port/db (TLS) or \
                         unix:///path URL"
                    )));
                }
                self.upstream = (!v.is_empty()).then(|| v.to_string())
            }
            "upstream_prefix" => self.upstream_prefix = val.to_string(),
            "upstream_timeout_ms" => {
                let ms = num(val)?;
                if !(10..=60_000).contains(&ms) {
                    return Err(bad(format!("{ms} is out of range (10 to 60000 ms)")));
                }
                self.upstream_timeout = Duration::from_millis(ms)
            }
            "upstream_user" => self.upstream_user = (!val.is_empty()).then(|| val.to_string()),
            "upstream_password" => {
                if src.starts_with("option") {
                    return Err(bad(
                        "a password on the command line can be read by every user of \
                         the host: give it in upstream_password_file or SURPDB_UPSTREAM_PASSWORD"
                            .into(),
                    ));
                }
                self.upstream_password = (!val.is_empty()).then(|| val.to_string())
            }
            "upstream_ca_file" => {
                let p = PathBuf::from(val.trim());
                if !val.trim().is_empty() && !p.is_file() {
                    return Err(bad(format!("{} is not a readable file", p.display())));
                }
                self.upstream_ca_file = (!val.trim().is_empty()).then_some(p)
            }
            "upstream_password_file" => {
                let text = std::fs::read_to_string(val.trim())
                    .map_err(|e| bad(format!("cannot read {}: {e}", val.trim())))?;
                self.upstream_password = Some(text.trim_end_matches(['\r', '\n']).to_string())
            }
            _ => {
                let known: Vec<&str> = SETTINGS.iter().map(|(k, _)| *k).collect();
                return Err(Error::Config(format!(
                    "{src}: unknown setting {key:?} (known: {})",
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Request queue bytes per client: at least twice the largest request (so that one
    /// always fits after a pad to the buffer's end), in whole pages.
    /// The largest size a new segment may grow to: `max_size`, or four times `size`.
    pub fn effective_max_size(&self) -> u64 {
        let size = self.size / PAGE * PAGE;
        if self.max_size == 0 {
            (4 * size).min(crate::segment::MAX_SEGMENT_SIZE).max(size)
        } else {
            self.max_size / PAGE * PAGE
        }
    }

    pub fn effective_queue_bytes(&self) -> u64 {
        let largest =
            align_up(REQ_HEADER_BYTES + MAX_KEY_LEN as u64 + self.max_value, 8) + REQ_CHECK_BYTES;
        align_up(self.queue_bytes.max(2 * largest), PAGE)
    }

    pub fn validate(&self) -> Result<()> {
        if self.dir.as_os_str().is_empty() {
            return Err(Error::Config("the data directory is empty".into()));
        }
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
        if self.queue_bytes > 1 << 30 {
            return Err(Error::Config(format!("queue_bytes {} is over 1 GiB", self.queue_bytes)));
        }
        if let Some(g) = &self.group {
            crate::shm::group_id(g)?;
        }
        crate::segment::Geometry::for_size(self.size, self.max_value)?;
        if self.max_size != 0 && self.max_size < self.size {
            return Err(Error::Config(format!(
                "max_size {} is below size {}",
                self.max_size, self.size
            )));
        }
        if self.max_size > crate::segment::MAX_SEGMENT_SIZE {
            return Err(Error::Config(format!(
                "max_size {} is over {} (1 TiB)",
                self.max_size,
                crate::segment::MAX_SEGMENT_SIZE
            )));
        }
        if self.records_size < 16 << 20 || self.records_size > 1 << 40 {
            return Err(Error::Config(format!(
                "records_size {} is out of range (16 MiB to 1 TiB)",
                self.records_size
            )));
        }
        Ok(())
    }

    /// Settings that differ between `self` and `new` and need a restart to change.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.dir != new.dir {
            v.push("dir");
        }
        if new.size < self.size {
            v.push("size (a segment does not shrink: dump, remove and load it)");
        }
        if self.max_size != new.max_size {
            v.push("max_size");
        }
        if self.max_value != new.max_value {
            v.push("max_value");
        }
        if self.max_clients != new.max_clients {
            v.push("max_clients");
        }
        if self.queue_bytes != new.queue_bytes {
            v.push("queue_bytes");
        }
        if self.group != new.group {
            v.push("group");
        }
        v
    }
}

/// Parse a size: "256MiB", "1GiB", "512M", "4096", "1.5 KiB" (binary units).
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
    match s.trim() {
        "allkeys-lru" | "lru" | "evict" => Ok(POLICY_EVICT),
        "noeviction" => Ok(POLICY_NOEVICTION),
        _ => Err(Error::Config(format!(
            "unknown eviction policy {s:?}: use allkeys-lru or noeviction"
        ))),
    }
}

pub fn parse_durability(s: &str) -> Result<Durability> {
    match s.trim() {
        "os" => Ok(Durability::Os),
        "periodic" => Ok(Durability::Periodic),
        "sync" => Ok(Durability::Sync),
        _ => Err(Error::Config(format!("unknown durability {s:?}: use os, periodic or sync"))),
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
        assert_eq!(c.effective_queue_bytes() % PAGE, 0);
        assert!(crate::ring::max_request(c.effective_queue_bytes()) >= c.max_value + 4096 + 32);
    }

    fn flags(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn file_then_flags_with_messages_naming_the_source() {
        let p = std::env::temp_dir().join(format!("surpd-cfg-{}.toml", crate::shm::random_u64()));
        std::fs::write(&p, "dir = \"/tmp/a\"\nsize = \"64MiB\"\neviction_policy = \"noeviction\"\nmax_clients = 8\n").unwrap();
        let c = Config::load(Some(&p), &flags(&[("size", "32MiB")])).unwrap();
        assert_eq!((c.size, c.policy, c.max_clients), (32 << 20, POLICY_NOEVICTION, 8));
        assert_eq!(c.dir, PathBuf::from("/tmp/a"));
        std::fs::write(&p, "dir = \"/tmp/a\"\nsize = \"12 parsecs\"\n").unwrap();
        let e = Config::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("config file") && e.contains("size") && e.contains("parsecs"), "{e}");
        std::fs::write(&p, "dir = \"/tmp/a\"\nsizee = 1\n").unwrap();
        let e = Config::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("unknown setting \"sizee\""), "{e}");
        std::fs::write(&p, "dir = [1]\n").unwrap();
        assert!(Config::load(Some(&p), &[]).unwrap_err().to_string().contains("array"));
        std::fs::write(&p, "not toml at all [[[").unwrap();
        assert!(Config::load(Some(&p), &[]).unwrap_err().to_string().contains("config file"));
        std::fs::remove_file(&p).unwrap();
        let e = Config::load(None, &flags(&[("dir", "/tmp/b"), ("durability", "sometimes")]))
            .unwrap_err();
        assert!(e.to_string().contains("option --durability"), "{e}");
        let e = Config::load(None, &flags(&[("dir", "/tmp/b"), ("group", "no-such-group-xyz")]))
            .unwrap_err();
        assert!(e.to_string().contains("no-such-group-xyz"), "{e}");
        assert!(Config::load(None, &[]).unwrap_err().to_string().contains("no data directory"));
    }

    #[test]
    fn restart_only_settings_are_named() {
        let a = Config::new("/tmp/a");
        let mut b = a.clone();
        b.policy = POLICY_NOEVICTION;
        b.size = a.size * 2; // grows while serving
        assert!(a.restart_only_changes(&b).is_empty());
        b.size = a.size / 2;
        b.max_value = a.max_value * 2;
        let v = a.restart_only_changes(&b);
        assert!(v.len() == 2 && v[0].starts_with("size (a segment does not shrink"), "{v:?}");
    }
}
