//! Filter configuration: the JSON Envoy passes as `configuration`, checked
//! field by field into a `Config` that cannot hold an invalid value.
//!
//! The JSON is walked by hand rather than derived with serde so that every
//! error names the full field path (`trip.failure_ratio`) and the bad value.

use serde_json::{Map, Value};
use std::fmt;

pub const DEFAULT_CLUSTER_HEADER: &str = "x-llm-failover-cluster";
pub const DEFAULT_VENDOR_HEADER: &str = "x-llm-failover-vendor";
/// 401 and 403 mean the operator's key for the vendor was refused (an
/// outage for the operator); 408 is the vendor's own timeout; 529 is
/// Anthropic's "overloaded". Other 4xx are the client's doing.
pub const DEFAULT_FAILURE_STATUSES: [u16; 8] = [401, 403, 408, 500, 502, 503, 504, 529];
/// Upper bounds that keep the shared-data blob and the per-request work small.
pub const MAX_VENDORS: usize = 64;
pub const MAX_BUCKETS: u32 = 120;

/// One LLM vendor: where its traffic goes and how it ranks.
#[derive(Debug, Clone, PartialEq)]
pub struct Vendor {
    pub name: String,
    /// Envoy cluster written into the routing header.
    pub cluster: String,
    /// Lower is preferred.
    pub priority: u32,
    /// Share of traffic among healthy vendors of the same priority.
    pub weight: u32,
    /// `:authority` to send (the vendor's API host); `None`: unchanged.
    pub host: Option<String>,
    /// The vendor's API key, read from the environment variable the
    /// operator named (`api_key_env`); never from the filter JSON.
    pub api_key: Option<Secret>,
    /// Which client API formats the vendor serves, and at which path.
    pub paths: Paths,
    /// Requested model → the vendor's model; `None`: any model, unchanged.
    /// A `"*"` entry maps every model not listed.
    pub models: Option<Vec<(String, String)>>,
}

/// The client API formats the filter understands, told apart by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// OpenAI chat completions (and every OpenAI-compatible API).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::OpenAi, Format::Anthropic];

    pub fn key(self) -> &'static str {
        match self {
            Format::OpenAi => "openai",
            Format::Anthropic => "anthropic",
        }
    }

    /// The format a request path speaks, if any.
    pub fn of_path(path: &[u8]) -> Option<Format> {
        let path = path.split(|&b| b == b'?').next().unwrap_or_default();
        if path.ends_with(b"/chat/completions") {
            Some(Format::OpenAi)
        } else if path.ends_with(b"/messages") {
            Some(Format::Anthropic)
        } else {
            None
        }
    }
}

/// Where a vendor serves each client format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paths {
    /// Every format, at the path the client used.
    Unchanged,
    /// Only the listed formats, each at its path.
    Only(Vec<(Format, String)>),
}

impl Paths {
    /// `Some(None)`: served at the client's path; `Some(Some(p))`: at `p`;
    /// `None`: not served.
    pub fn for_format(&self, format: Format) -> Option<Option<&str>> {
        match self {
            Paths::Unchanged => Some(None),
            Paths::Only(list) => list.iter().find(|(f, _)| *f == format).map(|(_, p)| Some(p.as_str())),
        }
    }
}

/// A value that never shows in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A unit of health: a vendor as a whole (`model: None`, for models it
/// passes through unchanged) or one of its configured models. Units
/// `0..vendors.len()` are the vendors' pass-through units, in config order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub vendor: usize,
    pub model: Option<String>,
}

/// One way to serve a request in a route group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub vendor: usize,
    /// The model to ask the vendor for; `None`: the requested one.
    pub model: Option<String>,
    /// Tokens the model accepts; a request that overflows a smaller window
    /// is rescued by a target with a larger one.
    pub context_window: Option<u64>,
    pub unit: usize,
}

/// Requested models that share an ordered list of targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub models: Vec<String>,
    pub targets: Vec<Target>,
}

/// Same-request failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rescue {
    /// Attempts per request, the first included; 1 turns rescue off.
    pub max_attempts: u32,
    /// No new attempt starts this long after the request arrived.
    pub deadline_ms: u64,
    /// Request bodies up to this size are buffered for rescue and rewriting;
    /// larger ones pass through untouched, without rescue.
    pub max_body_bytes: u64,
    /// A streamed answer whose first event has not arrived this long after
    /// the request is abandoned and rescued; `None`: no limit.
    pub first_token_ms: Option<u64>,
}

/// Sliding window shape: `buckets` buckets of `bucket_ms` each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub bucket_ms: u64,
    pub buckets: u32,
}

impl WindowSpec {
    pub fn length_ms(&self) -> u64 {
        self.bucket_ms * u64::from(self.buckets)
    }
}

/// When a closed vendor is ejected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TripRule {
    /// Outcomes the window must hold before the ratio rule may trip.
    pub min_requests: u32,
    /// Failure share (0, 1] that trips the vendor.
    pub failure_ratio: f64,
    /// Failures in a row that trip the vendor; 0 turns the rule off.
    pub consecutive_failures: u32,
    /// Slow share that trips the vendor; `None` when no slowness limit is set.
    pub slow_ratio: Option<f64>,
}

/// When an answer that worked counts as slow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowLimits {
    /// From the request to the first byte of the answer's body.
    pub first_byte_ms: Option<u64>,
    /// The longest silence between two chunks of a streamed answer.
    pub stall_ms: Option<u64>,
    /// Slow share (of the window's outcomes) that trips the vendor.
    pub ratio: f64,
}

/// How long a vendor that answered 429 is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// When its headers name no reset time.
    pub default_cooldown_ms: u64,
    /// Cap on whatever the vendor announced.
    pub max_cooldown_ms: u64,
}

/// How long an ejection lasts: `base * 2^level`, capped at `max`; the level
/// drops by one for every `decay_ms` the vendor then stays closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
    pub decay_ms: u64,
}

