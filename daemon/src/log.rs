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
