//! The proxy-wasm glue: Envoy's callbacks turned into calls on the pure
//! modules. Every host call goes through `host`; every failure becomes a log
//! line or a skipped stat, never a panic.
//!
//! Per request: `on_http_request_headers` chooses the vendor (from this
//! worker's copy of the shared state while it is healthy, see `view`) and
//! writes its cluster into the routing header; `on_http_response_headers`
//! notes the status and names the vendor; `on_log`, which Envoy calls once
//! when the stream ends however it ends, classifies the outcome and records
//! it: at once when it can matter, batched per worker when it cannot (see
//! `batch`). On its tick each worker writes its batch, re-reads every
//! vendor into its copy and the gauges. A change that matters for routing is
//! announced to every worker through shared queues (see `notify`).
//!
//! Requests in a known API format go further (see `journey`): their body is
//! read before routing, the route group and vendor model are picked, and a
//! first attempt that fails before any byte reached the client is rescued.

use crate::policy::adapt;
use crate::policy::batch::Batch;
use crate::policy::choice::{self, Choice, Worker};
use crate::policy::classify::{self, Observed, Outcome, Reason};
use crate::policy::config::{Config, Format};
use crate::policy::health::{PhaseKind, Rules, Ticket, Transition, VendorState, Verdict};
use crate::policy::notify;
use crate::policy::plan;
use crate::policy::ratelimit;
use crate::policy::reply;
use crate::policy::rescue::{self, Flight, Move};
use crate::policy::sse::{self, Ending, Scanner};
use crate::policy::store::{self, Loaded, StoreError};
use crate::proxy::host::{self, SharedData, REQUEST_HEADERS, RESPONSE_HEADERS};
use crate::proxy::journey::{send_own_reply, Journey, JourneyRef, Stage};
use crate::proxy::metrics::{self, GlobalStats, VendorStats};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// How often a worker looks again for vendor clusters Envoy did not have.
const CLUSTER_RECHECK_MS: u64 = 5_000;

static LOGGER: host::HostLogger = host::HostLogger;

