//! The daemon's writable record store: append records into chunks, remove them, retire and
//! reuse empty chunks, and keep the codec model current (trained in a background thread).

use super::tables::Appender;
use super::*;

/// A model trained in a background thread, waiting to be installed by the daemon.
pub struct Trained {
    pub model: Model,
    /// Field names the trainer met that its snapshot of the table did not have, in the
    /// order it numbered them from `base_fields`.
    new_fields: Vec<String>,
    base_fields: u32,
    pub sample: usize,
    /// Bytes per record (x1000) the model takes for sample records it was not trained on (0:
    /// too small a sample to hold any out).
    held_out_bpr_milli: u64,
    /// Stored bytes per million bytes of value encoding for those records: drift is judged
    /// by it, so that records of another size do not pass for better or worse compressed.
    held_out_ppm: u64,
    /// The same for the model in use, for a drift training (0: not measured).
    current_ppm: u64,
}

/// The request a training run answers when it is done: (ring id, box, ticket, head after).
pub type TrainRequest = (u64, u32, u64, u64);

/// A training run in a background thread: the apply loop keeps applying writes (with the
/// current model) meanwhile.
pub struct TrainJob {
    handle: std::thread::JoinHandle<Result<Trained>>,
    pub started: std::time::Instant,
    /// The TRAIN request waiting for it, if a client asked (none for automatic training).
    pub request: Option<TrainRequest>,
    /// Live records when it started (the next growth step is four or ten times it).
    live_at_start: u64,
    /// A training for drift: its model must beat the one in use.
    drift: bool,
    /// Inserts waited for it.
    waited: bool,
}

/// The daemon's side: appends, removes, trains.
pub struct RecStore {
    pub rf: RecFile,
    pub tables: LogTables,
    enc: RecordEncoder,
    buf: Vec<u8>,
    /// Retired chunks waiting for readers to leave: (chunk, epoch).
    pub retired: Vec<(u64, u64)>,
    /// Train automatically once this many records exist (0 = never; a small first model at
    /// an eighth of it), and again as the store grows and as its data drifts (see
    /// [`RecStore::auto_train_due`]).
    pub train_after: u64,
    /// Sample records sent for the next training (instead of the stored ones), at most
    /// [`MAX_SAMPLES`] of them and [`MAX_SAMPLE_BYTES`] in all (a reservoir past that).
    pub samples: Reservoir,
    /// Records inserted since the current model was installed, or since drift began: what a
    /// training for drift learns from.
    recent: Reservoir,
    /// The current measure of records as they come in (stored bytes, records, bytes of value
    /// encoding), the baseline (stored bytes per million of value encoding, 0: not yet; see
    /// [`RecStore::note_inserted`]), and whether a measure since came out worse than it by
    /// more than [`DRIFT_RATIO`].
    window: (u64, u64, u64),
    baseline: u64,
    /// The ratio (ppm, as [`Trained::held_out_ppm`]) of the last measure.
    recent_ppm: u64,
    drifted: bool,
    worse_before: bool,
    /// The baseline was measured on records that came in under the model (see
    /// [`RecStore::note_inserted`]), not only on its held-out sample.
    settled: bool,
    /// `inserted` when `recent` started: the current model's install, or the first measure
    /// since that was worse than its baseline.
    recent_from: u64,
    /// The most chunks the file may grow to (from `records_size`; a version 1 file: the
    /// chunks it has).
    pub limit_chunks: u64,
    /// The training running in the background, and TRAIN requests waiting for their turn.
    pub job: Option<TrainJob>,
    pub waiting: std::collections::VecDeque<(bool, TrainRequest)>,
    /// Live records when a training no one asked for last failed (its model could not be
    /// installed: the table log full, say): the next waits for twice as many, and inserts
    /// do not wait for it. None once a model is installed.
    auto_failed: Option<u64>,
}

/// Most sample records kept for one training.
pub const MAX_SAMPLES: usize = 200_000;
/// Most sample bytes kept for one training (training takes about 30x this in memory).
pub const MAX_SAMPLE_BYTES: u64 = 24 << 20;
/// Stored records read for a training without a sample.
pub const STORED_SAMPLE: usize = 100_000;
/// Records of one measure of how well the current model compresses what comes in.
pub const DRIFT_WINDOW: u64 = 4_096;
/// A measure this much worse than the model's first (percent) is drift.
pub const DRIFT_RATIO: u64 = 115;
/// Records inserted under a model before drift may retrain it (the sample it learns from).
pub const DRIFT_MIN_INSERTS: u64 = 20_000;
/// The fewest records a small first model is trained on (see
/// [`RecStore::first_training_at`]).
pub const MIN_FIRST_TRAINING: u64 = 100;
/// Longest inserts wait for a training; past it they flow with the model in use.
pub const MAX_HOLD: std::time::Duration = std::time::Duration::from_secs(1);
/// The most a model's baseline is over its held-out measure (percent; see
/// [`RecStore::note_inserted`]).
pub const BASELINE_SLACK: u64 = 130;
/// A drift training's model is installed only if it takes at most this share (percent) of
/// what the model in use takes for the same records neither learned from.
pub const DRIFT_GAIN: u64 = 90;
/// Records and bytes kept of what came in since the current model.
const RECENT_SAMPLES: usize = 100_000;
const RECENT_BYTES: u64 = 12 << 20;

