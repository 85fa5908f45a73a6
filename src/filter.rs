//! The proxy-wasm glue: Envoy's callbacks turned into calls on the pure
//! modules. Every host call goes through `host`; every failure becomes a log
//! line or a skipped stat, never a panic.
//!
//! Per request: `on_http_request_headers` chooses the vendor and writes its
//! cluster into the routing header; `on_http_response_headers` notes the
//! status and names the vendor; `on_log`, which Envoy calls once when the
//! stream ends however it ends, classifies the outcome and records it in the
//! vendor's shared window.

use crate::batch::Batch;
use crate::choice::{self, Choice};
use crate::classify::{self, Outcome};
use crate::config::Config;
use crate::health::{PhaseKind, Rules, Ticket, Transition, VendorState, Verdict};
use crate::host::{self, SharedData, COUNTER, GAUGE, REQUEST_HEADERS, RESPONSE_HEADERS};
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

/// Stats of one vendor. Envoy prefixes the names with `wasmcustom.` inside
/// and strips that prefix again in `/stats` output.
struct VendorStats {
    requests: u32,
    failures: u32,
    ejections: u32,
    forced: u32,
    state: u32,
    window_requests: u32,
    window_failures: u32,
}

struct GlobalStats {
    all_down: u32,
    rejected: u32,
    state_resets: u32,
    store_errors: u32,
}

/// Everything a configured filter instance needs, shared by its streams.
struct Plugin {
    config: Config,
    rules: Rules,
    keys: Vec<String>,
    vendor_stats: Vec<VendorStats>,
    stats: GlobalStats,
    /// This worker's round-robin position for weighted choice.
    turn: Cell<u64>,
    /// Vendors whose cluster this worker's Envoy does not have (see
    /// `check_clusters`); skipped by the choice while others exist.
    missing: RefCell<Vec<bool>>,
    next_cluster_check_ms: Cell<u64>,
    /// This worker's quiet successes not yet written, per vendor (`batch`).
    batches: RefCell<Vec<Batch>>,
    /// Finished requests per vendor not yet added to the `requests` counters.
    unreported: RefCell<Vec<u64>>,
}

fn metric(kind: u32, name: &str) -> Result<u32, String> {
    host::define_metric(kind, name)
        .map_err(|e| format!("cannot define metric {name}: host status {}", e.0))
}

impl Plugin {
    fn new(config: Config) -> Result<Plugin, String> {
        let rules = Rules::from_config(&config);
        let keys = config
            .vendors
            .iter()
            .map(|v| store::vendor_key(&v.name, config.window))
            .collect();
        let mut vendor_stats = Vec::with_capacity(config.vendors.len());
        for v in &config.vendors {
            let p = format!("llm_failover.vendor.{}.", v.name);
            vendor_stats.push(VendorStats {
                requests: metric(COUNTER, &format!("{p}requests"))?,
                failures: metric(COUNTER, &format!("{p}failures"))?,
                ejections: metric(COUNTER, &format!("{p}ejections"))?,
                forced: metric(COUNTER, &format!("{p}forced"))?,
                state: metric(GAUGE, &format!("{p}state"))?,
                window_requests: metric(GAUGE, &format!("{p}window_requests"))?,
                window_failures: metric(GAUGE, &format!("{p}window_failures"))?,
            });
        }
        let stats = GlobalStats {
            all_down: metric(COUNTER, "llm_failover.all_down")?,
            rejected: metric(COUNTER, "llm_failover.rejected")?,
            state_resets: metric(COUNTER, "llm_failover.state_resets")?,
            store_errors: metric(COUNTER, "llm_failover.store_errors")?,
        };
        Ok(Plugin {
            config,
            rules,
            keys,
            missing: RefCell::new(vec![false; vendor_stats.len()]),
            batches: RefCell::new(vec![Batch::default(); vendor_stats.len()]),
            unreported: RefCell::new(vec![0; vendor_stats.len()]),
            stats,
            vendor_stats,
            turn: Cell::new(0),
            next_cluster_check_ms: Cell::new(0),
        })
    }

    fn vendor_name(&self, vendor: usize) -> &str {
        self.config
            .vendors
            .get(vendor)
            .map_or("?", |v| v.name.as_str())
    }

    /// Logs a phase change (exactly one worker sees each one) and updates stats.
    fn announce(&self, vendor: usize, t: &Transition) {
        log::info!("vendor {}: {}", self.vendor_name(vendor), t);
        if let Some(s) = self.vendor_stats.get(vendor) {
            if t.to == PhaseKind::Open {
                host::increment_metric(s.ejections, 1);
            }
            host::record_metric(s.state, t.to.gauge());
        }
    }

