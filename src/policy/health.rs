//! One unit's health: the closed / open / half-open state machine, trip rule, back-off and probes.
//!
//! `VendorState` is what every worker shares (through `codec` and `store`).
//! Each method here is a pure step `(state, now, outcome) -> state'`, so the
//! store can retry it after a compare-and-swap conflict without side effects.

use crate::policy::config::{Backoff, Config, RateLimit, Recovery, TripRule, WindowSpec};
use crate::policy::window::{Totals, Window};
use std::fmt;

/// Where a vendor stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving traffic; outcomes feed the window.
    Closed,
    /// Ejected until `until_ms`.
    Open { until_ms: u64 },
    /// Ejection over: a bounded number of probes decide.
    HalfOpen {
        /// Probe slots handed out (in flight or succeeded).
        taken: u32,
        successes: u32,
        /// When the last slot was handed out; guards against lost probes.
        last_probe_ms: u64,
    },
}

/// The phase without its data, for stats and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseKind {
    Closed,
    Open,
    HalfOpen,
    /// Closed, but skipped until the reset time its 429 announced.
    RateLimited,
}

impl PhaseKind {
    /// Value of the `state` gauge.
    pub fn gauge(self) -> u64 {
        match self {
            PhaseKind::Closed => 0,
            PhaseKind::Open => 1,
            PhaseKind::HalfOpen => 2,
            PhaseKind::RateLimited => 3,
        }
    }
}

impl fmt::Display for PhaseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PhaseKind::Closed => "closed",
            PhaseKind::Open => "open",
            PhaseKind::HalfOpen => "half-open",
            PhaseKind::RateLimited => "rate-limited",
        })
    }
}

impl Phase {
    pub fn kind(&self) -> PhaseKind {
        match self {
            Phase::Closed => PhaseKind::Closed,
            Phase::Open { .. } => PhaseKind::Open,
            Phase::HalfOpen { .. } => PhaseKind::HalfOpen,
        }
    }
}

/// How a finished request judged its vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// Worked, but too slowly: counts as a success and in the slow ratio.
    Slow,
    Failure,
    /// The vendor answered 429: skip it until it may be used again, without
    /// counting against its health. `None`: it did not say when.
    RateLimited {
        retry_after_ms: Option<u64>,
    },
    /// Says nothing about the vendor (the client went away, a client error).
    Neutral,
}

/// What a request carries from the moment it was routed to the moment its
/// outcome is recorded: outcomes only count against the regime they were
/// routed under, so a late failure cannot re-eject a vendor that recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub generation: u32,
    /// Holds one of the half-open probe slots.
    pub probe: bool,
    /// The vendor was closed with no failure in its window and no run of
    /// failures when the request was routed. A success then changes nothing
    /// that decides a trip, so a worker may batch it (see `Deferred`).
    pub quiet: bool,
}

/// Successes a worker batched instead of writing them one by one: all of
/// one bucket, routed under one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deferred {
    pub generation: u32,
    /// Window bucket index (`time / bucket_ms`) they finished in.
    pub bucket: u64,
    pub successes: u32,
}

/// The tuning that drives transitions, taken from `Config`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    pub window: WindowSpec,
    pub trip: TripRule,
    pub ejection: Backoff,
    pub recovery: Recovery,
    pub rate_limit: RateLimit,
}

impl Rules {
    pub fn from_config(c: &Config) -> Self {
        Rules {
            window: c.window,
            trip: c.trip,
            ejection: c.ejection,
            recovery: c.recovery,
            rate_limit: c.rate_limit,
        }
    }
}

/// The state every worker shares for one vendor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendorState {
    pub phase: Phase,
    /// Bumped on every phase change; see `Ticket`.
    pub generation: u32,
    /// Back-off level: the next ejection lasts `base * 2^level` (capped).
    pub level: u32,
    /// When the vendor last closed, for back-off decay.
    pub closed_at_ms: u64,
    pub consecutive_failures: u32,
    /// Ejections so far (wraps).
    pub ejections: u32,
    /// Rate-limited: skipped until then (0: not rate-limited). Kept apart
    /// from the phase: a 429 neither counts as a failure nor lengthens an
    /// ejection.
    pub cooldown_until_ms: u64,
    /// For a model slot: the requested model it serves now (a hash; 0: none).
    pub owner: u64,
    /// The last write, so an idle model slot can be taken over.
    pub touched_ms: u64,
    pub window: Window,
}

