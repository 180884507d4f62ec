//! The mapped records file: create and open it, look a record id up, verify it offline.

use super::*;

/// Chunks in use one [`RecFile::scan`] call reads at most (64 MiB).
pub const SCAN_CHUNKS: u64 = 16;

/// The mapped records file (readers map it read-only, the daemon read-write). The mapping
/// reserves address space for every chunk the table has room for; only chunks the header
/// says the file holds (and the file's length confirms) are ever touched.
pub struct RecFile {
    pub region: Region,
    pub path: PathBuf,
    /// The open file: the daemon allocates its blocks as chunks and the table log fill up
    /// (a store into a hole on a full disk would be a SIGBUS), and extends it a chunk at a
    /// time.
    file: File,
    pub seed: u64,
    /// Room in the chunk table: the most chunks the file can hold (a version 1 file: the
    /// chunks it was made with).
    pub max_chunks: u64,
    /// Version 2: the file grows. A version 1 file keeps its size.
    pub growable: bool,
    pub chunk_tab_off: u64,
    pub tables_off: u64,
    pub tables_cap: u64,
    pub chunks_off: u64,
}

impl RecFile {
    /// Create `records.surp` if it does not exist: a header, a chunk table with room for
    /// every chunk an id can address, and a table log sized from `limit` (the most the file
    /// may grow to: `records_size`); no chunk yet (the daemon adds them as records come).
    pub fn create(path: &Path, limit: u64, mode: u32, compact: bool) -> Result<()> {
        // Room for field names, URL domains and models: a sixteenth of the limit, from 1 to
        // 64 MiB (sparse; what a 1 GiB version 1 file had).
        let tables_cap = (limit / 16).clamp(1 << 20, 64 << 20) & !(PAGE - 1);
        let max_chunks = MAX_AREA / CHUNK;
        let chunk_tab_off = PAGE;
        let tables_off = (chunk_tab_off + max_chunks * 32).div_ceil(PAGE) * PAGE;
        let chunks_off = (tables_off + tables_cap).div_ceil(CHUNK) * CHUNK;
        if limit < chunks_off + 2 * CHUNK {
            return Err(Error::Config(format!(
                "records_size {limit} is too small: at least {} bytes",
                chunks_off + 2 * CHUNK
            )));
        }
        let nf = shm::NewFile::create(path, mode, chunks_off)?;
        // The header and the start of the table log now; the rest of the log as it comes
        // into use, chunks and their pages of the chunk table as the file grows
        // (RecFile::allocate, grow).
        nf.allocate(0, chunk_tab_off)?;
        nf.allocate(tables_off, TABLES_STEP.min(tables_cap))?;
        let region = &nf.region;
        let h: &RecFileHeader = region.get(0);
        h.version.store(RECORDS_VERSION, Ordering::Relaxed);
        h.layout_sig.store(REC_LAYOUT_SIG, Ordering::Relaxed);
        h.size.store(chunks_off, Ordering::Relaxed);
        h.nchunks.store(0, Ordering::Relaxed);
        h.max_chunks.store(max_chunks, Ordering::Relaxed);
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
        // The header page alone first: the geometry says how much to reserve.
        let head = Region::map_ro_reserving(&f, PAGE)
            .map_err(|e| Error::io(format!("cannot map {}", path.display()), e))?;
        let h: &RecFileHeader = head.get(0);
        let (magic, ver, sig) = (
            h.magic.load(Ordering::Acquire),
            h.version.load(Ordering::Relaxed),
            h.layout_sig.load(Ordering::Relaxed),
        );
        let known = ver == RECORDS_VERSION || ver == RECORDS_FIXED_VERSION;
        if magic != REC_MAGIC || !known || sig != REC_LAYOUT_SIG {
            return Err(Error::Incompatible(format!(
                "{} is not a records file this surpdb reads (version {ver}, layout {sig:#x}; \
                 expected {RECORDS_VERSION} or {RECORDS_FIXED_VERSION}, {REC_LAYOUT_SIG:#x})",
                path.display()
            )));
        }
        let growable = ver == RECORDS_VERSION;
        let size = h.size.load(Ordering::Relaxed);
        let nchunks = h.nchunks.load(Ordering::Acquire);
        let max_chunks = if growable { h.max_chunks.load(Ordering::Relaxed) } else { nchunks };
        let (chunk_tab_off, tables_off, tables_cap, chunks_off) = (
            h.chunk_tab_off.load(Ordering::Relaxed),
            h.tables_off.load(Ordering::Relaxed),
            h.tables_cap.load(Ordering::Relaxed),
            h.chunks_off.load(Ordering::Relaxed),
        );
        let seed = h.seed.load(Ordering::Relaxed);
        drop(head);
        let reserve = chunks_off.checked_add(max_chunks.saturating_mul(CHUNK));
        let ok = chunk_tab_off == PAGE
            && max_chunks <= MAX_AREA / CHUNK
            && nchunks <= max_chunks
            && tables_off >= chunk_tab_off + max_chunks * 32
            && tables_off % PAGE == 0
            && chunks_off >= tables_off.saturating_add(tables_cap)
            && chunks_off % CHUNK == 0
            // A fixed file is exactly its size. A growing one is read from its chunk count
            // alone, never against `size` or the length: the daemon may grow it between
            // this process's loads (extend, then publish), a crash may come between the
            // two, and after a machine crash the header page may be newer than the length.
            // Readers accept chunks only up to the file's length (`nchunks()`); the daemon
            // extends the file to the count when it attaches (`cover_count`).
            && if growable {
                len >= chunks_off
            } else {
                chunks_off.checked_add(nchunks * CHUNK) == Some(size) && size == len
            };
        let Some(reserve) = reserve.filter(|_| ok) else {
            return Err(Error::Corrupted(format!("{}: bad records header", path.display())));
        };
        let region = if writable {
            Region::map_rw_reserving(&f, reserve)
        } else {
            Region::map_ro_reserving(&f, reserve)
        }
        .map_err(|e| Error::io(format!("cannot map {}", path.display()), e))?;
        Ok(RecFile {
            file: f,
            seed,
            max_chunks,
            growable,
            chunk_tab_off,
            tables_off,
            tables_cap,
            chunks_off,
            region,
            path: path.to_path_buf(),
        })
    }

