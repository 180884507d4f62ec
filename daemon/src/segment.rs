//! The data segment file: creation, validation on open, geometry, and record access.
//!
//! ```text
//! 0          4096                      heap_off                              size
//! | SegHeader | index: u64 slots ...   | record heap (a circular log) ...      |
//! ```
//! A segment is created under a temporary name, fully initialised, then renamed into place,
//! so that a client never sees a half-written header.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::layout::*;
use crate::shm::{self, Region};

/// A mapped data segment (read-only in clients, read-write in the daemon). The mapping
/// reserves address space up to the segment's `max_size`, so a file grown by the daemon is
/// reached without remapping (`Segment::refresh_size`).
pub struct Segment {
    pub region: Region,
    pub seed: u64,
    pub index_off: u64,
    pub slots: u64,
    pub mask: u64,
    pub heap_off: u64,
    pub max_value: u64,
    /// Daemon-side, this process only: the index slot the sweep looks at next (u64::MAX:
    /// none yet); the slot words of records a prefix deletion removed that an unlink moved
    /// from there or after it to before it (the sweep's lap would miss them: it unlinks them
    /// first, see `prefix.rs`), and whether more were moved than that list holds (the lap
    /// then counts again).
    pub sweep_at: AtomicU64,
    pub sweep_recheck: std::sync::Mutex<Vec<u64>>,
    pub sweep_missed: AtomicBool,
}

/// Geometry for a new segment of `size` bytes.
pub struct Geometry {
    pub size: u64,
    pub index_slots: u64,
    pub heap_off: u64,
    pub heap_cap: u64,
    /// The most it may grow to while serving (0: `size`).
    pub max_size: u64,
}

/// How log positions map onto the heap: `heap_off + (pos - base) % cap`, and, for positions
/// below `base` written before the heap last grew, the previous base and capacity.
#[derive(Clone, Copy, Debug)]
pub struct Geom {
    pub base: u64,
    pub cap: u64,
    pub prev_base: u64,
    pub prev_cap: u64,
}

impl Geom {
    /// (base, capacity) that position `pos` maps with.
    #[inline]
    pub fn at(&self, pos: u64) -> (u64, u64) {
        if pos < self.base && self.prev_cap != 0 {
            (self.prev_base, self.prev_cap)
        } else {
            (self.base, self.cap)
        }
    }
}

/// Largest segment surpdb maps (address space reserved per process, not memory).
pub const MAX_SEGMENT_SIZE: u64 = 1 << 40;

/// Largest record the segment must be able to hold.
pub fn max_record(max_value: u64) -> u64 {
    record_size(MAX_KEY_LEN as u64, max_value)
}

impl Geometry {
    /// Index sized at one slot per 128 heap bytes (a power of two), which at the maximum
    /// load of 3/4 fits ~1.5 million items per 256 MiB: about the number of 100-byte values
    /// that fit in the heap, so neither runs out much before the other.
    pub fn for_size(size: u64, max_value: u64) -> Result<Geometry> {
        let size = size / PAGE * PAGE;
        let min = (16 * max_record(max_value)).max(1 << 20);
        if size < min {
            return Err(Error::Config(format!(
                "segment size {size} bytes is too small for max_value {max_value}: \
                 needs at least {min} bytes (16 of the largest records)"
            )));
        }
        let slots = (size / 128).next_power_of_two().max(1024);
        let slots = if slots * 8 > size / 4 { slots / 2 } else { slots };
        let index_bytes = align_up(slots * 8, PAGE);
        let heap_off = SEG_HEADER_BYTES + index_bytes;
        let heap_cap = size - heap_off;
        if heap_cap < 8 * max_record(max_value) {
            return Err(Error::Config(format!("segment size {size} leaves too small a heap")));
        }
        Ok(Geometry { size, index_slots: slots, heap_off, heap_cap, max_size: 0 })
    }
}