pub fn register() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    std::panic::set_hook(Box::new(|info| {
        host::log(log::Level::Error, &format!("panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { plugin: None }) });
}

/// One configured filter instance in one worker VM, shared by its streams.
/// Health state is kept per unit (a vendor, or a vendor and one of its
/// models: see `config::Unit`); stats per vendor.
pub(crate) struct Plugin {
    pub(crate) config: Config,
    pub(crate) rules: Rules,
    /// Shared-data key of each unit.
    pub(crate) keys: Vec<String>,
    vendor_stats: Vec<VendorStats>,
    pub(crate) stats: GlobalStats,
    /// Round robin, missing clusters and the copy of the shared state.
    pub(crate) worker: RefCell<Worker>,
    /// The latest clock reading on this worker (ms); batched successes are
    /// placed in the window by it, so they may land up to one tick early.
    clock_ms: Cell<u64>,
    next_cluster_check_ms: Cell<u64>,
    next_refresh_ms: Cell<u64>,
    /// Quiet successes not yet written, per unit.
    batches: RefCell<Vec<Batch>>,
    /// Finished attempts per vendor not yet added to the `requests` counters.
    unreported: RefCell<Vec<u64>>,
    /// This VM's notification queue.
    queue: Cell<Option<u32>>,
    /// Requests of this worker that may still need rescuing, by context id.
    pub(crate) journeys: RefCell<HashMap<u32, JourneyRef>>,
    /// Rescue callouts in flight: token -> the context of their request.
    pub(crate) callouts: RefCell<HashMap<u32, u32>>,
    /// Envoy does not give the filter request bodies (see `release_stuck`).
    pub(crate) no_body_access: Cell<bool>,
    /// Whether any request needs its body read before routing.
    reads_bodies: bool,
}

impl Plugin {
    fn new(config: Config) -> Result<Plugin, String> {
        let rules = Rules::from_config(&config);
        let n = config.vendors.len();
        let units = config.units.len();
        let keys = config
            .units
            .iter()
            .map(|u| store::vendor_key(&unit_name(&config, u.vendor, u.model.as_deref()), config.window))
            .collect();
        let reads_bodies = config.rescue.max_attempts.get() > 1
            || !config.groups.is_empty()
            || config.vendors.iter().any(|v| v.models.is_some());
        let vendor_stats = config
            .vendors
            .iter()
            .map(|v| VendorStats::define(&v.name))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Plugin {
            config,
            rules,
            keys,
            vendor_stats,
            stats: GlobalStats::define()?,
            worker: RefCell::new(Worker::new(units, n)),
            clock_ms: Cell::new(0),
            next_cluster_check_ms: Cell::new(0),
            next_refresh_ms: Cell::new(0),
            batches: RefCell::new(vec![Batch::default(); units]),
            unreported: RefCell::new(vec![0; n]),
            queue: Cell::new(None),
            journeys: RefCell::new(HashMap::new()),
            callouts: RefCell::new(HashMap::new()),
            no_body_access: Cell::new(false),
            reads_bodies,
        })
    }

    fn unit_vendor(&self, unit: usize) -> usize {
        self.config.units.get(unit).map_or(unit, |u| u.vendor)
    }

    /// A unit's name for logs: the vendor, and the model if it has its own.
    fn unit_label(&self, unit: usize) -> String {
        match self.config.units.get(unit) {
            Some(u) => unit_name(&self.config, u.vendor, u.model.as_deref()),
            None => "?".into(),
        }
    }

    /// Counts one finished attempt in its vendor's stats and records its
    /// outcome in its unit's health: at once, or batched when it cannot
    /// matter (see `batch`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_attempt(
        &self,
        unit: usize,
        vendor: usize,
        ticket: Option<Ticket>,
        forced: bool,
        outcome: Outcome,
        stream_error: Option<&str>,
        now_ms: u64,
    ) {
        if let Some(n) = self.unreported.borrow_mut().get_mut(vendor) {
            *n += 1;
        }
        if let Some(s) = self.vendor_stats.get(vendor) {
            match outcome {
                Outcome::Failure(reason) => {
                    s.count_failure(reason);
                    if let Some(kind) = stream_error {
                        s.count_stream_error(kind);
                    }
                }
                Outcome::Slow(_) => metrics::add(s.slow, 1),
                Outcome::RateLimited(_) => metrics::add(s.rate_limited, 1),
                Outcome::Neutral(Some(_)) => metrics::add(s.client_errors, 1),
                Outcome::Success | Outcome::Neutral(None) => {}
            }
            if forced {
                metrics::add(s.forced, 1);
            }
        }
        if !matches!(outcome, Outcome::Success) {
            log::debug!("vendor {}: {outcome}", self.unit_label(unit));
        }
        if outcome == Outcome::Failure(Reason::NoCluster) {
            self.mark_missing(vendor);
        }
        let verdict = outcome.verdict();
        let Some(ticket) = ticket.or_else(|| {
            // A 429 is news about the vendor even on a forced request.
            matches!(verdict, Verdict::RateLimited { .. }).then_some(Ticket {
                generation: u32::MAX,
                probe: false,
                quiet: false,
            })
        }) else {
            return;
        };
        if !ticket.probe {
            match verdict {
                Verdict::Neutral => return,
                Verdict::Success if ticket.quiet => {
                    // No clock read: the worker's latest reading places it.
                    let bucket = self.clock_ms.get() / self.rules.window.bucket_ms;
                    let full = self
                        .batches
                        .borrow_mut()
                        .get_mut(unit)
                        .is_some_and(|b| b.add(ticket.generation, bucket));
                    if full {
                        self.write(unit, now_ms.max(self.clock_ms.get()), |_| None);
                    }
                    return;
                }
                _ => {}
            }
        }
        self.write(unit, now_ms, |st| st.record(now_ms, verdict, ticket, &self.rules));
    }

    /// Chooses among `cands` (see `choice::choose_from`) and notes what the
    /// choice changed: an ejection that ran out, a request forced onto an
    /// ejected vendor.
    pub(crate) fn pick(
        &self,
        cands: &[choice::Cand],
        all_down: crate::policy::config::AllDown,
        clock: &mut dyn FnMut() -> u64,
        tried: &[usize],
        claim_probes: bool,
    ) -> Choice {
        let choice = {
            let mut worker = self.worker.borrow_mut();
            choice::choose_from(
                cands,
                all_down,
                &self.rules,
                &self.keys,
                &SharedData,
                clock,
                &mut worker,
                tried,
                claim_probes,
            )
        };
        if let Choice::Route {
            unit,
            forced,
            transition,
            ..
        } = &choice
        {
            if let Some(t) = transition {
                self.announce(*unit, t);
            }
            // A provisional choice is made again: count the final one only.
            if *forced && claim_probes {
                metrics::add(self.stats.all_down, 1);
            }
        }
        choice
    }

    /// Reads the clock, and remembers the reading.
    pub(crate) fn now(&self) -> u64 {
        let t = host::now_ms();
        self.clock_ms.set(t);
        t
    }

    pub(crate) fn vendor_name(&self, vendor: usize) -> &str {
        self.config.vendors.get(vendor).map_or("?", |v| v.name.as_str())
    }

    /// Logs a phase change (exactly one worker makes each one) and updates stats.
    pub(crate) fn announce(&self, unit: usize, t: &Transition) {
        log::info!("vendor {}: {}", self.unit_label(unit), t);
        if let Some(s) = self.vendor_stats.get(self.unit_vendor(unit)) {
            if t.to == PhaseKind::Open {
                metrics::add(s.ejections, 1);
            }
            // The state gauge follows the vendor's pass-through unit.
            if unit < self.config.vendors.len() {
                metrics::set(s.state, t.to.gauge());
            }
        }
    }

    fn note_reset(&self, unit: usize, why: &dyn std::fmt::Display) {
        log::warn!(
            "vendor {}: shared state was unusable ({why}); starting it afresh",
            self.unit_label(unit)
        );
        metrics::add(self.stats.state_resets, 1);
    }

    fn note_store_error(&self, unit: usize, e: &StoreError) {
        log::debug!("vendor {}: {e}", self.unit_label(unit));
        metrics::add(self.stats.store_errors, 1);
    }

    /// Finds out which vendor clusters exist, without sending a request.
    ///
    /// The ABI has no call that asks whether a cluster exists, but an HTTP
    /// callout to an unknown cluster fails at once with `BadArgument`. The
    /// probe is a CONNECT without `:protocol`, which Envoy's codec refuses to
    /// encode: at most a TCP connection is opened, no HTTP request reaches the
    /// vendor. Only clusters not yet seen are probed again, on the tick.
    fn check_clusters(&self, now_ms: u64, only_missing: bool) {
        self.next_cluster_check_ms
            .set(now_ms.saturating_add(CLUSTER_RECHECK_MS));
        let mut worker = self.worker.borrow_mut();
        for (i, vendor) in self.config.vendors.iter().enumerate() {
            let Some(flag) = worker.missing.get_mut(i) else {
                continue;
            };
            if only_missing && !*flag {
                continue;
            }
            let probe = vec![
                (":method", "CONNECT"),
                (":path", "/"),
                (":authority", "llm-failover-cluster-check"),
            ];
            let exists = match proxy_wasm::hostcalls::dispatch_http_call(
                &vendor.cluster,
                probe,
                None,
                vec![],
                Duration::from_secs(1),
            ) {
                Ok(_) => true,
                Err(proxy_wasm::types::Status::BadArgument) => false,
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

    pub(crate) fn mark_missing(&self, vendor: usize) {
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

    /// Writes one change to a vendor's shared state, together with the
    /// worker's batched successes for it (older, so merged first). Tells the
    /// other workers when the change matters for routing: a phase change, the
    /// vendor's first failure, or a reset of unusable state.
    fn write(&self, unit: usize, now_ms: u64, step: impl Fn(&mut VendorState) -> Option<Transition>) {
        let Some(key) = self.keys.get(unit) else {
            return;
        };
        let batched = self
            .batches
            .borrow_mut()
            .get_mut(unit)
            .map(Batch::take)
            .unwrap_or_default();
        let result = store::update(&SharedData, key, self.rules.window, |st| {
            let before = (st.is_quiet(now_ms), st.cooldown_until_ms);
            for d in &batched {
                st.merge(d);
            }
            (step(st), before)
        });
        match result {
            Ok(done) => {
                let (transition, (was_quiet, cooldown_before)) = done.result;
                // What another worker's copy must learn: a phase change, a
                // first failure, a new or longer rate limit, a reset.
                let matters = transition.is_some()
                    || done.reset.is_some()
                    || (was_quiet && !done.state.is_quiet(now_ms))
                    || done.state.cooldown_until_ms > cooldown_before;

                if let Some(why) = done.reset {
                    self.note_reset(unit, &why);
                }
                if let Some(t) = &transition {
                    self.announce(unit, t);
                }
                self.worker.borrow_mut().view.put(unit, done.state, now_ms);
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
    fn flush(&self, now_ms: u64) {
        for vendor in 0..self.keys.len() {
            let pending = self.batches.borrow().get(vendor).is_some_and(|b| !b.is_empty());
            if pending {
                self.write(vendor, now_ms, |_| None);
            }
        }
        let mut unreported = self.unreported.borrow_mut();
        for (count, s) in unreported.iter_mut().zip(&self.vendor_stats) {
            metrics::add(s.requests, std::mem::take(count));
        }
    }

    /// Routes a request by its headers only (no body read): health by
    /// vendor, path, authority and credentials adapted to the vendor.
    /// With `only_cluster`, just the routing header is set (the request is
    /// held for its body, and adapted once the model is known).
    /// Returns where it went, and the plan entry that chose it.
    fn route_at_headers(
        &self,
        format: Option<Format>,
        j: &Journey,
        now_ms: u64,
        only_cluster: bool,
    ) -> Option<(Routed, Option<plan::Planned>)> {
        let planned = plan::plan(&self.config, format, None).unwrap_or_default();
        let cands: Vec<choice::Cand> = if planned.is_empty() {
            choice::default_cands(&self.config)
        } else {
            planned.iter().map(|x| x.cand).collect()
        };
        // A request held for its body is chosen for again then: no probe slot now.
        let choice = self.pick(&cands, self.config.all_down, &mut || now_ms, &[], !only_cluster);
        match choice {
            Choice::Route {
                unit,
                vendor,
                ticket,
                forced,
                ..
            } => {
                let v = self.config.vendors.get(vendor)?;
                let planned = planned.into_iter().find(|x| x.cand.unit == unit);
                if only_cluster {
                    let _ = host::set_header(REQUEST_HEADERS, &self.config.cluster_header, v.cluster.as_bytes());
                } else {
                    self.adapt_headers(v, planned.as_ref(), format, j);
                }
                let routed = Routed {
                    unit,
                    vendor,
                    ticket,
                    forced,
                };
                Some((routed, planned))
            }
            Choice::Reject { due, now_ms } => {
                self.reject(format, &due, now_ms, None);
                None
            }
            Choice::Nothing => None,
        }
    }

    /// Answers at once: every vendor is ejected and `all_down` is `reject`.
    fn reject(&self, format: Option<Format>, due: &[choice::Due], now_ms: u64, j: Option<&JourneyRef>) {
        metrics::add(self.stats.all_down, 1);
        metrics::add(self.stats.rejected, 1);
        let r = reply::unavailable(format, &self.config, due, now_ms, &[]);
        let retry_after = r.retry_after_s.to_string();
        let headers: [(&str, &[u8]); 2] = [
            ("content-type", b"application/json"),
            ("retry-after", retry_after.as_bytes()),
        ];
        let details = "llm_failover_all_vendors_unavailable";
        match j {
            Some(j) => {
                send_own_reply(j, r.status, &headers, r.body.as_bytes(), details);
            }
            None => {
                if let Err(e) = host::send_response(r.status, &headers, r.body.as_bytes(), details) {
                    log::warn!("cannot send the all-down reply (host status {})", e.0);
                }
            }
        }
    }

    /// Re-reads every vendor's shared state into this worker's copy and the gauges.
    fn refresh(&self, now_ms: u64) {
        for (unit, key) in self.keys.iter().enumerate() {
            match store::load(&SharedData, key, self.rules.window) {
                Ok(Loaded { state, reset, .. }) => {
                    // Gauges exist for whole vendors only (the first units).
                    if let (None, Some(s)) = (reset, self.vendor_stats.get(unit)) {
                        let totals = state.window.totals(now_ms);
                        metrics::set(s.state, state.effective_kind(now_ms).gauge());
                        metrics::set(s.window_requests, totals.requests());
                        metrics::set(s.window_failures, totals.failures);
                        metrics::set(s.window_slow, totals.slow);
                    }
                    self.worker.borrow_mut().view.put(unit, state, now_ms);
                }
                Err(e) => {
                    self.worker.borrow_mut().view.forget(unit);
                    self.note_store_error(unit, &e);
                }
            }
        }
    }

    /// Opens this VM's notification queue and lists it in the registry.
    fn join_notifications(&self) {
        let joined = store::update_bytes(&SharedData, notify::SEQUENCE_KEY, notify::next_sequence)
            .map_err(|e| e.to_string())
            .and_then(|seq| {
                host::register_queue(&format!("llm_failover.worker.{seq}"))
                    .map_err(|e| format!("cannot register a shared queue (host status {})", e.0))
            })
            .and_then(|token| {
                store::update_bytes(&SharedData, notify::REGISTRY_KEY, |r| (notify::join(r, token), ()))
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

    /// Tells every other worker to drop its copy of `vendor`.
    fn notify(&self, vendor: usize) {
        let Some(key) = self.keys.get(vendor) else {
            return;
        };
        let Ok(Some((registry, _))) = store::Store::get(&SharedData, notify::REGISTRY_KEY) else {
            return;
        };
        let own = self.queue.get();
        for token in notify::tokens(&registry) {
            if Some(token) != own {
                // A token of a VM that is gone fails or is never read: harmless.
                let _ = host::enqueue(token, key.as_bytes());
            }
        }
    }

    /// Drains a notification queue, dropping the copies it names.
    fn on_notified(&self, token: u32) {
        let mut worker = self.worker.borrow_mut();
        while let Ok(Some(message)) = host::dequeue(token) {
            if let Some(vendor) = self.keys.iter().position(|k| k.as_bytes() == message.as_slice()) {
                worker.view.forget(vendor);
            }
        }
    }
}

/// A unit's name: `vendor` for its pass-through unit, `vendor/model` for
/// one of its models. It names the unit's shared-data key and its log lines.
fn unit_name(config: &Config, vendor: usize, model: Option<&str>) -> String {
    let v = config.vendors.get(vendor).map_or("?", |v| v.name.as_str());
    match model {
        None => v.to_string(),
        Some(m) => {
            let m: String = m.chars().filter(|c| !c.is_control()).take(128).collect();
            format!("{v}/{m}")
        }
    }
}

struct Root {
    plugin: Option<Rc<Plugin>>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        if let Some(p) = &self.plugin {
            p.on_callout(token, num_headers, body_size);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, config_size: usize) -> bool {
        log::set_max_level(host::log_level());
        let bytes = match host::plugin_configuration(config_size) {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => {
                log::error!("cannot read the plugin configuration (host status {})", e.0);
                return false;
            }
        };
        let plugin = match Config::parse(&bytes).map_err(|e| e.to_string()).and_then(Plugin::new) {
            Ok(p) => p,
            Err(e) => {
                log::error!("configuration refused: {e}");
                return false;
            }
        };
        for (unit, key) in plugin.keys.iter().enumerate() {
            if let Err(e) = store::create_if_missing(&SharedData, key, plugin.rules.window) {
                plugin.note_store_error(unit, &e);
            }
        }
        plugin.join_notifications();
        // Time-to-first-token limits are checked on the tick: tick often enough.
        let tick_ms = match plugin.config.rescue.first_token_ms {
            Some(_) => plugin.config.refresh_ms.min(100),
            None => plugin.config.refresh_ms,
        };
        if let Err(e) = host::set_tick_period_ms(tick_ms) {
            log::warn!("cannot set the tick period (host status {}); gauges will lag", e.0);
        }
        let now_ms = plugin.now();
        plugin.check_clusters(now_ms, false);
        plugin.refresh(now_ms);
        let vendors: Vec<String> = plugin
            .config
            .by_preference
            .iter()
            .filter_map(|&i| plugin.config.vendors.get(i))
            .map(|v| {
                format!(
                    "{} (cluster {}, priority {}, weight {})",
                    v.name, v.cluster, v.priority, v.weight
                )
            })
            .collect();
        log::info!(
            "configured; routing header {}; vendors by preference: {}; {} route groups; up to {} attempts per request",
            plugin.config.cluster_header,
            vendors.join(", "),
            plugin.config.groups.len(),
            plugin.config.rescue.max_attempts
        );
        self.plugin = Some(Rc::new(plugin));
        true
    }

    fn on_tick(&mut self) {
        if let Some(p) = &self.plugin {
            let now_ms = p.now();
            if !p.journeys.borrow().is_empty() {
                p.check_first_tokens(now_ms);
                p.release_stuck(now_ms);
            }
            if now_ms >= p.next_refresh_ms.get() {
                p.next_refresh_ms.set(now_ms.saturating_add(p.config.refresh_ms));
                p.flush(now_ms);
                p.refresh(now_ms);
                let any_missing = p.worker.borrow().missing.iter().any(|&m| m);
                if any_missing && now_ms >= p.next_cluster_check_ms.get() {
                    p.check_clusters(now_ms, true);
                }
            }
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        match &self.plugin {
            Some(p) => p.on_notified(queue_id),
            // Drain it anyway so nothing piles up.
            None => while let Ok(Some(_)) = host::dequeue(queue_id) {},
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            plugin: self.plugin.clone(),
            ctx: context_id,
            ..Stream::default()
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Where a request was sent, carried until its outcome is known.
#[derive(Clone, Copy)]
struct Routed {
    unit: usize,
    vendor: usize,
    ticket: Option<Ticket>,
    forced: bool,
}

#[derive(Default)]
struct Stream {
    plugin: Option<Rc<Plugin>>,
    ctx: u32,
    routed: Option<Routed>,
    /// Set for requests in a known API format that may be adapted and rescued.
    journey: Option<JourneyRef>,
    status: Option<u16>,
    /// The response reached its end (end of stream or trailers).
    complete: bool,
    /// When the request arrived.
    start_ms: Option<u64>,
    first_byte_ms: Option<u64>,
    last_chunk_ms: Option<u64>,
    max_gap_ms: Option<u64>,
    /// For a 429: how long its headers asked to wait.
    retry_after_ms: Option<u64>,
    /// Set for a 2xx `text/event-stream` answer.
    scanner: Option<Scanner>,
    ending: Option<Ending>,
}

impl Stream {
    /// Notes the first byte of the answer's body (or its end, if bodiless).
    fn note_first_byte(&mut self, now_ms: u64) {
        if let (None, Some(start)) = (self.first_byte_ms, self.start_ms) {
            self.first_byte_ms = Some(now_ms.saturating_sub(start));
        }
    }

    fn stage(&self) -> Option<Stage> {
        self.journey.as_ref().map(|j| j.borrow().stage)
    }

    /// While the filter answers the client itself, the response callbacks
    /// stay out of the way: its own answer goes by, the router's is held
    /// (and dropped once the filter's answer is sent).
    fn filter_answers(&self) -> Option<Action> {
        match self.stage()? {
            Stage::Replying => Some(Action::Continue),
            Stage::Rescuing => Some(Action::Pause),
            _ => None,
        }
    }

    fn set_stage(&self, stage: Stage) {
        if let Some(j) = &self.journey {
            j.borrow_mut().stage = stage;
        }
    }

    /// The request body is complete: pick the route by its model, adapt the
    /// request for the vendor, and let it go to the router.
    fn route_with_body(&mut self, p: &Rc<Plugin>, j: &JourneyRef, body_size: usize) -> Action {
        let body = host::request_body(body_size).ok().flatten().unwrap_or_default();
        let asked = adapt::read_request(&body);
        let model = asked.as_ref().and_then(|a| a.model.clone());
        let stream = asked.as_ref().is_some_and(|a| a.stream);
        let format = j.borrow().format;
        let started = self.start_ms.unwrap_or_default();
        let planned = match plan::plan(&p.config, format, model.as_deref()) {
            Ok(planned) => planned,
            Err(plan::Unserved::Model(m)) => {
                metrics::add(p.stats.model_not_served, 1);
                let r = reply::model_not_served(format, &m);
                let headers: [(&str, &[u8]); 1] = [("content-type", b"application/json")];
                send_own_reply(
                    j,
                    r.status,
                    &headers,
                    r.body.as_bytes(),
                    "llm_failover_model_not_served",
                );
                return Action::Pause;
            }
        };
        {
            let mut jb = j.borrow_mut();
            jb.flight = Flight::new(format, stream, planned, started, &p.config.rescue);
            jb.body = body;
        }
        let cands: Vec<_> = j.borrow().flight.plan.iter().map(|x| x.cand).collect();
        let choice = p.pick(&cands, p.config.all_down, &mut || p.now(), &[], true);
        match choice {
            Choice::Route {
                unit,
                vendor,
                ticket,
                forced,
                ..
            } => {
                let planned = j.borrow_mut().flight.start(unit, vendor, ticket).cloned();
                if let Some(v) = p.config.vendors.get(vendor) {
                    p.adapt_headers(v, planned.as_ref(), format, &j.borrow());
                }
                if let Some(model) = planned.as_ref().and_then(|x| x.model.as_deref()) {
                    let rewritten = adapt::with_model(&j.borrow().body, model);
                    if let Some(new_body) = rewritten {
                        // Keep the length the router sends right.
                        if host::replace_request_body(body_size, &new_body).is_ok() {
                            let _ = host::set_header(
                                REQUEST_HEADERS,
                                "content-length",
                                new_body.len().to_string().as_bytes(),
                            );
                        }
                    }
                }
                self.routed = Some(Routed {
                    unit,
                    vendor,
                    ticket,
                    forced,
                });
                let mut jb = j.borrow_mut();
                jb.stage = Stage::Routed;
                if stream {
                    jb.first_token_deadline = p.config.rescue.first_token_ms.map(|ms| started.saturating_add(ms));
                }
                Action::Continue
            }
            Choice::Reject { due, now_ms } => {
                p.reject(format, &due, now_ms, Some(j));
                Action::Pause
            }
            Choice::Nothing => Action::Continue,
        }
    }

    /// Holds the first attempt's answer and starts its rescue.
    fn start_rescue(&mut self, p: &Rc<Plugin>, outcome: Outcome, why: Move, kind: Option<&str>, now_ms: u64) -> Action {
        let (Some(j), Some(r)) = (self.journey.clone(), self.routed) else {
            return Action::Continue;
        };
        p.record_attempt(r.unit, r.vendor, r.ticket, r.forced, outcome, kind, now_ms);
        j.borrow_mut().stage = Stage::Rescuing;
        p.rescue(&j, why, now_ms);
        Action::Pause
    }
}

impl Context for Stream {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        if let Some(p) = &self.plugin {
            p.on_callout(token, num_headers, body_size);
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(p) = self.plugin.clone() else {
            return Action::Continue;
        };
        let now_ms = p.now();
        self.start_ms = Some(now_ms);
        // One host call for every header: the path names the API format,
        // and a rescue replays the rest.
        let headers = host::header_pairs(REQUEST_HEADERS).unwrap_or_default();
        let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice());
        let format = get(":path").and_then(Format::of_path);
        let declared = get("content-length").and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok());
        let too_large = declared.is_some_and(|n| n > p.config.rescue.max_body_bytes);
        if format.is_some() && too_large {
            metrics::add(p.stats.body_too_large, 1);
        }
        let holds = format.is_some() && !end_of_stream && !too_large && p.reads_bodies && !p.no_body_access.get();
        let mut journey = Journey {
            ctx: self.ctx,
            stage: Stage::Buffering { since_ms: now_ms },
            format,
            flight: Flight::new(format, false, Vec::new(), now_ms, &p.config.rescue),
            headers,
            body: Vec::new(),
            first_token_deadline: None,
            at_headers: None,
            peek: None,
            peek_fed: 0,
        };
        // Route by the headers first: if the body never comes (Envoy without
        // allow_on_headers_stop_iteration), the request is still routable.
        let Some((routed, planned)) = p.route_at_headers(format, &journey, now_ms, holds) else {
            return Action::Pause; // answered already
        };
        self.routed = Some(routed);
        journey.at_headers = Some((routed.vendor, planned));
        if !holds {
            return Action::Continue;
        }
        let j = Rc::new(RefCell::new(journey));
        p.journeys.borrow_mut().insert(self.ctx, j.clone());
        self.journey = Some(j);
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(p), Some(j)) = (self.plugin.clone(), self.journey.clone()) else {
            return Action::Continue;
        };
        if !matches!(j.borrow().stage, Stage::Buffering { .. }) {
            return Action::Continue;
        }
        if (body_size as u64) > p.config.rescue.max_body_bytes {
            // Too large to hold: it goes as routed at its headers, untouched,
            // without rescue.
            metrics::add(p.stats.body_too_large, 1);
            j.borrow_mut().stage = Stage::Passed;
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.route_with_body(&p, &j, body_size)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.complete |= end_of_stream;
        let (Some(p), Some(routed)) = (self.plugin.clone(), self.routed) else {
            return Action::Continue;
        };
        if let Some(action) = self.filter_answers() {
            return action;
        }
        // One host call for every header: the status, and what decides how
        // the answer is read.
        let headers = host::header_pairs(RESPONSE_HEADERS).unwrap_or_default();
        let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice());
        self.status = get(":status").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
        let sse = get("content-type").is_some_and(|ct| ct.starts_with(b"text/event-stream"));
        if self.status == Some(429) {
            let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
            self.retry_after_ms = ratelimit::retry_after_ms(&pairs, p.now());
        }
        if self.stage() == Some(Stage::Routed) {
            let j = self.journey.clone();
            // Read the clock only for an answer that may be held back.
            let now = std::cell::OnceCell::new();
            let now_ms = || *now.get_or_init(|| p.now());
            let may = |why| j.as_ref().is_some_and(|j| j.borrow().flight.may_move(why, now_ms()));
            // Before anything reached the client: is this answer a failure
            // that another vendor should make good?
            let judged = match self.status {
                Some(s) if (200..300).contains(&s) => None,
                _ => {
                    let flags = host::property_u64(b"response\0flags").ok().flatten().unwrap_or(0);
                    let seen = Observed {
                        status: self.status,
                        flags,
                        retry_after_ms: self.retry_after_ms,
                        ..Observed::default()
                    };
                    Some(classify::classify(&seen, &p.config.failure_statuses, &p.config.slow))
                }
            };
            if let Some(outcome) = judged {
                if rescue::moves(&outcome).is_some() && may(Move::Failure) {
                    return self.start_rescue(&p, outcome, Move::Failure, None, now_ms());
                }
                if self.status == Some(400) && !end_of_stream && may(Move::ContextOverflow) {
                    self.set_stage(Stage::Inspecting);
                    return Action::Pause;
                }
            }
            let streamed = j.as_ref().is_some_and(|j| j.borrow().flight.stream);
            if judged.is_none() && sse && streamed && !end_of_stream && may(Move::Failure) {
                // Hold the headers until the first event shows it is no error.
                if let Some(j) = &j {
                    let mut jb = j.borrow_mut();
                    jb.stage = Stage::Peeking;
                    jb.peek = Some(Scanner::new());
                }
                return Action::Pause;
            }
            self.set_stage(Stage::Passed);
        }
        if matches!(self.status, Some(200..=299)) && sse {
            self.scanner = Some(Scanner::new());
            // The filter may append an error event to a cut stream: a
            // declared length would then be wrong.
            if get("content-length").is_some() {
                let _ = host::remove_header(RESPONSE_HEADERS, "content-length");
            }
        }
        if end_of_stream {
            self.note_first_byte(p.now());
        }
        if let (Some(header), Some(v)) = (&p.config.vendor_header, p.config.vendors.get(routed.vendor)) {
            let _ = host::set_header(RESPONSE_HEADERS, header, v.name.as_bytes());
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.complete |= end_of_stream;
        let (Some(p), Some(routed)) = (self.plugin.clone(), self.routed) else {
            return Action::Continue;
        };
        if let Some(action) = self.filter_answers() {
            return action;
        }
        match self.stage() {
            Some(Stage::Inspecting) => {
                if !end_of_stream {
                    return Action::Pause;
                }
                let body = host::response_body(body_size).ok().flatten().unwrap_or_default();
                if adapt::is_context_overflow(400, &body) {
                    let now_ms = p.now();
                    return self.start_rescue(&p, Outcome::Neutral(Some(400)), Move::ContextOverflow, None, now_ms);
                }
                self.set_stage(Stage::Passed);
                return self.release_held(&p, routed);
            }
            Some(Stage::Peeking) => return self.peek(&p, routed, body_size, end_of_stream),
            _ => {}
        }
        self.scan_live(&p, routed, body_size, end_of_stream)
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.complete = true;
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some(p) = self.plugin.clone() else {
            return;
        };
        let stage = self.stage();
        if let Some(j) = self.journey.take() {
            let ctx = j.borrow().ctx;
            p.journeys.borrow_mut().remove(&ctx);
            // A rescue still in flight for a client that went away.
            p.callouts.borrow_mut().retain(|_, c| *c != ctx);
        }

        // A rescued or refused request recorded its attempts as they ended.
        if matches!(stage, Some(Stage::Rescuing | Stage::Replying)) {
            return;
        }
        let Some(routed) = self.routed else {
            return;
        };
        // A 2xx answer that reached its end went right all the way: Envoy's
        // flags can add nothing, so the common case skips reading them.
        let clean = self.complete && self.status.is_some_and(|s| (200..300).contains(&s));
        let flags = if clean {
            0
        } else {
            host::property_u64(b"response\0flags").ok().flatten().unwrap_or(0)
        };
        let status = self.status.or_else(|| {
            host::property_u64(b"response\0code")
                .ok()
                .flatten()
                .and_then(|c| u16::try_from(c).ok())
                .filter(|&c| c != 0)
        });
        // A stream that never reached its end may still have shown an error.
        let stream = self.ending.take().or_else(|| {
            let e = self.scanner.as_ref()?.error()?.clone();
            Some(Ending::Error(e))
        });
        let kind = match &stream {
            Some(Ending::Error(e)) => Some(e.kind.clone()),
            _ => None,
        };
        let seen = Observed {
            status,
            flags,
            stream,
            retry_after_ms: self.retry_after_ms,
            first_byte_ms: self.first_byte_ms,
            max_gap_ms: self.max_gap_ms,
        };
        let outcome = classify::classify(&seen, &p.config.failure_statuses, &p.config.slow);
        // Only outcomes that write need the clock; a batched success does not.
        let now_ms = match outcome {
            Outcome::Success => p.clock_ms.get(),
            _ => p.now(),
        };
        p.record_attempt(
            routed.unit,
            routed.vendor,
            routed.ticket,
            routed.forced,
            outcome,
            kind.as_deref(),
            now_ms,
        );
    }
}

impl Stream {
    /// Lets a held answer go to the client as it is.
    fn release_held(&mut self, p: &Rc<Plugin>, routed: Routed) -> Action {
        if let (Some(header), Some(v)) = (&p.config.vendor_header, p.config.vendors.get(routed.vendor)) {
            let _ = host::set_header(RESPONSE_HEADERS, header, v.name.as_bytes());
        }
        Action::Continue
    }

    /// A held 200 stream: wait for its first event; rescue if it is an error
    /// (or the stream ends without one), release it otherwise.
    fn peek(&mut self, p: &Rc<Plugin>, routed: Routed, body_size: usize, end_of_stream: bool) -> Action {
        let Some(j) = self.journey.clone() else {
            return Action::Continue;
        };
        let now_ms = p.now();
        // While held, each call sees everything buffered so far.
        let bytes = host::response_body(body_size).ok().flatten().unwrap_or_default();
        let (error, events, ending) = {
            let mut jb = j.borrow_mut();
            let fed = jb.peek_fed.min(bytes.len());
            jb.peek_fed = bytes.len();
            let dialect = jb.format.map(sse::dialect_of);
            let Some(sc) = jb.peek.as_mut() else {
                return Action::Continue;
            };
            sc.feed(bytes.get(fed..).unwrap_or_default());
            let ending = end_of_stream.then(|| {
                sc.set_dialect_if_unknown(dialect);
                sc.clone_finish()
            });
            (sc.error().cloned(), sc.events(), ending)
        };

        let may = j.borrow().flight.may_move(Move::Failure, now_ms);
        if let Some(e) = error {
            if may {
                let outcome = Outcome::Failure(Reason::StreamError);
                return self.start_rescue(p, outcome, Move::Failure, Some(&e.kind), now_ms);
            }
        } else if events == 0 && ending.as_ref().is_some_and(|e| *e == Ending::Truncated) && may {
            return self.start_rescue(p, Outcome::Failure(Reason::Truncated), Move::Failure, None, now_ms);
        } else if events == 0 && !end_of_stream {
            return Action::Pause;
        }
        // The first event is no error: let the stream go, and keep reading it.
        let scanner = j.borrow_mut().peek.take();
        self.scanner = scanner;
        j.borrow_mut().stage = Stage::Passed;
        if body_size > 0 {
            self.note_first_byte(now_ms);
            self.last_chunk_ms = Some(now_ms);
        }
        if end_of_stream {
            return self.finish_stream(p, routed, body_size);
        }
        self.release_held(p, routed)
    }

    /// The live path: time the answer, scan a stream, close a cut one.
    fn scan_live(&mut self, p: &Rc<Plugin>, routed: Routed, body_size: usize, end_of_stream: bool) -> Action {
        let timed_first_byte = self.first_byte_ms.is_none() && body_size > 0;
        if !timed_first_byte && self.scanner.is_none() {
            return Action::Continue;
        }
        let now_ms = p.now();
        if body_size > 0 {
            self.note_first_byte(now_ms);
        }
        let Some(scanner) = self.scanner.as_mut() else {
            return Action::Continue;
        };
        if body_size > 0 {
            if let Some(last) = self.last_chunk_ms {
                let gap = now_ms.saturating_sub(last);
                self.max_gap_ms = Some(self.max_gap_ms.map_or(gap, |g| g.max(gap)));
            }
            self.last_chunk_ms = Some(now_ms);
            if let Ok(Some(bytes)) = host::response_body(body_size) {
                scanner.feed(&bytes);
            }
        }
        if end_of_stream {
            return self.finish_stream(p, routed, body_size);
        }
        Action::Continue
    }

    /// The stream's last chunk: judge its end, and close it with an error
    /// event if it was cut before its end marker.
    fn finish_stream(&mut self, p: &Rc<Plugin>, routed: Routed, body_size: usize) -> Action {
        let Some(scanner) = self.scanner.as_mut() else {
            return Action::Continue;
        };
        if scanner.dialect().is_none() {
            // Nothing in the stream named its format: the request path may.
            if let Ok(Some(path)) = host::header(REQUEST_HEADERS, ":path") {
                scanner.set_dialect_if_unknown(sse::dialect_for_path(&path));
            }
        }
        let mid_event = scanner.mid_event();
        let ending = scanner.finish();
        if ending == Ending::Truncated {
            // Never hand the client a cut stream that looks complete.
            let vendor = p.vendor_name(routed.vendor);
            let event = sse::truncation_event(vendor, scanner.dialect(), mid_event);
            match host::append_response_body(body_size, &event) {
                Ok(()) => {
                    if let Some(s) = p.vendor_stats.get(routed.vendor) {
                        metrics::add(s.truncations_closed, 1);
                    }
                }
                Err(e) => log::warn!("cannot close a cut stream with an error event (host status {})", e.0),
            }
        }
        self.ending = Some(ending);
        Action::Continue
    }
}
