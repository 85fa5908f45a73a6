//! The filter configuration: `Config`, `ConfigError`, and parsing the whole document section by section.

mod groups;
mod ids;
mod reader;
mod tuning;
mod vendors;

pub use groups::{Group, Target};
pub use ids::{Id, Table, UnitId, VendorId};
pub use reader::parse_duration;
pub use tuning::{
    AllDown, Backoff, RateLimit, Recovery, Rescue, SlowLimits, StatusSet, TripRule, WindowSpec,
    DEFAULT_FAILURE_STATUSES, DEFAULT_REFRESH_MS, MAX_BUCKETS,
};
pub use vendors::{
    model_hash, Format, Mapping, Paths, Prefill, Secret, Unit, Vendor, DEFAULT_MODEL_UNITS, MAX_MODEL_UNITS,
    MAX_VENDORS,
};

use groups::parse_groups;
use reader::{err, Fields};
use serde_json::Value;
use std::fmt;
use tuning::{
    parse_all_down, parse_ejection, parse_rate_limit, parse_recovery, parse_refresh, parse_rescue, parse_slow,
    parse_statuses, parse_trip, parse_window,
};
use vendors::{parse_vendors, units_of};

pub const DEFAULT_CLUSTER_HEADER: &str = "x-llm-failover-cluster";

/// Where a filter instance sits: in the listener's HTTP filter chain, or on
/// a vendor cluster as an upstream filter that hands failed answers back
/// to the router (see `policy::relay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Downstream,
    /// Takes every setting from the downstream filter of the same VM.
    Upstream,
}

/// A filter JSON as a document, or the refusal naming the root.
fn json_of(bytes: &[u8]) -> Result<Value, ConfigError> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        Err(e) => err("(root)", format!("is not valid JSON: {e}")),
    }
}

impl Role {
    /// The role a filter JSON asks for (`role`, default `downstream`). An
    /// upstream filter takes no other field: its settings are the
    /// downstream filter's.
    pub fn of(bytes: &[u8]) -> Result<Role, ConfigError> {
        let value = json_of(bytes)?;
        let root = Fields::new("", &value)?;
        let role = parse_role(&root)?;
        if role == Role::Upstream {
            let mut others = value.as_object().into_iter().flat_map(|o| o.keys());
            if let Some(other) = others.find(|k| *k != "role" && *k != "failure_statuses") {
                return err(
                    other,
                    "is not taken by an upstream filter (`role: \"upstream\"`), which takes only \
                     `failure_statuses`: the downstream filter tells it the rest with each request",
                );
            }
        }
        Ok(role)
    }

    /// An upstream filter's `failure_statuses` (give it the downstream
    /// filter's, if that one changes them).
    pub fn upstream_statuses(bytes: &[u8]) -> Result<StatusSet, ConfigError> {
        let value = json_of(bytes)?;
        let root = Fields::new("", &value)?;
        let _ = parse_role(&root)?;
        let statuses = parse_statuses(&root)?;
        root.finish()?;
        Ok(statuses)
    }
}

fn parse_role(root: &Fields) -> Result<Role, ConfigError> {
    match root.string("role")?.as_deref() {
        None | Some("downstream") => Ok(Role::Downstream),
        Some("upstream") => Ok(Role::Upstream),
        Some(other) => err("role", format!("must be \"downstream\" or \"upstream\", got {other:?}")),
    }
}
pub const DEFAULT_VENDOR_HEADER: &str = "x-llm-failover-vendor";

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub cluster_header: String,
    /// Response header naming the vendor that served; `None` when disabled.
    pub vendor_header: Option<String>,
    /// In config order; `by_preference` lists them best first.
    pub vendors: Table<VendorId, Vendor>,
    pub by_preference: Vec<VendorId>,
    pub window: WindowSpec,
    pub trip: TripRule,
    pub ejection: Backoff,
    pub recovery: Recovery,
    pub failure_statuses: StatusSet,
    pub slow: SlowLimits,
    pub rate_limit: RateLimit,
    pub all_down: AllDown,
    /// How often each worker refreshes the state gauges from shared data.
    pub refresh_ms: u64,
    pub groups: Vec<Group>,
    /// Every health unit: the vendors' own units first.
    pub units: Table<UnitId, Unit>,
    /// Each pass-through vendor's first model slot unit (its slots follow
    /// it, `model_units` of them).
    pub model_slots: Table<VendorId, Option<UnitId>>,
    pub rescue: Rescue,
    /// The operator's endpoint (status, drain), if configured.
    pub admin: Option<Admin>,
}

/// The operator's endpoint: where, and the bearer token a caller must show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// A path of its own, e.g. `/llm-failover`.
    pub path: String,
    /// Read from the environment variable `token_env`; never from the JSON.
    pub token: Secret,
}

