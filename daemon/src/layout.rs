//! The one file that knows the bytes.
//!
//! Every structure that lives in shared memory is declared here, `#[repr(C)]`, made only of
//! fixed-width atomics (never `usize` or `bool`), little-endian, with compile-time size and
//! alignment checks. `docs/DESIGN.md` draws the same bytes.
//!
//! The files of a data directory (their names: [`files`]):
//! * `data.surp`, the data segment: [`SegHeader`] | key index | record heap. Written only by
//!   the daemon; clients map it read-only. Version [`FORMAT_VERSION`].
//! * `ring.surp`, the request ring: [`RingHeader`] | [`BoxCtl`] x nboxes | results | box
//!   data | access hints. Writable by clients (mode 0660). Version [`RING_VERSION`], its own:
//!   a ring of another version is replaced (drained first), never the segment refused.
//! * `records.surp`, the record store: [`RecFileHeader`] | [`ChunkCtl`] x max_chunks | table
//!   log | chunks of records, growing a chunk at a time. Written only by the daemon. Version
//!   [`RECORDS_VERSION`].
//! * `surpd.lock`, the daemon's lock (it also holds an flock on `data.surp`).
//!
//! Every field is an atomic so that a `&SegHeader` over shared memory is sound even though
//! another process writes some of its words: all accesses are atomic loads and stores.

use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8};

/// Write `$v` little-endian into `$buf` at the offset of `$ty::$field`, or read it back:
/// header bytes are built and parsed at the offsets the shared struct itself defines.
macro_rules! put_le {
    ($buf:expr, $ty:ty, $field:ident, $v:expr) => {{
        let o = std::mem::offset_of!($ty, $field);
        let b = $v.to_le_bytes();
        $buf[o..o + b.len()].copy_from_slice(&b);
    }};
}
macro_rules! get_le {
    ($buf:expr, $ty:ty, $field:ident, $t:ty) => {{
        let o = std::mem::offset_of!($ty, $field);
        let n = std::mem::size_of::<$t>();
        let mut b = [0u8; std::mem::size_of::<$t>()];
        b.copy_from_slice(&$buf[o..o + n]);
        <$t>::from_le_bytes(b)
    }};
}

/// First 8 bytes of a data segment.
pub const SEG_MAGIC: u64 = u64::from_le_bytes(*b"SURPDB\0\x01");
/// First 8 bytes of a request ring file.
pub const RING_MAGIC: u64 = u64::from_le_bytes(*b"SURPRNG\x01");
/// Bumped whenever the meaning of any byte of the data segment changes. A segment of another
/// version is refused, except older ones a daemon upgrades in place when it attaches
/// ([`FORMATS_UPGRADABLE`]). 2: the namespace table ([`NsEntry`]) in the header page. 3: the
/// prefix-deletion table ([`PrefixTable`]) after it.
pub const FORMAT_VERSION: u32 = 3;
/// The older formats a daemon upgrades in place (and clients read as they are), with their
/// layout signatures: version 1 had no namespace table, version 2 no prefix table; their
/// bytes there are zero, which reads as "no namespace, no clear" and "no prefix deleted".
pub const FORMATS_UPGRADABLE: [(u32, u32); 2] = [(1, LAYOUT_SIG_V1), (2, LAYOUT_SIG_V2)];
/// Version of the request ring file, separate from the segment's (a ring is replaced by a
/// daemon that wants another, never a reason to refuse a good segment). 2: every request
/// ends with a checksum. A daemon still drains a version-1 ring it finds (as a replaced
/// ring) before its clients move to the new one.
pub const RING_VERSION: u32 = 2;
/// Bytes of the checksum that ends every request (version 2 rings).
pub const REQ_CHECK_BYTES: u64 = 8;

/// Page size used for alignment of the regions in both files.
pub const PAGE: u64 = 4096;
/// Size reserved for the ring file's header.
pub const HEADER_BYTES: u64 = 4096;
/// Bytes before the data segment's index: the header page, then the apply journal
/// ([`Journal`] and the key it names) on the next two pages.
pub const SEG_HEADER_BYTES: u64 = 3 * 4096;
/// Offset of the apply journal in the data segment.
pub const JOURNAL_OFF: u64 = 4096;
/// Offset of the journal's key bytes.
pub const JOURNAL_KEY_OFF: u64 = JOURNAL_OFF + 128;

/// Longest key accepted (bytes after UTF-8 encoding).
pub const MAX_KEY_LEN: usize = 4096;
/// Default largest encoded value (memcached's default item size).
pub const DEFAULT_MAX_VALUE: u64 = 1 << 20;

/// Heap records are aligned to this many bytes.
pub const REC_ALIGN: u64 = 8;
/// One access-hint byte covers this many heap bytes.
pub const HINT_GRANULE: u64 = 64;

/// Record kinds (first byte after the size word).
pub const KIND_ITEM: u8 = 1;
/// Filler from a record's end to the heap's end, so that no record wraps.
pub const KIND_PAD: u8 = 2;

/// Index slot encoding: the high 16 bits are a tag from the key hash, the low 48 bits the
/// record offset divided by [`REC_ALIGN`]. Zero means empty. One word, so a reader sees a
/// slot either before or after a store, never half of it.
pub const SLOT_TAG_SHIFT: u32 = 48;
pub const SLOT_OFF_MASK: u64 = (1 << SLOT_TAG_SHIFT) - 1;

/// Maximum index load factor (items / slots), as a fraction numerator over 16.
pub const INDEX_MAX_LOAD_16THS: u64 = 12;

/// Eviction policies (SegHeader::policy).
pub const POLICY_EVICT: u32 = 0;
pub const POLICY_NOEVICTION: u32 = 1;

