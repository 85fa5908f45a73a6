//! What becomes of an attempt's answer before the client saw any of it: pass, peek, inspect or rescue.
//!
//! Pass it on, peek at a stream's first event, inspect a 400's body, or hold
//! it and rescue the request; and how a rescue callout's whole answer is
//! judged.

use crate::policy::adapt;
use crate::policy::choice::LazyClock;
use crate::policy::classify::{self, Observed, Outcome, Reason};
use crate::policy::config::{Config, Format, SlowLimits, StatusSet};
use crate::policy::ratelimit;
use crate::policy::rescue::{self, Flight, Move};
use crate::policy::sse::{self, Ending, Scanner, StreamError};

/// What the first attempt's response headers showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub status: Option<u16>,
    /// `content-type: text/event-stream`.
    pub sse: bool,
    /// Headers only, no body follows.
    pub end_of_stream: bool,
    /// For a 429: the wait its headers asked for.
    pub retry_after_ms: Option<u64>,
}

/// What to do with the first attempt's response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtHeaders {
    /// Let the answer go to the client (and watch it pass).
    Pass,
    /// The attempt failed before anything reached the client: hold the
    /// answer and move the request.
    Rescue { outcome: Outcome, why: Move, now_ms: u64 },
    /// A 400 that may say the context overflowed: hold it for its body.
    Inspect,
    /// A 200 stream: hold its headers until its first event shows it is no error.
    Peek,
}

/// What a request may still do if its current answer fails: the journey
/// itself in the downstream filter, or what the downstream filter told the
/// upstream filter of it (`relay::Hints`).
pub trait Room {
    /// The client asked for a stream.
    fn stream(&self) -> bool;
    /// Whether another attempt may start at `now_ms` for this reason.
    fn may_move(&self, why: Move, now_ms: u64) -> bool;
}

impl Room for Flight {
    fn stream(&self) -> bool {
        self.stream
    }

    fn may_move(&self, why: Move, now_ms: u64) -> bool {
        Flight::may_move(self, why, now_ms)
    }
}

/// Judges the first attempt's response headers, by the configured
/// `failure_statuses`. `flags` reads Envoy's response flags and `clock` the
/// time: each at most once, and only when the answer is not a plain 2xx
/// (the common case reads neither).
pub fn at_headers(
    head: &Head,
    flight: &dyn Room,
    failure_statuses: &StatusSet,
    flags: &mut dyn FnMut() -> u64,
    clock: &mut dyn FnMut() -> u64,
) -> AtHeaders {
    let mut clock = LazyClock::new(clock);
    let mut may = |why| {
        let now = clock.now();
        (flight.may_move(why, now), now)
    };
    let judged = match head.status {
        Some(s) if (200..300).contains(&s) => None,
        _ => {
            let seen = Observed {
                status: head.status,
                flags: flags(),
                retry_after_ms: head.retry_after_ms,
                ..Observed::default()
            };
            // Slowness is judged when the answer ends, never here.
            Some(classify::classify(&seen, failure_statuses, &SlowLimits::DEFAULT))
        }
    };
    if let Some(outcome) = judged {
        if rescue::moves(&outcome).is_some() {
            if let (true, now_ms) = may(Move::Failure) {
                return AtHeaders::Rescue {
                    outcome,
                    why: Move::Failure,
                    now_ms,
                };
            }
        }
        if head.status == Some(400) && !head.end_of_stream && may(Move::ContextOverflow).0 {
            return AtHeaders::Inspect;
        }
        return AtHeaders::Pass;
    }
    if head.sse && flight.stream() && !head.end_of_stream && may(Move::Failure).0 {
        return AtHeaders::Peek;
    }
    AtHeaders::Pass
}

/// How much of a held answer the filter keeps to judge it: a first event,
/// or a context-overflow error, is far smaller. Past it the answer goes on
/// unjudged rather than fill Envoy's buffer (which would turn it into a bare
/// 500).
pub const HELD_BYTES_CAP: usize = 64 * 1024;

/// What a held stream's bytes so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtPeek {
    /// No event yet: keep holding.
    Wait,
    /// Its first event is an error, or it ended before one: move the request.
    Rescue { outcome: Outcome, kind: Option<String> },
    /// Its first event is no error (or it cannot move): let it go.
    Release,
}

