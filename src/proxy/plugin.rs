//! One configured filter in one worker VM: its view, batches and stats; recording, choosing, notifying.

use crate::policy::admin::{Drained, Drains, DRAINS_KEY};
use crate::policy::batch::Batch;
use crate::policy::choice::{self, Ask, Choice, Shared, Worker};
use crate::policy::classify::{Outcome, Reason};
use crate::policy::codec;
use crate::policy::config::{model_hash, AllDown, Config, Format, Table, Unit, UnitId, VendorId};
use crate::policy::health::{Claim, PhaseKind, Rules, Transition, VendorState};
use crate::policy::journey::{self, BodyAccess, JourneyRef, Stage};
use crate::policy::notify;
use crate::policy::plan::{Attempt, Candidate};
use crate::policy::record::{self, Before, Recording};
use crate::policy::relay::Relays;
use crate::policy::reply;
use crate::policy::store::{self, Loaded, StoreError};
use crate::proxy::host::{Host, Map, BAD_ARGUMENT};
use crate::proxy::stats::{self, GlobalStats, VendorStats};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// How often a worker looks again for vendor clusters Envoy did not have.
pub const CLUSTER_RECHECK_MS: u64 = 5_000;

/// Health state is kept per unit (a vendor, or a vendor and one of its
/// models: see `config::Unit`); stats per vendor.
pub struct Plugin<H: Host> {
    pub host: H,
    /// Shared with the upstream filter of the same VM, which judges answers by it.
    pub config: Rc<Config>,
    pub rules: Rules,
    /// Shared-data key of each unit.
    pub keys: Table<UnitId, String>,
    vendor_stats: Table<VendorId, VendorStats>,
    /// Each unit's state gauge, `llm_failover.unit.<unit>.state` (the
    /// vendors' own, their configured models', their model slots').
    unit_state: Table<UnitId, u32>,
    pub stats: GlobalStats,
    /// Round robin, missing clusters and the copy of the shared state.
    pub worker: RefCell<Worker>,
    /// The latest clock reading on this worker (ms); batched successes are
    /// placed in the window by it, so they may land up to one tick early.
    clock_ms: Cell<u64>,
    pub next_cluster_check_ms: Cell<u64>,
    pub next_refresh_ms: Cell<u64>,
    /// Quiet successes not yet written, per unit.
    batches: RefCell<Table<UnitId, Batch>>,
    /// Finished attempts per vendor not yet added to the `requests` counters.
    unreported: RefCell<Table<VendorId, u64>>,
    /// This VM's notification queue.
    pub queue: Cell<Option<u32>>,
    /// Requests of this worker that may still need rescuing, by context id.
    pub journeys: RefCell<HashMap<u32, JourneyRef>>,
    /// Rescue callouts in flight: token -> the context of their request.
    pub callouts: RefCell<HashMap<u32, u32>>,
    /// Whether Envoy gives the filter request bodies (see `rescue::release_stuck`).
    pub body_access: Cell<BodyAccess>,
    /// Whether any request needs its body read before routing.
    pub reads_bodies: bool,
    /// Requested models' names by hash, for log lines (see `note_model`).
    model_names: RefCell<Vec<(u64, String)>>,
    /// This VM's journeys with an attempt out (see `policy::relay`).
    pub relays: Rc<RefCell<Relays>>,
    /// The tick period the configuration asks for, and whether it is
    /// shortened now (while a same-vendor retry waits).
    pub tick_ms: Cell<u64>,
    fast_tick: Cell<bool>,
    /// The drains in force (operators' and the configuration's), and the
    /// shared blob they were read from.
    pub drained: RefCell<Drained>,
    drains_blob: RefCell<Option<Vec<u8>>>,
}

/// The notification that the drains changed (see `Plugin::load_drains`).
pub const DRAINS_CHANGED: &[u8] = b"llm_failover:drains";

/// The tick period while a same-vendor retry waits.
pub const RETRY_TICK_MS: u64 = 20;

/// How many requested models' names a worker keeps for its log lines.
const MODEL_NAMES_KEPT: usize = 64;

