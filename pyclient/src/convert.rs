//! Python objects to the value encoding and back; keys, TTLs.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use surpd::value as v;
use surpd::Error;

use crate::errors::*;

// ---------------------------------------------------------------- encoding Python values

pub(crate) static PICKLE_DUMPS: GILOnceCell<PyObject> = GILOnceCell::new();
pub(crate) static PICKLE_LOADS: GILOnceCell<PyObject> = GILOnceCell::new();

pub(crate) fn pickle_fn<'py>(
    py: Python<'py>,
    cell: &'static GILOnceCell<PyObject>,
    name: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    let f = cell.get_or_try_init(py, || -> PyResult<PyObject> {
        Ok(py.import("pickle")?.getattr(name)?.unbind())
    })?;
    Ok(f.bind(py))
}

pub(crate) fn encode(obj: &Bound<'_, PyAny>, out: &mut Vec<u8>, depth: usize) -> PyResult<()> {
    if depth > v::MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "value nests deeper than {} containers",
            v::MAX_DEPTH
        )));
    }
    let py = obj.py();
    // Exact types only: a subclass (bool is an int, OrderedDict a dict, SafeString a str)
    // is pickled so that it round-trips as itself.
    if obj.is_none() {
        out.push(v::NONE);
    } else if obj.is_exact_instance_of::<PyBool>() {
        out.push(if obj.is_truthy()? { v::TRUE } else { v::FALSE });
    } else if obj.is_exact_instance_of::<PyString>() {
        let s = obj.downcast::<PyString>()?;
        match s.to_str() {
            Ok(s) => {
                out.push(v::STR);
                v::put_varint(out, s.len() as u64);
                out.extend_from_slice(s.as_bytes());
            }
            // Lone surrogates have no UTF-8 form: pickle keeps them exactly.
            Err(_) => pickle(obj, out)?,
        }
    } else if obj.is_exact_instance_of::<PyBytes>() {
        let b = obj.downcast::<PyBytes>()?.as_bytes();
        out.push(v::BYTES);
        v::put_varint(out, b.len() as u64);
        out.extend_from_slice(b);
    } else if obj.is_exact_instance_of::<PyInt>() {
        match obj.extract::<i64>() {
            Ok(i) => {
                out.push(v::INT);
                v::put_varint(out, v::zigzag(i));
            }
            Err(_) => {
                let bits: u64 = obj.call_method0("bit_length")?.extract()?;
                let n = bits / 8 + 1;
                let kw = PyDict::new(py);
                kw.set_item("signed", true)?;
                let b = obj.call_method("to_bytes", (n, "little"), Some(&kw))?;
                let b = b.downcast::<PyBytes>()?.as_bytes();
                out.push(v::BIGINT);
                v::put_varint(out, b.len() as u64);
                out.extend_from_slice(b);
            }
        }
    } else if obj.is_exact_instance_of::<PyFloat>() {
        out.push(v::FLOAT);
        out.extend_from_slice(&obj.downcast::<PyFloat>()?.value().to_le_bytes());
    } else if obj.is_exact_instance_of::<PyList>() {
        let l = obj.downcast::<PyList>()?;
        out.push(v::LIST);
        v::put_varint(out, l.len() as u64);
        for item in l.iter() {
            encode(&item, out, depth + 1)?;
        }
    } else if obj.is_exact_instance_of::<PyTuple>() {
        let t = obj.downcast::<PyTuple>()?;
        out.push(v::TUPLE);
        v::put_varint(out, t.len() as u64);
        for item in t.iter() {
            encode(&item, out, depth + 1)?;
        }
    } else if obj.is_exact_instance_of::<PyDict>() {
        let d = obj.downcast::<PyDict>()?;
        out.push(v::DICT);
        v::put_varint(out, d.len() as u64);
        for (k, val) in d.iter() {
            encode(&k, out, depth + 1)?;
            encode(&val, out, depth + 1)?;
        }
    } else {
        pickle(obj, out)?;
    }
    Ok(())
}

