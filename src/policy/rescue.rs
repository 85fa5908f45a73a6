//! Same-request failover: which failures move a request, to which candidates, within which bounds.
//!
//! The first attempt goes through Envoy's router and streams live. If it
//! fails before any byte reached the client, the glue holds the answer back
//! and sends the request again, adapted, to the next candidate with an HTTP
//! callout, as many times as `rescue.max_attempts` and `rescue.deadline`
//! allow; the client then receives the first answer that is not a failure.

use crate::policy::classify::{Outcome, Reason};
use crate::policy::config::{Format, Rescue, UnitId, VendorId};
use crate::policy::plan::{Attempt, Candidate};
use std::num::NonZeroU32;

/// Why an attempt's answer is not the one the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// The vendor failed (or rate-limited): any other candidate may serve.
    Failure,
    /// The request overflowed the model's context window: only a candidate
    /// with a larger window may serve.
    ContextOverflow,
}

/// Whether an outcome moves the request (before anything reached the client).
pub fn moves(outcome: &Outcome) -> Option<Move> {
    match outcome {
        Outcome::Failure(_) | Outcome::RateLimited(_) => Some(Move::Failure),
        Outcome::Success | Outcome::Slow(_) | Outcome::Neutral(_) => None,
    }
}

/// A rescue attempt's failure not yet charged to its vendor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub attempt: Attempt,
    pub outcome: Outcome,
    pub stream_error: Option<String>,
}

/// A request's journey across vendors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flight {
    pub format: Option<Format>,
    pub stream: bool,
    /// The request's candidates, by preference.
    pub plan: Vec<Candidate>,
    pub attempts: Vec<Attempt>,
    pub deadline_ms: u64,
    pub max_attempts: NonZeroU32,
    /// Rescue attempts' failures that could be this request's own doing,
    /// charged only once another vendor served it (see `defers`).
    pub pending: Vec<Pending>,
}

impl Flight {
    pub fn new(format: Option<Format>, stream: bool, plan: Vec<Candidate>, started_ms: u64, rescue: &Rescue) -> Self {
        Flight {
            format,
            stream,
            plan,
            attempts: Vec::new(),
            deadline_ms: started_ms.saturating_add(rescue.deadline_ms),
            max_attempts: rescue.max_attempts,
            pending: Vec::new(),
        }
    }

    pub fn current(&self) -> Option<&Attempt> {
        self.attempts.last()
    }

    /// The candidate the current attempt tries.
    pub fn current_candidate(&self) -> Option<&Candidate> {
        let a = self.current()?;
        self.plan.iter().find(|c| c.unit == a.planned && c.vendor == a.vendor)
    }

    pub fn tried_units(&self) -> Vec<UnitId> {
        self.attempts.iter().map(|a| a.planned).collect()
    }

    /// Records an attempt about to be made on one of the candidates; the
    /// candidate it tries.
    pub fn start(&mut self, attempt: Attempt) -> Option<&Candidate> {
        let at = self
            .plan
            .iter()
            .position(|c| c.unit == attempt.planned && c.vendor == attempt.vendor)?;
        self.attempts.push(attempt);
        self.plan.get(at)
    }

    /// The candidates a move may go to: untried ones, and after a context
    /// overflow only those declared with a larger window than the one that
    /// overflowed.
    pub fn next_candidates(&self, why: Move) -> Vec<Candidate> {
        self.next(why).cloned().collect()
    }

    fn next(&self, why: Move) -> impl Iterator<Item = &Candidate> {
        let floor = self.current_candidate().and_then(|p| p.context_window);
        self.plan
            .iter()
            .filter(|p| !self.attempts.iter().any(|a| a.planned == p.unit))
            .filter(move |p| match why {
                Move::Failure => true,
                Move::ContextOverflow => match (p.context_window, floor) {
                    (Some(w), Some(f)) => w > f,
                    (Some(_), None) => true,
                    (None, _) => false,
                },
            })
    }