/// The `admin` section: off unless `path` is given; then `token_env` names
/// the environment variable holding the bearer token (at least 16
/// characters, so it cannot be guessed by trying).
fn parse_admin(root: &Fields, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Admin>, ConfigError> {
    let Some(f) = root.section("admin")? else {
        return Ok(None);
    };
    let path = f.string("path")?;
    let token_env = f.string("token_env")?;
    f.finish()?;
    let Some(path) = path else {
        return err(
            "admin.path",
            "is required in an `admin` section (leave the section out to turn it off)",
        );
    };
    let path_ok = path.starts_with('/')
        && path.len() > 1
        && !path.ends_with('/')
        && path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b));
    if !path_ok {
        return err(
            "admin.path",
            format!("must be a path like \"/llm-failover\" (letters, digits, / - _ . ~; no trailing /), got {path:?}"),
        );
    }
    let Some(var) = token_env else {
        return err(
            "admin.token_env",
            "is required: the environment variable holding the bearer token",
        );
    };
    match env(&var) {
        Some(t) if t.len() >= 16 && t.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(Admin {
            path,
            token: Secret::new(t),
        })),
        Some(t) if !t.is_empty() => err(
            "admin.token_env",
            format!("environment variable {var} must hold at least 16 printable characters without spaces"),
        ),
        _ => err(
            "admin.token_env",
            format!("environment variable {var} is not set or empty (give it to the VM with vm_config.environment_variables)"),
        ),
    }
}

/// A configuration problem: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config field `{}`: {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses the filter JSON with no environment (no vendor may name an
    /// `api_key_env`). An empty configuration is refused because there is
    /// no sensible default for the vendor list.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        Config::parse_with_env(bytes, &|_| None)
    }

    /// Parses with `env` standing in for the process environment (where
    /// vendors' API keys are read from).
    pub fn parse_with_env(bytes: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let value = json_of(bytes)?;
        let root = Fields::new("", &value)?;
        if parse_role(&root)? == Role::Upstream {
            return err(
                "role",
                "an upstream filter's configuration is read with `Role::upstream_statuses`",
            );
        }
        let cluster_header = root.header_name("cluster_header", DEFAULT_CLUSTER_HEADER)?;
        let vendor_header = match root.header_name_or_empty("vendor_header", DEFAULT_VENDOR_HEADER)? {
            h if h.is_empty() => None,
            h => Some(h),
        };
        if vendor_header.as_deref() == Some(cluster_header.as_str()) {
            return err("vendor_header", "must differ from `cluster_header`");
        }
        let vendors = parse_vendors(&root, env)?;
        let mut units = units_of(&vendors);
        let groups = parse_groups(&root, &vendors, &mut units)?;
        let rescue = parse_rescue(&root)?;
        let window = parse_window(&root)?;
        let slow = parse_slow(&root)?;
        let mut trip = parse_trip(&root)?;
        trip.slow_ratio = (slow.first_byte_ms.is_some() || slow.stall_ms.is_some()).then_some(slow.ratio);
        let rate_limit = parse_rate_limit(&root)?;
        let ejection = parse_ejection(&root)?;
        let recovery = parse_recovery(&root)?;
        let failure_statuses = parse_statuses(&root)?;
        let all_down = parse_all_down(&root)?;
        let refresh_ms = parse_refresh(&root)?;
        let admin = parse_admin(&root, env)?;
        root.finish()?;

        let vendors_len = vendors.len();
        let mut by_preference: Vec<VendorId> = (0..vendors.len()).map(VendorId).collect();
        // Stable: equal priorities keep their config order.
        by_preference.sort_by_key(|&v| vendors.get(v.0).map_or(u32::MAX, |v| v.priority));
        Ok(Config {
            cluster_header,
            vendor_header,
            vendors: vendors.into(),
            by_preference,
            window,
            trip,
            ejection,
            recovery,
            failure_statuses,
            slow,
            rate_limit,
            all_down,
            refresh_ms,
            groups,
            model_slots: (0..vendors_len)
                .map(|v| {
                    units
                        .iter()
                        .position(|u| u.vendor == VendorId(v) && u.slot == Some(0))
                        .map(UnitId)
                })
                .collect(),
            units: units.into(),
            rescue,
            admin,
        })
    }
}

impl Config {
    /// The unit of one of a vendor's configured models.
    pub fn unit_of(&self, vendor: VendorId, model: &str) -> Option<UnitId> {
        self.units
            .position(|u| u.vendor == vendor && u.slot.is_none() && u.model.as_deref() == Some(model))
    }

    /// The model slot a requested model maps to on a pass-through vendor.
    pub fn model_slot(&self, vendor: VendorId, model: &str) -> Option<UnitId> {
        let first = (*self.model_slots.get(vendor)?)?;
        let slots = u64::from(self.vendors.get(vendor)?.model_units);
        let slot = model_hash(model).checked_rem(slots)?;
        Some(UnitId(first.0 + slot as usize))
    }
}

#[cfg(test)]
mod tests;