fn open_err(path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("cannot open {}", path.display()), e)
}

impl Segment {
    /// Create a new segment file at `path` (replacing nothing: fails if it exists).
    pub fn create(
        path: &Path,
        geo: &Geometry,
        max_value: u64,
        policy: u32,
        mode: u32,
    ) -> Result<()> {
        let nf = shm::NewFile::create(path, mode, geo.size)?;
        // Every block now: the daemon stores into any page of the heap, and a store into a
        // hole of a sparse file on a full filesystem is a SIGBUS, not an error.
        nf.allocate(0, geo.size)?;
        let region = &nf.region;
        let h: &SegHeader = region.get(0);
        h.seed.store(shm::random_u64(), Ordering::Relaxed);
        h.size.store(geo.size, Ordering::Relaxed);
        h.index_off.store(SEG_HEADER_BYTES, Ordering::Relaxed);
        h.index_slots.store(geo.index_slots, Ordering::Relaxed);
        h.heap_off.store(geo.heap_off, Ordering::Relaxed);
        h.heap_cap.store(geo.heap_cap, Ordering::Relaxed);
        h.max_value.store(max_value, Ordering::Relaxed);
        h.max_size.store(geo.max_size.max(geo.size), Ordering::Relaxed);
        h.created_ms.store(shm::now_ms(), Ordering::Relaxed);
        h.max_record.store(max_record(0), Ordering::Relaxed);
        h.clean.store(1, Ordering::Relaxed);
        h.policy.store(policy, Ordering::Relaxed);
        h.epoch.store(1, Ordering::Relaxed);
        h.version.store(1, Ordering::Relaxed);
        h.format_version.store(FORMAT_VERSION, Ordering::Relaxed);
        h.layout_sig.store(LAYOUT_SIG, Ordering::Relaxed);
        // Magic last: a file with a magic is a fully initialised one.
        h.magic.store(SEG_MAGIC, Ordering::Release);
        nf.install(true)
    }

