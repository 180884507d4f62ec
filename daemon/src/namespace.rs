//! Namespaces: a store shared by several applications (or Django aliases) partitioned so that
//! each can be cleared alone, in O(1), have its own quotas and its own counts.
//!
//! A key of namespace `id` (1..[`MAX_NAMESPACES`]) is stored as `[NS_MARK, id]` + the key;
//! a key of the default namespace (0) as itself, or as `[NS_MARK, 0]` + the key if it starts
//! like a namespaced one (`NS_MARK` then a byte below `MAX_NAMESPACES`: no UTF-8 text does,
//! and a segment of the format before namespaces has such bytes keys re-keyed when it is
//! upgraded, see [`Segment::keys_to_escape`]). So a record's
//! namespace is read off its key, the index and the heap need no change, and the table in the
//! header page ([`NsEntry`]) holds what is per namespace: the name, the version its last
//! clear stopped at, quotas and counts.
//!
//! A clear is one store: the namespace's `min_version` becomes the version counter, and a
//! record below it is gone for readers (who load it on every hit), for the writer (a set over
//! it counts as new) and for housekeeping (the sweep unlinks it, the cleaner drops it instead
//! of moving it). Counts are kept by the writer here, in one place: the global `items` and
//! `live_bytes` count index entries (what the load limit and `check` need), a namespace's
//! count only its live ones.

use std::sync::atomic::Ordering;

use crate::layout::*;
use crate::segment::Segment;

/// The namespace a stored key belongs to.
#[inline]
pub fn ns_of(key: &[u8]) -> usize {
    match key {
        [NS_MARK, id, ..] if (*id as usize) < MAX_NAMESPACES => *id as usize,
        _ => 0,
    }
}

/// Whether a key of namespace `ns` is stored behind a prefix (always, but in the default
/// namespace, where only a key that starts like a namespaced one is).
#[inline]
pub fn needs_prefix(ns: usize, key: &[u8]) -> bool {
    ns != 0 || ns_of(key) != 0 || key.starts_with(&[NS_MARK, 0])
}

/// The stored form of `key` in namespace `ns`, written into `out` (cleared first); for the
/// default namespace, `key` itself unless it must be escaped.
pub fn stored_key<'a>(ns: usize, key: &'a [u8], out: &'a mut Vec<u8>) -> &'a [u8] {
    if !needs_prefix(ns, key) {
        return key;
    }
    out.clear();
    out.extend_from_slice(&[NS_MARK, ns as u8]);
    out.extend_from_slice(key);
    out
}

/// The key as its namespace's users know it (the stored form without its prefix).
pub fn user_key(stored: &[u8]) -> &[u8] {
    match stored {
        [NS_MARK, id, rest @ ..] if (*id as usize) < MAX_NAMESPACES => rest,
        _ => stored,
    }
}

/// Whether `name` may name a namespace: 1 to [`NS_NAME_MAX`] bytes of printable ASCII.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name.len() <= NS_NAME_MAX && name.iter().all(|b| b.is_ascii_graphic())
}

impl Segment {
    /// Entry `id` of the namespace table.
    #[inline]
    pub fn ns(&self, id: usize) -> &NsEntry {
        self.region.get(NS_TABLE_OFF + (id.min(MAX_NAMESPACES - 1) * size_of::<NsEntry>()) as u64)
    }

    /// Whether the record of `key` at `version` was removed by its namespace's last clear.
    #[inline]
    pub fn ns_cleared(&self, key: &[u8], version: u64) -> bool {
        // SYNC POINT: Acquire; pairs with the Release store of `min_version` in `ns_clear`.
        version < self.ns(ns_of(key)).min_version.load(Ordering::Acquire)
    }

