//! The Python Client: each method converts its arguments, calls the core, shapes the reply.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyKeyError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyList, PyTuple};

use surpd::client::{Client as Core, Lookup, Pipeline, Ticket};
use surpd::codec::RecordEncoder;
use surpd::layout::{op, status, NS_MARK};
use surpd::protocol::Request;
use surpd::ring::Reply;
use surpd::value as v;
use surpd::zset;

use crate::convert::*;
use crate::errors;
use crate::errors::*;
use crate::record::*;
use crate::view::*;

// ---------------------------------------------------------------- the client

/// A connection to one surpdb data directory. Reads come straight from the shared mapping;
/// writes go through this process's request queue to the daemon.
#[pyclass(module = "surpdb._native", frozen)]
pub(crate) struct Client {
    pub(crate) core: Arc<Core>,
    /// This client's namespace (0: the default one): its keys are stored behind its prefix.
    pub(crate) ns: usize,
    /// False: values that need a pickle are refused both ways (loading one runs code).
    pub(crate) pickle: bool,
    /// Whole values of at least this many bytes encoded are stored compressed when that
    /// saves a tenth (0: never).
    pub(crate) compress_min: usize,
}

/// zstd level of compressed values (see benchmarks/compress_bench.py for the choice).
const COMPRESS_LEVEL: i32 = 3;
/// Most record ids one `record_ids` call returns.
const MAX_SCAN_COUNT: usize = 1_000_000;

/// What get_or_set stores on a miss: `default` (called), for `ttl` ms, with `tags`.
struct Compute<'a, 'py> {
    default: &'a Bound<'py, PyAny>,
    ttl: u64,
    tags: Option<&'a Bound<'py, PyAny>>,
}

impl Client {
    /// The stored form of a Python key in this client's namespace, handed to `f` (the key's
    /// own bytes, uncopied, in the default namespace).
    #[inline]
    pub(crate) fn with_key<R>(
        &self,
        key: &Bound<'_, PyAny>,
        f: impl FnOnce(&[u8]) -> PyResult<R>,
    ) -> PyResult<R> {
        let ns = self.ns;
        with_key(key, |k| {
            if ns == 0 && (k.first() != Some(&NS_MARK) || !surpd::namespace::needs_prefix(0, k)) {
                return f(k);
            }
            let prefix = [NS_MARK, ns as u8];
            if k.len() <= 254 {
                let mut b = [0u8; 256];
                b[..2].copy_from_slice(&prefix);
                b[2..2 + k.len()].copy_from_slice(k);
                f(&b[..2 + k.len()])
            } else {
                f(&[&prefix[..], k].concat())
            }
        })
    }

    /// Queue `req` and wait for its reply with the GIL released.
    fn call(&self, py: Python<'_>, req: Request<'_>) -> PyResult<Reply> {
        let core = &self.core;
        py.allow_threads(|| core.call(&req)).map_err(to_py_err)
    }

    /// Queue `req` and return its ticket; the core's ticket ledger keeps its op and key, so
    /// that wait() shapes the reply as the call would have.
    fn enqueue(&self, req: Request<'_>) -> PyResult<u64> {
        self.core.send_kept(&req).map_err(to_py_err)
    }

    /// A wait=False ticket's reply, shaped as the call that made it would have.
    fn shape_ticket(&self, py: Python<'_>, r: Reply, t: Ticket) -> PyResult<PyObject> {
        let key = t.key.as_deref().unwrap_or_default();
        self.shape(py, t.op, key, r)
    }

    /// `req`'s shaped reply (wait=True) or its ticket (wait=False).
    fn submit(&self, py: Python<'_>, req: Request<'_>, wait: bool) -> PyResult<PyObject> {
        if wait {
            let r = self.call(py, req)?;
            self.shape(py, req.op, req.key, r)
        } else {
            Ok(self.enqueue(req)?.into_pyobject(py)?.into_any().unbind())
        }
    }