    /// Chunks the file holds now. A reader that finds more than it last mapped accepts
    /// accesses up to them, but never past the file's real length (a page past the end of a
    /// file is a SIGBUS, whatever the header says).
    pub fn nchunks(&self) -> u64 {
        let n = self.hdr().nchunks.load(Ordering::Acquire).min(self.max_chunks);
        let end = self.chunks_off + n * CHUNK;
        if end <= self.region.len() {
            return n;
        }
        let flen = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        let valid = self.region.grow_valid(end.min(flen));
        n.min(valid.saturating_sub(self.chunks_off) / CHUNK)
    }

    /// The daemon, at attach: give the file the length and blocks its published chunk count
    /// says (after a machine crash the header may have reached the disk before the file's
    /// new length), so that every chunk it counts can be written and read.
    pub fn cover_count(&self) -> Result<()> {
        let n = self.hdr().nchunks.load(Ordering::Acquire).min(self.max_chunks);
        let end = self.chunks_off + n * CHUNK;
        let len = self.file.metadata().map_err(|e| Error::io("stat records file", e))?.len();
        if self.growable && end > len {
            crate::log::warn(&format!(
                "the records file is {len} bytes but counts {n} chunks ({end} bytes): extended"
            ));
            self.allocate(len, end - len)?;
        }
        self.region.grow_valid(end);
        Ok(())
    }