impl<H: Host> Plugin<H> {
    pub fn new(host: H, config: Config, relays: Rc<RefCell<Relays>>) -> Result<Self, String> {
        let rules = Rules::from_config(&config);
        let n = config.vendors.len();
        let units = config.units.len();
        let keys = config
            .units
            .values()
            .map(|u| store::vendor_key(&unit_name(&config, u), config.window))
            .collect();
        let vendor_stats = config
            .vendors
            .values()
            .map(|v| VendorStats::define(&host, &v.name))
            .collect::<Result<Table<_, _>, _>>()?;
        let stats = GlobalStats::define(&host)?;
        let unit_state = config
            .units
            .values()
            .map(|u| {
                let name = format!("llm_failover.unit.{}.state", unit_name(&config, u));
                host.define_metric(crate::proxy::host::MetricKind::Gauge, &name)
                    .map_err(|e| format!("cannot define metric {name}: host status {}", e.0))
            })
            .collect::<Result<Table<_, _>, _>>()?;
        Ok(Plugin {
            reads_bodies: journey::reads_bodies(&config),
            host,
            rules,
            keys,
            vendor_stats,
            unit_state,
            stats,
            worker: RefCell::new(Worker::new(units, n)),
            clock_ms: Cell::new(0),
            next_cluster_check_ms: Cell::new(0),
            next_refresh_ms: Cell::new(0),
            batches: RefCell::new(Table::filled(units, Batch::default())),
            unreported: RefCell::new(Table::filled(n, 0)),
            queue: Cell::new(None),
            journeys: RefCell::new(HashMap::new()),
            callouts: RefCell::new(HashMap::new()),
            body_access: Cell::new(BodyAccess::Unknown),
            model_names: RefCell::new(Vec::new()),
            relays,
            tick_ms: Cell::new(config.refresh_ms),
            fast_tick: Cell::new(false),
            drained: RefCell::new(Drained::of(&config, &Drains::default())),
            drains_blob: RefCell::new(None),
            config: Rc::new(config),
        })
    }

    /// Reads the clock, and remembers the reading.
    pub fn now(&self) -> u64 {
        let t = self.host.now_ms();
        self.clock_ms.set(t);
        t
    }

    /// The latest clock reading, without a host call.
    pub fn last_now(&self) -> u64 {
        self.clock_ms.get()
    }

    pub fn add(&self, id: u32, n: u64) {
        stats::add(&self.host, id, n);
    }

    pub fn vendor_name(&self, vendor: VendorId) -> &str {
        self.config.vendors.get(vendor).map_or("?", |v| v.name.as_str())
    }

    fn unit_vendor(&self, unit: UnitId) -> Option<VendorId> {
        self.config.units.get(unit).map(|u| u.vendor)
    }

    /// A unit's name for logs: the vendor, and the model if it has its own;
    /// for a model unit, `vendor/model#unit` with the model this worker last
    /// saw hold it.
    pub fn unit_label(&self, unit: UnitId) -> String {
        let Some(u) = self.config.units.get(unit) else {
            return "?".into();
        };
        let owner = u
            .slot
            .and_then(|_| self.worker.borrow().view.get(unit).map(|c| c.state.owner));
        let known = owner.and_then(|h| {
            let names = self.model_names.borrow();
            names.iter().find(|(k, _)| *k == h).map(|(_, n)| n.clone())
        });
        match (known, u.slot) {
            (Some(model), Some(slot)) => {
                let v = self.vendor_name(u.vendor);
                format!("{v}/{model}#{slot}")
            }
            _ => unit_name(&self.config, u),
        }
    }

    /// The failures `unit` has had in a row, as this worker last saw it;
    /// `u32::MAX` when it is not closed (ejected, probing, rate-limited):
    /// no blip then either.
    pub fn failures_in_a_row(&self, unit: UnitId) -> u32 {
        let now_ms = self.last_now();
        self.worker.borrow().view.get(unit).map_or(0, |c| {
            if c.state.effective_kind(now_ms) == PhaseKind::Closed {
                c.state.consecutive_failures
            } else {
                u32::MAX
            }
        })
    }

    /// Remembers a requested model's name by its hash, for log lines about
    /// the model slot it takes (the newest few only).
    pub fn note_model(&self, model: &str) {
        let hash = model_hash(model);
        let mut names = self.model_names.borrow_mut();
        if names.iter().any(|(k, _)| *k == hash) {
            return;
        }
        if names.len() >= MODEL_NAMES_KEPT {
            names.remove(0);
        }
        let shown: String = model.chars().filter(|c| !c.is_control()).take(128).collect();
        names.push((hash, shown));
    }