    /// A stored value as a Python object; with pickle=False, one holding a pickle raises.
    pub(crate) fn decode<'py>(&self, py: Python<'py>, buf: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        if buf.first() == Some(&v::COMPRESSED) {
            let plain = v::plain(buf, self.core.max_value()).map_err(to_py_err)?;
            return self.decode_plain(py, &plain);
        }
        self.decode_plain(py, buf)
    }

    fn decode_plain<'py>(&self, py: Python<'py>, buf: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        if self.pickle {
            return decode_value(py, buf);
        }
        // `buf` may be shared memory another process writes: the bytes checked are the bytes
        // decoded (a value rewritten between a check and a decode read from the mapping
        // could slip a pickle through).
        let own = buf.to_vec();
        if v::has_pickle(&own) {
            return Err(errors::UnsafeValue::new_err(
                "the stored value holds a pickle, and this client refuses to load pickles \
                 (pickle=False: loading one runs code)",
            ));
        }
        decode_value(py, &own)
    }

    /// `value` encoded as a whole value stored under a key: compressed if large (see
    /// [`Client::compress`]).
    fn encode_stored(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
        let mut buf = self.encode_value(value)?;
        self.compress(py, &mut buf);
        Ok(buf)
    }

    /// The tag header (`value::TAGGED`) for `tags` (str or bytes names; None or empty: no
    /// header) in this client's namespace: each tag key's current token, made when the key
    /// holds none. Read before the value is computed, so that an invalidation meanwhile
    /// leaves the value stale, never current.
    fn tag_head(&self, py: Python<'_>, tags: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<u8>> {
        let Some(tags) = tags else { return Ok(Vec::new()) };
        let keys = self.tag_keys(tags)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if keys.len() > v::MAX_TAGS {
            return Err(PyValueError::new_err(format!(
                "{} tags; a value may carry at most {}",
                keys.len(),
                v::MAX_TAGS
            )));
        }
        if self.core.tiered() {
            return Err(errors::NotSupported::new_err(
                "tags need a standalone store: a tiered daemon's other hosts could not see \
                 an invalidation",
            ));
        }
        let mut entries = Vec::with_capacity(keys.len());
        for (user, stored) in keys {
            let token = self.tag_token(py, &stored)?;
            entries.push((user, token)); // the value's key says the namespace
        }
        Ok(v::tag_header(&entries))
    }

    /// The keys of `tags` (an iterable of str or bytes, not one str), duplicates dropped:
    /// each as the namespace's users know it, and stored.
    fn tag_keys(&self, tags: &Bound<'_, PyAny>) -> PyResult<Vec<(Vec<u8>, Vec<u8>)>> {
        if tags.is_instance_of::<pyo3::types::PyString>() || tags.is_instance_of::<PyBytes>() {
            return Err(PyTypeError::new_err(
                "tags must be a list of tag names (str or bytes), not one name",
            ));
        }
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for t in tags.try_iter()? {
            let t = t?;
            let name: Vec<u8> = if let Ok(s) = t.downcast::<pyo3::types::PyString>() {
                s.to_str()?.as_bytes().to_vec()
            } else if let Ok(b) = t.downcast::<PyBytes>() {
                b.as_bytes().to_vec()
            } else {
                return Err(PyTypeError::new_err(format!(
                    "a tag is a str or bytes, not {}",
                    t.get_type().name()?
                )));
            };
            if name.is_empty() {
                return Err(PyValueError::new_err("a tag name must not be empty"));
            }
            let user = [surpd::tags::TAG_KEY_PREFIX, &name].concat();
            let mut buf = Vec::new();
            let k = surpd::namespace::stored_key(self.ns, &user, &mut buf).to_vec();
            Core::check_key(&k).map_err(to_py_err)?;
            if !out.iter().any(|(u, _)| *u == user) {
                out.push((user, k));
            }
        }
        Ok(out)
    }

    /// The token tag key `k` holds, made (an `add` of a random one) if it holds none.
    fn tag_token(&self, py: Python<'_>, k: &[u8]) -> PyResult<u64> {
        let read = || {
            self.core.read(k, |r| {
                r.and_then(|r| v::decode_int(r.value).ok().flatten()).map(|t| t as i64 as u64)
            })
        };
        let mine = surpd::shm::random_u64();
        for _ in 0..3 {
            if let Some(t) = read().map_err(to_py_err)? {
                return Ok(t);
            }
            let mut b = Vec::with_capacity(10);
            v::encode_int(&mut b, mine as i64 as i128);
            let req = Request::add(k, &b, 0);
            let r = self.call(py, req)?;
            if self.core.outcome(&req, r).map_err(to_py_err)?.status == status::OK {
                return Ok(mine);
            }
            // Another caller made it first: read theirs (or, invalidated again, make one).
        }
        // Invalidated under us again and again: a token no key holds (the value is stale
        // from the start, as it would be after the next invalidation anyway).
        Ok(mine)
    }

    /// `value` encoded as a whole value stored under a key, after the tag header `head`.
    fn encode_tagged(
        &self,
        py: Python<'_>,
        head: Vec<u8>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<u8>> {
        let buf = self.encode_stored(py, value)?;
        if head.is_empty() {
            return Ok(buf);
        }
        let mut out = head;
        out.extend_from_slice(&buf);
        let max = self.core.max_value();
        if out.len() as u64 > max {
            return Err(errors::ValueTooLarge::new_err(format!(
                "value is {} bytes encoded with its tags; this segment's max_value is {max} \
                 bytes",
                out.len()
            )));
        }
        Ok(out)
    }

    /// Replace an encoded whole value of at least `compress_min` bytes by its zstd frame
    /// (a COMPRESSED value) when that saves at least a tenth. Ints and sorted sets stay as
    /// they are: the daemon counts and ranks in them.
    fn compress(&self, py: Python<'_>, buf: &mut Vec<u8>) {
        if self.compress_min == 0
            || buf.len() < self.compress_min
            || !matches!(buf[0], v::STR | v::BYTES | v::PICKLE | v::LIST | v::TUPLE | v::DICT)
        {
            return;
        }
        let raw: &[u8] = buf;
        if let Some(c) = py.allow_threads(|| v::compress(raw, COMPRESS_LEVEL)) {
            if c.len() * 10 <= buf.len() * 9 {
                *buf = c;
            }
        }
    }

    fn encode_value(&self, value: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
        let mut buf = Vec::with_capacity(64);
        self.encode_into(value, &mut buf)?;
        Ok(buf)
    }

    /// UnsafeValue if this client refuses pickles and `value`, encoded as `buf`, holds one.
    fn refuse_pickle(&self, value: &Bound<'_, PyAny>, buf: &[u8]) -> PyResult<()> {
        if !self.pickle && v::has_pickle(buf) {
            return Err(errors::UnsafeValue::new_err(format!(
                "a value of type {} would be pickled, and this client refuses pickles \
                 (pickle=False): store None, bool, int, float, str, bytes, list, tuple or dict",
                pickled_type(value)
            )));
        }
        Ok(())
    }

    /// Encode `value` into `buf`; ValueTooLarge over the segment's max_value.
    fn encode_into(&self, value: &Bound<'_, PyAny>, buf: &mut Vec<u8>) -> PyResult<()> {
        encode(value, buf, 0)?;
        self.refuse_pickle(value, buf)?;
        let max = self.core.max_value();
        if buf.len() as u64 > max {
            return Err(errors::ValueTooLarge::new_err(format!(
                "value is {} bytes encoded; this segment's max_value is {max} bytes",
                buf.len()
            )));
        }
        Ok(())
    }

    /// Turn a reply into the Python result of `op`, or raise: the error statuses through
    /// the core's one mapping (`Client::outcome`), then what OK and NOT_DONE mean per op.
    fn shape(&self, py: Python<'_>, op: u8, key: &[u8], r: Reply) -> PyResult<PyObject> {
        let r = self.core.outcome(&Request::named(op, key), r).map_err(to_py_err)?;
        let int = |n: u64| Ok(n.into_pyobject(py)?.into_any().unbind());
        match (r.status, op) {
            (status::OK, op::INCR) => {
                let n = ((r.aux as i128) << 64) | r.value as i128;
                Ok(n.into_pyobject(py)?.into_any().unbind())
            }
            (status::NOT_DONE, op::INCR) => {
                Err(PyKeyError::new_err(PyBytes::new(py, key).unbind()))
            }
            (status::NOT_DONE, op::UPDATE) => Err(PyKeyError::new_err("no such record")),
            (status::NOT_DONE, _) => Ok(PyBool::new(py, false).to_owned().into_any().unbind()),
            (status::OK, op::APPEND | op::ZADD | op::ZREM | op::INSERT | op::UPDATE) => {
                int(r.value)
            }
            (status::OK, op::REMOVE) => {
                Ok(PyBool::new(py, r.value == 1).to_owned().into_any().unbind())
            }
            (status::OK, op::MERGE) => Ok(py.None()),
            _ => Ok(PyBool::new(py, true).to_owned().into_any().unbind()),
        }
    }

    /// Run `f` over the entries of the sorted set at `key` (empty if absent), read from
    /// the mapping under a pin. TypeError if the key holds another type.
    fn with_zset<R>(
        &self,
        key: &Bound<'_, PyAny>,
        mut f: impl FnMut(&[v::ZEntry<'_>]) -> PyResult<R>,
    ) -> PyResult<R> {
        self.with_key(key, |k| {
            let r = self.core.read(k, |rec| {
                let Some(rec) = rec else { return f(&[]) };
                if rec.value.first() != Some(&v::ZSET) {
                    return Err(PyTypeError::new_err(format!(
                        "key {} holds a {}, not a sorted set",
                        key_repr(k),
                        v::type_name(rec.value)
                    )));
                }
                let entries = v::zset_entries(rec.value).map_err(|e| corrupt(&e.to_string()))?;
                f(&entries)
            });
            r.map_err(to_py_err)?
        })
    }

    fn zitems<'py>(
        py: Python<'py>,
        entries: &[&v::ZEntry<'_>],
        withscores: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for z in entries {
            if withscores {
                out.append((member_obj(py, z), z.score))?;
            } else {
                out.append(member_obj(py, z))?;
            }
        }
        Ok(out)
    }

    /// get_or_set in the refresh window of `k` (its value `v` stale or about to be): one
    /// caller takes the refresh lease (on a companion key: the value stays readable
    /// meanwhile) and recomputes; the others return `v` at once.
    fn refresh<'py>(
        &self,
        py: Python<'py>,
        k: &[u8],
        v: Bound<'py, PyAny>,
        job: &Compute<'_, 'py>,
        lease_timeout: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let rk = [k, REFRESH_SUFFIX].concat();
        if rk.len() > surpd::layout::MAX_KEY_LEN {
            return Ok(v); // no room for the companion key: recomputed once it expires
        }
        let token = surpd::shm::random_u64();
        let req = Request::lease(&rk, (lease_timeout * 1000.0).ceil() as u64, token);
        let r = self.call(py, req)?;
        match self.core.outcome(&req, r) {
            Ok(r) if r.value == 1 => {}
            // Another caller refreshes, or a tiered daemon (no leases): the value as it is.
            Ok(_) | Err(surpd::Error::NotSupported(_)) => return Ok(v),
            Err(e) => return Err(to_py_err(e)),
        }
        let computed = self.compute_and_set(py, k, job);
        // Given back whatever happened: a failed refresh lets the next caller try.
        let _ = self.call(py, Request::unlease(&rk, token));
        computed
    }

    /// What a lease holder does: call `default`, store its value under `k`, return it.
    fn compute_and_set<'py>(
        &self,
        py: Python<'py>,
        k: &[u8],
        job: &Compute<'_, 'py>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let head = self.tag_head(py, job.tags)?;
        let v = job.default.call0()?;
        let buf = self.encode_tagged(py, head, &v)?;
        let r = self.call(py, Request::set(k, &buf, job.ttl))?;
        self.shape(py, op::SET, k, r)?;
        Ok(v)
    }

    fn get_one<'py>(&self, py: Python<'py>, key: &[u8]) -> PyResult<Option<Bound<'py, PyAny>>> {
        Ok(self.get_one_exp(py, key)?.map(|(v, _)| v))
    }

    /// The value of `key` and its record's expiry (Unix ms, 0 for none), read at once.
    fn get_one_exp<'py>(
        &self,
        py: Python<'py>,
        key: &[u8],
    ) -> PyResult<Option<(Bound<'py, PyAny>, u64)>> {
        let mut fetched = 0;
        let mut answer = None;
        loop {
            let pin = self.core.pin().map_err(to_py_err)?;
            match self.core.get(&pin, key) {
                Lookup::Hit(rec) => {
                    let r = self.decode(py, rec.value);
                    if pin.confirm(&rec) {
                        return r.map(|v| Some((v, rec.expires_ms)));
                    }
                    break;
                }
                Lookup::Miss => return Ok(None),
                Lookup::Unknown => {
                    drop(pin);
                    // Tiered mode: what the read-through stored, though an invalidation
                    // may have unlinked it since; else read it through (the GIL released
                    // for the round trip).
                    if let Some(v) = answer.take().and_then(|a| self.core.fetched(key, a)) {
                        return v
                            .rec(key)
                            .map(|r| Ok((self.decode(py, r.value)?, r.expires_ms)))
                            .transpose();
                    }
                    let core = &self.core;
                    answer = py
                        .allow_threads(|| core.read_through(&[key], &mut fetched))
                        .map_err(to_py_err)?;
                }
            }
        }
        // A boxless read that met the writer: read again (what was decoded is discarded).
        let r = self
            .core
            .read(key, |rec| rec.map(|rec| Ok((self.decode(py, rec.value)?, rec.expires_ms))));
        r.map_err(to_py_err)?.transpose()
    }
}