    /// Add one chunk to a growing file (the daemon, when no chunk is free): extend the file
    /// and give the chunk its blocks, then publish the new count (Release) so that a reader
    /// who sees the chunk sees a file that holds it. A crash in between leaves a longer file
    /// than the header says, which the next daemon extends over. Returns the new chunk.
    pub fn grow(&self) -> Result<u64> {
        let h = self.hdr();
        let n = h.nchunks.load(Ordering::Relaxed);
        debug_assert!(self.growable && n < self.max_chunks);
        self.allocate(self.chunk_tab_off + n * 32 / PAGE * PAGE, PAGE)?;
        self.allocate(self.chunks_off + n * CHUNK, CHUNK)?;
        crate::crash::point("records file extended");
        let end = self.chunks_off + (n + 1) * CHUNK;
        self.region.grow_valid(end);
        h.nchunks.store(n + 1, Ordering::Release);
        // For stats only (see `open`).
        h.size.store(end, Ordering::Relaxed);
        Ok(n)
    }

    pub fn hdr(&self) -> &RecFileHeader {
        self.region.get(0)
    }

    /// Bytes of the chunk table in use for `n` chunks: a growing file's table gets its
    /// pages as chunks are added (16,384 entries, 512 KiB, would be 0.9 B per record of a
    /// 560,000-record store); a fixed one had its whole table from the start.
    pub fn chunk_table_bytes(&self, n: u64) -> u64 {
        if self.growable {
            (n * 32).div_ceil(PAGE) * PAGE
        } else {
            self.max_chunks * 32
        }
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
        let (payload, ctl, at) = self.record_at(rid)?;
        // The live bit is read last (Acquire): a remove before this point is seen.
        let live = self.region.get::<AtomicU8>(at).load(Ordering::Acquire) & LIVE != 0;
        if !live {
            return Err("no such record (removed)");
        }
        Ok((payload, ctl.model.load(Ordering::Relaxed)))
    }