    /// Counts one finished attempt in its vendor's stats and records its
    /// outcome in its unit's health (see `record`).
    pub fn record(&self, attempt: &Attempt, outcome: Outcome, stream_error: Option<&str>, now_ms: u64) {
        let (unit, vendor) = (attempt.unit, attempt.vendor);
        if let Some(n) = self.unreported.borrow_mut().get_mut(vendor) {
            *n += 1;
        }
        if let Some(s) = self.vendor_stats.get(vendor) {
            if let Some(count) = record::count_of(&outcome) {
                s.count(&self.host, count, stream_error);
            }
            if attempt.forced {
                self.add(s.forced, 1);
            }
        }
        if !matches!(outcome, Outcome::Success) {
            log::debug!("vendor {}: {outcome}", self.unit_label(unit));
        }
        if outcome == Outcome::Failure(Reason::NoCluster) {
            self.mark_missing(vendor);
        }
        let verdict = outcome.verdict();
        match record::recording(attempt.ticket, verdict) {
            Recording::Skip => {}
            Recording::Batch { generation } => {
                // No clock read: the worker's latest reading places it.
                let bucket = record::bucket_of(self.clock_ms.get(), self.rules.window);
                let full = self
                    .batches
                    .borrow_mut()
                    .get_mut(unit)
                    .is_some_and(|b| b.add(generation, bucket));
                if full {
                    self.write(unit, now_ms.max(self.clock_ms.get()), |_| None);
                }
            }
            Recording::Write(ticket) => {
                let owner = attempt.owner;
                self.write(unit, now_ms, |st| {
                    let mut ticket = ticket;
                    if let Some(owner) = owner {
                        match st.claim_slot(owner, now_ms, &self.rules) {
                            Claim::Held => {}
                            // Counted afresh, for this model.
                            Claim::Taken => ticket.generation = st.generation,
                            // Another model took it meanwhile: nothing to say here.
                            Claim::Refused => return None,
                        }
                    }
                    st.record(now_ms, verdict, ticket, &self.rules)
                });
            }
        }
    }

    /// Chooses for `ask` and notes what the choice changed: an ejection
    /// that ran out, a request forced onto an ejected vendor.
    pub fn pick(&self, ask: &Ask, clock: &mut dyn FnMut() -> u64) -> Choice {
        let shared = Shared {
            rules: &self.rules,
            keys: &self.keys,
            store: &self.host,
        };
        // Drained vendors and models are no candidates (the common case,
        // nothing drained, copies nothing).
        let kept: Vec<Candidate>;
        let ask = {
            let drained = self.drained.borrow();
            if drained.is_empty() {
                *ask
            } else {
                kept = ask
                    .candidates
                    .iter()
                    .filter(|c| !drained.candidate(c, ask.requested))
                    .cloned()
                    .collect();
                if kept.is_empty() && !ask.candidates.is_empty() {
                    return Choice::Reject {
                        due: Vec::new(),
                        now_ms: clock(),
                    };
                }
                Ask {
                    candidates: &kept,
                    ..*ask
                }
            }
        };
        let ask = &ask;
        let choice = choice::choose(ask, &shared, clock, &mut self.worker.borrow_mut());
        if let Choice::Route { attempt, transition } = &choice {
            if let Some(t) = transition {
                self.announce(attempt.unit, t);
            }
            // A provisional choice is made again: count the final one only.
            if attempt.forced && ask.claim_probes {
                self.add(self.stats.all_down, 1);
            }
        }
        choice
    }

    /// Logs a phase change (exactly one worker makes each one) and updates stats.
    pub fn announce(&self, unit: UnitId, t: &Transition) {
        log::info!("vendor {}: {}", self.unit_label(unit), t);
        let vendor = self.unit_vendor(unit);
        if let Some((vendor, s)) = vendor.and_then(|v| Some((v, self.vendor_stats.get(v)?))) {
            if t.to == PhaseKind::Open {
                self.add(s.ejections, 1);
            }
            // The state gauge follows the vendor's pass-through unit.
            if vendor.pass_through() == unit {
                stats::set(&self.host, s.state, t.to.gauge());
            }
        }
    }

