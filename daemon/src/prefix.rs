//! Prefix deletion in O(1): `delete_prefix("user:42:")` removes every key of the namespace
//! that starts with it, whatever their number, with one entry in the header's
//! [`PrefixTable`] (the namespace, the prefix's length and hash, and the version counter at
//! that moment), as a namespace's clear is one store of its `min_version`.
//!
//! A record is gone when a live entry's namespace is its own, its key (as the namespace's
//! users know it) starts with the entry's prefix (the hash of as many of its first bytes
//! matches), and its version is below the entry's. Readers copy the table before they probe
//! the index ([`Segment::prefixes`]: one load while it is empty) and test a hit against the
//! copy; the writer treats such a record as absent; the sweep unlinks it and the cleaner
//! drops it instead of moving it.
//!
//! An entry is freed once the sweep has looked at every index slot since it was made: then no
//! slot names a record it removed. An unlink that moves such a record from where the sweep
//! looks next (or after) to before it reports it (`Segment::sweep_recheck`), and the sweep
//! unlinks those first. A reader's copy was taken before its probe, so the entries
//! it no longer sees were freed after their records were unlinked, which its probe cannot
//! find. While entries are live the sweep runs every 10 ms even under load; a deletion
//! that finds the table full first sweeps the whole index at once (O(slots), at most once
//! per [`MAX_PREFIXES`] deletions).

use std::sync::atomic::{fence, Ordering};

use crate::layout::*;
use crate::namespace::{ns_of, user_key};
use crate::segment::Segment;

/// The prefix deletions in force when a read began (see the module comment).
#[derive(Clone, Copy)]
pub struct Prefixes {
    n: usize,
    /// (version, ns_len, hash) of each.
    e: [(u64, u64, u64); MAX_PREFIXES],
}

impl Prefixes {
    /// Whether the record of stored key `key` at `version` was removed by one of them.
    pub fn deleted(&self, seg: &Segment, key: &[u8], version: u64) -> bool {
        let (ns, k) = (ns_of(key) as u64, user_key(key));
        self.e[..self.n].iter().any(|&(v, ns_len, hash)| {
            let len = (ns_len >> 8) as usize;
            version < v && ns_len & 0xff == ns && k.len() >= len && seg.hash(&k[..len]) == hash
        })
    }
}

/// [`Prefixes::deleted`] for a copy that may be None (no deletion in force).
#[inline]
pub fn deleted(p: &Option<Prefixes>, seg: &Segment, key: &[u8], version: u64) -> bool {
    p.as_ref().is_some_and(|p| p.deleted(seg, key, version))
}

impl Segment {
    fn prefix_table(&self) -> &PrefixTable {
        self.region.get(PREFIX_TABLE_OFF)
    }

    /// A copy of the prefix deletions in force (None, after one load, when there is none).
    /// Take it before probing the index for the records to test against it.
    #[inline]
    pub fn prefixes(&self) -> Option<Prefixes> {
        let t = self.prefix_table();
        // SYNC POINT: Acquire; pairs with the Release stores of `live` and `version` by the
        // writer (an entry seen freed was freed after its records were unlinked).
        let live = t.live.load(Ordering::Acquire);
        if live == 0 {
            return None;
        }
        let mut p = Prefixes { n: 0, e: [(0, 0, 0); MAX_PREFIXES] };
        for (i, e) in t.entries.iter().enumerate() {
            if live & (1 << i) == 0 {
                continue;
            }
            let v = e.version.load(Ordering::Acquire);
            let (ns_len, hash) = (e.ns_len.load(Ordering::Relaxed), e.hash.load(Ordering::Relaxed));
            // SYNC POINT: the loads above happen before the version is read again.
            fence(Ordering::Acquire);
            if v == 0 || e.version.load(Ordering::Relaxed) != v {
                continue; // freed or rewritten meanwhile: made after this read began, or gone
            }
            p.e[p.n] = (v, ns_len, hash);
            p.n += 1;
        }
        (p.n > 0).then_some(p)
    }

    /// Writer-side: every key of namespace `ns` starting with `prefix` (a user key prefix,
    /// not empty) is gone from now on. The entry's index, or None when the table is full.
    pub fn prefix_delete(&self, ns: usize, prefix: &[u8]) -> Option<usize> {
        let t = self.prefix_table();
        let live = t.live.load(Ordering::Relaxed);
        let i = (0..MAX_PREFIXES).find(|i| live & (1 << i) == 0)?;
        let e = &t.entries[i];
        // A reader still copying the entry this one reuses must see its version change
        // before any other word does (the free stored 0, but a Release store does not keep
        // later stores behind it).
        e.version.store(0, Ordering::Relaxed);
        // SYNC POINT: Release fence; the words below are seen after the version's 0.
        fence(Ordering::Release);
        e.ns_len.store(((prefix.len() as u64) << 8) | ns as u64, Ordering::Relaxed);
        e.hash.store(self.hash(prefix), Ordering::Relaxed);
        // Every record written so far has a version below this (at least 1: never "free").
        let v = self.hdr().version.load(Ordering::Relaxed).max(1);
        // SYNC POINT: Release; the entry's words are visible before its version and bit.
        e.version.store(v, Ordering::Release);
        crate::crash::point("prefix entry written");
        t.live.store(live | (1 << i), Ordering::Release);
        Some(i)
    }

    /// Writer-side: entry `i` is free again (every record it removed is unlinked).
    pub fn prefix_free(&self, i: usize) {
        let t = self.prefix_table();
        t.live.fetch_and(!(1 << i), Ordering::Release);
        t.entries[i].version.store(0, Ordering::Release);
    }

    /// Writer-side: which entries are in force (a bit per entry).
    pub fn prefix_live(&self) -> u64 {
        self.prefix_table().live.load(Ordering::Relaxed)
    }

    /// Writer-side, at attach: an entry whose version is stored is in force (a crash
    /// between its version and its live bit left the deletion made).
    pub fn prefix_table_recount(&self) {
        let t = self.prefix_table();
        let live = (0..MAX_PREFIXES)
            .filter(|&i| t.entries[i].version.load(Ordering::Relaxed) != 0)
            .fold(0u64, |m, i| m | (1 << i));
        t.live.store(live, Ordering::Release);
    }

    /// Writer-side: an empty table (what a segment of an older format gets as it is
    /// upgraded: those bytes were padding).
    pub fn prefix_table_reset(&self) {
        let t = self.prefix_table();
        t.live.store(0, Ordering::Release);
        for w in &t._spare {
            w.store(0, Ordering::Relaxed);
        }
        for e in &t.entries {
            for w in [&e.version, &e.ns_len, &e.hash, &e._spare] {
                w.store(0, Ordering::Relaxed);
            }
        }
    }
}
