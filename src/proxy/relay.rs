//! Live-streamed rescue as host actions: the upstream filter's stream, and the downstream filter's side.
//!
//! See `policy::relay` for the mechanism. The downstream filter offers a
//! journey when an attempt leaves (`offer`), picks it up when the
//! redirected request comes back through the listener (`claim`,
//! `route_next`, `replace_body`), and rescues with callouts when Envoy did
//! not follow the redirect (`not_followed`). `Relayer` is the upstream
//! filter's stream.

use crate::policy::answer::{self, AtHeaders, Head};
use crate::policy::classify::Outcome;
use crate::policy::config::StatusSet;
use crate::policy::journey::{JourneyRef, Stage};
use crate::policy::outbound::body_for;
use crate::policy::plan::{Attempt, Candidate};
use crate::policy::ratelimit;
use crate::policy::relay::{self, Entry, HandBack, Offer, Relays, Seen, RELAY_HEADER};
use crate::policy::rescue::{Move, Pending};
use crate::proxy::host::{find, Buffer, Host, Map};
use crate::proxy::plugin::Plugin;
use crate::proxy::rescue;
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::rc::Rc;

/// Envoy's id of the client connection.
pub const CONNECTION_ID: &[u8] = b"connection\0id";
/// Set by Envoy on a redirected request: the URL it was redirected from.
const ORIGINAL_URL: &str = "x-envoy-original-url";
/// Which roles this VM's root contexts took (a VM runs one thread; both
/// roles in one VM cannot work, see `Root::on_configure`).
#[derive(Default)]
pub struct Roles {
    pub downstream: u32,
    pub upstream: u32,
}

thread_local! {
    static VM_RELAYS: Rc<RefCell<Relays>> = Rc::new(RefCell::new(Relays::default()));
    static VM_ROLES: Rc<RefCell<Roles>> = Rc::new(RefCell::new(Roles::default()));
}

/// The relay table of the VM this thread runs.
pub fn vm_relays() -> Rc<RefCell<Relays>> {
    VM_RELAYS.with(Rc::clone)
}

/// The roles taken in the VM this thread runs.
pub fn vm_roles() -> Rc<RefCell<Roles>> {
    VM_ROLES.with(Rc::clone)
}

/// Names the journey on the request for the upstream filter: its token
/// (opened on its first attempt), what the request may still do, and the
/// client's URL.
pub fn offer<H: Host>(p: &Plugin<H>, j: &JourneyRef, now_ms: u64) {
    let Some(location) = relay::location(&j.borrow().headers) else {
        return;
    };
    let existing = j.borrow().relay;
    let token = match existing {
        Some(t) => t,
        None => {
            let entry = Entry {
                journey: j.clone(),
                connection: p.host.property_u64(CONNECTION_ID),
            };
            let seed = now_ms ^ (u64::from(j.borrow().ctx) << 32);
            let t = p.relays.borrow_mut().open(entry, seed);
            j.borrow_mut().relay = Some(t);
            t
        }
    };
    let offer = Offer {
        token,
        hints: relay::Hints::of(&j.borrow().flight, now_ms),
        location,
    };
    if let Err(e) = p
        .host
        .set_header(Map::RequestHeaders, RELAY_HEADER, offer.to_header().as_bytes())
    {
        log::debug!("cannot name the journey for the upstream filter (host status {})", e.0);
    }
}

/// A redirected request's journey, if its relay header (`value`) may be
/// honoured: the handed-back attempt is charged, and the journey now
/// belongs to stream `ctx`. With why it moves.
pub fn claim<H: Host>(p: &Plugin<H>, ctx: u32, value: &[u8], now_ms: u64) -> Option<(JourneyRef, Move, Outcome)> {
    let back = HandBack::parse(value)?;
    let connection = p.host.property_u64(CONNECTION_ID);
    let j = match p.relays.borrow().claim(back.token, connection) {
        Ok(e) => e.journey.clone(),
        Err(why) => {
            log::debug!("relay header not honoured: {why:?}");
            return None;
        }
    };
    p.add(p.stats.relayed, 1);
    let outcome = charge(p, &j, &back, now_ms);
    {
        let mut jb = j.borrow_mut();
        jb.ctx = ctx;
        jb.stage = Stage::Rescuing;
        jb.orphaned_ms = None;
    }
    p.journeys.borrow_mut().insert(ctx, j.clone());
    Some((j, back.why(), outcome))
}

/// Charges the attempt the upstream filter handed back; its outcome.
fn charge<H: Host>(p: &Plugin<H>, j: &JourneyRef, back: &HandBack, now_ms: u64) -> Outcome {
    let (outcome, stream_error) = back.outcome(&p.config.failure_statuses);
    let Some(attempt) = j.borrow().flight.current().copied() else {
        return outcome;
    };
    if j.borrow().flight.defers(&outcome) {
        j.borrow_mut().flight.pending.push(Pending {
            attempt,
            outcome,
            stream_error,
        });
    } else {
        p.record(&attempt, outcome, stream_error.as_deref(), now_ms);
    }
    outcome
}

