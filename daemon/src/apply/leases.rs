//! Stampede leases (`get_or_set`): on a miss, one client across all processes computes the
//! value; the others wait for it. A lease is a record of the key whose value is
//! `value::LEASE` + the holder's pid and start time: readers take it for a miss, the
//! holder's set replaces it, and it expires by itself after the time the holder asked for.
//! The daemon knows its clients' processes, so a lease whose holder died is handed to the
//! next caller at once, not after that time.

use std::sync::atomic::Ordering;

use super::Store;
use crate::heap::CleanStats;
use crate::layout::*;
use crate::ring::{Reply, Req, Ring};
use crate::shm;
use crate::value::LEASE;

/// Longest lease (an hour): a computation that takes longer is not a cache's.
const MAX_LEASE_MS: u64 = 3_600_000;

/// The holder a lease record names: (pid, process start time, token).
fn holder(value: &[u8]) -> Option<(u32, u64, u64)> {
    match value {
        [LEASE, rest @ ..] if rest.len() == 20 => Some((
            u32::from_le_bytes(rest[..4].try_into().ok()?),
            u64::from_le_bytes(rest[4..12].try_into().ok()?),
            u64::from_le_bytes(rest[12..].try_into().ok()?),
        )),
        _ => None,
    }
}

/// The caller of `req`: its box's owner process (in the ring the box is in: a client still
/// on a replaced ring has its box there), and its token.
fn caller(req: &Req<'_>) -> (u32, u64, u64) {
    (req.owner.0, req.owner.1, req.arg2)
}

impl Store {
    /// LEASE: `arg` is how long the caller may take (ms). Value 1: granted (the caller must
    /// set the key, or give the lease back); 2: held by another live client (aux: when it
    /// runs out); 0: the key holds a value (read it).
    pub(super) fn lease(&mut self, ring: &Ring, req: &Req<'_>, st: &mut CleanStats) -> Reply {
        if req.arg == 0 {
            return Reply::status(status::BAD_REQUEST);
        }
        let me = caller(req);
        let now = shm::now_ms();
        let hash = self.seg.hash(req.key);
        if let Some(cur) = self.seg.current(req.key, hash) {
            if self.seg.alive(&cur, now) {
                match holder(cur.value) {
                    None => return Reply::ok(0),
                    Some(h) if h == me => {} // asked again: renewed below
                    Some((pid, start, _)) if shm::process_alive(pid, start) => {
                        return Reply { status: status::OK, value: 2, aux: cur.expires_ms }
                    }
                    Some(_) => {
                        crate::log::info(&format!(
                            "lease on {} handed on: its holder died",
                            crate::protocol::key_repr(req.key)
                        ));
                    }
                }
            }
        }
        let mut v = Vec::with_capacity(21);
        v.push(LEASE);
        v.extend_from_slice(&me.0.to_le_bytes());
        v.extend_from_slice(&me.1.to_le_bytes());
        v.extend_from_slice(&me.2.to_le_bytes());
        let expires = now + req.arg.min(MAX_LEASE_MS);
        let r = self.put(ring, req.key, hash, &v, expires, st, |_| Reply::ok(1));
        if r.status == status::OK {
            // A lease is not a set a user made.
            self.seg.hdr().c_sets.fetch_sub(1, Ordering::Relaxed);
        }
        r
    }

    /// UNLEASE: remove the key if it is a lease this client holds.
    pub(super) fn unlease(&mut self, req: &Req<'_>) -> Reply {
        let me = caller(req);
        let hash = self.seg.hash(req.key);
        match self.seg.current(req.key, hash).and_then(|r| holder(r.value)) {
            Some(h) if h == me => {
                self.delete(req.key);
                Reply::ok(1)
            }
            _ => Reply::ok(0),
        }
    }
}