    /// Record `rid`, live or removed, if its chunk is in use with the id's generation and a
    /// header at its offset, within the chunk's fill, frames a payload its check matches:
    /// the payload, the chunk, and the offset of the header in the file.
    fn record_at(&self, rid: u64) -> std::result::Result<(&[u8], &ChunkCtl, u64), &'static str> {
        let (off, gen, check) = (rid >> 28, ((rid >> 20) & 0xff) as u32, (rid & 0xfffff) as u32);
        let chunk = off >> CHUNK_SHIFT;
        if chunk >= self.nchunks() {
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
        let at = self.chunks_off + chunk * CHUNK + inner;
        let avail = self.region.slice(at, fill - inner).ok_or("no such record id")?;
        let (_, hl, len) = parse_header(avail).ok_or("no such record id")?;
        let payload = avail.get(hl..hl + len).ok_or("no such record id")?;
        if check_of(self.seed, off, gen, payload) != check {
            return Err("no such record id");
        }
        Ok((payload, ctl, at))
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
        for c in 0..self.nchunks() {
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

    /// Live record ids in storage order from `cursor` (0: the start), at most `count` (at
    /// least one), and the cursor to go on from (0: done). Like Redis's SCAN: a record live
    /// for the whole scan is listed once; one inserted or removed meanwhile may be listed or
    /// not. A call reads at most [`SCAN_CHUNKS`] chunks in use (a pinned reader holds back
    /// reclamation), so a page may hold fewer than `count` ids with a cursor that is not 0.
    ///
    /// The cursor is a record id plus one: the next record to look at, or the start of the
    /// next chunk (offset 0 is always a record's start). Resuming inside a chunk re-checks
    /// that id as a lookup does (header, generation, check; removed or not): a forged cursor,
    /// or one into a chunk reused since, moves on to the next chunk instead of parsing from
    /// a point that is not a record's start. A chunk whose generation changed while it was
    /// read contributes nothing (the daemon fences between a reuse's generation and its
    /// records). Safe beside the daemon appending: fills are read with Acquire.
    pub fn scan(&self, cursor: u64, count: usize) -> (u64, Vec<u64>) {
        let count = count.max(1);
        let mut v = Vec::new();
        let n = self.nchunks();
        let (mut c, mut inner, mut resume_gen) = (0, 0, None);
        if cursor != 0 {
            let rid = cursor - 1;
            let off = rid >> 28;
            c = off >> CHUNK_SHIFT;
            if off & (CHUNK - 1) != 0 {
                let gen = (c < n).then(|| self.ctl(c).gen.load(Ordering::Acquire));
                match (gen, self.record_at(rid)) {
                    (Some(g), Ok(_)) => (inner, resume_gen) = (off & (CHUNK - 1), Some(g)),
                    _ => c += 1,
                }
            }
        }
        let mut read = 0;
        while c < n {
            let ctl = self.ctl(c);
            let st = ctl.state.load(Ordering::Acquire);
            let gen = ctl.gen.load(Ordering::Relaxed);
            let reused = inner > 0 && resume_gen != Some(gen);
            if st != C_ACTIVE && st != C_FULL || reused {
                (c, inner) = (c + 1, 0);
                continue;
            }
            if read == SCAN_CHUNKS {
                // The start of this chunk: resumed without a check.
                return ((c * CHUNK) << 28 | 1, v);
            }
            read += 1;
            let fill = (ctl.fill.load(Ordering::Acquire) as u64).min(CHUNK);
            let base = self.chunks_off + c * CHUNK;
            let data = self.region.slice(base, fill).unwrap_or_default();
            let (mut p, mut got, mut next) = (inner as usize, Vec::new(), 0);
            while (p as u64) < fill {
                let Some((live, hl, len)) = parse_header(&data[p..]) else { break };
                let Some(payload) = data.get(p + hl..p + hl + len) else { break };
                if live {
                    let off = c * CHUNK + p as u64;
                    let rid = make_id(off, gen, check_of(self.seed, off, gen & 0xff, payload));
                    if v.len() + got.len() == count {
                        next = rid + 1;
                        break;
                    }
                    got.push(rid);
                }
                p += hl + len;
            }
            std::sync::atomic::fence(Ordering::Acquire);
            if ctl.gen.load(Ordering::Relaxed) == gen {
                v.extend(got);
            }
            if next != 0 {
                return (next, v);
            }
            (c, inner) = (c + 1, 0);
        }
        (0, v)
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
            + self.chunk_table_bytes(self.nchunks())
            + h.tables_end.load(Ordering::Relaxed)
            + h.used_bytes.load(Ordering::Relaxed)
    }
}

/// Why the records file takes no more records, with its numbers (the daemon's log, and the
/// client's SegmentFull error, which reads the file's header).
pub fn full_message_for(rf: &RecFile) -> String {
    let n = rf.nchunks();
    let bytes = rf.chunks_off + n * CHUNK;
    let limit = rf.hdr().limit.load(Ordering::Relaxed);
    if rf.growable && bytes + CHUNK <= limit.min(rf.chunks_off + rf.max_chunks * CHUNK) {
        // Room for chunks: what is full is the table log (field names, URL hosts, models).
        return format!(
            "the records file's table log is full ({} of {} bytes: field names, URL hosts \
             and models; it is sized at creation from records_size, a sixteenth of it, 1 to \
             64 MiB)",
            rf.hdr().tables_end.load(Ordering::Relaxed),
            rf.tables_cap
        );
    }
    if rf.growable {
        format!(
            "the records file is full: {n} chunks of {} MiB ({bytes} bytes) reach its limit \
             of {} bytes (records_size; raise it in the config and reload or restart)",
            CHUNK >> 20,
            rf.hdr().limit.load(Ordering::Relaxed)
        )
    } else {
        format!(
            "the records file is full: a version {RECORDS_FIXED_VERSION} records file keeps \
             the {n} chunks ({bytes} bytes) it was made with; `surpdb dump` and `surpdb load` \
             move its records to a file that grows"
        )
    }
}

/// [`full_message_for`] the records file of data directory `dir`.
pub fn full_message(dir: &Path) -> String {
    match RecFile::open(&records_path(dir), false) {
        Ok(rf) => full_message_for(&rf),
        Err(e) => format!("the records file is full ({e})"),
    }
}
