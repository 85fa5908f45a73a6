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
use crate::classify::{self, Outcome};
use crate::config::Config;
use crate::health::{PhaseKind, Rules, Ticket, Transition, VendorState, Verdict};
use crate::host::{self, SharedData, REQUEST_HEADERS, RESPONSE_HEADERS};
use crate::metrics::{self, GlobalStats, VendorStats};
use crate::notify;
use crate::reply;
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
            let was_quiet = st.is_quiet(now_ms);
            for d in &batched {
                st.merge(d);
            }
            (step(st), was_quiet)
        });
        match result {
            Ok(done) => {
                let (transition, was_quiet) = done.result;
                let matters = transition.is_some()
                    || done.reset.is_some()
                    || (was_quiet && !done.state.is_quiet(now_ms));
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
            routed: None,
            status: None,
            complete: false,
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

struct Stream {
    plugin: Option<Rc<Plugin>>,
    routed: Option<Routed>,
    status: Option<u16>,
    /// The response reached its end (end of stream or trailers).
    complete: bool,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(p) = self.plugin.clone() else {
            return Action::Continue;
        };
        let choice = {
            let mut worker = p.worker.borrow_mut();
            choice::choose(
                &p.config,
                &p.rules,
                &p.keys,
                &SharedData,
                &mut || p.now(),
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
        let (Some(p), Some(routed)) = (&self.plugin, self.routed) else {
            return Action::Continue;
        };
        self.status = host::header(RESPONSE_HEADERS, ":status")
            .ok()
            .flatten()
            .and_then(|v| std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()));
        if let (Some(header), Some(v)) =
            (&p.config.vendor_header, p.config.vendors.get(routed.vendor))
        {
            let _ = host::set_header(RESPONSE_HEADERS, header, v.name.as_bytes());
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, _body_size: usize, end_of_stream: bool) -> Action {
        self.complete |= end_of_stream;
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
        let outcome = classify::classify(status, flags, &p.config.failure_statuses);
        if let Some(n) = p.unreported.borrow_mut().get_mut(vendor) {
            *n += 1;
        }
        if let Some(s) = p.vendor_stats.get(vendor) {
            if let Outcome::Failure(reason) = outcome {
                metrics::add(s.failures, 1);
                log::debug!(
                    "vendor {}: failure ({reason}, flags {flags:#x})",
                    p.vendor_name(vendor)
                );
            }
            if routed.forced {
                metrics::add(s.forced, 1);
            }
        }
        if outcome == Outcome::Failure(classify::Reason::NoCluster) {
            p.mark_missing(vendor);
        }
        let Some(ticket) = routed.ticket else { return };
        let verdict = outcome.verdict();
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