/// Why the daemon trains a model no one asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainWhy {
    /// The first records exist (see [`RecStore::first_training_at`]).
    First,
    /// `train_after` records exist, or four or ten times as many as when the current model
    /// was trained.
    Growth,
    /// Records coming in compress measurably worse than the model did at first.
    Drift,
}

/// A bounded uniform sample of the records added to it: all of them up to its bounds, then
/// each later one replaces a random kept one with falling odds, so that a sample of any size
/// is spread over everything added and memory stays bounded.
pub struct Reservoir {
    pub items: Vec<Vec<u8>>,
    bytes: u64,
    seen: u64,
    max_items: usize,
    max_bytes: u64,
    /// The state of its random choices (splitmix64, seeded once: a getrandom call per
    /// record was a tenth of the daemon's time during a load).
    rng: u64,
}

impl Reservoir {
    pub fn new(max_items: usize, max_bytes: u64) -> Reservoir {
        let rng = shm::random_u64();
        Reservoir { items: Vec::new(), bytes: 0, seen: 0, max_items, max_bytes, rng }
    }

    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Offer one record; returns how many are kept.
    pub fn add(&mut self, rec: &[u8]) -> usize {
        self.seen += 1;
        if self.items.len() < self.max_items && self.bytes + rec.len() as u64 <= self.max_bytes {
            self.bytes += rec.len() as u64;
            self.items.push(rec.to_vec());
        } else if !self.items.is_empty() {
            let j = self.random() % self.seen;
            if (j as usize) < self.items.len() {
                let old = &mut self.items[j as usize];
                if self.bytes - old.len() as u64 + rec.len() as u64 <= self.max_bytes {
                    self.bytes = self.bytes - old.len() as u64 + rec.len() as u64;
                    // The buffer is reused only if it is not much larger: `bytes`
                    // counts lengths, and kept capacity would add up unseen.
                    if old.capacity() <= 2 * rec.len() {
                        old.clear();
                        old.extend_from_slice(rec);
                    } else {
                        *old = rec.to_vec();
                    }
                }
            }
        }
        self.items.len()
    }

    /// Everything kept, leaving the reservoir empty.
    pub fn take(&mut self) -> Vec<Vec<u8>> {
        self.bytes = 0;
        self.seen = 0;
        std::mem::take(&mut self.items)
    }
}

/// What an insert produced.
pub struct Inserted {
    pub rid: u64,
    /// (chunk, new fill) to publish.
    publish: (u64, u32),
    pub len: u64,
    /// Stored in the plain value encoding (no model yet).
    plain: bool,
    /// Stored as the client compressed it.
    as_sent: bool,
}

impl RecStore {
    pub fn attach(rf: RecFile, train_after: u64, limit: u64) -> Result<RecStore> {
        let mut tables = LogTables::default();
        tables.refresh(&rf)?;
        // Blocks for what the daemon stores into (a file made before allocation was done as
        // space came into use): header, chunk table, the table log's current step, the
        // chunk being filled.
        let end = rf.hdr().tables_end.load(Ordering::Relaxed);
        let log_end = ((end / TABLES_STEP + 1) * TABLES_STEP).min(rf.tables_cap);
        let counted = rf.hdr().nchunks.load(Ordering::Relaxed).min(rf.max_chunks);
        rf.allocate(0, rf.chunk_tab_off + rf.chunk_table_bytes(counted))?;
        rf.allocate(rf.tables_off, log_end)?;
        let active = rf.hdr().active.load(Ordering::Relaxed);
        rf.cover_count()?;
        let nchunks = rf.nchunks();
        if active > 0 && active <= nchunks {
            rf.allocate_chunk(active - 1)?;
        }
        // A crash between a chunk's activation and `active` naming it leaves a second
        // active chunk that nothing would ever fill or retire: it becomes full (and, empty,
        // is retired by `retire_empty`).
        for c in (0..nchunks).filter(|&c| c + 1 != active) {
            let ctl = rf.ctl(c);
            if ctl.state.load(Ordering::Relaxed) == C_ACTIVE {
                ctl.state.store(C_FULL, Ordering::Release);
            }
        }
        // Retired chunks waiting for readers when the last daemon stopped: wait again (the
        // reclaim pass stamps them with the current epoch).
        let retired = (0..nchunks)
            .filter(|&c| rf.ctl(c).state.load(Ordering::Relaxed) == C_RETIRED)
            .map(|c| (c, 0))
            .collect();
        // Drift is judged against the baseline the model in use was measured with (kept in
        // the header), from inserts made since this start: a restart neither forgets the
        // baseline (else the first window after it would become one, drifted or not) nor
        // counts inserts made before it twice.
        let baseline = if tables.models.is_empty() {
            0
        } else {
            rf.hdr().baseline_ppm.load(Ordering::Relaxed)
        };
        let recent_from = rf.hdr().inserted.load(Ordering::Relaxed);
        let mut st = RecStore {
            rf,
            tables,
            enc: RecordEncoder::new(),
            buf: Vec::new(),
            retired,
            train_after,
            samples: Reservoir::new(MAX_SAMPLES, MAX_SAMPLE_BYTES),
            recent: Reservoir::new(RECENT_SAMPLES, RECENT_BYTES),
            window: (0, 0, 0),
            baseline,
            recent_ppm: 0,
            drifted: false,
            worse_before: false,
            settled: baseline != 0,
            recent_from,
            limit_chunks: 0,
            job: None,
            waiting: Default::default(),
            auto_failed: None,
        };
        st.set_limit(limit);
        Ok(st)
    }