#[pymethods]
impl Client {
    /// Attach to the store in `path` (the daemon's data directory). `timeout` bounds every
    /// wait for the daemon, in seconds.
    #[new]
    #[pyo3(signature = (path, timeout = 5.0, pickle = true, compress_min = 4096))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        timeout: f64,
        pickle: bool,
        compress_min: usize,
    ) -> PyResult<Self> {
        if !(timeout.is_finite() && timeout > 0.0 && timeout <= MAX_TIMEOUT_S) {
            return Err(PyValueError::new_err(format!(
                "timeout must be positive seconds, at most {MAX_TIMEOUT_S:.0} (a year), got \
                 {timeout}"
            )));
        }
        let core = py
            .allow_threads(|| Core::connect(&path, Duration::from_secs_f64(timeout)))
            .map_err(to_py_err)?;
        Ok(Client { core: Arc::new(core), ns: 0, pickle, compress_min })
    }

    /// A client of namespace `name` sharing this one's connection (its queue in the ring):
    /// its keys, `clear()`, quotas and counts are the namespace's alone. With `max_items` or
    /// `max_bytes` (0 or None: no limit), the daemon keeps the namespace under them by
    /// evicting its oldest entries. Names: 1 to 24 printable ASCII characters; a store holds
    /// 31 namespaces besides the default one.
    #[pyo3(signature = (name, max_items = None, max_bytes = None))]
    fn namespace(
        &self,
        py: Python<'_>,
        name: &str,
        max_items: Option<u64>,
        max_bytes: Option<u64>,
    ) -> PyResult<Client> {
        if !surpd::namespace::valid_name(name.as_bytes()) {
            return Err(PyValueError::new_err(format!(
                "namespace name {name:?} must be 1 to {} printable ASCII characters (no spaces)",
                surpd::layout::NS_NAME_MAX
            )));
        }
        let quota = (max_items.is_some() || max_bytes.is_some())
            .then(|| (max_items.unwrap_or(0), max_bytes.unwrap_or(0)));
        let mut buf = Vec::new();
        let req = Request::ns_open(name.as_bytes(), quota, &mut buf);
        let r = self.call(py, req)?;
        if r.status == status::SEGMENT_FULL {
            return Err(errors::SegmentFull::new_err(format!(
                "no room for namespace {name:?}: this store holds {} namespaces besides the \
                 default one, all taken",
                r.value
            )));
        }
        let r = self.core.outcome(&req, r).map_err(to_py_err)?;
        Ok(Client {
            core: self.core.clone(),
            ns: r.value as usize,
            pickle: self.pickle,
            compress_min: self.compress_min,
        })
    }

    /// This client's namespace ("" for the default one).
    #[getter]
    fn namespace_name(&self) -> String {
        let n = self.core.seg.ns_name(self.ns).unwrap_or_default();
        String::from_utf8_lossy(&n).into_owned()
    }

    /// Counts of this client's namespace: items and bytes live, quotas (0: none), sets,
    /// evictions by its quotas, clears.
    fn namespace_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        namespace_dict(py, &self.core, self.ns)
    }

    /// Live entries of this namespace (read from the mapping: no IPC).
    fn namespace_items(&self) -> u64 {
        self.core.seg.ns(self.ns).items.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Remove the `count` oldest entries of this namespace (oldest by their last write);
    /// returns how many were removed. Django's MAX_ENTRIES culling.
    fn cull(&self, py: Python<'_>, count: u64) -> PyResult<u64> {
        let before = self.namespace_items();
        let req = Request::ns_cull(self.ns as u64, before.saturating_sub(count));
        let r = self.call(py, req)?;
        let remaining = self.core.outcome(&req, r).map_err(to_py_err)?.value;
        Ok(before.saturating_sub(remaining))
    }

    /// This process's box in the request ring (None without one): for tests and tools.
    #[getter]
    fn _boxno(&self) -> Option<u32> {
        self.core.has_box().then(|| self.core.boxno())
    }

    /// The data directory.
    #[getter]
    fn path(&self) -> PathBuf {
        self.core.dir.clone()
    }

    /// Largest encoded value this store accepts, in bytes.
    #[getter]
    fn max_value(&self) -> u64 {
        self.core.max_value()
    }

    /// The value stored under `key`, or `default`. Decoded from shared memory, no IPC.
    #[pyo3(signature = (key, default = None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let got = self.with_key(key, |k| self.get_one(py, k))?;
        Ok(got.or(default).unwrap_or_else(|| py.None().into_bound(py)))
    }

    /// `(value, ttl)`: the value of `key` and the seconds it has left (None: it never
    /// expires), read together; `(default, None)` on a miss.
    #[pyo3(signature = (key, default = None))]
    fn get_with_ttl<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyAny>, Option<f64>)> {
        match self.with_key(key, |k| self.get_one_exp(py, k))? {
            Some((v, 0)) => Ok((v, None)),
            Some((v, expires)) => {
                let left = expires.saturating_sub(surpd::shm::now_ms());
                Ok((v, Some(left as f64 / 1000.0)))
            }
            None => Ok((default.unwrap_or_else(|| py.None().into_bound(py)), None)),
        }
    }

    /// A dict of the keys that are present, with their values.
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        let now = surpd::shm::now_ms();
        let mut unknown: Vec<(Bound<'py, PyAny>, Vec<u8>)> = Vec::new();
        {
            let pin = self.core.pin().map_err(to_py_err)?;
            for key in keys.try_iter()? {
                let key = key?;
                self.with_key(&key, |k| {
                    match self.core.lookup(&pin, k, now) {
                        Lookup::Hit(rec) => {
                            let value = self.decode(py, rec.value);
                            let value = if pin.confirm(&rec) {
                                value.map(Some)
                            } else {
                                self.get_one(py, k)
                            };
                            if let Some(value) = value? {
                                out.set_item(&key, value)?;
                            }
                        }
                        Lookup::Miss => {}
                        Lookup::Unknown => unknown.push((key.clone(), k.to_vec())),
                    }
                    Ok(())
                })?;
            }
        }
        if !unknown.is_empty() {
            // Tiered mode: every key without a current local copy in one read-through.
            let ks: Vec<&[u8]> = unknown.iter().map(|(_, k)| &k[..]).collect();
            let core = &self.core;
            py.allow_threads(|| core.fetch(&ks)).map_err(to_py_err)?;
            for (key, k) in &unknown {
                if let Some(value) = self.get_one(py, k)? {
                    out.set_item(key, value)?;
                }
            }
        }
        Ok(out)
    }

    /// Whether `key` holds an unexpired value.
    fn has_key(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.with_key(key, |k| self.core.read(k, |rec| rec.is_some()).map_err(to_py_err))
    }

    fn __contains__(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.has_key(key)
    }

    /// A read-only, zero-copy memoryview of a bytes value (None if absent). The record stays
    /// in place until the view is released (`with c.view(k) as m:` or `m.release()`); a
    /// view held for long keeps the daemon from reusing space retired after it was made.
    /// A value stored compressed (`compress_min`) is decompressed: its view is of a copy.
    fn view<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let exporter = self.with_key(key, |k| {
            let (mut fetched, mut answer) = (0, None);
            for _ in 0..1000 {
                let pin = self.core.pin().map_err(to_py_err)?;
                let rec = match self.core.get(&pin, k) {
                    Lookup::Hit(rec) => rec,
                    Lookup::Miss => return Ok(None),
                    Lookup::Unknown => {
                        // Tiered mode: read it through; a value unlinked again before we
                        // look is viewed as a copy (nothing holds it in place).
                        drop(pin);
                        if let Some(f) = answer.take().and_then(|a| self.core.fetched(k, a)) {
                            let Some(rec) = f.rec(k) else { return Ok(None) };
                            let plain =
                                v::plain(rec.value, self.core.max_value()).map_err(to_py_err)?;
                            let data = view_bytes(k, &plain)?;
                            return Ok(Some(Exported::Copy(
                                PyBytes::new(py, data).into_any().unbind(),
                            )));
                        }
                        let core = &self.core;
                        answer = py
                            .allow_threads(|| core.read_through(&[k], &mut fetched))
                            .map_err(to_py_err)?;
                        continue;
                    }
                };
                if rec.value.first() == Some(&v::COMPRESSED) {
                    // Stored compressed: viewed as a copy of the bytes it stands for.
                    let plain = v::plain(rec.value, self.core.max_value());
                    if !pin.confirm(&rec) {
                        continue;
                    }
                    let plain = plain.map_err(to_py_err)?;
                    let data = view_bytes(k, &plain)?;
                    return Ok(Some(Exported::Copy(PyBytes::new(py, data).into_any().unbind())));
                }
                if rec.value.first() != Some(&v::BYTES) {
                    if !pin.confirm(&rec) {
                        continue;
                    }
                    return Err(PyTypeError::new_err(format!(
                        "view() needs a bytes value; key {} holds a {}",
                        key_repr(k),
                        v::type_name(rec.value)
                    )));
                }
                let mut r = v::Reader::new(rec.value);
                r.pos = 1;
                let data = match r.lbytes() {
                    Ok(d) => d,
                    Err(_) if !pin.confirm(&rec) => continue,
                    Err(e) => return Err(corrupt(&e.to_string())),
                };
                let Some(epoch) = self.core.pin_view(&pin) else {
                    // No client box (every one is taken): nothing can hold the record in
                    // place, so the view is of a copy, confirmed intact.
                    let copy = PyBytes::new(py, data);
                    if !pin.confirm(&rec) {
                        continue;
                    }
                    return Ok(Some(Exported::Copy(copy.into_any().unbind())));
                };
                // `data` borrows the mapping itself (bounds-checked by Segment::record); the
                // view's pin is registered before the read pin drops.
                return Ok(Some(Exported::View(View {
                    core: self.core.clone(),
                    epoch,
                    ptr: data.as_ptr() as usize,
                    len: data.len(),
                })));
            }
            Ok(None)
        })?;
        let obj = match exporter {
            None => return Ok(None),
            Some(Exported::Copy(b)) => b.into_bound(py),
            Some(Exported::View(x)) => Bound::new(py, x)?.into_any(),
        };
        let mv = unsafe {
            // SAFETY: PyMemoryView_FromObject on an object implementing the buffer protocol
            // (a View or bytes); returns a new reference or NULL with an exception set.
            Bound::from_owned_ptr_or_err(py, pyo3::ffi::PyMemoryView_FromObject(obj.as_ptr()))?
        };
        Ok(Some(mv))
    }

    /// Store `value` under `key`. `ttl` in seconds (None = no expiry). With wait=False,
    /// returns a ticket at once (pass it to wait()); otherwise waits for the daemon's ack.
    /// `tags` (a list of str or bytes names): `invalidate_tags` with any of them makes the
    /// value a miss from then on.
    #[pyo3(signature = (key, value, ttl = None, wait = true, tags = None))]
    fn set(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<f64>,
        wait: bool,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyObject> {
        let head = self.tag_head(py, tags)?;
        let buf = self.encode_tagged(py, head, value)?;
        let ttl = ttl_ms(ttl)?;
        self.with_key(key, |k| self.submit(py, Request::set(k, &buf, ttl), wait))
    }

    /// The value of `key`; on a miss, `default` (called, if callable) is stored with `ttl`
    /// and returned. With `lease` (and a callable `default`), one caller across all
    /// processes computes it while the others wait for its result (a stampede lease from the
    /// daemon); a holder that dies hands the lease on at once, one that takes longer than
    /// `lease_timeout` seconds loses it. Waiting longer than `lease_timeout` raises Timeout.
    /// If `default` raises (or its value cannot be stored), the lease is given back and the
    /// exception propagates. A tiered daemon keeps no leases: each caller computes on a miss
    /// and the first one stored wins.
    ///
    /// `stale_ttl` keeps the value `stale_ttl` seconds past `ttl`: in that window one caller
    /// recomputes it (a refresh lease) while every other caller gets the stale value at
    /// once. `early` starts that refresh `early` seconds before `ttl` runs out, while the
    /// value is still fresh (memcached's recache). Both need a `ttl`. A tiered daemon serves
    /// the value until its `ttl` plus `stale_ttl` runs out, then computes as on a miss.
    #[pyo3(signature = (
        key, default, ttl = None, lease = true, lease_timeout = 30.0, stale_ttl = None, early = 0.0,
        tags = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn get_or_set<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: &Bound<'py, PyAny>,
        ttl: Option<f64>,
        lease: bool,
        lease_timeout: f64,
        stale_ttl: Option<f64>,
        early: f64,
        tags: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if !(lease_timeout.is_finite() && lease_timeout > 0.0 && lease_timeout <= MAX_TIMEOUT_S) {
            return Err(PyValueError::new_err(format!(
                "lease_timeout must be positive seconds, got {lease_timeout}"
            )));
        }
        let fresh_ttl = ttl_ms(ttl)?;
        let window = RefreshWindow::new(fresh_ttl, stale_ttl, early)?;
        let ttl = fresh_ttl + window.stale_ms;
        let job = Compute { default, ttl, tags };
        self.with_key(key, |k| {
            if let Some((v, expires)) = self.get_one_exp(py, k)? {
                if lease && default.is_callable() && window.due(expires) {
                    return self.refresh(py, k, v, &job, lease_timeout);
                }
                return Ok(v);
            }
            // Without a lease: compute, store unless another caller stored first, return
            // what the key holds.
            let unleased = || -> PyResult<Bound<'py, PyAny>> {
                let head = self.tag_head(py, tags)?;
                let v = if default.is_callable() { default.call0()? } else { default.clone() };
                let buf = self.encode_tagged(py, head, &v)?;
                self.call(py, Request::add(k, &buf, ttl))?;
                Ok(self.get_one(py, k)?.unwrap_or(v))
            };
            if !lease || !default.is_callable() {
                return unleased();
            }
            let ms = (lease_timeout * 1000.0).ceil() as u64;
            let deadline = std::time::Instant::now() + Duration::from_millis(ms);
            let mut pause = Duration::from_micros(200);
            // This call's own token: another thread of this process is another caller.
            let token = surpd::shm::random_u64();
            loop {
                let req = Request::lease(k, ms, token);
                let r = self.call(py, req)?;
                let r = match self.core.outcome(&req, r) {
                    Ok(r) => r,
                    // A tiered daemon keeps no leases (the upstream is the key's home).
                    Err(surpd::Error::NotSupported(_)) => return unleased(),
                    Err(e) => return Err(to_py_err(e)),
                };
                match r.value {
                    1 => {
                        // Ours: compute, store (which replaces the lease), return. Anything
                        // failing on the way gives the lease back (a set that did reach the
                        // daemon is applied first: the unlease then finds no lease).
                        let give_back = |e: PyErr| {
                            let _ = self.call(py, Request::unlease(k, token));
                            e
                        };
                        return self.compute_and_set(py, k, &job).map_err(give_back);
                    }
                    0 => {
                        if let Some(v) = self.get_one(py, k)? {
                            return Ok(v);
                        }
                    }
                    _ => {
                        // Held by a live client: wait for its value (or for the lease to be
                        // handed on), looking again with a growing pause.
                        if std::time::Instant::now() >= deadline {
                            return Err(errors::Timeout::new_err(format!(
                                "get_or_set({}): another process has been computing it for \
                                 longer than lease_timeout ({lease_timeout} s)",
                                key_repr(k)
                            )));
                        }
                        py.allow_threads(|| std::thread::sleep(pause));
                        pause = (pause * 2).min(Duration::from_millis(20));
                        if let Some(v) = self.get_one(py, k)? {
                            return Ok(v);
                        }
                    }
                }
            }
        })
    }

    /// One try for the stampede lease on `key` (what get_or_set waits on, for callers that
    /// wait their own way, such as an event loop) for the caller `token` (any int up to
    /// 2**64 - 1, its own: random per computation): 1 granted (compute, then set the key,
    /// or unlease it), 2 held by another live caller (look again later), 0 the key holds a
    /// value (read it). Never waits for the other holder.
    #[pyo3(signature = (key, token, lease_timeout = 30.0))]
    fn try_lease(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        token: u64,
        lease_timeout: f64,
    ) -> PyResult<u64> {
        if !(lease_timeout.is_finite() && lease_timeout > 0.0 && lease_timeout <= MAX_TIMEOUT_S) {
            return Err(PyValueError::new_err(format!(
                "lease_timeout must be positive seconds, got {lease_timeout}"
            )));
        }
        let ms = (lease_timeout * 1000.0).ceil() as u64;
        self.with_key(key, |k| {
            let req = Request::lease(k, ms, token);
            let r = self.call(py, req)?;
            Ok(self.core.outcome(&req, r).map_err(to_py_err)?.value)
        })
    }

    /// Give back the lease on `key` that `token` holds (its computation failed). True if it
    /// held it.
    fn unlease(&self, py: Python<'_>, key: &Bound<'_, PyAny>, token: u64) -> PyResult<bool> {
        self.with_key(key, |k| {
            let req = Request::unlease(k, token);
            let r = self.call(py, req)?;
            Ok(self.core.outcome(&req, r).map_err(to_py_err)?.value == 1)
        })
    }

    /// Store only if `key` is absent (or expired, or invalidated by a tag). True if stored.
    #[pyo3(signature = (key, value, ttl = None, wait = true, tags = None))]
    fn add(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<f64>,
        wait: bool,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyObject> {
        let head = self.tag_head(py, tags)?;
        let buf = self.encode_tagged(py, head, value)?;
        let ttl = ttl_ms(ttl)?;
        self.with_key(key, |k| self.submit(py, Request::add(k, &buf, ttl), wait))
    }

    /// The tag header for `tags`, with each tag's token as it is now (surpdb.aget_or_set
    /// reads it before it awaits the computation, as get_or_set does): pass it to
    /// `_set_with_head`. Empty for no tags.
    #[pyo3(signature = (tags = None))]
    fn _tag_head<'py>(
        &self,
        py: Python<'py>,
        tags: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.tag_head(py, tags)?))
    }

    /// Store `value` under `key` with a tag header from `_tag_head` (add: only if absent).
    /// True if stored. A value whose tags were invalidated since the header was read is
    /// stored already stale.
    #[pyo3(signature = (key, value, head, ttl = None, add = false))]
    fn _set_with_head(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        head: &[u8],
        ttl: Option<f64>,
        add: bool,
    ) -> PyResult<PyObject> {
        let whole = |h: &[u8]| matches!(v::split_tagged(h), Ok((t, rest)) if t.len() == h.len() && rest.is_empty());
        if !head.is_empty() && !whole(head) {
            return Err(PyValueError::new_err("not a tag header from _tag_head"));
        }
        let buf = self.encode_tagged(py, head.to_vec(), value)?;
        let ttl = ttl_ms(ttl)?;
        self.with_key(key, |k| {
            let r = if add { Request::add(k, &buf, ttl) } else { Request::set(k, &buf, ttl) };
            self.submit(py, r, true)
        })
    }

    /// Delete `key`. True if it was present.
    #[pyo3(signature = (key, wait = true))]
    fn delete(&self, py: Python<'_>, key: &Bound<'_, PyAny>, wait: bool) -> PyResult<PyObject> {
        self.with_key(key, |k| self.submit(py, Request::delete(k), wait))
    }

    /// Store every item of `mapping` (pipelined: all requests are queued, then awaited).
    /// Returns the keys that could not be stored (empty when all were).
    #[pyo3(signature = (mapping, ttl = None, tags = None))]
    fn set_many<'py>(
        &self,
        py: Python<'py>,
        mapping: &Bound<'py, PyAny>,
        ttl: Option<f64>,
        tags: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Vec<PyObject>> {
        let ttl = ttl_ms(ttl)?;
        let head = self.tag_head(py, tags)?;
        let items = mapping.call_method0("items")?;
        let mut keys = Vec::new();
        let mut pipe = Pipeline::new(&self.core);
        let mut buf = Vec::with_capacity(64);
        for item in items.try_iter()? {
            let item = item?;
            let (key, value): (Bound<'py, PyAny>, Bound<'py, PyAny>) = item.extract()?;
            buf.clear();
            self.encode_into(&value, &mut buf)?;
            self.compress(py, &mut buf);
            if !head.is_empty() {
                buf.splice(0..0, head.iter().copied());
            }
            self.with_key(&key, |k| {
                if pipe.full() {
                    py.allow_threads(|| pipe.make_room());
                }
                pipe.push(&Request::set(k, &buf, ttl));
                Ok(())
            })?;
            keys.push(key);
        }
        let replies = py.allow_threads(|| pipe.finish());
        let mut failed = Vec::new();
        for (key, r) in keys.into_iter().zip(replies) {
            if r.map_err(to_py_err)?.status != status::OK {
                failed.push(key.unbind());
            }
        }
        Ok(failed)
    }

    /// Delete every key in `keys` (pipelined). Returns how many were present.
    fn delete_many(&self, py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<u64> {
        let mut pipe = Pipeline::new(&self.core);
        for key in keys.try_iter()? {
            let key = key?;
            self.with_key(&key, |k| {
                if pipe.full() {
                    py.allow_threads(|| pipe.make_room());
                }
                pipe.push(&Request::delete(k));
                Ok(())
            })?;
        }
        let mut n = 0;
        for r in py.allow_threads(|| pipe.finish()) {
            if r.map_err(to_py_err)?.status == status::OK {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Delete every key of this namespace that starts with `prefix` (str or bytes, not
    /// empty: `clear()` empties a namespace), in O(1) whatever their number: readers miss
    /// them from now on, the sweep and the cleaner reclaim their space. A tiered daemon
    /// deletes them upstream (a scan there) and drops every host's copies.
    fn delete_prefix(&self, py: Python<'_>, prefix: &Bound<'_, PyAny>) -> PyResult<()> {
        self.with_key(prefix, |k| {
            if surpd::namespace::user_key(k).is_empty() {
                return Err(PyValueError::new_err(
                    "delete_prefix needs a prefix; clear() empties a namespace",
                ));
            }
            let req = Request::delete_prefix(k);
            let r = self.call(py, req)?;
            self.core.outcome(&req, r).map_err(to_py_err)?;
            Ok(())
        })
    }

    /// Invalidate every value stored with any of `tags` (a list of str or bytes names), in
    /// O(1) whatever their number: each tag's key is deleted, so the values stored with its
    /// token read as misses from now on (the sweep and the cleaner reclaim their space).
    /// Returns how many of the tags were in use.
    fn invalidate_tags(&self, py: Python<'_>, tags: &Bound<'_, PyAny>) -> PyResult<u64> {
        let keys = self.tag_keys(tags)?;
        let mut pipe = Pipeline::new(&self.core);
        for (_, k) in &keys {
            if pipe.full() {
                py.allow_threads(|| pipe.make_room());
            }
            pipe.push(&Request::delete(k));
        }
        let mut n = 0;
        for r in py.allow_threads(|| pipe.finish()) {
            if r.map_err(to_py_err)?.status == status::OK {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Atomically add `delta` to an integer value and return the result. A missing key
    /// starts from `default` (like Redis INCR from 0); with default=None it raises KeyError.
    /// A value that is not an int raises TypeError; the TTL of the key is kept.
    #[pyo3(signature = (key, delta = 1, default = Some(0)))]
    fn incr(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        delta: i64,
        default: Option<i64>,
    ) -> PyResult<PyObject> {
        self.with_key(key, |k| {
            let r = self.call(py, Request::incr(k, delta, default))?;
            self.shape(py, op::INCR, k, r)
        })
    }

    /// Atomically subtract `delta` (see incr).
    #[pyo3(signature = (key, delta = 1, default = Some(0)))]
    fn decr(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        delta: i64,
        default: Option<i64>,
    ) -> PyResult<PyObject> {
        let neg =
            delta.checked_neg().ok_or_else(|| PyOverflowError::new_err("delta out of range"))?;
        self.incr(py, key, neg, default)
    }

    /// Set a new TTL (None = never expire) on an existing key. True if the key exists.
    #[pyo3(signature = (key, ttl = None))]
    fn touch(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        ttl: Option<f64>,
    ) -> PyResult<PyObject> {
        let ttl = ttl_ms(ttl)?;
        self.with_key(key, |k| {
            let r = self.call(py, Request::touch(k, ttl))?;
            self.shape(py, op::TOUCH, k, r)
        })
    }

    /// Atomically append `item` to the list stored at `key` (created if absent). With
    /// `max_len`, keep only the newest `max_len` items. Returns the new length. TypeError if
    /// the key holds something other than a list (nothing changes).
    #[pyo3(signature = (key, item, max_len = None))]
    fn append(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        item: &Bound<'_, PyAny>,
        max_len: Option<u64>,
    ) -> PyResult<PyObject> {
        if max_len == Some(0) {
            return Err(PyValueError::new_err("max_len must be at least 1"));
        }
        let buf = self.encode_value(item)?;
        self.with_key(key, |k| {
            let r = self.call(py, Request::append(k, &buf, max_len.unwrap_or(0)))?;
            self.shape(py, op::APPEND, k, r)
        })
    }

    /// Atomically update the dict stored at `key` with `mapping` (like dict.update; created
    /// if absent). With deep=True, nested dicts are merged instead of replaced.
    #[pyo3(signature = (key, mapping, deep = false))]
    fn merge(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        mapping: &Bound<'_, PyDict>,
        deep: bool,
    ) -> PyResult<PyObject> {
        let buf = self.encode_value(mapping.as_any())?;
        if buf.first() != Some(&v::DICT) {
            return Err(PyTypeError::new_err("merge() needs a plain dict"));
        }
        self.with_key(key, |k| {
            let r = self.call(py, Request::merge(k, &buf, deep))?;
            self.shape(py, op::MERGE, k, r)
        })
    }

    /// (value, version) of `key`; version changes on every write of the key and is 0 when
    /// the key is absent (then value is `default`). Pass the version to cas().
    #[pyo3(signature = (key, default = None))]
    fn gets<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyAny>, u64)> {
        self.with_key(key, |k| {
            let r = self.core.read(k, |rec| match rec {
                Some(rec) => Ok((self.decode(py, rec.value)?, rec.version)),
                None => Ok((default.clone().unwrap_or_else(|| py.None().into_bound(py)), 0)),
            });
            r.map_err(to_py_err)?
        })
    }

    /// Store `value` only if the key's version is still `version` (from gets(); 0: only if
    /// absent). True if stored. `tags` as for `set` (a value stored by cas has only these).
    #[pyo3(signature = (key, value, version, ttl = None, tags = None))]
    fn cas(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        version: u64,
        ttl: Option<f64>,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyObject> {
        let ttl = ttl_ms(ttl)?;
        let head = self.tag_head(py, tags)?;
        let mut buf = version.to_le_bytes().to_vec();
        buf.extend_from_slice(&self.encode_tagged(py, head, value)?);
        self.with_key(key, |k| {
            let r = self.call(py, Request::cas(k, &buf, ttl))?;
            self.shape(py, op::CAS, k, r)
        })
    }

    /// Add members with scores ({member: score}) to the sorted set at `key`, updating the
    /// score of members already there. With `max_len`, keep only the `max_len` highest
    /// scores. Returns how many members were new.
    #[pyo3(signature = (key, mapping, max_len = None))]
    fn zadd(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        mapping: &Bound<'_, PyDict>,
        max_len: Option<u64>,
    ) -> PyResult<PyObject> {
        if max_len == Some(0) {
            return Err(PyValueError::new_err("max_len must be at least 1"));
        }
        let mut owned: Vec<(Vec<u8>, bool, f64)> = Vec::with_capacity(mapping.len());
        for (m, score) in mapping.iter() {
            let (b, is_str) = member_bytes(&m)?;
            let score: f64 = score.extract()?;
            if score.is_nan() {
                return Err(PyValueError::new_err("a sorted set score cannot be NaN"));
            }
            owned.push((b.to_vec(), is_str, score));
        }
        let entries: Vec<v::ZEntry<'_>> = owned
            .iter()
            .map(|(m, s, sc)| v::ZEntry { score: *sc, member: m, is_str: *s })
            .collect();
        let mut buf = Vec::new();
        v::encode_zset(&mut buf, &entries);
        if buf.len() as u64 > self.core.max_value() {
            return Err(errors::ValueTooLarge::new_err(format!(
                "zadd request is {} bytes encoded; this segment's max_value is {} bytes",
                buf.len(),
                self.core.max_value()
            )));
        }
        self.with_key(key, |k| {
            let r = self.call(py, Request::zadd(k, &buf, max_len.unwrap_or(0)))?;
            self.shape(py, op::ZADD, k, r)
        })
    }

    /// Remove members from the sorted set at `key`. Returns how many were there.
    fn zrem(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        members: &Bound<'_, PyAny>,
    ) -> PyResult<PyObject> {
        let mut list = Vec::new();
        for m in members.try_iter()? {
            let m = m?;
            member_bytes(&m)?;
            list.push(m);
        }
        let buf = self.encode_value(PyList::new(py, list)?.as_any())?;
        self.with_key(key, |k| {
            let r = self.call(py, Request::zrem(k, &buf))?;
            self.shape(py, op::ZREM, k, r)
        })
    }

    /// The members of `members` that are not in the sorted set (in the order given).
    fn zmissing<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        members: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let wanted: Vec<Bound<'py, PyAny>> = members.try_iter()?.collect::<PyResult<_>>()?;
        self.with_zset(key, |entries| {
            let present: std::collections::HashSet<&[u8]> =
                entries.iter().map(|e| e.member).collect();
            let out = PyList::empty(py);
            for m in &wanted {
                let (b, _) = member_bytes(m)?;
                if !present.contains(b) {
                    out.append(m)?;
                }
            }
            Ok(out)
        })
    }

    /// Members by rank, `start` and `stop` inclusive, negative from the end (as Redis
    /// ZRANGE). desc=True ranks from the highest score. withscores: (member, score) pairs.
    #[pyo3(signature = (key, start, stop, desc = false, withscores = false))]
    fn zrange<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        start: i64,
        stop: i64,
        desc: bool,
        withscores: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        self.with_zset(key, |entries| {
            Self::zitems(py, &zset::by_rank(entries, start, stop, desc), withscores)
        })
    }

    /// Members with lo <= score <= hi, lowest first (desc=True: highest first).
    #[pyo3(signature = (key, lo, hi, desc = false, withscores = false))]
    fn zrangebyscore<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        lo: f64,
        hi: f64,
        desc: bool,
        withscores: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        self.with_zset(key, |entries| {
            Self::zitems(py, &zset::by_score(entries, lo, hi, desc), withscores)
        })
    }

    /// Score of `member`, or None.
    fn zscore(&self, key: &Bound<'_, PyAny>, member: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
        let (m, _) = member_bytes(member)?;
        self.with_zset(key, |entries| Ok(zset::score(entries, m)))
    }

    /// Rank of `member` (0 = lowest score; desc=True: 0 = highest), or None.
    #[pyo3(signature = (key, member, desc = false))]
    fn zrank(
        &self,
        key: &Bound<'_, PyAny>,
        member: &Bound<'_, PyAny>,
        desc: bool,
    ) -> PyResult<Option<usize>> {
        let (m, _) = member_bytes(member)?;
        self.with_zset(key, |entries| Ok(zset::rank(entries, m, desc)))
    }

    /// Number of members (0 if the key is absent).
    fn zcard(&self, key: &Bound<'_, PyAny>) -> PyResult<usize> {
        self.with_zset(key, |entries| Ok(entries.len()))
    }

    /// Raw iteration for dump: from index slot `cursor`, up to `count` unexpired items as
    /// (key bytes, encoded value bytes, expiry in unix ms or 0). Returns (next cursor or 0
    /// at the end, items). Keys changed during a scan may be seen twice or missed.
    #[pyo3(signature = (cursor, count = 1000))]
    fn _scan<'py>(
        &self,
        py: Python<'py>,
        cursor: u64,
        count: usize,
    ) -> PyResult<(u64, Bound<'py, PyList>)> {
        let out = PyList::empty(py);
        let mut err = None;
        let ns = self.ns;
        let next = self
            .core
            .scan(cursor, count, |rec| {
                if surpd::namespace::ns_of(rec.key) != ns {
                    return;
                }
                let key = surpd::namespace::user_key(rec.key);
                let item = (PyBytes::new(py, key), PyBytes::new(py, rec.value), rec.expires_ms);
                if let Err(e) = out.append(item) {
                    err.get_or_insert(e);
                }
            })
            .map_err(to_py_err)?;
        match err {
            Some(e) => Err(e),
            None => Ok((next, out)),
        }
    }

    /// Store an already encoded value (for load); the daemon validates it.
    #[pyo3(signature = (key, encoded, ttl = None))]
    fn _set_raw(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        encoded: &[u8],
        ttl: Option<f64>,
    ) -> PyResult<PyObject> {
        let ttl = ttl_ms(ttl)?;
        if v::validate_stored(encoded, self.core.max_value()).is_err() {
            return Err(PyValueError::new_err("not a valid surpdb value encoding"));
        }
        self.with_key(key, |k| {
            let r = self.call(py, Request::set(k, encoded, ttl))?;
            self.shape(py, op::SET, k, r)
        })
    }

    /// Grow the data segment to `size` bytes (an int, or text such as "1GiB") while serving,
    /// up to the max_size it was created with. The heap takes the new space at the end of
    /// its current lap of writes. Returns the segment's size. A segment does not shrink.
    fn resize(&self, py: Python<'_>, size: &Bound<'_, PyAny>) -> PyResult<u64> {
        let n = if let Ok(n) = size.extract::<u64>() {
            n
        } else if let Ok(t) = size.extract::<String>() {
            surpd::config::parse_size(&t).map_err(to_py_err)?
        } else {
            return Err(PyTypeError::new_err("size must be a number of bytes or text like 1GiB"));
        };
        let req = Request::resize(n);
        let r = self.call(py, req)?;
        let r = self.core.outcome(&req, r).map_err(to_py_err)?;
        if r.status == status::NOT_DONE {
            return Err(PyValueError::new_err(format!(
                "the segment is {} bytes and does not shrink (to make a smaller one: dump, \
                 remove, load)",
                r.value
            )));
        }
        Ok(r.value)
    }

    /// Remove every key of this client's namespace, at once (O(1): the namespace's clear
    /// point moves; the space is reclaimed as the daemon's housekeeping passes).
    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        let r = self.call(py, Request::ns_clear(self.ns as u64))?;
        self.shape(py, op::CLEAR, b"", r).map(|_| ())
    }

    /// Wait until every request queued so far by this client is applied.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, Request::noop()).map(|_| ())
    }

    /// Wait for a ticket from a wait=False call and return that call's result.
    fn wait(&self, py: Python<'_>, ticket: u64) -> PyResult<PyObject> {
        let core = &self.core;
        let timeout = Some(core.timeout);
        let r = py.allow_threads(|| core.wait_ticket(ticket, timeout)).map_err(to_py_err)?;
        let (r, t) = r.expect("a wait with a deadline ends with an answer or an error");
        self.shape_ticket(py, r, t)
    }

    /// The result of a wait=False call if the daemon has answered it (as wait() returns it),
    /// else None: never blocks. An event loop polls, yields, and polls again.
    fn poll(&self, py: Python<'_>, ticket: u64) -> PyResult<Option<PyObject>> {
        let Some((r, t)) = self.core.wait_ticket(ticket, None).map_err(to_py_err)? else {
            return Ok(None);
        };
        self.shape_ticket(py, r, t).map(Some)
    }

    /// Counters and gauges: items, bytes, hits, misses, evictions, expirations, ...
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, val) in self.core.stats() {
            if k == "eviction_policy" {
                d.set_item(k, if val == 1 { "noeviction" } else { "allkeys-lru" })?;
            } else {
                d.set_item(k, val)?;
            }
        }
        Ok(d)
    }

    /// One step of a scan of this namespace's keys: from `cursor` (0 to start), about `count`
    /// index slots' worth; returns (the cursor to pass next, 0 at the end; the keys found,
    /// as str, or bytes when not UTF-8). With `match`, only keys matching the glob (`*`, `?`,
    /// `[...]`, as Redis's SCAN MATCH). Every key present for the whole scan is returned
    /// exactly once, whatever is written meanwhile; keys written during it may or may not be.
    #[pyo3(signature = (cursor = 0, r#match = None, count = 1000))]
    #[pyo3(text_signature = "(self, /, cursor=0, match=None, count=1000)")]
    fn scan<'py>(
        &self,
        py: Python<'py>,
        cursor: u64,
        r#match: Option<&Bound<'py, PyAny>>,
        count: u64,
    ) -> PyResult<(u64, Bound<'py, PyList>)> {
        let pattern = match r#match {
            None => None,
            Some(m) => Some(with_key(m, |p| Ok(p.to_vec()))?),
        };
        let prefix = pattern.as_deref().map(surpd::client::glob_prefix).unwrap_or_default();
        let core = &self.core;
        let (next, keys) = py
            .allow_threads(|| core.scan_keys(self.ns, prefix, cursor, count))
            .map_err(to_py_err)?;
        let out = PyList::empty(py);
        for k in keys {
            if pattern.as_deref().is_some_and(|p| !surpd::client::glob_match(p, &k)) {
                continue;
            }
            match std::str::from_utf8(&k) {
                Ok(s) => out.append(s)?,
                Err(_) => out.append(PyBytes::new(py, &k))?,
            }
        }
        Ok((next, out))
    }

    /// Every key of this namespace (starting with `prefix`, if given): a whole scan.
    #[pyo3(signature = (prefix = None))]
    fn keys<'py>(
        &self,
        py: Python<'py>,
        prefix: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let prefix = match prefix {
            None => Vec::new(),
            Some(p) => with_key(p, |p| Ok(p.to_vec()))?,
        };
        let out = PyList::empty(py);
        let mut cursor = 0;
        loop {
            let core = &self.core;
            let (next, keys) = py
                .allow_threads(|| core.scan_keys(self.ns, &prefix, cursor, 4096))
                .map_err(to_py_err)?;
            for k in keys {
                match std::str::from_utf8(&k) {
                    Ok(s) => out.append(s)?,
                    Err(_) => out.append(PyBytes::new(py, &k))?,
                }
            }
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Every namespace of the store, by name ("" is the default one), with its counts.
    fn namespaces<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for id in 0..surpd::layout::MAX_NAMESPACES {
            if let Some(name) = self.core.seg.ns_name(id) {
                d.set_item(String::from_utf8_lossy(&name), namespace_dict(py, &self.core, id)?)?;
            }
        }
        Ok(d)
    }

    // ------------------------------------------------------------ record store

    /// Store a record (any value; dicts of strings and numbers compress best) and return its
    /// id, an int derived from where it is stored. With wait=False, return a ticket instead.
    #[pyo3(signature = (record, wait = true))]
    fn insert(&self, py: Python<'_>, record: &Bound<'_, PyAny>, wait: bool) -> PyResult<u64> {
        let buf = self.encode_value(record)?;
        let sent = self.encode_record(&buf);
        let req = match &sent {
            Some((model, bytes)) => Request::insert_encoded(model, bytes),
            None => Request::insert(&buf),
        };
        if !wait {
            return self.enqueue(req);
        }
        let r = self.call(py, req)?;
        self.record_reply(r, None)
    }

    /// Store many records (pipelined through the ring); their ids, in order. Raises on the
    /// first failure after every request has been answered, naming how many were stored.
    fn insert_many(&self, py: Python<'_>, records: &Bound<'_, PyAny>) -> PyResult<Vec<u64>> {
        let replies = self.pipeline_records(py, records)?;
        let mut ids: Vec<Option<u64>> = Vec::with_capacity(replies.len());
        let mut first_err: Option<(usize, PyErr)> = None;
        for (i, r) in replies.into_iter().enumerate() {
            match r.map_err(to_py_err).and_then(|r| self.record_reply(r, None)) {
                Ok(id) => ids.push(Some(id)),
                Err(e) => {
                    ids.push(None);
                    if first_err.is_none() {
                        first_err = Some((i, e));
                    }
                }
            }
        }
        let Some((i, e)) = first_err else { return Ok(ids.into_iter().flatten().collect()) };
        // Same exception type, naming the record that failed and how many were stored; the
        // ids of the stored ones are on the exception (`e.ids`, None where one failed), so
        // nothing stored is left without a way to remove it.
        let stored = ids.iter().filter(|x| x.is_some()).count();
        let msg = format!(
            "insert_many: record {i}: {} ({stored} of {} records were stored; their ids are in \
             the exception's `ids`)",
            e.value(py),
            ids.len()
        );
        let errno = e.value(py).getattr("errno").ok().filter(|x| !x.is_none());
        let args = match errno {
            Some(n) => PyTuple::new(py, [n, msg.into_pyobject(py)?.into_any()])?,
            None => PyTuple::new(py, [msg])?.into_any().downcast_into()?,
        };
        let err = match e.get_type(py).call1(args) {
            Ok(x) => {
                x.setattr("ids", ids)?;
                PyErr::from_value(x)
            }
            Err(_) => e,
        };
        Err(err)
    }

    /// The record with id `rid`: a fresh dict (or whatever was stored), or with lazy=True a
    /// read-only Record mapping that builds Python values only for the fields it is asked.
    /// KeyError for an id that is not a live record (removed, stale or made up).
    #[pyo3(signature = (rid, lazy = false))]
    fn record<'py>(
        &self,
        py: Python<'py>,
        rid: &Bound<'py, PyAny>,
        lazy: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let id = record_id(rid)?;
        let mut out = Vec::with_capacity(256);
        match self.core.record(id, &mut out).map_err(to_py_err)? {
            Ok(()) => {}
            Err(why) => return Err(PyKeyError::new_err(format!("{why}: {}", rid.repr()?))),
        }
        if lazy {
            if !self.pickle && v::has_pickle(&out) {
                return self.decode(py, &out); // raises UnsafeValue
            }
            let fields = match v::dict_items(&out) {
                Ok(f) if out.first() == Some(&v::DICT) => f,
                _ => return self.decode(py, &out),
            };
            return Ok(Bound::new(py, Record { buf: out, fields, rid: id })?.into_any());
        }
        self.decode(py, &out)
    }

    /// Live record ids in storage order, a page at a time: returns `(cursor, ids)`; pass the
    /// cursor back until it is 0. Like Redis's SCAN, a record live for the whole walk is
    /// listed once; one inserted or removed meanwhile may be listed or not.
    #[pyo3(signature = (cursor = 0, count = 1000))]
    fn record_ids(&self, py: Python<'_>, cursor: u64, count: usize) -> PyResult<(u64, Vec<u64>)> {
        if !(1..=MAX_SCAN_COUNT).contains(&count) {
            return Err(PyValueError::new_err(format!(
                "count {count} is out of range (1 to {MAX_SCAN_COUNT})"
            )));
        }
        let core = &self.core;
        py.allow_threads(|| core.record_ids(cursor, count)).map_err(to_py_err)
    }

    /// A live record's stored value encoding (`surpdb dump`; `decode_value_bytes` reads it).
    /// KeyError as for `record`.
    fn _record_raw<'py>(
        &self,
        py: Python<'py>,
        rid: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let id = record_id(rid)?;
        let mut out = Vec::with_capacity(256);
        match self.core.record(id, &mut out).map_err(to_py_err)? {
            Ok(()) => Ok(PyBytes::new(py, &out)),
            Err(why) => Err(PyKeyError::new_err(format!("{why}: {}", rid.repr()?))),
        }
    }

    /// Remove a record. True if it was there.
    fn remove(&self, py: Python<'_>, rid: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(id) = record_id(rid) else { return Ok(false) };
        let r = self.call(py, Request::remove(id))?;
        Ok(self.record_reply(r, None)? == 1)
    }

    /// Replace a record; returns the new id (ids are offsets, so a new value gets a new id).
    /// The old id then raises KeyError. KeyError if `rid` is not a live record.
    fn update(
        &self,
        py: Python<'_>,
        rid: &Bound<'_, PyAny>,
        record: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let id = record_id(rid)?;
        let buf = self.encode_value(record)?;
        let sent = self.encode_record(&buf);
        let req = match &sent {
            Some((model, bytes)) => Request::update_encoded(id, model, bytes),
            None => Request::update(id, &buf),
        };
        let r = self.call(py, req)?;
        self.record_reply(r, Some(rid))
    }

    /// Train the record codec on `sample` (an iterable of records, up to 200,000 used) or,
    /// without one, on up to 100,000 stored records. Later inserts use the new model; stored
    /// records keep theirs. compact=True: smaller records, slower to decode. Returns the
    /// model's size in bytes.
    #[pyo3(signature = (sample = None, compact = false))]
    fn train(
        &self,
        py: Python<'_>,
        sample: Option<&Bound<'_, PyAny>>,
        compact: bool,
    ) -> PyResult<u64> {
        if let Some(sample) = sample {
            for r in self.pipeline_values(py, sample, |b| Request::train_sample(b), true)? {
                self.record_reply(r.map_err(to_py_err)?, None)?;
            }
        }
        // Training runs in the daemon's background thread; wait for as long as it is alive.
        let t = self.core.send(&Request::train(compact)).map_err(to_py_err)?;
        let core = &self.core;
        let r = py.allow_threads(|| core.wait_while_alive(t)).map_err(to_py_err)?;
        if r.status == status::NOT_DONE {
            return Err(PyValueError::new_err(
                "training failed: the record store is empty (see the daemon's log)",
            ));
        }
        self.record_reply(r, None)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, PyTuple>) {}

    fn __repr__(&self) -> String {
        match self.ns {
            0 => format!("<surpdb.Client {:?}>", self.core.dir),
            _ => {
                format!("<surpdb.Client {:?} namespace={:?}>", self.core.dir, self.namespace_name())
            }
        }
    }
}