    /// Open and validate an existing segment.
    pub fn open(path: &Path, writable: bool) -> Result<Segment> {
        let f = OpenOptions::new().read(true).write(writable).open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Unavailable(format!(
                    "no surpdb segment at {} (start the daemon: surpdb serve {})",
                    path.display(),
                    path.parent().map(|p| p.display().to_string()).unwrap_or_default()
                ))
            } else if e.kind() == std::io::ErrorKind::PermissionDenied {
                shm::permission_error(path, "opening the data segment", e)
            } else {
                open_err(path, e)
            }
        })?;
        Self::from_file(&f, path, writable)
    }

    pub fn from_file(f: &File, path: &Path, writable: bool) -> Result<Segment> {
        let len = f.metadata().map_err(|e| open_err(path, e))?.len();
        if len < SEG_HEADER_BYTES {
            return Err(Error::Incompatible(format!(
                "{} is {len} bytes, too short to be a surpdb segment",
                path.display()
            )));
        }
        // The header first (its `max_size` says how much address space to reserve).
        let max_size = {
            let probe = Region::map_ro(f)
                .map_err(|e| Error::io(format!("cannot map {}", path.display()), e))?;
            let h: &SegHeader = probe.get(0);
            h.max_size.load(Ordering::Acquire).min(MAX_SEGMENT_SIZE)
        };
        let region = if writable {
            Region::map_rw_reserving(f, max_size)
        } else {
            Region::map_ro_reserving(f, max_size)
        }
        .map_err(|e| Error::io(format!("cannot map {}", path.display()), e))?;
        let h: &SegHeader = region.get(0);
        let magic = h.magic.load(Ordering::Acquire);
        if magic != SEG_MAGIC {
            return Err(Error::Incompatible(format!(
                "{} is not a surpdb segment (magic {:02x?})",
                path.display(),
                magic.to_le_bytes()
            )));
        }
        let ver = h.format_version.load(Ordering::Relaxed);
        let sig = h.layout_sig.load(Ordering::Relaxed);
        let known = (ver == FORMAT_VERSION && sig == LAYOUT_SIG)
            || FORMATS_UPGRADABLE.contains(&(ver, sig));
        if !known {
            let older: Vec<String> = FORMATS_UPGRADABLE.iter().map(|v| v.0.to_string()).collect();
            return Err(Error::Incompatible(format!(
                "{} has format version {ver} layout {sig:#010x}; this surpdb reads version \
                 {FORMAT_VERSION} layout {LAYOUT_SIG:#010x} (and upgrades versions {})",
                path.display(),
                older.join(", ")
            )));
        }
        let seg = Segment {
            seed: h.seed.load(Ordering::Relaxed),
            index_off: h.index_off.load(Ordering::Relaxed),
            slots: h.index_slots.load(Ordering::Relaxed),
            mask: h.index_slots.load(Ordering::Relaxed).wrapping_sub(1),
            heap_off: h.heap_off.load(Ordering::Relaxed),
            max_value: h.max_value.load(Ordering::Relaxed),
            region,
            sweep_at: AtomicU64::new(u64::MAX),
            sweep_recheck: std::sync::Mutex::new(Vec::new()),
            sweep_missed: AtomicBool::new(false),
        };
        seg.check_geometry(len).map_err(|m| {
            Error::Corrupted(format!("{}: bad segment header: {m}", path.display()))
        })?;
        // Only what the header says the segment holds is read (a file that a killed daemon
        // was growing may be longer; the next daemon completes the growth).
        Ok(seg)
    }

    /// Current size of the segment file in bytes.
    #[inline]
    pub fn size(&self) -> u64 {
        self.hdr().size.load(Ordering::Acquire)
    }

    /// Capacity of the heap's current geometry.
    #[inline]
    pub fn cap(&self) -> u64 {
        self.hdr().heap_cap.load(Ordering::Acquire)
    }

    /// The heap's capacity once a pending growth is taken (at the end of the current lap):
    /// what the daemon plans with.
    #[inline]
    pub fn target_cap(&self) -> u64 {
        self.cap().max(self.hdr().heap_cap_next.load(Ordering::Acquire))
    }

    /// Address space reserved for the segment: the most it can grow to while mapped.
    pub fn max_size(&self) -> u64 {
        self.region.reserved()
    }

    /// After the daemon grew the file: accept accesses up to its new size. Cheap to call on a
    /// miss (one header load); readers call it when an offset lies past what they accept.
    pub fn refresh_size(&self) -> bool {
        let size = self.size();
        size > self.region.len() && self.region.grow_valid(size) >= size
    }

    fn check_geometry(&self, file_len: u64) -> std::result::Result<(), String> {
        let size = self.size();
        if size > file_len || size > self.region.reserved() {
            return Err(format!("size {size} but the file has {file_len} bytes"));
        }
        let heap_cap = self.cap();
        if !self.slots.is_power_of_two() || self.slots < 2 {
            return Err(format!("index slot count {} is not a power of two", self.slots));
        }
        if self.index_off != SEG_HEADER_BYTES {
            return Err(format!("index offset {}", self.index_off));
        }
        let index_end = self.slots.checked_mul(8).and_then(|b| b.checked_add(self.index_off));
        if index_end.is_none_or(|e| e > self.heap_off) {
            return Err("index overlaps the heap".into());
        }
        let next = self.hdr().heap_cap_next.load(Ordering::Relaxed);
        if !self.heap_off.is_multiple_of(PAGE)
            || self.heap_off.checked_add(heap_cap).is_none_or(|e| e > size)
            || (next != 0 && self.heap_off.checked_add(next).is_none_or(|e| e > size))
        {
            return Err(format!("heap {}+{heap_cap} does not fit the file", self.heap_off));
        }
        if !heap_cap.is_multiple_of(REC_ALIGN)
            || !next.is_multiple_of(REC_ALIGN)
            || self.max_value == 0
            || self.max_value > heap_cap / 8
        {
            return Err(format!("heap capacity {heap_cap} / max_value {}", self.max_value));
        }
        Ok(())
    }

    #[inline]
    pub fn hdr(&self) -> &SegHeader {
        self.region.get(0)
    }

    #[inline]
    pub fn hash(&self, key: &[u8]) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(key, self.seed)
    }

    #[inline]
    pub fn slot(&self, i: u64) -> &AtomicU64 {
        self.region.get(self.index_off + (i & self.mask) * 8)
    }

    /// The heap's geometry: how log positions map onto the heap.
    #[inline]
    pub fn geom(&self) -> Geom {
        let h = self.hdr();
        Geom {
            base: h.heap_base.load(Ordering::Acquire),
            cap: h.heap_cap.load(Ordering::Acquire),
            prev_base: h.prev_base.load(Ordering::Acquire),
            prev_cap: h.prev_cap.load(Ordering::Acquire),
        }
    }

    /// Whether the record at physical offset `off` lies in the log window `[tail, head)`.
    pub fn in_window(&self, off: u64, tail: u64, head: u64) -> bool {
        let g = self.geom();
        let Some(rel) = off.checked_sub(self.heap_off) else { return false };
        // Positions from `from` (of a geometry with this base and capacity) up to `to`.
        let hit = |from: u64, to: u64, base: u64, cap: u64| {
            if rel >= cap || from >= to || from < base {
                return false;
            }
            // The first position at or after `from` that maps onto `off`.
            from + (rel + cap - (from - base) % cap) % cap < to
        };
        hit(tail.max(g.base), head, g.base, g.cap)
            || (g.prev_cap != 0 && hit(tail, head.min(g.base), g.prev_base, g.prev_cap))
    }

    /// Offset of position `pos` within its lap.
    #[inline]
    pub fn lap_offset(&self, pos: u64) -> u64 {
        let g = self.geom();
        let (base, cap) = g.at(pos);
        pos.wrapping_sub(base) % cap
    }

    /// Physical offset of a heap position (daemon and offline tools: readers never map
    /// positions, index slots hold physical offsets).
    #[inline]
    pub fn phys(&self, pos: u64) -> u64 {
        self.heap_off + self.lap_offset(pos)
    }

    /// Validate the record at `off` and return its parts. None for anything that is not a
    /// well-formed item record with a correct checksum: the caller treats it as a miss (and
    /// counts it as corrupt when it was reached through the index).
    #[inline]
    pub fn record(&self, off: u64) -> Option<Rec<'_>> {
        if off < self.heap_off || !off.is_multiple_of(REC_ALIGN) {
            return None;
        }
        let h: &RecHeader = match self.region.at(off) {
            Some(h) => h,
            // Past what this process accepts, or running past its end (a header that starts
            // in the last bytes accepted): the daemon may have grown the file.
            None if off.saturating_add(REC_HEADER_BYTES) > self.region.len()
                && self.refresh_size() =>
            {
                self.region.at(off)?
            }
            None => return None,
        };
        let size = h.size.load(Ordering::Relaxed) as u64;
        if h.kind.load(Ordering::Relaxed) != KIND_ITEM {
            return None;
        }
        let key_len = h.key_len.load(Ordering::Relaxed) as u64;
        let val_len = h.val_len.load(Ordering::Relaxed) as u64;
        if record_size(key_len, val_len) != size {
            return None;
        }
        if off + size > self.region.len()
            && !(self.refresh_size() && off + size <= self.region.len())
        {
            return None;
        }
        let body = self.region.slice(off, REC_HEADER_BYTES + key_len + val_len)?;
        if record_crc(body) != h.crc.load(Ordering::Relaxed) {
            return None;
        }
        let key = &body[REC_HEADER_BYTES as usize..(REC_HEADER_BYTES + key_len) as usize];
        let value = &body[(REC_HEADER_BYTES + key_len) as usize..];
        Some(Rec {
            off,
            size,
            hash: h.hash.load(Ordering::Relaxed),
            version: h.version.load(Ordering::Relaxed),
            expires_ms: h.expires_ms.load(Ordering::Relaxed),
            key,
            value,
        })
    }

    /// A copy of the value of the item record at `off`, with its expiry, if it still holds
    /// `key` at `version`; checked on the copy, so bytes the writer reuses meanwhile are never
    /// trusted. The read of a record no index slot names any more, and no reader epoch may
    /// protect: tiered mode's read-through answer, which an invalidation may have unlinked
    /// before the reader came to read it.
    pub fn copy_item(&self, off: u64, key: &[u8], version: u64) -> Option<(Vec<u8>, u64)> {
        let rec = self.record(off)?;
        if rec.key != key || rec.version != version {
            return None;
        }
        let (hl, kl) = (REC_HEADER_BYTES as usize, key.len());
        let mut buf = vec![0u8; hl + kl + rec.value.len()];
        if !self.region.read(off, &mut buf) {
            return None;
        }
        let field = |at: usize, n: usize| {
            let mut b = [0u8; 8];
            b[..n].copy_from_slice(&buf[at..at + n]);
            u64::from_le_bytes(b)
        };
        let crc = field(std::mem::offset_of!(RecHeader, crc), 4) as u32;
        let ver = field(std::mem::offset_of!(RecHeader, version), 8);
        let expires = field(std::mem::offset_of!(RecHeader, expires_ms), 8);
        if record_crc(&buf) != crc || ver != version || &buf[hl..hl + kl] != key {
            return None;
        }
        Some((buf.split_off(hl + kl), expires))
    }

    /// Write a record at `off` (unpublished space owned by the writer).
    pub fn write_record(&self, off: u64, rec: &NewRec<'_>) {
        let size = record_size(rec.key.len() as u64, rec.value.len() as u64);
        let hdr = rec_header(
            size as u32,
            rec.key.len() as u16,
            rec.value.len() as u32,
            rec.hash,
            rec.version,
            rec.expires_ms,
        );
        self.region.write(off, &hdr);
        self.region.write(off + REC_HEADER_BYTES, rec.key);
        self.region.write(off + REC_HEADER_BYTES + rec.key.len() as u64, rec.value);
        let body_len = REC_HEADER_BYTES + rec.key.len() as u64 + rec.value.len() as u64;
        let body = self.region.slice(off, body_len).expect("record inside the heap");
        let crc = record_crc(body);
        self.region.get::<RecHeader>(off).crc.store(crc, Ordering::Relaxed);
    }

    /// Copy a record verbatim to `dst` (relocation). The checksum does not cover the offset,
    /// so the copy stays valid.
    pub fn copy_record(&self, src: u64, dst: u64, size: u64) {
        let bytes = self.region.slice(src, size).expect("record inside the heap").to_vec();
        self.region.write(dst, &bytes);
    }

    /// Write a pad record of `len` bytes (>= 8) at `off`.
    pub fn write_pad(&self, off: u64, len: u64) {
        self.region.write(off, &rec_pad(len as u32));
    }

    /// Size and kind of whatever starts at heap offset `off` (writer-side scan).
    /// Reads only the first 8 bytes: a pad at the heap's end may be that short.
    pub fn raw_kind(&self, off: u64) -> Option<(u64, u8)> {
        let size: &std::sync::atomic::AtomicU32 = self.region.at(off)?;
        let kind: &std::sync::atomic::AtomicU8 = self.region.at(off + 4)?;
        Some((size.load(Ordering::Relaxed) as u64, kind.load(Ordering::Relaxed)))
    }
}