/// Header of the data segment, at offset 0. Fields above `generation` are written at
/// creation, before the file is renamed into place, and later only by a daemon growing the
/// file (`size`, `heap_cap` and the geometry words); the rest are written only by the daemon.
#[repr(C)]
pub struct SegHeader {
    pub magic: AtomicU64,
    pub format_version: AtomicU32,
    pub layout_sig: AtomicU32,
    /// Key hash seed, random per segment (hash flooding resistance).
    pub seed: AtomicU64,
    /// File size in bytes.
    pub size: AtomicU64,
    pub index_off: AtomicU64,
    /// Number of index slots, a power of two.
    pub index_slots: AtomicU64,
    pub heap_off: AtomicU64,
    /// Heap capacity of the current geometry (grows with the file: see `heap_cap_next`).
    pub heap_cap: AtomicU64,
    pub max_value: AtomicU64,
    pub created_ms: AtomicU64,
    /// Largest size the file may grow to while serving (the address space every process
    /// reserves for its mapping); 0 in segments made before growth existed: the size.
    pub max_size: AtomicU64,
    /// Log position where the current heap geometry starts: positions map to
    /// `heap_off + (pos - heap_base) % heap_cap`.
    pub heap_base: AtomicU64,
    /// Heap capacity the log takes at the end of its current lap, after the file grew; 0: none.
    pub heap_cap_next: AtomicU64,
    /// Bumped at each change of size or geometry.
    pub geom_gen: AtomicU64,
    /// The geometry before the last switch, for positions below `heap_base` still in the
    /// log window (0: none).
    pub prev_base: AtomicU64,
    pub prev_cap: AtomicU64,

    // ---- daemon-written state (offset 128) ----
    /// Incremented each time a daemon attaches.
    pub generation: AtomicU64,
    /// 1 while no daemon is attached after a clean stop; 0 while attached or after a crash.
    pub clean: AtomicU32,
    pub policy: AtomicU32,
    /// Reader epoch (starts at 1; 0 in a reader slot means "not reading").
    pub epoch: AtomicU64,
    /// Index seqlock: odd while the writer moves slots (backward-shift deletion).
    pub idx_seq: AtomicU64,
    /// Log heap positions (monotonic byte counts; physical = heap_off + pos % heap_cap).
    pub head: AtomicU64,
    pub tail: AtomicU64,
    /// Space before this position may be overwritten (no reader can still see it).
    pub free_limit: AtomicU64,
    pub items: AtomicU64,
    /// Bytes of live records (headers included).
    pub live_bytes: AtomicU64,
    /// Source of record versions (compare-and-set, ordering).
    pub version: AtomicU64,
    pub daemon_pid: AtomicU32,
    /// 1 while the daemon is inside an operation that changes the index or the counters:
    /// a restart recounts only if it died with this set.
    pub op_active: AtomicU32,
    /// Kernel boot id (two halves of /proc/sys/kernel/random/boot_id) of the last attach:
    /// an unclean stop with another boot id was a machine crash, not a process crash.
    pub boot_id: [AtomicU64; 2],
    /// Largest record (bytes, header included) the heap has been asked to hold, which sizes
    /// the cleaner's reserve; only grows. 0 (segments made before it existed): unknown, the
    /// largest record max_value allows is assumed.
    pub max_record: AtomicU64,
    /// Tiered mode (an `upstream` is configured): records older than this version are not
    /// provably current (the daemon lost its invalidation stream, or the upstream was
    /// flushed) and read as absent. A generation bump, not a walk. 0 outside tiered mode.
    pub up_min_version: AtomicU64,
    /// Tiered mode: local copies are served only before this wall-clock time (unix ms),
    /// which the daemon moves forward as its upstream connection proves alive. 0: not
    /// tiered (every local copy is served).
    pub up_lease_ms: AtomicU64,

    // ---- counters (offset 256), written by the daemon only ----
    pub c_sets: AtomicU64,
    pub c_deletes: AtomicU64,
    pub c_evictions: AtomicU64,
    pub c_expirations: AtomicU64,
    pub c_relocations: AtomicU64,
    pub c_errors: AtomicU64,
    pub c_requests: AtomicU64,
    pub c_clears: AtomicU64,
    pub c_incrs: AtomicU64,
    pub c_touches: AtomicU64,
    pub c_full: AtomicU64,
    pub c_reclaim_waits: AtomicU64,
    pub c_corrupt: AtomicU64,
    /// Evictions made while live data fitted under the high-water mark (the cleaner could not
    /// relocate in time: space pinned by readers). Expected to stay 0.
    pub c_evictions_no_pressure: AtomicU64,
    /// Upgrading a segment of the format before namespaces: 1 + the version counter when the
    /// upgrade began (0: none begun). Records from then on were written by the upgrade (or
    /// after it), so a restart after a crash part-way re-keys only records older than that.
    pub upgrade_mark: AtomicU64,
    _pad3: [u64; 1],
}

/// Where the namespace table starts in the header page, and how many namespaces a segment
/// holds (slot 0 is the default namespace, of every key not given to another one).
pub const NS_TABLE_OFF: u64 = 512;
pub const MAX_NAMESPACES: usize = 32;
/// Longest namespace name, in bytes.
pub const NS_NAME_MAX: usize = 24;
/// First byte of a key that names its namespace: `[NS_MARK, id]` + the key. Keys of the
/// default namespace that start with this byte are stored as `[NS_MARK, 0]` + the key.
pub const NS_MARK: u8 = 0xff;

/// Where the prefix-deletion table starts in the header page (after the namespace table),
/// and how many prefix deletions it holds at once (each until a sweep of the whole index
/// has unlinked what it removed).
pub const PREFIX_TABLE_OFF: u64 = NS_TABLE_OFF + (MAX_NAMESPACES * 96) as u64;
pub const MAX_PREFIXES: usize = 15;

