//! A request the filter holds: whether to hold it, where it stands, what it carries for a rescue.
//!
//! Held requests are those in a known API format that may be adapted and
//! rescued.

use crate::policy::adapt::Request;
use crate::policy::config::{Config, Format, VendorId};
use crate::policy::plan::{Attempt, Candidate};
use crate::policy::rescue::{Flight, Move};
use crate::policy::sse::Scanner;
use std::cell::RefCell;
use std::rc::Rc;

/// How long a request may sit in its headers without its body arriving
/// before the filter concludes Envoy does not hand it bodies.
pub const BODY_WAIT_MS: u64 = 1_000;

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Headers held until the body is complete.
    Buffering { since_ms: u64 },
    /// The first attempt is with Envoy's router.
    Routed,
    /// A 200 stream's headers are held until its first event.
    Peeking,
    /// A 400 is held until its body says whether the context overflowed.
    Inspecting,
    /// Being rescued with callouts; anything the router still sends is held.
    Rescuing,
    /// The filter answers the client itself (a rescue's answer, or its own
    /// error); that answer passes through this stream's encoders untouched.
    Replying,
    /// The router's answer goes to the client.
    Passed,
    /// The stream ended with its attempt out and no answer: the upstream
    /// filter handed the attempt back to the router as an internal
    /// redirect (see `policy::relay`), and the redirected request will
    /// continue the journey in a new stream (or the client went away).
    Relaying,
    /// The redirected request, routed to the next candidate, waits for its
    /// body to be replaced with the one adapted for that candidate.
    Resending,
    /// The redirected request is held until it may be retried on the same
    /// vendor (`Journey::retry_at`); `body_in` once its body is all here.
    Waiting { body_in: bool },
}

/// What the response callbacks do while the filter answers the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aside {
    /// The filter's own answer: let it by.
    LetBy,
    /// The router's answer, which the filter's replaces: hold it.
    Hold,
}

impl Stage {
    /// `Some` while the filter answers the client itself: the response
    /// callbacks then stay out of the way.
    pub fn aside(self) -> Option<Aside> {
        match self {
            // An answer while the request is still held is Envoy's own (a
            // timeout): no vendor was asked.
            Stage::Replying | Stage::Buffering { .. } | Stage::Resending | Stage::Waiting { .. } => Some(Aside::LetBy),
            Stage::Rescuing => Some(Aside::Hold),
            _ => None,
        }
    }

    /// Whether the journey's current attempt is with a vendor, unanswered
    /// as far as the downstream filter knows: a redirected request may
    /// continue it.
    pub fn attempt_out(self) -> bool {
        matches!(
            self,
            Stage::Routed | Stage::Peeking | Stage::Inspecting | Stage::Relaying
        )
    }

    /// Whether the stream's end has an attempt to record: not when the
    /// request never left the filter (still buffering: a client that never
    /// finished its upload is no vendor's doing), nor when its attempts were
    /// recorded as they ended (rescued, or answered by the filter).
    pub fn records_at_end(self) -> bool {
        !matches!(
            self,
            Stage::Buffering { .. } | Stage::Rescuing | Stage::Replying | Stage::Relaying | Stage::Waiting { .. }
        )
    }
}

pub struct Journey {
    pub ctx: u32,
    pub stage: Stage,
    pub format: Option<Format>,
    pub flight: Flight,
    /// The client's request headers and body, as they arrived.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// The body as read: its model and where the model stands.
    pub request: Option<Request>,
    /// When a streamed answer must have shown its first event.
    pub first_token_deadline: Option<u64>,
    /// The vendor the request was routed to at its headers, and how.
    /// Set only when it goes unread after all (too large, or Envoy hands
    /// the filter no bodies): chosen then, by the headers.
    pub at_headers: Option<(Attempt, Option<Candidate>)>,
    /// Reads a held stream's first event.
    pub peek: Option<Scanner>,
    /// Bytes of the held stream already fed to `peek`.
    pub peek_fed: usize,
    /// Body callbacks Envoy made for this request.
    pub body_callbacks: u32,
    /// Its token in the VM's relay table, while it has one.
    pub relay: Option<u64>,
    /// When its stream ended with the attempt out (`Stage::Relaying`).
    pub orphaned_ms: Option<u64>,
    /// When its failed attempt is retried on the same vendor.
    pub retry_at: Option<u64>,
    /// Answered whole: every attempt a callout, judged complete before any
    /// byte reaches the client (buffered mode).
    pub buffered: bool,
}

pub type JourneyRef = Rc<RefCell<Journey>>;

