//! Access hints: one saturating read count (0-3) per heap granule, bumped by readers and
//! read by the cleaner to decide what it keeps (S3-FIFO's main-queue reinsertion).

use std::sync::atomic::Ordering;

use super::*;

impl Ring {
    /// Count a read of the record at a heap offset: the hint is a saturating count of reads
    /// (0-3) since the cleaner last passed it, which decides whether it is kept.
    #[inline]
    pub fn touch_hint(&self, heap_rel: u64) {
        let i = heap_rel / HINT_GRANULE;
        if i < self.hints_len {
            let h: &std::sync::atomic::AtomicU8 = self.region.get(self.hints_off + i);
            // Load first: a count already at its top is not written again (no ping-pong for
            // hot records). A lost increment between two readers costs nothing that matters.
            let v = h.load(Ordering::Relaxed);
            if v < HINT_MAX {
                h.store(v + 1, Ordering::Relaxed);
            }
        }
    }

    /// The read count of a heap offset, left as it is.
    #[inline]
    pub fn peek_hint(&self, heap_rel: u64) -> u8 {
        let i = heap_rel / HINT_GRANULE;
        if i >= self.hints_len {
            return 0;
        }
        let h: &std::sync::atomic::AtomicU8 = self.region.get(self.hints_off + i);
        h.load(Ordering::Relaxed).min(HINT_MAX)
    }

    /// Set the read count of a heap offset (daemon: a relocated record keeps part of it).
    #[inline]
    pub fn set_hint(&self, heap_rel: u64, v: u8) {
        let i = heap_rel / HINT_GRANULE;
        if i < self.hints_len {
            let h: &std::sync::atomic::AtomicU8 = self.region.get(self.hints_off + i);
            h.store(v.min(HINT_MAX), Ordering::Relaxed);
        }
    }

    /// Clear a hint without reading it (daemon, when space is reused).
    #[inline]
    pub fn clear_hint(&self, heap_rel: u64) {
        let i = heap_rel / HINT_GRANULE;
        if i < self.hints_len {
            let h: &std::sync::atomic::AtomicU8 = self.region.get(self.hints_off + i);
            if h.load(Ordering::Relaxed) != 0 {
                h.store(0, Ordering::Relaxed);
            }
        }
    }
}
