//! Zero-copy views: the buffer exporter that holds a reader pin.

use std::os::raw::c_int;
use std::sync::Arc;

use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;

use surpd::client::Client as Core;

/// What `view()` exports: the mapping itself, or a copy for a client without a box.
pub(crate) enum Exported {
    View(View),
    Copy(PyObject),
}

/// The exporter behind a zero-copy memoryview; releases its pin when dropped.
#[pyclass(module = "surpdb._native", frozen)]
pub(crate) struct View {
    pub(crate) core: Arc<Core>,
    pub(crate) epoch: u64,
    pub(crate) ptr: usize,
    pub(crate) len: usize,
}

#[pymethods]
impl View {
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if flags & pyo3::ffi::PyBUF_WRITABLE == pyo3::ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("surpdb views are read-only"));
        }
        let me = slf.get();
        // SAFETY: ptr/len were bounds-checked against the mapping, which `core` keeps alive;
        // the record is immutable while our epoch is pinned. FillInfo takes a new reference
        // to the exporter, released with the buffer.
        let r = pyo3::ffi::PyBuffer_FillInfo(
            view,
            slf.as_ptr(),
            me.ptr as *mut std::ffi::c_void,
            me.len as isize,
            1,
            flags,
        );
        if r == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {}
}

impl Drop for View {
    fn drop(&mut self) {
        // In a forked child this releases the child's pin, never the parent's.
        self.core.unpin_view(self.epoch);
    }
}