impl Journey {
    pub fn new(
        ctx: u32,
        now_ms: u64,
        format: Option<Format>,
        headers: Vec<(String, Vec<u8>)>,
        config: &Config,
    ) -> Self {
        Journey {
            ctx,
            stage: Stage::Buffering { since_ms: now_ms },
            format,
            flight: Flight::new(format, false, Vec::new(), now_ms, &config.rescue),
            headers,
            body: Vec::new(),
            request: None,
            first_token_deadline: None,
            at_headers: None,
            peek: None,
            peek_fed: 0,
            body_callbacks: 0,
            relay: None,
            orphaned_ms: None,
            retry_at: None,
            buffered: false,
        }
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// A first attempt whose stream has not shown its first event in time.
    pub fn first_token_late(&self, now_ms: u64) -> bool {
        matches!(self.stage, Stage::Routed | Stage::Peeking)
            && self.first_token_deadline.is_some_and(|d| now_ms >= d)
            && self.flight.may_move(Move::Failure, now_ms)
    }

    /// Held in its headers for longer than a body takes to arrive, without a
    /// single body callback.
    pub fn body_overdue(&self, now_ms: u64) -> bool {
        self.body_callbacks == 0
            && matches!(self.stage, Stage::Buffering { since_ms } if now_ms.saturating_sub(since_ms) >= BODY_WAIT_MS)
    }
}

/// What this worker knows of whether Envoy hands the filter request bodies
/// (`allow_on_headers_stop_iteration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyAccess {
    Unknown,
    /// A body callback came: bodies reach the filter.
    Seen,
    /// Body bytes arrived with no callback: they do not.
    Missing,
}

/// Whether an overdue request (see `Journey::body_overdue`) proves that
/// Envoy does not hand the filter bodies: Envoy counted body bytes for it
/// (`bytes_received`), yet no body callback came. Nothing a client does can
/// show this: a client that sends nothing has no bytes counted, and one that
/// trickles gets a callback per chunk. Once a callback was seen, never.
pub fn shows_no_body_access(access: BodyAccess, bytes_received: Option<u64>) -> bool {
    access != BodyAccess::Seen && bytes_received.is_some_and(|n| n > 0)
}

/// The request header by which a client asks for its answer whole
/// (buffered mode); never passed on.
pub const BUFFERED_HEADER: &str = "x-llm-failover-buffered";

/// Whether a `BUFFERED_HEADER` value asks for buffering.
pub fn asks_buffering(value: &[u8]) -> bool {
    let v = value.trim_ascii();
    ["1", "true", "yes", "on"]
        .iter()
        .any(|t| v.eq_ignore_ascii_case(t.as_bytes()))
}

/// Whether a request is answered whole: its client asked, its route group
/// says so, or the vendor its first attempt goes to does.
pub fn buffered(config: &Config, asked: bool, model: Option<&str>, first: VendorId) -> bool {
    asked
        || model
            .and_then(|m| crate::policy::plan::group_of(config, m))
            .is_some_and(|g| g.buffered)
        || config.vendors.get(first).is_some_and(|v| v.buffered)
}

/// What the filter knows of a request at its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub format: Option<Format>,
    /// Its `content-length`, if it declared one.
    pub declared_len: Option<u64>,
    /// The request has no body.
    pub end_of_stream: bool,
}

/// Whether a request is held for its body before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intake {
    pub hold: bool,
    /// In a known format, but declared larger than the filter holds.
    pub too_large: bool,
}

/// Whether any request needs its body read before routing: model routing,
/// rewriting, rescue or per-model health (model units) is configured.
pub fn reads_bodies(config: &Config) -> bool {
    config.rescue.max_attempts.get() > 1
        || !config.groups.is_empty()
        || config
            .vendors
            .values()
            .any(|v| v.models.is_some() || v.model_units > 0 || v.buffered)
}

/// Whether a request whose body is too large to read may still be routed
/// unread: only when no route group and no model map could have changed
/// where it goes or what it asks for (otherwise it is refused, 413).
pub fn unread_body_routable(config: &Config) -> bool {
    config.groups.is_empty() && config.vendors.values().all(|v| v.models.is_none())
}

/// Decides at a request's headers whether to hold it for its body.
/// `bodies_wanted`: some feature needs bodies (`reads_bodies`) and Envoy
/// hands them to the filter.
pub fn intake(arrival: &Arrival, max_body_bytes: u64, bodies_wanted: bool) -> Intake {
    let too_large = arrival.format.is_some() && arrival.declared_len.is_some_and(|n| n > max_body_bytes);
    let hold = arrival.format.is_some() && !arrival.end_of_stream && !too_large && bodies_wanted;
    Intake { hold, too_large }
}

/// What a chunk of a held request's body means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyStep {
    /// More is coming: keep holding.
    Wait,
    /// Larger than the filter holds: let it go as routed at its headers.
    TooLarge,
    /// The whole body is here: route by it.
    Complete,
}