    /// The most bytes the file may grow to (`records_size`, at attach and at a reload). A
    /// limit below what the file holds stops its growth; nothing is removed.
    pub fn set_limit(&mut self, limit: u64) {
        let rf = &self.rf;
        self.limit_chunks = if rf.growable {
            (limit.saturating_sub(rf.chunks_off) / CHUNK).min(rf.max_chunks)
        } else {
            rf.max_chunks
        };
        if rf.growable {
            rf.hdr().limit.store(rf.chunks_off + self.limit_chunks * CHUNK, Ordering::Relaxed);
        }
    }

    /// Keep one sample record sent for the next training (see [`Reservoir`]). Returns how
    /// many are kept.
    pub fn add_sample(&mut self, rec: &[u8]) -> usize {
        self.samples.add(rec)
    }

    /// After an insert of `val` (`len` bytes stored): keep it in the sample of what came in
    /// since the current model, and measure how well that model compresses it.
    pub fn note_inserted(&mut self, val: &[u8], len: u64) {
        if self.tables.models.is_empty() {
            return;
        }
        self.recent.add(val);
        self.window.0 += len;
        self.window.1 += 1;
        self.window.2 += val.len() as u64;
        if self.window.1 < DRIFT_WINDOW {
            return;
        }
        let bpr = self.window.0 * 1000 / self.window.1;
        let ppm = self.window.0 * 1_000_000 / self.window.2.max(1);
        self.window = (0, 0, 0);
        self.recent_ppm = ppm;
        let h = self.rf.hdr();
        h.recent_bpr_milli.store(bpr, Ordering::Relaxed);
        if !self.settled {
            // The first measure under a model sets its baseline, between what it took for
            // held-out sample records and BASELINE_SLACK more. Records to come differ more
            // from the sample than its held-out part does (links in file order measured 15-25%
            // over it, and a baseline of the held-out part alone retrained every 28,000
            // records); the upper bound still finds drift when a model met other data from
            // the start (one trained on a sent sample).
            self.baseline = match self.baseline {
                0 => ppm,
                b => ppm.clamp(b, b * BASELINE_SLACK / 100),
            };
            h.baseline_ppm.store(self.baseline, Ordering::Relaxed);
            h.baseline_bpr_milli.store(bpr, Ordering::Relaxed);
            self.settled = true;
            return;
        }
        let worse = ppm * 100 > self.baseline * DRIFT_RATIO;
        if worse && !self.worse_before {
            // What a drift training learns from starts here: records of the new kind, not
            // a reservoir over everything since the model, where they would be a few percent.
            self.recent.take();
            self.recent_from = h.inserted.load(Ordering::Relaxed);
        }
        // Two measures in a row, not one noisy one.
        self.drifted |= worse && self.worse_before;
        self.worse_before = worse;
    }

    /// Start training in a background thread (from the samples sent, else from stored
    /// records, which the thread reads through its own mapping). If a run is in progress,
    /// a request waits for its turn.
    pub fn start_training(&mut self, compact: bool, request: Option<TrainRequest>) {
        self.start_training_on(compact, request, None);
    }

    /// Start a training no one asked for (see [`TrainWhy`]): on the stored records spread
    /// over the store, or, for drift, on what came in since the current model.
    pub fn start_auto_training(&mut self, compact: bool, why: TrainWhy) {
        let recent = (why == TrainWhy::Drift).then(|| self.recent.take());
        crate::log::info(&format!(
            "training the record codec in the background why={why:?} records={} sample={}",
            self.rf.hdr().live.load(Ordering::Relaxed),
            recent.as_ref().map_or("stored".to_string(), |r| r.len().to_string())
        ));
        self.drifted = false;
        self.start_training_on(compact, None, recent);
    }

    fn start_training_on(
        &mut self,
        compact: bool,
        request: Option<TrainRequest>,
        recent: Option<Vec<Vec<u8>>>,
    ) {
        if self.job.is_some() {
            if let Some(r) = request {
                self.waiting.push_back((compact, r));
            }
            return;
        }
        let drift = recent.is_some();
        let (samples, sent) = match recent {
            Some(r) => (r, false),
            None => {
                let s = self.samples.take();
                let sent = !s.is_empty();
                (s, sent)
            }
        };
        // The growth step counts from the records a model learned from: those stored, or
        // a sample a client sent, if larger (one sent to an empty store once counted as
        // trained at one record, so growth retrained it on 10, 100, 1,000 stored records,
        // each worse).
        let learned = if sent { samples.len() as u64 } else { 0 };
        let names = self.tables.names.clone();
        let path = self.rf.path.clone();
        let current = if drift { self.tables.models.last().cloned() } else { None };
        let handle = std::thread::Builder::new()
            .name("surpd-train".into())
            .spawn(move || train_in_background(&path, samples, names, compact, current));
        match handle {
            Ok(handle) => {
                let h = self.rf.hdr();
                let live_at_start = h.live.load(Ordering::Relaxed).max(learned).max(1);
                let started = std::time::Instant::now();
                self.job =
                    Some(TrainJob { handle, started, request, live_at_start, drift, waited: false })
            }
            Err(e) => {
                crate::log::error(&format!("cannot start the training thread: {e}"));
                if let Some(r) = request {
                    self.waiting.push_front((compact, r));
                }
            }
        }
    }

