//! Statistics, read by anyone from the two mappings (no request to the daemon).

use std::sync::atomic::Ordering;

use crate::layout::*;
use crate::ring::Ring;
use crate::segment::Segment;

/// Every counter and gauge, by name, in a stable order.
pub fn gather(seg: &Segment, ring: &Ring) -> Vec<(&'static str, u64)> {
    let h = seg.hdr();
    let r = ring.hdr();
    let (mut hits, mut misses, mut corrupt) = (
        r.retired_hits.load(Ordering::Relaxed),
        r.retired_misses.load(Ordering::Relaxed),
        r.retired_corrupt.load(Ordering::Relaxed),
    );
    let (mut clients, mut pending) = (0u64, 0u64);
    let mut waits = r.retired_queue_waits.load(Ordering::Relaxed);
    for b in 0..ring.nboxes {
        let c = ring.ctl(b);
        hits += c.hits.load(Ordering::Relaxed);
        misses += c.misses.load(Ordering::Relaxed);
        corrupt += c.corrupt.load(Ordering::Relaxed);
        if c.owner_pid.load(Ordering::Relaxed) != 0 {
            clients += 1;
        }
        pending += c.tail.load(Ordering::Relaxed).saturating_sub(c.head.load(Ordering::Relaxed));
        waits += c.queue_waits.load(Ordering::Relaxed);
    }
    let head = h.head.load(Ordering::Relaxed);
    let free_limit = h.free_limit.load(Ordering::Relaxed);
    let daemon_pid = r.daemon_pid.load(Ordering::Relaxed);
    let ready = r.ready.load(Ordering::Relaxed);
    let mut v = vec![
        ("items", h.items.load(Ordering::Relaxed)),
        ("bytes", h.live_bytes.load(Ordering::Relaxed)),
        // Header + the index pages that hold entries + the part of the heap in use (live,
        // dead-not-yet-cleaned, padding). The index is sparse until written: with n items
        // hashed over P pages, P (1 - e^(-n/P)) pages are expected to hold one.
        ("bytes_used", {
            let pages = (seg.slots * 8).div_ceil(PAGE) as f64;
            let n = h.items.load(Ordering::Relaxed) as f64;
            let index = (pages * (1.0 - (-n / pages).exp())) as u64 * PAGE;
            SEG_HEADER_BYTES + index + head.saturating_sub(free_limit).min(seg.cap())
        }),
        ("heap_used", head.saturating_sub(free_limit).min(seg.cap())),
        ("capacity", seg.size()),
        ("max_size", seg.max_size()),
        ("heap_capacity", seg.cap()),
        ("high_water", crate::heap::high_water(seg)),
        ("cleaner_reserve", crate::heap::reserve(seg)),
        ("index_slots", seg.slots),
        ("max_items", seg.slots * INDEX_MAX_LOAD_16THS / 16),
        ("max_value", seg.max_value),
        ("hits", hits),
        ("misses", misses),
        ("sets", h.c_sets.load(Ordering::Relaxed)),
        ("deletes", h.c_deletes.load(Ordering::Relaxed)),
        ("incrs", h.c_incrs.load(Ordering::Relaxed)),
        ("touches", h.c_touches.load(Ordering::Relaxed)),
        ("clears", h.c_clears.load(Ordering::Relaxed)),
        ("evictions", h.c_evictions.load(Ordering::Relaxed)),
        ("evictions_without_pressure", h.c_evictions_no_pressure.load(Ordering::Relaxed)),
        ("expirations", h.c_expirations.load(Ordering::Relaxed)),
        ("relocations", h.c_relocations.load(Ordering::Relaxed)),
        ("requests", h.c_requests.load(Ordering::Relaxed)),
        ("errors", h.c_errors.load(Ordering::Relaxed)),
        ("full_errors", h.c_full.load(Ordering::Relaxed)),
        ("reclaim_waits", h.c_reclaim_waits.load(Ordering::Relaxed)),
        ("corrupt_reads", corrupt),
        ("quarantined", h.c_corrupt.load(Ordering::Relaxed)),
        ("clients", clients),
        ("ring_pending_bytes", pending),
        ("ring_queue_waits", waits),
        ("ring_clients_max", ring.nboxes as u64),
        ("epoch", h.epoch.load(Ordering::Relaxed)),
        ("generation", h.generation.load(Ordering::Relaxed)),
        ("eviction_policy", h.policy.load(Ordering::Relaxed) as u64),
        ("daemon_pid", if ready == 1 { daemon_pid as u64 } else { 0 }),
        ("format_version", h.format_version.load(Ordering::Relaxed) as u64),
    ];
    // Tiered mode: the upstream connection and what came through it.
    let lease = h.up_lease_ms.load(Ordering::Relaxed);
    if lease != 0 {
        let now = crate::shm::now_ms();
        v.extend([
            ("upstream_connected", r.up_connected.load(Ordering::Relaxed)),
            ("upstream_serving", (now < lease) as u64),
            ("upstream_round_trips", r.up_round_trips.load(Ordering::Relaxed)),
            ("upstream_read_throughs", r.up_read_throughs.load(Ordering::Relaxed)),
            ("upstream_invalidations", r.up_invalidations.load(Ordering::Relaxed)),
            ("upstream_stale_drops", r.up_flushes.load(Ordering::Relaxed)),
            ("upstream_reconnects", r.up_reconnects.load(Ordering::Relaxed)),
            ("upstream_errors", r.up_errors.load(Ordering::Relaxed)),
            ("upstream_replays", r.up_replays.load(Ordering::Relaxed)),
            ("upstream_lease_left_ms", lease.saturating_sub(now)),
        ]);
    }
    v
}
