//! Tiered mode's local half: what the apply loop does with the upstream's answers and
//! invalidations (see `upstream.rs` for the ordering argument). Upstream-sourced entries are
//! ordinary records; their currency is carried by two header words readers check: records
//! below `up_min_version` are unproven (a generation bump drops them all at once), and none
//! is served past `up_lease_ms`.

use std::sync::atomic::Ordering;

use super::Store;
use crate::heap::CleanStats;
use crate::ring::{Reply, Req, Ring};

impl Store {
    /// Enter or leave tiered mode at attach. Entering, nothing stored before is provably
    /// current (the daemon may have missed invalidations while it was down): every record
    /// is below the new minimum version, and nothing is served until the upstream answers.
    pub fn set_tiered(&mut self, on: bool) {
        let h = self.seg.hdr();
        if on {
            h.up_min_version.store(h.version.load(Ordering::Relaxed), Ordering::Release);
            h.up_lease_ms.store(1, Ordering::Release);
        } else {
            h.up_lease_ms.store(0, Ordering::Release);
            h.up_min_version.store(0, Ordering::Release);
        }
    }

    /// Every upstream-sourced entry stored so far is unproven from now on (a FLUSHALL, or a
    /// lost connection that may have lost invalidations). O(1); the sweep reclaims them.
    pub fn drop_upstream_generation(&mut self) {
        let h = self.seg.hdr();
        h.up_min_version.store(h.version.load(Ordering::Relaxed), Ordering::Release);
    }

    /// Local copies may be served until `until_ms` (unix ms); never moves back.
    pub fn extend_lease(&mut self, until_ms: u64) {
        self.seg.hdr().up_lease_ms.fetch_max(until_ms, Ordering::Release);
    }

    /// Drop the local copy of `key` (an invalidation, or a write whose upstream outcome is
    /// unknown). Outside any request: nothing is journaled (a restart in tiered mode
    /// drops every local copy anyway).
    pub fn drop_key(&mut self, key: &[u8]) -> bool {
        self.disarm();
        self.ctx = None;
        self.delete(key).status == crate::layout::status::OK
    }

    /// Store `value` for `key`, expiring at `expires_ms` (0: never), as part of request
    /// `req` (journaled like the request's own write); `answer` is the request's reply.
    pub fn put_for(
        &mut self,
        ring: &Ring,
        req: &Req<'_>,
        key: &[u8],
        value: &[u8],
        expires_ms: u64,
        answer: Reply,
    ) -> Reply {
        self.disarm();
        self.ctx = Some((req.ring_id, req.boxno, req.ticket, req.head_after));
        let mut st = CleanStats::default();
        let hash = self.seg.hash(key);
        let r = self.put(ring, key, hash, value, expires_ms, &mut st, |_| answer);
        self.account(&st);
        r
    }
}