/// Half-open probing after an ejection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Requests all workers together may send to a half-open vendor.
    pub probes: u32,
    /// Probe successes that close the vendor.
    pub successes: u32,
    /// A probe slot unanswered this long is handed out again (a lost worker).
    pub probe_timeout_ms: u64,
}

/// What happens to a request when every vendor is ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllDown {
    /// Send it to the vendor whose ejection ends first.
    Soonest,
    /// Answer 503 at once with an OpenAI-style error and `retry-after`.
    Reject,
}

/// Which upstream statuses count as vendor failures.
#[derive(Clone, PartialEq, Eq)]
pub struct StatusSet {
    bits: [u64; 8], // statuses 0..512 as a bitset, 512..600 below
    high: [u64; 2],
}

impl StatusSet {
    pub fn new(statuses: &[u16]) -> Self {
        let mut set = StatusSet {
            bits: [0; 8],
            high: [0; 2],
        };
        for &status in statuses {
            set.insert(status);
        }
        set
    }

    fn insert(&mut self, status: u16) {
        let s = usize::from(status);
        let slot = if s < 512 {
            self.bits.get_mut(s / 64)
        } else {
            self.high.get_mut((s - 512) / 64)
        };
        if let Some(word) = slot {
            *word |= 1 << (s % 64);
        }
    }

    pub fn contains(&self, status: u16) -> bool {
        let s = usize::from(status);
        let word = if s < 512 {
            self.bits.get(s / 64)
        } else {
            self.high.get((s - 512) / 64)
        };
        word.is_some_and(|w| w & (1 << (s % 64)) != 0)
    }

    pub fn to_vec(&self) -> Vec<u16> {
        (100..600).filter(|&s| self.contains(s)).collect()
    }
}

impl fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.to_vec()).finish()
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub cluster_header: String,
    /// Response header naming the vendor that served; `None` when disabled.
    pub vendor_header: Option<String>,
    /// In config order; `by_preference` lists their indices best first.
    pub vendors: Vec<Vendor>,
    pub by_preference: Vec<usize>,
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
    /// Every health unit: the vendors' pass-through units first.
    pub units: Vec<Unit>,
    pub rescue: Rescue,
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

fn err<T>(field: &str, problem: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError {
        field: field.to_string(),
        problem: problem.into(),
    })
}

impl Config {
    /// Parses the filter JSON. An empty configuration is refused because
    /// there is no sensible default for the vendor list.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        Config::parse_with_env(bytes, &|name| std::env::var(name).ok())
    }

    /// Parses with `env` standing in for the process environment (where
    /// vendors' API keys are read from).
    pub fn parse_with_env(bytes: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let value: Value = match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => return err("(root)", format!("is not valid JSON: {e}")),
        };
        let root = Fields::new("", &value)?;
        let cluster_header = root.header_name("cluster_header", DEFAULT_CLUSTER_HEADER)?;
        let vendor_header = match root.header_name_or_empty("vendor_header", DEFAULT_VENDOR_HEADER)? {
            h if h.is_empty() => None,
            h => Some(h),
        };
        if vendor_header.as_deref() == Some(cluster_header.as_str()) {
            return err("vendor_header", "must differ from `cluster_header`");
        }
        let vendors = parse_vendors(&root, env)?;
        let mut units: Vec<Unit> = (0..vendors.len()).map(|vendor| Unit { vendor, model: None }).collect();
        for (vendor, v) in vendors.iter().enumerate() {
            for (_, model) in v.models.iter().flatten() {
                unit_for(&mut units, vendor, Some(model));
            }
        }
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
        let all_down = match root.string("all_down")?.as_deref() {
            None | Some("soonest") => AllDown::Soonest,
            Some("reject") => AllDown::Reject,
            Some(other) => return err("all_down", format!("must be \"soonest\" or \"reject\", got {other:?}")),
        };
        let refresh_ms = root.duration_in("refresh_interval", 1_000, 100, 60_000)?;
        root.finish()?;

        let mut by_preference: Vec<usize> = (0..vendors.len()).collect();
        // Stable: equal priorities keep their config order.
        by_preference.sort_by_key(|&i| vendors.get(i).map_or(u32::MAX, |v| v.priority));
        Ok(Config {
            cluster_header,
            vendor_header,
            vendors,
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
            units,
            rescue,
        })
    }
}

/// The index of the unit (vendor, model), added if new.
fn unit_for(units: &mut Vec<Unit>, vendor: usize, model: Option<&String>) -> usize {
    if let Some(i) = units
        .iter()
        .position(|u| u.vendor == vendor && u.model.as_ref() == model)
    {
        return i;
    }
    units.push(Unit {
        vendor,
        model: model.cloned(),
    });
    units.len() - 1
}

fn model_name(value: &Value, path: &str) -> Result<String, ConfigError> {
    match value.as_str() {
        Some(m) if !m.is_empty() && m.len() <= 256 && !m.chars().any(char::is_control) => Ok(m.to_string()),
        _ => err(
            path,
            format!("must be a model name (1 to 256 characters, no control characters), got {value}"),
        ),
    }
}

