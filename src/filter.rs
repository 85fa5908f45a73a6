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

use crate::batch::Batch;
use crate::choice::{self, Choice, Worker};
use crate::classify::{self, Observed, Outcome, Reason};
use crate::config::Config;
use crate::health::{PhaseKind, Rules, Ticket, Transition, VendorState, Verdict};
use crate::host::{self, SharedData, REQUEST_HEADERS, RESPONSE_HEADERS};
use crate::metrics::{self, GlobalStats, VendorStats};
use crate::notify;
use crate::ratelimit;
use crate::reply;
use crate::sse::{self, Ending, Scanner};
use crate::store::{self, Loaded, StoreError};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::cell::{Cell, RefCell};
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
struct Plugin {
    config: Config,
    rules: Rules,
    keys: Vec<String>,
    vendor_stats: Vec<VendorStats>,
    stats: GlobalStats,
    /// Round robin, missing clusters and the copy of the shared state.
    worker: RefCell<Worker>,
    /// The latest clock reading on this worker (ms); batched successes are
    /// placed in the window by it, so they may land up to one tick early.
    clock_ms: Cell<u64>,
    next_cluster_check_ms: Cell<u64>,
    /// Quiet successes not yet written, per vendor.
    batches: RefCell<Vec<Batch>>,
    /// Finished requests per vendor not yet added to the `requests` counters.
    unreported: RefCell<Vec<u64>>,
    /// This VM's notification queue.
    queue: Cell<Option<u32>>,
}

