//! The daemon side of a box: its own consumer position, taking and validating requests,
//! publishing results crash-safely, poisoning a malformed box, reaping a dead owner's.

use std::sync::atomic::{fence, Ordering};

use super::*;

impl Ring {
    /// The daemon's copy of box `b`'s consumer words: taken from the box the first time this
    /// daemon looks at it (they carry what a previous daemon consumed), and reset to zero
    /// whenever the box was claimed anew (a claim starts a box from zero), never read back
    /// from the box otherwise.
    pub(super) fn consumer(&self, b: u32) -> &Consumer {
        let st = &self.consumers[b as usize];
        let c = self.ctl(b);
        let claims = c.claims.load(Ordering::Acquire);
        let known = st.claims.load(Ordering::Relaxed);
        if known != claims {
            let (head, done) = if known == u64::MAX {
                (c.head.load(Ordering::Acquire), c.done.load(Ordering::Acquire))
            } else {
                (0, 0)
            };
            st.head.store(head, Ordering::Relaxed);
            st.done.store(done, Ordering::Relaxed);
            st.taken.store(head, Ordering::Relaxed);
            st.taken_ticket.store(done, Ordering::Relaxed);
            st.claims.store(claims, Ordering::Relaxed);
        }
        st
    }

    /// The claim count of box `b` as the daemon last took it: requests answered later
    /// (tiered mode) carry it, so an answer for a box claimed anew meanwhile is dropped.
    pub fn claim_of(&self, b: u32) -> u64 {
        self.consumer(b).claims.load(Ordering::Relaxed)
    }

    /// Whether box `b` holds requests the daemon has not taken yet.
    pub fn untaken(&self, b: u32) -> bool {
        let st = self.consumer(b);
        self.ctl(b).tail.load(Ordering::Acquire) != st.taken.load(Ordering::Relaxed)
    }

    /// Take every box's consumer words as a previous daemon left them (the daemon calls
    /// this once, when it attaches); from then on only a new claim changes them (to zero).
    pub fn adopt_consumers(&self) {
        for b in 0..self.nboxes {
            self.consumer(b);
        }
    }

    /// Move box `b`'s consumer position (journal recovery).
    pub fn set_head(&self, b: u32, head: u64) {
        let st = self.consumer(b);
        st.head.store(head, Ordering::Relaxed);
        st.taken.store(head, Ordering::Relaxed);
        st.taken_ticket.store(st.done.load(Ordering::Relaxed), Ordering::Relaxed);
        self.ctl(b).head.store(head, Ordering::Release);
    }

    /// The daemon's consumer position and last completed ticket of box `b`.
    pub fn consumed(&self, b: u32) -> (u64, u64) {
        let st = self.consumer(b);
        (st.head.load(Ordering::Relaxed), st.done.load(Ordering::Relaxed))
    }

    /// Whether the daemon should look at box `b`: owned and initialised by its claimer (an
    /// unclaimed box is never read, whatever its words say).
    #[inline]
    pub fn serves(&self, b: u32) -> bool {
        let c = self.ctl(b);
        let owner = c.owner_pid.load(Ordering::Acquire);
        owner != 0
            && owner != OWNER_RESETTING
            && matches!(c.active.load(Ordering::Acquire), BOX_ACTIVE | BOX_RELEASED)
    }

