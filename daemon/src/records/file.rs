//! The mapped records file: create and open it, look a record id up, verify it offline.

use super::*;

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

    pub(super) fn tables_bytes(&self, from: u64, to: u64) -> Option<&[u8]> {
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
