//! The stats the filter defines in Envoy (glue; wasm only).
//!
//! Envoy stores a wasm metric under `wasmcustom.<name>` and merges metrics
//! of the same name from every worker VM, so counters add up across workers
//! and a gauge holds the last value any worker set.

use crate::policy::classify::Reason;
use crate::proxy::host::{self, COUNTER, GAUGE};
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
    /// `stream_errors.<type>`: defined as types are first seen.
    stream_errors: RefCell<Vec<(String, u32)>>,
}

/// Metric ids of the filter as a whole: `llm_failover.<stat>`.
pub struct GlobalStats {
    pub all_down: u32,
    pub rejected: u32,
    pub state_resets: u32,
    pub store_errors: u32,
    /// Requests answered by a rescue after their first attempt failed.
    pub rescued: u32,
    /// Rescue attempts sent (callouts).
    pub rescue_attempts: u32,
    /// Requests answered 503 because no vendor was left to try.
    pub rescues_failed: u32,
    /// Streams abandoned for missing the time-to-first-token limit.
    pub first_token_timeouts: u32,
    /// Request bodies too large to hold: passed through without rescue.
    pub body_too_large: u32,
    /// Requests for a model no vendor serves (answered 404).
    pub model_not_served: u32,
}

fn define(kind: u32, name: &str) -> Result<u32, String> {
    host::define_metric(kind, name).map_err(|e| format!("cannot define metric {name}: host status {}", e.0))
}

impl VendorStats {
    pub fn define(vendor: &str) -> Result<Self, String> {
        let p = format!("llm_failover.vendor.{vendor}.");
        let failures_by_reason = Reason::ALL
            .iter()
            .map(|r| define(COUNTER, &format!("{p}failures_by_reason.{}", r.name())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VendorStats {
            requests: define(COUNTER, &format!("{p}requests"))?,
            failures: define(COUNTER, &format!("{p}failures"))?,
            failures_by_reason,
            rate_limited: define(COUNTER, &format!("{p}rate_limited"))?,
            slow: define(COUNTER, &format!("{p}slow"))?,
            client_errors: define(COUNTER, &format!("{p}client_errors"))?,
            truncations_closed: define(COUNTER, &format!("{p}truncations_closed"))?,
            ejections: define(COUNTER, &format!("{p}ejections"))?,
            forced: define(COUNTER, &format!("{p}forced"))?,
            state: define(GAUGE, &format!("{p}state"))?,
            window_requests: define(GAUGE, &format!("{p}window_requests"))?,
            window_failures: define(GAUGE, &format!("{p}window_failures"))?,
            window_slow: define(GAUGE, &format!("{p}window_slow"))?,
            stream_errors: RefCell::new(Vec::new()),
            prefix: p,
        })
    }

    pub fn count_failure(&self, reason: Reason) {
        add(self.failures, 1);
        if let Some(&id) = self.failures_by_reason.get(reason.index()) {
            add(id, 1);
        }
    }

    /// Counts an in-stream error by the vendor's own type for it.
    pub fn count_stream_error(&self, kind: &str) {
        let mut known = self.stream_errors.borrow_mut();
        let kind = if known.len() >= MAX_STREAM_ERROR_KINDS && !known.iter().any(|(k, _)| k == kind) {
            "other"
        } else {
            kind
        };
        let id = match known.iter().find(|(k, _)| k == kind) {
            Some((_, id)) => Some(*id),
            None => match define(COUNTER, &format!("{}stream_errors.{kind}", self.prefix)) {
                Ok(id) => {
                    known.push((kind.to_string(), id));
                    Some(id)
                }
                Err(_) => None,
            },
        };
        if let Some(id) = id {
            add(id, 1);
        }
    }
}

impl GlobalStats {
    pub fn define() -> Result<Self, String> {
        Ok(GlobalStats {
            all_down: define(COUNTER, "llm_failover.all_down")?,
            rejected: define(COUNTER, "llm_failover.rejected")?,
            state_resets: define(COUNTER, "llm_failover.state_resets")?,
            store_errors: define(COUNTER, "llm_failover.store_errors")?,
            rescued: define(COUNTER, "llm_failover.rescued")?,
            rescue_attempts: define(COUNTER, "llm_failover.rescue_attempts")?,
            rescues_failed: define(COUNTER, "llm_failover.rescues_failed")?,
            first_token_timeouts: define(COUNTER, "llm_failover.first_token_timeouts")?,
            body_too_large: define(COUNTER, "llm_failover.body_too_large")?,
            model_not_served: define(COUNTER, "llm_failover.model_not_served")?,
        })
    }
}

pub fn add(id: u32, n: u64) {
    if n > 0 {
        host::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
    }
}

pub fn set(id: u32, value: u64) {
    host::record_metric(id, value);
}