    /// Whether another attempt may start at `now_ms` for this reason.
    pub fn may_move(&self, why: Move, now_ms: u64) -> bool {
        (self.attempts.len() as u32) < self.max_attempts.get()
            && now_ms < self.deadline_ms
            && self.next(why).next().is_some()
    }

    /// Milliseconds an attempt started at `now_ms` may take.
    pub fn time_left(&self, now_ms: u64) -> u64 {
        self.deadline_ms.saturating_sub(now_ms)
    }

    /// Whether the current attempt's outcome waits until the journey ends
    /// before it is charged. A request that fails on every vendor it is
    /// tried on is more likely bad than every vendor broken: only its first
    /// attempt's failure counts then, so one request cannot eject every
    /// vendor, while a vendor that fails everything is still ejected once it
    /// takes first attempts. Failures no request can cause (connect
    /// failures, a full circuit breaker, a refused key) count at once, as do
    /// rate limits.
    pub fn defers(&self, outcome: &Outcome) -> bool {
        self.attempts.len() > 1
            && matches!(
                outcome,
                Outcome::Failure(
                    Reason::Status(_)
                        | Reason::Reset
                        | Reason::Timeout
                        | Reason::Stalled
                        | Reason::StreamError
                        | Reason::Truncated
                )
            )
    }

    /// The journey ended: its pending failures, charged as they were if
    /// another vendor `served` the request, neutral if none did.
    pub fn settle(&mut self, served: bool) -> Vec<Pending> {
        let mut pending = std::mem::take(&mut self.pending);
        if !served {
            for p in &mut pending {
                p.outcome = Outcome::Neutral(None);
            }
        }
        pending
    }

    /// Every attempt failed, on at least two vendors.
    pub fn failed_everywhere(&self) -> bool {
        self.attempts
            .iter()
            .any(|a| Some(a.vendor) != self.attempts.first().map(|f| f.vendor))
    }

    /// Whether the current attempt's failure is retried on the same vendor,
    /// and after how many ms: a transient failure after `retry_backoff`
    /// (scaled by `jitter`, any number, to 50-150 %), a 429 whose reset
    /// comes within `rate_limit_wait` once it is over. Never a second time
    /// on one vendor (at most two attempts on a vendor per request), never
    /// past `max_attempts` or the deadline. Whether the vendor may take it
    /// then (not ejected, not rate-limited) is the choice's to say.
    ///
    /// `in_a_row` is the failures the vendor's unit has had in a row, this
    /// one included. A transient failure is retried only when it broke a run
    /// of successes: a second failure in a row says the vendor is not having
    /// a blip, and waiting for it only delays the request (and sends one
    /// more to a vendor that is going down).
    pub fn same_vendor_wait(
        &self,
        outcome: &Outcome,
        rescue: &Rescue,
        now_ms: u64,
        jitter: u64,
        in_a_row: u32,
    ) -> Option<u64> {
        let current = self.current()?;
        let on_vendor = self.attempts.iter().filter(|a| a.vendor == current.vendor).count();
        if on_vendor >= 2 || (self.attempts.len() as u32) >= self.max_attempts.get() {
            return None;
        }
        let wait = match outcome {
            o if transient(o) => {
                if in_a_row > 1 {
                    return None;
                }
                let base = rescue.retry_backoff_ms?;
                base.saturating_mul(500 + jitter % 1001) / 1000
            }
            Outcome::RateLimited(Some(reset_ms)) if *reset_ms <= rescue.rate_limit_wait_ms? => {
                reset_ms.saturating_add(RATE_LIMIT_MARGIN_MS)
            }
            _ => return None,
        };
        (now_ms.saturating_add(wait) < self.deadline_ms).then_some(wait)
    }
}

/// Waited past a 429's reset, so the vendor's cooldown is surely over.
pub const RATE_LIMIT_MARGIN_MS: u64 = 25;

/// Failures worth one more try on the same vendor: an overloaded or
/// briefly broken vendor, not a refused key, a timeout or a dead host.
pub fn transient(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Failure(Reason::Status(500 | 502 | 503 | 504 | 529) | Reason::Reset | Reason::StreamError)
    )
}

