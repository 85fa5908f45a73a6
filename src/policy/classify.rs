//! What a finished attempt says about its vendor: success, slow, failure and why, rate limited, neutral.
//!
//! Inputs are what the filter saw of the answer: its status, Envoy's
//! response flags (Envoy's own verdict on connect failures, resets and
//! timeouts), how a streamed answer ended, the rate-limit headers of a 429,
//! and its timing. The order of the rules is the taxonomy table in the
//! README:
//!
//! 1. Envoy says the upstream failed (connect failure, reset, timeout, ...):
//!    failure, whatever the status.
//! 2. An error inside a 200 stream: failure (even if the client then left).
//! 3. The client went away first: neutral.
//! 4. A stream cut before its end marker: failure.
//! 5. 429: rate limited (skipped until its reset; not a failure).
//! 6. A status in `failure_statuses`: failure. Any other 4xx or 5xx is the
//!    client's doing (bad request, unknown model, too large, context length
//!    exceeded, content policy): neutral.
//! 7. Otherwise it worked; slow if it broke a slowness limit.

use crate::policy::config::{SlowLimits, StatusSet};
use crate::policy::health::Verdict;
use crate::policy::sse::Ending;
use std::fmt;

/// Envoy's response flag bits (`response.flags`, the access log's
/// `%RESPONSE_FLAGS%`). Only those that judge the upstream are named.
pub mod flags {
    /// UH: no healthy host in the cluster.
    pub const NO_HEALTHY_UPSTREAM: u64 = 0x2;
    /// UT: the route timeout fired.
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 0x4;
    /// LR: Envoy reset the stream itself.
    pub const LOCAL_RESET: u64 = 0x8;
    /// UR: the upstream reset the stream.
    pub const UPSTREAM_REMOTE_RESET: u64 = 0x10;
    /// UF: connecting to the upstream failed (refused, connect timeout).
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 0x20;
    /// UC: the upstream closed the connection.
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 0x40;
    /// UO: Envoy's circuit breaker for the cluster is full.
    pub const UPSTREAM_OVERFLOW: u64 = 0x80;
    /// DC: the client closed its connection.
    pub const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 0x4000;
    /// SI: no bytes in either direction for the stream idle timeout.
    pub const STREAM_IDLE_TIMEOUT: u64 = 0x10000;
    /// UMSDR: the upstream stream hit its max duration.
    pub const UPSTREAM_MAX_STREAM_DURATION: u64 = 0x80000;
    /// UPE: the upstream broke the HTTP protocol.
    pub const UPSTREAM_PROTOCOL_ERROR: u64 = 0x80_0000;
    /// NC: the routing header named a cluster Envoy does not have.
    pub const NO_CLUSTER_FOUND: u64 = 0x100_0000;
    /// DF: the upstream's DNS name did not resolve.
    pub const DNS_RESOLUTION_FAILED: u64 = 0x400_0000;
    /// DR: the client reset the stream.
    pub const DOWNSTREAM_REMOTE_RESET: u64 = 0x1000_0000;
}

/// Whether Envoy's response flags say the vendor gave no proper answer, so
/// the answer the client would get is Envoy's own (plain text) reply.
pub fn envoy_answered(flag_bits: u64) -> bool {
    use flags::*;
    flag_bits
        & (UPSTREAM_CONNECTION_FAILURE
            | DNS_RESOLUTION_FAILED
            | STREAM_IDLE_TIMEOUT
            | UPSTREAM_REQUEST_TIMEOUT
            | UPSTREAM_MAX_STREAM_DURATION
            | UPSTREAM_REMOTE_RESET
            | UPSTREAM_CONNECTION_TERMINATION
            | UPSTREAM_PROTOCOL_ERROR
            | NO_HEALTHY_UPSTREAM
            | UPSTREAM_OVERFLOW
            | NO_CLUSTER_FOUND
            | LOCAL_RESET)
        != 0
}

