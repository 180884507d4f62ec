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
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::layout::*;
use crate::shm::{self, Region};

/// A mapped data segment (read-only in clients, read-write in the daemon).
pub struct Segment {
    pub region: Region,
    pub seed: u64,
    pub index_off: u64,
    pub slots: u64,
    pub mask: u64,
    pub heap_off: u64,
    pub heap_cap: u64,
    pub max_value: u64,
    pub size: u64,
}

/// Geometry for a new segment of `size` bytes.
pub struct Geometry {
    pub size: u64,
    pub index_slots: u64,
    pub heap_off: u64,
    pub heap_cap: u64,
}

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
        Ok(Geometry { size, index_slots: slots, heap_off, heap_cap })
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
        h.created_ms.store(shm::now_ms(), Ordering::Relaxed);
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
        let region = if writable { Region::map_rw(f) } else { Region::map_ro(f) }
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
        if ver != FORMAT_VERSION || sig != LAYOUT_SIG {
            return Err(Error::Incompatible(format!(
                "{} has format version {ver} layout {sig:#010x}; this surpdb reads version \
                 {FORMAT_VERSION} layout {LAYOUT_SIG:#010x}",
                path.display()
            )));
        }
        let seg = Segment {
            seed: h.seed.load(Ordering::Relaxed),
            index_off: h.index_off.load(Ordering::Relaxed),
            slots: h.index_slots.load(Ordering::Relaxed),
            mask: h.index_slots.load(Ordering::Relaxed).wrapping_sub(1),
            heap_off: h.heap_off.load(Ordering::Relaxed),
            heap_cap: h.heap_cap.load(Ordering::Relaxed),
            max_value: h.max_value.load(Ordering::Relaxed),
            size: h.size.load(Ordering::Relaxed),
            region,
        };
        seg.check_geometry(len).map_err(|m| {
            Error::Corrupted(format!("{}: bad segment header: {m}", path.display()))
        })?;
        Ok(seg)
    }

    fn check_geometry(&self, file_len: u64) -> std::result::Result<(), String> {
        if self.size != file_len {
            return Err(format!("size {} but the file has {file_len} bytes", self.size));
        }
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
        if !self.heap_off.is_multiple_of(PAGE)
            || self.heap_off.checked_add(self.heap_cap).is_none_or(|e| e != self.size)
        {
            return Err(format!("heap {}+{} does not end the file", self.heap_off, self.heap_cap));
        }
        if !self.heap_cap.is_multiple_of(REC_ALIGN)
            || self.max_value == 0
            || self.max_value > self.heap_cap / 8
        {
            return Err(format!("heap capacity {} / max_value {}", self.heap_cap, self.max_value));
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

    /// Physical offset of a heap position.
    #[inline]
    pub fn phys(&self, pos: u64) -> u64 {
        self.heap_off + pos % self.heap_cap
    }

    /// Validate the record at `off` and return its parts. None for anything that is not a
    /// well-formed item record with a correct checksum: the caller treats it as a miss (and
    /// counts it as corrupt when it was reached through the index).
    #[inline]
    pub fn record(&self, off: u64) -> Option<Rec<'_>> {
        if off < self.heap_off || !off.is_multiple_of(REC_ALIGN) {
            return None;
        }
        let h: &RecHeader = self.region.at(off)?;
        let size = h.size.load(Ordering::Relaxed) as u64;
        if h.kind.load(Ordering::Relaxed) != KIND_ITEM {
            return None;
        }
        let key_len = h.key_len.load(Ordering::Relaxed) as u64;
        let val_len = h.val_len.load(Ordering::Relaxed) as u64;
        if record_size(key_len, val_len) != size || off + size > self.size {
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

    /// Write a record at `off` (unpublished space owned by the writer).
    pub fn write_record(&self, off: u64, rec: &NewRec<'_>) {
        let size = record_size(rec.key.len() as u64, rec.value.len() as u64);
        let mut hdr = [0u8; REC_HEADER_BYTES as usize];
        hdr[0..4].copy_from_slice(&(size as u32).to_le_bytes());
        hdr[4] = KIND_ITEM;
        hdr[6..8].copy_from_slice(&(rec.key.len() as u16).to_le_bytes());
        hdr[8..12].copy_from_slice(&(rec.value.len() as u32).to_le_bytes());
        hdr[16..24].copy_from_slice(&rec.hash.to_le_bytes());
        hdr[24..32].copy_from_slice(&rec.version.to_le_bytes());
        hdr[32..40].copy_from_slice(&rec.expires_ms.to_le_bytes());
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
        let mut b = [0u8; 8];
        b[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        b[4] = KIND_PAD;
        self.region.write(off, &b);
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
        assert_eq!(s.size, 8 << 20);
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

    #[test]
    fn geometry_refuses_tiny_segments() {
        assert!(matches!(Geometry::for_size(1 << 20, 1 << 20), Err(Error::Config(_))));
        let g = Geometry::for_size(256 << 20, 1 << 20).unwrap();
        assert_eq!(g.index_slots, 2 << 20);
        assert_eq!(g.heap_off + g.heap_cap, g.size);
    }
}
