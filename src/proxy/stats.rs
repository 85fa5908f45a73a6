//! The stats the filter defines in Envoy, and where an outcome's counts become metric updates.
//!
//! Envoy stores a wasm metric under `wasmcustom.<name>` and merges metrics
//! of the same name from every worker VM, so counters add up across workers
//! and a gauge holds the last value any worker set.

use crate::policy::classify::Reason;
use crate::policy::record::Count;
use crate::proxy::host::{Host, MetricKind};
use std::cell::RefCell;

/// In-stream error types counted per vendor; later types share "other".
const MAX_STREAM_ERROR_KINDS: usize = 16;

/// Metric ids of one vendor: `llm_failover.vendor.<name>.<stat>`.
pub struct VendorStats {
    prefix: String,
    pub requests: u32,
    pub failures: u32,
    /// `failures_by_reason.<reason>`, indexed like `Reason::ALL`.
    pub failures_by_reason: Vec<u32>,
    pub rate_limited: u32,
    pub slow: u32,
    pub client_errors: u32,
    /// Streams cut before their end marker that the filter closed with an error event.
    pub truncations_closed: u32,
    pub ejections: u32,
    pub forced: u32,
    pub state: u32,
    pub window_requests: u32,
    pub window_failures: u32,
    pub window_slow: u32,
    /// Its model units (mapped models and model slots) ejected or half-open now.
    pub models_ejected: u32,
    /// Its model units skipped for a 429 now.
    pub models_rate_limited: u32,
    /// 1 while it is drained (by an operator, or `disabled` in the config).
    pub drained: u32,
    /// `stream_errors.<type>`: defined as types are first seen.
    stream_errors: RefCell<Vec<(String, u32)>>,
}

/// Metric ids of the filter as a whole: `llm_failover.<stat>`.
pub struct GlobalStats {
    pub all_down: u32,
    pub rejected: u32,
    pub state_resets: u32,
    /// Shared-data calls that failed, or writes that stayed contended.
    pub store_errors: u32,
    /// Compare-and-swap writes that lost a race and were recomputed.
    pub cas_retries: u32,
    /// Bytes of shared data the filter's keys hold (a gauge).
    pub shared_bytes: u32,
    /// Requests answered by a rescue after their first attempt failed.
    pub rescued: u32,
    /// Rescue attempts sent (callouts).
    pub rescue_attempts: u32,
    /// Attempts handed back to the router by the upstream filter and sent
    /// on to the next candidate (live-streamed rescue).
    pub relayed: u32,
    /// Hand-backs Envoy did not follow (no `internal_redirect_policy`, or
    /// a body past its buffer): rescued with callouts instead.
    pub relays_not_followed: u32,
    /// Failed attempts retried on the same vendor (after a back-off, or
    /// once a short rate limit was over).
    pub same_vendor_retries: u32,
    /// Requests answered whole (buffered mode).
    pub buffered: u32,
    /// Streams cut after content reached the client, completed by the next
    /// vendor's continuation.
    pub continued: u32,
    /// Of those the filter tried to continue, the ones that ended with the
    /// original failure (no vendor took the prefill).
    pub continuations_failed: u32,
    /// Requests answered 503 because no vendor was left to try.
    pub rescues_failed: u32,
    /// Of those, requests that failed on every vendor tried (two or more):
    /// only their first attempt's failure was charged.
    pub failed_everywhere: u32,
    /// Streams abandoned for missing the time-to-first-token limit.
    pub first_token_timeouts: u32,
    /// Request bodies too large to hold: passed through without rescue.
    pub body_too_large: u32,
    /// Requests for a model no vendor serves (answered 404).
    pub model_not_served: u32,
    /// Request bodies the filter cannot read unambiguously (answered 400).
    pub unreadable_bodies: u32,
}

fn define<H: Host>(host: &H, kind: MetricKind, name: &str) -> Result<u32, String> {
    host.define_metric(kind, name)
        .map_err(|e| format!("cannot define metric {name}: host status {}", e.0))
}