    pub fn note_store_error(&self, unit: UnitId, e: &StoreError) {
        log::debug!("vendor {}: {e}", self.unit_label(unit));
        self.add(self.stats.store_errors, 1);
    }

    pub fn count_truncation_closed(&self, vendor: VendorId) {
        if let Some(s) = self.vendor_stats.get(vendor) {
            self.add(s.truncations_closed, 1);
        }
    }

    /// Finds out which vendor clusters exist, without sending a request.
    ///
    /// The ABI has no call that asks whether a cluster exists, but an HTTP
    /// callout to an unknown cluster fails at once with `BadArgument`. The
    /// probe is a CONNECT without `:protocol`, which Envoy's codec refuses to
    /// encode: at most a TCP connection is opened, no HTTP request reaches the
    /// vendor. With `only_missing`, only clusters not yet seen are probed.
    pub fn check_clusters(&self, now_ms: u64, only_missing: bool) {
        self.next_cluster_check_ms
            .set(now_ms.saturating_add(CLUSTER_RECHECK_MS));
        let mut worker = self.worker.borrow_mut();
        for (i, vendor) in self.config.vendors.iter() {
            let Some(flag) = worker.missing.get_mut(i) else {
                continue;
            };
            if only_missing && !*flag {
                continue;
            }
            let probe = [
                (":method", "CONNECT"),
                (":path", "/"),
                (":authority", "llm-failover-cluster-check"),
            ];
            let exists = match self.host.dispatch(&vendor.cluster, &probe, None, 1_000) {
                Ok(_) => true,
                Err(e) if e.0 == BAD_ARGUMENT => false,
                Err(_) => continue,
            };
            if exists && *flag {
                log::info!(
                    "vendor {}: Envoy cluster {} now exists; vendor in use",
                    vendor.name,
                    vendor.cluster
                );
            } else if !exists && !*flag {
                log::warn!(
                    "vendor {}: Envoy has no cluster named {:?}; the vendor is skipped until it appears",
                    vendor.name,
                    vendor.cluster
                );
            }
            *flag = !exists;
        }
    }

    pub fn any_cluster_missing(&self) -> bool {
        self.worker.borrow().missing.values().any(|&m| m)
    }

    pub fn mark_missing(&self, vendor: VendorId) {
        let mut worker = self.worker.borrow_mut();
        if let Some(flag) = worker.missing.get_mut(vendor) {
            if !*flag {
                log::warn!(
                    "vendor {}: Envoy has no cluster named {:?}; the vendor is skipped until it appears",
                    self.vendor_name(vendor),
                    self.config.vendors.get(vendor).map_or("", |v| v.cluster.as_str())
                );
            }
            *flag = true;
        }
    }

    /// Writes one change to a unit's shared state, together with the
    /// worker's batched successes for it (older, so merged first), and tells
    /// the other workers when the change matters for routing.
    fn write(&self, unit: UnitId, now_ms: u64, step: impl Fn(&mut VendorState) -> Option<Transition>) {
        let Some(key) = self.keys.get(unit) else {
            return;
        };
        let batched = self
            .batches
            .borrow_mut()
            .get_mut(unit)
            .map(Batch::take)
            .unwrap_or_default();
        let result = store::update(&self.host, key, self.rules.window, |st| {
            let before = Before::of(st, now_ms);
            for d in &batched {
                st.merge(d);
            }
            let change = step(st);
            st.touched_ms = now_ms;
            (change, before)
        });
        match result {
            Ok(done) => {
                self.add(self.stats.cas_retries, u64::from(done.conflicts));
                let (transition, before) = done.result;
                let matters = record::announce(before, &done.state, now_ms, transition.is_some(), done.reset.is_some());
                if let Some(why) = done.reset {
                    log::warn!(
                        "vendor {}: shared state was unusable ({why}); starting it afresh",
                        self.unit_label(unit)
                    );
                    self.add(self.stats.state_resets, 1);
                }
                self.worker.borrow_mut().view.put(unit, done.state, now_ms);
                if let Some(t) = &transition {
                    self.announce(unit, t);
                }
                if matters {
                    self.notify(unit);
                }
            }
            Err(e) => {
                if let Some(b) = self.batches.borrow_mut().get_mut(unit) {
                    b.restore(batched);
                }
                self.note_store_error(unit, &e);
            }
        }
    }

