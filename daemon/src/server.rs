//! The daemon: lock the directory, attach to (or create) the segment and the ring, tell the
//! world it is ready, then run the apply loop until asked to stop.

use std::fs::OpenOptions;
use std::io::{Read, Seek, Write};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::apply::Store;
use crate::client::{data_path, lock_path, ring_path};
use crate::config::{Config, Durability};
use crate::error::{Error, Result};
use crate::layout::*;
use crate::log;
use crate::records::{records_path, RecFile, RecStore};
use crate::ring::{Ring, RingParams};
use crate::segment::{Geometry, Segment};
use crate::shm::{self, futex_wait};

static STOP: AtomicBool = AtomicBool::new(false);
static LAST_SIGNAL: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    LAST_SIGNAL.store(sig as u32, Ordering::SeqCst);
    if sig != libc::SIGHUP {
        STOP.store(true, Ordering::SeqCst);
    }
}

/// Ask a running `run` in this process to stop (tests, embedding).
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Send a message to systemd's notify socket if NOTIFY_SOCKET is set.
pub fn sd_notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let p = path.to_string_lossy().into_owned();
    let r = if let Some(name) = p.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), &p)
    };
    if let Err(e) = r {
        log::warn(&format!("cannot notify systemd at {p}: {e}"));
    }
}

/// Everything the daemon holds while serving.
pub struct Daemon {
    pub cfg: Config,
    /// The store; its `data_file` is `data.surp` itself, flock'ed: a second daemon is refused
    /// even if `surpd.lock` was deleted (a lock on a file that can be unlinked and recreated
    /// guards nothing alone).
    pub store: Store,
    pub ring: Ring,
    _lock: std::fs::File,
    scratch: Vec<u8>,
    /// Boxes with an owner or pending requests; rescanning all of them on every pass costs
    /// a cache line per box, so the list is refreshed every 64 passes and after an empty one.
    active: Vec<u32>,
    passes: u64,
    last_empty: bool,
    /// Tiered mode: the upstream and the requests waiting on it.
    pub tier: Option<crate::apply::Tier>,
}