/// Prefix deletions (`delete_prefix`): a record of namespace `ns` whose key (as the
/// namespace's users know it) starts with a live entry's prefix, and whose version is below
/// the entry's, is gone. Written by the daemon only; readers copy it before they probe.
#[repr(C)]
pub struct PrefixTable {
    /// Bit i set: entry i is in force. 0 (the common case) costs a reader one load.
    pub live: AtomicU64,
    pub _spare: [AtomicU64; 3],
    pub entries: [PrefixEntry; MAX_PREFIXES],
}

/// One prefix deletion. `version` changes with every write of the entry (0 while free), so
/// a reader that loads the same nonzero version before and after the other words read
/// a whole entry.
#[repr(C)]
pub struct PrefixEntry {
    /// Records below this version are gone (the version counter when it was made).
    pub version: AtomicU64,
    /// The namespace id (low 8 bits) and the prefix's length in bytes (the bits above).
    pub ns_len: AtomicU64,
    /// The prefix's hash (xxh3 with the segment's seed, as keys are hashed).
    pub hash: AtomicU64,
    pub _spare: AtomicU64,
}

/// One namespace: its name, the version its last clear stopped at (records older than it are
/// gone, whatever index slot still names them: a clear is one store), its quotas and counts.
/// Written by the daemon only; readers load `min_version` on every hit of a namespaced key.
#[repr(C)]
pub struct NsEntry {
    /// The name's bytes, little-endian words; `name_len` of them count.
    pub name: [AtomicU64; 3],
    pub name_len: AtomicU32,
    /// 1 once this slot names a namespace (slot 0: once the table was counted).
    pub used: AtomicU32,
    pub min_version: AtomicU64,
    /// Live entries and their bytes (headers included), not counting what its last clear
    /// left for the sweep.
    pub items: AtomicU64,
    pub bytes: AtomicU64,
    /// Quotas (0: none): a set past one evicts the namespace's oldest entries first.
    pub max_items: AtomicU64,
    pub max_bytes: AtomicU64,
    pub sets: AtomicU64,
    pub evictions: AtomicU64,
    pub clears: AtomicU64,
}

/// Header of every heap record, 40 bytes, followed by `key_len` key bytes and `val_len`
/// value bytes, padded to [`REC_ALIGN`]. Written before it is published; never modified
/// after. `crc` is the low 32 bits of xxh3 over the header (with crc = 0) and the payload.
#[repr(C)]
pub struct RecHeader {
    /// Total record size including header and padding.
    pub size: AtomicU32,
    pub kind: AtomicU8,
    pub _flags: AtomicU8,
    pub key_len: AtomicU16,
    pub val_len: AtomicU32,
    pub crc: AtomicU32,
    pub hash: AtomicU64,
    pub version: AtomicU64,
    /// Expiry, unix time in milliseconds; 0 = never.
    pub expires_ms: AtomicU64,
}

pub const REC_HEADER_BYTES: u64 = std::mem::size_of::<RecHeader>() as u64;

/// The header of a record (`size` bytes in all, key and value after it), crc left 0: it is
/// stored once the whole record is written.
pub fn rec_header(
    size: u32,
    key_len: u16,
    val_len: u32,
    hash: u64,
    version: u64,
    expires_ms: u64,
) -> [u8; REC_HEADER_BYTES as usize] {
    let mut b = [0u8; REC_HEADER_BYTES as usize];
    put_le!(b, RecHeader, size, size);
    put_le!(b, RecHeader, kind, KIND_ITEM);
    put_le!(b, RecHeader, key_len, key_len);
    put_le!(b, RecHeader, val_len, val_len);
    put_le!(b, RecHeader, hash, hash);
    put_le!(b, RecHeader, version, version);
    put_le!(b, RecHeader, expires_ms, expires_ms);
    b
}

/// The 8 bytes that start a heap pad of `len` bytes.
pub fn rec_pad(len: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    put_le!(b, RecHeader, size, len);
    put_le!(b, RecHeader, kind, KIND_PAD);
    b
}

/// Header of the request ring file.
#[repr(C)]
pub struct RingHeader {
    pub magic: AtomicU64,
    pub format_version: AtomicU32,
    pub layout_sig: AtomicU32,
    pub nboxes: AtomicU32,
    pub nresults: AtomicU32,
    /// Bytes of request data per box, a multiple of the page size.
    pub box_bytes: AtomicU64,
    pub boxes_off: AtomicU64,
    pub results_off: AtomicU64,
    pub data_off: AtomicU64,
    pub hints_off: AtomicU64,
    pub hints_len: AtomicU64,
    /// Seed of the data segment this ring belongs to.
    pub seg_seed: AtomicU64,
    pub max_value: AtomicU64,
    /// Random per ring file (0 in files made before it existed): names the ring a
    /// journaled request came from.
    pub ring_id: AtomicU64,
    _pad0: [u64; 4],

    // ---- offset 128: daemon presence ----
    pub daemon_pid: AtomicU32,
    /// 1 once the daemon serves requests from this ring.
    pub ready: AtomicU32,
    /// Set when a daemon replaced this ring file by a new one: clients must reopen.
    pub retired: AtomicU32,
    _pad1: AtomicU32,
    pub daemon_generation: AtomicU64,
    /// What the daemon serving the ring accepts beyond the base protocol: `daemon_generation
    /// << 16 | bits` ([`features`]), stored before `ready`. A daemon of an earlier version
    /// leaves a stale word whose generation is not its own, which clients read as no bits.
    pub daemon_features: AtomicU64,
    _pad2: [u64; 12],

    // ---- offset 256: doorbell, on its own cache line ----
    /// Futex word: producers increment it after publishing a request.
    pub doorbell: AtomicU32,
    /// 1 while the daemon sleeps (or is about to) on `doorbell`.
    pub sleeping: AtomicU32,
    _pad3: [u64; 15],