pub(crate) fn pickle(obj: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> PyResult<()> {
    let py = obj.py();
    let b = pickle_fn(py, &PICKLE_DUMPS, "dumps")?.call1((obj, 5))?;
    let b = b.downcast::<PyBytes>()?.as_bytes();
    out.push(v::PICKLE);
    v::put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
    Ok(())
}

thread_local! {
    /// Recently decoded dict keys (short strings) by a hash of their bytes: records repeat
    /// the same few field names, and a cached str skips an allocation, a UTF-8 check and the
    /// dict's hashing of a fresh string (its hash is cached in the object).
    static KEYS: std::cell::RefCell<Vec<Option<CachedKey>>> =
        std::cell::RefCell::new((0..KEY_CACHE).map(|_| None).collect());
}
pub(crate) type CachedKey = (Box<[u8]>, Py<PyString>);
pub(crate) const KEY_CACHE: usize = 256;
pub(crate) const KEY_CACHE_MAX_LEN: usize = 40;

/// A dict key from the key cache, if the next value is a short string.
pub(crate) fn dict_key<'py>(
    py: Python<'py>,
    r: &mut v::Reader<'_>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let start = r.pos;
    if r.buf.get(start) != Some(&v::STR) {
        return Ok(None);
    }
    r.pos += 1;
    let b = match r.lbytes() {
        Ok(b) if b.len() <= KEY_CACHE_MAX_LEN => b,
        _ => {
            r.pos = start;
            return Ok(None);
        }
    };
    let mut h = b.len() as u64;
    for &x in b {
        h = (h ^ x as u64).wrapping_mul(0x100_0000_01b3);
    }
    let slot = (h ^ (h >> 29)) as usize % KEY_CACHE;
    let hit = KEYS.with(|k| {
        let k = k.borrow();
        match &k[slot] {
            Some((bytes, s)) if **bytes == *b => Some(s.bind(py).clone().into_any()),
            _ => None,
        }
    });
    if hit.is_some() {
        return Ok(hit);
    }
    let s = std::str::from_utf8(b).map_err(|_| corrupt("invalid UTF-8"))?;
    let obj = PyString::new(py, s);
    obj.hash()?;
    KEYS.with(|k| k.borrow_mut()[slot] = Some((b.into(), obj.clone().unbind())));
    Ok(Some(obj.into_any()))
}

pub(crate) fn decode<'py>(
    py: Python<'py>,
    r: &mut v::Reader<'_>,
    depth: usize,
) -> PyResult<Bound<'py, PyAny>> {
    if depth > v::MAX_DEPTH {
        return Err(corrupt("nesting too deep"));
    }
    let e = |e: Error| corrupt(&e.to_string());
    Ok(match r.u8().map_err(e)? {
        v::NONE => py.None().into_bound(py),
        v::FALSE => PyBool::new(py, false).to_owned().into_any(),
        v::TRUE => PyBool::new(py, true).to_owned().into_any(),
        v::INT => v::unzigzag(r.varint().map_err(e)?).into_pyobject(py)?.into_any(),
        v::BIGINT => {
            let b = r.lbytes().map_err(e)?;
            let kw = PyDict::new(py);
            kw.set_item("signed", true)?;
            py.get_type::<PyInt>().call_method(
                "from_bytes",
                (PyBytes::new(py, b), "little"),
                Some(&kw),
            )?
        }
        v::FLOAT => {
            let b = r.bytes(8).map_err(e)?;
            PyFloat::new(py, f64::from_le_bytes(b.try_into().unwrap())).into_any()
        }
        v::STR => {
            let b = r.lbytes().map_err(e)?;
            let s = std::str::from_utf8(b).map_err(|_| corrupt("invalid UTF-8"))?;
            PyString::new(py, s).into_any()
        }
        v::BYTES => PyBytes::new(py, r.lbytes().map_err(e)?).into_any(),
        v::LIST | v::TUPLE => {
            let tag = r.buf[r.pos - 1];
            let n = r.count(1).map_err(e)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(decode(py, r, depth + 1)?);
            }
            if tag == v::LIST {
                PyList::new(py, items)?.into_any()
            } else {
                PyTuple::new(py, items)?.into_any()
            }
        }
        v::DICT => {
            let n = r.count(2).map_err(e)?;
            let d = PyDict::new(py);
            for _ in 0..n {
                let k = match dict_key(py, r)? {
                    Some(k) => k,
                    None => decode(py, r, depth + 1)?,
                };
                let val = decode(py, r, depth + 1)?;
                d.set_item(k, val)?;
            }
            d.into_any()
        }
        v::PICKLE => {
            let b = r.lbytes().map_err(e)?;
            pickle_fn(py, &PICKLE_LOADS, "loads")?.call1((PyBytes::new(py, b),))?
        }
        v::ZSET => {
            // A sorted set reads back as {member: score}, lowest score first.
            let n = r.count(10).map_err(e)?;
            let d = PyDict::new(py);
            for _ in 0..n {
                let z = v::zentry(r).map_err(e)?;
                d.set_item(member_obj(py, &z), z.score)?;
            }
            d.into_any()
        }
        t => return Err(corrupt(&format!("unknown tag {t:#x}"))),
    })
}

