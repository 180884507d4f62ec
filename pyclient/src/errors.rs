//! The exceptions of surpdb.errors and the mapping of core errors onto them.

use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use surpd::Error as CoreError;

pyo3::import_exception!(surpdb.errors, Error);
pyo3::import_exception!(surpdb.errors, Unavailable);
pyo3::import_exception!(surpdb.errors, ValueTooLarge);
pyo3::import_exception!(surpdb.errors, KeyTooLong);
pyo3::import_exception!(surpdb.errors, SegmentFull);
pyo3::import_exception!(surpdb.errors, QueueFull);
pyo3::import_exception!(surpdb.errors, Timeout);
pyo3::import_exception!(surpdb.errors, CorruptSegment);
pyo3::import_exception!(surpdb.errors, IncompatibleSegment);
pyo3::import_exception!(surpdb.errors, DaemonRunning);
pyo3::import_exception!(surpdb.errors, ConfigError);
pyo3::import_exception!(surpdb.errors, NotSupported);
pyo3::import_exception!(surpdb.errors, UnsafeValue);

pub(crate) fn to_py_err(e: CoreError) -> PyErr {
    let msg = e.to_string();
    match e {
        CoreError::Io { source, .. } => {
            let code = source.raw_os_error().unwrap_or(0);
            match source.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    pyo3::exceptions::PyPermissionError::new_err((code, msg))
                }
                std::io::ErrorKind::NotFound => {
                    pyo3::exceptions::PyFileNotFoundError::new_err((code, msg))
                }
                _ => pyo3::exceptions::PyOSError::new_err((code, msg)),
            }
        }
        CoreError::Incompatible(_) => IncompatibleSegment::new_err(msg),
        CoreError::Corrupted(_) => CorruptSegment::new_err(msg),
        CoreError::Unavailable(_) => Unavailable::new_err(msg),
        CoreError::ValueTooLarge { .. } => ValueTooLarge::new_err(msg),
        CoreError::KeyTooLong { .. } => KeyTooLong::new_err(msg),
        CoreError::SegmentFull(_) => SegmentFull::new_err(msg),
        CoreError::QueueFull(_) => QueueFull::new_err(msg),
        CoreError::Timeout(_) => Timeout::new_err(msg),
        CoreError::Locked(_) => DaemonRunning::new_err(msg),
        CoreError::Config(_) => ConfigError::new_err(msg),
        CoreError::NotSupported(_) => NotSupported::new_err(msg),
        CoreError::UnsafeValue(_) => UnsafeValue::new_err(msg),
        CoreError::NotInteger(_) => PyTypeError::new_err(msg),
        CoreError::Overflow(_) => PyOverflowError::new_err(msg),
        CoreError::WrongType(_) => PyTypeError::new_err(msg),
        CoreError::InvalidValue(_) => PyValueError::new_err(msg),
        CoreError::TooLarge(_) => ValueTooLarge::new_err(msg),
        CoreError::DiskFull(_) => pyo3::exceptions::PyOSError::new_err((28, msg)), // ENOSPC
        _ => Error::new_err(msg),
    }
}

pub(crate) fn corrupt(what: &str) -> PyErr {
    CorruptSegment::new_err(format!("stored value does not decode: {what}"))
}