    fn note_reset(&self, vendor: usize, why: &dyn std::fmt::Display) {
        log::warn!(
            "vendor {}: shared state was unusable ({why}); starting it afresh",
            self.vendor_name(vendor)
        );
        host::increment_metric(self.stats.state_resets, 1);
    }

    fn note_store_error(&self, vendor: usize, e: &StoreError) {
        log::debug!("vendor {}: {e}", self.vendor_name(vendor));
        host::increment_metric(self.stats.store_errors, 1);
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
        let mut missing = self.missing.borrow_mut();
        for (i, vendor) in self.config.vendors.iter().enumerate() {
            let Some(flag) = missing.get_mut(i) else {
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
        if let Some(flag) = self.missing.borrow_mut().get_mut(vendor) {
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
    /// worker's batched successes for it (older, so merged first).
    fn write(&self, vendor: usize, step: impl Fn(&mut VendorState) -> Option<Transition>) {
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
            for d in &batched {
                st.merge(d);
            }
            step(st)
        });
        match result {
            Ok(done) => {
                if let Some(why) = done.reset {
                    self.note_reset(vendor, &why);
                }
                if let Some(t) = done.result {
                    self.announce(vendor, &t);
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
    fn flush(&self) {
        for vendor in 0..self.keys.len() {
            let pending = self
                .batches
                .borrow()
                .get(vendor)
                .is_some_and(|b| !b.is_empty());
            if pending {
                self.write(vendor, |_| None);
            }
        }
        let mut unreported = self.unreported.borrow_mut();
        for (count, s) in unreported.iter_mut().zip(&self.vendor_stats) {
            if *count > 0 {
                host::increment_metric(s.requests, i64::try_from(*count).unwrap_or(i64::MAX));
                *count = 0;
            }
        }
    }

    /// Copies every vendor's shared state into the gauges.
    fn refresh_gauges(&self, now_ms: u64) {
        for (vendor, key) in self.keys.iter().enumerate() {
            let Some(s) = self.vendor_stats.get(vendor) else {
                continue;
            };
            match store::load(&SharedData, key, self.rules.window) {
                Ok(Loaded {
                    state, reset: None, ..
                }) => {
                    let totals = state.window.totals(now_ms);
                    host::record_metric(s.state, state.effective_kind(now_ms).gauge());
                    host::record_metric(s.window_requests, totals.requests());
                    host::record_metric(s.window_failures, totals.failures);
                }
                Ok(_) => {} // repaired by the next recorded outcome
                Err(e) => self.note_store_error(vendor, &e),
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
        let config = match Config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("configuration refused: {e}");
                return false;
            }
        };
        let plugin = match Plugin::new(config) {
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
        if let Err(e) = host::set_tick_period_ms(plugin.config.refresh_ms) {
            log::warn!(
                "cannot set the tick period (host status {}); gauges will lag",
                e.0
            );
        }
        let now_ms = host::now_ms();
        plugin.check_clusters(now_ms, false);
        plugin.refresh_gauges(now_ms);
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
            let now_ms = host::now_ms();
            p.flush();
            p.refresh_gauges(now_ms);
            if now_ms >= p.next_cluster_check_ms.get() && p.missing.borrow().iter().any(|&m| m) {
                p.check_clusters(now_ms, true);
            }
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
        let now_ms = host::now_ms();
        let mut turn = p.turn.get();
        let choice = choice::choose(
            &p.config,
            &p.rules,
            &p.keys,
            &SharedData,
            now_ms,
            &mut turn,
            &p.missing.borrow(),
        );
        p.turn.set(turn);
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
                    host::increment_metric(p.stats.all_down, 1);
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
            Choice::Reject { due } => {
                host::increment_metric(p.stats.all_down, 1);
                host::increment_metric(p.stats.rejected, 1);
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
        let now_ms = host::now_ms();
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
                host::increment_metric(s.failures, 1);
                log::debug!(
                    "vendor {}: failure ({reason}, flags {flags:#x})",
                    p.vendor_name(vendor)
                );
            }
            if routed.forced {
                host::increment_metric(s.forced, 1);
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
                    let bucket = now_ms / p.rules.window.bucket_ms.max(1);
                    let full = p
                        .batches
                        .borrow_mut()
                        .get_mut(vendor)
                        .is_some_and(|b| b.add(ticket.generation, bucket));
                    if full {
                        p.write(vendor, |_| None);
                    }
                    return;
                }
                _ => {}
            }
        }
        p.write(vendor, |st| st.record(now_ms, verdict, ticket, &p.rules));
    }
}