fn parse_groups(root: &Fields, vendors: &[Vendor], units: &mut Vec<Unit>) -> Result<Vec<Group>, ConfigError> {
    let list = match root.get("groups") {
        None => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(other) => return err("groups", format!("must be a list, got {}", kind(other))),
    };
    let mut groups: Vec<Group> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let path = format!("groups[{i}]");
        let f = Fields::new(&path, item)?;
        let models = match f.get("models") {
            Some(Value::Array(ms)) if !ms.is_empty() => ms
                .iter()
                .enumerate()
                .map(|(j, m)| model_name(m, &format!("{path}.models[{j}]")))
                .collect::<Result<Vec<_>, _>>()?,
            Some(one @ Value::String(_)) => vec![model_name(one, &f.path("models"))?],
            _ => {
                return err(
                    &f.path("models"),
                    "must list the requested model names the group serves",
                )
            }
        };
        for m in &models {
            if groups.iter().any(|g| g.models.contains(m)) {
                return err(
                    &f.path("models"),
                    format!("{m:?} is already served by an earlier group"),
                );
            }
        }
        let raw_targets = match f.get("targets") {
            Some(Value::Array(ts)) if !ts.is_empty() => ts,
            _ => {
                return err(
                    &f.path("targets"),
                    "must list at least one target ({\"vendor\": ..., \"model\": ...})",
                )
            }
        };
        let mut targets = Vec::with_capacity(raw_targets.len());
        for (j, t) in raw_targets.iter().enumerate() {
            let tpath = format!("{path}.targets[{j}]");
            let tf = Fields::new(&tpath, t)?;
            let Some(vendor_name) = tf.string("vendor")? else {
                return err(&tf.path("vendor"), "is required");
            };
            let Some(vendor) = vendors.iter().position(|v| v.name == vendor_name) else {
                return err(
                    &tf.path("vendor"),
                    format!("{vendor_name:?} is not a configured vendor"),
                );
            };
            let model = match tf.get("model") {
                None => None,
                Some(v) => Some(model_name(v, &tf.path("model"))?),
            };
            let context_window = match tf.get("context_window") {
                None => None,
                Some(v) => match v.as_u64() {
                    Some(n) if n > 0 => Some(n),
                    _ => {
                        return err(
                            &tf.path("context_window"),
                            format!("must be a positive number of tokens, got {v}"),
                        )
                    }
                },
            };
            tf.finish()?;
            let unit = unit_for(units, vendor, model.as_ref());
            targets.push(Target {
                vendor,
                model,
                context_window,
                unit,
            });
        }
        f.finish()?;
        groups.push(Group { models, targets });
    }
    Ok(groups)
}

fn parse_rescue(root: &Fields) -> Result<Rescue, ConfigError> {
    let default = Rescue {
        max_attempts: 3,
        deadline_ms: 120_000,
        max_body_bytes: 512 * 1024,
        first_token_ms: None,
    };
    let Some(f) = root.section("rescue")? else {
        return Ok(default);
    };
    let max_attempts = f.integer_in("max_attempts", 3, 1, 10)? as u32;
    let deadline_ms = f.duration_in("deadline", default.deadline_ms, 100, 3_600_000)?;
    let max_body_bytes = f.integer_in("max_body_bytes", default.max_body_bytes, 0, 64 * 1024 * 1024)?;
    let first_token_ms = f.optional_duration("first_token_timeout", None, 10, 3_600_000)?;
    f.finish()?;
    Ok(Rescue {
        max_attempts,
        deadline_ms,
        max_body_bytes,
        first_token_ms,
    })
}

fn parse_vendors(root: &Fields, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<Vendor>, ConfigError> {
    let list = match root.get("vendors") {
        None => return err("vendors", "is required: list at least one vendor"),
        Some(Value::Array(list)) => list,
        Some(other) => return err("vendors", format!("must be a list, got {}", kind(other))),
    };
    if list.is_empty() {
        return err("vendors", "must list at least one vendor");
    }
    if list.len() > MAX_VENDORS {
        return err(
            "vendors",
            format!("lists {} vendors; at most {MAX_VENDORS} are supported", list.len()),
        );
    }
    let mut vendors: Vec<Vendor> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let path = format!("vendors[{i}]");
        let f = Fields::new(&path, item)?;
        let name = match f.string("name")? {
            Some(n) => n,
            None => return err(&f.path("name"), "is required"),
        };
        if name.is_empty() || name.len() > 64 {
            return err(&f.path("name"), "must be 1 to 64 characters long");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return err(
                &f.path("name"),
                format!("{name:?} may use only a-z, 0-9, '_' and '-' (it names stats and shared-data keys)"),
            );
        }
        if vendors.iter().any(|v| v.name == name) {
            return err(&f.path("name"), format!("{name:?} is used by an earlier vendor"));
        }
        let cluster = f.string("cluster")?.unwrap_or_else(|| name.clone());
        if cluster.is_empty() || cluster.len() > 255 {
            return err(&f.path("cluster"), "must be 1 to 255 characters long");
        }
        if !cluster.bytes().all(|b| b.is_ascii_graphic()) {
            return err(
                &f.path("cluster"),
                format!("{cluster:?} must be printable ASCII without spaces (it is sent as a header value)"),
            );
        }
        let priority = f.integer_in("priority", 0, 0, 1_000)? as u32;
        let weight = f.integer_in("weight", 1, 1, 10_000)? as u32;
        let host = f.string("host")?;
        if let Some(h) = &host {
            if h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b)) {
                return err(
                    &f.path("host"),
                    format!("{h:?} is not a host name (with an optional port)"),
                );
            }
        }
        let api_key = match f.string("api_key_env")? {
            None => None,
            Some(var) => match env(&var) {
                Some(key) if !key.is_empty() => {
                    if !key.bytes().all(|b| b.is_ascii_graphic()) {
                        return err(
                            &f.path("api_key_env"),
                            format!("environment variable {var} holds characters a header cannot carry"),
                        );
                    }
                    Some(Secret(key))
                }
                _ => {
                    return err(
                        &f.path("api_key_env"),
                        format!(
                            "environment variable {var} is not set or empty (give it to the VM with vm_config.environment_variables)"
                        ),
                    )
                }
            },
        };
        let paths = match f.section("paths")? {
            None => Paths::Unchanged,
            Some(pf) => {
                let mut list = Vec::new();
                for format in Format::ALL {
                    if let Some(p) = pf.string(format.key())? {
                        if !p.starts_with('/') || !p.bytes().all(|b| b.is_ascii_graphic()) {
                            return err(
                                &pf.path(format.key()),
                                format!("{p:?} must be a URL path starting with '/'"),
                            );
                        }
                        list.push((format, p));
                    }
                }
                pf.finish()?;
                if list.is_empty() {
                    return err(&f.path("paths"), "must name at least one of \"openai\", \"anthropic\"");
                }
                Paths::Only(list)
            }
        };
        let models = match f.get("models") {
            None => None,
            Some(Value::Object(map)) if !map.is_empty() => {
                let mut list = Vec::with_capacity(map.len());
                for (requested, to) in map {
                    let mpath = format!("{}.{requested}", f.path("models"));
                    model_name(&Value::String(requested.clone()), &mpath)?;
                    list.push((requested.clone(), model_name(to, &mpath)?));
                }
                Some(list)
            }
            Some(other) => {
                return err(
                    &f.path("models"),
                    format!("must map requested model names to the vendor's, got {}", kind(other)),
                )
            }
        };
        f.finish()?;
        vendors.push(Vendor {
            name,
            cluster,
            priority,
            weight,
            host,
            api_key,
            paths,
            models,
        });
    }
    Ok(vendors)
}