/// Judges a held stream after `scanner` read the `held` bytes that have
/// arrived; `ending` is set when the stream ended.
pub fn at_peek(scanner: &Scanner, ending: Option<&Ending>, end_of_stream: bool, may_move: bool, held: usize) -> AtPeek {
    let events = scanner.events();
    if let Some(e) = scanner.error() {
        if may_move {
            return AtPeek::Rescue {
                outcome: Outcome::Failure(Reason::StreamError),
                kind: Some(e.kind.clone()),
            };
        }
    } else if events == 0 && ending == Some(&Ending::Truncated) && may_move {
        return AtPeek::Rescue {
            outcome: Outcome::Failure(Reason::Truncated),
            kind: None,
        };
    } else if events == 0 && !end_of_stream && held <= HELD_BYTES_CAP {
        return AtPeek::Wait;
    }
    AtPeek::Release
}

/// What a held 400's body says so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtInspect {
    /// Not all here yet: keep holding.
    Wait,
    /// The context window overflowed: move the request (the outcome is the
    /// client's doing, neutral).
    Rescue(Outcome),
    /// Any other 400 (or one too long to be an overflow error): let it go.
    Release,
}

pub fn at_inspect(body: &[u8], end_of_stream: bool) -> AtInspect {
    if body.len() > HELD_BYTES_CAP {
        AtInspect::Release
    } else if !end_of_stream {
        AtInspect::Wait
    } else if adapt::is_context_overflow(400, body) {
        AtInspect::Rescue(Outcome::Neutral(Some(400)))
    } else {
        AtInspect::Release
    }
}

/// A rescue callout's whole answer, judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub outcome: Outcome,
    /// The vendor's own type of an error inside its stream.
    pub stream_error: Option<String>,
    /// A 400 saying the context window overflowed.
    pub overflow: bool,
}

/// What a callout answered: no status means it timed out or its connection
/// failed; no body, that it was too large to read (judged by its status).
pub struct CalloutAnswer<'a> {
    pub status: Option<u16>,
    pub headers: &'a [(String, Vec<u8>)],
    pub body: Option<&'a [u8]>,
}

pub fn judge_callout(
    answer: &CalloutAnswer,
    format: Option<Format>,
    deadline_ms: u64,
    now_ms: u64,
    config: &Config,
) -> Judged {
    let get = |name: &str| {
        answer
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    };
    let sse_answer = get("content-type").is_some_and(|ct| ct.starts_with(b"text/event-stream"));
    let body = answer.body.unwrap_or_default();
    let stream = (sse_answer && answer.status.is_some_and(|s| s < 300) && answer.body.is_some()).then(|| {
        let mut sc = Scanner::with_dialect(format.map(sse::dialect_of));
        sc.feed(body);
        sc.finish()
    });
    let stream_error = match &stream {
        Some(Ending::Error(StreamError { kind })) => Some(kind.clone()),
        _ => None,
    };
    let outcome = match answer.status {
        None => Outcome::Failure(if now_ms >= deadline_ms {
            Reason::Timeout
        } else {
            Reason::Reset
        }),
        Some(s) => {
            let retry_after_ms = if s == 429 {
                let pairs: Vec<(&str, &[u8])> =
                    answer.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
                ratelimit::retry_after_ms(&pairs, now_ms)
            } else {
                None
            };
            let seen = Observed {
                status: Some(s),
                stream,
                retry_after_ms,
                ..Observed::default()
            };
            classify::classify(&seen, &config.failure_statuses, &config.slow)
        }
    };
    Judged {
        outcome,
        stream_error,
        overflow: answer.status == Some(400) && adapt::is_context_overflow(400, body),
    }
}

/// What follows a judged callout answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterCallout {
    /// Try the next candidate.
    Move(Move),
    /// Nothing left to try: answer 503.
    GiveUp,
    /// The client gets this answer.
    Deliver(u16),
}

