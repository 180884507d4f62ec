//! The record store: `records.surp` in the data directory, records addressed by offset.
//!
//! ```text
//! header (4 KiB) | chunk table (32 B per chunk) | table log | chunk 0 | chunk 1 | ...
//! ```
//! - **Growth** (version 2): the chunk table has room for every chunk an id can address
//!   (64 GiB); the file holds `nchunks` of them and grows by one, up to `records_size`,
//!   when none is free. The daemon extends the file and allocates the chunk's blocks before
//!   it publishes the count (Release); readers map the whole reserved range once and accept
//!   a chunk only below the count they read and the file's length. A version 1 file has a
//!   chunk table for the chunks it was made with, and keeps that size.
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
//!   trained models, zstd-compressed when that is smaller), published by `tables_end`. Ids
//!   are positions per kind, so they never change; a chunk names the model its records were
//!   encoded with, so retraining never makes an old record unreadable.
//! - A chunk whose records are all removed is retired at the current reader epoch and reused
//!   (generation + 1) once no reader can still be inside it.
//!
//! Files: this one holds the id scheme and record framing; `file.rs` the mapped file
//! (create, open, lookup, check); `tables.rs` the table log as readers and the writer see
//! it; `store.rs` the daemon's writable store (appending, removing, retiring chunks, and
//! the model lifecycle with its background training).

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

mod file;
mod store;
mod tables;
pub use file::{full_message, full_message_for, RecFile};
pub use store::*;
pub use tables::{decode_payload, LogTables};

/// The table log's blocks are allocated in steps of this many bytes.
const TABLES_STEP: u64 = 1 << 20;
const LIVE: u8 = REC_LIVE;
const EXT: u8 = REC_EXT;

pub use crate::layout::files::records_path;
pub use crate::layout::{
    ChunkCtl, RecFileHeader, CHUNK, CHUNK_SHIFT, C_ACTIVE, C_FREE, C_FULL, C_RETIRED, MAX_AREA,
    MAX_RECORD, RECORDS_FIXED_VERSION, RECORDS_VERSION, REC_EXT, REC_LAYOUT_SIG, REC_LIVE,
    REC_MAGIC, T_DOMAIN, T_FIELD, T_MODEL, T_MODEL_ZSTD,
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
