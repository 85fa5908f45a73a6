//! Recording an outcome: its stats; written now, batched or skipped; who must hear of it.
//!
//! A write that matters for routing is announced to the other workers.

use crate::policy::classify::{Outcome, Reason};
use crate::policy::config::WindowSpec;
use crate::policy::health::{Ticket, VendorState, Verdict};

/// A per-vendor counter an outcome adds one to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// `failures` and `failures_by_reason.<reason>`.
    Failure(Reason),
    Slow,
    RateLimited,
    /// A neutral 4xx/5xx: the client's doing.
    ClientError,
}

/// The counter an outcome adds to, besides `requests`.
pub fn count_of(outcome: &Outcome) -> Option<Count> {
    match outcome {
        Outcome::Failure(reason) => Some(Count::Failure(*reason)),
        Outcome::Slow(_) => Some(Count::Slow),
        Outcome::RateLimited(_) => Some(Count::RateLimited),
        Outcome::Neutral(Some(_)) => Some(Count::ClientError),
        Outcome::Success | Outcome::Neutral(None) => None,
    }
}

/// What becomes of a verdict in the unit's shared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    /// Nothing to write: a neutral outcome, or a forced request.
    Skip,
    /// A success while the unit was quiet: counted in this worker's batch
    /// (see `batch`), written later with others.
    Batch { generation: u32 },
    /// Written now, under this ticket.
    Write(Ticket),
}

/// The ticket a 429 is recorded under when its request held none (it was
/// forced): a rate limit is news about the vendor whenever it was routed.
const ANY_GENERATION: Ticket = Ticket {
    generation: u32::MAX,
    probe: false,
    quiet: false,
};

pub fn recording(ticket: Option<Ticket>, verdict: Verdict) -> Recording {
    let rate_limited = matches!(verdict, Verdict::RateLimited { .. });
    let Some(ticket) = ticket.or(rate_limited.then_some(ANY_GENERATION)) else {
        return Recording::Skip;
    };
    if ticket.probe {
        return Recording::Write(ticket);
    }
    match verdict {
        Verdict::Neutral => Recording::Skip,
        Verdict::Success if ticket.quiet => Recording::Batch {
            generation: ticket.generation,
        },
        _ => Recording::Write(ticket),
    }
}

/// The window bucket a batched success lands in, placed by the worker's
/// latest clock reading.
pub fn bucket_of(clock_ms: u64, window: WindowSpec) -> u64 {
    clock_ms / window.bucket_ms
}

/// What of a unit's state, before a write, decides whether the write
/// matters to other workers' copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Before {
    pub quiet: bool,
    pub cooldown_until_ms: u64,
}

impl Before {
    pub fn of(state: &VendorState, now_ms: u64) -> Self {
        Before {
            quiet: state.is_quiet(now_ms),
            cooldown_until_ms: state.cooldown_until_ms,
        }
    }
}

/// Whether a write must be announced to every other worker (which then
/// drops its copy of the unit): a phase change, an unusable blob replaced,
/// the unit's first failure (no longer quiet), or a new or longer rate limit.
pub fn announce(before: Before, after: &VendorState, now_ms: u64, phase_changed: bool, reset: bool) -> bool {
    phase_changed
        || reset
        || (before.quiet && !after.is_quiet(now_ms))
        || after.cooldown_until_ms > before.cooldown_until_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::classify::Slowness;
    use crate::policy::health::Phase;

    const SPEC: WindowSpec = WindowSpec::DEFAULT;

    fn ticket(quiet: bool, probe: bool) -> Option<Ticket> {
        Some(Ticket {
            generation: 3,
            probe,
            quiet,
        })
    }

    #[test]
    fn quiet_successes_are_batched_everything_else_is_written() {
        assert_eq!(
            recording(ticket(true, false), Verdict::Success),
            Recording::Batch { generation: 3 }
        );
        assert!(matches!(
            recording(ticket(false, false), Verdict::Success),
            Recording::Write(_)
        ));
        assert!(matches!(
            recording(ticket(true, false), Verdict::Failure),
            Recording::Write(_)
        ));
        assert!(matches!(
            recording(ticket(true, false), Verdict::Slow),
            Recording::Write(_)
        ));
        // A probe is always written: its slot must be settled.
        assert!(matches!(
            recording(ticket(true, true), Verdict::Success),
            Recording::Write(_)
        ));
        assert!(matches!(
            recording(ticket(false, true), Verdict::Neutral),
            Recording::Write(_)
        ));
        assert_eq!(recording(ticket(false, false), Verdict::Neutral), Recording::Skip);
    }

    #[test]
    fn a_forced_request_records_only_a_rate_limit() {
        assert_eq!(recording(None, Verdict::Failure), Recording::Skip);
        assert_eq!(recording(None, Verdict::Success), Recording::Skip);
        let r = recording(None, Verdict::RateLimited { retry_after_ms: None });
        assert_eq!(r, Recording::Write(ANY_GENERATION));
    }

    #[test]
    fn outcomes_map_to_their_counters() {
        assert_eq!(
            count_of(&Outcome::Failure(Reason::Reset)),
            Some(Count::Failure(Reason::Reset))
        );
        assert_eq!(count_of(&Outcome::Slow(Slowness::Stall)), Some(Count::Slow));
        assert_eq!(count_of(&Outcome::RateLimited(Some(5))), Some(Count::RateLimited));
        assert_eq!(count_of(&Outcome::Neutral(Some(404))), Some(Count::ClientError));
        assert_eq!(count_of(&Outcome::Neutral(None)), None);
        assert_eq!(count_of(&Outcome::Success), None);
    }

    #[test]
    fn what_other_workers_must_hear() {
        let quiet = VendorState::new(SPEC);
        let before = Before::of(&quiet, 0);
        assert!(!announce(before, &quiet, 0, false, false), "nothing changed");
        assert!(announce(before, &quiet, 0, true, false), "a phase change");
        assert!(announce(before, &quiet, 0, false, true), "a reset");
        let mut failed = quiet.clone();
        failed.consecutive_failures = 1;
        assert!(announce(before, &failed, 0, false, false), "the first failure");
        let second = Before::of(&failed, 0);
        assert!(!announce(second, &failed, 0, false, false), "not the second");
        let mut limited = quiet.clone();
        limited.cooldown_until_ms = 5_000;
        assert!(announce(before, &limited, 0, false, false), "a new rate limit");
        let mut ejected = quiet.clone();
        ejected.phase = Phase::Open { until_ms: 9 };
        assert!(announce(before, &ejected, 0, false, false), "no longer quiet");
        assert_eq!(bucket_of(12_345, SPEC), 12);
    }
}