pub fn after_callout(judged: &Judged, status: Option<u16>, flight: &Flight, now_ms: u64) -> AfterCallout {
    let why = rescue::moves(&judged.outcome).or(judged.overflow.then_some(Move::ContextOverflow));
    match why {
        Some(why) if flight.may_move(why, now_ms) => AfterCallout::Move(why),
        Some(Move::Failure) => AfterCallout::GiveUp,
        _ => match status {
            Some(s) => AfterCallout::Deliver(s),
            None => AfterCallout::GiveUp,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::config::{UnitId, VendorId};
    use crate::policy::plan::{self, Attempt};

    fn config() -> Config {
        Config::parse_with_env(br#"{"vendors":[{"name":"a"},{"name":"b"}]}"#, &|_| None).unwrap()
    }

    fn flight(c: &Config, stream: bool) -> Flight {
        let candidates = plan::plan(c, Some(Format::OpenAi), None).unwrap();
        let mut f = Flight::new(Some(Format::OpenAi), stream, candidates, 0, &c.rescue);
        f.start(Attempt {
            unit: UnitId(0),
            planned: UnitId(0),
            vendor: VendorId(0),
            ticket: None,
            forced: false,
            owner: None,
        });
        f
    }

    fn head(status: u16) -> Head {
        Head {
            status: Some(status),
            sse: false,
            end_of_stream: false,
            retry_after_ms: None,
        }
    }

    #[test]
    fn a_plain_success_passes_without_reading_flags_or_clock() {
        let c = config();
        let f = flight(&c, false);
        let mut reads = 0;
        let mut flags = || {
            reads += 1;
            0
        };
        let decision = at_headers(&head(200), &f, &c.failure_statuses, &mut flags, &mut || {
            panic!("clock read")
        });
        assert_eq!(decision, AtHeaders::Pass);
        assert_eq!(reads, 0);
    }

    #[test]
    fn a_failure_before_any_byte_is_rescued() {
        let c = config();
        let f = flight(&c, false);
        let d = at_headers(&head(503), &f, &c.failure_statuses, &mut || 0, &mut || 7);
        assert_eq!(
            d,
            AtHeaders::Rescue {
                outcome: Outcome::Failure(Reason::Status(503)),
                why: Move::Failure,
                now_ms: 7
            }
        );
        let d = at_headers(&head(429), &f, &c.failure_statuses, &mut || 0, &mut || 7);
        assert!(matches!(
            d,
            AtHeaders::Rescue {
                outcome: Outcome::RateLimited(None),
                ..
            }
        ));
        // Envoy's reset before headers: a 503 with the UR flag.
        let d = at_headers(
            &head(503),
            &f,
            &c.failure_statuses,
            &mut || classify::flags::UPSTREAM_REMOTE_RESET,
            &mut || 7,
        );
        assert!(matches!(
            d,
            AtHeaders::Rescue {
                outcome: Outcome::Failure(Reason::Reset),
                ..
            }
        ));
    }

    #[test]
    fn nothing_left_to_try_passes_the_failure_on() {
        let c = config();
        let mut f = flight(&c, false);
        f.start(Attempt {
            unit: UnitId(1),
            planned: UnitId(1),
            vendor: VendorId(1),
            ticket: None,
            forced: false,
            owner: None,
        });
        assert_eq!(
            at_headers(&head(503), &f, &c.failure_statuses, &mut || 0, &mut || 7),
            AtHeaders::Pass
        );
        // ... and past the deadline neither.
        let f = flight(&c, false);
        assert_eq!(
            at_headers(&head(503), &f, &c.failure_statuses, &mut || 0, &mut || 1_000_000),
            AtHeaders::Pass
        );
    }

    #[test]
    fn a_400_is_inspected_only_if_a_larger_window_exists() {
        let c = Config::parse_with_env(
            br#"{"vendors":[{"name":"a"},{"name":"b"}],"groups":[{"models":["m"],"targets":[
                {"vendor":"a","context_window":1000},{"vendor":"b","context_window":2000}]}]}"#,
            &|_| None,
        )
        .unwrap();
        let mut f = Flight::new(
            Some(Format::OpenAi),
            false,
            plan::plan(&c, Some(Format::OpenAi), Some("m")).unwrap(),
            0,
            &c.rescue,
        );
        let first = f.plan[0].unit;
        f.start(Attempt {
            unit: first,
            planned: first,
            vendor: VendorId(0),
            ticket: None,
            forced: false,
            owner: None,
        });
        assert_eq!(
            at_headers(&head(400), &f, &c.failure_statuses, &mut || 0, &mut || 1),
            AtHeaders::Inspect
        );
        let plain = flight(&config(), false);
        assert_eq!(
            at_headers(&head(400), &plain, &config().failure_statuses, &mut || 0, &mut || 1),
            AtHeaders::Pass
        );
        let overflow = br#"{"error":{"code":"context_length_exceeded"}}"#;
        assert_eq!(
            at_inspect(overflow, true),
            AtInspect::Rescue(Outcome::Neutral(Some(400)))
        );
        assert_eq!(at_inspect(overflow, false), AtInspect::Wait);
        let policy = br#"{"error":{"code":"content_policy_violation"}}"#;
        assert_eq!(at_inspect(policy, true), AtInspect::Release);
        let long = vec![b' '; HELD_BYTES_CAP + 1];
        assert_eq!(at_inspect(&long, false), AtInspect::Release, "too long to hold");
    }

    #[test]
    fn a_streamed_200_is_peeked_at() {
        let c = config();
        let sse = Head { sse: true, ..head(200) };
        assert_eq!(
            at_headers(&sse, &flight(&c, true), &c.failure_statuses, &mut || 0, &mut || 1),
            AtHeaders::Peek
        );
        // Not a streamed request, or headers only: nothing to wait for.
        assert_eq!(
            at_headers(&sse, &flight(&c, false), &c.failure_statuses, &mut || 0, &mut || 1),
            AtHeaders::Pass
        );
        let bodiless = Head {
            end_of_stream: true,
            ..sse
        };
        assert_eq!(
            at_headers(&bodiless, &flight(&c, true), &c.failure_statuses, &mut || 0, &mut || 1),
            AtHeaders::Pass
        );
    }

    #[test]
    fn peeking_decides_on_the_first_event() {
        let mut sc = Scanner::with_dialect(Some(&sse::ANTHROPIC));
        assert_eq!(at_peek(&sc, None, false, true, 100), AtPeek::Wait);
        sc.feed(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n");
        assert_eq!(
            at_peek(&sc, None, false, true, 100),
            AtPeek::Rescue {
                outcome: Outcome::Failure(Reason::StreamError),
                kind: Some("overloaded_error".into())
            }
        );
        assert_eq!(at_peek(&sc, None, false, false, 100), AtPeek::Release, "cannot move");
        let empty = Scanner::with_dialect(Some(&sse::ANTHROPIC));
        assert!(matches!(
            at_peek(&empty, Some(&Ending::Truncated), true, true, 100),
            AtPeek::Rescue {
                outcome: Outcome::Failure(Reason::Truncated),
                ..
            }
        ));
        let mut ok = Scanner::with_dialect(Some(&sse::ANTHROPIC));
        ok.feed(b"event: message_start\ndata: {\"type\":\"message_start\"}\n\n");
        assert_eq!(at_peek(&ok, None, false, true, 100), AtPeek::Release);
        // A first event past the cap is not waited for.
        let huge = Scanner::with_dialect(Some(&sse::ANTHROPIC));
        assert_eq!(at_peek(&huge, None, false, true, HELD_BYTES_CAP + 1), AtPeek::Release);
    }

    #[test]
    fn callout_answers_are_judged_and_followed() {
        let c = config();
        let f = flight(&c, true);
        let ok = CalloutAnswer {
            status: Some(200),
            headers: &[("content-type".into(), b"application/json".to_vec())],
            body: Some(b"{}"),
        };
        let j = judge_callout(&ok, Some(Format::OpenAi), 100, 10, &c);
        assert_eq!(j.outcome, Outcome::Success);
        assert_eq!(after_callout(&j, Some(200), &f, 10), AfterCallout::Deliver(200));
        let failed = CalloutAnswer {
            status: Some(529),
            headers: &[],
            body: Some(b""),
        };
        let j = judge_callout(&failed, Some(Format::OpenAi), 100, 10, &c);
        assert_eq!(after_callout(&j, Some(529), &f, 10), AfterCallout::Move(Move::Failure));
        let silent = CalloutAnswer {
            status: None,
            headers: &[],
            body: Some(b""),
        };
        assert_eq!(
            judge_callout(&silent, None, 100, 100, &c).outcome,
            Outcome::Failure(Reason::Timeout)
        );
        let j = judge_callout(&silent, None, 100, 10, &c);
        assert_eq!(j.outcome, Outcome::Failure(Reason::Reset));
        let stream = CalloutAnswer {
            status: Some(200),
            headers: &[("content-type".into(), b"text/event-stream".to_vec())],
            body: Some(b"data: {\"error\":{\"type\":\"server_error\"}}\n\n"),
        };
        let j = judge_callout(&stream, Some(Format::OpenAi), 100, 10, &c);
        assert_eq!(j.outcome, Outcome::Failure(Reason::StreamError));
        assert_eq!(j.stream_error.as_deref(), Some("server_error"));
    }
}