impl Plugin {
    fn new(config: Config) -> Result<Plugin, String> {
        let rules = Rules::from_config(&config);
        let n = config.vendors.len();
        let keys = config
            .vendors
            .iter()
            .map(|v| store::vendor_key(&v.name, config.window))
            .collect();
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
            worker: RefCell::new(Worker::new(n)),
            clock_ms: Cell::new(0),
            next_cluster_check_ms: Cell::new(0),
            batches: RefCell::new(vec![Batch::default(); n]),
            unreported: RefCell::new(vec![0; n]),
            queue: Cell::new(None),
        })
    }

    /// Reads the clock, and remembers the reading.
    fn now(&self) -> u64 {
        let t = host::now_ms();
        self.clock_ms.set(t);
        t
    }

    fn vendor_name(&self, vendor: usize) -> &str {
        self.config
            .vendors
            .get(vendor)
            .map_or("?", |v| v.name.as_str())
    }

    /// Logs a phase change (exactly one worker makes each one) and updates stats.
    fn announce(&self, vendor: usize, t: &Transition) {
        log::info!("vendor {}: {}", self.vendor_name(vendor), t);
        if let Some(s) = self.vendor_stats.get(vendor) {
            if t.to == PhaseKind::Open {
                metrics::add(s.ejections, 1);
            }
            metrics::set(s.state, t.to.gauge());
        }
    }

    fn note_reset(&self, vendor: usize, why: &dyn std::fmt::Display) {
        log::warn!(
            "vendor {}: shared state was unusable ({why}); starting it afresh",
            self.vendor_name(vendor)
        );
        metrics::add(self.stats.state_resets, 1);
    }

    fn note_store_error(&self, vendor: usize, e: &StoreError) {
        log::debug!("vendor {}: {e}", self.vendor_name(vendor));
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

    fn mark_missing(&self, vendor: usize) {
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
    fn write(
        &self,
        vendor: usize,
        now_ms: u64,
        step: impl Fn(&mut VendorState) -> Option<Transition>,
    ) {
        let Some(key) = self.keys.get(vendor) else {
            return;
        };
        let batched = self
            .batches
            .borrow_mut()
            .get_mut(vendor)
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
                    self.note_reset(vendor, &why);
                }
                if let Some(t) = &transition {
                    self.announce(vendor, t);
                }
                self.worker
                    .borrow_mut()
                    .view
                    .put(vendor, done.state, now_ms);
                if matters {
                    self.notify(vendor);
                }
            }
            Err(e) => {
                if let Some(b) = self.batches.borrow_mut().get_mut(vendor) {
                    b.restore(batched);
                }
                self.note_store_error(vendor, &e);
            }
        }
    }

    /// Writes the batched successes and reports the batched request counts.
    fn flush(&self, now_ms: u64) {
        for vendor in 0..self.keys.len() {
            let pending = self
                .batches
                .borrow()
                .get(vendor)
                .is_some_and(|b| !b.is_empty());
            if pending {
                self.write(vendor, now_ms, |_| None);
            }
        }
        let mut unreported = self.unreported.borrow_mut();
        for (count, s) in unreported.iter_mut().zip(&self.vendor_stats) {
            metrics::add(s.requests, std::mem::take(count));
        }
    }

    /// Re-reads every vendor's shared state into this worker's copy and the gauges.
    fn refresh(&self, now_ms: u64) {
        for (vendor, key) in self.keys.iter().enumerate() {
            match store::load(&SharedData, key, self.rules.window) {
                Ok(Loaded { state, reset, .. }) => {
                    if let (None, Some(s)) = (reset, self.vendor_stats.get(vendor)) {
                        let totals = state.window.totals(now_ms);
                        metrics::set(s.state, state.effective_kind(now_ms).gauge());
                        metrics::set(s.window_requests, totals.requests());
                        metrics::set(s.window_failures, totals.failures);
                        metrics::set(s.window_slow, totals.slow);
                    }
                    self.worker.borrow_mut().view.put(vendor, state, now_ms);
                }
                Err(e) => {
                    self.worker.borrow_mut().view.forget(vendor);
                    self.note_store_error(vendor, &e);
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
                store::update_bytes(&SharedData, notify::REGISTRY_KEY, |r| {
                    (notify::join(r, token), ())
                })
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
            if let Some(vendor) = self
                .keys
                .iter()
                .position(|k| k.as_bytes() == message.as_slice())
            {
                worker.view.forget(vendor);
            }
        }
    }
}

struct Root {
    plugin: Option<Rc<Plugin>>,
}

impl Context for Root {}

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
        let plugin = match Config::parse(&bytes)
            .map_err(|e| e.to_string())
            .and_then(Plugin::new)
        {
            Ok(p) => p,
            Err(e) => {
                log::error!("configuration refused: {e}");
                return false;
            }
        };
        for (vendor, key) in plugin.keys.iter().enumerate() {
            if let Err(e) = store::create_if_missing(&SharedData, key, plugin.rules.window) {
                plugin.note_store_error(vendor, &e);
            }
        }
        plugin.join_notifications();
        if let Err(e) = host::set_tick_period_ms(plugin.config.refresh_ms) {
            log::warn!(
                "cannot set the tick period (host status {}); gauges will lag",
                e.0
            );
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
            "configured; routing header {}; vendors by preference: {}",
            plugin.config.cluster_header,
            vendors.join(", ")
        );
        self.plugin = Some(Rc::new(plugin));
        true
    }

    fn on_tick(&mut self) {
        if let Some(p) = &self.plugin {
            let now_ms = p.now();
            p.flush(now_ms);
            p.refresh(now_ms);
            let any_missing = p.worker.borrow().missing.iter().any(|&m| m);
            if any_missing && now_ms >= p.next_cluster_check_ms.get() {
                p.check_clusters(now_ms, true);
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

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            plugin: self.plugin.clone(),
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
    vendor: usize,
    ticket: Option<Ticket>,
    forced: bool,
}

#[derive(Default)]
struct Stream {
    plugin: Option<Rc<Plugin>>,
    routed: Option<Routed>,
    status: Option<u16>,
    /// The response reached its end (end of stream or trailers).
    complete: bool,
    /// When the request was routed (only read if a first-byte limit is set).
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
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(p) = self.plugin.clone() else {
            return Action::Continue;
        };
        // The start time is read only if a first-byte limit needs it; the
        // choice then reuses it instead of reading the clock again.
        self.start_ms = p.config.slow.first_byte_ms.map(|_| p.now());
        let start = self.start_ms;
        let choice = {
            let mut worker = p.worker.borrow_mut();
            let mut clock = || start.unwrap_or_else(|| p.now());
            choice::choose(
                &p.config,
                &p.rules,
                &p.keys,
                &SharedData,
                &mut clock,
                &mut worker,
            )
        };

        match choice {
            Choice::Route {
                vendor,
                ticket,
                forced,
                transition,
            } => {
                if let Some(t) = &transition {
                    p.announce(vendor, t);
                }
                if forced {
                    metrics::add(p.stats.all_down, 1);
                }
                let cluster = p
                    .config
                    .vendors
                    .get(vendor)
                    .map_or("", |v| v.cluster.as_str());
                // Always overwrite: a client must not pick the cluster itself.
                if let Err(e) = host::set_header(
                    REQUEST_HEADERS,
                    &p.config.cluster_header,
                    cluster.as_bytes(),
                ) {
                    log::warn!(
                        "cannot set {} (host status {})",
                        p.config.cluster_header,
                        e.0
                    );
                }
                self.routed = Some(Routed {
                    vendor,
                    ticket,
                    forced,
                });
                Action::Continue
            }
            Choice::Reject { due, now_ms } => {
                metrics::add(p.stats.all_down, 1);
                metrics::add(p.stats.rejected, 1);
                let r = reply::all_vendors_down(&p.config, &due, now_ms);
                let retry_after = r.retry_after_s.to_string();
                let headers: [(&str, &[u8]); 2] = [
                    ("content-type", b"application/json"),
                    ("retry-after", retry_after.as_bytes()),
                ];
                match host::send_response(r.status, &headers, r.body.as_bytes()) {
                    Ok(()) => Action::Pause,
                    Err(e) => {
                        log::warn!("cannot send the all-down reply (host status {})", e.0);
                        Action::Continue
                    }
                }
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.complete |= end_of_stream;
        let (Some(p), Some(routed)) = (self.plugin.clone(), self.routed) else {
            return Action::Continue;
        };
        // One host call for every header: the status, and what decides how
        // the answer is read.
        let headers = host::header_pairs(RESPONSE_HEADERS).unwrap_or_default();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_slice())
        };
        self.status = get(":status").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
        match self.status {
            Some(429) => {
                let pairs: Vec<(&str, &[u8])> = headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_slice()))
                    .collect();
                self.retry_after_ms = ratelimit::retry_after_ms(&pairs, p.now());
            }
            Some(200..=299)
                if get("content-type").is_some_and(|ct| ct.starts_with(b"text/event-stream")) =>
            {
                self.scanner = Some(Scanner::new());
                // The filter may append an error event to a cut stream: a
                // declared length would then be wrong.
                if get("content-length").is_some() {
                    let _ = host::remove_header(RESPONSE_HEADERS, "content-length");
                }
            }
            _ => {}
        }
        if end_of_stream && self.start_ms.is_some() {
            self.note_first_byte(p.now());
        }
        if let (Some(header), Some(v)) =
            (&p.config.vendor_header, p.config.vendors.get(routed.vendor))
        {
            let _ = host::set_header(RESPONSE_HEADERS, header, v.name.as_bytes());
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.complete |= end_of_stream;
        let (Some(p), Some(routed)) = (self.plugin.clone(), self.routed) else {
            return Action::Continue;
        };
        let timed_first_byte =
            self.first_byte_ms.is_none() && self.start_ms.is_some() && body_size > 0;
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
                    Err(e) => log::warn!(
                        "cannot close a cut stream with an error event (host status {})",
                        e.0
                    ),
                }
            }
            self.ending = Some(ending);
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.complete = true;
        Action::Continue
    }

    fn on_log(&mut self) {
        let (Some(p), Some(routed)) = (&self.plugin, self.routed) else {
            return;
        };
        let vendor = routed.vendor;
        // A 2xx answer that reached its end went right all the way: Envoy's
        // flags can add nothing, so the common case skips reading them.
        let clean = self.complete && self.status.is_some_and(|s| (200..300).contains(&s));
        let flags = if clean {
            0
        } else {
            host::property_u64(b"response\0flags")
                .ok()
                .flatten()
                .unwrap_or(0)
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
        let seen = Observed {
            status,
            flags,
            stream,
            retry_after_ms: self.retry_after_ms,
            first_byte_ms: self.first_byte_ms,
            max_gap_ms: self.max_gap_ms,
        };
        let outcome = classify::classify(&seen, &p.config.failure_statuses, &p.config.slow);
        if let Some(n) = p.unreported.borrow_mut().get_mut(vendor) {
            *n += 1;
        }
        if let Some(s) = p.vendor_stats.get(vendor) {
            match outcome {
                Outcome::Failure(reason) => {
                    s.count_failure(reason);
                    if let Some(Ending::Error(e)) = &seen.stream {
                        s.count_stream_error(&e.kind);
                    }
                }
                Outcome::Slow(_) => metrics::add(s.slow, 1),
                Outcome::RateLimited(_) => metrics::add(s.rate_limited, 1),
                Outcome::Neutral(Some(_)) => metrics::add(s.client_errors, 1),
                Outcome::Success | Outcome::Neutral(None) => {}
            }
            if routed.forced {
                metrics::add(s.forced, 1);
            }
        }
        if !matches!(outcome, Outcome::Success) {
            log::debug!(
                "vendor {}: {outcome} (status {status:?}, flags {flags:#x})",
                p.vendor_name(vendor)
            );
        }
        if outcome == Outcome::Failure(Reason::NoCluster) {
            p.mark_missing(vendor);
        }
        let verdict = outcome.verdict();
        let Some(ticket) = routed.ticket.or_else(|| {
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
                    let bucket = p.clock_ms.get() / p.rules.window.bucket_ms.max(1);
                    let full = p
                        .batches
                        .borrow_mut()
                        .get_mut(vendor)
                        .is_some_and(|b| b.add(ticket.generation, bucket));
                    if full {
                        p.write(vendor, p.now(), |_| None);
                    }
                    return;
                }
                _ => {}
            }
        }
        let now_ms = p.now();
        p.write(vendor, now_ms, |st| {
            st.record(now_ms, verdict, ticket, &p.rules)
        });
    }
}
