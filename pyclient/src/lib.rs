//! surpdb._native: converts between Python and the core crate, nothing more. The read path,
//! the ring and the value format live in `surpd` (daemon/). By concern:
//! - `errors`: the exceptions of surpdb.errors, core errors onto them;
//! - `convert`: Python objects to the value encoding and back, the dict-key cache, keys, TTLs;
//! - `client`: the Client class (each method converts, calls the core with the GIL released
//!   around every wait, and shapes the reply: error statuses through the core's one mapping,
//!   `surpd::protocol::outcome`; tickets, sorted-set rules, scans and stats are the core's);
//! - `record`: record ids and the read-only Record mapping;
//! - `view`: the zero-copy buffer exporter that holds a reader pin;
//! - `tools`: serve, check, encode/decode for tools and tests.

mod client;
mod convert;
mod errors;
mod record;
mod tools;
mod view;

use pyo3::prelude::*;

use client::Client;
use record::Record;
use tools::*;
use view::View;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Client>()?;
    m.add_class::<View>()?;
    m.add_class::<Record>()?;
    m.add_function(wrap_pyfunction!(serve, m)?)?;
    m.add_function(wrap_pyfunction!(encode_value, m)?)?;
    m.add_function(wrap_pyfunction!(check, m)?)?;
    m.add_function(wrap_pyfunction!(decode_value_bytes, m)?)?;
    m.add("MAX_KEY_LEN", surpd::layout::MAX_KEY_LEN)?;
    m.add("FORMAT_VERSION", surpd::layout::FORMAT_VERSION)?;
    let older: Vec<u32> = surpd::layout::FORMATS_UPGRADABLE.iter().map(|v| v.0).collect();
    m.add("FORMATS_UPGRADABLE", older)?;
    m.add("RECORDS_VERSION", surpd::layout::RECORDS_VERSION)?;
    m.add("RECORDS_FIXED_VERSION", surpd::layout::RECORDS_FIXED_VERSION)?;
    m.add("RING_VERSION", surpd::layout::RING_VERSION)?;
    Ok(())
}