    /// Writes the batched successes and reports the batched request counts.
    pub fn flush(&self, now_ms: u64) {
        for unit in self.keys.ids() {
            let pending = self.batches.borrow().get(unit).is_some_and(|b| !b.is_empty());
            if pending {
                self.write(unit, now_ms, |_| None);
            }
        }
        let mut unreported = self.unreported.borrow_mut();
        for (count, s) in unreported.values_mut().zip(self.vendor_stats.values()) {
            stats::add(&self.host, s.requests, std::mem::take(count));
        }
    }

    /// Re-reads every unit's shared state into this worker's copy and the gauges.
    pub fn refresh(&self, now_ms: u64) {
        let mut shared_bytes = 0;
        // Per vendor: its model units (mapped models and slots) ejected, and rate-limited.
        let mut models: Table<VendorId, (u64, u64)> = Table::filled(self.config.vendors.len(), (0, 0));
        for (unit, key) in self.keys.iter() {
            match store::load(&self.host, key, self.rules.window) {
                Ok(Loaded { state, reset, .. }) => {
                    shared_bytes += codec::encoded_len(state.window.spec().buckets.get()) + key.len();
                    if let Some(u) = self
                        .config
                        .units
                        .get(unit)
                        .filter(|u| u.model.is_some() || u.slot.is_some())
                    {
                        if let Some(count) = models.get_mut(u.vendor) {
                            match state.effective_kind(now_ms) {
                                PhaseKind::Open | PhaseKind::HalfOpen => count.0 += 1,
                                PhaseKind::RateLimited => count.1 += 1,
                                PhaseKind::Closed => {}
                            }
                        }
                    }
                    // Gauges exist for whole vendors only (the first units).
                    let vendor = self.unit_vendor(unit).filter(|v| v.pass_through() == unit);
                    if let (None, Some(s)) = (reset, vendor.and_then(|v| self.vendor_stats.get(v))) {
                        let totals = state.window.totals(now_ms);
                        stats::set(&self.host, s.state, state.effective_kind(now_ms).gauge());
                        stats::set(&self.host, s.window_requests, totals.requests());
                        stats::set(&self.host, s.window_failures, totals.failures);
                        stats::set(&self.host, s.window_slow, totals.slow);
                    }
                    if let (None, Some(&id)) = (reset, self.unit_state.get(unit)) {
                        stats::set(&self.host, id, state.effective_kind(now_ms).gauge());
                    }
                    self.worker.borrow_mut().view.put(unit, state, now_ms);
                }
                Err(e) => {
                    self.worker.borrow_mut().view.forget(unit);
                    self.note_store_error(unit, &e);
                }
            }
        }
        for key in [notify::REGISTRY_KEY, notify::SEQUENCE_KEY] {
            if let Ok(Some((value, _))) = store::Store::get(&self.host, key) {
                shared_bytes += value.len() + key.len();
            }
        }

        if let Ok(Some((value, _))) = store::Store::get(&self.host, DRAINS_KEY) {
            shared_bytes += value.len() + DRAINS_KEY.len();
        }
        stats::set(&self.host, self.stats.shared_bytes, shared_bytes as u64);
        self.load_drains();
        for ((ejected, limited), s) in models.values().zip(self.vendor_stats.values()) {
            stats::set(&self.host, s.models_ejected, *ejected);
            stats::set(&self.host, s.models_rate_limited, *limited);
        }
    }

    /// Creates every unit's shared-data key (a missing key cannot be
    /// compare-and-swapped).
    pub fn create_keys(&self) {
        for (unit, key) in self.keys.iter() {
            if let Err(e) = store::create_if_missing(&self.host, key, self.rules.window) {
                self.note_store_error(unit, &e);
            }
        }
    }