impl Client {
    /// Queue one request per value of `values` (each made by `request`), then wait for
    /// every answer with the GIL released; the replies in order. `skip_oversized` leaves out
    /// values over max_value instead of raising ValueTooLarge.
    fn pipeline_values(
        &self,
        py: Python<'_>,
        values: &Bound<'_, PyAny>,
        request: for<'b> fn(&'b [u8]) -> Request<'b>,
        skip_oversized: bool,
    ) -> PyResult<Vec<surpd::Result<Reply>>> {
        let mut pipe = Pipeline::new(&self.core);
        let mut send = |val: &[u8]| {
            if skip_oversized && val.len() as u64 > self.core.max_value() {
                return;
            }
            if pipe.full() {
                py.allow_threads(|| pipe.make_room());
            }
            pipe.push(&request(val));
        };
        match self.checked_batch(values)? {
            Some((flat, ends)) => {
                let mut start = 0;
                for &end in &ends {
                    send(&flat[start..end]);
                    start = end;
                }
            }
            None => {
                let mut buf = Vec::with_capacity(256);
                for v in values.try_iter()? {
                    buf.clear();
                    encode(&v?, &mut buf, 0)?;
                    send(&buf);
                }
            }
        }
        Ok(py.allow_threads(|| pipe.finish()))
    }

    /// A record (value encoding) compressed here for the daemon to check and store: (model
    /// number, bytes), or None to send it as it is (see `Core::encode_record`).
    fn encode_record(&self, val: &[u8]) -> Option<([u8; 4], Vec<u8>)> {
        with_record_encoder(|enc, out| {
            let model = self.core.encode_record(val, enc, out).ok().flatten()?;
            Some((model.to_le_bytes(), out.clone()))
        })
    }

    /// Send records to insert, pipelined: converted a slice at a time with the GIL, then
    /// compressed here (see `encode_record`) and sent without it, so that other threads run
    /// and the daemon only checks what it stores.
    fn pipeline_records(
        &self,
        py: Python<'_>,
        values: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<surpd::Result<Reply>>> {
        // At most this many records, or about this many bytes, converted at a time.
        const SLICE: usize = 1024;
        const SLICE_BYTES: usize = 4 << 20;
        let core = &*self.core;
        let mut pipe = Pipeline::new(core);
        // Compress and send converted records (`flat[from..ends[0]]`, ...) without the GIL.
        let mut send = |flat: &[u8], ends: &[usize], from: usize| {
            py.allow_threads(|| {
                with_record_encoder(|enc, out| {
                    let mut start = from;
                    for &end in ends {
                        let val = &flat[start..end];
                        start = end;
                        match core.encode_record(val, enc, out) {
                            Ok(Some(model)) => {
                                pipe.push(&Request::insert_encoded(&model.to_le_bytes(), out))
                            }
                            _ => pipe.push(&Request::insert(val)),
                        }
                    }
                })
            })
        };
        if let Some((flat, ends)) = self.checked_batch(values)? {
            let mut from = 0;
            for slice in ends.chunks(SLICE) {
                send(&flat, slice, from);
                from = *slice.last().expect("chunks are not empty");
            }
        } else {
            let (mut flat, mut ends) = (Vec::with_capacity(SLICE * 256), Vec::with_capacity(SLICE));
            let mut it = values.try_iter()?;
            loop {
                flat.clear();
                ends.clear();
                for v in it.by_ref() {
                    encode(&v?, &mut flat, 0)?;
                    ends.push(flat.len());
                    if ends.len() == SLICE || flat.len() >= SLICE_BYTES {
                        break;
                    }
                }
                if ends.is_empty() {
                    break;
                }
                send(&flat, &ends, 0);
            }
        }
        Ok(py.allow_threads(|| pipe.finish()))
    }

    /// A client that refuses pickles converts and checks the whole batch before sending any
    /// of it, so a refused value stores nothing, not the values before it: the values in the
    /// value encoding back to back, and where each ends (sent from there, not converted
    /// again). None for a client that takes pickles: it converts values as it sends them.
    fn checked_batch(&self, values: &Bound<'_, PyAny>) -> PyResult<Option<(Vec<u8>, Vec<usize>)>> {
        if self.pickle {
            return Ok(None);
        }
        let (mut flat, mut ends) = (Vec::new(), Vec::new());
        for v in values.try_iter()? {
            let v = v?;
            let start = flat.len();
            encode(&v, &mut flat, 0)?;
            self.refuse_pickle(&v, &flat[start..])?;
            ends.push(flat.len());
        }
        Ok(Some((flat, ends)))
    }

    /// Result of a record-store request: the reply's value, or the exception for its status.
    fn record_reply(&self, r: Reply, rid: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        let r = self.core.outcome(&Request::named(op::INSERT, b""), r).map_err(to_py_err)?;
        if r.status == status::NOT_DONE {
            return Err(PyKeyError::new_err(format!(
                "no such record: {}",
                rid.map(|x| x.to_string()).unwrap_or_default()
            )));
        }
        Ok(r.value)
    }
}