    /// The name of namespace `id` ("" for the default one; None for a free slot).
    pub fn ns_name(&self, id: usize) -> Option<Vec<u8>> {
        if id == 0 {
            return Some(Vec::new());
        }
        let e = self.ns(id);
        if id >= MAX_NAMESPACES || e.used.load(Ordering::Acquire) != 1 {
            return None;
        }
        let len = (e.name_len.load(Ordering::Relaxed) as usize).min(NS_NAME_MAX);
        let mut b = Vec::with_capacity(24);
        for w in &e.name {
            b.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        b.truncate(len);
        Some(b)
    }

    /// The id of the namespace named `name`, if it exists.
    pub fn ns_find(&self, name: &[u8]) -> Option<usize> {
        if name.is_empty() {
            return Some(0);
        }
        (1..MAX_NAMESPACES).find(|&i| self.ns_name(i).as_deref() == Some(name))
    }

    /// Writer-side: the id of namespace `name`, made in a free slot if new. None when every
    /// slot is taken (or the name is not valid).
    pub fn ns_open(&self, name: &[u8]) -> Option<usize> {
        if !valid_name(name) {
            return None;
        }
        if let Some(id) = self.ns_find(name) {
            return Some(id);
        }
        let id = (1..MAX_NAMESPACES).find(|&i| self.ns(i).used.load(Ordering::Relaxed) == 0)?;
        let e = self.ns(id);
        let mut padded = [0u8; NS_NAME_MAX];
        padded[..name.len()].copy_from_slice(name);
        for (w, chunk) in e.name.iter().zip(padded.chunks(8)) {
            w.store(u64::from_le_bytes(chunk.try_into().expect("8 bytes")), Ordering::Relaxed);
        }
        e.name_len.store(name.len() as u32, Ordering::Relaxed);
        for c in [&e.items, &e.bytes, &e.max_items, &e.max_bytes, &e.sets, &e.evictions] {
            c.store(0, Ordering::Relaxed);
        }
        e.clears.store(0, Ordering::Relaxed);
        // Nothing of an earlier namespace in this slot (there is none: slots are never
        // freed) could show through: everything before now is below its clear point.
        e.min_version.store(self.hdr().version.load(Ordering::Relaxed), Ordering::Relaxed);
        // SYNC POINT: Release; readers of the name (`ns_name`) load `used` with Acquire.
        e.used.store(1, Ordering::Release);
        Some(id)
    }

    /// Writer-side: namespace `id` is empty from now on (O(1)).
    pub fn ns_clear(&self, id: usize) {
        let e = self.ns(id);
        // SYNC POINT: Release; pairs with the Acquire load in `ns_cleared`.
        e.min_version.store(self.hdr().version.load(Ordering::Relaxed), Ordering::Release);
        e.items.store(0, Ordering::Relaxed);
        e.bytes.store(0, Ordering::Relaxed);
        e.clears.fetch_add(1, Ordering::Relaxed);
    }

    /// Writer-side: a new entry of `size` bytes for `key` was published.
    pub fn count_added(&self, key: &[u8], size: u64) {
        let h = self.hdr();
        h.items.fetch_add(1, Ordering::Relaxed);
        h.live_bytes.fetch_add(size, Ordering::Relaxed);
        let e = self.ns(ns_of(key));
        e.items.fetch_add(1, Ordering::Relaxed);
        e.bytes.fetch_add(size, Ordering::Relaxed);
        e.sets.fetch_add(1, Ordering::Relaxed);
    }

    /// Writer-side: the record of `key` (`old_version`, `old_size`) was replaced by one of
    /// `new_size` bytes in the same index slot.
    pub fn count_replaced(&self, key: &[u8], old_version: u64, old_size: u64, new_size: u64) {
        let h = self.hdr();
        h.live_bytes
            .fetch_sub(old_size.min(h.live_bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
        h.live_bytes.fetch_add(new_size, Ordering::Relaxed);
        let e = self.ns(ns_of(key));
        if self.ns_cleared(key, old_version) {
            e.items.fetch_add(1, Ordering::Relaxed);
        } else {
            e.bytes.fetch_sub(old_size.min(e.bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
        }
        e.bytes.fetch_add(new_size, Ordering::Relaxed);
        e.sets.fetch_add(1, Ordering::Relaxed);
    }

    /// Writer-side: the indexed record of `key` (`version`, `size`) was unlinked (deleted,
    /// expired, evicted, or swept after a clear).
    pub fn count_removed(&self, key: &[u8], version: u64, size: u64) {
        let h = self.hdr();
        h.items.fetch_sub(1.min(h.items.load(Ordering::Relaxed)), Ordering::Relaxed);
        h.live_bytes.fetch_sub(size.min(h.live_bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
        if !self.ns_cleared(key, version) {
            let e = self.ns(ns_of(key));
            e.items.fetch_sub(1.min(e.items.load(Ordering::Relaxed)), Ordering::Relaxed);
            e.bytes.fetch_sub(size.min(e.bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
        }
    }

    /// Keys of the default namespace stored as they are that now read as namespaced (a
    /// segment of the format before namespaces could hold bytes keys starting
    /// `[NS_MARK, id]`): the upgrade stores each again in its escaped form. Only records of
    /// a version below `before` (those the upgrade wrote are escaped already).
    pub fn keys_to_escape(&self, before: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for i in 0..self.slots {
            let v = self.slot(i).load(Ordering::Relaxed);
            if v == 0 {
                continue;
            }
            if let Some(r) = self.record(slot_off(v)) {
                if r.version < before
                    && r.key.first() == Some(&NS_MARK)
                    && r.key.len() >= 2
                    && (r.key[1] as usize) < MAX_NAMESPACES
                {
                    out.push(r.key.to_vec());
                }
            }
        }
        out
    }

    /// Writer-side: set every namespace's counts from the index (what a recount after a
    /// crash, or the upgrade of a segment made before namespaces, does). Reads every
    /// indexed record's header and key.
    pub fn recount_namespaces(&self) {
        let mut items = [0u64; MAX_NAMESPACES];
        let mut bytes = [0u64; MAX_NAMESPACES];
        for i in 0..self.slots {
            let v = self.slot(i).load(Ordering::Relaxed);
            if v == 0 {
                continue;
            }
            if let Some(r) = self.record(slot_off(v)) {
                if !self.ns_cleared(r.key, r.version) {
                    items[ns_of(r.key)] += 1;
                    bytes[ns_of(r.key)] += r.size;
                }
            }
        }
        for id in 0..MAX_NAMESPACES {
            let e = self.ns(id);
            e.items.store(items[id], Ordering::Relaxed);
            e.bytes.store(bytes[id], Ordering::Relaxed);
        }
        self.ns(0).used.store(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_their_namespace_and_come_back_unchanged() {
        let mut buf = Vec::new();
        assert_eq!(stored_key(0, b"plain", &mut buf), b"plain");
        assert_eq!(ns_of(b"plain"), 0);
        // A bytes key that starts like a namespaced one is escaped; others stay as they are.
        assert_eq!(stored_key(0, b"\xffraw", &mut buf), b"\xffraw");
        let esc = stored_key(0, b"\xff\x05raw", &mut buf).to_vec();
        assert_eq!(esc, b"\xff\x00\xff\x05raw");
        assert_eq!((ns_of(&esc), user_key(&esc)), (0, &b"\xff\x05raw"[..]));
        let esc0 = stored_key(0, b"\xff\x00x", &mut buf).to_vec();
        assert_eq!((ns_of(&esc0), user_key(&esc0)), (0, &b"\xff\x00x"[..]));
        let k = stored_key(5, b"user:1", &mut buf).to_vec();
        assert_eq!(k, b"\xff\x05user:1");
        assert_eq!((ns_of(&k), user_key(&k)), (5, &b"user:1"[..]));
        // A key no client makes (an id past the table) is the default namespace's, whole.
        assert_eq!((ns_of(b"\xff\x90x"), user_key(b"\xff\x90x")), (0, &b"\xff\x90x"[..]));
        assert!(valid_name(b"sessions") && !valid_name(b"") && !valid_name(b"a b"));
        assert!(!valid_name(&[b'x'; NS_NAME_MAX + 1]));
    }
}