    // ---- offset 384: totals folded in from reaped boxes ----
    pub retired_hits: AtomicU64,
    pub retired_misses: AtomicU64,
    pub retired_corrupt: AtomicU64,
    pub retired_queue_waits: AtomicU64,
    /// Tiered mode, written by the daemon: 1 while connected to the upstream with
    /// invalidations on, then counters: round trips, read-throughs, invalidated keys,
    /// generation bumps (everything dropped at once), reconnects, upstream errors.
    pub up_connected: AtomicU64,
    pub up_round_trips: AtomicU64,
    pub up_read_throughs: AtomicU64,
    pub up_invalidations: AtomicU64,
    pub up_flushes: AtomicU64,
    pub up_reconnects: AtomicU64,
    pub up_errors: AtomicU64,
    /// Requests a restarted daemon sent again that the upstream had applied already: their
    /// recorded results were returned (exactly once), not applied twice.
    pub up_replays: AtomicU64,
    _pad4: [u64; 4],
}

/// Per-client control block: reader slot + request mailbox. 256 bytes, three cache lines
/// used so that producer, consumer and reader words do not share lines.
#[repr(C)]
pub struct BoxCtl {
    // line 0: ownership and reader state (written by the owner)
    /// 0 = free; otherwise the owner's pid. Claimed by CAS 0 -> pid.
    pub owner_pid: AtomicU32,
    /// Nonzero once the owner finished initialising the box.
    pub active: AtomicU32,
    /// Owner process start time (clock ticks since boot, /proc/pid/stat field 22), to tell a
    /// recycled pid from the owner.
    pub owner_start: AtomicU64,
    /// Epoch pinned by an in-flight read; 0 = not reading.
    pub epoch: AtomicU64,
    /// Oldest epoch pinned by a live zero-copy view; 0 = none.
    pub view_epoch: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub corrupt: AtomicU64,
    /// Bumped by each claim (0 in rings made before it existed): the daemon keeps its own
    /// copy of a box's consumer words and takes them from the box again only when this
    /// changes.
    pub claims: AtomicU64,

    // line 1: producer
    /// Bytes of requests published (monotonic).
    pub tail: AtomicU64,
    /// Times the producer found its queue full and had to wait.
    pub queue_waits: AtomicU64,
    _pad1: [u64; 6],

    // line 2: consumer (daemon)
    /// Bytes of requests consumed (monotonic).
    pub head: AtomicU64,
    /// Ticket of the last completed request.
    pub done: AtomicU64,
    /// Futex word: low 32 bits of `done`.
    pub done32: AtomicU32,
    /// Number of threads sleeping on `done32`.
    pub waiters: AtomicU32,
    /// Set by the daemon when this box carried a malformed request; the client must reset.
    pub poisoned: AtomicU32,
    _pad2: AtomicU32,
    pub errors: AtomicU64,
    _pad3: [u64; 3],

    _pad4: [u64; 8],
}

/// The apply journal: armed just before a request's one publishing store, so that a
/// restarted daemon can tell whether a request it was applying when it died took effect,
/// and answer it instead of applying it twice (exactly once for incr, append...).
#[repr(C)]
pub struct Journal {
    /// 1 while armed.
    pub armed: AtomicU32,
    pub boxno: AtomicU32,
    pub ticket: AtomicU64,
    /// The box's head after this request (where the consumer continues).
    pub head_after: AtomicU64,
    /// Version of the record being published; 0 for a delete.
    pub new_version: AtomicU64,
    /// For a delete: version of the record being removed.
    pub old_version: AtomicU64,
    /// The reply to give once the publish is known to have happened.
    pub status: AtomicU32,
    pub key_len: AtomicU32,
    pub value: AtomicU64,
    pub aux: AtomicU64,
    /// What `new_version` / `old_version` name: 0 = record versions of `key` in the cache;
    /// [`JOURNAL_RECORD`] = record-store ids (a new id that is live, an old id not live).
    pub kind: AtomicU64,
    /// `RingHeader::ring_id` of the ring the request came from (0: the current ring; a
    /// daemon may serve a replaced ring until its clients move).
    pub ring_id: AtomicU64,
    _pad: [u64; 6],
}

/// Journal kind for record-store requests.
pub const JOURNAL_RECORD: u64 = 1;

/// Result of one request, in a per-box ring of `nresults` entries indexed by ticket.
#[repr(C)]
pub struct ResultEntry {
    pub ticket: AtomicU64,
    pub status: AtomicU32,
    pub _pad: AtomicU32,
    pub value: AtomicU64,
    pub aux: AtomicU64,
}

/// Request header in a mailbox, 32 bytes, followed by key and payload, zeros to a multiple
/// of 8, and an 8-byte checksum (xxh3 of everything before it, seeded with the ring's id):
/// a request torn or scribbled on by another process is refused, never applied.
#[repr(C)]
pub struct ReqHeader {
    /// Total bytes including header and padding.
    pub len: AtomicU32,
    pub op: AtomicU8,
    pub flags: AtomicU8,
    pub key_len: AtomicU16,
    pub ticket: AtomicU64,
    /// Op argument: ttl in ms for set/add/touch (0 = none), delta for incr.
    pub arg: AtomicU64,
    /// Second argument: initial value for incr; payload length otherwise.
    pub arg2: AtomicU64,
}

pub const REQ_HEADER_BYTES: u64 = std::mem::size_of::<ReqHeader>() as u64;

/// A request header's fields as plain values (the ring copies headers out of shared
/// memory before looking at them, and builds them in private memory before publishing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReqFields {
    pub len: u32,
    pub op: u8,
    pub flags: u8,
    pub key_len: u16,
    pub ticket: u64,
    pub arg: u64,
    pub arg2: u64,
}

