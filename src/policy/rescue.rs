//! Same-request failover: which failures move a request to the next vendor,
//! which vendors are left to try, and when to stop.
//!
//! The first attempt goes through Envoy's router and streams live. If it
//! fails before any byte reached the client, the glue holds the answer back
//! and sends the request again, adapted, to the next candidate with an HTTP
//! callout, as many times as `rescue.max_attempts` and `rescue.deadline`
//! allow; the client then receives the first answer that is not a failure.

use crate::policy::choice::Cand;
use crate::policy::classify::Outcome;
use crate::policy::config::{Format, Rescue};
use crate::policy::health::Ticket;
use crate::policy::plan::Planned;
use std::num::NonZeroU32;

/// One attempt: which plan entry, and what its outcome must be recorded with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub planned: usize,
    pub unit: usize,
    pub vendor: usize,
    pub ticket: Option<Ticket>,
}

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

/// A request's journey across vendors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flight {
    pub format: Option<Format>,
    pub stream: bool,
    pub plan: Vec<Planned>,
    pub attempts: Vec<Attempt>,
    pub deadline_ms: u64,
    pub max_attempts: NonZeroU32,
}

impl Flight {
    pub fn new(format: Option<Format>, stream: bool, plan: Vec<Planned>, started_ms: u64, rescue: &Rescue) -> Self {
        Flight {
            format,
            stream,
            plan,
            attempts: Vec::new(),
            deadline_ms: started_ms.saturating_add(rescue.deadline_ms),
            max_attempts: rescue.max_attempts,
        }
    }

    pub fn current(&self) -> Option<&Attempt> {
        self.attempts.last()
    }

    pub fn current_plan(&self) -> Option<&Planned> {
        self.plan.get(self.current()?.planned)
    }

    pub fn tried_units(&self) -> Vec<usize> {
        self.attempts.iter().map(|a| a.unit).collect()
    }

    /// Records the attempt about to be made on the plan entry for `unit`.
    pub fn start(&mut self, unit: usize, vendor: usize, ticket: Option<Ticket>) -> Option<&Planned> {
        let planned = self
            .plan
            .iter()
            .position(|p| p.cand.unit == unit && p.cand.vendor == vendor)?;
        self.attempts.push(Attempt {
            planned,
            unit,
            vendor,
            ticket,
        });
        self.plan.get(planned)
    }

    /// The candidates a move may go to: untried ones, and after a context
    /// overflow only those declared with a larger window than the one that
    /// overflowed.
    pub fn next_cands(&self, why: Move) -> Vec<Cand> {
        let tried = self.tried_units();
        let floor = self.current_plan().and_then(|p| p.context_window);
        self.plan
            .iter()
            .filter(|p| !tried.contains(&p.cand.unit))
            .filter(|p| match why {
                Move::Failure => true,
                Move::ContextOverflow => match (p.context_window, floor) {
                    (Some(w), Some(f)) => w > f,
                    (Some(_), None) => true,
                    (None, _) => false,
                },
            })
            .map(|p| p.cand)
            .collect()
    }

    /// Whether another attempt may start at `now_ms` for this reason.
    pub fn may_move(&self, why: Move, now_ms: u64) -> bool {
        (self.attempts.len() as u32) < self.max_attempts.get()
            && now_ms < self.deadline_ms
            && !self.next_cands(why).is_empty()
    }

    /// Milliseconds an attempt started at `now_ms` may take.
    pub fn time_left(&self, now_ms: u64) -> u64 {
        self.deadline_ms.saturating_sub(now_ms)
    }

    /// Vendor indices in the order they were tried.
    pub fn tried_vendors(&self) -> Vec<usize> {
        self.attempts.iter().map(|a| a.vendor).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::classify::Reason;

    fn planned(unit: usize, window: Option<u64>) -> Planned {
        Planned {
            cand: Cand {
                unit,
                vendor: unit,
                level: unit as u32,
                weight: NonZeroU32::MIN,
            },
            model: None,
            path: None,
            context_window: window,
        }
    }

    fn flight(windows: &[Option<u64>]) -> Flight {
        let plan = windows.iter().enumerate().map(|(u, w)| planned(u, *w)).collect();
        let rescue = Rescue {
            max_attempts: NonZeroU32::new(3).unwrap(),
            deadline_ms: 10_000,
            max_body_bytes: 1_000,
            first_token_ms: None,
        };
        Flight::new(Some(Format::OpenAi), false, plan, 1_000, &rescue)
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
        f.start(0, 0, None);
        assert_eq!(
            f.next_cands(Move::Failure).iter().map(|c| c.unit).collect::<Vec<_>>(),
            [1, 2]
        );
        f.start(2, 2, None);
        assert_eq!(
            f.next_cands(Move::Failure).iter().map(|c| c.unit).collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(f.tried_vendors(), [0, 2]);
    }

    #[test]
    fn an_overflow_moves_only_to_a_larger_window() {
        let mut f = flight(&[Some(8_000), Some(4_000), None, Some(128_000)]);
        f.start(0, 0, None);
        let next: Vec<_> = f.next_cands(Move::ContextOverflow).iter().map(|c| c.unit).collect();
        assert_eq!(next, [3]);
        // Nothing larger declared: no move.
        let mut f = flight(&[Some(8_000), None]);
        f.start(0, 0, None);
        assert!(!f.may_move(Move::ContextOverflow, 1_000));
        assert!(f.may_move(Move::Failure, 1_000));
    }

    #[test]
    fn attempts_and_deadline_bound_the_journey() {
        let mut f = flight(&[None, None, None, None]);
        f.start(0, 0, None);
        assert!(f.may_move(Move::Failure, 10_999));
        assert!(!f.may_move(Move::Failure, 11_000), "deadline: 1 s start + 10 s");
        f.start(1, 1, None);
        f.start(2, 2, None);
        assert!(!f.may_move(Move::Failure, 2_000), "three attempts made");
        assert_eq!(f.time_left(4_000), 7_000);
    }
}