/// Checksum of a record body: header words except the crc field, then key and value.
#[inline]
pub fn record_crc(body: &[u8]) -> u32 {
    let first = xxhash_rust::xxh3::xxh3_64(&body[0..12]);
    xxhash_rust::xxh3::xxh3_64_with_seed(&body[16..], first) as u32
}

/// A validated record, borrowed from the mapping.
#[derive(Clone, Copy)]
pub struct Rec<'a> {
    pub off: u64,
    pub size: u64,
    pub hash: u64,
    pub version: u64,
    pub expires_ms: u64,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

impl Rec<'_> {
    #[inline]
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms != 0 && self.expires_ms <= now_ms
    }
}

/// A record to write.
pub struct NewRec<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub hash: u64,
    pub version: u64,
    pub expires_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir() -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("surpd-seg-{}-{}", shm::getpid(), shm::random_u64()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn create_open_and_refuse_other_formats() {
        let d = tmpdir();
        let p = d.join("data.surp");
        let geo = Geometry::for_size(8 << 20, 64 << 10).unwrap();
        Segment::create(&p, &geo, 64 << 10, POLICY_EVICT, 0o640).unwrap();
        let s = Segment::open(&p, true).unwrap();
        assert_eq!(s.size(), 8 << 20);
        assert!(s.slots.is_power_of_two());
        // A record written and read back, then a flipped byte makes it invalid.
        let off = s.heap_off;
        let key = b"k";
        let rec = NewRec { key, value: b"\x06\x01x", hash: s.hash(key), version: 7, expires_ms: 0 };
        s.write_record(off, &rec);
        let r = s.record(off).unwrap();
        assert_eq!((r.key, r.value, r.version), (&key[..], &b"\x06\x01x"[..], 7));
        s.region.write(off + 41, b"\xff");
        assert!(s.record(off).is_none(), "checksum must catch a flipped byte");
        drop(s);
        // Another format version is refused with Incompatible, never misread.
        let s = Segment::open(&p, true).unwrap();
        s.hdr().format_version.store(99, Ordering::Relaxed);
        drop(s);
        assert!(matches!(Segment::open(&p, false), Err(Error::Incompatible(_))));
        std::fs::write(&p, b"garbage that is not a segment").unwrap();
        assert!(matches!(Segment::open(&p, false), Err(Error::Incompatible(_))));
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A reader mapped before a growth reads a record whose header starts in the last bytes
    /// it accepted and runs into the new space (before: the header check failed without
    /// looking at the new size, and the key read as a miss until another access refreshed).
    #[test]
    fn a_record_straddling_the_old_end_reads_after_a_growth() {
        let d = tmpdir();
        let p = d.join("data.surp");
        let mut geo = Geometry::for_size(4 << 20, 64 << 10).unwrap();
        geo.max_size = 8 << 20;
        Segment::create(&p, &geo, 64 << 10, POLICY_EVICT, 0o640).unwrap();
        let reader = Segment::open(&p, false).unwrap();
        let w = Segment::open(&p, true).unwrap();
        let old = w.size();
        let new = old + (64 << 10);
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(new).unwrap();
        w.region.grow_valid(new);
        w.hdr().size.store(new, Ordering::Release);
        let off = old - 16; // the 40-byte header runs 24 bytes past the old end
        let key = b"straddles";
        let rec = NewRec { key, value: b"\x06\x01x", hash: w.hash(key), version: 3, expires_ms: 0 };
        w.write_record(off, &rec);
        let r = reader.record(off).expect("the record past the old end reads");
        assert_eq!((r.key, r.version), (&key[..], 3));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn geometry_refuses_tiny_segments() {
        assert!(matches!(Geometry::for_size(1 << 20, 1 << 20), Err(Error::Config(_))));
        let g = Geometry::for_size(256 << 20, 1 << 20).unwrap();
        assert_eq!(g.index_slots, 2 << 20);
        assert_eq!(g.heap_off + g.heap_cap, g.size);
    }
}
