//! The tuning sections: window, trip, ejection, recovery, slow, rate_limit, rescue, failure_statuses, all_down, refresh.

use super::reader::{err, kind, Fields};
use super::ConfigError;
use serde_json::Value;
use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};

/// 401 and 403 mean the operator's key for the vendor was refused (an
/// outage for the operator); 408 is the vendor's own timeout; 529 is
/// Anthropic's "overloaded". Other 4xx are the client's doing.
pub const DEFAULT_FAILURE_STATUSES: [u16; 8] = [401, 403, 408, 500, 502, 503, 504, 529];
/// Upper bound that keeps the shared-data blob small.
pub const MAX_BUCKETS: u32 = 120;
/// How often each worker refreshes the state gauges, by default.
pub const DEFAULT_REFRESH_MS: u64 = 1_000;

/// A count for a constant: `n` is never zero where this is called, so the
/// fallback is never taken.
const fn count(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => NonZeroU32::MIN,
    }
}

/// A duration for a constant, as `count`.
const fn millis(ms: u64) -> NonZeroU64 {
    match NonZeroU64::new(ms) {
        Some(ms) => ms,
        None => NonZeroU64::MIN,
    }
}

/// Same-request failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rescue {
    /// Attempts per request, the first included; 1 turns rescue off.
    pub max_attempts: NonZeroU32,
    /// No new attempt starts this long after the request arrived.
    pub deadline_ms: u64,
    /// Request bodies up to this size are buffered for rescue and rewriting;
    /// larger ones pass through untouched, without rescue.
    pub max_body_bytes: u64,
    /// A streamed answer whose first event has not arrived this long after
    /// the request is abandoned and rescued; `None`: no limit.
    pub first_token_ms: Option<u64>,
    /// A rescue callout's answer larger than this is not held in the VM
    /// (whose memory never shrinks): the client gets a 502 instead.
    pub max_answer_bytes: u64,
    /// Requests name their journey for the upstream filter (`role:
    /// "upstream"`) on the vendor clusters, which hands failed answers back
    /// to the router so the next attempt streams live (`policy::relay`).
    pub relay: bool,
    /// A transient failure (500, 502, 503, 504, 529, a reset, an error as
    /// the stream's first event) is retried once on the same vendor after
    /// this back-off, jittered to 50-150 %; `None`: never.
    pub retry_backoff_ms: Option<u64>,
    /// A 429 whose reset comes within this long is waited out and retried
    /// on the same vendor; a longer one moves at once. `None`: never.
    pub rate_limit_wait_ms: Option<u64>,
    /// A buffered request's attempt (answered whole: every attempt a
    /// callout) not complete within this is abandoned and the request
    /// moves on, as for a stall mid-answer.
    pub buffered_timeout_ms: u64,
}

impl Rescue {
    pub const DEFAULT: Rescue = Rescue {
        max_attempts: count(3),
        deadline_ms: 120_000,
        max_body_bytes: 512 * 1024,
        first_token_ms: None,
        max_answer_bytes: 2 * 1024 * 1024,
        relay: false,
        retry_backoff_ms: Some(100),
        rate_limit_wait_ms: Some(1_000),
        buffered_timeout_ms: 60_000,
    };
}

impl Default for Rescue {
    fn default() -> Self {
        Rescue::DEFAULT
    }
}

/// Sliding window shape: `buckets` buckets of `bucket_ms` each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub bucket_ms: NonZeroU64,
    pub buckets: NonZeroU32,
}

impl WindowSpec {
    /// Ten buckets of one second.
    pub const DEFAULT: WindowSpec = WindowSpec {
        bucket_ms: millis(1_000),
        buckets: count(10),
    };

    /// A shape from its parts; `None` if either is zero.
    pub fn new(bucket_ms: u64, buckets: u32) -> Option<WindowSpec> {
        Some(WindowSpec {
            bucket_ms: NonZeroU64::new(bucket_ms)?,
            buckets: NonZeroU32::new(buckets)?,
        })
    }

    pub fn length_ms(&self) -> u64 {
        self.bucket_ms.get().saturating_mul(u64::from(self.buckets.get()))
    }
}

impl Default for WindowSpec {
    fn default() -> Self {
        WindowSpec::DEFAULT
    }
}

/// When a closed vendor is ejected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TripRule {
    /// Outcomes the window must hold before the ratio rule may trip.
    pub min_requests: NonZeroU32,
    /// Failure share (0, 1] that trips the vendor.
    pub failure_ratio: f64,
    /// Failures in a row that trip the vendor; 0 turns the rule off.
    pub consecutive_failures: u32,
    /// Slow share that trips the vendor; `None` when no slowness limit is set.
    pub slow_ratio: Option<f64>,
}

