//! The record store: `records.surp` in the data directory, records addressed by offset.
//!
//! ```text
//! header (4 KiB) | chunk table (32 B per chunk) | table log | chunk 0 | chunk 1 | ...
//! ```
//! - **Chunks** (4 MiB) are filled by appending; a record is `len-header payload` where the
//!   header's first byte has a live bit (cleared by `remove`, the only in-place change), an
//!   extension bit and 6 bits of length (longer lengths continue as a varint). A chunk's
//!   `fill` is the publish point: one Release store makes the records below it readable.
//! - **Record id** = `offset << 28 | gen << 20 | check`, where `offset` is the record's byte
//!   offset in the chunk area, `gen` the low 8 bits of the chunk's reuse generation and
//!   `check` 20 bits of xxh3 over the payload seeded with the offset and generation. Lookup is
//!   arithmetic (no index); a removed id fails the live bit, an id into a reused chunk fails
//!   the generation, and a forged id fails the check (or the header bounds), so it raises
//!   KeyError instead of returning other data (odds of a forged id passing: 2^-20 per try).
//! - **Table log**: append-only entries `kind varint(len) bytes` (field names, URL domains,
//!   trained models), published by `tables_end`. Ids are positions per kind, so they never
//!   change; a chunk names the model its records were encoded with, so retraining never makes
//!   an old record unreadable.
//! - A chunk whose records are all removed is retired at the current reader epoch and reused
//!   (generation + 1) once no reader can still be inside it.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::codec::{self, MemTables, Model, Names, RecordEncoder, Tables};
use crate::error::{Error, Result};
use crate::layout::PAGE;
use crate::shm::{self, Region};
use crate::value::{put_varint, Reader};

/// The table log's blocks are allocated in steps of this many bytes.
const TABLES_STEP: u64 = 1 << 20;
const LIVE: u8 = REC_LIVE;
const EXT: u8 = REC_EXT;

pub use crate::layout::files::records_path;
pub use crate::layout::{
    ChunkCtl, RecFileHeader, CHUNK, CHUNK_SHIFT, C_ACTIVE, C_FREE, C_FULL, C_RETIRED, MAX_AREA,
    MAX_RECORD, RECORDS_VERSION, REC_EXT, REC_LAYOUT_SIG, REC_LIVE, REC_MAGIC, T_DOMAIN, T_FIELD,
    T_MODEL,
};

/// Pack an id.
pub fn make_id(off: u64, gen: u32, check: u32) -> u64 {
    (off << 28) | ((gen as u64 & 0xff) << 20) | (check as u64 & 0xfffff)
}

fn check_of(seed: u64, off: u64, gen: u32, payload: &[u8]) -> u32 {
    (xxh3_64_with_seed(payload, seed ^ off ^ ((gen as u64) << 40)) & 0xfffff) as u32
}

/// Parse a record header at `b`: (live, header length, payload length).
fn parse_header(b: &[u8]) -> Option<(bool, usize, usize)> {
    let b0 = *b.first()?;
    let live = b0 & LIVE != 0;
    if b0 & EXT == 0 {
        return Some((live, 1, (b0 & 0x3f) as usize));
    }
    let mut r = Reader::new(&b[1..]);
    let hi = r.varint().ok()?;
    let len = (hi.checked_mul(64)?).checked_add((b0 & 0x3f) as u64)?;
    Some((live, 1 + r.pos, usize::try_from(len).ok()?))
}

fn put_header(out: &mut Vec<u8>, len: usize) {
    if len < 64 {
        out.push(LIVE | len as u8);
    } else {
        out.push(LIVE | EXT | (len & 0x3f) as u8);
        put_varint(out, (len >> 6) as u64);
    }
}

/// The mapped records file (readers map it read-only, the daemon read-write).
pub struct RecFile {
    pub region: Region,
    pub path: PathBuf,
    /// The open file: the daemon allocates its blocks as chunks and the table log fill up
    /// (the file is sparse, but a store into a hole on a full disk would be a SIGBUS).
    file: File,
    pub seed: u64,
    pub nchunks: u64,
    pub chunk_tab_off: u64,
    pub tables_off: u64,
    pub tables_cap: u64,
    pub chunks_off: u64,
}

