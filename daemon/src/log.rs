//! Leveled logs on stderr. Under systemd (JOURNAL_STREAM set) each line starts with a
//! `<N>` syslog priority that journald turns into the entry's level; elsewhere lines read
//! `surpd[pid] LEVEL message`. Messages are `text key=value ...` so they grep and parse.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 3,
    Warn = 4,
    Info = 6,
    Debug = 7,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

impl Level {
    pub fn parse(s: &str) -> Result<Level> {
        match s.trim().to_ascii_lowercase().as_str() {
            "error" => Ok(Level::Error),
            "warn" | "warning" => Ok(Level::Warn),
            "info" => Ok(Level::Info),
            "debug" => Ok(Level::Debug),
            _ => Err(Error::Config(format!(
                "unknown log level {s:?}: use error, warn, info or debug"
            ))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

pub fn set_level(l: Level) {
    LEVEL.store(l as u8, Ordering::Relaxed);
}

pub fn enabled(l: Level) -> bool {
    (l as u8) <= LEVEL.load(Ordering::Relaxed)
}

/// Write one log line if `l` is enabled.
pub fn log(l: Level, msg: &str) {
    if !enabled(l) {
        return;
    }
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        eprintln!("<{}>{msg}", l as u8);
    } else {
        eprintln!("surpd[{}] {} {msg}", std::process::id(), l.name());
    }
}

pub fn error(msg: &str) {
    log(Level::Error, msg)
}
pub fn warn(msg: &str) {
    log(Level::Warn, msg)
}
pub fn info(msg: &str) {
    log(Level::Info, msg)
}
pub fn debug(msg: &str) {
    log(Level::Debug, msg)
}

/// A log line a client can cause again and again (a refused record, a malformed request, a
/// full disk met by every insert): written at most once a second, with the count of those
/// held back since the last one written. One static per call site:
/// `static L: Limited = Limited::new(); L.warn(|| format!(...))`.
pub struct Limited {
    /// Milliseconds (since the first use) of the last line written, +1; 0: none yet.
    last_ms: std::sync::atomic::AtomicU64,
    held: std::sync::atomic::AtomicU64,
}

impl Default for Limited {
    fn default() -> Self {
        Self::new()
    }
}

impl Limited {
    pub const fn new() -> Limited {
        Limited {
            last_ms: std::sync::atomic::AtomicU64::new(0),
            held: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Write `msg()` at level `l` unless a line of this site was written less than a second
    /// ago (then count it as held back). Returns whether it was written.
    pub fn log(&self, l: Level, msg: impl FnOnce() -> String) -> bool {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let now = START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64;
        self.log_at(now + 1, l, msg)
    }

    /// [`Limited::log`] at `now_ms` (at least 1), returning the line it would write.
    fn line_at(&self, now_ms: u64, msg: impl FnOnce() -> String) -> Option<String> {
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms < last + 1000
            || self
                .last_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(match self.held.swap(0, Ordering::Relaxed) {
            0 => msg(),
            n => format!("{} ({n} more like it held back)", msg()),
        })
    }

    fn log_at(&self, now_ms: u64, l: Level, msg: impl FnOnce() -> String) -> bool {
        if !enabled(l) {
            return false;
        }
        self.line_at(now_ms, msg).map(|line| log(l, &line)).is_some()
    }

    pub fn warn(&self, msg: impl FnOnce() -> String) -> bool {
        self.log(Level::Warn, msg)
    }

    pub fn error(&self, msg: impl FnOnce() -> String) -> bool {
        self.log(Level::Error, msg)
    }

    /// Lines held back since the last one written.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_line_is_written_once_a_second_with_a_count() {
        let l = Limited::new();
        let mut made = 0;
        let mut at = |ms: u64, text: &str| {
            l.line_at(ms, || {
                made += 1;
                text.to_string()
            })
        };
        assert_eq!(at(1, "first").as_deref(), Some("first"));
        for ms in 2..1001 {
            assert_eq!(at(ms, "again"), None);
        }
        assert_eq!(at(1001, "later").as_deref(), Some("later (999 more like it held back)"));
        assert_eq!(at(1500, "again"), None);
        assert_eq!(at(5000, "quiet").as_deref(), Some("quiet (1 more like it held back)"));
        assert_eq!(at(6000, "alone").as_deref(), Some("alone"));
        // Held-back lines are not even formatted.
        assert_eq!(made, 4);
    }
}
