//! Tags: every value stored with a tag is invalidated at once, in O(1) whatever their
//! number (`set(key, value, tags=["user:42"])`, then `invalidate_tags(["user:42"])`).
//!
//! A tag is an ordinary key of the value's namespace, [`TAG_KEY_PREFIX`] + the tag's name,
//! holding a random token (an int). A tagged value is stored as a `TAGGED` value
//! (`value.rs`): its tags' keys (as the namespace's users know them: the value's own key
//! says which namespace) and the tokens they held when it was written, then the value. It is live while each of those keys still holds that token: invalidating a
//! tag deletes its key (one delete, whatever the number of values), so every value stored
//! with it reads as a miss from then on, and a later set with the tag makes a new token.
//! A value whose tag key was evicted is a miss too: losing a tag can only make values
//! missing, never stale. Readers check on every hit (a probe per tag, in the same pin);
//! the writer checks before an add, incr, touch or update reads a current value; the sweep
//! unlinks invalidated values and the cleaner drops them instead of moving them.
//!
//! Why tokens, not the tag record's version: tokens survive a dump and load (a loaded tag
//! key is a new record; its token is its value), and a set that read a token just before
//! an invalidation stores a value that is already stale, never one that outlives it.

use crate::index::Probe;
use crate::layout::NS_MARK;
use crate::namespace::{needs_prefix, ns_of, stored_key};
use crate::prefix::Prefixes;
use crate::segment::{Rec, Segment};
use crate::value;

/// What a tag key is, in its namespace, before the tag's name. Key scans do not list keys
/// that start with it.
pub const TAG_KEY_PREFIX: &[u8] = b"\0~tag\0";

/// Pass as `now_ms` to read the clock only for a tag record that has an expiry.
const LAZY: u64 = u64::MAX;

impl Segment {
    /// The value `value` (the record of stored key `key`) stands for as far as tags go:
    /// itself when it is not TAGGED; the value it carries while every tag key (of `key`'s
    /// namespace) still holds its token; None once one was invalidated (or the header does
    /// not parse). `pre`: the prefix deletions the caller copied before it probed (a tag key
    /// a prefix deletion removed is gone). `seen` gets the offset of each tag record read
    /// (readers count it as a read: a tag read with every value it guards stays in the
    /// cache). `now_ms` u64::MAX: read the clock only if a tag record expires.
    #[inline]
    pub fn untagged<'a>(
        &'a self,
        key: &[u8],
        value: &'a [u8],
        now_ms: u64,
        pre: &Option<Prefixes>,
        mut seen: impl FnMut(u64),
    ) -> Option<&'a [u8]> {
        if value.first() != Some(&value::TAGGED) {
            return Some(value);
        }
        let (head, inner) = value::split_tagged(value).ok()?;
        let ns = ns_of(key);
        let mut buf = [0u8; 258];
        let mut long = Vec::new();
        for (k, token) in value::tag_entries(head) {
            // The tag key's stored form, in the value's namespace (no allocation for keys
            // of up to 256 bytes).
            let stored: &[u8] = if !needs_prefix(ns, k) {
                k
            } else if k.len() <= 256 {
                buf[..2].copy_from_slice(&[NS_MARK, ns as u8]);
                buf[2..2 + k.len()].copy_from_slice(k);
                &buf[..2 + k.len()]
            } else {
                stored_key(ns, k, &mut long)
            };
            match self.probe(stored, self.hash(stored)) {
                Probe::Hit { rec, .. } if self.tag_holds(&rec, token, now_ms, pre) => seen(rec.off),
                _ => return None,
            }
        }
        Some(inner)
    }

    fn tag_holds(&self, rec: &Rec<'_>, token: u64, now_ms: u64, pre: &Option<Prefixes>) -> bool {
        if rec.expires_ms != 0 {
            let now = if now_ms == LAZY { crate::shm::now_ms() } else { now_ms };
            if rec.expired(now) {
                return false;
            }
        }
        !self.ns_cleared(rec.key, rec.version)
            && !crate::prefix::deleted(pre, self, rec.key, rec.version)
            && matches!(value::decode_int(rec.value), Ok(Some(t)) if t == token as i64 as i128)
    }

    /// Writer-side: whether `rec` holds a value at `now_ms`: unexpired, not left by a clear
    /// of its namespace or a prefix deletion, and not invalidated by one of its tags.
    pub fn alive(&self, rec: &Rec<'_>, now_ms: u64) -> bool {
        self.alive_under(rec, now_ms, &self.prefixes())
    }

    /// [`Segment::alive`] against the prefix deletions `pre` (readers copy them before they
    /// read the index: see `prefix.rs`).
    pub fn alive_under(&self, rec: &Rec<'_>, now_ms: u64, pre: &Option<Prefixes>) -> bool {
        !rec.expired(now_ms)
            && !self.ns_cleared(rec.key, rec.version)
            && !crate::prefix::deleted(pre, self, rec.key, rec.version)
            && self.untagged(rec.key, rec.value, now_ms, pre, |_| {}).is_some()
    }
}

/// Whether a stored key is a tag key (of any namespace).
pub fn is_tag_key(stored: &[u8]) -> bool {
    crate::namespace::user_key(stored).starts_with(TAG_KEY_PREFIX)
}