impl Flight {
    /// Vendor indices in the order they were tried.
    pub fn tried_vendors(&self) -> Vec<VendorId> {
        self.attempts.iter().map(|a| a.vendor).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::classify::Reason;
    use crate::policy::config::{UnitId, VendorId};

    fn candidate(unit: usize, window: Option<u64>) -> Candidate {
        Candidate {
            unit: UnitId(unit),
            vendor: VendorId(unit),
            level: unit as u32,
            weight: NonZeroU32::MIN,
            model: None,
            path: None,
            context_window: window,
            owner: None,
        }
    }

    fn attempt(unit: usize) -> Attempt {
        Attempt {
            unit: UnitId(unit),
            planned: UnitId(unit),
            vendor: VendorId(unit),
            ticket: None,
            forced: false,
            owner: None,
        }
    }

    fn flight(windows: &[Option<u64>]) -> Flight {
        let plan = windows.iter().enumerate().map(|(u, w)| candidate(u, *w)).collect();
        let rescue = Rescue {
            max_attempts: NonZeroU32::new(3).unwrap(),
            deadline_ms: 10_000,
            max_body_bytes: 1_000,
            first_token_ms: None,
            max_answer_bytes: 1 << 20,
            relay: false,
            retry_backoff_ms: Some(100),
            rate_limit_wait_ms: Some(1_000),
            buffered_timeout_ms: 60_000,
        };
        Flight::new(Some(Format::OpenAi), false, plan, 1_000, &rescue)
    }

    #[test]
    fn a_second_failure_in_a_row_moves_at_once_but_a_short_429_is_still_waited_out() {
        let r = Rescue::DEFAULT;
        let mut f = flight(&[None, None]);
        f.start(attempt(0));
        let s503 = Outcome::Failure(Reason::Status(503));
        assert!(f.same_vendor_wait(&s503, &r, 1_000, 0, 1).is_some(), "a blip");
        assert_eq!(f.same_vendor_wait(&s503, &r, 1_000, 0, 2), None, "a run of failures");
        assert_eq!(
            f.same_vendor_wait(&Outcome::RateLimited(Some(800)), &r, 1_000, 0, 4),
            Some(825),
            "a 429 says when to come back"
        );
    }

    #[test]
    fn a_transient_failure_is_retried_once_on_its_vendor_within_the_bounds() {
        let r = Rescue::DEFAULT;
        let mut f = flight(&[None, None]);
        f.start(attempt(0));
        let s503 = Outcome::Failure(Reason::Status(503));
        let wait = |f: &Flight, o: &Outcome, now: u64, jitter: u64| f.same_vendor_wait(o, &r, now, jitter, 1);
        assert_eq!(wait(&f, &s503, 1_000, 0), Some(50), "jittered down to half");
        assert_eq!(wait(&f, &s503, 1_000, 1_000), Some(150), "and up to half again");
        assert_eq!(wait(&f, &Outcome::Failure(Reason::Reset), 1_000, 500), Some(100));
        for not in [
            Outcome::Failure(Reason::Auth(401)),
            Outcome::Failure(Reason::Timeout),
            Outcome::Failure(Reason::ConnectFailure),
            Outcome::Failure(Reason::Status(501)),
            Outcome::Neutral(Some(400)),
            Outcome::RateLimited(None),
            Outcome::RateLimited(Some(1_001)),
        ] {
            assert_eq!(wait(&f, &not, 1_000, 0), None, "{not:?}");
        }
        assert_eq!(wait(&f, &Outcome::RateLimited(Some(800)), 1_000, 0), Some(825));
        assert_eq!(wait(&f, &s503, 10_990, 1_000), None, "past the deadline");
        f.start(attempt(0));
        assert_eq!(wait(&f, &s503, 1_000, 0), None, "two attempts on a vendor at most");
        let mut f = flight(&[None, None]);
        f.max_attempts = NonZeroU32::MIN;
        f.start(attempt(0));
        assert_eq!(wait(&f, &s503, 1_000, 0), None, "out of attempts");
        let off = Rescue {
            retry_backoff_ms: None,
            rate_limit_wait_ms: None,
            ..Rescue::DEFAULT
        };
        let mut f = flight(&[None, None]);
        f.start(attempt(0));
        assert_eq!(f.same_vendor_wait(&s503, &off, 1_000, 0, 1), None);
        assert_eq!(
            f.same_vendor_wait(&Outcome::RateLimited(Some(10)), &off, 1_000, 0, 1),
            None
        );
        f.start(attempt(0));
        assert!(!f.failed_everywhere(), "one vendor, twice");
        f.start(attempt(1));
        assert!(f.failed_everywhere());
    }

    #[test]
    fn which_outcomes_move_a_request() {
        assert_eq!(moves(&Outcome::Failure(Reason::Status(503))), Some(Move::Failure));
        assert_eq!(moves(&Outcome::Failure(Reason::ConnectFailure)), Some(Move::Failure));
        assert_eq!(moves(&Outcome::RateLimited(Some(2_000))), Some(Move::Failure));
        for o in [
            Outcome::Success,
            Outcome::Slow(crate::policy::classify::Slowness::FirstByte),
            Outcome::Neutral(Some(400)),
            Outcome::Neutral(Some(422)),
            Outcome::Neutral(None),
        ] {
            assert_eq!(moves(&o), None, "{o:?}");
        }
    }

    #[test]
    fn failures_move_to_every_untried_candidate_in_order() {
        let mut f = flight(&[None, None, None]);
        f.start(attempt(0));
        assert_eq!(
            f.next_candidates(Move::Failure)
                .iter()
                .map(|c| c.unit.0)
                .collect::<Vec<_>>(),
            [1, 2]
        );
        f.start(attempt(2));
        assert_eq!(
            f.next_candidates(Move::Failure)
                .iter()
                .map(|c| c.unit.0)
                .collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(f.tried_vendors(), [VendorId(0), VendorId(2)]);
    }

    #[test]
    fn an_overflow_moves_only_to_a_larger_window() {
        let mut f = flight(&[Some(8_000), Some(4_000), None, Some(128_000)]);
        f.start(attempt(0));
        let next: Vec<_> = f
            .next_candidates(Move::ContextOverflow)
            .iter()
            .map(|c| c.unit.0)
            .collect();
        assert_eq!(next, [3]);
        // Nothing larger declared: no move.
        let mut f = flight(&[Some(8_000), None]);
        f.start(attempt(0));
        assert!(!f.may_move(Move::ContextOverflow, 1_000));
        assert!(f.may_move(Move::Failure, 1_000));
    }

    #[test]
    fn a_rescue_failure_the_request_may_have_caused_waits_for_the_journeys_end() {
        let mut f = flight(&[None, None, None]);
        f.start(attempt(0));
        let reset = Outcome::Failure(Reason::Reset);
        assert!(!f.defers(&reset), "the first attempt counts at once");
        f.start(attempt(1));
        assert!(f.defers(&reset));
        assert!(f.defers(&Outcome::Failure(Reason::Status(500))));
        assert!(
            !f.defers(&Outcome::Failure(Reason::ConnectFailure)),
            "no request causes that"
        );
        assert!(!f.defers(&Outcome::RateLimited(None)));
        f.pending.push(Pending {
            attempt: attempt(1),
            outcome: reset,
            stream_error: None,
        });
        let kept = f.clone().settle(true);
        assert_eq!(kept[0].outcome, reset, "another vendor served it: charged");
        let discounted = f.settle(false);
        assert_eq!(
            discounted[0].outcome,
            Outcome::Neutral(None),
            "failed everywhere: not charged"
        );
    }

    #[test]
    fn attempts_and_deadline_bound_the_journey() {
        let mut f = flight(&[None, None, None, None]);
        f.start(attempt(0));
        assert!(f.may_move(Move::Failure, 10_999));
        assert!(!f.may_move(Move::Failure, 11_000), "deadline: 1 s start + 10 s");
        f.start(attempt(1));
        f.start(attempt(2));
        assert!(!f.may_move(Move::Failure, 2_000), "three attempts made");
        assert_eq!(f.time_left(4_000), 7_000);
    }
}