/// The bytes of a bytes value (what `view()` exports); TypeError for any other type.
fn view_bytes<'a>(key: &[u8], value: &'a [u8]) -> PyResult<&'a [u8]> {
    if value.first() != Some(&v::BYTES) {
        return Err(PyTypeError::new_err(format!(
            "view() needs a bytes value; key {} holds a {}",
            key_repr(key),
            v::type_name(value)
        )));
    }
    let mut r = v::Reader::new(value);
    r.pos = 1;
    r.lbytes().map_err(|e| corrupt(&e.to_string()))
}

/// The counts of namespace `id` as a dict.
fn namespace_dict<'py>(py: Python<'py>, core: &Core, id: usize) -> PyResult<Bound<'py, PyDict>> {
    use std::sync::atomic::Ordering::Relaxed;
    let e = core.seg.ns(id);
    let d = PyDict::new(py);
    d.set_item("items", e.items.load(Relaxed))?;
    d.set_item("bytes", e.bytes.load(Relaxed))?;
    d.set_item("max_items", e.max_items.load(Relaxed))?;
    d.set_item("max_bytes", e.max_bytes.load(Relaxed))?;
    d.set_item("sets", e.sets.load(Relaxed))?;
    d.set_item("evictions", e.evictions.load(Relaxed))?;
    d.set_item("clears", e.clears.load(Relaxed))?;
    Ok(d)
}