/// Why a request counted as a vendor failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A status from `failure_statuses` other than the ones below.
    Status(u16),
    /// 401 or 403: the vendor refused the key.
    Auth(u16),
    ConnectFailure,
    Reset,
    /// No answer in time: Envoy's route timeout, or the vendor's 408.
    Timeout,
    /// The answer started, then went silent past Envoy's idle timeout.
    Stalled,
    /// The vendor reported an error inside a 200 stream.
    StreamError,
    /// A stream ended before its end marker.
    Truncated,
    /// Envoy's own circuit breaker for the vendor's cluster is full.
    Overflow,
    NoHealthyHost,
    /// The vendor's cluster is not defined in Envoy.
    NoCluster,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::Status(0),
        Reason::Auth(0),
        Reason::ConnectFailure,
        Reason::Reset,
        Reason::Timeout,
        Reason::Stalled,
        Reason::StreamError,
        Reason::Truncated,
        Reason::Overflow,
        Reason::NoHealthyHost,
        Reason::NoCluster,
    ];

    /// Stable short name for logs and stats.
    pub fn name(&self) -> &'static str {
        match self {
            Reason::Status(_) => "status",
            Reason::Auth(_) => "auth",
            Reason::ConnectFailure => "connect_failure",
            Reason::Reset => "reset",
            Reason::Timeout => "timeout",
            Reason::Stalled => "stalled",
            Reason::StreamError => "stream_error",
            Reason::Truncated => "truncated",
            Reason::Overflow => "overflow",
            Reason::NoHealthyHost => "no_healthy_host",
            Reason::NoCluster => "no_cluster",
        }
    }

    /// Position in `ALL`, for per-reason stats.
    pub fn index(&self) -> usize {
        Reason::ALL.iter().position(|r| r.name() == self.name()).unwrap_or(0)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Status(s) | Reason::Auth(s) => write!(f, "{} {s}", self.name()),
            other => f.write_str(other.name()),
        }
    }
}

/// Why a request that worked counted as slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slowness {
    FirstByte,
    Stall,
}

impl Slowness {
    pub fn name(&self) -> &'static str {
        match self {
            Slowness::FirstByte => "slow_first_byte",
            Slowness::Stall => "stalled_stream",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Slow(Slowness),
    Failure(Reason),
    /// 429: skip the vendor for this long (`None`: it did not say).
    RateLimited(Option<u64>),
    /// Says nothing about the vendor: a client error (the status), or the
    /// client went away (`None`).
    Neutral(Option<u16>),
}

impl Outcome {
    pub fn verdict(&self) -> Verdict {
        match self {
            Outcome::Success => Verdict::Success,
            Outcome::Slow(_) => Verdict::Slow,
            Outcome::Failure(_) => Verdict::Failure,
            Outcome::RateLimited(ms) => Verdict::RateLimited { retry_after_ms: *ms },
            Outcome::Neutral(_) => Verdict::Neutral,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Success => f.write_str("success"),
            Outcome::Slow(s) => write!(f, "slow ({})", s.name()),
            Outcome::Failure(r) => write!(f, "failure ({r})"),
            Outcome::RateLimited(Some(ms)) => write!(f, "rate limited for {ms} ms"),
            Outcome::RateLimited(None) => f.write_str("rate limited (no reset given)"),
            Outcome::Neutral(Some(s)) => write!(f, "client error {s}"),
            Outcome::Neutral(None) => f.write_str("client went away"),
        }
    }
}

/// What the filter saw of one finished request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub status: Option<u16>,
    pub flags: u64,
    /// How a scanned stream ended.
    pub stream: Option<Ending>,
    /// For a 429: the wait its headers asked for.
    pub retry_after_ms: Option<u64>,
    /// From the request to the first byte of the answer's body.
    pub first_byte_ms: Option<u64>,
    /// The longest silence between two chunks of a streamed answer.
    pub max_gap_ms: Option<u64>,
    /// The client never finished sending its request.
    pub client_unfinished: bool,
}