impl VendorStats {
    pub fn define<H: Host>(host: &H, vendor: &str) -> Result<Self, String> {
        let p = format!("llm_failover.vendor.{vendor}.");
        let counter = |name: &str| define(host, MetricKind::Counter, &format!("{p}{name}"));
        let gauge = |name: &str| define(host, MetricKind::Gauge, &format!("{p}{name}"));
        let failures_by_reason = Reason::ALL
            .iter()
            .map(|r| counter(&format!("failures_by_reason.{}", r.name())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VendorStats {
            requests: counter("requests")?,
            failures: counter("failures")?,
            failures_by_reason,
            rate_limited: counter("rate_limited")?,
            slow: counter("slow")?,
            client_errors: counter("client_errors")?,
            truncations_closed: counter("truncations_closed")?,
            ejections: counter("ejections")?,
            forced: counter("forced")?,
            state: gauge("state")?,
            window_requests: gauge("window_requests")?,
            window_failures: gauge("window_failures")?,
            window_slow: gauge("window_slow")?,
            models_ejected: gauge("models_ejected")?,
            models_rate_limited: gauge("models_rate_limited")?,
            drained: gauge("drained")?,
            stream_errors: RefCell::new(Vec::new()),
            prefix: p,
        })
    }

    /// Adds an outcome's count, and its in-stream error type if it had one.
    pub fn count<H: Host>(&self, host: &H, count: Count, stream_error: Option<&str>) {
        match count {
            Count::Failure(reason) => {
                add(host, self.failures, 1);
                if let Some(&id) = self.failures_by_reason.get(reason.index()) {
                    add(host, id, 1);
                }
                if let Some(kind) = stream_error {
                    self.count_stream_error(host, kind);
                }
            }
            Count::Slow => add(host, self.slow, 1),
            Count::RateLimited => add(host, self.rate_limited, 1),
            Count::ClientError => add(host, self.client_errors, 1),
        }
    }

    /// Counts an in-stream error by the vendor's own type for it.
    fn count_stream_error<H: Host>(&self, host: &H, kind: &str) {
        let mut known = self.stream_errors.borrow_mut();
        let kind = if known.len() >= MAX_STREAM_ERROR_KINDS && !known.iter().any(|(k, _)| k == kind) {
            "other"
        } else {
            kind
        };
        let id = match known.iter().find(|(k, _)| k == kind) {
            Some((_, id)) => Some(*id),
            None => match define(
                host,
                MetricKind::Counter,
                &format!("{}stream_errors.{kind}", self.prefix),
            ) {
                Ok(id) => {
                    known.push((kind.to_string(), id));
                    Some(id)
                }
                Err(_) => None,
            },
        };
        if let Some(id) = id {
            add(host, id, 1);
        }
    }
}

impl GlobalStats {
    pub fn define<H: Host>(host: &H) -> Result<Self, String> {
        let counter = |name: &str| define(host, MetricKind::Counter, &format!("llm_failover.{name}"));
        Ok(GlobalStats {
            all_down: counter("all_down")?,
            rejected: counter("rejected")?,
            state_resets: counter("state_resets")?,
            store_errors: counter("store_errors")?,
            cas_retries: counter("cas_retries")?,
            shared_bytes: define(host, MetricKind::Gauge, "llm_failover.shared_bytes")?,
            rescued: counter("rescued")?,
            rescue_attempts: counter("rescue_attempts")?,
            relayed: counter("relayed")?,
            relays_not_followed: counter("relays_not_followed")?,
            same_vendor_retries: counter("same_vendor_retries")?,
            buffered: counter("buffered")?,
            continued: counter("continued")?,
            continuations_failed: counter("continuations_failed")?,
            rescues_failed: counter("rescues_failed")?,
            failed_everywhere: counter("failed_everywhere")?,
            first_token_timeouts: counter("first_token_timeouts")?,
            body_too_large: counter("body_too_large")?,
            model_not_served: counter("model_not_served")?,
            unreadable_bodies: counter("unreadable_bodies")?,
        })
    }
}

pub fn add<H: Host>(host: &H, id: u32, n: u64) {
    if n > 0 {
        host.increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
    }
}

pub fn set<H: Host>(host: &H, id: u32, value: u64) {
    host.record_metric(id, value);
}