impl TripRule {
    /// `slow_ratio` is set from the `slow` section, not here.
    pub const DEFAULT: TripRule = TripRule {
        min_requests: count(10),
        failure_ratio: 0.5,
        consecutive_failures: 3,
        slow_ratio: None,
    };
}

impl Default for TripRule {
    fn default() -> Self {
        TripRule::DEFAULT
    }
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

impl SlowLimits {
    pub const DEFAULT: SlowLimits = SlowLimits {
        first_byte_ms: Some(60_000),
        stall_ms: Some(30_000),
        ratio: 1.0,
    };
}

impl Default for SlowLimits {
    fn default() -> Self {
        SlowLimits::DEFAULT
    }
}

/// How long a vendor that answered 429 is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// When its headers name no reset time.
    pub default_cooldown_ms: u64,
    /// Cap on whatever the vendor announced.
    pub max_cooldown_ms: u64,
}

impl RateLimit {
    pub const DEFAULT: RateLimit = RateLimit {
        default_cooldown_ms: 5_000,
        max_cooldown_ms: 60_000,
    };
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::DEFAULT
    }
}

/// How long an ejection lasts: `base * 2^level`, capped at `max`; the level
/// drops by one for every `decay_ms` the vendor then stays closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
    pub decay_ms: NonZeroU64,
}

impl Backoff {
    pub const DEFAULT: Backoff = Backoff {
        base_ms: 30_000,
        max_ms: 300_000,
        decay_ms: millis(60_000),
    };
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::DEFAULT
    }
}

/// Half-open probing after an ejection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Requests all workers together may send to a half-open vendor.
    pub probes: NonZeroU32,
    /// Probe successes that close the vendor; at most `probes`.
    pub successes: NonZeroU32,
    /// A probe slot unanswered this long is handed out again (a lost worker).
    pub probe_timeout_ms: u64,
}

impl Recovery {
    /// `successes` is at most `probes`: with fewer probes configured, it
    /// defaults to `probes`.
    pub const DEFAULT: Recovery = Recovery {
        probes: count(3),
        successes: count(3),
        probe_timeout_ms: 120_000,
    };
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery::DEFAULT
    }
}

/// What happens to a request when every vendor is ejected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AllDown {
    /// Send it to the vendor whose ejection ends first.
    #[default]
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

impl Default for StatusSet {
    fn default() -> Self {
        StatusSet::new(&DEFAULT_FAILURE_STATUSES)
    }
}

impl fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.to_vec()).finish()
    }
}

pub(super) fn parse_rescue(root: &Fields) -> Result<Rescue, ConfigError> {
    let d = Rescue::DEFAULT;
    let Some(f) = root.section("rescue")? else {
        return Ok(d);
    };
    let max_attempts = f.count_in("max_attempts", d.max_attempts, 10)?;
    let deadline_ms = f.duration_in("deadline", d.deadline_ms, 100, 3_600_000)?;
    let max_body_bytes = f.integer_in("max_body_bytes", d.max_body_bytes, 0, 64 * 1024 * 1024)?;
    let first_token_ms = f.optional_duration("first_token_timeout", d.first_token_ms, 10, 3_600_000)?;
    let max_answer_bytes = f.integer_in("max_answer_bytes", d.max_answer_bytes, 1024, 64 * 1024 * 1024)?;
    let relay = f.boolean("relay", d.relay)?;
    let retry_backoff_ms = f.optional_duration("retry_backoff", d.retry_backoff_ms, 10, 10_000)?;
    let rate_limit_wait_ms = f.optional_duration("rate_limit_wait", d.rate_limit_wait_ms, 10, 60_000)?;
    let buffered_timeout_ms = f.duration_in("buffered_timeout", d.buffered_timeout_ms, 100, 3_600_000)?;
    f.finish()?;
    Ok(Rescue {
        max_attempts,
        deadline_ms,
        max_body_bytes,
        first_token_ms,
        max_answer_bytes,
        relay,
        retry_backoff_ms,
        rate_limit_wait_ms,
        buffered_timeout_ms,
    })
}

pub(super) fn parse_window(root: &Fields) -> Result<WindowSpec, ConfigError> {
    let d = WindowSpec::DEFAULT;
    let Some(f) = root.section("window")? else {
        return Ok(d);
    };
    let length = f.duration_in("length", d.length_ms(), 100, 3_600_000)?;
    let buckets = f.count_in("buckets", d.buckets, MAX_BUCKETS)?;
    f.finish()?;
    let n = NonZeroU64::from(buckets);
    if length % n != 0 {
        return err(
            "window.buckets",
            format!("{buckets} buckets must divide the window length ({length} ms) evenly"),
        );
    }
    let bucket_ms = length / n;
    match NonZeroU64::new(bucket_ms).filter(|ms| ms.get() >= 10) {
        Some(bucket_ms) => Ok(WindowSpec { bucket_ms, buckets }),
        None => err(
            "window.buckets",
            format!("{buckets} buckets make {bucket_ms} ms buckets; each bucket must be at least 10ms"),
        ),
    }
}