/// Judges a finished request.
pub fn classify(seen: &Observed, failure_statuses: &StatusSet, slow: &SlowLimits) -> Outcome {
    use flags::*;
    let has = |bits: u64| seen.flags & bits != 0;
    if has(UPSTREAM_CONNECTION_FAILURE | DNS_RESOLUTION_FAILED) {
        return Outcome::Failure(Reason::ConnectFailure);
    }
    // A client that never finished sending its request ran into Envoy's
    // timeouts itself: no vendor's doing.
    if seen.client_unfinished && (has(STREAM_IDLE_TIMEOUT | UPSTREAM_REQUEST_TIMEOUT) || seen.status == Some(408)) {
        return Outcome::Neutral(None);
    }
    if has(STREAM_IDLE_TIMEOUT) {
        // Silent before any answer is a timeout; silent mid-answer a stall.
        return Outcome::Failure(if seen.status.is_some() {
            Reason::Stalled
        } else {
            Reason::Timeout
        });
    }
    if has(UPSTREAM_REQUEST_TIMEOUT | UPSTREAM_MAX_STREAM_DURATION) {
        return Outcome::Failure(Reason::Timeout);
    }
    if has(UPSTREAM_REMOTE_RESET | UPSTREAM_CONNECTION_TERMINATION | UPSTREAM_PROTOCOL_ERROR) {
        return Outcome::Failure(Reason::Reset);
    }
    if has(NO_HEALTHY_UPSTREAM) {
        return Outcome::Failure(Reason::NoHealthyHost);
    }
    if has(UPSTREAM_OVERFLOW) {
        return Outcome::Failure(Reason::Overflow);
    }
    if has(NO_CLUSTER_FOUND) {
        return Outcome::Failure(Reason::NoCluster);
    }
    // An error the vendor sent stands even if the client, having read it,
    // hung up before the stream's end.
    if let Some(Ending::Error(_)) = &seen.stream {
        return Outcome::Failure(Reason::StreamError);
    }
    if has(DOWNSTREAM_CONNECTION_TERMINATION | DOWNSTREAM_REMOTE_RESET) {
        return Outcome::Neutral(None);
    }
    if has(LOCAL_RESET) {
        return Outcome::Failure(Reason::Reset);
    }
    if let Some(Ending::Truncated) = &seen.stream {
        return Outcome::Failure(Reason::Truncated);
    }
    let Some(status) = seen.status else {
        return Outcome::Neutral(None);
    };
    if status == 429 {
        return Outcome::RateLimited(seen.retry_after_ms);
    }
    // A status HTTP does not define is a broken vendor, not a client error.
    if !(100..=599).contains(&status) {
        return Outcome::Failure(Reason::Status(status));
    }
    if failure_statuses.contains(status) {
        return Outcome::Failure(match status {
            401 | 403 => Reason::Auth(status),
            408 => Reason::Timeout,
            s => Reason::Status(s),
        });
    }
    if status >= 400 {
        return Outcome::Neutral(Some(status));
    }
    let over = |value: Option<u64>, limit: Option<u64>| matches!((value, limit), (Some(v), Some(l)) if v > l);
    if over(seen.first_byte_ms, slow.first_byte_ms) {
        return Outcome::Slow(Slowness::FirstByte);
    }
    if over(seen.max_gap_ms, slow.stall_ms) {
        return Outcome::Slow(Slowness::Stall);
    }
    Outcome::Success
}

#[cfg(test)]
mod tests {
    use super::flags::*;
    use super::*;
    use crate::policy::config::DEFAULT_FAILURE_STATUSES;
    use crate::policy::sse::StreamError;

    const LIMITS: SlowLimits = SlowLimits {
        first_byte_ms: Some(1_000),
        stall_ms: Some(500),
        ratio: 1.0,
    };

    fn judge(status: Option<u16>, f: u64) -> Outcome {
        let seen = Observed {
            status,
            flags: f,
            ..Observed::default()
        };
        classify(&seen, &StatusSet::new(&DEFAULT_FAILURE_STATUSES), &LIMITS)
    }

    fn judge_seen(seen: Observed) -> Outcome {
        classify(&seen, &StatusSet::new(&DEFAULT_FAILURE_STATUSES), &LIMITS)
    }

    /// The README's taxonomy table, status by status.
    #[test]
    fn default_status_table() {
        for s in [500, 502, 503, 504, 529] {
            assert_eq!(judge(Some(s), 0), Outcome::Failure(Reason::Status(s)), "{s}");
        }
        assert_eq!(judge(Some(401), 0), Outcome::Failure(Reason::Auth(401)));
        assert_eq!(judge(Some(403), 0), Outcome::Failure(Reason::Auth(403)));
        assert_eq!(judge(Some(408), 0), Outcome::Failure(Reason::Timeout));
        assert_eq!(judge(Some(429), 0), Outcome::RateLimited(None));
        for s in [400, 404, 405, 409, 413, 415, 422, 501, 505] {
            assert_eq!(judge(Some(s), 0), Outcome::Neutral(Some(s)), "{s}");
        }
        for s in [200, 201, 204, 301, 304] {
            assert_eq!(judge(Some(s), 0), Outcome::Success, "{s}");
        }
    }

    #[test]
    fn auth_statuses_can_be_made_neutral() {
        let without_auth = StatusSet::new(&[500, 502, 503, 504, 529]);
        let seen = Observed {
            status: Some(401),
            ..Observed::default()
        };
        assert_eq!(classify(&seen, &without_auth, &LIMITS), Outcome::Neutral(Some(401)));
    }

    #[test]
    fn rate_limit_carries_the_wait() {
        let seen = Observed {
            status: Some(429),
            retry_after_ms: Some(2_000),
            ..Observed::default()
        };
        assert_eq!(judge_seen(seen), Outcome::RateLimited(Some(2_000)));
    }