    /// Opens this VM's notification queue and lists it in the registry.
    pub fn join_notifications(&self) {
        let joined = store::update_bytes(&self.host, notify::SEQUENCE_KEY, notify::next_sequence)
            .map_err(|e| e.to_string())
            .and_then(|seq| {
                self.host
                    .register_queue(&format!("llm_failover.worker.{seq}"))
                    .map_err(|e| format!("cannot register a shared queue (host status {})", e.0))
            })
            .and_then(|token| {
                store::update_bytes(&self.host, notify::REGISTRY_KEY, |r| (notify::join(r, token), ()))
                    .map(|()| token)
                    .map_err(|e| e.to_string())
            });
        match joined {
            Ok(token) => self.queue.set(Some(token)),
            // Still correct without: this worker then learns of changes on its tick.
            Err(e) => {
                log::warn!("cannot join change notifications ({e}); this worker relies on its tick")
            }
        }
    }

    /// Tells every other worker to drop its copy of `unit`.
    fn notify(&self, unit: UnitId) {
        if let Some(key) = self.keys.get(unit) {
            self.broadcast(key.as_bytes());
        }
    }

    /// Drains a notification queue, dropping the copies it names.
    pub fn on_notified(&self, token: u32) {
        let mut drains_changed = false;
        {
            let mut worker = self.worker.borrow_mut();
            while let Ok(Some(message)) = self.host.dequeue(token) {
                if message == DRAINS_CHANGED {
                    drains_changed = true;
                } else if let Some(unit) = self.keys.position(|k| k.as_bytes() == message.as_slice()) {
                    worker.view.forget(unit);
                }
            }
        }
        if drains_changed {
            self.load_drains();
        }
    }

    /// Reads the operators' drains from shared data if they changed (on
    /// every refresh, and when told), and sets the `drained` gauges.
    pub fn load_drains(&self) {
        let blob = match store::Store::get(&self.host, DRAINS_KEY) {
            Ok(found) => found.map(|(b, _)| b),
            Err(_) => return,
        };
        if *self.drains_blob.borrow() == blob && self.drains_blob.borrow().is_some() {
            return;
        }
        let drains = Drains::decode(blob.as_deref());
        let drained = Drained::of(&self.config, &drains);
        for (id, s) in self.vendor_stats.iter() {
            stats::set(&self.host, s.drained, u64::from(drained.vendor(id)));
        }
        *self.drained.borrow_mut() = drained;
        *self.drains_blob.borrow_mut() = Some(blob.unwrap_or_default());
    }

    /// Tells every other worker `message` (a unit key, or `DRAINS_CHANGED`).
    /// A token of a VM that is gone fails or is never read: harmless.
    pub fn broadcast(&self, message: &[u8]) {
        let Ok(Some((registry, _))) = store::Store::get(&self.host, notify::REGISTRY_KEY) else {
            return;
        };
        let own = self.queue.get();
        for token in notify::tokens(&registry) {
            if Some(token) != own {
                let _ = self.host.enqueue(token, message);
            }
        }
    }

    /// The lifetime failure counts of a vendor by reason (Envoy's counters,
    /// shared by every worker).
    pub fn failures_by_reason(&self, vendor: VendorId) -> Vec<(String, u64)> {
        let Some(s) = self.vendor_stats.get(vendor) else {
            return Vec::new();
        };
        crate::policy::classify::Reason::ALL
            .iter()
            .zip(&s.failures_by_reason)
            .map(|(r, &id)| (r.name().to_string(), self.host.metric_value(id).unwrap_or(0)))
            .collect()
    }

    /// Applies the changes that send the current request to `vendor` as
    /// `candidate` (see `outbound::edits`).
    pub fn send_to(
        &self,
        vendor: VendorId,
        candidate: Option<&Candidate>,
        format: Option<Format>,
        client: &[(String, Vec<u8>)],
    ) {
        let Some(v) = self.config.vendors.get(vendor) else {
            return;
        };
        for edit in crate::policy::outbound::edits(&self.config.cluster_header, v, candidate, format, client) {
            let done = match &edit {
                crate::policy::outbound::Edit::Set(name, value) => {
                    self.host.set_header(Map::RequestHeaders, name, value)
                }
                crate::policy::outbound::Edit::Remove(name) => self.host.remove_header(Map::RequestHeaders, name),
            };
            if let Err(e) = done {
                log::debug!("cannot change request header {edit:?} (host status {})", e.0);
            }
        }
    }

