//! The write path: this process's producer (one per client, behind its mutex), the one
//! ticket ledger, flow control against the box, waits for replies, and pipelines.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ring_path, Client, Endpoint, FORK_GEN};
use crate::error::{Error, Result};
use crate::layout::*;
use crate::protocol::Request;
use crate::ring::{BoxWriter, Reply, Ring, Waited};
use crate::shm;

/// Producer state, behind the client's mutex. Tickets handed to callers are consecutive
/// per client: `base + box ticket` of the current box.
pub(super) struct Producer {
    pub(super) fork_gen: u64,
    /// The writer of the current box (None without a box).
    pub(super) writer: Option<BoxWriter>,
    /// Next ticket of the current box, and the last one whose result was moved out.
    pub(super) next: u64,
    seen: u64,
    base: u64,
    /// Client tickets up to this one were issued by the parent before a fork.
    pub(super) parent_upto: u64,
    /// The one ticket ledger: every client ticket handed out and not yet collected, with
    /// what it asked (for shaping a reply later) and its reply once drained from the ring.
    ledger: BTreeMap<u64, Ticket>,
    /// Entries of `ledger` holding a reply (bounded by [`MAX_KEPT`]).
    answered: usize,
    /// Failures of fire-and-forget requests whose results were dropped before anyone
    /// collected them.
    pub(super) dropped_errors: u64,
    /// Box tickets not yet answered, with the box position after each request: when one
    /// is answered, the writer's room up to that position is free (the producer's flow
    /// control, kept here rather than read from the box's shared `head` word).
    ends: std::collections::VecDeque<(u64, u64)>,
}

impl Producer {
    pub(super) fn fresh(fork_gen: u64, base: u64, writer: Option<BoxWriter>) -> Producer {
        Producer {
            fork_gen,
            writer,
            next: 1,
            seen: 0,
            base,
            parent_upto: 0,
            ledger: BTreeMap::new(),
            answered: 0,
            dropped_errors: 0,
            ends: Default::default(),
        }
    }

    /// The next client ticket.
    pub(super) fn next_ticket(&self) -> u64 {
        self.base + self.next
    }
}

/// What the ledger keeps of one request: its op, its key when the sender asked to keep it
/// ([`Client::send_kept`]: a reply collected later is shaped by them), its reply once drained.
#[derive(Debug, Clone, Default)]
pub struct Ticket {
    pub op: u8,
    pub key: Option<Box<[u8]>>,
    reply: Option<Reply>,
}

/// Most results kept for tickets nobody waited on yet.
const MAX_KEPT: usize = 100_000;

/// Requests a pipeline keeps in flight before it collects the oldest answer.
pub const PIPELINE_WINDOW: usize = 1024;

impl Client {
    /// Make sure the current endpoint can take a request: claim a box if this client has
    /// none, move to a fresh box if the daemon poisoned this one, move to the new ring if the
    /// daemon replaced it. Called with the producer lock held.
    fn writable_endpoint(&self, p: &mut Producer) -> Result<&Endpoint> {
        let ep = self.ep.get();
        let Some(ctl) = ep.ctl() else {
            // Every box was taken when this client attached: try again now.
            let ring = ep.ring.clone();
            return match self.claim_within_timeout(&ring)? {
                Some(w) => Ok(self.move_to(p, ring, Some(w))),
                None => Err(Error::Unavailable(format!(
                    "{}: all {} client slots of the request ring stayed taken by live \
                     processes for {:.1}s (raise surpd's max_clients); this client can read but \
                     not write",
                    self.dir.display(),
                    ring.nboxes,
                    self.timeout.as_secs_f64()
                ))),
            };
        };
        let h = ep.ring.hdr();
        if h.retired.load(Ordering::Acquire) != 0 && ep.ring.replaced_at(&ring_path(&self.dir)) {
            return self.move_to_new_ring(p);
        }
        // A box whose ownership words are no longer ours (another process wrote them; the
        // daemon would not serve it, or another client could claim it) is left like a
        // poisoned one.
        let tampered = ctl.owner_pid.load(Ordering::Relaxed) != ep.pid
            || ctl.active.load(Ordering::Relaxed) != crate::ring::BOX_ACTIVE;
        if tampered {
            ctl.poisoned.store(1, Ordering::Release);
        }
        if ctl.poisoned.load(Ordering::Acquire) != 0 {
            crate::log::warn(&format!(
                "{}: the daemon refused a malformed request in this client's box; moving to a \
                 fresh box ({} unanswered requests are lost)",
                self.dir.display(),
                p.ledger.len()
            ));
            let ring = ep.ring.clone();
            let w = self.claim_within_timeout(&ring)?;
            let has = w.is_some();
            let ep = self.move_to(p, ring, w);
            return match has {
                true => Ok(ep),
                false => Err(Error::Unavailable(format!(
                    "no client slot freed within {:.1}s to replace a poisoned one",
                    self.timeout.as_secs_f64()
                ))),
            };
        }
        Ok(ep)
    }