/// A phase change, with the figures that caused it, for the state-change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: PhaseKind,
    pub to: PhaseKind,
    pub totals: Totals,
    pub consecutive_failures: u32,
    /// For a change to open: how long the ejection lasts.
    pub ejected_for_ms: Option<u64>,
    pub level: u32,
    /// Around half-open: probe successes so far, and how many close it.
    pub probes: (u32, u32),
    /// For a rate limit: how long the vendor is skipped.
    pub cooldown_ms: Option<u64>,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {} (", self.from, self.to)?;
        let (done, needed) = self.probes;
        match (self.from, self.to) {
            (PhaseKind::Open, PhaseKind::HalfOpen) => write!(f, "ejection over; {needed} successful probes close it")?,
            (PhaseKind::HalfOpen, PhaseKind::Closed) => write!(f, "{done} of {needed} probes succeeded")?,
            (_, PhaseKind::RateLimited) => write!(
                f,
                "answered 429; skipped for {} ms, its health untouched",
                self.cooldown_ms.unwrap_or(0)
            )?,
            (PhaseKind::HalfOpen, _) => write!(f, "a probe failed after {done} of {needed} successes")?,
            _ => {
                write!(
                    f,
                    "window: {} requests, {} failures",
                    self.totals.requests(),
                    self.totals.failures
                )?;
                if self.totals.slow > 0 {
                    write!(f, ", {} slow", self.totals.slow)?;
                }
                write!(f, "; {} consecutive failures", self.consecutive_failures)?
            }
        }
        if let Some(ms) = self.ejected_for_ms {
            write!(f, "; ejected for {} ms, back-off level {}", ms, self.level)?;
        }
        f.write_str(")")
    }
}

/// What claiming a model slot found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The model held it already.
    Held,
    /// It was free and is the model's now, afresh.
    Taken,
    /// Another model holds it.
    Refused,
}

/// Whether a vendor can take a request right now, judged without writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Closed: route freely.
    Routable(Ticket),
    /// A probe slot may be free: must be claimed with `claim_probe`.
    Probe,
    /// Ejected or probing at full budget; back at `due_ms` at the earliest.
    Unavailable { due_ms: u64 },
}

impl VendorState {
    pub fn new(window: WindowSpec) -> Self {
        VendorState {
            phase: Phase::Closed,
            generation: 0,
            level: 0,
            closed_at_ms: 0,
            consecutive_failures: 0,
            ejections: 0,
            cooldown_until_ms: 0,
            owner: 0,
            touched_ms: 0,
            window: Window::new(window),
        }
    }

    pub fn rate_limited_at(&self, now_ms: u64) -> bool {
        now_ms < self.cooldown_until_ms
    }

    /// The phase a reader should act on at `now_ms`: an ejection that has run
    /// out reads as half-open even before anyone writes that down.
    pub fn effective_kind(&self, now_ms: u64) -> PhaseKind {
        match self.phase {
            Phase::Open { until_ms } if now_ms >= until_ms => PhaseKind::HalfOpen,
            Phase::Closed if self.rate_limited_at(now_ms) => PhaseKind::RateLimited,
            p => p.kind(),
        }
    }

    /// Whether a model slot holds nothing worth keeping, so another model
    /// may take it: closed, not rate-limited, nothing in its window, no run
    /// of failures; or untouched for longer than a window and the longest
    /// ejection (whatever it held has run out).
    pub fn is_free(&self, now_ms: u64, rules: &Rules) -> bool {
        let idle = rules.window.length_ms().max(rules.ejection.max_ms);
        let empty = self.phase == Phase::Closed
            && !self.rate_limited_at(now_ms)
            && self.consecutive_failures == 0
            && self.window.totals(now_ms).requests() == 0;
        empty || self.touched_ms.saturating_add(idle) < now_ms
    }

    /// Whether the model with hash `owner` may use this model slot now.
    pub fn serves(&self, owner: u64, now_ms: u64, rules: &Rules) -> bool {
        self.owner == owner || self.owner == 0 || self.is_free(now_ms, rules)
    }

    /// Makes this model slot `owner`'s: kept as it is if it already is,
    /// started afresh if it was free (a new generation: what the previous
    /// model had in flight no longer counts here).
    pub fn claim_slot(&mut self, owner: u64, now_ms: u64, rules: &Rules) -> Claim {
        if self.owner == owner {
            return Claim::Held;
        }
        if !self.serves(owner, now_ms, rules) {
            return Claim::Refused;
        }
        let generation = self.generation.wrapping_add(1);
        *self = VendorState::new(self.window.spec());
        self.generation = generation;
        self.owner = owner;
        Claim::Taken
    }