    /// Shortens the tick while a same-vendor retry waits (so it goes on
    /// time), and restores it after.
    pub fn tick_fast(&self, fast: bool) {
        if self.fast_tick.get() == fast {
            return;
        }
        self.fast_tick.set(fast);
        let ms = if fast {
            RETRY_TICK_MS.min(self.tick_ms.get())
        } else {
            self.tick_ms.get()
        };
        if let Err(e) = self.host.set_tick_period_ms(ms) {
            log::debug!("cannot change the tick period (host status {})", e.0);
        }
    }

    /// Routes a request by its headers only (it goes unread): health by
    /// vendor, path, authority and credentials adapted to the vendor.
    /// `None`: it was answered (every vendor out, or none).
    pub fn route_unread(
        &self,
        j: &crate::policy::journey::Journey,
        now_ms: u64,
    ) -> Option<(Attempt, Option<Candidate>)> {
        let candidates = crate::policy::plan::at_headers(&self.config, j.format);
        match self.pick(&Ask::first(&candidates, self.all_down()), &mut || now_ms) {
            Choice::Route { attempt, .. } => {
                let candidate = candidates.into_iter().find(|c| c.unit == attempt.unit);
                self.send_to(attempt.vendor, candidate.as_ref(), j.format, &j.headers);
                Some((attempt, candidate))
            }
            Choice::Reject { due, now_ms } => {
                self.reject(j.format, &due, now_ms, None);
                None
            }
            Choice::Nothing => None,
        }
    }

    /// Answers at once: every vendor is ejected and `all_down` is `reject`.
    pub fn reject(&self, format: Option<Format>, due: &[choice::Due], now_ms: u64, j: Option<&JourneyRef>) {
        self.add(self.stats.all_down, 1);
        self.add(self.stats.rejected, 1);
        let r = reply::unavailable(format, &self.config, due, now_ms, &[]);
        let retry_after = r.retry_after_s.to_string();
        let headers: [(&str, &[u8]); 2] = [
            ("content-type", b"application/json"),
            ("retry-after", retry_after.as_bytes()),
        ];
        let details = "llm_failover_all_vendors_unavailable";
        match j {
            Some(j) => {
                self.send_own_reply(j, r.status, &headers, r.body.as_bytes(), details);
            }
            None => {
                if let Err(e) = self.host.send_response(r.status, &headers, r.body.as_bytes(), details) {
                    log::warn!("cannot send the all-down reply (host status {})", e.0);
                }
            }
        }
    }

    /// Sends the filter's own answer for a journey. The answer passes through
    /// this stream's own response callbacks at once, which must let it by:
    /// the journey says `Replying`, and no borrow is held across the call.
    pub fn send_own_reply(
        &self,
        j: &JourneyRef,
        status: u32,
        headers: &[(&str, &[u8])],
        body: &[u8],
        details: &str,
    ) -> bool {
        // Envoy may pass the answer through the encoders now or once the
        // current callback returns: the stage stays `Replying` from here on.
        j.borrow_mut().stage = Stage::Replying;
        match self.host.send_response(status, headers, body, details) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("cannot send the filter's answer (host status {})", e.0);
                false
            }
        }
    }

    /// Answers a held request with one of the filter's own refusals.
    pub fn refuse(&self, j: &JourneyRef, r: reply::Rejection, details: &str) {
        let headers: [(&str, &[u8]); 1] = [("content-type", b"application/json")];
        self.send_own_reply(j, r.status, &headers, r.body.as_bytes(), details);
    }

    /// The all-down policy for a request's first choice.
    pub fn all_down(&self) -> AllDown {
        self.config.all_down
    }
}

/// A unit's name: `vendor` for the vendor's own unit, `vendor/model` for
/// one of its configured models, `vendor#3` for one of its model slots. It
/// names the unit's shared-data key and its log lines.
pub fn unit_name(config: &Config, unit: &Unit) -> String {
    let v = config.vendors.get(unit.vendor).map_or("?", |v| v.name.as_str());
    match (&unit.model, unit.slot) {
        (_, Some(slot)) => format!("{v}#{slot}"),
        (None, None) => v.to_string(),
        (Some(m), None) => {
            let m: String = m.chars().filter(|c| !c.is_control()).take(128).collect();
            format!("{v}/{m}")
        }
    }
}
