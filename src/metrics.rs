//! The stats the filter defines in Envoy (glue; wasm only).
//!
//! Envoy stores a wasm metric under `wasmcustom.<name>` and merges metrics
//! of the same name from every worker VM, so counters add up across workers
//! and a gauge holds the last value any worker set.

use crate::host::{self, COUNTER, GAUGE};

/// Metric ids of one vendor: `llm_failover.vendor.<name>.<stat>`.
pub struct VendorStats {
    pub requests: u32,
    pub failures: u32,
    pub ejections: u32,
    pub forced: u32,
    pub state: u32,
    pub window_requests: u32,
    pub window_failures: u32,
}

/// Metric ids of the filter as a whole: `llm_failover.<stat>`.
pub struct GlobalStats {
    pub all_down: u32,
    pub rejected: u32,
    pub state_resets: u32,
    pub store_errors: u32,
}

fn define(kind: u32, name: &str) -> Result<u32, String> {
    host::define_metric(kind, name)
        .map_err(|e| format!("cannot define metric {name}: host status {}", e.0))
}

impl VendorStats {
    pub fn define(vendor: &str) -> Result<Self, String> {
        let p = format!("llm_failover.vendor.{vendor}.");
        Ok(VendorStats {
            requests: define(COUNTER, &format!("{p}requests"))?,
            failures: define(COUNTER, &format!("{p}failures"))?,
            ejections: define(COUNTER, &format!("{p}ejections"))?,
            forced: define(COUNTER, &format!("{p}forced"))?,
            state: define(GAUGE, &format!("{p}state"))?,
            window_requests: define(GAUGE, &format!("{p}window_requests"))?,
            window_failures: define(GAUGE, &format!("{p}window_failures"))?,
        })
    }
}

impl GlobalStats {
    pub fn define() -> Result<Self, String> {
        Ok(GlobalStats {
            all_down: define(COUNTER, "llm_failover.all_down")?,
            rejected: define(COUNTER, "llm_failover.rejected")?,
            state_resets: define(COUNTER, "llm_failover.state_resets")?,
            store_errors: define(COUNTER, "llm_failover.store_errors")?,
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