impl ReqFields {
    pub fn encode(&self) -> [u8; REQ_HEADER_BYTES as usize] {
        let mut b = [0u8; REQ_HEADER_BYTES as usize];
        put_le!(b, ReqHeader, len, self.len);
        put_le!(b, ReqHeader, op, self.op);
        put_le!(b, ReqHeader, flags, self.flags);
        put_le!(b, ReqHeader, key_len, self.key_len);
        put_le!(b, ReqHeader, ticket, self.ticket);
        put_le!(b, ReqHeader, arg, self.arg);
        put_le!(b, ReqHeader, arg2, self.arg2);
        b
    }

    pub fn decode(b: &[u8; REQ_HEADER_BYTES as usize]) -> ReqFields {
        ReqFields {
            len: get_le!(b, ReqHeader, len, u32),
            op: get_le!(b, ReqHeader, op, u8),
            flags: get_le!(b, ReqHeader, flags, u8),
            key_len: get_le!(b, ReqHeader, key_len, u16),
            ticket: get_le!(b, ReqHeader, ticket, u64),
            arg: get_le!(b, ReqHeader, arg, u64),
            arg2: get_le!(b, ReqHeader, arg2, u64),
        }
    }

    /// The 8 bytes that start a pad of `len` bytes (a box's filler, op [`op::PAD`]).
    pub fn pad(len: u32) -> [u8; 8] {
        let mut b = [0u8; 8];
        put_le!(b, ReqHeader, len, len);
        put_le!(b, ReqHeader, op, op::PAD);
        b
    }

    /// The length and op of whatever starts with these (at least 8) bytes.
    pub fn peek(b: &[u8]) -> (u32, u8) {
        (get_le!(b, ReqHeader, len, u32), get_le!(b, ReqHeader, op, u8))
    }
}

/// Request ops.
pub mod op {
    /// Filler to the end of the mailbox buffer; no ticket.
    pub const PAD: u8 = 0;
    pub const SET: u8 = 1;
    pub const ADD: u8 = 2;
    pub const DELETE: u8 = 3;
    pub const INCR: u8 = 4;
    pub const TOUCH: u8 = 5;
    pub const CLEAR: u8 = 6;
    pub const NOOP: u8 = 7;
    /// Append an item to a list value; arg = max_len (0 = unbounded).
    pub const APPEND: u8 = 8;
    /// Update a dict value's fields; flag DEEP merges nested dicts.
    pub const MERGE: u8 = 9;
    /// Compare-and-set: payload = version (8 bytes LE) + value; arg = ttl ms.
    pub const CAS: u8 = 10;
    /// Add members with scores to a sorted set (payload: a ZSET value); arg = max_len.
    pub const ZADD: u8 = 11;
    /// Remove members from a sorted set (payload: a LIST of str/bytes).
    pub const ZREM: u8 = 12;
    /// Record store: insert the payload (a value); the reply's value is the new id.
    pub const INSERT: u8 = 13;
    /// Remove the record whose id is `arg`; value 1 if it was live.
    pub const REMOVE: u8 = 14;
    /// Replace record `arg` with the payload: a new id (value); NOT_DONE if `arg` is not live.
    pub const UPDATE: u8 = 15;
    /// Train a codec model from the stored records (flags: [`flag::COMPACT`]).
    pub const TRAIN: u8 = 16;
    /// Grow the data segment to `arg` bytes (up to its max_size); value: the new size.
    pub const RESIZE: u8 = 17;
    /// Tiered mode: read these keys through from the upstream into the local store (payload:
    /// each key as varint length then bytes). Answered once they are stored locally (or
    /// stored as absent); outside tiered mode a no-op.
    pub const FETCH: u8 = 18;
    /// Namespaces: the id of the namespace named by the payload (made if new; value: the
    /// id). Flag [`flag::QUOTA`]: also set its quotas, `arg` entries and the payload's first
    /// 8 bytes (LE) bytes, before the name (0: none).
    pub const NS_OPEN: u8 = 19;
    /// Namespaces: empty namespace `arg` at once (its clear point moves to now).
    pub const NS_CLEAR: u8 = 20;
    /// Namespaces: remove the oldest entries of namespace `arg` until at most `arg2` remain
    /// (Django's cull); value: how many remain.
    pub const NS_CULL: u8 = 21;
    /// Stampede lease on `key` for `arg` ms, for the caller `arg2` (a random token): value 1
    /// granted (the caller computes), 2 held by another live caller (aux: the lease's expiry,
    /// unix ms), 0 the key holds a value.
    pub const LEASE: u8 = 22;
    /// Give back the lease on `key` that token `arg2` holds; value 1 if it held it.
    pub const UNLEASE: u8 = 23;
    /// Every key of the key's namespace starting with the rest of `key` (its stored form:
    /// the namespace prefix, then the key prefix) is gone, in O(1).
    pub const DELETE_PREFIX: u8 = 24;
}

/// Feature bits a daemon advertises in [`RingHeader::daemon_features`].
pub mod features {
    /// Records sent compressed by clients ([`super::flag::ENCODED`]).
    pub const ENCODED_RECORDS: u64 = 1;
    /// Every bit this version sets.
    pub const ALL: u64 = ENCODED_RECORDS;

    /// The word for a daemon of generation `gen` with `bits`.
    pub fn word(gen: u64, bits: u64) -> u64 {
        gen << 16 | bits
    }

    /// The bits a word grants to the daemon of generation `gen` (none if another
    /// daemon wrote it).
    pub fn of(word: u64, gen: u64) -> u64 {
        if word >> 16 == gen & ((1 << 48) - 1) {
            word & 0xffff
        } else {
            0
        }
    }
}