impl Daemon {
    /// Lock the directory and attach. Fails with Locked if another daemon owns it.
    pub fn attach(cfg: Config) -> Result<Daemon> {
        cfg.validate()?;
        log::set_level(cfg.log_level);
        sd_notify("STATUS=attaching");
        let t0 = Instant::now();
        let gid = cfg.group.as_deref().map(shm::group_id).transpose()?;
        if !cfg.dir.exists() {
            std::fs::create_dir_all(&cfg.dir)
                .map_err(|e| Error::io(format!("cannot create {}", cfg.dir.display()), e))?;
            // Group members need to reach the files: rwx for the daemon, r-x for the group.
            set_owner_mode(&cfg.dir, gid, 0o750)?;
        } else if let Some(g) = gid {
            set_owner_mode(&cfg.dir, Some(g), 0o750)?;
        }
        let lock = lock_dir(&cfg)?;
        let dp = data_path(&cfg.dir);
        let created = !dp.exists();
        if created {
            let mut geo = Geometry::for_size(cfg.size, cfg.max_value)?;
            geo.max_size = cfg.effective_max_size();
            Segment::create(&dp, &geo, cfg.max_value, cfg.policy, cfg.data_mode)?;
            log::info(&format!(
                "created segment path={} bytes={} index_slots={}",
                dp.display(),
                geo.size,
                geo.index_slots
            ));
        }
        let data_lock = lock_data_file(&dp)?;
        let seg = Segment::open(&dp, true)?;
        if !created {
            // A segment made before blocks were allocated at creation (or copied sparse):
            // allocate them now, so that no store into it can fault on a full disk.
            shm::allocate(&data_lock, 0, seg.size())
                .map_err(|e| shm::allocate_error(&dp, seg.size(), e))?;
        }
        let file_len =
            data_lock.metadata().map_err(|e| Error::io("cannot stat data.surp", e))?.len();
        let h = seg.hdr();
        let was_clean = h.clean.swap(0, Ordering::AcqRel) == 1;
        let gen = h.generation.fetch_add(1, Ordering::Relaxed) + 1;
        h.policy.store(cfg.policy, Ordering::Relaxed);
        h.daemon_pid.store(shm::getpid(), Ordering::Relaxed);
        let (head, tail, fl) = (
            h.head.load(Ordering::Relaxed),
            h.tail.load(Ordering::Relaxed),
            h.free_limit.load(Ordering::Relaxed),
        );
        if !(fl <= tail && tail <= head && head - fl <= seg.cap()) {
            return Err(Error::Corrupted(format!(
                "{}: heap positions are inconsistent (free {fl}, tail {tail}, head {head}, capacity {})",
                dp.display(),
                seg.cap()
            )));
        }
        let boot = shm::boot_id();
        let last_boot =
            [h.boot_id[0].load(Ordering::Relaxed), h.boot_id[1].load(Ordering::Relaxed)];
        let machine_crash = !was_clean && last_boot != boot;
        let mut store = Store::new(seg);
        store.data_file = Some(data_lock);
        // A daemon killed while growing the file left it longer: finish growing into it.
        // A size asked above the segment's grows it; below, the segment keeps its size.
        let asked = cfg.size / PAGE * PAGE;
        let want = asked.max(file_len / PAGE * PAGE);
        if !created && want >= store.seg.size() {
            let before = (store.seg.size(), store.seg.target_cap());
            match store.grow(want) {
                Ok(n) if (n, store.seg.target_cap()) != before => {
                    log::info(&format!("segment grown at start bytes={n}"))
                }
                Ok(_) => {}
                Err(e) => log::warn(&format!("cannot grow the segment to {want} bytes: {e}")),
            }
        }
        if !created && asked < store.seg.size() {
            log::warn(&format!(
                "using the existing segment bytes={} over the configured size={asked} (a \
                 segment does not shrink: dump, remove and load it to make a smaller one)",
                store.seg.size()
            ));
        }
        if machine_crash {
            sd_notify("STATUS=repairing after a machine crash");
            let (kept, dropped, padded) = store.repair_after_power_loss();
            log::warn(&format!(
                "repaired after a machine crash generation={gen} kept={kept} dropped_entries={dropped} \
                 padded_log_bytes={padded}"
            ));
        } else if !was_clean {
            sd_notify("STATUS=recovering after an unclean stop");
            let recounted = store.recount();
            log::warn(&format!(
                "recovered after an unclean stop generation={gen} recounted={recounted}"
            ));
        }
        let rp = records_path(&cfg.dir);
        if !rp.exists() {
            RecFile::create(&rp, cfg.records_size, cfg.data_mode, cfg.compact)?;
            log::info(&format!("created records file path={}", rp.display()));
        }
        let mut recs =
            RecStore::attach(RecFile::open(&rp, true)?, cfg.train_after, cfg.records_size)?;
        if !recs.rf.growable {
            log::warn(&format!(
                "the records file is version {} and keeps its size ({} chunks); surpdb dump and \
                 load move its records to a file that grows",
                crate::layout::RECORDS_FIXED_VERSION,
                recs.rf.max_chunks
            ));
        }
        if !was_clean {
            recs.recount();
        }
        recs.retire_empty();
        set_owner_mode(&rp, gid, cfg.data_mode)?;
        store.recs = Some(recs);
        let h = store.seg.hdr();
        h.boot_id[0].store(boot[0], Ordering::Relaxed);
        h.boot_id[1].store(boot[1], Ordering::Relaxed);
        // Readers of a previous run may still hold old epochs: retire what was retired.
        store.heap.retire(&store.seg);
        let (ring, retired) = open_ring(&cfg, &store.seg)?;
        ring.adopt_consumers();
        for (_, r) in &retired {
            r.adopt_consumers();
        }
        let rings: Vec<&Ring> =
            std::iter::once(&ring).chain(retired.iter().map(|r| &r.1)).collect();
        if let Some(what) = store.recover_journal(&rings) {
            log::warn(&format!("recovery: {what}"));
        }
        let sh = store.seg.hdr();
        let version = sh.format_version.load(Ordering::Relaxed);
        let mut escaped = 0;
        if version == 1 || store.seg.ns(0).used.load(Ordering::Acquire) == 0 {
            // A segment of the format before namespaces (or a new one): its keys that would
            // now read as namespaced are stored escaped, its entries counted into the default
            // namespace.
            if version == 1 {
                escaped = store.escape_upgraded_keys(&ring);
            }
            store.seg.recount_namespaces();
        }
        if version != FORMAT_VERSION {
            // Then (formats 1 and 2) the prefix table is made empty and the segment stamped
            // with this format; a crash before the stamp does it all again.
            store.seg.prefix_table_reset();
            let sh = store.seg.hdr();
            sh.layout_sig.store(LAYOUT_SIG, Ordering::Relaxed);
            sh.format_version.store(FORMAT_VERSION, Ordering::Release);
            sh.upgrade_mark.store(0, Ordering::Relaxed);
            log::info(&format!(
                "upgraded the segment from format {version} to {FORMAT_VERSION} items={} \
                 bytes_keys_escaped={escaped}",
                sh.items.load(Ordering::Relaxed)
            ));
        } else {
            // Entries whose version was stored before a crash took their live bit are in
            // force (the deletion was made).
            store.seg.prefix_table_recount();
        }
        for (_, r) in &retired {
            let h = r.hdr();
            h.daemon_pid.store(shm::getpid(), Ordering::Relaxed);
            h.daemon_generation.store(gen, Ordering::Relaxed);
            h.daemon_features.store(features::word(gen, features::ALL), Ordering::Relaxed);
            h.ready.store(1, Ordering::Release);
        }
        store.heap.retired_rings = retired;
        set_owner_mode(&dp, gid, cfg.data_mode)?;
        set_owner_mode(&ring_path(&cfg.dir), gid, cfg.ring_mode)?;
        let rh = ring.hdr();
        rh.daemon_pid.store(shm::getpid(), Ordering::Relaxed);
        rh.daemon_generation.store(gen, Ordering::Relaxed);
        rh.daemon_features.store(features::word(gen, features::ALL), Ordering::Relaxed);
        rh.ready.store(1, Ordering::Release);
        store.set_tiered(cfg.upstream.is_some());
        store.refuse_pickle = !cfg.pickle;
        let tier = match &cfg.upstream {
            None => None,
            Some(url) => {
                let settings = crate::upstream::Settings {
                    url: url.clone(),
                    prefix: cfg.upstream_prefix.as_bytes().to_vec(),
                    timeout: cfg.upstream_timeout,
                    user: cfg.upstream_user.clone(),
                    password: cfg.upstream_password.clone(),
                    ca_file: cfg.upstream_ca_file.clone(),
                };
                // The thread wakes the apply loop through its own mapping of the ring.
                let bell = Ring::open(&ring_path(&cfg.dir))?;
                let up = crate::upstream::Upstream::start(settings, move || bell.ring_doorbell())?;
                log::info(&format!(
                    "tiered: upstream={} prefix={:?} timeout_ms={}",
                    crate::upstream::redact(url),
                    cfg.upstream_prefix,
                    cfg.upstream_timeout.as_millis()
                ));
                Some(crate::apply::Tier::new(up))
            }
        };
        log::info(&format!(
            "serving dir={} generation={gen} items={} attach_ms={:.1}",
            cfg.dir.display(),
            store.seg.hdr().items.load(Ordering::Relaxed),
            t0.elapsed().as_secs_f64() * 1e3
        ));
        Ok(Daemon {
            cfg,
            store,
            ring,
            _lock: lock,
            scratch: Vec::new(),
            active: Vec::new(),
            passes: 0,
            last_empty: true,
            tier,
        })
    }