    #[test]
    fn envoy_local_replies_are_judged_by_their_flag() {
        assert_eq!(
            judge(Some(503), UPSTREAM_CONNECTION_FAILURE),
            Outcome::Failure(Reason::ConnectFailure)
        );
        assert_eq!(
            judge(Some(504), UPSTREAM_REQUEST_TIMEOUT),
            Outcome::Failure(Reason::Timeout)
        );
        assert_eq!(judge(Some(503), UPSTREAM_REMOTE_RESET), Outcome::Failure(Reason::Reset));
        assert_eq!(
            judge(Some(503), UPSTREAM_CONNECTION_TERMINATION),
            Outcome::Failure(Reason::Reset)
        );
        assert_eq!(judge(Some(503), UPSTREAM_OVERFLOW), Outcome::Failure(Reason::Overflow));
        assert_eq!(
            judge(Some(503), NO_HEALTHY_UPSTREAM),
            Outcome::Failure(Reason::NoHealthyHost)
        );
        assert_eq!(judge(Some(503), NO_CLUSTER_FOUND), Outcome::Failure(Reason::NoCluster));
        assert_eq!(judge(None, STREAM_IDLE_TIMEOUT), Outcome::Failure(Reason::Timeout));
        assert_eq!(judge(Some(200), STREAM_IDLE_TIMEOUT), Outcome::Failure(Reason::Stalled));
    }

    #[test]
    fn a_200_cut_off_mid_stream_is_a_failure() {
        assert_eq!(judge(Some(200), UPSTREAM_REMOTE_RESET), Outcome::Failure(Reason::Reset));
        assert_eq!(
            judge(Some(200), UPSTREAM_PROTOCOL_ERROR),
            Outcome::Failure(Reason::Reset)
        );
    }

    #[test]
    fn what_a_stream_said_counts() {
        let stream = |e: Ending| Observed {
            status: Some(200),
            stream: Some(e),
            ..Observed::default()
        };
        let error = Ending::Error(StreamError {
            kind: "overloaded_error".into(),
        });
        assert_eq!(judge_seen(stream(error)), Outcome::Failure(Reason::StreamError));
        assert_eq!(
            judge_seen(stream(Ending::Truncated)),
            Outcome::Failure(Reason::Truncated)
        );
        assert_eq!(judge_seen(stream(Ending::Complete)), Outcome::Success);
        assert_eq!(judge_seen(stream(Ending::Unknown)), Outcome::Success);
    }

    #[test]
    fn slowness_limits_are_exclusive_and_optional() {
        let timed = |first, gap| Observed {
            status: Some(200),
            first_byte_ms: first,
            max_gap_ms: gap,
            ..Observed::default()
        };
        assert_eq!(judge_seen(timed(Some(1_000), Some(500))), Outcome::Success);
        assert_eq!(judge_seen(timed(Some(1_001), None)), Outcome::Slow(Slowness::FirstByte));
        assert_eq!(judge_seen(timed(Some(10), Some(501))), Outcome::Slow(Slowness::Stall));
        let off = SlowLimits {
            first_byte_ms: None,
            stall_ms: None,
            ratio: 1.0,
        };
        let seen = timed(Some(99_999), Some(99_999));
        assert_eq!(classify(&seen, &StatusSet::new(&[500]), &off), Outcome::Success);
    }

    #[test]
    fn the_flag_wins_even_when_the_status_is_not_a_failure_status() {
        let only_500 = StatusSet::new(&[500]);
        let seen = Observed {
            status: Some(503),
            flags: UPSTREAM_CONNECTION_FAILURE,
            ..Observed::default()
        };
        assert_eq!(
            classify(&seen, &only_500, &LIMITS),
            Outcome::Failure(Reason::ConnectFailure)
        );
    }

    #[test]
    fn a_client_that_leaves_says_nothing_about_the_vendor() {
        assert_eq!(
            judge(Some(200), DOWNSTREAM_CONNECTION_TERMINATION),
            Outcome::Neutral(None)
        );
        assert_eq!(judge(None, DOWNSTREAM_REMOTE_RESET), Outcome::Neutral(None));
        assert_eq!(
            judge(None, DOWNSTREAM_CONNECTION_TERMINATION | LOCAL_RESET),
            Outcome::Neutral(None)
        );
        assert_eq!(judge(None, 0), Outcome::Neutral(None));
    }

    #[test]
    fn an_error_in_the_stream_stands_when_the_client_hangs_up_after_it() {
        let seen = Observed {
            status: Some(200),
            flags: DOWNSTREAM_CONNECTION_TERMINATION,
            stream: Some(Ending::Error(StreamError { kind: "x".into() })),
            ..Observed::default()
        };
        assert_eq!(judge_seen(seen), Outcome::Failure(Reason::StreamError));
    }

    #[test]
    fn upstream_failure_outranks_the_client_leaving() {
        assert_eq!(
            judge(Some(200), UPSTREAM_REMOTE_RESET | DOWNSTREAM_CONNECTION_TERMINATION),
            Outcome::Failure(Reason::Reset)
        );
    }

    #[test]
    fn reason_names_are_unique_and_indexed() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
