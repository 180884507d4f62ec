//! Namespace requests (see `namespace.rs` for the model): open (and set quotas), clear in
//! O(1), cull the oldest entries; and the quota check after each write into a namespace.

use std::sync::atomic::Ordering;

use super::Store;
use crate::heap::{entry_at, Entry};
use crate::layout::*;
use crate::namespace::{ns_of, valid_name};
use crate::ring::{Reply, Req, Ring};

impl Store {
    /// NS_OPEN: the payload is the max_bytes quota (8 bytes LE) then the name; `arg` the
    /// max_items quota (both set only with [`flag::QUOTA`]). Value: the namespace's id.
    pub(super) fn ns_open(&mut self, req: &Req<'_>) -> Reply {
        if req.arg2 != req.payload.len() as u64 || req.payload.len() < 8 {
            return Reply::status(status::BAD_REQUEST);
        }
        let (quota, name) = req.payload.split_at(8);
        if !valid_name(name) {
            return Reply::status(status::BAD_REQUEST);
        }
        let Some(id) = self.seg.ns_open(name) else {
            // Every slot of the table is taken (slots are never freed).
            return Reply {
                status: status::SEGMENT_FULL,
                value: MAX_NAMESPACES as u64 - 1,
                aux: 0,
            };
        };
        if req.flags & flag::QUOTA != 0 {
            let e = self.seg.ns(id);
            e.max_items.store(req.arg, Ordering::Relaxed);
            e.max_bytes
                .store(u64::from_le_bytes(quota.try_into().expect("8 bytes")), Ordering::Relaxed);
            self.ns_enforce(id);
        }
        Reply::ok(id as u64)
    }

    /// NS_CLEAR of namespace `id`.
    pub(super) fn ns_clear_request(&mut self, id: u64) -> Reply {
        if !self.ns_exists(id) {
            return Reply::status(status::BAD_REQUEST);
        }
        if id == 0 && (1..MAX_NAMESPACES).all(|i| self.seg.ns(i).used.load(Ordering::Relaxed) == 0)
        {
            // The default namespace is the whole store: a full clear frees its space at once.
            self.clear();
            return Reply::ok(0);
        }
        self.seg.ns_clear(id as usize);
        self.ns_cursors[id as usize] = 0;
        crate::crash::point("namespace cleared");
        Reply::ok(0)
    }

    /// NS_CULL: remove the oldest entries of namespace `id` until at most `keep` remain;
    /// value: how many remain. A target, not a count, so that a request applied again after
    /// a crash removes nothing more.
    pub(super) fn ns_cull(&mut self, id: u64, keep: u64) -> Reply {
        if !self.ns_exists(id) {
            return Reply::status(status::BAD_REQUEST);
        }
        let items = self.seg.ns(id as usize).items.load(Ordering::Relaxed);
        self.ns_remove_oldest(id as usize, items.saturating_sub(keep), None);
        Reply::ok(self.seg.ns(id as usize).items.load(Ordering::Relaxed))
    }

    fn ns_exists(&self, id: u64) -> bool {
        (id as usize) < MAX_NAMESPACES
            && (id == 0 || self.seg.ns(id as usize).used.load(Ordering::Acquire) == 1)
    }

