//! The apply loop's operations: each request, validated and applied atomically by the one
//! writer. Readers never see a half-applied request: every change becomes visible through one
//! Release store into an index slot (or a backward-shift delete under the seqlock).
//!
//! Files: this one holds the store and the dispatch of each request; `cache.rs` the cache
//! operations (set, delete, incr, touch, clear, growth, expiry sweeps); `records.rs` the
//! record-store operations; `recovery.rs` the journal and what a restart repairs.

use std::sync::atomic::Ordering;

use crate::heap::{CleanStats, Heap};
use crate::layout::*;
use crate::protocol::Op;
use crate::records::RecStore;
use crate::ring::{Reply, Req, Ring};
use crate::segment::Segment;

mod cache;
mod leases;
mod namespaces;
mod records;
mod recovery;
mod tiered;

pub use tiered::Tier;

/// The daemon's writable store: the segment plus the heap's in-memory state.
pub struct Store {
    pub seg: Segment,
    pub heap: Heap,
    /// The record store (the daemon attaches one; model tests run without).
    pub recs: Option<RecStore>,
    sweep_cursor: u64,
    /// The sweep cursor from which its current lap counts (an unlink that moved an entry
    /// behind the sweep starts it again), and each prefix entry's cursor when it was made:
    /// an entry is freed once the cursor is a whole index past both (`prefix.rs`).
    lap_from: u64,
    prefix_born: [u64; MAX_PREFIXES],
    /// (ring id, box, ticket, head after) of the request being applied, for the journal.
    ctx: Option<(u64, u32, u64, u64)>,
    /// Boxes (ring id, box) whose head request is answered later (a training): not polled
    /// until then.
    pub held: Vec<(u64, u32)>,
    /// An insert was left queued this pass to wait for a model being trained
    /// ([`crate::records::RecStore::insert_should_wait`]): the loop checks back soon.
    pub waiting_for_model: bool,
    /// The segment file, open read-write (the daemon grows it; it also holds its lock).
    pub data_file: Option<std::fs::File>,
    /// Per namespace, the log position its last cull or quota eviction stopped at (no live
    /// entry of it lies behind; 0: from the tail).
    ns_cursors: [u64; MAX_NAMESPACES],
    /// `pickle = false`: values holding a pickle are refused (loading one runs code).
    pub refuse_pickle: bool,
    /// A record sent compressed, decoded (kept between requests for its capacity).
    scratch: Vec<u8>,
}

/// Largest TTL accepted (about 100 years), so that expiry arithmetic never overflows.
const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

impl Store {
    pub fn new(seg: Segment) -> Store {
        let heap = Heap::load(&seg);
        Store {
            seg,
            heap,
            recs: None,
            sweep_cursor: 0,
            lap_from: 0,
            prefix_born: [0; MAX_PREFIXES],
            ctx: None,
            held: Vec::new(),
            waiting_for_model: false,
            data_file: None,
            ns_cursors: [0; MAX_NAMESPACES],
            refuse_pickle: false,
            scratch: Vec::new(),
        }
    }

    /// Apply one request and produce its reply. Never panics on bad input.
    pub fn apply(&mut self, ring: &Ring, req: &Req<'_>) -> Reply {
        if matches!(req.kind(), Some(Op::Insert | Op::Update))
            && self.recs.as_mut().is_some_and(|r| r.insert_should_wait())
        {
            // Not taken: it stays at its box's head, and nothing of it was applied.
            self.waiting_for_model = true;
            return Reply::status(status::LATER);
        }
        // The previous request is complete (its result is in the ring): the journal is stale.
        self.disarm();
        self.ctx = Some((req.ring_id, req.boxno, req.ticket, req.head_after));
        let h = self.seg.hdr();
        h.c_requests.fetch_add(1, Ordering::Relaxed);
        h.op_active.store(1, Ordering::Relaxed);
        crate::crash::point("operation begun");
        let reply = self.apply_inner(ring, req);
        // Counters are consistent with the index again.
        self.seg.hdr().op_active.store(0, Ordering::Release);
        crate::crash::point("operation ended");
        reply
    }