/// The type name of the first part of `value` that the value encoding would pickle.
fn pickled_type(value: &Bound<'_, PyAny>) -> String {
    fn find(o: &Bound<'_, PyAny>, depth: usize) -> Option<String> {
        if depth > v::MAX_DEPTH {
            return None;
        }
        let native = o.is_none()
            || o.is_exact_instance_of::<PyBool>()
            || o.is_exact_instance_of::<pyo3::types::PyInt>()
            || o.is_exact_instance_of::<pyo3::types::PyFloat>()
            || o.is_exact_instance_of::<PyBytes>();
        if native {
            return None;
        }
        if let Ok(s) = o.downcast_exact::<pyo3::types::PyString>() {
            return s.to_str().is_err().then(|| "str with lone surrogates".to_string());
        }
        if let Ok(l) = o.downcast_exact::<PyList>() {
            return l.iter().find_map(|x| find(&x, depth + 1));
        }
        if let Ok(t) = o.downcast_exact::<PyTuple>() {
            return t.iter().find_map(|x| find(&x, depth + 1));
        }
        if let Ok(d) = o.downcast_exact::<PyDict>() {
            return d.iter().find_map(|(k, x)| find(&k, depth + 1).or_else(|| find(&x, depth + 1)));
        }
        Some(o.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "object".into()))
    }
    find(value, 0).unwrap_or_else(|| "object".into())
}

thread_local! {
    /// This thread's record encoder and its output buffer (see `Core::encode_record`).
    static RECORD_ENCODER: std::cell::RefCell<(RecordEncoder, Vec<u8>)> =
        std::cell::RefCell::new((RecordEncoder::new(), Vec::new()));
}

/// Run `f` with this thread's record encoder and output buffer (a fresh pair if they are
/// in use: `f` never runs Python code, but nothing is left to that).
fn with_record_encoder<T>(f: impl FnOnce(&mut RecordEncoder, &mut Vec<u8>) -> T) -> T {
    RECORD_ENCODER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut pair) => {
            let (enc, out) = &mut *pair;
            f(enc, out)
        }
        Err(_) => f(&mut RecordEncoder::new(), &mut Vec::new()),
    })
}