    /// Apply what is queued in every box, up to `budget` requests per box. Returns the count.
    pub fn poll_once(&mut self, budget: usize) -> usize {
        self.passes += 1;
        self.store.waiting_for_model = false;
        if self.last_empty || self.passes.is_multiple_of(64) {
            self.refresh_active();
        }
        let mut n = 0;
        let sync = self.cfg.durability == Durability::Sync;
        let Daemon { store, ring, scratch, active, tier, .. } = self;
        let mut apply = |store: &mut Store, ring: &Ring, req: &crate::ring::Req<'_>| {
            if let Some(reply) = tier.as_mut().and_then(|t| t.forward(store, req)) {
                return reply;
            }
            let reply = store.apply(ring, req);
            // The result is written only after this returns: in sync mode the request's
            // changes reach the disk before the client hears of them.
            if sync {
                let recs = store.recs.as_ref().map(|r| r.rf.region.flush());
                if let Err(e) = store.seg.region.flush().and(recs.unwrap_or(Ok(()))) {
                    log::error(&format!("msync failed: {e}"));
                    return crate::ring::Reply::status(status::NOT_DURABLE);
                }
            }
            reply
        };
        let ring_id = ring.hdr().ring_id.load(Ordering::Relaxed);
        for &b in active.iter() {
            if !ring.untaken(b) || !ring.serves(b) || store.held.contains(&(ring_id, b)) {
                continue;
            }
            n += ring.poll(b, budget, scratch, |req| apply(store, ring, req));
        }
        // Rings replaced at this start, until their clients have moved to the new one.
        let retired = std::mem::take(&mut store.heap.retired_rings);
        for (_, old) in &retired {
            let old_id = old.hdr().ring_id.load(Ordering::Relaxed);
            for b in 0..old.nboxes {
                if old.untaken(b) && old.serves(b) && !store.held.contains(&(old_id, b)) {
                    n += old.poll(b, budget, scratch, |req| apply(store, ring, req));
                }
            }
        }
        store.heap.retired_rings = retired;
        self.last_empty = n == 0;
        n
    }

    /// Tiered mode: apply what the upstream answered and invalidated, in its order. Returns
    /// the requests answered (their boxes may have more to take).
    pub fn finish_upstream(&mut self) -> usize {
        let Some(tier) = self.tier.as_mut() else { return 0 };
        // The retired rings move out of the store while it is written (as in poll_once).
        let retired = std::mem::take(&mut self.store.heap.retired_rings);
        let rings: Vec<&Ring> =
            std::iter::once(&self.ring).chain(retired.iter().map(|r| &r.1)).collect();
        let n = tier.finish(&mut self.store, &rings);
        drop(rings);
        self.store.heap.retired_rings = retired;
        n
    }

    /// Install a model the background trainer finished, and answer the TRAIN request that
    /// asked for it (its box is then polled again).
    pub fn finish_training(&mut self) {
        let Some(rs) = self.store.recs.as_mut() else { return };
        let Some((request, result)) = rs.poll_training() else { return };
        let Some((ring_id, b, ticket, head_after)) = request else { return };
        let reply = match result {
            Ok(bytes) => crate::ring::Reply::ok(bytes),
            Err(_) => crate::ring::Reply::status(status::NOT_DONE),
        };
        let rings =
            std::iter::once(&self.ring).chain(self.store.heap.retired_rings.iter().map(|r| &r.1));
        for r in rings {
            if r.hdr().ring_id.load(Ordering::Relaxed) == ring_id && b < r.nboxes {
                r.complete(b, ticket, head_after, reply);
            }
        }
        self.store.held.retain(|&h| h != (ring_id, b));
    }

    /// Retire emptied record chunks at the current epoch and free those no reader can see.
    fn reclaim_chunks(&mut self) {
        let Some(rs) = self.store.recs.as_mut() else { return };
        if rs.job.is_some() {
            return; // the trainer reads stored records without a reader pin
        }
        let h = self.store.seg.hdr();
        let e = h.epoch.load(Ordering::Relaxed);
        if rs.stamp_retired(e) {
            // SYNC POINT: SeqCst, as in Heap::retire: a reader pinning the new epoch sees
            // the chunks' retired state.
            h.epoch.store(e + 1, Ordering::SeqCst);
        }
        if !rs.retired.is_empty() {
            let min = self.store.heap.min_reader_epoch(&self.ring, rs.retired[0].1);
            rs.reclaim(min);
        }
    }

    fn refresh_active(&mut self) {
        self.active.clear();
        for b in 0..self.ring.nboxes {
            if self.ring.ctl(b).owner_pid.load(Ordering::Acquire) != 0 {
                self.active.push(b);
            }
        }
    }

    /// Free the boxes of clients that exited (or released them) once their queue is empty;
    /// forget a replaced ring once none of its boxes has an owner.
    pub fn reap(&mut self) {
        for b in 0..self.ring.nboxes {
            self.ring.reap(b);
        }
        // A `retired` word on the ring in use was written by a client, not by a daemon
        // (replacing a ring installs a new file): clear it, clients ignore it meanwhile.
        if self.ring.hdr().retired.load(Ordering::Relaxed) != 0 {
            log::warn("a client set the request ring's retired word; cleared");
            self.ring.hdr().retired.store(0, Ordering::Release);
        }
        // The words that say a daemon serves the ring and what the file is: a group member
        // who overwrote them would make clients think no daemon runs (they stop waiting for
        // a box) and refuse to attach. Restored at each pass.
        let rh = self.ring.hdr();
        let me = shm::getpid();
        let words_ok = rh.magic.load(Ordering::Relaxed) == crate::layout::RING_MAGIC
            && rh.format_version.load(Ordering::Relaxed) == crate::layout::RING_VERSION
            && rh.layout_sig.load(Ordering::Relaxed) == crate::layout::LAYOUT_SIG
            && rh.daemon_pid.load(Ordering::Relaxed) == me
            && rh.ready.load(Ordering::Relaxed) == 1;
        if !words_ok {
            // The first restore and every 300th after it (a line a minute under a steady
            // attack, which could trip this at every pass).
            static RESTORES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            if RESTORES.fetch_add(1, Ordering::Relaxed).is_multiple_of(300) {
                log::warn("a client overwrote the request ring's header words; restored");
            }
            rh.format_version.store(crate::layout::RING_VERSION, Ordering::Relaxed);
            rh.layout_sig.store(crate::layout::LAYOUT_SIG, Ordering::Relaxed);
            rh.daemon_pid.store(me, Ordering::Relaxed);
            rh.ready.store(1, Ordering::Release);
            rh.magic.store(crate::layout::RING_MAGIC, Ordering::Release);
        }
        self.store.heap.retired_rings.retain(|(path, old)| {
            let owned = (0..old.nboxes).any(|b| {
                old.reap(b);
                old.ctl(b).owner_pid.load(Ordering::Acquire) != 0
            });
            if !owned {
                let _ = std::fs::remove_file(path);
                log::info(&format!("retired request ring {} has no clients left", path.display()));
            }
            owned
        });
    }

    /// Serve until `STOP` is set (a signal or `request_stop`).
    pub fn serve(&mut self) -> Result<()> {
        shm::install_signal_handler(on_signal)
            .map_err(|e| Error::io("cannot install signal handlers", e))?;
        if let Some(fd) = self.cfg.ready_fd.take() {
            if let Err(e) = shm::write_and_close_fd(fd, b"READY=1\n") {
                log::warn(&format!("cannot write readiness to fd {fd}: {e}"));
            }
        }
        sd_notify(&format!("READY=1\nSTATUS={}", self.status_line()));
        let parent = self.cfg.parent_fd.take().map(shm::take_fd);
        let watchdog = watchdog_interval();
        let mut last_reap = Instant::now();
        let mut last_flush = Instant::now();
        let mut last_sweep = Instant::now();
        let mut last_status = Instant::now();
        let mut last_watchdog = Instant::now();
        let mut status = String::new();
        while !STOP.load(Ordering::Relaxed) {
            let bell = self.ring.hdr().doorbell.load(Ordering::SeqCst);
            let mut n = self.poll_once(256);
            self.finish_training();
            n += self.finish_upstream();
            let now = Instant::now();
            // From the apply loop itself: a wedged loop stops the pings and systemd restarts us.
            if let Some(w) = watchdog {
                if now.duration_since(last_watchdog) >= w {
                    sd_notify("WATCHDOG=1");
                    last_watchdog = now;
                }
            }
            if now.duration_since(last_reap) >= Duration::from_millis(200) {
                if parent.as_ref().is_some_and(shm::hung_up) {
                    log::info("the process that started this daemon has exited: stopping");
                    STOP.store(true, Ordering::Relaxed);
                }
                self.reap();
                self.store.heap.reclaim(&self.store.seg, &self.ring);
                self.reclaim_chunks();
                last_reap = now;
            }
            // Idle, or prefix deletions wait for a lap of it: the sweep.
            let due = n == 0 || self.store.prefixes_pending();
            if due && now.duration_since(last_sweep) >= Duration::from_millis(10) {
                self.store.sweep_expired(4096);
                last_sweep = now;
            }
            if self.cfg.durability == Durability::Periodic
                && now.duration_since(last_flush) >= self.cfg.flush_interval
            {
                let recs = self.store.recs.as_ref().map(|r| r.rf.region.flush_async());
                if let Err(e) = self.store.seg.region.flush_async().and(recs.unwrap_or(Ok(()))) {
                    log::error(&format!("msync failed: {e}"));
                }
                last_flush = now;
            }
            if now.duration_since(last_status) >= Duration::from_secs(2) {
                let line = self.status_line();
                if line != status {
                    sd_notify(&format!("STATUS={line}"));
                    status = line;
                }
                last_status = now;
            }
            match LAST_SIGNAL.swap(0, Ordering::SeqCst) {
                0 => {}
                sig if sig == libc::SIGHUP as u32 => self.reload(),
                sig => LAST_SIGNAL.store(sig, Ordering::SeqCst), // a stop signal: keep for the log
            }
            if n == 0 {
                // Inserts waiting for a model: check the training again soon.
                let nap = if self.store.waiting_for_model { 2 } else { 50 };
                self.idle(bell, Duration::from_millis(nap));
            }
        }
        let sig = LAST_SIGNAL.load(Ordering::Relaxed);
        if sig != 0 {
            log::info(&format!("stopping on signal {sig}"));
        }
        self.shutdown()
    }

    /// One line for systemd's STATUS= and logs.
    pub fn status_line(&self) -> String {
        let h = self.store.seg.hdr();
        let clients = (0..self.ring.nboxes)
            .filter(|&b| self.ring.ctl(b).owner_pid.load(Ordering::Relaxed) != 0)
            .count();
        format!(
            "serving {} items, {} MiB live, {} clients, {} requests",
            h.items.load(Ordering::Relaxed),
            h.live_bytes.load(Ordering::Relaxed) >> 20,
            clients,
            h.c_requests.load(Ordering::Relaxed)
        )
    }

    /// SIGHUP: re-read the config file, environment and the original flags; apply what can
    /// change live, and say what needs a restart.
    pub fn reload(&mut self) {
        sd_notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        match Config::load(self.cfg.file.as_deref(), &self.cfg.flags) {
            Err(e) => log::error(&format!("reload refused, keeping the running settings: {e}")),
            Ok(new) => {
                let pinned = self.cfg.restart_only_changes(&new);
                if !pinned.is_empty() {
                    log::warn(&format!(
                        "reload: {} cannot change without a restart; keeping the running values",
                        pinned.join(", ")
                    ));
                }
                if new.policy != self.cfg.policy {
                    self.store.seg.hdr().policy.store(new.policy, Ordering::Relaxed);
                    self.store.heap.policy = new.policy;
                }
                if new.size / PAGE * PAGE > self.store.seg.size() {
                    match self.store.grow(new.size) {
                        Ok(n) => log::info(&format!("reload: segment grown bytes={n}")),
                        Err(e) => log::error(&format!("reload: cannot grow the segment: {e}")),
                    }
                }
                if new.records_size != self.cfg.records_size {
                    if let Some(r) = self.store.recs.as_mut() {
                        r.set_limit(new.records_size);
                    }
                }
                log::set_level(new.log_level);
                self.store.refuse_pickle = !new.pickle;
                let c = &mut self.cfg;
                let changed = [
                    ("size", c.size < new.size),
                    ("eviction_policy", c.policy != new.policy),
                    ("durability", c.durability != new.durability),
                    ("flush_interval_ms", c.flush_interval != new.flush_interval),
                    ("log_level", c.log_level != new.log_level),
                    ("pickle", c.pickle != new.pickle),
                    ("records_size", c.records_size != new.records_size),
                ];
                let changed: Vec<&str> = changed.iter().filter(|x| x.1).map(|x| x.0).collect();
                c.policy = new.policy;
                c.size = c.size.max(new.size);
                c.durability = new.durability;
                c.flush_interval = new.flush_interval;
                c.log_level = new.log_level;
                c.pickle = new.pickle;
                c.records_size = new.records_size;
                log::info(&format!(
                    "reloaded settings changed=[{}] policy={} durability={:?}",
                    changed.join(","),
                    if c.policy == POLICY_NOEVICTION { "noeviction" } else { "allkeys-lru" },
                    c.durability
                ));
            }
        }
        sd_notify(&format!("READY=1\nSTATUS={}", self.status_line()));
    }

    /// Spin briefly (a request usually follows soon after another), then sleep on the
    /// doorbell until a producer rings it or housekeeping is due.
    fn idle(&self, bell: u32, longest: Duration) {
        let h = self.ring.hdr();
        let spin_until = Instant::now() + Duration::from_micros(50);
        while Instant::now() < spin_until {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            if h.doorbell.load(Ordering::Acquire) != bell {
                return;
            }
        }
        // SYNC POINT: SeqCst pair with the producer's doorbell increment then load of
        // `sleeping` (ring::ring_doorbell): no wake-up is lost.
        h.sleeping.store(1, Ordering::SeqCst);
        if h.doorbell.load(Ordering::SeqCst) == bell && !STOP.load(Ordering::SeqCst) {
            futex_wait(&h.doorbell, bell, longest);
        }
        h.sleeping.store(0, Ordering::SeqCst);
    }

    /// Apply everything still queued, flush, and mark the segment cleanly stopped.
    pub fn shutdown(&mut self) -> Result<()> {
        sd_notify("STOPPING=1\nSTATUS=draining the request ring");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.poll_once(usize::MAX) > 0 && Instant::now() < deadline {}
        // Tiered: requests waiting on the upstream get what is left of the drain time (one
        // unanswered by then stays queued and runs again at the next start).
        while self.tier.as_ref().is_some_and(|t| !t.waiting.is_empty()) && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
            self.finish_upstream();
            self.poll_once(usize::MAX);
        }
        if self.tier.take().is_some() {
            // No invalidations arrive once we are gone: stop serving local copies now.
            self.store.set_tiered(true);
        }
        // A training in progress gets what is left of the drain time; one that takes longer
        // is abandoned (its TRAIN request stays queued and runs again at the next start).
        if let Some(rs) = self.store.recs.as_ref() {
            if rs.training_done_by(deadline) {
                self.finish_training();
                while self.poll_once(usize::MAX) > 0 && Instant::now() < deadline {}
            }
        }
        for r in
            std::iter::once(&self.ring).chain(self.store.heap.retired_rings.iter().map(|r| &r.1))
        {
            let rh = r.hdr();
            rh.ready.store(0, Ordering::Release);
            rh.daemon_pid.store(0, Ordering::Release);
        }
        self.store.heap.store(&self.store.seg);
        if let Some(rs) = &self.store.recs {
            rs.rf.region.flush().map_err(|e| Error::io("cannot flush the records file", e))?;
        }
        self.store.seg.region.flush().map_err(|e| Error::io("cannot flush the segment", e))?;
        let h = self.store.seg.hdr();
        h.daemon_pid.store(0, Ordering::Relaxed);
        h.clean.store(1, Ordering::Release);
        self.store.seg.region.flush().map_err(|e| Error::io("cannot flush the segment", e))?;
        if crate::crash::passed() > 0 {
            log::warn(&format!("crash points passed: {}", crate::crash::passed()));
        }
        log::info("stopped cleanly");
        Ok(())
    }
}