/// Makes the redirected request's headers the next candidate's; `None` if
/// no candidate is left (the client has then been answered).
pub fn route_next<H: Host>(p: &Plugin<H>, j: &JourneyRef, why: Move, now_ms: u64) -> Option<Attempt> {
    let Some((attempt, candidate)) = rescue::choose(p, j, why, now_ms) else {
        rescue::give_up(p, j, now_ms);
        return None;
    };
    aim(p, j, attempt, &candidate, Stage::Resending, now_ms);
    log::debug!("relaying a request to vendor {}", p.vendor_name(attempt.vendor));
    Some(attempt)
}

/// Points the redirected request's headers at `candidate` and offers the
/// relay again; the journey goes on in `stage`.
fn aim<H: Host>(p: &Plugin<H>, j: &JourneyRef, attempt: Attempt, candidate: &Candidate, stage: Stage, now_ms: u64) {
    // The redirected request carries the last vendor's credentials and
    // routing: the edits take them out as they would a client's.
    let current = p.host.headers(Map::RequestHeaders).unwrap_or_default();
    let format = j.borrow().format;
    p.send_to(attempt.vendor, Some(candidate), format, &current);
    if find(&current, ORIGINAL_URL).is_some() {
        let _ = p.host.remove_header(Map::RequestHeaders, ORIGINAL_URL);
    }
    offer(p, j, now_ms);
    let mut jb = j.borrow_mut();
    jb.stage = stage;
    if jb.flight.stream {
        jb.first_token_deadline = p.config.rescue.first_token_ms.map(|ms| now_ms.saturating_add(ms));
    }
}

/// A redirected request held for a same-vendor retry, now due: sent to the
/// same vendor again by the router (its body is that vendor's already). If
/// the vendor may not take it now, the next candidate takes it, by the
/// router when its body is the same, else by a callout (the body can only
/// be replaced in a body callback); by a callout too when the body is not
/// all here.
pub fn retry<H: Host>(p: &Plugin<H>, j: &JourneyRef, body_in: bool, now_ms: u64) {
    if !body_in {
        j.borrow_mut().stage = Stage::Rescuing;
        rescue::next(p, j, Move::Failure, now_ms);
        return;
    }
    let Some((attempt, candidate)) = rescue::choose_same(p, j, now_ms).or_else(|| next_by_router(p, j, now_ms)) else {
        return; // sent by a callout, or answered
    };
    aim(p, j, attempt, &candidate, Stage::Routed, now_ms);
    log::debug!("retrying a request on vendor {}", p.vendor_name(attempt.vendor));
    if let Err(e) = p.host.resume_request() {
        log::warn!("cannot resume a request held for a retry (host status {})", e.0);
    }
}

/// The vendor may not take the held request now (ejected meanwhile): the
/// next candidate, returned if it takes the body the held request carries
/// (so the router can send it), else sent by a callout.
fn next_by_router<H: Host>(p: &Plugin<H>, j: &JourneyRef, now_ms: u64) -> Option<(Attempt, Candidate)> {
    let held_body = {
        let jb = j.borrow();
        jb.flight.current_candidate().map(|c| body_for(&jb, c))
    };
    j.borrow_mut().stage = Stage::Rescuing;
    let Some((attempt, candidate)) = rescue::choose(p, j, Move::Failure, now_ms) else {
        rescue::next(p, j, Move::Failure, now_ms);
        return None;
    };
    if held_body.is_some_and(|b| b == body_for(&j.borrow(), &candidate)) {
        return Some((attempt, candidate));
    }
    if !rescue::dispatch(p, j, attempt, &candidate, now_ms) {
        rescue::next(p, j, Move::Failure, now_ms);
    }
    None
}

/// Replaces the redirected request's body (as the last vendor took it)
/// with the one its candidate takes.
pub fn replace_body<H: Host>(p: &Plugin<H>, j: &JourneyRef, body_size: usize) {
    let body = {
        let jb = j.borrow();
        match jb.flight.current_candidate() {
            Some(c) => body_for(&jb, c),
            None => return,
        }
    };
    if p.host.set_buffer(Buffer::RequestBody, 0, body_size, &body).is_ok() {
        let len = body.len().to_string();
        let _ = p.host.set_header(Map::RequestHeaders, "content-length", len.as_bytes());
    }
}

/// An answer on the client's stream that is the upstream filter's hand-back
/// of this journey's attempt (a 307 naming its token): Envoy did not follow
/// it (the route has no `internal_redirect_policy` for 307, or the body was
/// past its buffer limit). The attempt is charged and the request rescued
/// with callouts, as without an upstream filter. `None` if it is no such
/// answer.
pub fn not_followed<H: Host>(
    p: &Plugin<H>,
    j: &JourneyRef,
    status: Option<u16>,
    headers: &[(String, Vec<u8>)],
    now_ms: u64,
) -> Option<Action> {
    let value = find(headers, RELAY_HEADER).filter(|_| status == Some(307))?;
    let back = HandBack::parse(value).filter(|b| Some(b.token) == j.borrow().relay)?;
    p.add(p.stats.relays_not_followed, 1);
    log::warn!(
        "Envoy did not follow the upstream filter's redirect: give the route an internal_redirect_policy with \
         redirect_response_codes [307] and response_headers_to_copy [{RELAY_HEADER}], and a buffer limit above the \
         request size; rescuing with a callout"
    );
    let outcome = charge(p, j, &back, now_ms);
    j.borrow_mut().stage = Stage::Rescuing;
    rescue::after_failure(p, j, &outcome, back.why(), now_ms);
    Some(Action::Pause)
}