    /// When the first model is trained: at an eighth of `train_after` records (250 by
    /// default, if that is [`MIN_FIRST_TRAINING`] or more), a small model (links: 22 KB)
    /// that the records up to `train_after` are compressed with instead of being stored as
    /// they come (records are never re-encoded: ids are offsets). Links in file order: the
    /// first 2,000 took 214 B each plain, 56 B under a model of 250 of them.
    pub fn first_training_at(&self) -> u64 {
        match self.train_after / 8 {
            n if n >= MIN_FIRST_TRAINING => n,
            _ => self.train_after,
        }
    }

    /// If the background training finished, install its model (the apply loop calls this
    /// between requests). Returns the request it answers with its reply status and value
    /// (model bytes), if a client asked for it.
    pub fn poll_training(
        &mut self,
    ) -> Option<(Option<TrainRequest>, std::result::Result<u64, String>)> {
        if !self.job.as_ref().is_some_and(|j| j.handle.is_finished()) {
            return None;
        }
        let job = self.job.take().expect("checked");
        let result = match job.handle.join() {
            Ok(Ok(t)) if job.drift && t.held_out_ppm * 100 > t.current_ppm * DRIFT_GAIN => {
                // Not better enough on what came in: what the model in use does now is its
                // new baseline (else each measure would find drift again and retrain).
                crate::log::info(&format!(
                    "trained the record codec in the background sample={} ms={:.0}, not \
                     installed: it took {:.1}% of the value encoding for records it did not \
                     learn from, the model in use {:.1}%",
                    t.sample,
                    job.started.elapsed().as_secs_f64() * 1e3,
                    t.held_out_ppm as f64 / 1e4,
                    t.current_ppm as f64 / 1e4
                ));
                let h = self.rf.hdr();
                self.baseline = self.recent_ppm.max(self.baseline);
                h.baseline_ppm.store(self.baseline, Ordering::Relaxed);
                h.baseline_bpr_milli
                    .store(h.recent_bpr_milli.load(Ordering::Relaxed), Ordering::Relaxed);
                h.drift_models_discarded.fetch_add(1, Ordering::Relaxed);
                self.measure_afresh(true);
                Ok(0)
            }
            Ok(Ok(t)) => {
                let sample = t.sample;
                if job.request.is_none() {
                    self.rf.hdr().auto_trainings.fetch_add(1, Ordering::Relaxed);
                }
                self.install(t, job.live_at_start).map(|bytes| {
                    crate::log::info(&format!(
                        "trained the record codec in the background sample={sample} \
                         model_bytes={bytes} ms={:.0}",
                        job.started.elapsed().as_secs_f64() * 1e3
                    ));
                    bytes as u64
                })
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Config("the training thread panicked".into())),
        };
        let result = result.map_err(|e| {
            crate::log::warn(&format!("training failed: {e}"));
            e.to_string()
        });
        if job.request.is_none() && result.is_err() {
            self.auto_failed = Some(self.rf.hdr().live.load(Ordering::Relaxed).max(1));
        }
        if let Some((compact, r)) = self.waiting.pop_front() {
            self.start_training(compact, Some(r));
        }
        Some((job.request, result))
    }