    /// Run `f`, a change to the index and counters outside `apply` (an upstream's answer or
    /// invalidation), flagged as an operation: a crash inside it makes the next start
    /// recount.
    pub(crate) fn in_operation<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        self.seg.hdr().op_active.store(1, Ordering::Relaxed);
        let r = f(self);
        self.seg.hdr().op_active.store(0, Ordering::Release);
        r
    }

    /// Whether `req` stores a value holding a pickle in a store that refuses them.
    pub fn pickle_refused(&self, req: &Req<'_>) -> bool {
        if !self.refuse_pickle {
            return false;
        }
        let value = match req.kind() {
            // A record sent compressed is checked once decoded (`Store::insert`).
            Some(Op::Insert | Op::Update) if req.flags & flag::ENCODED != 0 => return false,
            Some(Op::Set | Op::Add | Op::Append | Op::Merge | Op::Insert | Op::Update) => {
                req.payload
            }
            Some(Op::Train) if req.flags & flag::SAMPLE != 0 => req.payload,
            Some(Op::Cas) => req.payload.get(8..).unwrap_or_default(),
            _ => return false,
        };
        crate::value::has_pickle_within(value, self.seg.max_value)
    }

    fn apply_inner(&mut self, ring: &Ring, req: &Req<'_>) -> Reply {
        if req.key.len() > MAX_KEY_LEN {
            return Reply::status(status::BAD_REQUEST);
        }
        if self.pickle_refused(req) {
            return Reply::status(status::PICKLE_REFUSED);
        }
        let mut st = CleanStats::default();
        let reply = match req.kind() {
            Some(Op::Set | Op::Add) => self.set(ring, req, &mut st),
            Some(Op::Delete) => self.delete(req.key),
            Some(Op::Incr) => self.incr(ring, req, &mut st),
            Some(Op::Touch) => self.touch(ring, req, &mut st),
            Some(Op::Clear) => {
                self.clear();
                Reply::ok(0)
            }
            Some(Op::NsOpen) => self.ns_open(req),
            Some(Op::NsClear) => self.ns_clear_request(req.arg),
            Some(Op::NsCull) => self.ns_cull(req.arg, req.arg2),
            Some(Op::Lease) => self.lease(ring, req, &mut st),
            Some(Op::Unlease) => self.unlease(req),
            Some(Op::DeletePrefix) => self.delete_prefix(req.key),
            // Standalone: nothing to read through (tiered mode takes FETCH before this).
            Some(Op::Noop | Op::Fetch) => Reply::ok(0),
            Some(Op::Append) => self.append(ring, req, &mut st),
            Some(Op::Merge) => self.merge(ring, req, &mut st),
            Some(Op::Cas) => self.cas(ring, req, &mut st),
            Some(Op::Zadd) => self.zadd(ring, req, &mut st),
            Some(Op::Zrem) => self.zrem(ring, req, &mut st),
            Some(Op::Insert | Op::Update) => self.insert(req),
            Some(Op::Remove) => self.remove_record(req.arg),
            Some(Op::Train) => self.train(req),
            Some(Op::Resize) => match self.grow(req.arg) {
                Ok(n) if n <= req.arg => Reply::ok(n),
                Ok(n) => Reply { status: status::NOT_DONE, value: n, aux: 0 },
                Err(crate::Error::ValueTooLarge { max, .. }) => {
                    Reply { status: status::TOO_LARGE, value: max, aux: 0 }
                }
                Err(e) => {
                    crate::log::error(&format!("growth refused: {e}"));
                    Reply::status(status::NO_DISK_SPACE)
                }
            },
            None => Reply::status(status::BAD_REQUEST),
        };
        self.account(&st);
        let h = self.seg.hdr();
        if reply.status == status::SEGMENT_FULL {
            h.c_full.fetch_add(1, Ordering::Relaxed);
        }
        if !matches!(reply.status, status::OK | status::NOT_DONE | status::WRONG_TYPE) {
            h.c_errors.fetch_add(1, Ordering::Relaxed);
        }
        reply
    }

    fn account(&self, st: &CleanStats) {
        let h = self.seg.hdr();
        if st.evicted > 0 {
            h.c_evictions.fetch_add(st.evicted, Ordering::Relaxed);
        }
        if st.expired > 0 {
            h.c_expirations.fetch_add(st.expired, Ordering::Relaxed);
        }
        if st.relocated > 0 {
            h.c_relocations.fetch_add(st.relocated, Ordering::Relaxed);
        }
    }

    fn expiry(ttl_ms: u64, now: u64) -> u64 {
        if ttl_ms == 0 {
            0
        } else {
            now + ttl_ms.min(MAX_TTL_MS)
        }
    }
}