pub fn body_step(buffered: usize, end_of_stream: bool, config: &Config) -> BodyStep {
    if (buffered as u64) > config.rescue.max_body_bytes {
        BodyStep::TooLarge
    } else if !end_of_stream {
        BodyStep::Wait
    } else {
        BodyStep::Complete
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::config::{UnitId, VendorId};

    fn config(json: &str) -> Config {
        Config::parse_with_env(json.as_bytes(), &|_| None).unwrap()
    }

    #[test]
    fn holds_only_known_formats_with_a_body_when_a_feature_needs_it() {
        let c = config(r#"{"vendors":[{"name":"a"},{"name":"b"}]}"#);
        let arrival = |format, declared_len, end_of_stream| Arrival {
            format,
            declared_len,
            end_of_stream,
        };
        let max = c.rescue.max_body_bytes;
        let held = |a: Arrival| intake(&a, max, reads_bodies(&c)).hold;
        assert!(held(arrival(Some(Format::OpenAi), Some(100), false)));
        assert!(held(arrival(Some(Format::Anthropic), None, false)));
        assert!(!held(arrival(None, Some(100), false)), "unknown path");
        assert!(!held(arrival(Some(Format::OpenAi), None, true)), "no body");
        let big = intake(&arrival(Some(Format::OpenAi), Some(10_000_000), false), max, true);
        assert_eq!(
            big,
            Intake {
                hold: false,
                too_large: true
            }
        );
        assert!(!intake(&arrival(Some(Format::OpenAi), Some(1), false), max, false).hold);
        // Nothing needs the body: rescue off, no groups, no model maps.
        let plain = config(r#"{"vendors":[{"name":"a","model_units":0}],"rescue":{"max_attempts":1}}"#);
        assert!(!reads_bodies(&plain));
        assert!(reads_bodies(&c));
    }

    #[test]
    fn a_body_too_large_to_read_goes_unread_only_where_models_do_not_matter() {
        assert!(unread_body_routable(&config(
            r#"{"vendors":[{"name":"a"},{"name":"b"}]}"#
        )));
        assert!(!unread_body_routable(&config(
            r#"{"vendors":[{"name":"a","models":{"*":"m"}}]}"#
        )));
        assert!(!unread_body_routable(&config(
            r#"{"vendors":[{"name":"a"}],"groups":[{"models":["x"],"targets":[{"vendor":"a"}]}]}"#
        )));
    }

    #[test]
    fn body_steps() {
        let c = config(r#"{"vendors":[{"name":"a"}],"rescue":{"max_body_bytes":10}}"#);
        assert_eq!(body_step(5, false, &c), BodyStep::Wait);
        assert_eq!(body_step(10, true, &c), BodyStep::Complete);
        assert_eq!(body_step(11, false, &c), BodyStep::TooLarge);
    }

    #[test]
    fn stages_that_answer_aside() {
        assert_eq!(Stage::Replying.aside(), Some(Aside::LetBy));
        assert_eq!(Stage::Rescuing.aside(), Some(Aside::Hold));
        assert_eq!(Stage::Routed.aside(), None);
        assert!(!Stage::Rescuing.records_at_end());
        assert!(
            !Stage::Buffering { since_ms: 0 }.records_at_end(),
            "nothing left the filter"
        );
        assert!(Stage::Passed.records_at_end());
    }

    #[test]
    fn overdue_bodies_and_late_first_tokens() {
        let c = config(r#"{"vendors":[{"name":"a"},{"name":"b"}]}"#);
        let mut j = Journey::new(1, 1_000, Some(Format::OpenAi), vec![], &c);
        assert!(!j.body_overdue(1_999));
        assert!(j.body_overdue(2_000));
        j.body_callbacks = 1;
        assert!(!j.body_overdue(5_000), "a slow client is no evidence");
        assert!(shows_no_body_access(BodyAccess::Unknown, Some(27)));
        assert!(!shows_no_body_access(BodyAccess::Unknown, Some(0)), "nothing sent yet");
        assert!(!shows_no_body_access(BodyAccess::Unknown, None));
        assert!(!shows_no_body_access(BodyAccess::Seen, Some(27)));
        j.body_callbacks = 0;
        j.stage = Stage::Routed;
        j.first_token_deadline = Some(1_500);
        j.flight = Flight::new(
            Some(Format::OpenAi),
            true,
            crate::policy::plan::plan(&c, Some(Format::OpenAi), None).unwrap(),
            1_000,
            &c.rescue,
        );
        j.flight.start(crate::policy::plan::Attempt {
            unit: UnitId(0),
            planned: UnitId(0),
            vendor: VendorId(0),
            ticket: None,
            forced: false,
            owner: None,
        });
        assert!(!j.first_token_late(1_499));
        assert!(j.first_token_late(1_500));
        j.stage = Stage::Passed;
        assert!(!j.first_token_late(1_500), "content already reached the client");
    }
}