/// Journeys whose stream ended with the attempt out and that no redirected
/// request picked up: the attempt says nothing (the client went away), and
/// the journey settles.
pub fn sweep<H: Host>(p: &Plugin<H>, now_ms: u64) {
    if p.relays.borrow().is_empty() {
        return;
    }
    let stale = p.relays.borrow_mut().sweep(now_ms);
    for e in stale {
        let attempt = e.journey.borrow().flight.current().copied();
        if let Some(a) = attempt {
            p.record(&a, Outcome::Neutral(None), None, now_ms);
        }
        rescue::settle(p, &e.journey, false, now_ms);
    }
}

/// One stream of the upstream filter: a request the router sent to a
/// vendor cluster.
///
/// It judges the answer at its headers only. Holding an upstream filter's
/// response headers does not work in Envoy 1.40: the body never reaches the
/// filter and the stream waits until the route's timeout (seen in this
/// project's spike). So a 200 stream whose first event is an error, and a
/// 400 that may be a context overflow, go on to the downstream filter,
/// which holds them and rescues them with callouts.
pub struct Relayer<H: Host> {
    host: H,
    /// The downstream filter's `failure_statuses` (given the same here).
    failure_statuses: Rc<StatusSet>,
    offer: Option<Offer>,
    /// The answer was handed back: the vendor's body is dropped.
    handed_back: bool,
}

impl<H: Host> Relayer<H> {
    pub fn new(host: H, failure_statuses: Rc<StatusSet>) -> Self {
        Relayer {
            host,
            failure_statuses,
            offer: None,
            handed_back: false,
        }
    }

    /// The journey the request belongs to, as the downstream filter named
    /// it; the relay header never reaches the vendor.
    pub fn on_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Ok(Some(value)) = self.host.header(Map::RequestHeaders, RELAY_HEADER) else {
            return Action::Continue;
        };
        let _ = self.host.remove_header(Map::RequestHeaders, RELAY_HEADER);
        self.offer = Offer::parse(&value);
        Action::Continue
    }

    pub fn on_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let headers = self.host.headers(Map::ResponseHeaders).unwrap_or_default();
        let status: Option<u16> = find(&headers, ":status").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
        // A vendor's own redirect is never followed through the gateway,
        // nor its relay header honoured.
        if status.is_some_and(|s| (300..400).contains(&s)) && find(&headers, "location").is_some() {
            let _ = self.host.remove_header(Map::ResponseHeaders, "location");
        }
        if find(&headers, RELAY_HEADER).is_some() {
            let _ = self.host.remove_header(Map::ResponseHeaders, RELAY_HEADER);
        }
        let Some(offer) = self.offer.take() else {
            return Action::Continue;
        };
        if status.is_some_and(|s| (200..300).contains(&s)) {
            return Action::Continue;
        }
        let now_ms = self.host.now_ms();
        let retry_after_ms = (status == Some(429))
            .then(|| {
                let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
                ratelimit::retry_after_ms(&pairs, now_ms)
            })
            .flatten();
        let head = Head {
            status,
            sse: find(&headers, "content-type").is_some_and(|ct| ct.starts_with(b"text/event-stream")),
            end_of_stream,
            retry_after_ms,
        };
        // A vendor's answer: Envoy's response flags have nothing to say.
        let decision = answer::at_headers(&head, &offer.hints, &self.failure_statuses, &mut || 0, &mut || now_ms);
        if let AtHeaders::Rescue { outcome, .. } = decision {
            self.hand_back(&offer, relay::seen_of(&outcome, status, retry_after_ms, None));
        }
        Action::Continue
    }

    pub fn on_response_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        if self.handed_back {
            let _ = self.host.set_buffer(Buffer::ResponseBody, 0, body_size, &[]);
        }
        Action::Continue
    }

    /// Turns the vendor's answer into a redirect back to the client's URL,
    /// naming the journey and what the vendor answered. If the status
    /// cannot be set the answer goes on as it is, and the downstream filter
    /// judges it as it would without this filter.
    fn hand_back(&mut self, offer: &Offer, seen: Seen) {
        let back = HandBack {
            token: offer.token,
            seen,
        };
        let set = |name: &str, value: &[u8]| self.host.set_header(Map::ResponseHeaders, name, value);
        if set(":status", b"307").is_err() {
            return;
        }
        let _ = set("location", offer.location.as_bytes());
        let _ = set(RELAY_HEADER, back.to_header().as_bytes());
        let _ = set("content-length", b"0");
        let _ = self.host.remove_header(Map::ResponseHeaders, "content-type");
        self.handed_back = true;
    }
}