    /// Before a write of `size` bytes for `key` (its current record, if any, replaced by it
    /// and `added` entries new to the namespace): evict the namespace's oldest entries while
    /// the write would take it over a quota. Before the write, so that a crash leaves either
    /// the write undone (and a restart applies it, evicting again) or everything done.
    pub(super) fn ns_make_room(&mut self, key: &[u8], hash: u64, size: u64) {
        let id = ns_of(key);
        let e = self.seg.ns(id);
        let (max_items, max_bytes) =
            (e.max_items.load(Ordering::Relaxed), e.max_bytes.load(Ordering::Relaxed));
        if max_items == 0 && max_bytes == 0 {
            return;
        }
        let cur = self.seg.current(key, hash).map(|r| (r.off, r.size));
        let (keep, old) = (cur.map(|c| c.0), cur.map_or(0, |c| c.1));
        loop {
            let e = self.seg.ns(id);
            let items = e.items.load(Ordering::Relaxed) + cur.is_none() as u64;
            let bytes = (e.bytes.load(Ordering::Relaxed) + size).saturating_sub(old);
            let over =
                (max_items != 0 && items > max_items) || (max_bytes != 0 && bytes > max_bytes);
            if !over || self.ns_remove_oldest(id, 1, keep) == 0 {
                return;
            }
            self.seg.ns(id).evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// After a namespace's quotas changed: evict its oldest entries while it is over one.
    fn ns_enforce(&mut self, id: usize) {
        let e = self.seg.ns(id);
        let (max_items, max_bytes) =
            (e.max_items.load(Ordering::Relaxed), e.max_bytes.load(Ordering::Relaxed));
        loop {
            let e = self.seg.ns(id);
            let over = (max_items != 0 && e.items.load(Ordering::Relaxed) > max_items)
                || (max_bytes != 0 && e.bytes.load(Ordering::Relaxed) > max_bytes);
            if !over || self.ns_remove_oldest(id, 1, None) == 0 {
                return;
            }
            self.seg.ns(id).evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Unlink the `count` oldest live entries of namespace `id` (oldest by their last write,
    /// the log's order), never the record at `keep`. Returns how many it unlinked. The walk
    /// resumes where the last one for this namespace stopped: no live entry of the namespace
    /// lies behind it (each one passed was unlinked, or was not the namespace's).
    pub(super) fn ns_remove_oldest(&mut self, id: usize, count: u64, keep: Option<u64>) -> u64 {
        let h = self.seg.hdr();
        let (tail, head) = (h.tail.load(Ordering::Relaxed), h.head.load(Ordering::Relaxed));
        let mut pos = self.ns_cursors[id].max(tail);
        let mut removed = 0;
        // Where the kept record is, if the walk passes it: the cursor must not (it is live).
        let mut kept_at = None;
        while pos < head && removed < count {
            let size = match entry_at(&self.seg, pos, head, false) {
                Entry::Item(size) => size,
                Entry::Pad(size) => {
                    pos += size;
                    continue;
                }
                Entry::Torn => break,
            };
            let off = self.seg.phys(pos);
            if Some(off) == keep {
                kept_at.get_or_insert(pos);
            } else {
                if let Some(rec) = self.seg.record(off) {
                    // Tag keys are not the namespace's data: a quota evicting them (they are
                    // written once, so oldest) would invalidate whole tags.
                    if ns_of(rec.key) == id
                        && !self.seg.ns_cleared(rec.key, rec.version)
                        && !crate::tags::is_tag_key(rec.key)
                    {
                        let (key, version) = (rec.key.to_vec(), rec.version);
                        if let Some((slot, cur)) = self.seg.find_key(&key, rec.hash) {
                            if cur.off == off {
                                self.seg.unlink(slot);
                                self.seg.count_removed(&key, version, size);
                                crate::crash::point("namespace entry removed");
                                removed += 1;
                            }
                        }
                    }
                }
            }
            pos += size;
        }
        self.ns_cursors[id] = kept_at.map_or(pos, |k| k.min(pos));
        if removed > 0 {
            self.seg.hdr().c_deletes.fetch_add(removed, Ordering::Relaxed);
        }
        removed
    }
}

impl Store {
    /// Upgrading a segment of the format before namespaces: its bytes keys that start like
    /// a namespaced key (`\\xff` then a byte below 0x20) are stored again in the escaped form
    /// clients now look them up by (`[NS_MARK, 0]` + the key), then the old ones removed.
    /// Returns how many. A crash part-way re-keys again at the next start, only the records
    /// older than the upgrade (`upgrade_mark`): the escaped form of a key whose old form was
    /// removed before the crash starts like a namespaced key too, and was escaped twice
    /// (then read as a miss) before the mark.
    pub fn escape_upgraded_keys(&mut self, ring: &Ring) -> usize {
        let h = self.seg.hdr();
        if h.upgrade_mark.load(Ordering::Relaxed) == 0 {
            h.upgrade_mark.store(h.version.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
        let before = h.upgrade_mark.load(Ordering::Relaxed) - 1;
        let keys = self.seg.keys_to_escape(before);
        let mut n = 0;
        for raw in keys {
            // Outside any request: nothing is journaled for a client.
            self.disarm();
            self.ctx = None;
            let hash = self.seg.hash(&raw);
            let Some(cur) = self.seg.current(&raw, hash) else { continue };
            let (value, expires) = (cur.value.to_vec(), cur.expires_ms);
            let escaped = [&[NS_MARK, 0][..], &raw].concat();
            // Flagged as an operation: a crash between the put and the delete (or inside
            // either) leaves the counters behind the index, and the next start recounts.
            let stored = self.in_operation(|s| {
                let mut st = crate::heap::CleanStats::default();
                let ehash = s.seg.hash(&escaped);
                let r = s.put(ring, &escaped, ehash, &value, expires, &mut st, Reply::ok);
                crate::crash::point("upgrade: key stored escaped");
                if r.status == status::OK {
                    s.delete(&raw);
                    crate::crash::point("upgrade: raw key removed");
                }
                r.status == status::OK
            });
            n += usize::from(stored);
        }
        n
    }
}