fn parse_window(root: &Fields) -> Result<WindowSpec, ConfigError> {
    let Some(f) = root.section("window")? else {
        return Ok(WindowSpec {
            bucket_ms: 1_000,
            buckets: 10,
        });
    };
    let length = f.duration_in("length", 10_000, 100, 3_600_000)?;
    let buckets = f.integer_in("buckets", 10, 1, u64::from(MAX_BUCKETS))?;
    f.finish()?;
    if length % buckets != 0 {
        return err(
            "window.buckets",
            format!("{buckets} buckets must divide the window length ({length} ms) evenly"),
        );
    }
    let bucket_ms = length / buckets;
    if bucket_ms < 10 {
        return err(
            "window.buckets",
            format!("{buckets} buckets make {bucket_ms} ms buckets; each bucket must be at least 10ms"),
        );
    }
    Ok(WindowSpec {
        bucket_ms,
        buckets: buckets as u32,
    })
}

fn parse_trip(root: &Fields) -> Result<TripRule, ConfigError> {
    let default = TripRule {
        min_requests: 10,
        failure_ratio: 0.5,
        consecutive_failures: 5,
        slow_ratio: None,
    };
    let Some(f) = root.section("trip")? else {
        return Ok(default);
    };
    let min_requests = f.integer_in("min_requests", 10, 1, 1_000_000)? as u32;
    let failure_ratio = f.ratio("failure_ratio", default.failure_ratio)?;
    let consecutive_failures = f.integer_in("consecutive_failures", 5, 0, 1_000_000)? as u32;
    f.finish()?;
    Ok(TripRule {
        min_requests,
        failure_ratio,
        consecutive_failures,
        slow_ratio: None,
    })
}

fn parse_slow(root: &Fields) -> Result<SlowLimits, ConfigError> {
    let default = SlowLimits {
        first_byte_ms: Some(60_000),
        stall_ms: Some(30_000),
        ratio: 1.0,
    };
    let Some(f) = root.section("slow")? else {
        return Ok(default);
    };
    let first_byte_ms = f.optional_duration("first_byte", default.first_byte_ms, 10, 3_600_000)?;
    let stall_ms = f.optional_duration("stall", default.stall_ms, 10, 3_600_000)?;
    let ratio = f.ratio("ratio", default.ratio)?;
    f.finish()?;
    Ok(SlowLimits {
        first_byte_ms,
        stall_ms,
        ratio,
    })
}

fn parse_rate_limit(root: &Fields) -> Result<RateLimit, ConfigError> {
    let Some(f) = root.section("rate_limit")? else {
        return Ok(RateLimit {
            default_cooldown_ms: 5_000,
            max_cooldown_ms: 60_000,
        });
    };
    let default_cooldown_ms = f.duration_in("default_cooldown", 5_000, 0, 3_600_000)?;
    let max_cooldown_ms = f.duration_in("max_cooldown", 60_000.max(default_cooldown_ms), 0, 86_400_000)?;
    if max_cooldown_ms < default_cooldown_ms {
        return err(
            &f.path("max_cooldown"),
            format!("({max_cooldown_ms} ms) must not be shorter than `rate_limit.default_cooldown` ({default_cooldown_ms} ms)"),
        );
    }
    f.finish()?;
    Ok(RateLimit {
        default_cooldown_ms,
        max_cooldown_ms,
    })
}

fn parse_ejection(root: &Fields) -> Result<Backoff, ConfigError> {
    let Some(f) = root.section("ejection")? else {
        return Ok(Backoff {
            base_ms: 30_000,
            max_ms: 300_000,
            decay_ms: 60_000,
        });
    };
    let base_ms = f.duration_in("base", 30_000, 100, 86_400_000)?;
    let max_ms = f.duration_in("max", 300_000.max(base_ms), 100, 86_400_000)?;
    if max_ms < base_ms {
        return err(
            &f.path("max"),
            format!("({max_ms} ms) must not be shorter than `ejection.base` ({base_ms} ms)"),
        );
    }
    let decay_ms = f.duration_in("decay", 60_000, 100, 86_400_000)?;
    f.finish()?;
    Ok(Backoff {
        base_ms,
        max_ms,
        decay_ms,
    })
}

fn parse_recovery(root: &Fields) -> Result<Recovery, ConfigError> {
    let Some(f) = root.section("recovery")? else {
        return Ok(Recovery {
            probes: 3,
            successes: 3,
            probe_timeout_ms: 120_000,
        });
    };
    let probes = f.integer_in("probes", 3, 1, 1_000)? as u32;
    let successes = f.integer_in("successes", u64::from(probes.min(3)), 1, 1_000)? as u32;
    if successes > probes {
        return err(
            &f.path("successes"),
            format!("({successes}) cannot exceed `recovery.probes` ({probes}): the vendor could never close"),
        );
    }
    let probe_timeout_ms = f.duration_in("probe_timeout", 120_000, 100, 86_400_000)?;
    f.finish()?;
    Ok(Recovery {
        probes,
        successes,
        probe_timeout_ms,
    })
}