/// Request flags.
pub mod flag {
    /// INCR: create the key from `arg2` (initial) when absent.
    pub const INCR_CREATE: u8 = 1;
    /// MERGE: merge nested dicts instead of replacing them.
    pub const DEEP: u8 = 2;
    /// train: the compact codec.
    pub const COMPACT: u8 = 4;
    /// train: the payload is one sample record, kept for the next train request.
    pub const SAMPLE: u8 = 8;
    /// NS_OPEN: set the namespace's quotas too.
    pub const QUOTA: u8 = 16;
    /// INSERT / UPDATE: the payload is the record compressed by the client with the model
    /// whose number (1-based) is the key, 4 bytes little-endian. The daemon decodes it in
    /// full before storing it, and refuses it if it does not decode.
    pub const ENCODED: u8 = 32;
}

/// Result statuses.
pub mod status {
    pub const OK: u32 = 0;
    /// add on an existing key, delete/touch/incr of a missing key.
    pub const NOT_DONE: u32 = 1;
    pub const SEGMENT_FULL: u32 = 2;
    pub const TOO_LARGE: u32 = 3;
    pub const BAD_REQUEST: u32 = 4;
    /// incr on a value that is not an integer.
    pub const NOT_INTEGER: u32 = 5;
    /// incr result out of the 128-bit range.
    pub const OVERFLOW: u32 = 6;
    /// An update op on a value of another type (append to a str...).
    pub const WRONG_TYPE: u32 = 7;
    /// Applied, but `durability = "sync"` could not flush it to disk.
    pub const NOT_DURABLE: u32 = 8;
    /// The value the daemon would build is not storable (nested deeper than the decoders
    /// accept, say): refused, nothing changed.
    pub const INVALID_RESULT: u32 = 9;
    /// The disk could not provide blocks for the write (the filesystem is full).
    pub const NO_DISK_SPACE: u32 = 10;
    /// Tiered mode: the op has no upstream equivalent (append, merge, cas, sorted sets).
    pub const NOT_SUPPORTED: u32 = 11;
    /// Tiered mode: the upstream did not answer (down, or slower than upstream_timeout);
    /// nothing was acknowledged.
    pub const UNAVAILABLE: u32 = 12;
    /// A pickled value in a store that refuses them (`pickle = false`); nothing changed.
    pub const PICKLE_REFUSED: u32 = 13;
    /// Never sent: the daemon answers this request later (a training); its box waits.
    pub const DEFERRED: u32 = 0xffff_0002;
    /// Never sent: taken and answered later, in order (tiered mode sends it upstream); the
    /// box's next request may be taken meanwhile.
    pub const PIPELINED: u32 = 0xffff_0003;
    /// Never sent: not taken now (it must follow requests still in flight); taken again
    /// once they were answered.
    pub const LATER: u32 = 0xffff_0004;
}

const _: () = {
    assert!(std::mem::offset_of!(SegHeader, generation) == 128);
    assert!(std::mem::offset_of!(SegHeader, c_sets) == 256);
    assert!(std::mem::size_of::<SegHeader>() == 384);
    assert!(std::mem::offset_of!(RingHeader, daemon_pid) == 128);
    assert!(std::mem::offset_of!(RingHeader, doorbell) == 256);
    assert!(std::mem::offset_of!(RingHeader, retired_hits) == 384);
    assert!(std::mem::offset_of!(BoxCtl, tail) == 64);
    assert!(std::mem::offset_of!(BoxCtl, head) == 128);
    assert!(std::mem::size_of::<SegHeader>() as u64 <= NS_TABLE_OFF);
    assert!(std::mem::size_of::<NsEntry>() == 96);
    assert!(NS_TABLE_OFF + (MAX_NAMESPACES * std::mem::size_of::<NsEntry>()) as u64 <= JOURNAL_OFF);
    assert!(
        PREFIX_TABLE_OFF == NS_TABLE_OFF + (MAX_NAMESPACES * std::mem::size_of::<NsEntry>()) as u64
    );
    assert!(std::mem::size_of::<PrefixEntry>() == 32);
    assert!(PREFIX_TABLE_OFF + std::mem::size_of::<PrefixTable>() as u64 <= JOURNAL_OFF);
    assert!(MAX_PREFIXES <= 64);
    assert!(std::mem::size_of::<Journal>() as u64 == JOURNAL_KEY_OFF - JOURNAL_OFF);
    assert!(JOURNAL_KEY_OFF + MAX_KEY_LEN as u64 <= SEG_HEADER_BYTES);
    assert!(std::mem::size_of::<RecHeader>() == 40);
    assert!(std::mem::align_of::<RecHeader>() == 8);
    assert!(std::mem::size_of::<RingHeader>() == 512);
    assert!(std::mem::size_of::<BoxCtl>() == 256);
    assert!(std::mem::size_of::<ResultEntry>() == 32);
    assert!(std::mem::size_of::<ReqHeader>() == 32);
    // Atomics must have the same in-memory representation as the integers they wrap.
    assert!(std::mem::size_of::<AtomicU64>() == 8 && std::mem::align_of::<AtomicU64>() == 8);
};

/// A signature of the layout: sizes of every shared struct folded together. A build whose
/// structs differ refuses a segment written by another, even at the same format version.
pub const LAYOUT_SIG: u32 = fnv(&[
    std::mem::size_of::<SegHeader>(),
    std::mem::size_of::<RecHeader>(),
    std::mem::size_of::<RingHeader>(),
    std::mem::size_of::<BoxCtl>(),
    std::mem::size_of::<ResultEntry>(),
    std::mem::size_of::<ReqHeader>(),
    std::mem::size_of::<Journal>(),
    std::mem::size_of::<NsEntry>(),
    NS_TABLE_OFF as usize,
    MAX_NAMESPACES,
    std::mem::size_of::<PrefixTable>(),
    PREFIX_TABLE_OFF as usize,
    SEG_HEADER_BYTES as usize,
    HINT_GRANULE as usize,
    SLOT_TAG_SHIFT as usize,
    REC_ALIGN as usize,
]);