/// WATCHDOG_USEC from systemd (when meant for this process), halved: ping twice per period.
fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(shm::getpid()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    shm::clock_monotonic(&mut ts);
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Set a file's mode and, when configured, its group (the daemon keeps its own user).
fn set_owner_mode(path: &std::path::Path, gid: Option<u32>, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(g) = gid {
        std::os::unix::fs::chown(path, None, Some(g))
            .map_err(|e| Error::io(format!("cannot give {} to group {g}", path.display()), e))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("cannot set the mode of {}", path.display()), e))
}

fn lock_dir(cfg: &Config) -> Result<std::fs::File> {
    let lp = lock_path(&cfg.dir);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lp)
        .map_err(|e| Error::io(format!("cannot open {}", lp.display()), e))?;
    if !shm::try_lock_exclusive(&f).map_err(|e| Error::io("cannot lock the data directory", e))? {
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        return Err(Error::Locked(format!(
            "another surpd (pid {}) already serves {}",
            s.trim(),
            cfg.dir.display()
        )));
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = write!(f, "{}", shm::getpid());
    Ok(f)
}

/// Take the data file's own lock (see `Daemon::_data_lock`).
fn lock_data_file(path: &std::path::Path) -> Result<std::fs::File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    if !shm::try_lock_exclusive(&f).map_err(|e| Error::io("cannot lock the data segment", e))? {
        return Err(Error::Locked(format!(
            "another surpd already serves {} (it holds the lock on the data segment itself, \
             although {} is gone)",
            path.display(),
            lock_path(path.parent().unwrap_or(std::path::Path::new("."))).display()
        )));
    }
    Ok(f)
}