impl RecFile {
    /// Create `records.surp` of `size` bytes (sparse) if it does not exist.
    pub fn create(path: &Path, size: u64, mode: u32, compact: bool) -> Result<()> {
        let tables_cap = (size / 16).clamp(1 << 20, 256 << 20) & !(PAGE - 1);
        let rest = size.saturating_sub(PAGE + tables_cap);
        let nchunks = (rest / (CHUNK + 32)).min(MAX_AREA / CHUNK);
        if nchunks < 2 {
            return Err(Error::Config(format!(
                "records_size {size} is too small: at least {} bytes",
                PAGE + (1 << 20) + 3 * CHUNK
            )));
        }
        let chunk_tab_off = PAGE;
        let tables_off = (chunk_tab_off + nchunks * 32).div_ceil(PAGE) * PAGE;
        let chunks_off = (tables_off + tables_cap).div_ceil(CHUNK) * CHUNK;
        let total = chunks_off + nchunks * CHUNK;
        let nf = shm::NewFile::create(path, mode, total)?;
        // The header, the chunk table and the start of the table log now; chunks and the
        // rest of the log as they come into use (RecFile::allocate).
        nf.allocate(0, (tables_off + TABLES_STEP.min(tables_cap)).min(total))?;
        let region = &nf.region;
        let h: &RecFileHeader = region.get(0);
        h.version.store(RECORDS_VERSION, Ordering::Relaxed);
        h.layout_sig.store(REC_LAYOUT_SIG, Ordering::Relaxed);
        h.size.store(total, Ordering::Relaxed);
        h.nchunks.store(nchunks, Ordering::Relaxed);
        h.chunk_tab_off.store(chunk_tab_off, Ordering::Relaxed);
        h.tables_off.store(tables_off, Ordering::Relaxed);
        h.tables_cap.store(tables_cap, Ordering::Relaxed);
        h.chunks_off.store(chunks_off, Ordering::Relaxed);
        h.seed.store(shm::random_u64(), Ordering::Relaxed);
        h.created_ms.store(shm::now_ms(), Ordering::Relaxed);
        h.compact.store(compact as u32, Ordering::Relaxed);
        h.magic.store(REC_MAGIC, Ordering::Release);
        nf.install(true)
    }

