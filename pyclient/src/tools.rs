//! Module-level functions: serve, check, encode/decode for tools and tests.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::convert::*;
use crate::errors::*;

/// Run the daemon in this process until SIGTERM/SIGINT (what `surpdb serve` calls).
/// `options` are setting names and values as flags give them (they beat SURPDB_* variables,
/// which beat the config file); SIGHUP reloads the live ones. `parent_fd`: the read end of
/// a pipe whose writers' exit stops the daemon (surpdb.Server).
#[pyfunction]
#[pyo3(signature = (config = None, options = None, ready_fd = None, parent_fd = None))]
pub(crate) fn serve(
    py: Python<'_>,
    config: Option<PathBuf>,
    options: Option<Vec<(String, String)>>,
    ready_fd: Option<i32>,
    parent_fd: Option<i32>,
) -> PyResult<()> {
    let mut cfg = surpd::config::Config::load(config.as_deref(), &options.unwrap_or_default())
        .map_err(to_py_err)?;
    cfg.ready_fd = ready_fd;
    cfg.parent_fd = parent_fd;
    py.allow_threads(|| surpd::server::run(cfg)).map_err(to_py_err)
}

/// Verify the segment in `path` without changing it; returns a report dict.
#[pyfunction]
pub(crate) fn check<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let r = py.allow_threads(|| surpd::check::check(&path)).map_err(to_py_err)?;
    let d = PyDict::new(py);
    d.set_item("ok", r.problem_count == 0)?;
    d.set_item("items", r.items)?;
    d.set_item("live_bytes", r.live_bytes)?;
    d.set_item("header_items", r.header_items)?;
    d.set_item("header_live_bytes", r.header_live_bytes)?;
    d.set_item("log_records", r.log_records)?;
    d.set_item("log_pads", r.log_pads)?;
    d.set_item("log_bytes", r.log_bytes)?;
    d.set_item("clean_stop", r.clean)?;
    d.set_item("daemon_pid", r.daemon_pid)?;
    d.set_item("problem_count", r.problem_count)?;
    d.set_item("problems", r.problems)?;
    Ok(d)
}

/// Encode a value as surpdb stores it (for tests and tools).
#[pyfunction]
pub(crate) fn encode_value<'py>(
    py: Python<'py>,
    value: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut buf = Vec::new();
    encode(value, &mut buf, 0)?;
    Ok(PyBytes::new(py, &buf))
}

/// Decode bytes produced by encode_value, or a stored value (compressed or tagged ones too:
/// what `dump` writes; a tagged one's tags are not looked at); raises CorruptSegment on
/// malformed input.
#[pyfunction]
pub(crate) fn decode_value_bytes<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let (_, inner) = surpd::value::split_tagged(data).map_err(to_py_err)?;
    let plain = surpd::value::plain(inner, surpd::value::MAX_PLAIN).map_err(to_py_err)?;
    decode_value(py, &plain)
}