/// Replaced rings still on disk (`ring.surp.retired-N`), from a daemon that replaced one and
/// stopped before their clients had moved: they are served again until then.
fn retired_ring_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<_> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ring.surp.retired-"))
        })
        .collect();
    v.sort();
    v
}

/// Reuse the ring if it matches (its queued requests are then applied), else replace it.
/// A replaced ring is kept (as `ring.surp.retired-<generation>`) and served beside the new
/// one until its clients have moved: requests queued in it while no daemon ran are applied,
/// none is dropped. Returns the ring to use and the retired ones.
fn open_ring(cfg: &Config, seg: &Segment) -> Result<(Ring, Vec<(std::path::PathBuf, Ring)>)> {
    let mut retired = Vec::new();
    for p in retired_ring_files(&cfg.dir) {
        match Ring::open(&p) {
            Ok(r) if r.hdr().seg_seed.load(Ordering::Relaxed) == seg.seed => retired.push((p, r)),
            Ok(_) | Err(_) => {
                log::warn(&format!("removing unusable retired ring {}", p.display()));
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    let rp = ring_path(&cfg.dir);
    let want = RingParams {
        nboxes: cfg.max_clients,
        box_bytes: cfg.effective_queue_bytes(),
        nresults: 4096,
        hints_len: seg.max_size().saturating_sub(seg.heap_off).div_ceil(HINT_GRANULE),
        seg_seed: seg.seed,
        max_value: seg.max_value,
    };
    let mut replaced = None;
    if rp.exists() {
        match Ring::open(&rp) {
            Ok(r) => {
                let p = r.params();
                if !r.legacy
                    && p.nboxes == want.nboxes
                    && p.box_bytes == want.box_bytes
                    && p.hints_len == want.hints_len
                    && p.seg_seed == want.seg_seed
                    && p.nresults == want.nresults
                {
                    r.allocate_shared(&rp)?;
                    r.allocate_hints(seg.cap())?;
                    return Ok((r, retired));
                }
                if p.seg_seed == want.seg_seed {
                    // Keep it under another name (a hard link: ring.surp never disappears).
                    let gen = seg.hdr().generation.load(Ordering::Relaxed);
                    let keep = cfg.dir.join(format!("ring.surp.retired-{gen:08}"));
                    let _ = std::fs::remove_file(&keep);
                    match std::fs::hard_link(&rp, &keep) {
                        Ok(()) => replaced = Some((keep, r)),
                        Err(e) => log::warn(&format!("cannot keep the old ring: {e}")),
                    }
                }
                log::warn("ring settings changed: replacing the request ring");
            }
            Err(e) => log::warn(&format!("replacing unusable request ring: {e}")),
        }
    }
    Ring::create(&rp, &want, cfg.ring_mode)?;
    crate::crash::point("new ring installed");
    Ring::open(&rp)?.allocate_hints(seg.cap())?;
    if let Some((keep, r)) = replaced {
        // Clients see `retired` only now that the new file is in place.
        r.hdr().retired.store(1, Ordering::Release);
        retired.push((keep, r));
    }
    Ok((Ring::open(&rp)?, retired))
}

/// Attach and serve until a signal (the whole daemon).
pub fn run(cfg: Config) -> Result<()> {
    STOP.store(false, Ordering::SeqCst);
    let mut d = Daemon::attach(cfg)?;
    d.serve()
}