    pub fn open(path: &Path, writable: bool) -> Result<RecFile> {
        let f: File = OpenOptions::new().read(true).write(writable).open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                shm::permission_error(path, "opening the records file", e)
            } else {
                Error::io(format!("cannot open {}", path.display()), e)
            }
        })?;
        let len = f.metadata().map_err(|e| Error::io("stat records file", e))?.len();
        if len < PAGE {
            return Err(Error::Incompatible(format!("{} is too short", path.display())));
        }
        let region = if writable { Region::map_rw(&f) } else { Region::map_ro(&f) }
            .map_err(|e| Error::io(format!("cannot map {}", path.display()), e))?;
        let h: &RecFileHeader = region.get(0);
        let (magic, ver, sig) = (
            h.magic.load(Ordering::Acquire),
            h.version.load(Ordering::Relaxed),
            h.layout_sig.load(Ordering::Relaxed),
        );
        if magic != REC_MAGIC || ver != RECORDS_VERSION || sig != REC_LAYOUT_SIG {
            return Err(Error::Incompatible(format!(
                "{} is not a records file this surpdb reads (version {ver}, layout {sig:#x}; \
                 expected {RECORDS_VERSION}, {REC_LAYOUT_SIG:#x})",
                path.display()
            )));
        }
        let size = h.size.load(Ordering::Relaxed);
        let rf = RecFile {
            file: f.try_clone().map_err(|e| Error::io("cannot keep the records file open", e))?,
            seed: h.seed.load(Ordering::Relaxed),
            nchunks: h.nchunks.load(Ordering::Relaxed),
            chunk_tab_off: h.chunk_tab_off.load(Ordering::Relaxed),
            tables_off: h.tables_off.load(Ordering::Relaxed),
            tables_cap: h.tables_cap.load(Ordering::Relaxed),
            chunks_off: h.chunks_off.load(Ordering::Relaxed),
            region,
            path: path.to_path_buf(),
        };
        let ok = size == len
            && rf.chunk_tab_off == PAGE
            && rf.nchunks <= MAX_AREA / CHUNK
            && rf.tables_off >= rf.chunk_tab_off + rf.nchunks * 32
            && rf.chunks_off >= rf.tables_off + rf.tables_cap
            && rf.chunks_off.checked_add(rf.nchunks * CHUNK) == Some(len);
        if !ok {
            return Err(Error::Corrupted(format!("{}: bad records header", path.display())));
        }
        Ok(rf)
    }

    pub fn hdr(&self) -> &RecFileHeader {
        self.region.get(0)
    }

    /// Give `[off, off + len)` of the file real blocks before the daemon stores into it.
    /// A full filesystem is an error naming it here, instead of a SIGBUS later.
    pub fn allocate(&self, off: u64, len: u64) -> Result<()> {
        shm::allocate(&self.file, off, len).map_err(|e| shm::allocate_error(&self.path, len, e))
    }

    /// Allocate a chunk's blocks (when it becomes active).
    pub fn allocate_chunk(&self, chunk: u64) -> Result<()> {
        self.allocate(self.chunks_off + chunk * CHUNK, CHUNK)
    }

    pub fn ctl(&self, chunk: u64) -> &ChunkCtl {
        self.region.get(self.chunk_tab_off + chunk * 32)
    }

    /// The payload of a live record, its chunk's model (index + 1, 0 = plain) and the
    /// reason when there is none. The caller holds a reader pin.
    pub fn lookup(&self, rid: u64) -> std::result::Result<(&[u8], u32), &'static str> {
        let (off, gen, check) = (rid >> 28, ((rid >> 20) & 0xff) as u32, (rid & 0xfffff) as u32);
        let chunk = off >> CHUNK_SHIFT;
        if chunk >= self.nchunks {
            return Err("no such record id");
        }
        let ctl = self.ctl(chunk);
        let state = ctl.state.load(Ordering::Acquire);
        if state != C_ACTIVE && state != C_FULL {
            return Err("no such record (removed)");
        }
        if ctl.gen.load(Ordering::Relaxed) & 0xff != gen {
            return Err("no such record (removed)");
        }
        let fill = ctl.fill.load(Ordering::Acquire) as u64;
        let inner = off & (CHUNK - 1);
        if inner >= fill.min(CHUNK) {
            return Err("no such record id");
        }
        let base = self.chunks_off + chunk * CHUNK;
        let avail = self.region.slice(base + inner, fill - inner).ok_or("no such record id")?;
        let (_, hl, len) = parse_header(avail).ok_or("no such record id")?;
        let payload = avail.get(hl..hl + len).ok_or("no such record id")?;
        if check_of(self.seed, off, gen, payload) != check {
            return Err("no such record id");
        }
        // The live bit is read last (Acquire): a remove before this point is seen.
        let live = self.region.get::<AtomicU8>(base + inner).load(Ordering::Acquire) & LIVE != 0;
        if !live {
            return Err("no such record (removed)");
        }
        Ok((payload, ctl.model.load(Ordering::Relaxed)))
    }

    /// Verify the file (`surpdb check`): the table log parses, every record in a chunk in
    /// use parses up to the chunk's fill and decodes with the chunk's model, chunk live
    /// counts match their records (and, after a clean stop, the header's totals). Returns
    /// (live records, live bytes); problems are appended to `out`.
    pub fn check(&self, clean: bool, out: &mut Vec<String>) -> (u64, u64) {
        let mut t = LogTables::default();
        if let Err(e) = t.refresh(self) {
            out.push(format!("table log: {e}"));
            return (0, 0);
        }
        let (mut live, mut live_bytes, mut used) = (0u64, 0u64, 0u64);
        let mut buf = Vec::new();
        for c in 0..self.nchunks {
            let ctl = self.ctl(c);
            let st = ctl.state.load(Ordering::Relaxed);
            if st != C_ACTIVE && st != C_FULL {
                continue;
            }
            let fill = ctl.fill.load(Ordering::Relaxed) as u64;
            if fill > CHUNK {
                out.push(format!("chunk {c}: fill {fill} beyond the chunk"));
                continue;
            }
            let model = ctl.model.load(Ordering::Relaxed);
            if model as usize > t.models.len() {
                out.push(format!("chunk {c}: names model {model}, not in the table log"));
                continue;
            }
            used += fill;
            let data = self.region.slice(self.chunks_off + c * CHUNK, fill).unwrap_or_default();
            let (mut n, mut p) = (0u32, 0usize);
            while (p as u64) < fill {
                let Some((l, hl, len)) = parse_header(&data[p..]) else {
                    out.push(format!("chunk {c}: unreadable record header at {p}"));
                    break;
                };
                let Some(payload) = data.get(p + hl..p + hl + len) else {
                    out.push(format!("chunk {c}: record at {p} runs past the fill"));
                    break;
                };
                if l {
                    n += 1;
                    live_bytes += (hl + len) as u64;
                    if let Err(e) = decode_payload(&t, model, payload, &mut buf) {
                        out.push(format!("chunk {c}: record at {p} does not decode: {e}"));
                    }
                }
                p += hl + len;
            }
            // After a crash one request may be half counted (its live bit or fill is stored,
            // the chunk's count not yet): the restart recounts, so that is not corruption.
            let counted = ctl.live.load(Ordering::Relaxed);
            if counted != n && (clean || counted.abs_diff(n) > 1) {
                out.push(format!("chunk {c}: counts {counted} live records, holds {n}"));
            }
            live += n as u64;
        }
        let h = self.hdr();
        if clean
            && (h.live.load(Ordering::Relaxed) != live
                || h.live_bytes.load(Ordering::Relaxed) != live_bytes
                || h.used_bytes.load(Ordering::Relaxed) != used)
        {
            out.push(format!(
                "header counts {} records / {} bytes / {} used; the chunks hold {live} / \
                 {live_bytes} / {used}",
                h.live.load(Ordering::Relaxed),
                h.live_bytes.load(Ordering::Relaxed),
                h.used_bytes.load(Ordering::Relaxed)
            ));
        }
        (live, live_bytes)
    }

    /// Every live record id, in storage order (dumps, training samples). Safe beside the
    /// daemon appending (fills are read with Acquire; a record removed meanwhile may be
    /// listed, and then fails its lookup).
    pub fn ids(&self, limit: usize) -> Vec<u64> {
        let mut v = Vec::new();
        for c in 0..self.nchunks {
            let ctl = self.ctl(c);
            let st = ctl.state.load(Ordering::Acquire);
            if st != C_ACTIVE && st != C_FULL {
                continue;
            }
            let gen = ctl.gen.load(Ordering::Relaxed);
            let fill = (ctl.fill.load(Ordering::Acquire) as u64).min(CHUNK);
            let base = self.chunks_off + c * CHUNK;
            let data = self.region.slice(base, fill).unwrap_or_default();
            let mut p = 0usize;
            while (p as u64) < fill && v.len() < limit {
                let Some((live, hl, len)) = parse_header(&data[p..]) else { break };
                let Some(payload) = data.get(p + hl..p + hl + len) else { break };
                if live {
                    let off = c * CHUNK + p as u64;
                    v.push(make_id(off, gen, check_of(self.seed, off, gen & 0xff, payload)));
                }
                p += hl + len;
            }
        }
        v
    }

    fn tables_bytes(&self, from: u64, to: u64) -> Option<&[u8]> {
        if to > self.tables_cap || from > to {
            return None;
        }
        self.region.slice(self.tables_off + from, to - from)
    }

    /// Bytes of the records file that hold data.
    pub fn bytes_used(&self) -> u64 {
        let h = self.hdr();
        self.chunk_tab_off
            + self.nchunks * 32
            + h.tables_end.load(Ordering::Relaxed)
            + h.used_bytes.load(Ordering::Relaxed)
    }
}

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
struct Appender<'a> {
    rf: &'a RecFile,
    t: &'a mut LogTables,
}