/// The signature of format-2 segments (no prefix table).
pub const LAYOUT_SIG_V2: u32 = fnv(&[
    std::mem::size_of::<SegHeader>(),
    std::mem::size_of::<RecHeader>(),
    std::mem::size_of::<RingHeader>(),
    std::mem::size_of::<BoxCtl>(),
    std::mem::size_of::<ResultEntry>(),
    std::mem::size_of::<ReqHeader>(),
    std::mem::size_of::<Journal>(),
    std::mem::size_of::<NsEntry>(),
    NS_TABLE_OFF as usize,
    MAX_NAMESPACES,
    SEG_HEADER_BYTES as usize,
    HINT_GRANULE as usize,
    SLOT_TAG_SHIFT as usize,
    REC_ALIGN as usize,
]);

/// The signature of format-1 segments (the same structs, no namespace table).
pub const LAYOUT_SIG_V1: u32 = fnv(&[
    std::mem::size_of::<SegHeader>(),
    std::mem::size_of::<RecHeader>(),
    std::mem::size_of::<RingHeader>(),
    std::mem::size_of::<BoxCtl>(),
    std::mem::size_of::<ResultEntry>(),
    std::mem::size_of::<ReqHeader>(),
    std::mem::size_of::<Journal>(),
    SEG_HEADER_BYTES as usize,
    HINT_GRANULE as usize,
    SLOT_TAG_SHIFT as usize,
    REC_ALIGN as usize,
]);

const fn fnv(parts: &[usize]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < parts.len() {
        h ^= parts[i] as u32;
        h = h.wrapping_mul(0x0100_0193);
        i += 1;
    }
    h
}

/// Round `n` up to a multiple of `a` (a power of two).
pub const fn align_up(n: u64, a: u64) -> u64 {
    (n + a - 1) & !(a - 1)
}

/// Bytes a record with this key and value occupies in the heap.
pub const fn record_size(key_len: u64, val_len: u64) -> u64 {
    align_up(REC_HEADER_BYTES + key_len + val_len, REC_ALIGN)
}

/// Pack an index slot.
#[inline]
pub fn slot_pack(hash: u64, off: u64) -> u64 {
    ((hash >> SLOT_TAG_SHIFT) << SLOT_TAG_SHIFT) | (off / REC_ALIGN)
}

/// Record offset in an index slot.
#[inline]
pub fn slot_off(slot: u64) -> u64 {
    (slot & SLOT_OFF_MASK) * REC_ALIGN
}