    /// Closed, with no failure in the window and no run of failures: see
    /// `Ticket::quiet`.
    pub fn is_quiet(&self, now_ms: u64) -> bool {
        self.phase == Phase::Closed && self.consecutive_failures == 0 && self.window.totals(now_ms).failures == 0
    }

    pub fn availability(&self, now_ms: u64, rules: &Rules) -> Availability {
        if self.rate_limited_at(now_ms) {
            let due_ms = match self.phase {
                Phase::Open { until_ms } => until_ms.max(self.cooldown_until_ms),
                _ => self.cooldown_until_ms,
            };
            return Availability::Unavailable { due_ms };
        }
        match self.phase {
            Phase::Closed => Availability::Routable(Ticket {
                generation: self.generation,
                probe: false,
                quiet: self.is_quiet(now_ms),
            }),
            Phase::Open { until_ms } if now_ms < until_ms => Availability::Unavailable { due_ms: until_ms },
            Phase::Open { .. } => Availability::Probe,
            Phase::HalfOpen {
                taken, last_probe_ms, ..
            } => {
                if taken < rules.recovery.probes.get() || probes_lost(now_ms, last_probe_ms, rules) {
                    Availability::Probe
                } else {
                    Availability::Unavailable {
                        due_ms: last_probe_ms
                            .saturating_add(rules.recovery.probe_timeout_ms)
                            .min(now_ms),
                    }
                }
            }
        }
    }

    /// Takes one half-open probe slot, opening the half-open phase if the
    /// ejection has run out. `None` when no slot is free.
    pub fn claim_probe(&mut self, now_ms: u64, rules: &Rules) -> Option<(Ticket, Option<Transition>)> {
        let mut transition = None;
        if let Phase::Open { until_ms } = self.phase {
            if now_ms < until_ms {
                return None;
            }
            let mut t = self.transition(PhaseKind::Open, now_ms, None);
            t.probes = (0, rules.recovery.successes.get());
            transition = Some(t);
            self.enter(Phase::HalfOpen {
                taken: 0,
                successes: 0,
                last_probe_ms: now_ms,
            });
        }
        let Phase::HalfOpen {
            taken,
            successes,
            last_probe_ms,
        } = self.phase
        else {
            return None;
        };
        // Slots that were handed out long ago and never answered belong to a
        // worker that went away: hand them out again.
        let taken = if probes_lost(now_ms, last_probe_ms, rules) {
            successes
        } else {
            taken
        };
        if taken >= rules.recovery.probes.get() {
            return None;
        }
        self.phase = Phase::HalfOpen {
            taken: taken + 1,
            successes,
            last_probe_ms: now_ms,
        };
        Some((
            Ticket {
                generation: self.generation,
                probe: true,
                quiet: false,
            },
            transition,
        ))
    }

    /// Records a finished request's verdict. Returns the phase change it caused.
    pub fn record(&mut self, now_ms: u64, verdict: Verdict, ticket: Ticket, rules: &Rules) -> Option<Transition> {
        if self.cooldown_until_ms != 0 && !self.rate_limited_at(now_ms) {
            self.cooldown_until_ms = 0;
        }
        if let Verdict::RateLimited { retry_after_ms } = verdict {
            // A 429 is news about the vendor whenever it was routed.
            let change = self.rate_limit(now_ms, retry_after_ms, rules);
            if ticket.probe && ticket.generation == self.generation {
                self.release_probe();
            }
            return change;
        }
        if ticket.generation != self.generation {
            return None; // routed under an earlier regime
        }
        match self.phase {
            Phase::Closed => {
                match verdict {
                    Verdict::Neutral | Verdict::RateLimited { .. } => return None,
                    Verdict::Success => {
                        self.consecutive_failures = 0;
                        self.window.record(now_ms, false);
                    }
                    Verdict::Slow => {
                        self.consecutive_failures = 0;
                        self.window.record_slow(now_ms);
                    }
                    Verdict::Failure => {
                        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                        self.window.record(now_ms, true);
                    }
                }
                if self.should_trip(now_ms, &rules.trip) {
                    return Some(self.eject(now_ms, rules, true));
                }
                None
            }
            Phase::Open { .. } => None,
            Phase::HalfOpen {
                taken,
                successes,
                last_probe_ms,
            } => {
                if !ticket.probe {
                    return None;
                }
                match verdict {
                    Verdict::Neutral | Verdict::RateLimited { .. } => {
                        // The probe said nothing: give its slot back.
                        self.release_probe();
                        None
                    }
                    // Still too slow is not recovered.
                    Verdict::Failure | Verdict::Slow => Some(self.eject(now_ms, rules, false)),
                    Verdict::Success => {
                        let successes = successes + 1;
                        if successes >= rules.recovery.successes.get() {
                            let mut t = self.transition(PhaseKind::HalfOpen, now_ms, None);
                            t.probes = (successes, rules.recovery.successes.get());
                            self.enter(Phase::Closed);
                            self.closed_at_ms = now_ms;
                            self.consecutive_failures = 0;
                            self.window.clear();
                            return Some(Transition {
                                to: PhaseKind::Closed,
                                ..t
                            });
                        }
                        self.phase = Phase::HalfOpen {
                            taken: taken.max(successes),
                            successes,
                            last_probe_ms,
                        };
                        None
                    }
                }
            }
        }
    }

