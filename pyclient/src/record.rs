//! Record ids and the read-only Record mapping.

use pyo3::exceptions::{PyKeyError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyList, PyString};

use surpd::value as v;

use crate::convert::*;

/// A record id from Python: an int; a negative or too large one is no record (KeyError).
pub(crate) fn record_id(rid: &Bound<'_, PyAny>) -> PyResult<u64> {
    if !rid.is_instance_of::<pyo3::types::PyInt>() || rid.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "record ids are ints, got {}",
            rid.get_type().name()?
        )));
    }
    rid.extract::<u64>().map_err(|_| {
        PyKeyError::new_err(format!(
            "no such record id: {}",
            rid.repr().map(|r| r.to_string()).unwrap_or_default()
        ))
    })
}

/// A stored record as a read-only mapping: fields are turned into Python values when read.
#[pyclass(module = "surpdb._native", frozen, mapping)]
pub(crate) struct Record {
    pub(crate) buf: Vec<u8>,
    pub(crate) fields: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
    pub(crate) rid: u64,
}

impl Record {
    fn find(&self, key: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
        let Ok(k) = key.downcast::<PyString>() else { return Ok(None) };
        let k = k.to_str()?.as_bytes();
        for (i, (kr, _)) in self.fields.iter().enumerate() {
            let mut r = v::Reader::new(&self.buf[kr.clone()]);
            if r.u8().ok() == Some(v::STR) && r.lbytes().ok() == Some(k) {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }
}

#[pymethods]
impl Record {
    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match self.find(key)? {
            Some(i) => decode_value(py, &self.buf[self.fields[i].1.clone()]),
            None => Err(PyKeyError::new_err(key.clone().unbind())),
        }
    }

    fn __len__(&self) -> usize {
        self.fields.len()
    }

    fn __contains__(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.find(key)?.is_some())
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.keys(py)?.as_any().try_iter()?.into_any())
    }

    fn values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let l = PyList::empty(py);
        for (_, v) in &self.fields {
            l.append(decode_value(py, &self.buf[v.clone()])?)?;
        }
        Ok(l)
    }

    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let l = PyList::empty(py);
        for (k, v) in &self.fields {
            let k = decode_value(py, &self.buf[k.clone()])?;
            l.append((k, decode_value(py, &self.buf[v.clone()])?))?;
        }
        Ok(l)
    }

    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let l = PyList::empty(py);
        for (k, _) in &self.fields {
            l.append(decode_value(py, &self.buf[k.clone()])?)?;
        }
        Ok(l)
    }

    #[pyo3(signature = (key, default = None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match self.find(key)? {
            Some(i) => decode_value(py, &self.buf[self.fields[i].1.clone()]),
            None => Ok(default.unwrap_or_else(|| py.None().into_bound(py))),
        }
    }

    /// The record as a plain dict.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        decode_value(py, &self.buf)
    }

    /// The record's id.
    #[getter]
    fn id(&self) -> u64 {
        self.rid
    }

    fn __eq__<'py>(&self, py: Python<'py>, other: &Bound<'py, PyAny>) -> PyResult<bool> {
        decode_value(py, &self.buf)?.eq(other)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("Record({})", decode_value(py, &self.buf)?.repr()?))
    }
}