    /// Take the requests published in box `b` since `head` (at most `budget`), calling
    /// `apply(header fields, key, payload)` for each, writing its result and advancing the
    /// box. Returns how many requests were applied. A malformed request poisons the box:
    /// everything pending in it is skipped and the owner is told to reset.
    pub fn poll(
        &self,
        b: u32,
        budget: usize,
        scratch: &mut Vec<u8>,
        mut apply: impl FnMut(&Req<'_>) -> Reply,
    ) -> usize {
        let c = self.ctl(b);
        let st = self.consumer(b);
        // Requests are taken from `taken`: past `head` only while earlier ones are in flight
        // (answered later, in order; see `Status::PIPELINED`).
        let mut head = st.taken.load(Ordering::Relaxed);
        // Whether requests taken before are still unanswered: the box's head must then stay
        // where it is (their answers move it), whatever this pass skips or pads over.
        let mut in_flight = head != st.head.load(Ordering::Relaxed);
        // SYNC POINT: Acquire; pairs with the producer's Release store of `tail`.
        let tail = c.tail.load(Ordering::Acquire);
        if tail < head || tail - head > self.box_bytes {
            if tail != head {
                self.poison(
                    b,
                    tail,
                    &format!("queue words inconsistent (head {head}, tail {tail})"),
                );
            }
            return 0;
        }
        let base = self.box_data(b);
        let mut n = 0;
        while head < tail && n < budget {
            let avail = tail - head;
            let phys = head % self.box_bytes;
            let mut h = [0u8; REQ_HEADER_BYTES as usize];
            let hlen = (REQ_HEADER_BYTES).min(self.box_bytes - phys).min(avail) as usize;
            if hlen < 8 || !self.region.read(base + phys, &mut h[..hlen]) {
                self.poison(b, tail, "truncated request header");
                return n;
            }
            let (len, opc) = ReqFields::peek(&h);
            let len = len as u64;
            if len < 8 || !len.is_multiple_of(8) || len > avail || phys + len > self.box_bytes {
                self.poison(b, tail, &format!("request length {len} at {head}"));
                return n;
            }
            if opc == op::PAD {
                head += len;
                st.taken.store(head, Ordering::Relaxed);
                if !in_flight {
                    st.head.store(head, Ordering::Relaxed);
                    c.head.store(head, Ordering::Release);
                }
                continue;
            }
            if len < REQ_HEADER_BYTES || hlen < REQ_HEADER_BYTES as usize {
                self.poison(b, tail, "short request");
                return n;
            }
            let f = ReqFields::decode(&h);
            let (key_len, ticket, arg, arg2) = (f.key_len as u64, f.ticket, f.arg, f.arg2);
            let done = st.taken_ticket.load(Ordering::Relaxed);
            if ticket == done && ticket != 0 && !in_flight {
                // Answered before a crash that came between storing `done` and moving
                // `head` past it (see `complete`): skip it, it is not applied twice.
                head += len;
                st.head.store(head, Ordering::Relaxed);
                st.taken.store(head, Ordering::Relaxed);
                c.head.store(head, Ordering::Release);
                continue;
            }
            let expected = done.wrapping_add(1);
            if ticket != expected
                || key_len > MAX_KEY_LEN as u64
                || REQ_HEADER_BYTES + key_len > len
            {
                self.poison(
                    b,
                    tail,
                    &format!("ticket {ticket} (expected {expected}) key {key_len}"),
                );
                return n;
            }
            // Copy out: the producer could scribble over its own box; the copy is what we
            // validate and apply.
            let body = len - REQ_HEADER_BYTES;
            scratch.resize(body as usize, 0);
            self.region.read(base + phys + REQ_HEADER_BYTES, scratch);
            let body = if self.legacy {
                &scratch[..]
            } else {
                let Some(data_len) = body.checked_sub(REQ_CHECK_BYTES) else {
                    self.poison(b, tail, "request too short for its checksum");
                    return n;
                };
                let (data, check) = scratch.split_at(data_len as usize);
                let mut x = xxhash_rust::xxh3::Xxh3::with_seed(self.check_seed);
                x.update(&h);
                x.update(data);
                if x.digest().to_le_bytes() != check || REQ_HEADER_BYTES + key_len > len - 8 {
                    self.poison(b, tail, &format!("request checksum at {head} (ticket {ticket})"));
                    return n;
                }
                data
            };
            let (key, rest) = body.split_at(key_len as usize);
            // Ops with a payload carry its length in arg2 (checked again by the apply step).
            let has_payload = Op::of(opc).is_some_and(Op::carries_payload);
            let payload_len = if has_payload { arg2.min(rest.len() as u64) } else { 0 };
            let req = Req {
                ring_id: self.hdr().ring_id.load(Ordering::Relaxed),
                boxno: b,
                claim: st.claims.load(Ordering::Relaxed),
                ticket,
                head_after: head + len,
                owner: (c.owner_pid.load(Ordering::Relaxed), c.owner_start.load(Ordering::Relaxed)),
                request: Request {
                    op: opc,
                    flags: f.flags,
                    key,
                    payload: &rest[..payload_len as usize],
                    arg,
                    arg2,
                },
            };
            let reply = apply(&req);
            match reply.status {
                // Answered later (Ring::complete from the daemon loop): the box waits here.
                status::DEFERRED => return n,
                // Not taken now: it must wait until what is in flight was answered.
                status::LATER => return n,
                // Taken and answered later, in order; the next request may be taken now.
                status::PIPELINED => {
                    head += len;
                    st.taken.store(head, Ordering::Relaxed);
                    st.taken_ticket.store(ticket, Ordering::Relaxed);
                    in_flight = true;
                    n += 1;
                    continue;
                }
                _ => {}
            }
            debug_assert!(!in_flight, "a request answered at once behind requests in flight");
            head += len;
            self.complete(b, ticket, head, reply);
            n += 1;
        }
        n
    }

    /// Publish the result of `ticket` in box `b` and move the box's head to `head`.
    ///
    /// Order, and what a crash between two stores leaves: the result entry, then `done`
    /// (the client may now collect it), then `head`. Killed after `done`, the restarted
    /// daemon finds the request still at the head with a ticket equal to `done`: it skips
    /// it (see `poll`), so it is answered once and applied once.
    pub fn complete(&self, b: u32, ticket: u64, head: u64, reply: Reply) {
        let c = self.ctl(b);
        let st = self.consumer(b);
        if head <= st.head.load(Ordering::Relaxed) {
            // The box moved past this request meanwhile (poisoned while it was in flight):
            // the owner resets the box; nothing is written into it.
            return;
        }
        st.done.store(ticket, Ordering::Relaxed);
        st.head.store(head, Ordering::Relaxed);
        if st.taken.load(Ordering::Relaxed) < head {
            st.taken.store(head, Ordering::Relaxed);
            st.taken_ticket.store(ticket, Ordering::Relaxed);
        }
        let r = self.result(b, ticket);
        r.status.store(reply.status, Ordering::Relaxed);
        r.value.store(reply.value, Ordering::Relaxed);
        r.aux.store(reply.aux, Ordering::Relaxed);
        r.ticket.store(ticket, Ordering::Relaxed);
        if reply.status != status::OK && reply.status != status::NOT_DONE {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
        crate::crash::point("result entry written");
        // SYNC POINT: SeqCst (a Release store, and the store half of the no-lost-wake-up pair
        // with the client's waiters increment): the result entry is visible before `done`.
        c.done.store(ticket, Ordering::SeqCst);
        c.done32.store(ticket as u32, Ordering::SeqCst);
        crate::crash::point("done stored");
        // SYNC POINT: Release; pairs with the producer's Acquire load of `head` (the request's
        // bytes may now be overwritten) and with `release`'s check that the box is drained.
        c.head.store(head, Ordering::Release);
        crate::crash::point("box head stored");
        if c.waiters.load(Ordering::SeqCst) != 0 {
            futex_wake(&c.done32, i32::MAX);
        }
    }

    pub(super) fn poison(&self, b: u32, tail: u64, why: &str) {
        let c = self.ctl(b);
        static L: crate::log::Limited = crate::log::Limited::new();
        L.warn(|| {
            format!(
                "malformed request, skipping the client's queue owner_pid={} why={why}",
                c.owner_pid.load(Ordering::Relaxed)
            )
        });
        c.poisoned.store(1, Ordering::Release);
        let st = self.consumer(b);
        st.head.store(tail, Ordering::Relaxed);
        st.taken.store(tail, Ordering::Relaxed);
        c.head.store(tail, Ordering::Release);
        c.errors.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        c.done32.fetch_add(1, Ordering::SeqCst);
        futex_wake(&c.done32, i32::MAX);
    }

    /// Free box `b` if its owner exited (or released it) and nothing in its queue can still
    /// be applied (drained, poisoned, or words no client writes). The
    /// owner word is taken with a CAS first, so a client taking the dead owner's box over at
    /// the same moment (see `claim`) and the reaper never both think they own it. Returns
    /// the folded counters when it freed the box.
    pub fn reap(&self, b: u32) -> Option<(u64, u64, u64)> {
        let c = self.ctl(b);
        let pid = c.owner_pid.load(Ordering::Acquire);
        let start = c.owner_start.load(Ordering::Relaxed);
        let suspect = &self.consumer(b).suspect;
        if pid == 0 {
            suspect.store(0, Ordering::Relaxed);
            return None;
        }
        // Owner words no claim leaves standing: OWNER_RESETTING is written only by this
        // daemon, inside this function (so it is left over from a crash, or bytes a group
        // member wrote), and a live owner without a start time, where start times exist, is
        // a claim between its two stores, which takes microseconds. Seen at two passes of the
        // reaper (200 ms apart), either is garbage that would hold the box forever: before,
        // random words that named pid 2 (a kernel thread) or RESETTING took every box.
        let implausible = pid == OWNER_RESETTING
            || (start == 0 && shm::process_start_time(shm::getpid()).is_some());
        let stale = if implausible {
            let mark = (pid as u64) << 32 | 1;
            suspect.swap(mark, Ordering::Relaxed) == mark
        } else {
            suspect.store(0, Ordering::Relaxed);
            false
        };
        if pid == OWNER_RESETTING && !stale {
            return None;
        }
        let (tail, head) = (c.tail.load(Ordering::Acquire), self.consumed(b).0);
        let active = c.active.load(Ordering::Acquire);
        // Nothing in it can still be applied: drained; or refused (poisoned); or words no
        // client writes (the daemon would never serve it: an active state or a queue that
        // makes no sense).
        let nothing_owed = tail == head
            || c.poisoned.load(Ordering::Acquire) != 0
            || !matches!(active, BOX_ACTIVE | BOX_RELEASED)
            || tail < head
            || tail - head > self.box_bytes;
        if !nothing_owed {
            return None;
        }
        let released = active != BOX_ACTIVE;
        if !released && !stale && shm::process_alive(pid, start) {
            return None;
        }
        suspect.store(0, Ordering::Relaxed);
        if c.owner_pid
            .compare_exchange(pid, OWNER_RESETTING, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        c.active.store(BOX_FREE, Ordering::Release);
        let counts = self.fold_counters(c);
        self.reset_fields(c);
        c.owner_start.store(0, Ordering::Relaxed);
        // SYNC POINT: Release; the next claimer's CAS (AcqRel) sees the reset fields.
        c.owner_pid.store(0, Ordering::Release);
        crate::crash::point("box reaped");
        Some(counts)
    }
}