    /// Wait for a running training to finish (a clean stop, up to `deadline`).
    pub fn training_done_by(&self, deadline: std::time::Instant) -> bool {
        while self.job.as_ref().is_some_and(|j| !j.handle.is_finished()) {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        true
    }

    /// Make a background-trained model current: the field names it met are interned (their
    /// ids may differ from the trainer's if names were added meanwhile: the model is
    /// renumbered), then the model is appended to the table log.
    fn install(&mut self, mut t: Trained, live_at_start: u64) -> Result<usize> {
        let mut map = std::collections::HashMap::new();
        let mut ap = Appender { rf: &self.rf, t: &mut self.tables };
        for (i, name) in t.new_fields.iter().enumerate() {
            let provisional = t.base_fields + i as u32;
            let real = ap.intern(T_FIELD, name)?;
            if real != provisional {
                map.insert(provisional, real);
            }
        }
        t.model.remap_fields(&map);
        let bytes = t.model.to_bytes();
        let (kind, entry) = super::tables::model_entry(&bytes)?;
        ap.append(kind, &entry)?;
        self.tables.models.push(Arc::new(t.model));
        let h = self.rf.hdr();
        h.nmodels.store(self.tables.models.len() as u64, Ordering::Relaxed);
        crate::crash::point("model installed");
        // The lifecycle starts over with this model: the next growth step, a fresh measure.
        h.trained_live.store(live_at_start, Ordering::Relaxed);
        h.train_sample.store(t.sample as u64, Ordering::Relaxed);
        // The baseline: what it takes for records of its kind it was not trained on (else the
        // first measure of what comes in).
        h.baseline_bpr_milli.store(t.held_out_bpr_milli, Ordering::Relaxed);
        h.baseline_ppm.store(t.held_out_ppm, Ordering::Relaxed);
        self.recent.take();
        self.baseline = t.held_out_ppm;
        self.measure_afresh(false);
        self.auto_failed = None;
        Ok(bytes.len())
    }

    /// Start measuring what comes in over again, no drift seen, from the records inserted
    /// from now on; `settled`: the baseline stands (else the first measure sets it).
    fn measure_afresh(&mut self, settled: bool) {
        (self.window, self.drifted, self.worse_before) = ((0, 0, 0), false, false);
        self.settled = settled;
        self.recent_from = self.rf.hdr().inserted.load(Ordering::Relaxed);
    }

    /// Recount the header's counters from the chunks (after an unclean stop).
    pub fn recount(&self) {
        let (mut live, mut live_bytes, mut used) = (0u64, 0u64, 0u64);
        for c in 0..self.rf.nchunks() {
            let ctl = self.rf.ctl(c);
            let st = ctl.state.load(Ordering::Relaxed);
            if st != C_ACTIVE && st != C_FULL {
                continue;
            }
            let fill = (ctl.fill.load(Ordering::Relaxed) as u64).min(CHUNK);
            used += fill;
            let (mut n, mut p) = (0u32, 0u64);
            let base = self.rf.chunks_off + c * CHUNK;
            let data = self.rf.region.slice(base, fill).unwrap_or_default();
            while p < fill {
                let Some((l, hl, len)) = parse_header(&data[p as usize..]) else { break };
                let sz = (hl + len) as u64;
                if l {
                    n += 1;
                    live_bytes += sz;
                }
                p += sz;
            }
            ctl.live.store(n, Ordering::Relaxed);
            live += n as u64;
        }
        let h = self.rf.hdr();
        h.live.store(live, Ordering::Relaxed);
        h.live_bytes.store(live_bytes, Ordering::Relaxed);
        h.used_bytes.store(used, Ordering::Relaxed);
    }

    /// Retire full chunks left without live records (a stop between the last remove and the
    /// retirement). Call after [`RecStore::recount`].
    pub fn retire_empty(&mut self) {
        for c in 0..self.rf.nchunks() {
            self.maybe_retire(c);
        }
    }

    fn current_model(&self) -> u32 {
        self.tables.models.len() as u32
    }

    /// Decode a record a client sent compressed with model number `model` into `out`,
    /// refusing one that does not decode in full to a valid value of at most `limit` bytes.
    pub fn decode_sent(
        &self,
        model: u32,
        payload: &[u8],
        limit: u64,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        out.clear();
        let m = (model as usize).checked_sub(1).and_then(|i| self.tables.models.get(i));
        let m = m.ok_or_else(|| {
            Error::Corrupted(format!(
                "compressed with model {model}; the store has {}",
                self.tables.models.len()
            ))
        })?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        codec::decode_within(m, &self.tables, payload, out, limit)?;
        crate::value::validate(out)
    }

    /// Compress `val` and write it after the active chunk's fill, unpublished. `sent`: the
    /// record as a client compressed it (model number, bytes), already decoded to `val`;
    /// stored as sent if that model is the current one.
    pub fn prepare(&mut self, val: &[u8], sent: Option<(u32, &[u8])>) -> Result<Inserted> {
        let model = self.current_model();
        self.buf.clear();
        let as_sent = sent.filter(|s| s.0 == model && model != 0);
        if let Some((_, bytes)) = as_sent {
            self.buf.extend_from_slice(bytes);
        } else if model == 0 {
            crate::value::validate(val)?;
            self.buf.extend_from_slice(val);
        } else {
            // The encoder parses the whole value and refuses a malformed one.
            let m = self.tables.models[model as usize - 1].clone();
            let mut out = std::mem::take(&mut self.buf);
            let mut ap = Appender { rf: &self.rf, t: &mut self.tables };
            let r = self.enc.encode(&m, &mut ap, val, &mut out);
            self.buf = out;
            r?;
        }
        let len = self.buf.len();
        if len as u64 > MAX_RECORD {
            return Err(Error::ValueTooLarge { size: len as u64, max: MAX_RECORD });
        }
        let mut hdr = Vec::with_capacity(4);
        put_header(&mut hdr, len);
        let total = (hdr.len() + len) as u64;
        let chunk = self.chunk_for(total, model)?;
        let ctl = self.rf.ctl(chunk);
        let fill = ctl.fill.load(Ordering::Relaxed) as u64;
        let off = chunk * CHUNK + fill;
        let gen = ctl.gen.load(Ordering::Relaxed);
        let check = check_of(self.rf.seed, off, gen & 0xff, &self.buf);
        let at = self.rf.chunks_off + off;
        self.rf.region.write(at, &hdr);
        self.rf.region.write(at + hdr.len() as u64, &self.buf);
        crate::crash::point("record written past the fill");
        Ok(Inserted {
            rid: make_id(off, gen, check),
            publish: (chunk, (fill + total) as u32),
            len: total,
            plain: model == 0,
            as_sent: as_sent.is_some(),
        })
    }

    /// Make a prepared record readable (one Release store) and count it.
    pub fn publish(&self, ins: &Inserted) {
        let ctl = self.rf.ctl(ins.publish.0);
        ctl.fill.store(ins.publish.1, Ordering::Release);
        crate::crash::point("chunk fill published");
        ctl.live.fetch_add(1, Ordering::Relaxed);
        ctl.appended.fetch_add(1, Ordering::Relaxed);
        let h = self.rf.hdr();
        h.live.fetch_add(1, Ordering::Relaxed);
        h.live_bytes.fetch_add(ins.len, Ordering::Relaxed);
        h.used_bytes.fetch_add(ins.len, Ordering::Relaxed);
        h.inserted.fetch_add(1, Ordering::Relaxed);
        if ins.plain {
            h.plain_inserted.fetch_add(1, Ordering::Relaxed);
        }
        if ins.as_sent {
            h.client_encoded.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The chunk to append `n` bytes to with `model`: the active one if it fits and uses the
    /// model, else a fresh one.
    fn chunk_for(&mut self, n: u64, model: u32) -> Result<u64> {
        let a = self.rf.hdr().active.load(Ordering::Relaxed);
        if a > 0 {
            let ctl = self.rf.ctl(a - 1);
            if ctl.model.load(Ordering::Relaxed) == model
                && ctl.fill.load(Ordering::Relaxed) as u64 + n <= CHUNK
            {
                return Ok(a - 1);
            }
            ctl.state.store(C_FULL, Ordering::Release);
            crate::crash::point("chunk full");
            self.maybe_retire(a - 1);
        }
        let n = self.rf.nchunks();
        let free = (0..n).find(|&c| self.rf.ctl(c).state.load(Ordering::Relaxed) == C_FREE);
        let c = match free {
            Some(c) => c,
            None if self.rf.growable && n < self.limit_chunks => self.rf.grow()?,
            None => return Err(Error::SegmentFull(full_message_for(&self.rf))),
        };
        let ctl = self.rf.ctl(c);
        self.rf.allocate_chunk(c)?;
        // Generation first, then the state (Release): a reader that sees the chunk active
        // sees its new generation, so old ids into it fail.
        ctl.gen.store(ctl.gen.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        // A boxless scan that read the chunk before this reuse reads the generation again
        // after its parse (Acquire fence): the new generation is ordered before any record
        // written into the chunk.
        std::sync::atomic::fence(Ordering::Release);
        ctl.fill.store(0, Ordering::Relaxed);
        ctl.live.store(0, Ordering::Relaxed);
        ctl.model.store(model, Ordering::Relaxed);
        ctl.state.store(C_ACTIVE, Ordering::Release);
        crate::crash::point("chunk activated");
        self.rf.hdr().active.store(c + 1, Ordering::Relaxed);
        Ok(c)
    }

    /// Whether `rid` names a live record.
    pub fn is_live(&self, rid: u64) -> bool {
        self.rf.lookup(rid).is_ok()
    }

    /// Remove a record: clear its live bit. False if it is not live.
    pub fn remove(&mut self, rid: u64) -> bool {
        if self.rf.lookup(rid).is_err() {
            return false;
        }
        let off = rid >> 28;
        let (chunk, inner) = (off >> CHUNK_SHIFT, off & (CHUNK - 1));
        let at = self.rf.chunks_off + chunk * CHUNK + inner;
        let b: &AtomicU8 = self.rf.region.get(at);
        let hdr = self.rf.region.slice(at, 16.min(CHUNK - inner)).and_then(parse_header);
        b.store(b.load(Ordering::Relaxed) & !LIVE, Ordering::Release);
        crate::crash::point("live bit cleared");
        let ctl = self.rf.ctl(chunk);
        ctl.live.fetch_sub(1, Ordering::Relaxed);
        let h = self.rf.hdr();
        h.live.fetch_sub(1, Ordering::Relaxed);
        if let Some((_, hl, len)) = hdr {
            h.live_bytes.fetch_sub((hl + len) as u64, Ordering::Relaxed);
        }
        h.removed.fetch_add(1, Ordering::Relaxed);
        self.maybe_retire(chunk);
        true
    }

    fn maybe_retire(&mut self, chunk: u64) {
        let ctl = self.rf.ctl(chunk);
        let active = self.rf.hdr().active.load(Ordering::Relaxed) == chunk + 1;
        if !active
            && ctl.state.load(Ordering::Relaxed) == C_FULL
            && ctl.live.load(Ordering::Relaxed) == 0
        {
            ctl.state.store(C_RETIRED, Ordering::Release);
            crate::crash::point("chunk retired");
            let fill = ctl.fill.load(Ordering::Relaxed) as u64;
            self.rf.hdr().used_bytes.fetch_sub(fill, Ordering::Relaxed);
            self.retired.push((chunk, 0));
        }
    }

    /// Retired chunks get the epoch they were retired at (the caller bumps the epoch after).
    pub fn stamp_retired(&mut self, epoch: u64) -> bool {
        let mut any = false;
        for r in self.retired.iter_mut().filter(|r| r.1 == 0) {
            r.1 = epoch;
            any = true;
        }
        any
    }

    /// Free retired chunks no reader can be inside (`min` = oldest pinned epoch).
    pub fn reclaim(&mut self, min: Option<u64>) {
        let rf = &self.rf;
        self.retired.retain(|&(c, e)| {
            if e == 0 || min.is_some_and(|m| m <= e) {
                return true;
            }
            // The chunk keeps its disk blocks until it is refilled (punching a hole to give
            // them back is future work).
            rf.ctl(c).state.store(C_FREE, Ordering::Release);
            crate::crash::point("chunk freed");
            false
        });
    }

    /// Decode a live record (daemon side: updates, training, dumps).
    pub fn read(&mut self, rid: u64, out: &mut Vec<u8>) -> Result<bool> {
        let Ok((payload, model)) = self.rf.lookup(rid) else { return Ok(false) };
        decode_payload(&self.tables, model, payload, out)?;
        Ok(true)
    }

    /// Train a model now, in this thread, and make it current (tools and tests; the daemon
    /// trains in the background: [`RecStore::start_training`]).
    pub fn train(&mut self, compact: bool) -> Result<usize> {
        let samples = self.samples.take();
        let t =
            train_in_background(&self.rf.path, samples, self.tables.names.clone(), compact, None)?;
        let live = self.rf.hdr().live.load(Ordering::Relaxed).max(1);
        self.install(t, live)
    }

    /// Whether an insert should wait (stay queued in its box) for the model being trained,
    /// for at most [`MAX_HOLD`] of it: while there is no model; while the model in use
    /// learned from fewer than 16 x `train_after` records (the trainings at `train_after`, 4x
    /// and 16x it: 2,000, 8,000 and 32,000 records by default); or while the last measure
    /// of what comes in was more than [`DRIFT_RATIO`] worse than the model's baseline.
    ///
    /// Record ids are offsets, so a record is never re-encoded: one stored under no model or
    /// the wrong one keeps that size for good. A bulk load outruns a training by far (links
    /// take 154 B each with no model and 33 with a good one; the first training, 130 ms, let
    /// 60,000 records through at the apply loop's pace; the one at 8,000 records, 320 ms,
    /// let 30,000 through under the model of 2,000), so it waits a moment instead. A load
    /// the model in use compresses well, once past those first steps, never waits.
    pub fn insert_should_wait(&mut self) -> bool {
        let Some(job) = self.job.as_mut() else { return false };
        let h = self.rf.hdr();
        // No model, drift, or a young one (the first growth steps).
        let young = h.trained_live.load(Ordering::Relaxed) < self.train_after.saturating_mul(16);
        let bad = self.tables.models.is_empty() || self.worse_before || young;
        // A retry after a failed training does not hold inserts (it may well fail again).
        let wait = bad && self.auto_failed.is_none() && job.started.elapsed() < MAX_HOLD;
        if wait && !job.waited {
            job.waited = true;
            h.trainings_waited_for.fetch_add(1, Ordering::Relaxed);
        }
        wait
    }

    /// Whether to train a model no one asked for, and why: a small first model at an eighth
    /// of `train_after` records (see [`RecStore::first_training_at`]); one at `train_after`;
    /// again at four times as many records as the current model was trained at while that
    /// is under [`STORED_SAMPLE`] (8k, 32k, 128k), ten times past it; and when records
    /// coming in compress measurably worse than the model's baseline ([`DRIFT_RATIO`]),
    /// once [`DRIFT_MIN_INSERTS`] came under it.
    pub fn auto_train_due(&self) -> Option<TrainWhy> {
        if self.train_after == 0 || self.job.is_some() {
            return None;
        }
        let h = self.rf.hdr();
        let live = h.live.load(Ordering::Relaxed);
        // After a failure, not again until the store doubled (each try trains in full).
        if self.auto_failed.is_some_and(|at| live < at.saturating_mul(2)) {
            return None;
        }
        if self.tables.models.is_empty() {
            return (live >= self.first_training_at()).then_some(TrainWhy::First);
        }
        let trained = h.trained_live.load(Ordering::Relaxed);
        if trained < self.train_after {
            // The small first model, or one asked for on fewer records: a full one now.
            return (live >= self.train_after).then_some(TrainWhy::Growth);
        }
        // Samples hold up to STORED_SAMPLE stored records: below that, a model learns much
        // from four times as many (links: 39 B/record from 20,000, 33 from 100,000).
        let step = if trained < STORED_SAMPLE as u64 { 4 } else { 10 };
        if live >= trained.saturating_mul(step) {
            return Some(TrainWhy::Growth);
        }
        let since = h.inserted.load(Ordering::Relaxed).saturating_sub(self.recent_from);
        (self.drifted && since >= DRIFT_MIN_INSERTS).then_some(TrainWhy::Drift)
    }
}

/// The training thread: read the sample (the records sent, else up to [`STORED_SAMPLE`]
/// stored records spread evenly over the store, through a read-only mapping of its own),
/// train, and hand back the model with the field names it had to number itself. A drift
/// training (`current`: the model in use) learns from what came in since drift began and as
/// many stored records spread over the store: links learned from 20,000 records of a new
/// kind alone took 32.2 B each for the rest of that kind, 31.1 B with 20,000 older ones
/// beside them (the older ones teach the shape of titles and URLs that a small sample of
/// the new kind misses). Its held-out records, the measure of drift and of its gain, are
/// of the new kind only.
fn train_in_background(
    path: &Path,
    samples: Vec<Vec<u8>>,
    mut names: MemTables,
    compact: bool,
    current: Option<Arc<Model>>,
) -> Result<Trained> {
    let (own, extra) = match (samples.is_empty(), current.is_some()) {
        (true, _) => (read_stored(path, STORED_SAMPLE, MAX_SAMPLE_BYTES)?, Vec::new()),
        (false, true) => {
            let bytes: u64 = samples.iter().map(|s| s.len() as u64).sum();
            let room = MAX_SAMPLE_BYTES.saturating_sub(bytes);
            // The new kind's records are stored too: those read again are left out, else
            // some held-out records would be learned from and judge the model too kindly.
            let extra = match read_stored(path, samples.len(), room) {
                Ok(stored) => {
                    let own: std::collections::HashSet<&[u8]> =
                        samples.iter().map(|s| s.as_slice()).collect();
                    stored.into_iter().filter(|s| !own.contains(s.as_slice())).collect()
                }
                Err(e) => {
                    crate::log::warn(&format!("drift training without stored records: {e}"));
                    Vec::new()
                }
            };
            (samples, extra)
        }
        (false, false) => (samples, Vec::new()),
    };
    if own.is_empty() {
        return Err(Error::Config("nothing to train on: no records and no sample".into()));
    }
    let base_fields = names.fields.len() as u32;
    // Every tenth record is held out of the training and compressed with the model: how
    // well it does on records of its kind it has not seen is the baseline drift is judged by
    // (on its own training records it would look better than it will do).
    let held_out = own.len() >= 1_000;
    let (mut train, test): (Vec<&[u8]>, Vec<&[u8]>) = if held_out {
        let (t, h): (Vec<_>, Vec<_>) = own.iter().enumerate().partition(|(i, _)| i % 10 != 9);
        (t.into_iter().map(|(_, s)| &s[..]).collect(), h.into_iter().map(|(_, s)| &s[..]).collect())
    } else {
        (own.iter().map(|s| s.as_slice()).collect(), Vec::new())
    };
    train.extend(extra.iter().map(|s| s.as_slice()));
    let before = names.clone();
    let model = codec::train(&train, compact, &mut names)?;
    let new_fields = names.fields.iter().skip(base_fields as usize).map(str::to_owned).collect();
    let (held_out_bpr_milli, held_out_ppm) = measure(&model, names.clone(), &test);
    let current_ppm = current.map_or(0, |m| measure(&m, before, &test).1);
    Ok(Trained {
        model,
        new_fields,
        base_fields,
        sample: own.len() + extra.len(),
        held_out_bpr_milli,
        held_out_ppm,
        current_ppm,
    })
}

/// What `model` takes for (up to 10,000 of) `test`, with the record header: bytes per record
/// x1000, and bytes per million bytes of value encoding (0, 0: none).
fn measure(model: &Model, mut t: MemTables, test: &[&[u8]]) -> (u64, u64) {
    let mut enc = codec::RecordEncoder::new();
    let (mut out, mut bytes, mut raw, mut n) = (Vec::new(), 0u64, 0u64, 0u64);
    for rec in test.iter().take(10_000) {
        out.clear();
        if enc.encode(model, &mut t, rec, &mut out).is_ok() {
            let mut hdr = Vec::new();
            put_header(&mut hdr, out.len());
            bytes += (hdr.len() + out.len()) as u64;
            raw += rec.len() as u64;
            n += 1;
        }
    }
    ((bytes * 1000).checked_div(n).unwrap_or(0), (bytes * 1_000_000).checked_div(raw).unwrap_or(0))
}

/// Up to `want` live records spread evenly over the store, decoded, at most `max_bytes` of
/// them, read through a read-only mapping of the file's own (the training thread's).
fn read_stored(path: &Path, want: usize, max_bytes: u64) -> Result<Vec<Vec<u8>>> {
    let mut samples = Vec::new();
    if want == 0 || max_bytes == 0 {
        return Ok(samples);
    }
    let rf = RecFile::open(path, false)?;
    let mut t = LogTables::default();
    t.refresh(&rf)?;
    // Every step-th live record, found page by page (a list of every id would take 8 bytes
    // per record: gigabytes in a large store).
    let live = rf.hdr().live.load(Ordering::Relaxed) as usize;
    let step = live.div_ceil(want).max(1);
    let (mut out, mut bytes, mut seen, mut cursor) = (Vec::new(), 0u64, 0usize, 0u64);
    loop {
        let (next, page) = rf.scan(cursor, 1 << 16);
        for rid in page {
            seen += 1;
            if (seen - 1) % step != 0 {
                continue;
            }
            // A record removed (or its chunk reused) meanwhile is skipped: the lookup checks.
            let Ok((payload, model)) = rf.lookup(rid) else { continue };
            if decode_payload(&t, model, payload, &mut out).is_ok() && rf.lookup(rid).is_ok() {
                bytes += out.len() as u64;
                samples.push(out.clone());
                if bytes > max_bytes || samples.len() >= want {
                    return Ok(samples);
                }
            }
        }
        if next == 0 {
            return Ok(samples);
        }
        cursor = next;
    }
}
