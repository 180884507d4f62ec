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
                T_MODEL_ZSTD => {
                    let bytes = decompress_model(body)?;
                    self.models.push(Arc::new(Model::from_bytes(&bytes)?))
                }
                k => return Err(Error::Corrupted(format!("table log: unknown entry kind {k}"))),
            }
        }
        self.parsed = end;
        Ok(())
    }
}

/// A [`T_MODEL_ZSTD`] entry's model bytes: exactly the length it declares, at most
/// [`crate::layout::MAX_MODEL_BYTES`].
fn decompress_model(body: &[u8]) -> Result<Vec<u8>> {
    let mut r = Reader::new(body);
    let n = r.varint()?;
    if n > crate::layout::MAX_MODEL_BYTES {
        return Err(Error::Corrupted(format!("table log: a model of {n} bytes")));
    }
    let out = zstd::bulk::decompress(&body[r.pos..], n as usize)
        .map_err(|e| Error::Corrupted(format!("table log: a compressed model: {e}")))?;
    if out.len() as u64 != n {
        return Err(Error::Corrupted(format!(
            "table log: a compressed model of {} bytes declares {n}",
            out.len()
        )));
    }
    Ok(out)
}

/// The model entry to append for model bytes `m`: compressed if that is smaller. A model
/// over [`crate::layout::MAX_MODEL_BYTES`] is refused (no reader would load it).
pub(super) fn model_entry(m: &[u8]) -> Result<(u8, Vec<u8>)> {
    if m.len() as u64 > crate::layout::MAX_MODEL_BYTES {
        return Err(Error::Config(format!(
            "the trained model is {} bytes, over the {} a records file takes",
            m.len(),
            crate::layout::MAX_MODEL_BYTES
        )));
    }
    // Level 3: 4-8 ms for a 0.6-1.3 MB model, in the apply loop at each install (level 19
    // takes 3% less in 30 times as long).
    match zstd::bulk::compress(m, 3) {
        Ok(z) if z.len() + 10 < m.len() => {
            let mut e = Vec::with_capacity(z.len() + 10);
            put_varint(&mut e, m.len() as u64);
            e.extend_from_slice(&z);
            Ok((T_MODEL_ZSTD, e))
        }
        _ => Ok((T_MODEL, m.to_vec())),
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

/// The same, through a shared reference: clients encode under a read lock of their tables,
/// several threads at once.
impl Tables for &LogTables {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_model_entries_round_trip_and_forged_ones_are_refused() {
        let model: Vec<u8> = (0..50_000u32).map(|i| (i % 7 + i / 1000) as u8).collect();
        let (kind, e) = model_entry(&model).unwrap();
        assert_eq!(kind, T_MODEL_ZSTD);
        assert!(e.len() * 4 < model.len());
        assert_eq!(decompress_model(&e).unwrap(), model);
        // Incompressible bytes stay plain.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert_eq!(model_entry(&noise).unwrap().0, T_MODEL);
        let frame = &e[3..]; // varint(50,000) is 3 bytes
        let with_len = |n: u64| {
            let mut f = Vec::new();
            put_varint(&mut f, n);
            f.extend_from_slice(frame);
            f
        };
        let forged = [
            ("declares less", with_len(49_999)),
            ("declares more", with_len(50_001)),
            ("declares over the bound", with_len(crate::layout::MAX_MODEL_BYTES + 1)),
            ("truncated frame", e[..e.len() / 2].to_vec()),
            ("not a frame", with_len(10).into_iter().take(3).chain([0u8; 20]).collect()),
            ("empty", Vec::new()),
        ];
        for (what, f) in forged {
            assert!(decompress_model(&f).is_err(), "{what}");
        }
    }
}
