//! Response classification: what a finished request says about its vendor.
//!
//! Inputs are what Envoy reports when the stream ends: the response status
//! (absent if none was sent) and the stream's response flags, which carry
//! Envoy's own verdict on connect failures, resets and timeouts. Upstream
//! failure flags win over the status, because Envoy's local reply for them
//! (503/504) says less than the flag.

use crate::config::StatusSet;
use crate::health::Verdict;
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

/// Why a request counted as a vendor failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A status from `failure_statuses`.
    Status(u16),
    ConnectFailure,
    Reset,
    Timeout,
    /// Envoy's own circuit breaker for the vendor's cluster is full.
    Overflow,
    NoHealthyHost,
    /// The vendor's cluster is not defined in Envoy.
    NoCluster,
}

impl Reason {
    /// Stable short name for logs and stats.
    pub fn name(&self) -> &'static str {
        match self {
            Reason::Status(_) => "status",
            Reason::ConnectFailure => "connect_failure",
            Reason::Reset => "reset",
            Reason::Timeout => "timeout",
            Reason::Overflow => "overflow",
            Reason::NoHealthyHost => "no_healthy_host",
            Reason::NoCluster => "no_cluster",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Status(s) => write!(f, "status {s}"),
            other => f.write_str(other.name()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(Reason),
    /// Says nothing about the vendor: the client went away first.
    Neutral,
}

impl Outcome {
    pub fn verdict(&self) -> Verdict {
        match self {
            Outcome::Success => Verdict::Success,
            Outcome::Failure(_) => Verdict::Failure,
            Outcome::Neutral => Verdict::Neutral,
        }
    }
}

/// Judges a finished request from its status and Envoy's response flags.
pub fn classify(status: Option<u16>, response_flags: u64, failure_statuses: &StatusSet) -> Outcome {
    use flags::*;
    let has = |bits: u64| response_flags & bits != 0;
    if has(UPSTREAM_CONNECTION_FAILURE | DNS_RESOLUTION_FAILED) {
        return Outcome::Failure(Reason::ConnectFailure);
    }
    if has(UPSTREAM_REQUEST_TIMEOUT | STREAM_IDLE_TIMEOUT | UPSTREAM_MAX_STREAM_DURATION) {
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
    let client_left = has(DOWNSTREAM_CONNECTION_TERMINATION | DOWNSTREAM_REMOTE_RESET);
    if client_left {
        return Outcome::Neutral;
    }
    if has(LOCAL_RESET) {
        return Outcome::Failure(Reason::Reset);
    }
    match status {
        Some(s) if failure_statuses.contains(s) => Outcome::Failure(Reason::Status(s)),
        Some(_) => Outcome::Success,
        None => Outcome::Neutral,
    }
}

#[cfg(test)]
mod tests {
    use super::flags::*;
    use super::*;
    use crate::config::DEFAULT_FAILURE_STATUSES;

    fn judge(status: Option<u16>, f: u64) -> Outcome {
        classify(status, f, &StatusSet::new(&DEFAULT_FAILURE_STATUSES))
    }

    #[test]
    fn default_failure_statuses() {
        for s in [500, 502, 503, 504, 529] {
            assert_eq!(judge(Some(s), 0), Outcome::Failure(Reason::Status(s)));
        }
        for s in [
            200, 201, 204, 301, 400, 401, 403, 404, 413, 422, 429, 501, 505,
        ] {
            assert_eq!(judge(Some(s), 0), Outcome::Success, "{s}");
        }
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
        assert_eq!(
            judge(Some(503), UPSTREAM_REMOTE_RESET),
            Outcome::Failure(Reason::Reset)
        );
        assert_eq!(
            judge(Some(503), UPSTREAM_CONNECTION_TERMINATION),
            Outcome::Failure(Reason::Reset)
        );
        assert_eq!(
            judge(Some(503), UPSTREAM_OVERFLOW),
            Outcome::Failure(Reason::Overflow)
        );
        assert_eq!(
            judge(Some(503), NO_HEALTHY_UPSTREAM),
            Outcome::Failure(Reason::NoHealthyHost)
        );
        assert_eq!(
            judge(Some(503), NO_CLUSTER_FOUND),
            Outcome::Failure(Reason::NoCluster)
        );
        assert_eq!(
            judge(Some(408), STREAM_IDLE_TIMEOUT),
            Outcome::Failure(Reason::Timeout)
        );
    }

    #[test]
    fn a_200_cut_off_mid_stream_is_a_failure() {
        assert_eq!(
            judge(Some(200), UPSTREAM_REMOTE_RESET),
            Outcome::Failure(Reason::Reset)
        );
        assert_eq!(
            judge(Some(200), UPSTREAM_PROTOCOL_ERROR),
            Outcome::Failure(Reason::Reset)
        );
    }

    #[test]
    fn the_flag_wins_even_when_the_status_is_not_a_failure_status() {
        let only_500 = StatusSet::new(&[500]);
        assert_eq!(
            classify(Some(503), UPSTREAM_CONNECTION_FAILURE, &only_500),
            Outcome::Failure(Reason::ConnectFailure)
        );
        assert_eq!(classify(Some(503), 0, &only_500), Outcome::Success);
    }

    #[test]
    fn a_client_that_leaves_says_nothing_about_the_vendor() {
        assert_eq!(
            judge(Some(200), DOWNSTREAM_CONNECTION_TERMINATION),
            Outcome::Neutral
        );
        assert_eq!(judge(None, DOWNSTREAM_REMOTE_RESET), Outcome::Neutral);
        // Envoy resets the upstream itself when the client leaves.
        assert_eq!(
            judge(None, DOWNSTREAM_CONNECTION_TERMINATION | LOCAL_RESET),
            Outcome::Neutral
        );
        assert_eq!(judge(None, 0), Outcome::Neutral);
    }

    #[test]
    fn upstream_failure_outranks_the_client_leaving() {
        assert_eq!(
            judge(
                Some(200),
                UPSTREAM_REMOTE_RESET | DOWNSTREAM_CONNECTION_TERMINATION
            ),
            Outcome::Failure(Reason::Reset)
        );
    }
}
