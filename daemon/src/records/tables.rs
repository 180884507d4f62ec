//! The table log (field names, URL domains, models) as readers parse it, and as the writer
//! appends to it.

use super::*;

/// Tables and models as read from the table log.
#[derive(Default)]
pub struct LogTables {
    pub names: MemTables,
    pub models: Vec<Arc<Model>>,
    pub parsed: u64,
}

impl LogTables {
    /// Read table log entries published since the last call.
    pub fn refresh(&mut self, rf: &RecFile) -> Result<()> {
        let end = rf.hdr().tables_end.load(Ordering::Acquire);
        if end == self.parsed {
            return Ok(());
        }
        let buf = rf
            .tables_bytes(self.parsed, end)
            .ok_or_else(|| Error::Corrupted(format!("table log end {end} out of range")))?;
        let mut r = Reader::new(buf);
        while !r.at_end() {
            let kind = r.u8()?;
            let body = r.lbytes()?;
            match kind {
                T_FIELD | T_DOMAIN => {
                    let s = std::str::from_utf8(body)
                        .map_err(|_| Error::Corrupted("table log: bad UTF-8".into()))?;
                    self.names.of(kind).add(s);
                }
                T_MODEL => self.models.push(Arc::new(Model::from_bytes(body)?)),
                k => return Err(Error::Corrupted(format!("table log: unknown entry kind {k}"))),
            }
        }
        self.parsed = end;
        Ok(())
    }
}

/// The names table a table-log entry kind goes to.
trait NamesOf {
    fn of(&mut self, kind: u8) -> &mut Names;
}

impl NamesOf for MemTables {
    fn of(&mut self, kind: u8) -> &mut Names {
        if kind == T_FIELD {
            &mut self.fields
        } else {
            &mut self.domains
        }
    }
}

/// Readers only look names up; only the daemon's [`Appender`] adds them.
impl Tables for LogTables {
    fn field_id(&mut self, name: &str) -> Result<u32> {
        self.names.fields.id(name).ok_or_else(|| Error::Corrupted("read-only tables".into()))
    }
    fn domain_id(&mut self, d: &str) -> Result<u32> {
        self.names.domains.id(d).ok_or_else(|| Error::Corrupted("read-only tables".into()))
    }
    fn field_name(&self, id: u32) -> Option<&str> {
        self.names.field_name(id)
    }
    fn domain(&self, id: u32) -> Option<&str> {
        self.names.domain(id)
    }
}

/// Decode a payload stored with `model` (index + 1; 0 = plain value encoding).
pub fn decode_payload(t: &LogTables, model: u32, payload: &[u8], out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    if model == 0 {
        out.extend_from_slice(payload);
        return Ok(());
    }
    let m = t
        .models
        .get(model as usize - 1)
        .ok_or_else(|| Error::Corrupted(format!("record names model {model}, not in the table")))?;
    codec::decode(m, t, payload, out)
}

/// The table log as the daemon appends to it.
pub(super) struct Appender<'a> {
    pub(super) rf: &'a RecFile,
    pub(super) t: &'a mut LogTables,
}

impl Appender<'_> {
    pub(super) fn append(&mut self, kind: u8, body: &[u8]) -> Result<()> {
        let mut e = vec![kind];
        put_varint(&mut e, body.len() as u64);
        e.extend_from_slice(body);
        let h = self.rf.hdr();
        let end = h.tables_end.load(Ordering::Relaxed);
        if end + e.len() as u64 > self.rf.tables_cap {
            return Err(Error::SegmentFull(format!(
                "the records file's table log is full ({} of {} bytes)",
                end, self.rf.tables_cap
            )));
        }
        // Blocks first, in whole steps (a step boundary crossed: allocate the next ones).
        let new_end = end + e.len() as u64;
        if new_end.div_ceil(TABLES_STEP) > end.div_ceil(TABLES_STEP) || end == 0 {
            let from = end / TABLES_STEP * TABLES_STEP;
            let to = (new_end.div_ceil(TABLES_STEP) * TABLES_STEP).min(self.rf.tables_cap);
            self.rf.allocate(self.rf.tables_off + from, to - from)?;
        }
        self.rf.region.write(self.rf.tables_off + end, &e);
        crate::crash::point("table log entry written");
        h.tables_end.store(new_end, Ordering::Release);
        crate::crash::point("table log end stored");
        self.t.parsed = new_end;
        Ok(())
    }
}

impl Appender<'_> {
    /// The id of a name, logged first if new (the log entry is published before any record
    /// that uses the id).
    pub(super) fn intern(&mut self, kind: u8, name: &str) -> Result<u32> {
        if let Some(i) = self.t.names.of(kind).id(name) {
            return Ok(i);
        }
        self.append(kind, name.as_bytes())?;
        Ok(self.t.names.of(kind).add(name))
    }
}

impl Tables for Appender<'_> {
    fn field_id(&mut self, name: &str) -> Result<u32> {
        self.intern(T_FIELD, name)
    }
    fn domain_id(&mut self, d: &str) -> Result<u32> {
        self.intern(T_DOMAIN, d)
    }
    fn field_name(&self, id: u32) -> Option<&str> {
        self.t.field_name(id)
    }
    fn domain(&self, id: u32) -> Option<&str> {
        self.t.domain(id)
    }
}