fn parse_statuses(root: &Fields) -> Result<StatusSet, ConfigError> {
    let list = match root.get("failure_statuses") {
        None => return Ok(StatusSet::new(&DEFAULT_FAILURE_STATUSES)),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return err(
                "failure_statuses",
                format!("must be a list of HTTP statuses, got {}", kind(other)),
            )
        }
    };
    let mut statuses = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        match item.as_u64() {
            Some(s) if (100..=599).contains(&s) => statuses.push(s as u16),
            _ => {
                return err(
                    &format!("failure_statuses[{i}]"),
                    format!("must be an HTTP status from 100 to 599, got {item}"),
                )
            }
        }
    }
    Ok(StatusSet::new(&statuses))
}

/// Parses "250ms", "10s", "1.5s", "5m", "1h" into milliseconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let ms = value * scale;
    if !ms.is_finite() || !(0.0..=1e15).contains(&ms) || ms.fract() != 0.0 {
        return None;
    }
    Some(ms as u64)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// One JSON object being read: remembers its path and which keys were used,
/// so unknown keys are reported instead of silently ignored.
struct Fields<'a> {
    prefix: String,
    map: &'a Map<String, Value>,
    known: std::cell::RefCell<Vec<&'static str>>,
}

impl<'a> Fields<'a> {
    fn new(prefix: &str, value: &'a Value) -> Result<Self, ConfigError> {
        match value {
            Value::Object(map) => Ok(Fields {
                prefix: prefix.to_string(),
                map,
                known: std::cell::RefCell::new(Vec::new()),
            }),
            other => err(
                if prefix.is_empty() { "(root)" } else { prefix },
                format!("must be a JSON object, got {}", kind(other)),
            ),
        }
    }

    fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn get(&self, key: &'static str) -> Option<&'a Value> {
        self.known.borrow_mut().push(key);
        self.map.get(key)
    }

    /// Fails on the first key that no accessor asked for.
    fn finish(&self) -> Result<(), ConfigError> {
        let known = self.known.borrow();
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(unknown) => {
                let mut expected: Vec<&str> = known.clone();
                expected.sort_unstable();
                err(
                    &self.path(unknown),
                    format!("is not a known field (expected one of: {})", expected.join(", ")),
                )
            }
            None => Ok(()),
        }
    }