    /// Adds successes a worker batched. Like `record`, they count only under
    /// the generation they were routed in. They do not reset a run of
    /// consecutive failures: they finished before the outcomes written since.
    pub fn merge(&mut self, d: &Deferred) {
        if d.generation == self.generation && self.phase == Phase::Closed {
            self.window.add_successes(d.bucket, d.successes);
        }
    }

    /// Starts or extends a rate-limit cooldown: the vendor's own reset time,
    /// or the default when it gave none, capped at the maximum. Reported as
    /// a change only when a cooldown starts.
    fn rate_limit(&mut self, now_ms: u64, retry_after_ms: Option<u64>, rules: &Rules) -> Option<Transition> {
        let r = &rules.rate_limit;
        let wait = retry_after_ms.unwrap_or(r.default_cooldown_ms).min(r.max_cooldown_ms);
        let until = now_ms.saturating_add(wait);
        if until <= self.cooldown_until_ms {
            return None;
        }
        let starts = !self.rate_limited_at(now_ms);
        self.cooldown_until_ms = until;
        if !starts || wait == 0 {
            return None;
        }
        let mut t = self.transition(self.phase.kind(), now_ms, None);
        t.to = PhaseKind::RateLimited;
        t.cooldown_ms = Some(wait);
        Some(t)
    }

    fn release_probe(&mut self) {
        if let Phase::HalfOpen {
            taken,
            successes,
            last_probe_ms,
        } = self.phase
        {
            self.phase = Phase::HalfOpen {
                taken: taken.saturating_sub(1).max(successes),
                successes,
                last_probe_ms,
            };
        }
    }

    fn should_trip(&self, now_ms: u64, trip: &TripRule) -> bool {
        if trip.consecutive_failures > 0 && self.consecutive_failures >= trip.consecutive_failures {
            return true;
        }
        let t = self.window.totals(now_ms);
        let enough = t.requests() >= u64::from(trip.min_requests.get());
        let total = t.requests() as f64;
        enough
            && (t.failures as f64 >= trip.failure_ratio * total
                || trip.slow_ratio.is_some_and(|r| t.slow as f64 >= r * total))
    }

    /// Opens the vendor. From closed, the back-off level first decays by one
    /// per `decay` of closed time; from half-open (a failed probe) it does not.
    fn eject(&mut self, now_ms: u64, rules: &Rules, from_closed: bool) -> Transition {
        let b = &rules.ejection;
        if from_closed {
            let healthy_ms = now_ms.saturating_sub(self.closed_at_ms);
            let steps = healthy_ms / b.decay_ms;
            self.level = self.level.saturating_sub(u32::try_from(steps).unwrap_or(u32::MAX));
        }
        let duration = ejection_ms(b, self.level);
        let from = self.phase.kind();
        let mut t = self.transition(from, now_ms, Some(duration));
        if let Phase::HalfOpen { successes, .. } = self.phase {
            t.probes = (successes, rules.recovery.successes.get());
        }
        t.level = self.level;
        self.level = self.level.saturating_add(1).min(40);
        self.ejections = self.ejections.wrapping_add(1);
        self.consecutive_failures = 0;
        self.window.clear();
        self.enter(Phase::Open {
            until_ms: now_ms.saturating_add(duration),
        });
        t
    }

    fn transition(&self, from: PhaseKind, now_ms: u64, ejected_for_ms: Option<u64>) -> Transition {
        Transition {
            from,
            to: if ejected_for_ms.is_some() {
                PhaseKind::Open
            } else {
                PhaseKind::HalfOpen
            },
            totals: self.window.totals(now_ms),
            consecutive_failures: self.consecutive_failures,
            ejected_for_ms,
            level: self.level,
            probes: (0, 0),
            cooldown_ms: None,
        }
    }

    fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        self.generation = self.generation.wrapping_add(1);
    }
}

fn probes_lost(now_ms: u64, last_probe_ms: u64, rules: &Rules) -> bool {
    now_ms.saturating_sub(last_probe_ms) >= rules.recovery.probe_timeout_ms
}

/// `base * 2^level`, capped at `max`.
pub fn ejection_ms(b: &Backoff, level: u32) -> u64 {
    let factor = 1u64.checked_shl(level.min(62)).unwrap_or(u64::MAX);
    b.base_ms.saturating_mul(factor).min(b.max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::{NonZeroU32, NonZeroU64};

    fn rules() -> Rules {
        Rules {
            window: WindowSpec::DEFAULT,
            trip: TripRule {
                min_requests: NonZeroU32::new(10).unwrap(),
                failure_ratio: 0.5,
                consecutive_failures: 5,
                slow_ratio: Some(0.8),
            },
            ejection: Backoff {
                base_ms: 30_000,
                max_ms: 300_000,
                decay_ms: NonZeroU64::new(60_000).unwrap(),
            },
            recovery: Recovery {
                probes: NonZeroU32::new(3).unwrap(),
                successes: NonZeroU32::new(3).unwrap(),
                probe_timeout_ms: 120_000,
            },
            rate_limit: RateLimit {
                default_cooldown_ms: 5_000,
                max_cooldown_ms: 60_000,
            },
        }
    }

    fn fresh() -> VendorState {
        VendorState::new(rules().window)
    }

    fn ticket(s: &VendorState) -> Ticket {
        match s.availability(0, &rules()) {
            Availability::Routable(t) => t,
            other => panic!("not closed: {other:?}"),
        }
    }

    fn feed(s: &mut VendorState, now: u64, verdict: Verdict) -> Option<Transition> {
        let t = Ticket {
            generation: s.generation,
            probe: false,
            quiet: false,
        };
        s.record(now, verdict, t, &rules())
    }

    #[test]
    fn trips_by_ratio_once_min_requests_is_reached() {
        let mut s = fresh();
        // Alternate so the consecutive rule never fires: 4 failures in 9 is
        // below the minimum volume...
        for i in 0..9 {
            let v = if i % 2 == 1 { Verdict::Failure } else { Verdict::Success };
            assert_eq!(feed(&mut s, 1_000, v), None, "request {i}");
        }
        assert_eq!(s.window.totals(1_000).requests(), 9);
        // ...the 10th request, a failure, makes 5/10 = 50%: trip.
        let t = feed(&mut s, 1_000, Verdict::Failure).expect("trip");
        assert_eq!(t.from, PhaseKind::Closed);
        assert_eq!(t.to, PhaseKind::Open);
        assert_eq!(t.totals.failures, 5);
        assert_eq!(t.ejected_for_ms, Some(30_000));
        assert_eq!(s.phase, Phase::Open { until_ms: 31_000 });
    }

    #[test]
    fn min_requests_holds_back_the_ratio_rule() {
        let mut r = rules();
        r.trip.consecutive_failures = 0;
        let mut s = fresh();
        for _ in 0..9 {
            let t = Ticket {
                generation: s.generation,
                probe: false,
                quiet: false,
            };
            assert_eq!(s.record(0, Verdict::Failure, t, &r), None);
        }
        let t = Ticket {
            generation: s.generation,
            probe: false,
            quiet: false,
        };
        assert!(s.record(0, Verdict::Failure, t, &r).is_some(), "10th failure trips");
    }

    #[test]
    fn ratio_below_threshold_does_not_trip() {
        let mut s = fresh();
        for i in 0..100 {
            // 1 failure in 3: 33%.
            let v = if i % 3 == 0 { Verdict::Failure } else { Verdict::Success };
            assert_eq!(feed(&mut s, 5_000, v), None);
        }
    }

    #[test]
    fn trips_on_consecutive_failures_below_min_volume() {
        let mut s = fresh();
        feed(&mut s, 0, Verdict::Success);
        for _ in 0..4 {
            assert_eq!(feed(&mut s, 0, Verdict::Failure), None);
        }
        let t = feed(&mut s, 0, Verdict::Failure).expect("5th failure in a row trips");
        assert_eq!(t.consecutive_failures, 5);
    }

    #[test]
    fn a_success_breaks_the_run() {
        let mut s = fresh();
        for _ in 0..4 {
            feed(&mut s, 0, Verdict::Failure);
        }
        feed(&mut s, 0, Verdict::Success);
        for _ in 0..4 {
            assert_eq!(feed(&mut s, 0, Verdict::Failure), None);
        }
    }

    #[test]
    fn neutral_outcomes_do_not_count() {
        let mut s = fresh();
        for _ in 0..50 {
            assert_eq!(feed(&mut s, 0, Verdict::Neutral), None);
        }
        assert_eq!(s.window.totals(0).requests(), 0);
    }

    #[test]
    fn old_failures_expire_from_the_window() {
        let mut r = rules();
        r.trip.consecutive_failures = 0;
        let mut s = fresh();
        for _ in 0..9 {
            let t = Ticket {
                generation: s.generation,
                probe: false,
                quiet: false,
            };
            s.record(0, Verdict::Failure, t, &r);
        }
        // 10 s later those nine are gone; one more failure is 1 of 1 but below volume.
        let t = Ticket {
            generation: s.generation,
            probe: false,
            quiet: false,
        };
        assert_eq!(s.record(10_000, Verdict::Failure, t, &r), None);
    }

    fn trip(s: &mut VendorState, now: u64) -> Transition {
        for _ in 0..4 {
            assert_eq!(feed(s, now, Verdict::Failure), None);
        }
        feed(s, now, Verdict::Failure).expect("trip")
    }

    fn close(s: &mut VendorState, now: u64) {
        let r = rules();
        for i in 0..3 {
            let (t, _) = s.claim_probe(now, &r).expect("probe slot");
            let change = s.record(now, Verdict::Success, t, &r);
            assert_eq!(change.is_some(), i == 2);
        }
        assert_eq!(s.phase, Phase::Closed);
    }

    #[test]
    fn ejection_ends_exactly_at_its_deadline() {
        let mut s = fresh();
        trip(&mut s, 1_000);
        let r = rules();
        assert_eq!(s.availability(30_999, &r), Availability::Unavailable { due_ms: 31_000 });
        assert_eq!(s.claim_probe(30_999, &r), None);
        assert_eq!(s.availability(31_000, &r), Availability::Probe);
        assert_eq!(s.effective_kind(31_000), PhaseKind::HalfOpen);
        let (t, change) = s.claim_probe(31_000, &r).unwrap();
        assert!(t.probe);
        assert_eq!(change.unwrap().to, PhaseKind::HalfOpen);
    }

    #[test]
    fn back_off_doubles_on_quick_relapses_and_caps() {
        let mut s = fresh();
        let mut now = 0;
        let mut seen = vec![];
        for _ in 0..6 {
            let t = trip(&mut s, now);
            seen.push(t.ejected_for_ms.unwrap());
            now += t.ejected_for_ms.unwrap();
            close(&mut s, now);
            now += 1_000; // relapses one second after closing
        }
        assert_eq!(seen, vec![30_000, 60_000, 120_000, 240_000, 300_000, 300_000]);
    }

    #[test]
    fn back_off_decays_one_level_per_healthy_stretch() {
        let mut s = fresh();
        let mut now = 0;
        for _ in 0..3 {
            let t = trip(&mut s, now);
            now += t.ejected_for_ms.unwrap();
            close(&mut s, now);
        }
        assert_eq!(s.level, 3);
        // Healthy for two decay periods (minus a hair): level 3 -> 2.
        now += 2 * 60_000 - 1;
        assert_eq!(trip(&mut s, now).ejected_for_ms, Some(120_000));
        now += 120_000;
        close(&mut s, now);
        // Level is 3 again; healthy for 10 minutes brings it to zero.
        now += 600_000;
        assert_eq!(trip(&mut s, now).ejected_for_ms, Some(30_000));
    }

    #[test]
    fn failed_probe_ejects_again_for_longer() {
        let r = rules();
        let mut s = fresh();
        trip(&mut s, 0);
        let (t, _) = s.claim_probe(30_000, &r).unwrap();
        let change = s.record(30_500, Verdict::Failure, t, &r).unwrap();
        assert_eq!((change.from, change.to), (PhaseKind::HalfOpen, PhaseKind::Open));
        assert_eq!(change.ejected_for_ms, Some(60_000));
        assert_eq!(s.phase, Phase::Open { until_ms: 90_500 });
    }

    #[test]
    fn half_open_budget_limits_probes_in_flight() {
        let r = rules();
        let mut s = fresh();
        trip(&mut s, 0);
        let probes: Vec<_> = (0..5).filter_map(|_| s.claim_probe(30_000, &r)).collect();
        assert_eq!(probes.len(), 3);
        assert!(matches!(s.availability(30_001, &r), Availability::Unavailable { .. }));
        // One success frees nothing: the budget counts answered probes too.
        s.record(30_100, Verdict::Success, probes[0].0, &r);
        assert_eq!(s.claim_probe(30_200, &r), None);
        // A neutral answer (client went away) gives its slot back.
        s.record(30_300, Verdict::Neutral, probes[1].0, &r);
        assert!(s.claim_probe(30_400, &r).is_some());
    }

    #[test]
    fn lost_probe_slots_are_handed_out_again_after_the_timeout() {
        let r = rules();
        let mut s = fresh();
        trip(&mut s, 0);
        for _ in 0..3 {
            s.claim_probe(30_000, &r).unwrap();
        }
        assert_eq!(s.claim_probe(149_999, &r), None);
        assert!(s.claim_probe(150_000, &r).is_some());
    }

    #[test]
    fn stale_outcomes_are_ignored() {
        let r = rules();
        let mut s = fresh();
        let before = ticket(&s);
        trip(&mut s, 0);
        // A request routed before the trip fails after it: no longer ejection.
        assert_eq!(s.record(1_000, Verdict::Failure, before, &r), None);
        assert_eq!(s.phase, Phase::Open { until_ms: 30_000 });
        close(&mut s, 30_000);
        // ...nor does it count against the recovered vendor.
        for _ in 0..10 {
            assert_eq!(s.record(31_000, Verdict::Failure, before, &r), None);
        }
        assert_eq!(s.window.totals(31_000).requests(), 0);
    }

    #[test]
    fn non_probe_requests_in_half_open_do_not_decide() {
        let r = rules();
        let mut s = fresh();
        trip(&mut s, 0);
        let (probe, _) = s.claim_probe(30_000, &r).unwrap();
        let forced = Ticket {
            generation: probe.generation,
            probe: false,
            quiet: false,
        };
        assert_eq!(s.record(30_100, Verdict::Failure, forced, &r), None);
        assert_eq!(s.phase.kind(), PhaseKind::HalfOpen);
    }

    #[test]
    fn closing_starts_a_clean_window() {
        let r = rules();
        let mut s = fresh();
        trip(&mut s, 0);
        close(&mut s, 30_000);
        assert_eq!(s.window.totals(30_000).requests(), 0);
        assert_eq!(s.consecutive_failures, 0);
        assert_eq!(s.availability(30_000, &r), Availability::Routable(ticket(&s)));
    }

    /// A vendor that fails every other request must not flap: each relapse
    /// doubles its ejection, so over an hour it spends most time ejected and
    /// changes state only a handful of times.
    #[test]
    fn a_vendor_failing_half_the_time_does_not_flap() {
        let r = rules();
        let mut s = fresh();
        let mut changes = 0;
        let mut served = 0;
        let mut coin = false;
        let mut now = 0;
        while now < 3_600_000 {
            // 10 requests per second.
            now += 100;
            coin = !coin;
            let verdict = if coin { Verdict::Failure } else { Verdict::Success };
            let t = match s.availability(now, &r) {
                Availability::Routable(t) => t,
                Availability::Probe => match s.claim_probe(now, &r) {
                    Some((t, change)) => {
                        changes += usize::from(change.is_some());
                        t
                    }
                    None => continue,
                },
                Availability::Unavailable { .. } => continue,
            };
            served += 1;
            if s.record(now, verdict, t, &r).is_some() {
                changes += 1;
            }
        }
        assert!(changes <= 40, "{changes} state changes in an hour");
        assert!(served < 3_000, "{served} requests reached a coin-flip vendor");
    }

    #[test]
    fn state_change_lines_carry_their_figures() {
        let r = rules();
        let mut s = fresh();
        let t = trip(&mut s, 0);
        assert_eq!(
            t.to_string(),
            "closed -> open (window: 5 requests, 5 failures; 5 consecutive failures; ejected for 30000 ms, back-off level 0)"
        );
        let (p, t) = s.claim_probe(30_000, &r).unwrap();
        assert_eq!(
            t.unwrap().to_string(),
            "open -> half-open (ejection over; 3 successful probes close it)"
        );
        s.record(30_000, Verdict::Success, p, &r);
        let (p, _) = s.claim_probe(30_000, &r).unwrap();
        let t = s.record(30_000, Verdict::Failure, p, &r).unwrap();
        assert_eq!(
            t.to_string(),
            "half-open -> open (a probe failed after 1 of 3 successes; ejected for 60000 ms, back-off level 1)"
        );
        close(&mut s, 90_000);
    }

    #[test]
    fn trips_on_the_slow_ratio() {
        let r = rules();
        let mut s = fresh();
        // 7 slow of 9 is below the volume; the 10th makes 8 of 10 = 80%.
        for i in 0..9 {
            let v = if i < 7 { Verdict::Slow } else { Verdict::Success };
            assert_eq!(feed(&mut s, 0, v), None);
        }
        let t = feed(&mut s, 0, Verdict::Slow).expect("trip");
        assert_eq!(t.totals.slow, 8);
        assert_eq!(s.consecutive_failures, 0, "slow answers are not failures");
        // With no slowness limit configured, slowness never trips.
        let mut r2 = r;
        r2.trip.slow_ratio = None;
        let mut s = fresh();
        for _ in 0..50 {
            let t = Ticket {
                generation: s.generation,
                probe: false,
                quiet: false,
            };
            assert_eq!(s.record(0, Verdict::Slow, t, &r2), None);
        }
    }

    #[test]
    fn a_429_skips_the_vendor_until_its_reset_without_touching_health() {
        let r = rules();
        let mut s = fresh();
        let t = ticket(&s);
        let change = s
            .record(
                1_000,
                Verdict::RateLimited {
                    retry_after_ms: Some(2_000),
                },
                t,
                &r,
            )
            .unwrap();
        assert_eq!(change.to, PhaseKind::RateLimited);
        assert_eq!(
            change.to_string(),
            "closed -> rate-limited (answered 429; skipped for 2000 ms, its health untouched)"
        );
        assert_eq!(s.availability(2_999, &r), Availability::Unavailable { due_ms: 3_000 });
        assert_eq!(s.effective_kind(2_999), PhaseKind::RateLimited);
        assert!(matches!(s.availability(3_000, &r), Availability::Routable(_)));
        assert_eq!(s.window.totals(3_000).requests(), 0, "not counted as an outcome");
        assert_eq!((s.phase, s.level, s.consecutive_failures), (Phase::Closed, 0, 0));
        // A second 429 extends it without a new state change.
        assert_eq!(
            s.record(
                1_500,
                Verdict::RateLimited {
                    retry_after_ms: Some(3_000)
                },
                t,
                &r
            ),
            None
        );
        assert_eq!(s.cooldown_until_ms, 4_500);
        // No header: the default; a huge header: the cap.
        let mut s = fresh();
        s.record(0, Verdict::RateLimited { retry_after_ms: None }, t, &r);
        assert_eq!(s.cooldown_until_ms, 5_000);
        let mut s = fresh();
        s.record(
            0,
            Verdict::RateLimited {
                retry_after_ms: Some(10_000_000),
            },
            t,
            &r,
        );
        assert_eq!(s.cooldown_until_ms, 60_000);
    }

    #[test]
    fn a_rate_limited_probe_gives_its_slot_back() {
        let r = rules();
        let mut s = fresh();
        trip(&mut s, 0);
        let probes: Vec<_> = (0..3).filter_map(|_| s.claim_probe(30_000, &r)).collect();
        assert!(s.claim_probe(30_000, &r).is_none());
        s.record(
            30_100,
            Verdict::RateLimited {
                retry_after_ms: Some(1_000),
            },
            probes[0].0,
            &r,
        );
        assert_eq!(s.phase.kind(), PhaseKind::HalfOpen);
        assert!(matches!(s.availability(31_100, &r), Availability::Probe));
    }

    #[test]
    fn a_slow_probe_is_not_a_recovery() {
        let r = rules();
        let mut s = fresh();
        trip(&mut s, 0);
        let (p, _) = s.claim_probe(30_000, &r).unwrap();
        let t = s.record(30_000, Verdict::Slow, p, &r).unwrap();
        assert_eq!((t.from, t.to), (PhaseKind::HalfOpen, PhaseKind::Open));
    }

    #[test]
    fn ejection_math_never_overflows() {
        let b = Backoff {
            base_ms: u64::MAX / 2,
            max_ms: u64::MAX,
            decay_ms: NonZeroU64::MIN,
        };
        assert_eq!(ejection_ms(&b, 40), u64::MAX);
        assert_eq!(ejection_ms(&b, 0), u64::MAX / 2);
    }
}