impl Appender<'_> {
    fn append(&mut self, kind: u8, body: &[u8]) -> Result<()> {
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
    fn intern(&mut self, kind: u8, name: &str) -> Result<u32> {
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

/// A model trained in a background thread, waiting to be installed by the daemon.
pub struct Trained {
    pub model: Model,
    /// Field names the trainer met that its snapshot of the table did not have, in the
    /// order it numbered them from `base_fields`.
    new_fields: Vec<String>,
    base_fields: u32,
    pub sample: usize,
}

/// The request a training run answers when it is done: (ring id, box, ticket, head after).
pub type TrainRequest = (u64, u32, u64, u64);

/// A training run in a background thread: the apply loop keeps applying writes (with the
/// current model) meanwhile.
pub struct TrainJob {
    handle: std::thread::JoinHandle<Result<Trained>>,
    pub started: std::time::Instant,
    /// The TRAIN request waiting for it, if a client asked (none for automatic training).
    pub request: Option<TrainRequest>,
}

/// The daemon's side: appends, removes, trains.
pub struct RecStore {
    pub rf: RecFile,
    pub tables: LogTables,
    enc: RecordEncoder,
    buf: Vec<u8>,
    /// Retired chunks waiting for readers to leave: (chunk, epoch).
    pub retired: Vec<(u64, u64)>,
    /// Train automatically once this many records exist (0 = never).
    pub train_after: u64,
    /// Sample records sent for the next training (instead of the stored ones), at most
    /// [`MAX_SAMPLES`] of them and [`MAX_SAMPLE_BYTES`] in all (a reservoir past that).
    pub samples: Vec<Vec<u8>>,
    sample_bytes: u64,
    samples_seen: u64,
    /// The training running in the background, and TRAIN requests waiting for their turn.
    pub job: Option<TrainJob>,
    pub waiting: std::collections::VecDeque<(bool, TrainRequest)>,
}

/// Most sample records kept for one training.
pub const MAX_SAMPLES: usize = 200_000;
/// Most sample bytes kept for one training (training takes about 30x this in memory).
pub const MAX_SAMPLE_BYTES: u64 = 24 << 20;
/// Stored records read for a training without a sample.
pub const STORED_SAMPLE: usize = 100_000;

/// What an insert produced.
pub struct Inserted {
    pub rid: u64,
    /// (chunk, new fill) to publish.
    publish: (u64, u32),
    len: u64,
}

impl RecStore {
    pub fn attach(rf: RecFile, train_after: u64) -> Result<RecStore> {
        let mut tables = LogTables::default();
        tables.refresh(&rf)?;
        // Blocks for what the daemon stores into (a file made before allocation was done as
        // space came into use): header, chunk table, the table log's current step, the
        // chunk being filled.
        let end = rf.hdr().tables_end.load(Ordering::Relaxed);
        let log_end = ((end / TABLES_STEP + 1) * TABLES_STEP).min(rf.tables_cap);
        rf.allocate(0, rf.tables_off + log_end)?;
        let active = rf.hdr().active.load(Ordering::Relaxed);
        if active > 0 && active <= rf.nchunks {
            rf.allocate_chunk(active - 1)?;
        }
        // Retired chunks waiting for readers when the last daemon stopped: wait again (the
        // reclaim pass stamps them with the current epoch).
        let retired = (0..rf.nchunks)
            .filter(|&c| rf.ctl(c).state.load(Ordering::Relaxed) == C_RETIRED)
            .map(|c| (c, 0))
            .collect();
        Ok(RecStore {
            rf,
            tables,
            enc: RecordEncoder::new(),
            buf: Vec::new(),
            retired,
            train_after,
            samples: Vec::new(),
            sample_bytes: 0,
            samples_seen: 0,
            job: None,
            waiting: Default::default(),
        })
    }

    /// Keep one sample record for the next training: all of them up to the count and byte
    /// bounds, then a uniform reservoir (each later one replaces a random kept one, with
    /// falling odds), so a sample of any size is spread over everything sent and memory
    /// stays bounded. Returns how many are kept.
    pub fn add_sample(&mut self, rec: &[u8]) -> usize {
        self.samples_seen += 1;
        let fits = self.samples.len() < MAX_SAMPLES
            && self.sample_bytes + rec.len() as u64 <= MAX_SAMPLE_BYTES;
        if fits {
            self.sample_bytes += rec.len() as u64;
            self.samples.push(rec.to_vec());
        } else if !self.samples.is_empty() {
            let j = shm::random_u64() % self.samples_seen;
            if (j as usize) < self.samples.len() {
                let old = &mut self.samples[j as usize];
                if self.sample_bytes - old.len() as u64 + rec.len() as u64 <= MAX_SAMPLE_BYTES {
                    self.sample_bytes = self.sample_bytes - old.len() as u64 + rec.len() as u64;
                    *old = rec.to_vec();
                }
            }
        }
        self.samples.len()
    }

    /// Start training in a background thread (from the samples sent, else from stored
    /// records, which the thread reads through its own mapping). If a run is in progress,
    /// a request waits for its turn.
    pub fn start_training(&mut self, compact: bool, request: Option<TrainRequest>) {
        if self.job.is_some() {
            if let Some(r) = request {
                self.waiting.push_back((compact, r));
            }
            return;
        }
        let samples = std::mem::take(&mut self.samples);
        self.sample_bytes = 0;
        self.samples_seen = 0;
        let names = self.tables.names.clone();
        let path = self.rf.path.clone();
        let handle = std::thread::Builder::new()
            .name("surpd-train".into())
            .spawn(move || train_in_background(&path, samples, names, compact));
        match handle {
            Ok(handle) => {
                self.job = Some(TrainJob { handle, started: std::time::Instant::now(), request })
            }
            Err(e) => {
                crate::log::error(&format!("cannot start the training thread: {e}"));
                if let Some(r) = request {
                    self.waiting.push_front((compact, r));
                }
            }
        }
    }

    /// If the background training finished, install its model (the apply loop calls this
    /// between requests). Returns the request it answers with its reply status and value
    /// (model bytes), if a client asked for it.
    pub fn poll_training(
        &mut self,
    ) -> Option<(Option<TrainRequest>, std::result::Result<u64, String>)> {
        if !self.job.as_ref().is_some_and(|j| j.handle.is_finished()) {
            return None;
        }
        let job = self.job.take().expect("checked");
        let result = match job.handle.join() {
            Ok(Ok(t)) => {
                let sample = t.sample;
                self.install(t).map(|bytes| {
                    crate::log::info(&format!(
                        "trained the record codec in the background sample={sample} \
                         model_bytes={bytes} ms={:.0}",
                        job.started.elapsed().as_secs_f64() * 1e3
                    ));
                    bytes as u64
                })
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Config("the training thread panicked".into())),
        };
        let result = result.map_err(|e| {
            crate::log::warn(&format!("training failed: {e}"));
            e.to_string()
        });
        if let Some((compact, r)) = self.waiting.pop_front() {
            self.start_training(compact, Some(r));
        }
        Some((job.request, result))
    }

    /// Wait for a running training to finish (a clean stop, up to `deadline`).
    pub fn training_done_by(&self, deadline: std::time::Instant) -> bool {
        while self.job.as_ref().is_some_and(|j| !j.handle.is_finished()) {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        true
    }

    /// Make a background-trained model current: the field names it met are interned (their
    /// ids may differ from the trainer's if names were added meanwhile: the model is
    /// renumbered), then the model is appended to the table log.
    fn install(&mut self, mut t: Trained) -> Result<usize> {
        let mut map = std::collections::HashMap::new();
        let mut ap = Appender { rf: &self.rf, t: &mut self.tables };
        for (i, name) in t.new_fields.iter().enumerate() {
            let provisional = t.base_fields + i as u32;
            let real = ap.intern(T_FIELD, name)?;
            if real != provisional {
                map.insert(provisional, real);
            }
        }
        t.model.remap_fields(&map);
        let bytes = t.model.to_bytes();
        ap.append(T_MODEL, &bytes)?;
        self.tables.models.push(Arc::new(t.model));
        self.rf.hdr().nmodels.store(self.tables.models.len() as u64, Ordering::Relaxed);
        crate::crash::point("model installed");
        Ok(bytes.len())
    }

    /// Recount the header's counters from the chunks (after an unclean stop).
    pub fn recount(&self) {
        let (mut live, mut live_bytes, mut used) = (0u64, 0u64, 0u64);
        for c in 0..self.rf.nchunks {
            let ctl = self.rf.ctl(c);
            let st = ctl.state.load(Ordering::Relaxed);
            if st != C_ACTIVE && st != C_FULL {
                continue;
            }
            let fill = (ctl.fill.load(Ordering::Relaxed) as u64).min(CHUNK);
            used += fill;
            let (mut n, mut p) = (0u32, 0u64);
            let base = self.rf.chunks_off + c * CHUNK;
            let data = self.rf.region.slice(base, fill).unwrap_or_default();
            while p < fill {
                let Some((l, hl, len)) = parse_header(&data[p as usize..]) else { break };
                let sz = (hl + len) as u64;
                if l {
                    n += 1;
                    live_bytes += sz;
                }
                p += sz;
            }
            ctl.live.store(n, Ordering::Relaxed);
            live += n as u64;
        }
        let h = self.rf.hdr();
        h.live.store(live, Ordering::Relaxed);
        h.live_bytes.store(live_bytes, Ordering::Relaxed);
        h.used_bytes.store(used, Ordering::Relaxed);
    }

    /// Retire full chunks left without live records (a stop between the last remove and the
    /// retirement). Call after [`RecStore::recount`].
    pub fn retire_empty(&mut self) {
        for c in 0..self.rf.nchunks {
            self.maybe_retire(c);
        }
    }

    fn current_model(&self) -> u32 {
        self.tables.models.len() as u32
    }

    /// Compress `val` and write it after the active chunk's fill, unpublished.
    pub fn prepare(&mut self, val: &[u8]) -> Result<Inserted> {
        let model = self.current_model();
        self.buf.clear();
        if model == 0 {
            crate::value::validate(val)?;
            self.buf.extend_from_slice(val);
        } else {
            // The encoder parses the whole value and refuses a malformed one.
            let m = self.tables.models[model as usize - 1].clone();
            let mut out = std::mem::take(&mut self.buf);
            let mut ap = Appender { rf: &self.rf, t: &mut self.tables };
            let r = self.enc.encode(&m, &mut ap, val, &mut out);
            self.buf = out;
            r?;
        }
        let len = self.buf.len();
        if len as u64 > MAX_RECORD {
            return Err(Error::ValueTooLarge { size: len as u64, max: MAX_RECORD });
        }
        let mut hdr = Vec::with_capacity(4);
        put_header(&mut hdr, len);
        let total = (hdr.len() + len) as u64;
        let chunk = self.chunk_for(total, model)?;
        let ctl = self.rf.ctl(chunk);
        let fill = ctl.fill.load(Ordering::Relaxed) as u64;
        let off = chunk * CHUNK + fill;
        let gen = ctl.gen.load(Ordering::Relaxed);
        let check = check_of(self.rf.seed, off, gen & 0xff, &self.buf);
        let at = self.rf.chunks_off + off;
        self.rf.region.write(at, &hdr);
        self.rf.region.write(at + hdr.len() as u64, &self.buf);
        crate::crash::point("record written past the fill");
        Ok(Inserted {
            rid: make_id(off, gen, check),
            publish: (chunk, (fill + total) as u32),
            len: total,
        })
    }

    /// Make a prepared record readable (one Release store) and count it.
    pub fn publish(&self, ins: &Inserted) {
        let ctl = self.rf.ctl(ins.publish.0);
        ctl.fill.store(ins.publish.1, Ordering::Release);
        crate::crash::point("chunk fill published");
        ctl.live.fetch_add(1, Ordering::Relaxed);
        let h = self.rf.hdr();
        h.live.fetch_add(1, Ordering::Relaxed);
        h.live_bytes.fetch_add(ins.len, Ordering::Relaxed);
        h.used_bytes.fetch_add(ins.len, Ordering::Relaxed);
        h.inserted.fetch_add(1, Ordering::Relaxed);
    }

    /// The chunk to append `n` bytes to with `model`: the active one if it fits and uses the
    /// model, else a fresh one.
    fn chunk_for(&mut self, n: u64, model: u32) -> Result<u64> {
        let a = self.rf.hdr().active.load(Ordering::Relaxed);
        if a > 0 {
            let ctl = self.rf.ctl(a - 1);
            if ctl.model.load(Ordering::Relaxed) == model
                && ctl.fill.load(Ordering::Relaxed) as u64 + n <= CHUNK
            {
                return Ok(a - 1);
            }
            ctl.state.store(C_FULL, Ordering::Release);
            crate::crash::point("chunk full");
            self.maybe_retire(a - 1);
        }
        let free =
            (0..self.rf.nchunks).find(|&c| self.rf.ctl(c).state.load(Ordering::Relaxed) == C_FREE);
        let Some(c) = free else {
            return Err(Error::SegmentFull(format!(
                "the records file is full: {} chunks of {} MiB in use (records_size)",
                self.rf.nchunks,
                CHUNK >> 20
            )));
        };
        let ctl = self.rf.ctl(c);
        self.rf.allocate_chunk(c)?;
        // Generation first, then the state (Release): a reader that sees the chunk active
        // sees its new generation, so old ids into it fail.
        ctl.gen.store(ctl.gen.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        ctl.fill.store(0, Ordering::Relaxed);
        ctl.live.store(0, Ordering::Relaxed);
        ctl.model.store(model, Ordering::Relaxed);
        ctl.state.store(C_ACTIVE, Ordering::Release);
        crate::crash::point("chunk activated");
        self.rf.hdr().active.store(c + 1, Ordering::Relaxed);
        Ok(c)
    }

    /// Whether `rid` names a live record.
    pub fn is_live(&self, rid: u64) -> bool {
        self.rf.lookup(rid).is_ok()
    }

    /// Remove a record: clear its live bit. False if it is not live.
    pub fn remove(&mut self, rid: u64) -> bool {
        if self.rf.lookup(rid).is_err() {
            return false;
        }
        let off = rid >> 28;
        let (chunk, inner) = (off >> CHUNK_SHIFT, off & (CHUNK - 1));
        let at = self.rf.chunks_off + chunk * CHUNK + inner;
        let b: &AtomicU8 = self.rf.region.get(at);
        let hdr = self.rf.region.slice(at, 16.min(CHUNK - inner)).and_then(parse_header);
        b.store(b.load(Ordering::Relaxed) & !LIVE, Ordering::Release);
        crate::crash::point("live bit cleared");
        let ctl = self.rf.ctl(chunk);
        ctl.live.fetch_sub(1, Ordering::Relaxed);
        let h = self.rf.hdr();
        h.live.fetch_sub(1, Ordering::Relaxed);
        if let Some((_, hl, len)) = hdr {
            h.live_bytes.fetch_sub((hl + len) as u64, Ordering::Relaxed);
        }
        h.removed.fetch_add(1, Ordering::Relaxed);
        self.maybe_retire(chunk);
        true
    }

    fn maybe_retire(&mut self, chunk: u64) {
        let ctl = self.rf.ctl(chunk);
        let active = self.rf.hdr().active.load(Ordering::Relaxed) == chunk + 1;
        if !active
            && ctl.state.load(Ordering::Relaxed) == C_FULL
            && ctl.live.load(Ordering::Relaxed) == 0
        {
            ctl.state.store(C_RETIRED, Ordering::Release);
            crate::crash::point("chunk retired");
            let fill = ctl.fill.load(Ordering::Relaxed) as u64;
            self.rf.hdr().used_bytes.fetch_sub(fill, Ordering::Relaxed);
            self.retired.push((chunk, 0));
        }
    }

    /// Retired chunks get the epoch they were retired at (the caller bumps the epoch after).
    pub fn stamp_retired(&mut self, epoch: u64) -> bool {
        let mut any = false;
        for r in self.retired.iter_mut().filter(|r| r.1 == 0) {
            r.1 = epoch;
            any = true;
        }
        any
    }

    /// Free retired chunks no reader can be inside (`min` = oldest pinned epoch).
    pub fn reclaim(&mut self, min: Option<u64>) {
        let rf = &self.rf;
        self.retired.retain(|&(c, e)| {
            if e == 0 || min.is_some_and(|m| m <= e) {
                return true;
            }
            // The chunk keeps its disk blocks until it is refilled (punching a hole to give
            // them back is future work).
            rf.ctl(c).state.store(C_FREE, Ordering::Release);
            crate::crash::point("chunk freed");
            false
        });
    }

    /// Decode a live record (daemon side: updates, training, dumps).
    pub fn read(&mut self, rid: u64, out: &mut Vec<u8>) -> Result<bool> {
        let Ok((payload, model)) = self.rf.lookup(rid) else { return Ok(false) };
        decode_payload(&self.tables, model, payload, out)?;
        Ok(true)
    }

    /// Every live record id, in storage order (for dumps and training samples).
    pub fn ids(&self, limit: usize) -> Vec<u64> {
        self.rf.ids(limit)
    }

    /// Train a model now, in this thread, and make it current (tools and tests; the daemon
    /// trains in the background: [`RecStore::start_training`]).
    pub fn train(&mut self, compact: bool) -> Result<usize> {
        let samples = std::mem::take(&mut self.samples);
        self.sample_bytes = 0;
        self.samples_seen = 0;
        let t = train_in_background(&self.rf.path, samples, self.tables.names.clone(), compact)?;
        self.install(t)
    }

    /// Train automatically when the first `train_after` records exist.
    pub fn auto_train_due(&self) -> bool {
        self.train_after > 0
            && self.job.is_none()
            && self.tables.models.is_empty()
            && self.rf.hdr().live.load(Ordering::Relaxed) >= self.train_after
    }
}

/// The training thread: read the sample (the records sent, else up to [`STORED_SAMPLE`]
/// stored records spread evenly over the store, through a read-only mapping of its own),
/// train, and hand back the model with the field names it had to number itself.
fn train_in_background(
    path: &Path,
    mut samples: Vec<Vec<u8>>,
    mut names: MemTables,
    compact: bool,
) -> Result<Trained> {
    if samples.is_empty() {
        let rf = RecFile::open(path, false)?;
        let mut t = LogTables::default();
        t.refresh(&rf)?;
        let ids = rf.ids(usize::MAX);
        let step = ids.len().div_ceil(STORED_SAMPLE).max(1);
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for &rid in ids.iter().step_by(step) {
            // A record removed (or its chunk reused) meanwhile is skipped: the lookup checks.
            let Ok((payload, model)) = rf.lookup(rid) else { continue };
            if decode_payload(&t, model, payload, &mut out).is_ok() && rf.lookup(rid).is_ok() {
                bytes += out.len() as u64;
                samples.push(out.clone());
                if bytes > MAX_SAMPLE_BYTES {
                    break;
                }
            }
        }
    }
    if samples.is_empty() {
        return Err(Error::Config("nothing to train on: no records and no sample".into()));
    }
    let base_fields = names.fields.len() as u32;
    let refs: Vec<&[u8]> = samples.iter().map(|s| s.as_slice()).collect();
    let model = codec::train(&refs, compact, &mut names)?;
    let new_fields = names.fields.iter().skip(base_fields as usize).map(str::to_owned).collect();
    Ok(Trained { model, new_fields, base_fields, sample: samples.len() })
}
