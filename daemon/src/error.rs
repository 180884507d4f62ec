//! The core crate's one error type. Validation failures become errors, never panics; the
//! Python binding maps each variant to one exception class (see python/surpdb/errors.py).

use std::fmt;
use std::io;

#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error, with what we were doing.
    Io { context: String, source: io::Error },
    /// A segment or ring of another format, version or layout.
    Incompatible(String),
    /// Bytes in shared memory that fail validation.
    Corrupted(String),
    /// No daemon is serving (not started, dead, or not answering in time).
    Unavailable(String),
    /// A value whose encoding exceeds the segment's maximum.
    ValueTooLarge { size: u64, max: u64 },
    /// A key longer than [`crate::layout::MAX_KEY_LEN`].
    KeyTooLong { len: usize, max: usize },
    /// No space for a write under `noeviction` (or space pinned by readers).
    SegmentFull(String),
    /// The client's request mailbox stayed full until the timeout.
    QueueFull(String),
    /// A wait that ran out of time.
    Timeout(String),
    /// Another daemon owns the data directory.
    Locked(String),
    /// A bad setting or argument.
    Config(String),
    /// A request the daemon refused (bad ticket, unknown op...).
    BadRequest(String),
    /// incr/decr on a value that is not an integer.
    NotInteger(String),
    /// An integer result out of range.
    Overflow(String),
    /// An update of a value of another type (append to a str...); nothing changed.
    WrongType(String),
    /// Tiered mode: an operation with no upstream equivalent (the message names it).
    NotSupported(String),
    /// A value the daemon would build, or an argument, it cannot accept; nothing changed.
    InvalidValue(String),
    /// A result the daemon would build (or a record) larger than the store accepts.
    TooLarge(String),
    /// Applied, but `durability = "sync"` could not flush it to disk.
    NotDurable(String),
    /// The filesystem holding the data directory is full (ENOSPC); nothing changed.
    DiskFull(String),
    /// A pickled value where pickles are refused (`pickle = false`); nothing changed.
    UnsafeValue(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Incompatible(m)
            | Error::Corrupted(m)
            | Error::Unavailable(m)
            | Error::NotSupported(m)
            | Error::SegmentFull(m)
            | Error::QueueFull(m)
            | Error::Timeout(m)
            | Error::Locked(m)
            | Error::Config(m)
            | Error::BadRequest(m)
            | Error::NotInteger(m)
            | Error::Overflow(m)
            | Error::WrongType(m)
            | Error::InvalidValue(m)
            | Error::TooLarge(m)
            | Error::NotDurable(m)
            | Error::DiskFull(m)
            | Error::UnsafeValue(m) => f.write_str(m),
            Error::ValueTooLarge { size, max } => {
                write!(f, "value is {size} bytes encoded; this segment's max_value is {max} bytes")
            }
            Error::KeyTooLong { len, max } => {
                write!(f, "key is {len} bytes; the longest key allowed is {max} bytes")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