pub(crate) fn member_obj<'py>(py: Python<'py>, z: &v::ZEntry<'_>) -> Bound<'py, PyAny> {
    if z.is_str {
        // zentry checked the UTF-8.
        PyString::new(py, std::str::from_utf8(z.member).unwrap_or_default()).into_any()
    } else {
        PyBytes::new(py, z.member).into_any()
    }
}

/// A sorted-set member from Python: str or bytes.
pub(crate) fn member_bytes<'a>(m: &'a Bound<'_, PyAny>) -> PyResult<(&'a [u8], bool)> {
    if let Ok(s) = m.downcast::<PyString>() {
        Ok((s.to_str()?.as_bytes(), true))
    } else if let Ok(b) = m.downcast::<PyBytes>() {
        Ok((b.as_bytes(), false))
    } else {
        Err(PyTypeError::new_err(format!(
            "sorted set members must be str or bytes, not {}",
            m.get_type().name()?
        )))
    }
}

pub(crate) fn decode_value<'py>(py: Python<'py>, buf: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let mut r = v::Reader::new(buf);
    let out = decode(py, &mut r, 0)?;
    if !r.at_end() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(out)
}

/// Borrow a key's bytes: str (as UTF-8) or bytes; anything else is a TypeError.
pub(crate) fn with_key<R>(
    key: &Bound<'_, PyAny>,
    f: impl FnOnce(&[u8]) -> PyResult<R>,
) -> PyResult<R> {
    if let Ok(s) = key.downcast::<PyString>() {
        f(s.to_str()?.as_bytes())
    } else if let Ok(b) = key.downcast::<PyBytes>() {
        f(b.as_bytes())
    } else {
        Err(PyTypeError::new_err(format!(
            "key must be str or bytes, not {}",
            key.get_type().name()?
        )))
    }
}

pub(crate) use surpd::protocol::key_repr;

/// Longest wait for the daemon a client accepts, in seconds (a year).
pub(crate) const MAX_TIMEOUT_S: f64 = 365.0 * 86_400.0;

/// TTL in seconds (None = never) to milliseconds for the wire (0 = never).
pub(crate) fn ttl_ms(ttl: Option<f64>) -> PyResult<u64> {
    match ttl {
        None => Ok(0),
        Some(t) if t.is_finite() && t > 0.0 => Ok(((t * 1000.0).ceil() as u64).max(1)),
        Some(t) => Err(PyValueError::new_err(format!(
            "ttl must be a positive number of seconds or None, got {t}"
        ))),
    }
}

/// The suffix of the companion key a get_or_set refresh lease is taken on (a lease record
/// reads as a miss and scans skip it: the key is never seen).
pub(crate) const REFRESH_SUFFIX: &[u8] = b"\0~refresh";

/// get_or_set's refresh window: the last `early_ms` of a value's `ttl` and the `stale_ms`
/// it is kept past it, in which one caller recomputes while the others read it.
pub(crate) struct RefreshWindow {
    pub(crate) stale_ms: u64,
    early_ms: u64,
}

impl RefreshWindow {
    pub(crate) fn new(ttl_ms: u64, stale_ttl: Option<f64>, early: f64) -> PyResult<Self> {
        // Bounded so that ttl + stale_ttl stays far from overflowing (about 300 years).
        const MAX_S: f64 = 1e10;
        let stale_ms = match stale_ttl {
            None => 0,
            Some(s) if s.is_finite() && (0.0..=MAX_S).contains(&s) => (s * 1000.0).ceil() as u64,
            Some(s) => {
                return Err(PyValueError::new_err(format!(
                    "stale_ttl must be seconds from 0 to {MAX_S:e} or None, got {s}"
                )))
            }
        };
        if !(early.is_finite() && (0.0..=MAX_S).contains(&early)) {
            return Err(PyValueError::new_err(format!(
                "early must be seconds from 0 to {MAX_S:e}, got {early}"
            )));
        }
        let early_ms = (early * 1000.0).ceil() as u64;
        if (stale_ms > 0 || early_ms > 0) && ttl_ms == 0 {
            return Err(PyValueError::new_err(
                "stale_ttl and early need a ttl: a value without one never goes stale",
            ));
        }
        if early_ms > 0 && early_ms >= ttl_ms {
            return Err(PyValueError::new_err(format!(
                "early ({early} s) must be less than ttl ({} s)",
                ttl_ms as f64 / 1000.0
            )));
        }
        Ok(Self { stale_ms, early_ms })
    }

    /// Whether a value expiring at `expires_ms` (0: never) is in its refresh window.
    pub(crate) fn due(&self, expires_ms: u64) -> bool {
        let window = self.stale_ms + self.early_ms;
        window > 0 && expires_ms != 0 && surpd::shm::now_ms() >= expires_ms.saturating_sub(window)
    }
}
