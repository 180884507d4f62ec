//! Record-store operations of the single writer (insert, update, remove, train), journaled
//! like cache writes so that a crash between the two halves of an update is repaired.

use std::sync::atomic::Ordering;

use super::Store;
use crate::layout::*;
use crate::log::Limited;
use crate::ring::{Reply, Req};
use crate::value;

impl Store {
    /// Record store: insert (or update: insert, then remove the old id). A record the
    /// client sent compressed ([`flag::ENCODED`]) is decoded in full first: one that does not
    /// decode, or decodes to more than `max_value`, is refused (BAD_REQUEST, TOO_LARGE) and
    /// nothing is stored; one compressed with an older model is compressed again with the
    /// current one.
    pub(super) fn insert(&mut self, req: &Req<'_>) -> Reply {
        let mut decoded = std::mem::take(&mut self.scratch);
        decoded.clear();
        let r = self.insert_with(req, &mut decoded);
        // A large record (or a refused bomb) does not keep its memory for good.
        if decoded.capacity() > 1 << 20 {
            decoded = Vec::new();
        }
        self.scratch = decoded;
        r
    }

    fn insert_with(&mut self, req: &Req<'_>, decoded: &mut Vec<u8>) -> Reply {
        let encoded = req.flags & flag::ENCODED != 0;
        let model = match <[u8; 4]>::try_from(req.key) {
            Ok(k) if encoded => u32::from_le_bytes(k),
            _ if encoded || !req.key.is_empty() => return Reply::status(status::BAD_REQUEST),
            _ => 0,
        };
        let max_value = self.seg.max_value;
        if req.arg2 != req.payload.len() as u64 || req.payload.len() as u64 > max_value {
            return Reply::status(if req.payload.len() as u64 > max_value {
                status::TOO_LARGE
            } else {
                status::BAD_REQUEST
            });
        }
        let Some(rs) = self.recs.as_mut() else { return Reply::status(status::BAD_REQUEST) };
        let old = if req.op == op::UPDATE { req.arg } else { 0 };
        if old != 0 && !rs.is_live(old) {
            return Reply::status(status::NOT_DONE);
        }
        let (val, sent) = if encoded {
            match rs.decode_sent(model, req.payload, max_value, decoded) {
                Ok(()) => {}
                Err(crate::Error::ValueTooLarge { .. }) => return Reply::status(status::TOO_LARGE),
                Err(e) => {
                    static L: Limited = Limited::new();
                    L.warn(|| format!("encoded record refused: {e}"));
                    return Reply::status(status::BAD_REQUEST);
                }
            }
            if self.refuse_pickle && value::has_pickle_within(decoded, max_value) {
                return Reply::status(status::PICKLE_REFUSED);
            }
            (&decoded[..], Some((model, req.payload)))
        } else {
            (req.payload, None)
        };
        let rs = self.recs.as_mut().expect("checked above");
        let ins = match rs.prepare(val, sent) {
            Ok(i) => i,
            Err(crate::Error::SegmentFull(m)) => {
                static L: Limited = Limited::new();
                L.warn(|| m);
                return Reply::status(status::SEGMENT_FULL);
            }
            Err(e @ crate::Error::Io { .. }) => {
                static L: Limited = Limited::new();
                L.error(|| format!("insert refused: {e}"));
                return Reply::status(status::NO_DISK_SPACE);
            }
            Err(crate::Error::ValueTooLarge { .. }) => return Reply::status(status::TOO_LARGE),
            Err(e) => {
                static L: Limited = Limited::new();
                L.warn(|| format!("insert refused: {e}"));
                return Reply::status(status::BAD_REQUEST);
            }
        };
        let answer = Reply::ok(ins.rid);
        self.arm_kind(JOURNAL_RECORD, b"", ins.rid, old, answer);
        let rs = self.recs.as_mut().expect("checked above");
        rs.publish(&ins);
        if old != 0 {
            rs.remove(old);
        }
        rs.note_inserted(val, ins.len);
        if let Some(why) = rs.auto_train_due() {
            let compact = rs.rf.hdr().compact.load(Ordering::Relaxed) != 0;
            rs.start_auto_training(compact, why);
        }
        answer
    }

    pub(super) fn remove_record(&mut self, rid: u64) -> Reply {
        let Some(rs) = self.recs.as_mut() else { return Reply::status(status::BAD_REQUEST) };
        if !rs.is_live(rid) {
            return Reply::ok(0);
        }
        let answer = Reply::ok(1);
        self.arm_kind(JOURNAL_RECORD, b"", 0, rid, answer);
        self.recs.as_mut().expect("checked above").remove(rid);
        answer
    }

    pub(super) fn train(&mut self, req: &Req<'_>) -> Reply {
        let Some(rs) = self.recs.as_mut() else { return Reply::status(status::BAD_REQUEST) };
        if req.flags & flag::SAMPLE != 0 {
            if value::validate(req.payload).is_err() {
                return Reply::status(status::BAD_REQUEST);
            }
            return Reply::ok(rs.add_sample(req.payload) as u64);
        }
        // Training runs in a background thread; this request is answered when it is done
        // (its box waits, every other client's requests keep flowing).
        rs.start_training(
            req.flags & flag::COMPACT != 0,
            Some((req.ring_id, req.boxno, req.ticket, req.head_after)),
        );
        self.held.push((req.ring_id, req.boxno));
        Reply::status(status::DEFERRED)
    }
}