/// Whether a slot's tag matches a hash.
#[inline]
pub fn slot_tag_matches(slot: u64, hash: u64) -> bool {
    (slot >> SLOT_TAG_SHIFT) == (hash >> SLOT_TAG_SHIFT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_sit_where_the_shared_structs_say() {
        let f = ReqFields { len: 72, op: 1, flags: 2, key_len: 3, ticket: 4, arg: 5, arg2: 6 };
        let b = f.encode();
        let want: [u8; 32] = [
            72, 0, 0, 0, 1, 2, 3, 0, 4, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0,
            0, 0, 0,
        ];
        assert_eq!(b, want);
        assert_eq!(ReqFields::decode(&b), f);
        assert_eq!(ReqFields::peek(&ReqFields::pad(16)), (16, op::PAD));
        let r = rec_header(64, 3, 9, 0x1122, 7, 99);
        assert_eq!(&r[..12], &[64, 0, 0, 0, KIND_ITEM, 0, 3, 0, 9, 0, 0, 0]);
        assert_eq!(&r[12..16], &[0; 4], "crc is stored after the body");
        assert_eq!(u64::from_le_bytes(r[16..24].try_into().unwrap()), 0x1122);
        assert_eq!(u64::from_le_bytes(r[24..32].try_into().unwrap()), 7);
        assert_eq!(u64::from_le_bytes(r[32..40].try_into().unwrap()), 99);
        assert_eq!(&rec_pad(24)[..5], &[24, 0, 0, 0, KIND_PAD]);
    }

    #[test]
    fn slot_round_trip() {
        let h = 0xdead_beef_1234_5678u64;
        for off in [4096u64, 8192 + 8, (1 << 40) + 16] {
            let s = slot_pack(h, off);
            assert_ne!(s, 0);
            assert_eq!(slot_off(s), off);
            assert!(slot_tag_matches(s, h));
            assert!(!slot_tag_matches(s, h ^ (1 << 63)));
        }
    }

    #[test]
    fn record_sizes_are_aligned() {
        assert_eq!(record_size(0, 0), 40);
        assert_eq!(record_size(1, 0), 48);
        assert_eq!(record_size(3, 5), 48);
        assert_eq!(record_size(3, 6), 56);
    }

    #[test]
    fn magic_bytes_are_readable() {
        assert_eq!(&SEG_MAGIC.to_le_bytes(), b"SURPDB\0\x01");
        assert_eq!(&RING_MAGIC.to_le_bytes(), b"SURPRNG\x01");
    }
}

// ---------------------------------------------------------------- records.surp

pub const REC_MAGIC: u64 = u64::from_le_bytes(*b"SURPREC\x01");
/// Version of the records file. 2: the file grows a chunk at a time (`nchunks` and `size`
/// change while it serves; the chunk table has room for [`MAX_AREA`] / [`CHUNK`] chunks,
/// `max_chunks`). Version 1 files (a chunk table for the size they were made with) are read
/// and served at that size: [`RECORDS_FIXED_VERSION`].
pub const RECORDS_VERSION: u32 = 2;
/// The records file version served as it is, without growing (dump and load move its
/// records to a growing file).
pub const RECORDS_FIXED_VERSION: u32 = 1;
pub const CHUNK_SHIFT: u32 = 22;
pub const CHUNK: u64 = 1 << CHUNK_SHIFT;
/// Offsets in ids have 36 bits: the chunk area is at most 64 GiB.
pub const MAX_AREA: u64 = 1 << 36;
/// Largest stored (compressed) record.
pub const MAX_RECORD: u64 = CHUNK - 16;

/// Record header bits: the record is live; the length continues in a second byte.
pub const REC_LIVE: u8 = 0x80;
pub const REC_EXT: u8 = 0x40;

/// Table log entry kinds.
pub const T_FIELD: u8 = 1;
pub const T_DOMAIN: u8 = 2;
pub const T_MODEL: u8 = 3;
/// A model compressed with zstd: varint(its length), then one zstd frame (30% smaller on
/// the development corpus; version 2 files from this version on).
pub const T_MODEL_ZSTD: u8 = 4;
/// Largest model a table log entry may hold once decompressed (a forged length cannot make
/// a reader allocate more).
pub const MAX_MODEL_BYTES: u64 = 64 << 20;

/// Chunk states.
pub const C_FREE: u32 = 0;
pub const C_ACTIVE: u32 = 1;
pub const C_FULL: u32 = 2;
pub const C_RETIRED: u32 = 3;

#[repr(C)]
pub struct RecFileHeader {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub layout_sig: AtomicU32,
    /// Bytes of the file in use: `chunks_off + nchunks * CHUNK` (version 2: published with
    /// `nchunks` after the file was extended; the file may be longer after a crash between).
    pub size: AtomicU64,
    /// Chunks the file holds (version 2: grows, Release after the file was extended).
    pub nchunks: AtomicU64,
    pub chunk_tab_off: AtomicU64,
    pub tables_off: AtomicU64,
    pub tables_cap: AtomicU64,
    pub chunks_off: AtomicU64,
    /// Random per file: seeds record checks.
    pub seed: AtomicU64,
    pub created_ms: AtomicU64,
    /// 1 = compact codec for models trained automatically.
    pub compact: AtomicU32,
    pub _r0: AtomicU32,
    /// Room in the chunk table (version 2; the chunk count it can grow to).
    pub max_chunks: AtomicU64,
    /// The most bytes the file may grow to (`records_size`, set by each daemon at attach and
    /// reload; 0 in version 1 files).
    pub limit: AtomicU64,
    /// The drift baseline: stored bytes per million bytes of value encoding (0 in files
    /// made before it, or with no model yet).
    pub baseline_ppm: AtomicU64,
    /// Records stored as a client compressed them (0 in files made before it; see
    /// `Client::encode_record`).
    pub client_encoded: AtomicU64,
    pub _pad0: [AtomicU64; 1],
    // ---- daemon state (offset 128) ----
    /// End of the published table log (bytes from tables_off).
    pub tables_end: AtomicU64,
    /// Chunk being filled + 1 (0: none yet).
    pub active: AtomicU64,
    pub nmodels: AtomicU64,
    pub live: AtomicU64,
    pub live_bytes: AtomicU64,
    pub inserted: AtomicU64,
    pub removed: AtomicU64,
    /// Bytes of chunk space used (sum of fills of chunks in use).
    pub used_bytes: AtomicU64,
    /// The model lifecycle (0 in files made before it): live records when the current
    /// model was trained (the next growth step is ten times it), records in its sample,
    /// bytes per record (x1000) of its first full measure (the drift baseline), and how many
    /// models were trained without being asked.
    pub trained_live: AtomicU64,
    pub train_sample: AtomicU64,
    pub baseline_bpr_milli: AtomicU64,
    pub auto_trainings: AtomicU64,
    /// Bytes per record (x1000) of the last measure of records as they came in.
    pub recent_bpr_milli: AtomicU64,
    /// Drift trainings whose model was not installed, not beating the one in use.
    pub drift_models_discarded: AtomicU64,
    /// Trainings that inserts waited for (see `RecStore::insert_should_wait`).
    pub trainings_waited_for: AtomicU64,
    /// Records inserted in the plain value encoding, before any model (0 in files made
    /// before this count).
    pub plain_inserted: AtomicU64,
}

#[repr(C)]
pub struct ChunkCtl {
    pub fill: AtomicU32,
    pub gen: AtomicU32,
    /// Model index + 1 its records use; 0 = stored in the plain value encoding.
    pub model: AtomicU32,
    pub state: AtomicU32,
    pub live: AtomicU32,
    /// Records ever appended to the chunk (0 in files made before it): its bytes per record
    /// is `fill / appended`.
    pub appended: AtomicU32,
    pub retire_epoch: AtomicU64,
}

const _: () = {
    assert!(std::mem::size_of::<RecFileHeader>() == 256);
    assert!(std::mem::offset_of!(RecFileHeader, tables_end) == 128);
    assert!(std::mem::size_of::<ChunkCtl>() == 32);
};

pub const REC_LAYOUT_SIG: u32 = (std::mem::size_of::<RecFileHeader>() as u32) << 16
    | (std::mem::size_of::<ChunkCtl>() as u32) << 8
    | CHUNK_SHIFT;

/// The names of a data directory's files, in one place.
pub mod files {
    use std::path::{Path, PathBuf};

    pub const DATA: &str = "data.surp";
    pub const RING: &str = "ring.surp";
    pub const RECORDS: &str = "records.surp";
    pub const LOCK: &str = "surpd.lock";

    pub fn data_path(dir: &Path) -> PathBuf {
        dir.join(DATA)
    }
    pub fn ring_path(dir: &Path) -> PathBuf {
        dir.join(RING)
    }
    pub fn records_path(dir: &Path) -> PathBuf {
        dir.join(RECORDS)
    }
    pub fn lock_path(dir: &Path) -> PathBuf {
        dir.join(LOCK)
    }
}