    /// Claim a box, waiting up to the client's timeout for one to free (the daemon frees the
    /// boxes of exited clients every 200 ms; nothing signals it, so this looks every 2 ms).
    /// A ring whose words say no daemon serves it is given up early, once they said so for
    /// longer than the daemon takes to restore words a group member overwrote (one
    /// housekeeping pass, 200 ms): before, one overwritten word failed every claim at once.
    fn claim_within_timeout(&self, ring: &Ring) -> Result<Option<BoxWriter>> {
        let deadline = Instant::now() + self.timeout;
        let mut no_daemon_since = None;
        loop {
            if let Some(b) = ring.claim(shm::getpid(), Self::start_time())? {
                return Ok(Some(b));
            }
            let now = Instant::now();
            if ring.daemon_alive() {
                no_daemon_since = None;
            } else if now.duration_since(*no_daemon_since.get_or_insert(now))
                >= Duration::from_millis(500)
            {
                return Ok(None);
            }
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Leave the current box for `w`'s box in `ring` (or for none): see [`Client::abandon`].
    fn move_to(&self, p: &mut Producer, ring: Arc<Ring>, w: Option<BoxWriter>) -> &Endpoint {
        let b = w.as_ref().map(BoxWriter::boxno);
        self.abandon(p);
        p.writer = w;
        self.switch_endpoint(ring, b)
    }

    /// Start a new ticket sequence (the current box is being left): results of tickets not
    /// answered yet are lost (tickets up to `base` then report so); answered ones are moved
    /// out of the ring first.
    fn abandon(&self, p: &mut Producer) {
        self.drain(p);
        let ep = self.ep.get();
        ep.last.store(p.next - 1, Ordering::Release);
        p.base = p.next_ticket() - 1;
        p.next = 1;
        p.seen = 0;
        p.writer = None;
        p.ends.clear();
    }

    /// The daemon replaced the ring (restarted with other ring settings): wait until every
    /// request sent through the old one is answered (it serves both until their clients
    /// moved), then claim a box in the new one. Requests of this process stay in order.
    fn move_to_new_ring(&self, p: &mut Producer) -> Result<&Endpoint> {
        let ep = self.ep.get();
        let last = p.next - 1;
        if last > 0 {
            if let Some(b) = ep.ctl().map(|_| ep.boxno) {
                if ep.ring.wait_done(b, last, self.timeout) != Waited::Done {
                    return Err(self.unavailable("waiting for the old request ring to drain"));
                }
            }
        }
        let ring = Arc::new(Self::open_ring(&self.dir, &self.seg)?);
        let w = ring.claim(shm::getpid(), Self::start_time())?;
        let has = w.is_some();
        // Everything was answered above: the results move into the ledger.
        let ep = self.move_to(p, ring, w);
        crate::log::info(&format!(
            "{}: moved to the daemon's new request ring",
            self.dir.display()
        ));
        match has {
            true => Ok(ep),
            false => Err(Error::Unavailable("the new request ring has no free client slot".into())),
        }
    }

    /// Queue a typed request; returns its ticket (see [`Client::wait`]).
    pub fn send(&self, r: &Request<'_>) -> Result<u64> {
        self.enqueue_kept(r, false)
    }

    /// Queue a typed request whose reply is collected later by whoever holds the ticket: the
    /// ledger keeps its op and key ([`Client::wait_ticket`] hands them back with the reply).
    pub fn send_kept(&self, r: &Request<'_>) -> Result<u64> {
        self.enqueue_kept(r, true)
    }

    /// Queue a typed request and wait for its reply.
    pub fn call(&self, r: &Request<'_>) -> Result<Reply> {
        let t = self.send(r)?;
        self.wait(t)
    }

    /// `r`'s reply as a result: Ok for OK and NOT_DONE, else the error its status means
    /// (see [`crate::protocol::outcome`], the one mapping).
    pub fn outcome(&self, r: &Request<'_>, reply: Reply) -> Result<Reply> {
        let stored = |key: &[u8]| {
            self.read(key, |rec| match rec {
                Some(rec) => crate::value::describe(rec.value),
                // A lease record reads as a miss: the usual reason a key that made the
                // daemon refuse reads as missing here.
                None => "no readable value (another caller holds its get_or_set lease, or \
                         it was just removed)"
                    .to_string(),
            })
            .unwrap_or_else(|_| "unknown".into())
        };
        let cx = crate::protocol::Context {
            max_value: self.max_value(),
            dir: &self.dir,
            stored: &stored,
        };
        crate::protocol::outcome(r, reply, &cx)
    }

    fn enqueue_kept(&self, r: &Request<'_>, keep_key: bool) -> Result<u64> {
        let Request { op, key, payload, .. } = *r;
        Self::check_key(key)?;
        if payload.len() as u64 > self.seg.max_value {
            return Err(Error::ValueTooLarge {
                size: payload.len() as u64,
                max: self.seg.max_value,
            });
        }
        self.check_fork()?;
        let mut p = self.prod.lock().unwrap_or_else(|e| e.into_inner());
        let ep = self.writable_endpoint(&mut p)?;
        let (ring, b) = (&ep.ring, ep.boxno);
        // Keep at most nresults-1 results outstanding in the ring: older ones are moved into
        // `kept` before their entries can be overwritten.
        let ticket = p.next;
        if ticket - p.seen >= ring.nresults as u64 {
            let oldest = ticket - ring.nresults as u64 + 1;
            match ring.wait_done(b, oldest, self.timeout) {
                Waited::Done => self.drain(&mut p),
                Waited::Poisoned => {
                    return Err(Error::BadRequest(
                        "the daemon refused a malformed request from this client".into(),
                    ))
                }
                Waited::TimedOut => {
                    if ep.ctl().is_some_and(|c| c.done.load(Ordering::Acquire) >= oldest) {
                        // The daemon says it answered, but the entry names another ticket:
                        // someone wrote into this box. Leave it (the next request moves).
                        if let Some(c) = ep.ctl() {
                            c.poisoned.store(1, Ordering::Release);
                        }
                        return Err(Error::BadRequest(
                            "this client's result entries were overwritten by another process; \
                             moving to a fresh box"
                                .into(),
                        ));
                    }
                    return Err(self.unavailable("waiting for room in the result ring"));
                }
            }
        }
        self.make_room(&mut p, ep, key, payload)?;
        let w = p.writer.as_mut().expect("a writable endpoint has a writer");
        ring.enqueue(w, ticket, r)?;
        let tail = w.tail();
        p.ends.push_back((ticket, tail));
        p.next += 1;
        let t = p.base + ticket;
        let key = keep_key.then(|| key.into());
        p.ledger.insert(t, Ticket { op, key, reply: None });
        Ok(t)
    }

    /// Wait (up to the timeout) until the request fits in the box: the oldest unanswered
    /// requests are answered and their room free.
    fn make_room(&self, p: &mut Producer, ep: &Endpoint, key: &[u8], payload: &[u8]) -> Result<()> {
        let ring = &ep.ring;
        let pending = |p: &Producer| p.writer.as_ref().map_or(0, BoxWriter::pending);
        let tail = p.writer.as_ref().map_or(0, BoxWriter::tail);
        let need = ring.request_bytes(tail, key, payload)?;
        if pending(p) + need <= ring.box_bytes {
            return Ok(());
        }
        let ctl = ep.ctl().expect("a writable endpoint has a box");
        ctl.queue_waits.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.timeout;
        while pending(p) + need > ring.box_bytes {
            let Some(&(oldest, _)) = p.ends.front() else { break };
            let left = deadline.saturating_duration_since(Instant::now());
            match ring.wait_done(ep.boxno, oldest, left) {
                Waited::Done => self.drain(p),
                Waited::Poisoned => {
                    return Err(Error::BadRequest(
                        "the daemon refused a malformed request from this client".into(),
                    ))
                }
                Waited::TimedOut => {
                    if ctl.done.load(Ordering::Acquire) >= oldest {
                        // Answered, says `done`, but the entry names another ticket: someone
                        // wrote into this box. Leave it (the next request moves).
                        ctl.poisoned.store(1, Ordering::Release);
                    }
                    return Err(Error::QueueFull(format!(
                        "request queue full for {:.1}s: {} of {} bytes pending{}",
                        self.timeout.as_secs_f64(),
                        pending(p),
                        ring.box_bytes,
                        ring.daemon_note()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Move completed results out of the ring into the ledger (for tickets still in it).
    /// Bounded by what this process sent: the ring's `done` word is shared memory, and a
    /// value past our last ticket (or a result entry naming another ticket) was not written
    /// by the daemon.
    fn drain(&self, p: &mut Producer) {
        let ep = self.ep.get();
        let Some(ctl) = ep.ctl() else { return };
        let done = ctl.done.load(Ordering::Acquire).min(p.next - 1);
        while p.seen < done {
            let t = p.seen + 1;
            let r = ep.ring.result(ep.boxno, t);
            if r.ticket.load(Ordering::Relaxed) != t {
                // Not written yet (`done` was pushed ahead by someone else), or overwritten:
                // stop here; a wait for it times out rather than read a wrong answer.
                break;
            }
            let reply = Reply {
                status: r.status.load(Ordering::Relaxed),
                value: r.value.load(Ordering::Relaxed),
                aux: r.aux.load(Ordering::Relaxed),
            };
            let ct = p.base + t;
            if let Some(e) = p.ledger.get_mut(&ct) {
                if e.reply.replace(reply).is_none() {
                    p.answered += 1;
                }
            }
            p.seen = t;
            while p.ends.front().is_some_and(|&(et, _)| et <= t) {
                let end = p.ends.pop_front().expect("checked").1;
                if let Some(w) = p.writer.as_mut() {
                    w.consumed_to(end);
                }
            }
        }
        while p.answered > MAX_KEPT {
            let Some((_, e)) = p.ledger.pop_first() else { break };
            if let Some(r) = e.reply {
                p.answered -= 1;
                if r.status != status::OK && r.status != status::NOT_DONE {
                    p.dropped_errors += 1;
                }
            }
        }
    }

    fn unavailable(&self, what: &str) -> Error {
        Error::Unavailable(format!(
            "{}: no answer from surpd after {:.1}s {what}{}",
            self.dir.display(),
            self.timeout.as_secs_f64(),
            self.ring().daemon_note()
        ))
    }

    /// Wait for a ticket's result, up to the client's timeout. Releases nothing itself: the
    /// binding calls it with the GIL released.
    pub fn wait(&self, ticket: u64) -> Result<Reply> {
        self.wait_for(ticket, self.timeout)
    }

    /// Wait for a ticket's result, up to `timeout`.
    pub fn wait_for(&self, ticket: u64, timeout: Duration) -> Result<Reply> {
        self.wait_ticket(ticket, Some(timeout))
            .map(|r| r.expect("a wait with a deadline ends with an answer or an error").0)
    }

    /// The result of `ticket` if the daemon has answered it (collecting it, as a wait does),
    /// None if not yet; never sleeps. For event loops: poll, yield, poll again.
    pub fn poll(&self, ticket: u64) -> Result<Option<Reply>> {
        Ok(self.wait_ticket(ticket, None)?.map(|r| r.0))
    }

    /// Wait for `ticket` up to `timeout`, or with None only look once (Ok(None): not yet).
    /// The reply comes with what the ledger kept of the request (its op; its key if it was
    /// sent with [`Client::send_kept`]).
    pub fn wait_ticket(
        &self,
        ticket: u64,
        timeout: Option<Duration>,
    ) -> Result<Option<(Reply, Ticket)>> {
        let (ring, b, bt, gen) = {
            let mut p = self.prod.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(r) = self.collected(&mut p, ticket)? {
                return Ok(Some(r));
            }
            let ep = self.ep.get();
            (ep.ring.clone(), ep.boxno, ticket - p.base, p.fork_gen)
        };
        let deadline = Instant::now() + timeout.unwrap_or_default();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match ring.wait_done(b, bt, left.min(Duration::from_millis(250))) {
                Waited::Done => break,
                Waited::Poisoned => {
                    let mut p = self.prod.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(r) = self.collected(&mut p, ticket)? {
                        return Ok(Some(r)); // answered before the poisoning
                    }
                    p.ledger.remove(&ticket);
                    return Err(Error::BadRequest(
                        "the daemon refused a malformed request from this client; its queue \
                         was skipped (the client moves to a fresh box on its next request)"
                            .into(),
                    ));
                }
                Waited::TimedOut if timeout.is_none() => return Ok(None),
                Waited::TimedOut => {}
            }
            if Instant::now() >= deadline {
                return Err(self.unavailable(&format!(
                    "waiting for request #{ticket}; it stays queued and is applied if the daemon comes back"
                )));
            }
        }
        let mut p = self.prod.lock().unwrap_or_else(|e| e.into_inner());
        if p.fork_gen != gen {
            return Err(Error::BadRequest(format!(
                "ticket {ticket} belongs to the parent process"
            )));
        }
        if p.base + p.seen < ticket {
            self.drain(&mut p);
        }
        match self.collected(&mut p, ticket)? {
            Some(r) => Ok(Some(r)),
            None => Err(Error::BadRequest(format!("result of ticket {ticket} was lost"))),
        }
    }

    /// The result of `ticket` if it was already moved out of the ring (taking it), None if
    /// it is still to come, an error for a ticket this client cannot answer.
    fn collected(&self, p: &mut Producer, ticket: u64) -> Result<Option<(Reply, Ticket)>> {
        if p.fork_gen != FORK_GEN.load(Ordering::Relaxed) || ticket <= p.parent_upto {
            return Err(Error::BadRequest(format!(
                "ticket {ticket} belongs to the parent process"
            )));
        }
        if ticket == 0 || ticket >= p.next_ticket() {
            let last = p.next_ticket() - 1;
            return Err(Error::BadRequest(format!(
                "ticket {ticket} was not issued by this client{}",
                if last > 0 { format!(" (last issued: {last})") } else { String::new() }
            )));
        }
        if let Some(e) = p.ledger.get_mut(&ticket) {
            if let Some(r) = e.reply.take() {
                p.answered -= 1;
                let e = p.ledger.remove(&ticket).expect("just seen");
                return Ok(Some((r, e)));
            }
        }
        if !p.ledger.contains_key(&ticket) {
            return Err(Error::BadRequest(format!(
                "ticket {ticket} was already collected, or its result dropped after \
                 {MAX_KEPT} newer uncollected results"
            )));
        }
        if ticket <= p.base {
            p.ledger.remove(&ticket);
            return Err(Error::BadRequest(format!(
                "request #{ticket} was lost: the daemon skipped this client's queue after a \
                 malformed request"
            )));
        }
        Ok(None)
    }

    /// Wait for a ticket's result for as long as the daemon is alive (a training takes what
    /// it takes); `Unavailable` once a wait of the client's timeout ends with no live daemon.
    pub fn wait_while_alive(&self, ticket: u64) -> Result<Reply> {
        loop {
            match self.wait(ticket) {
                Err(Error::Unavailable(m)) if !self.ring().daemon_alive() => {
                    return Err(Error::Unavailable(m))
                }
                Err(Error::Unavailable(_)) => continue,
                r => return r,
            }
        }
    }
}

/// Requests sent back to back, at most [`PIPELINE_WINDOW`] in flight: the oldest answer is
/// collected before another request goes out, so a pipeline of any length keeps a bounded
/// number of uncollected results (and never outruns the result ring).
pub struct Pipeline<'c> {
    c: &'c Client,
    pending: std::collections::VecDeque<u64>,
    /// Answers, in the order the requests were pushed.
    pub replies: Vec<Result<Reply>>,
}

impl<'c> Pipeline<'c> {
    pub fn new(c: &'c Client) -> Pipeline<'c> {
        Pipeline { c, pending: Default::default(), replies: Vec::new() }
    }

    /// Whether the next push would first wait for an answer.
    pub fn full(&self) -> bool {
        self.pending.len() >= PIPELINE_WINDOW
    }

    /// Collect answers until there is room for one more request (call without the GIL).
    pub fn make_room(&mut self) {
        while self.full() {
            self.collect_one();
        }
    }

    fn collect_one(&mut self) {
        if let Some(t) = self.pending.pop_front() {
            self.replies.push(self.c.wait(t));
        }
    }

    /// Send one request (collecting the oldest answer first if the window is full). An
    /// error sending it is that request's answer.
    pub fn push(&mut self, r: &Request<'_>) {
        self.make_room();
        match self.c.send(r) {
            Ok(t) => self.pending.push_back(t),
            Err(e) => {
                // Keep the order: answers before this one first.
                while !self.pending.is_empty() {
                    self.collect_one();
                }
                self.replies.push(Err(e));
            }
        }
    }

    /// Collect every remaining answer.
    pub fn finish(mut self) -> Vec<Result<Reply>> {
        while !self.pending.is_empty() {
            self.collect_one();
        }
        self.replies
    }
}