    fn section(&self, key: &'static str) -> Result<Option<Fields<'a>>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => Fields::new(&self.path(key), v).map(Some),
        }
    }

    fn string(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => err(&self.path(key), format!("must be a string, got {}", kind(other))),
        }
    }

    fn integer_in(&self, key: &'static str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(n),
                _ => err(
                    &self.path(key),
                    format!("must be a whole number from {min} to {max}, got {v}"),
                ),
            },
        }
    }

    fn duration_in(&self, key: &'static str, default_ms: u64, min_ms: u64, max_ms: u64) -> Result<u64, ConfigError> {
        let Some(text) = self.string(key)? else {
            return Ok(default_ms);
        };
        match parse_duration(&text) {
            Some(ms) if (min_ms..=max_ms).contains(&ms) => Ok(ms),
            Some(ms) => err(
                &self.path(key),
                format!("{text:?} ({ms} ms) must be from {min_ms} ms to {max_ms} ms"),
            ),
            None => err(
                &self.path(key),
                format!("{text:?} is not a duration; write it like \"250ms\", \"10s\", \"5m\" or \"1h\""),
            ),
        }
    }

    /// A share: greater than 0, at most 1.
    fn ratio(&self, key: &'static str, default: f64) -> Result<f64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(r) if r > 0.0 && r <= 1.0 => Ok(r),
                _ => err(
                    &self.path(key),
                    format!("must be greater than 0 and at most 1, got {n}"),
                ),
            },
            Some(other) => err(
                &self.path(key),
                format!("must be a number between 0 and 1, got {}", kind(other)),
            ),
        }
    }

    /// A duration, or `"off"` / `null` for none.
    fn optional_duration(
        &self,
        key: &'static str,
        default_ms: Option<u64>,
        min_ms: u64,
        max_ms: u64,
    ) -> Result<Option<u64>, ConfigError> {
        match self.map.get(key) {
            Some(Value::Null) => {
                self.get(key);
                Ok(None)
            }
            Some(Value::String(s)) if s == "off" => {
                self.get(key);
                Ok(None)
            }
            None => {
                self.get(key);
                Ok(default_ms)
            }
            Some(_) => self.duration_in(key, 0, min_ms, max_ms).map(Some),
        }
    }

    fn header_name(&self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        let name = self.header_name_or_empty(key, default)?;
        if name.is_empty() {
            return err(&self.path(key), "must not be empty");
        }
        Ok(name)
    }

    fn header_name_or_empty(&self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        let name = self.string(key)?.unwrap_or_else(|| default.to_string());
        let valid = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid || name.len() > 128 {
            return err(
                &self.path(key),
                format!("{name:?} must be a lowercase HTTP header name (a-z, 0-9, '-', '_')"),
            );
        }
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Config, ConfigError> {
        Config::parse(json.as_bytes())
    }

    fn field_of(json: &str) -> String {
        parse(json).expect_err("config should be refused").field
    }

    const ONE: &str = r#"{"vendors":[{"name":"anthropic"}]}"#;

    #[test]
    fn minimal_config_takes_every_default() {
        let c = parse(ONE).unwrap();
        assert_eq!(c.cluster_header, "x-llm-failover-cluster");
        assert_eq!(c.vendor_header.as_deref(), Some("x-llm-failover-vendor"));
        assert_eq!(
            c.vendors,
            vec![Vendor {
                name: "anthropic".into(),
                cluster: "anthropic".into(),
                priority: 0,
                weight: 1,
                host: None,
                api_key: None,
                paths: Paths::Unchanged,
                models: None,
            }]
        );
        assert_eq!(c.units, vec![Unit { vendor: 0, model: None }]);
        assert!(c.groups.is_empty());
        assert_eq!(
            c.rescue,
            Rescue {
                max_attempts: 3,
                deadline_ms: 120_000,
                max_body_bytes: 512 * 1024,
                first_token_ms: None
            }
        );
        assert_eq!(
            c.window,
            WindowSpec {
                bucket_ms: 1_000,
                buckets: 10
            }
        );
        assert_eq!(c.trip.min_requests, 10);
        assert_eq!(c.trip.failure_ratio, 0.5);
        assert_eq!(c.trip.consecutive_failures, 5);
        assert_eq!(
            c.ejection,
            Backoff {
                base_ms: 30_000,
                max_ms: 300_000,
                decay_ms: 60_000
            }
        );
        assert_eq!(
            c.recovery,
            Recovery {
                probes: 3,
                successes: 3,
                probe_timeout_ms: 120_000
            }
        );
        assert_eq!(
            c.failure_statuses.to_vec(),
            vec![401, 403, 408, 500, 502, 503, 504, 529]
        );
        assert_eq!(
            c.slow,
            SlowLimits {
                first_byte_ms: Some(60_000),
                stall_ms: Some(30_000),
                ratio: 1.0
            }
        );
        assert_eq!(c.trip.slow_ratio, Some(1.0));
        assert_eq!(
            c.rate_limit,
            RateLimit {
                default_cooldown_ms: 5_000,
                max_cooldown_ms: 60_000
            }
        );
        assert_eq!(c.all_down, AllDown::Soonest);
        assert_eq!(c.refresh_ms, 1_000);
    }

    #[test]
    fn full_config_is_read() {
        let c = parse(
            r#"{
            "cluster_header": "x-route-to",
            "vendor_header": "",
            "vendors": [
                {"name": "openai", "cluster": "openai_api", "priority": 1, "weight": 3},
                {"name": "anthropic", "cluster": "outbound|443||api.anthropic.com", "priority": 0},
                {"name": "xai", "priority": 1, "weight": 1}
            ],
            "window": {"length": "30s", "buckets": 30},
            "trip": {"min_requests": 4, "failure_ratio": 0.25, "consecutive_failures": 0},
            "ejection": {"base": "2s", "max": "1m", "decay": "10s"},
            "recovery": {"probes": 5, "successes": 2, "probe_timeout": "30s"},
            "failure_statuses": [500, 429],
            "all_down": "reject",
            "refresh_interval": "500ms"
        }"#,
        )
        .unwrap();
        assert_eq!(c.cluster_header, "x-route-to");
        assert_eq!(c.vendor_header, None);
        assert_eq!(c.by_preference, vec![1, 0, 2]);
        assert_eq!(c.vendors[1].cluster, "outbound|443||api.anthropic.com");
        assert_eq!(c.vendors[0].weight, 3);
        assert_eq!(
            c.window,
            WindowSpec {
                bucket_ms: 1_000,
                buckets: 30
            }
        );
        assert_eq!(c.trip.consecutive_failures, 0);
        assert_eq!(
            c.ejection,
            Backoff {
                base_ms: 2_000,
                max_ms: 60_000,
                decay_ms: 10_000
            }
        );
        assert_eq!(
            c.recovery,
            Recovery {
                probes: 5,
                successes: 2,
                probe_timeout_ms: 30_000
            }
        );
        assert!(c.failure_statuses.contains(429));
        assert!(!c.failure_statuses.contains(503));
        assert_eq!(c.all_down, AllDown::Reject);
        assert_eq!(c.refresh_ms, 500);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(250));
        assert_eq!(parse_duration("10s"), Some(10_000));
        assert_eq!(parse_duration("1.5s"), Some(1_500));
        assert_eq!(parse_duration("5m"), Some(300_000));
        assert_eq!(parse_duration("1h"), Some(3_600_000));
        for bad in [
            "", "10", "s", "10 s", "-1s", "1.s", ".5s", "1e3s", "10sec", "0.0001s", "1..2s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn each_kind_of_bad_config_names_its_field() {
        let cases = [
            ("", "(root)"),
            ("[1]", "(root)"),
            ("{}", "vendors"),
            (r#"{"vendors":{}}"#, "vendors"),
            (r#"{"vendors":[]}"#, "vendors"),
            (r#"{"vendors":[7]}"#, "vendors[0]"),
            (r#"{"vendors":[{}]}"#, "vendors[0].name"),
            (r#"{"vendors":[{"name":"Open AI"}]}"#, "vendors[0].name"),
            (r#"{"vendors":[{"name":"a"},{"name":"a"}]}"#, "vendors[1].name"),
            (
                r#"{"vendors":[{"name":"a","cluster":"has space"}]}"#,
                "vendors[0].cluster",
            ),
            (r#"{"vendors":[{"name":"a","cluster":""}]}"#, "vendors[0].cluster"),
            (r#"{"vendors":[{"name":"a","priority":-1}]}"#, "vendors[0].priority"),
            (r#"{"vendors":[{"name":"a","weight":0}]}"#, "vendors[0].weight"),
            (r#"{"vendors":[{"name":"a","weight":"2"}]}"#, "vendors[0].weight"),
            (r#"{"vendors":[{"name":"a","color":"red"}]}"#, "vendors[0].color"),
            (r#"{"vendors":[{"name":"a"}],"colour":1}"#, "colour"),
            (r#"{"vendors":[{"name":"a"}],"cluster_header":""}"#, "cluster_header"),
            (
                r#"{"vendors":[{"name":"a"}],"cluster_header":"X-Upper"}"#,
                "cluster_header",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"vendor_header":"x-llm-failover-cluster"}"#,
                "vendor_header",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"window":{"length":"10"}}"#,
                "window.length",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"window":{"length":"10s","buckets":0}}"#,
                "window.buckets",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"window":{"length":"10s","buckets":3}}"#,
                "window.buckets",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"window":{"length":"100ms","buckets":20}}"#,
                "window.buckets",
            ),
            (r#"{"vendors":[{"name":"a"}],"window":{"size":"10s"}}"#, "window.size"),
            (r#"{"vendors":[{"name":"a"}],"window":5}"#, "window"),
            (
                r#"{"vendors":[{"name":"a"}],"trip":{"failure_ratio":1.5}}"#,
                "trip.failure_ratio",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"trip":{"failure_ratio":0}}"#,
                "trip.failure_ratio",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"trip":{"failure_ratio":"half"}}"#,
                "trip.failure_ratio",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"trip":{"min_requests":0}}"#,
                "trip.min_requests",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"trip":{"consecutive_failures":1.5}}"#,
                "trip.consecutive_failures",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"ejection":{"base":"1m","max":"10s"}}"#,
                "ejection.max",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"ejection":{"base":"0s"}}"#,
                "ejection.base",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"ejection":{"decay":30}}"#,
                "ejection.decay",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"recovery":{"probes":2,"successes":3}}"#,
                "recovery.successes",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"recovery":{"probes":0}}"#,
                "recovery.probes",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"recovery":{"probe_timeout":"soon"}}"#,
                "recovery.probe_timeout",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"failure_statuses":503}"#,
                "failure_statuses",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"failure_statuses":[503,700]}"#,
                "failure_statuses[1]",
            ),
            (r#"{"vendors":[{"name":"a"}],"all_down":"panic"}"#, "all_down"),
            (
                r#"{"vendors":[{"name":"a"}],"refresh_interval":"1ms"}"#,
                "refresh_interval",
            ),
        ];
        for (json, field) in cases {
            assert_eq!(field_of(json), field, "config {json}");
        }
    }

    #[test]
    fn error_text_names_field_and_value() {
        let e = parse(r#"{"vendors":[{"name":"a"}],"trip":{"failure_ratio":1.5}}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config field `trip.failure_ratio`: must be greater than 0 and at most 1, got 1.5"
        );
        let e = parse(r#"{"vendors":[{"name":"a"}],"window":{"size":"10s"}}"#).unwrap_err();
        assert!(e.to_string().contains("`window.size`: is not a known field"), "{e}");
        assert!(e.to_string().contains("length"), "{e}");
    }

    #[test]
    fn vendor_adaptation_groups_and_units() {
        let env = |name: &str| (name == "ANTHROPIC_KEY").then(|| "sk-ant-secret".to_string());
        let c = Config::parse_with_env(
            br#"{
            "vendors": [
                {"name": "anthropic", "host": "api.anthropic.com", "api_key_env": "ANTHROPIC_KEY",
                 "paths": {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"},
                 "models": {"claude-opus": "claude-opus-4-1", "*": "claude-sonnet-4-5"}},
                {"name": "openai", "paths": {"openai": "/openai/v1/chat/completions"}},
                {"name": "xai"}
            ],
            "groups": [
                {"models": ["opus", "claude-opus"], "targets": [
                    {"vendor": "anthropic", "model": "claude-opus-4-1", "context_window": 200000},
                    {"vendor": "openai", "model": "gpt-4.1", "context_window": 1000000},
                    {"vendor": "xai"}
                ]}
            ],
            "rescue": {"max_attempts": 2, "deadline": "30s", "max_body_bytes": 1024, "first_token_timeout": "5s"}
        }"#,
            &env,
        )
        .unwrap();
        let a = &c.vendors[0];
        assert_eq!(a.host.as_deref(), Some("api.anthropic.com"));
        assert_eq!(a.api_key.as_ref().map(Secret::expose), Some("sk-ant-secret"));
        assert_eq!(format!("{:?}", a.api_key), "Some([redacted])", "keys never show");
        assert_eq!(a.paths.for_format(Format::Anthropic), Some(Some("/v1/messages")));
        assert_eq!(c.vendors[1].paths.for_format(Format::Anthropic), None);
        assert_eq!(c.vendors[2].paths.for_format(Format::OpenAi), Some(None));
        // Units: three pass-through, two from anthropic's map, one from the group.
        let units: Vec<(usize, Option<&str>)> = c.units.iter().map(|u| (u.vendor, u.model.as_deref())).collect();
        assert_eq!(
            units,
            vec![
                (0, None),
                (1, None),
                (2, None),
                (0, Some("claude-sonnet-4-5")),
                (0, Some("claude-opus-4-1")),
                (1, Some("gpt-4.1"))
            ]
        );
        let g = &c.groups[0];
        assert_eq!(g.models, vec!["opus", "claude-opus"]);
        assert_eq!(g.targets.iter().map(|t| t.unit).collect::<Vec<_>>(), vec![4, 5, 2]);

        assert_eq!(g.targets[2].model, None);
        assert_eq!(c.rescue.first_token_ms, Some(5_000));
    }

    #[test]
    fn adaptation_errors_name_their_field() {
        let none = |_: &str| None;
        let cases = [
            (
                r#"{"vendors":[{"name":"a","api_key_env":"NOPE"}]}"#,
                "vendors[0].api_key_env",
            ),
            (r#"{"vendors":[{"name":"a","host":"bad host"}]}"#, "vendors[0].host"),
            (r#"{"vendors":[{"name":"a","paths":{}}]}"#, "vendors[0].paths"),
            (
                r#"{"vendors":[{"name":"a","paths":{"openai":"v1/chat"}}]}"#,
                "vendors[0].paths.openai",
            ),
            (
                r#"{"vendors":[{"name":"a","paths":{"gemini":"/x"}}]}"#,
                "vendors[0].paths.gemini",
            ),
            (r#"{"vendors":[{"name":"a","models":{"x":""}}]}"#, "vendors[0].models.x"),
            (r#"{"vendors":[{"name":"a","models":[]}]}"#, "vendors[0].models"),
            (r#"{"vendors":[{"name":"a"}],"groups":{}}"#, "groups"),
            (
                r#"{"vendors":[{"name":"a"}],"groups":[{"targets":[{"vendor":"a"}]}]}"#,
                "groups[0].models",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"groups":[{"models":["m"]}]}"#,
                "groups[0].targets",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"groups":[{"models":["m"],"targets":[{"vendor":"b"}]}]}"#,
                "groups[0].targets[0].vendor",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"groups":[{"models":["m"],"targets":[{"vendor":"a","context_window":0}]}]}"#,
                "groups[0].targets[0].context_window",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"groups":[{"models":["m"],"targets":[{"vendor":"a","weight":2}]}]}"#,
                "groups[0].targets[0].weight",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"groups":[{"models":["m"],"targets":[{"vendor":"a"}]},{"models":["m"],"targets":[{"vendor":"a"}]}]}"#,
                "groups[1].models",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"rescue":{"max_attempts":0}}"#,
                "rescue.max_attempts",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"rescue":{"deadline":"0s"}}"#,
                "rescue.deadline",
            ),
            (
                r#"{"vendors":[{"name":"a"}],"rescue":{"first_token_timeout":"soon"}}"#,
                "rescue.first_token_timeout",
            ),
            (r#"{"vendors":[{"name":"a"}],"rescue":{"retries":1}}"#, "rescue.retries"),
        ];
        for (json, field) in cases {
            let e = Config::parse_with_env(json.as_bytes(), &none).expect_err(json);
            assert_eq!(e.field, field, "config {json}: {e}");
        }
        let e = Config::parse_with_env(br#"{"vendors":[{"name":"a","api_key_env":"K"}]}"#, &none).unwrap_err();
        assert!(e.problem.contains("environment variable K"), "{e}");
    }

    #[test]
    fn slowness_limits_can_be_turned_off() {
        let c = parse(r#"{"vendors":[{"name":"a"}],"slow":{"first_byte":"off","stall":null}}"#).unwrap();
        assert_eq!((c.slow.first_byte_ms, c.slow.stall_ms), (None, None));
        assert_eq!(c.trip.slow_ratio, None, "no limit, no slow trips");
        let c = parse(r#"{"vendors":[{"name":"a"}],"slow":{"first_byte":"2s","stall":"off","ratio":0.5}}"#).unwrap();
        assert_eq!((c.slow.first_byte_ms, c.slow.stall_ms), (Some(2_000), None));
        assert_eq!(c.trip.slow_ratio, Some(0.5));
    }

    #[test]
    fn successes_default_follows_probes() {
        let c = parse(r#"{"vendors":[{"name":"a"}],"recovery":{"probes":1}}"#).unwrap();
        assert_eq!(c.recovery.successes, 1);
    }

    /// Random configurations built from the real field names with values of
    /// every JSON type, plus random byte damage: the parser never panics,
    /// and every refusal names a field. Runs briefly here; `make fuzz`
    /// runs it longer.
    #[test]
    fn property_any_input_is_parsed_or_refused_with_a_field() {
        let rounds: u64 = std::env::var("LLMF_FUZZ_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3_000);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let keys = [
            "cluster_header",
            "vendor_header",
            "vendors",
            "window",
            "trip",
            "ejection",
            "recovery",
            "failure_statuses",
            "all_down",
            "refresh_interval",
            "slow",
            "rate_limit",
            "name",
            "cluster",
            "priority",
            "weight",
            "length",
            "buckets",
            "min_requests",
            "failure_ratio",
            "consecutive_failures",
            "base",
            "max",
            "decay",
            "probes",
            "successes",
            "probe_timeout",
            "first_byte",
            "stall",
            "ratio",
            "default_cooldown",
            "max_cooldown",
            "bogus",
        ];
        let scalars = [
            "0",
            "1",
            "-1",
            "0.5",
            "1.5",
            "1e400",
            "18446744073709551616",
            "true",
            "null",
            "\"\"",
            "\"10s\"",
            "\"250ms\"",
            "\"off\"",
            "\"reject\"",
            "\"soonest\"",
            "\"a\"",
            "\"x-h\"",
            "\"\\u0000\"",
            "[]",
            "{}",
            "[503]",
            "[600]",
        ];
        fn value(depth: u32, next: &mut dyn FnMut() -> u64, keys: &[&str], scalars: &[&str]) -> String {
            match next() % 4 {
                0 if depth < 3 => {
                    let n = next() % 5;
                    let fields: Vec<String> = (0..n)
                        .map(|_| {
                            let k = keys[(next() % keys.len() as u64) as usize];
                            format!("\"{k}\":{}", value(depth + 1, next, keys, scalars))
                        })
                        .collect();
                    format!("{{{}}}", fields.join(","))
                }
                1 if depth < 3 => {
                    let n = next() % 4;
                    let items: Vec<String> = (0..n).map(|_| value(depth + 1, next, keys, scalars)).collect();
                    format!("[{}]", items.join(","))
                }
                _ => scalars[(next() % scalars.len() as u64) as usize].to_string(),
            }
        }
        for _ in 0..rounds {
            let mut doc = value(0, &mut next, &keys, &scalars).into_bytes();
            if next() % 3 == 0 {
                doc = format!(
                    r#"{{"vendors":[{{"name":"a"}}],{}"#,
                    String::from_utf8_lossy(&doc[1.min(doc.len())..])
                )
                .into_bytes();
            }
            if next() % 5 == 0 && !doc.is_empty() {
                let at = (next() % doc.len() as u64) as usize;
                doc[at] = (next() % 256) as u8;
            }
            match Config::parse(&doc) {
                Ok(c) => assert!(!c.vendors.is_empty()),
                Err(e) => {
                    assert!(!e.field.is_empty(), "no field for {:?}", String::from_utf8_lossy(&doc));
                    assert!(!e.problem.is_empty());
                }
            }
        }
    }

    #[test]
    fn too_many_vendors_are_refused() {
        let vendors: Vec<String> = (0..=MAX_VENDORS).map(|i| format!(r#"{{"name":"v{i}"}}"#)).collect();
        let json = format!(r#"{{"vendors":[{}]}}"#, vendors.join(","));
        assert_eq!(field_of(&json), "vendors");
    }
}