pub(super) fn parse_trip(root: &Fields) -> Result<TripRule, ConfigError> {
    let d = TripRule::DEFAULT;
    let Some(f) = root.section("trip")? else {
        return Ok(d);
    };
    let min_requests = f.count_in("min_requests", d.min_requests, 1_000_000)?;
    let failure_ratio = f.ratio("failure_ratio", d.failure_ratio)?;
    let consecutive_failures = f.u32_in("consecutive_failures", d.consecutive_failures, 0, 1_000_000)?;
    f.finish()?;
    Ok(TripRule {
        min_requests,
        failure_ratio,
        consecutive_failures,
        slow_ratio: d.slow_ratio,
    })
}

pub(super) fn parse_slow(root: &Fields) -> Result<SlowLimits, ConfigError> {
    let d = SlowLimits::DEFAULT;
    let Some(f) = root.section("slow")? else {
        return Ok(d);
    };
    let first_byte_ms = f.optional_duration("first_byte", d.first_byte_ms, 10, 3_600_000)?;
    let stall_ms = f.optional_duration("stall", d.stall_ms, 10, 3_600_000)?;
    let ratio = f.ratio("ratio", d.ratio)?;
    f.finish()?;
    Ok(SlowLimits {
        first_byte_ms,
        stall_ms,
        ratio,
    })
}

pub(super) fn parse_rate_limit(root: &Fields) -> Result<RateLimit, ConfigError> {
    let d = RateLimit::DEFAULT;
    let Some(f) = root.section("rate_limit")? else {
        return Ok(d);
    };
    let default_cooldown_ms = f.duration_in("default_cooldown", d.default_cooldown_ms, 0, 3_600_000)?;
    let max_cooldown_ms = f.duration_in(
        "max_cooldown",
        d.max_cooldown_ms.max(default_cooldown_ms),
        0,
        86_400_000,
    )?;
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

pub(super) fn parse_ejection(root: &Fields) -> Result<Backoff, ConfigError> {
    let d = Backoff::DEFAULT;
    let Some(f) = root.section("ejection")? else {
        return Ok(d);
    };
    let base_ms = f.duration_in("base", d.base_ms, 100, 86_400_000)?;
    let max_ms = f.duration_in("max", d.max_ms.max(base_ms), 100, 86_400_000)?;
    if max_ms < base_ms {
        return err(
            &f.path("max"),
            format!("({max_ms} ms) must not be shorter than `ejection.base` ({base_ms} ms)"),
        );
    }
    let decay_ms = f.positive_duration_in("decay", d.decay_ms, 100, 86_400_000)?;
    f.finish()?;
    Ok(Backoff {
        base_ms,
        max_ms,
        decay_ms,
    })
}

pub(super) fn parse_recovery(root: &Fields) -> Result<Recovery, ConfigError> {
    let d = Recovery::DEFAULT;
    let Some(f) = root.section("recovery")? else {
        return Ok(d);
    };
    let probes = f.count_in("probes", d.probes, 1_000)?;
    let successes = f.count_in("successes", d.successes.min(probes), 1_000)?;
    if successes > probes {
        return err(
            &f.path("successes"),
            format!("({successes}) cannot exceed `recovery.probes` ({probes}): the vendor could never close"),
        );
    }
    let probe_timeout_ms = f.duration_in("probe_timeout", d.probe_timeout_ms, 100, 86_400_000)?;
    f.finish()?;
    Ok(Recovery {
        probes,
        successes,
        probe_timeout_ms,
    })
}

pub(super) fn parse_statuses(root: &Fields) -> Result<StatusSet, ConfigError> {
    let list = match root.get("failure_statuses") {
        None => return Ok(StatusSet::default()),
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

pub(super) fn parse_all_down(root: &Fields) -> Result<AllDown, ConfigError> {
    match root.string("all_down")?.as_deref() {
        None => Ok(AllDown::default()),
        Some("soonest") => Ok(AllDown::Soonest),
        Some("reject") => Ok(AllDown::Reject),
        Some(other) => err("all_down", format!("must be \"soonest\" or \"reject\", got {other:?}")),
    }
}

/// How often each worker refreshes the state gauges, in ms.
pub(super) fn parse_refresh(root: &Fields) -> Result<u64, ConfigError> {
    root.duration_in("refresh_interval", DEFAULT_REFRESH_MS, 100, 60_000)
}
