//! The glue of same-request failover (wasm only): adapting a request for a
//! vendor, holding a failed first answer back, rescuing the request with
//! HTTP callouts and answering the client from the filter.
//!
//! A request in a known API format is held in its headers until its body is
//! complete (Envoy's `allow_on_headers_stop_iteration`), so the model can
//! pick the route group and be rewritten for the vendor before the router
//! sees the request. The first attempt then goes through the router and
//! streams live; see `rescue` for when and how a request moves on.

use crate::policy::adapt;
use crate::policy::choice::{self, Choice};
use crate::policy::classify::{self, Observed, Outcome, Reason};
use crate::policy::config::{AllDown, Format, Vendor};
use crate::policy::plan::Planned;
use crate::policy::ratelimit;
use crate::policy::reply;
use crate::policy::rescue::{self, Flight, Move};
use crate::policy::sse::{self, Ending, Scanner};
use crate::policy::store;
use crate::proxy::filter::Plugin;
use crate::proxy::host::{self, SharedData, CALLOUT_HEADERS, REQUEST_HEADERS};
use crate::proxy::metrics;
use std::cell::RefCell;
use std::rc::Rc;

/// Request headers a client's credentials travel in; none reaches a vendor.
const CREDENTIAL_HEADERS: [&str; 4] = ["authorization", "x-api-key", "api-key", "x-goog-api-key"];
/// The `anthropic-version` sent when the client named none.
const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Headers not copied between a vendor's answer, a callout and the client.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "content-length",
    "proxy-connection",
    "trailer",
];

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
}

pub struct Journey {
    pub ctx: u32,
    pub stage: Stage,
    pub format: Option<Format>,
    pub flight: Flight,
    /// The client's request headers and body, as they arrived.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// When a streamed answer must have shown its first event.
    pub first_token_deadline: Option<u64>,
    /// The vendor the request was routed to at its headers, and how.
    pub at_headers: Option<(usize, Option<Planned>)>,
    /// Reads a held stream's first event.
    pub peek: Option<Scanner>,
    pub peek_fed: usize,
}

pub type JourneyRef = Rc<RefCell<Journey>>;

impl Journey {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
}

impl Plugin {
    /// Rewrites the request held in the router's path for `planned` on
    /// `vendor`: routing header, path, authority and credentials.
    pub fn adapt_headers(&self, vendor: &Vendor, planned: Option<&Planned>, format: Option<Format>, j: &Journey) {
        let set = |name: &str, value: &[u8]| {
            if let Err(e) = host::set_header(REQUEST_HEADERS, name, value) {
                log::debug!("cannot set {name} (host status {})", e.0);
            }
        };
        set(&self.config.cluster_header, vendor.cluster.as_bytes());
        // Only what differs from what the client sent costs a host call.
        if let Some(path) = planned.and_then(|p| p.path.as_deref()) {
            if j.header(":path") != Some(path.as_bytes()) {
                set(":path", path.as_bytes());
            }
        }
        if let Some(host_name) = vendor.host.as_deref() {
            if j.header(":authority") != Some(host_name.as_bytes()) {
                set(":authority", host_name.as_bytes());
            }
        }
        for name in CREDENTIAL_HEADERS {
            if j.header(name).is_some() {
                let _ = host::remove_header(REQUEST_HEADERS, name);
            }
        }
        for (name, value) in vendor_credentials(vendor, format, j) {
            set(name, value.as_bytes());
        }
    }

    /// The whole request for a callout to `vendor` per `planned`.
    fn callout_request(&self, j: &Journey, vendor: &Vendor, planned: &Planned) -> (Vec<(String, String)>, Vec<u8>) {
        let body = match &planned.model {
            Some(m) => adapt::with_model(&j.body, m).unwrap_or_else(|| j.body.clone()),
            None => j.body.clone(),
        };
        let mut headers: Vec<(String, String)> = Vec::with_capacity(j.headers.len() + 4);
        let path = planned
            .path
            .clone()
            .or_else(|| j.header(":path").map(|p| String::from_utf8_lossy(p).into_owned()));
        let authority = vendor
            .host
            .clone()
            .or_else(|| j.header(":authority").map(|a| String::from_utf8_lossy(a).into_owned()));
        headers.push((":method".into(), "POST".into()));
        headers.push((":path".into(), path.unwrap_or_else(|| "/".into())));
        headers.push((":authority".into(), authority.unwrap_or_else(|| vendor.cluster.clone())));
        for (name, value) in &j.headers {
            let skip = name.starts_with(':')
                || HOP_BY_HOP.contains(&name.as_str())
                || CREDENTIAL_HEADERS.contains(&name.as_str())
                || name == &self.config.cluster_header
                || name.starts_with("x-envoy-");
            // Header values that are not text cannot go through the callout API.
            if let (false, Ok(v)) = (skip, std::str::from_utf8(value)) {
                headers.push((name.clone(), v.to_string()));
            }
        }
        for (name, value) in vendor_credentials(vendor, j.format, j) {
            headers.push((name.to_string(), value));
        }
        (headers, body)
    }

    /// Moves a journey whose current attempt failed to the next candidate,
    /// or answers the client if none is left.
    pub fn rescue(&self, j: &JourneyRef, why: Move, now_ms: u64) {
        loop {
            let mut jb = j.borrow_mut();
            if !jb.flight.may_move(why, now_ms) {
                drop(jb);
                self.give_up(j, now_ms);
                return;
            }
            let cands = jb.flight.next_cands(why);
            let tried = jb.flight.tried_units();
            let choice = self.pick(&cands, AllDown::Reject, &mut || now_ms, &tried, true);
            let Choice::Route {
                unit, vendor, ticket, ..
            } = choice
            else {
                // Every candidate left is ejected or busy probing.
                drop(jb);
                self.give_up(j, now_ms);
                return;
            };
            let Some(planned) = jb.flight.start(unit, vendor, ticket).cloned() else {
                continue;
            };
            let Some(v) = self.config.vendors.get(vendor) else {
                continue;
            };
            let (headers, body) = self.callout_request(&jb, v, &planned);
            let header_refs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            match host::dispatch(&v.cluster, header_refs, &body, jb.flight.time_left(now_ms)) {
                Ok(token) => {
                    self.callouts.borrow_mut().insert(token, jb.ctx);
                    metrics::add(self.stats.rescue_attempts, 1);
                    log::debug!("rescuing a request with vendor {}", v.name);
                    return;
                }
                Err(e) => {
                    // The callout could not even start (the cluster is gone):
                    // that attempt failed; the next candidate may serve.
                    log::debug!("cannot send a rescue to {} (host status {})", v.cluster, e.0);
                    self.mark_missing(vendor);
                }
            }
        }
    }

    /// A rescue callout answered (in the context that dispatched it).
    pub fn on_callout(&self, token: u32, num_headers: usize, body_size: usize) {
        let Some(ctx) = self.callouts.borrow_mut().remove(&token) else {
            return;
        };
        let Some(j) = self.journeys.borrow().get(&ctx).cloned() else {
            return; // the client went away meanwhile
        };
        if j.borrow().stage != Stage::Rescuing {
            return;
        }
        let _ = host::set_effective_context(ctx);
        let now_ms = self.now();
        let headers = if num_headers > 0 {
            host::header_pairs(CALLOUT_HEADERS).unwrap_or_default()
        } else {
            Vec::new()
        };
        let body = host::callout_body(body_size).ok().flatten().unwrap_or_default();
        let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice());
        let status: Option<u16> = get(":status").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
        let sse_answer = get("content-type").is_some_and(|ct| ct.starts_with(b"text/event-stream"));
        let stream = (sse_answer && status.is_some_and(|s| s < 300)).then(|| {
            let mut sc = Scanner::with_dialect(j.borrow().format.map(sse::dialect_of));
            sc.feed(&body);
            sc.finish()
        });
        let kind = match &stream {
            Some(Ending::Error(e)) => Some(e.kind.clone()),
            _ => None,
        };
        let outcome = match status {
            // No answer at all: the callout timed out, or the connection failed.
            None => {
                let late = now_ms >= j.borrow().flight.deadline_ms;
                Outcome::Failure(if late { Reason::Timeout } else { Reason::Reset })
            }
            Some(s) => {
                let retry_after_ms = (s == 429).then(|| {
                    let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
                    ratelimit::retry_after_ms(&pairs, now_ms)
                });
                let seen = Observed {
                    status: Some(s),
                    stream,
                    retry_after_ms: retry_after_ms.flatten(),
                    ..Observed::default()
                };
                classify::classify(&seen, &self.config.failure_statuses, &self.config.slow)
            }
        };
        let overflow = status == Some(400) && adapt::is_context_overflow(400, &body);
        let (unit, vendor, ticket) = match j.borrow().flight.current() {
            Some(a) => (a.unit, a.vendor, a.ticket),
            None => return,
        };
        self.record_attempt(unit, vendor, ticket, false, outcome, kind.as_deref(), now_ms);
        let why = rescue::moves(&outcome).or(overflow.then_some(Move::ContextOverflow));
        match why {
            Some(why) if j.borrow().flight.may_move(why, now_ms) => self.rescue(&j, why, now_ms),
            Some(Move::Failure) => self.give_up(&j, now_ms),
            _ => match status {
                Some(s) => self.deliver(&j, s, &headers, &body),
                None => self.give_up(&j, now_ms),
            },
        }
    }

    /// Answers the client with a rescue's answer.
    fn deliver(&self, j: &JourneyRef, status: u16, headers: &[(String, Vec<u8>)], body: &[u8]) {
        let (vendor, attempts, tried) = {
            let jb = j.borrow();
            let names: Vec<&str> = jb.flight.tried_vendors().iter().map(|&v| self.vendor_name(v)).collect();
            let vendor = jb
                .flight
                .current()
                .map(|a| self.vendor_name(a.vendor))
                .unwrap_or_default();
            (
                vendor.to_string(),
                jb.flight.attempts.len().to_string(),
                names.join(","),
            )
        };
        let mut out: Vec<(&str, &[u8])> = headers
            .iter()
            .filter(|(n, _)| !n.starts_with(':') && !HOP_BY_HOP.contains(&n.as_str()) && !n.starts_with("x-envoy-"))
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        if let Some(h) = &self.config.vendor_header {
            out.push((h.as_str(), vendor.as_bytes()));
        }
        out.push((ATTEMPTS_HEADER, attempts.as_bytes()));
        out.push((TRIED_HEADER, tried.as_bytes()));
        if send_own_reply(j, u32::from(status), &out, body, "llm_failover_rescued") {
            metrics::add(self.stats.rescued, 1);
            log::debug!("request rescued by {vendor} after {attempts} attempts ({tried})");
        }
    }

    /// Answers 503 in the client's format: every candidate failed or is out.
    pub fn give_up(&self, j: &JourneyRef, now_ms: u64) {
        let (format, plan_units, tried) = {
            let jb = j.borrow();
            let units: Vec<(usize, usize)> = jb.flight.plan.iter().map(|p| (p.cand.unit, p.cand.vendor)).collect();
            (jb.format, units, jb.flight.tried_vendors())
        };
        let mut due = Vec::new();
        for (unit, vendor) in plan_units {
            let Some(key) = self.keys.get(unit) else {
                continue;
            };
            if let Ok(loaded) = store::load(&SharedData, key, self.rules.window) {
                if let crate::policy::health::Availability::Unavailable { due_ms } =
                    loaded.state.availability(now_ms, &self.rules)
                {
                    due.push(choice::Due { unit, vendor, due_ms });
                }
            }
        }
        due.sort_by_key(|d| d.due_ms);
        let r = reply::unavailable(format, &self.config, &due, now_ms, &tried);
        let retry_after = r.retry_after_s.to_string();
        let names: Vec<&str> = tried.iter().map(|&v| self.vendor_name(v)).collect();
        let tried_list = names.join(",");
        let attempts = tried.len().to_string();
        let headers: [(&str, &[u8]); 4] = [
            ("content-type", b"application/json"),
            ("retry-after", retry_after.as_bytes()),
            (ATTEMPTS_HEADER, attempts.as_bytes()),
            (TRIED_HEADER, tried_list.as_bytes()),
        ];
        if send_own_reply(
            j,
            r.status,
            &headers,
            r.body.as_bytes(),
            "llm_failover_all_vendors_unavailable",
        ) {
            metrics::add(self.stats.rescues_failed, 1);
        }
    }

    /// Abandons first attempts whose stream has not shown its first event in
    /// time (from the tick: a stream has no timer of its own).
    pub fn check_first_tokens(&self, now_ms: u64) {
        let late: Vec<JourneyRef> = self
            .journeys
            .borrow()
            .values()
            .filter(|j| {
                let jb = j.borrow();
                matches!(jb.stage, Stage::Routed | Stage::Peeking)
                    && jb.first_token_deadline.is_some_and(|d| now_ms >= d)
                    && jb.flight.may_move(Move::Failure, now_ms)
            })
            .cloned()
            .collect();
        for j in late {
            let ctx = j.borrow().ctx;
            if host::set_effective_context(ctx).is_err() {
                continue;
            }
            let (unit, vendor, ticket) = match j.borrow().flight.current() {
                Some(a) => (a.unit, a.vendor, a.ticket),
                None => continue,
            };
            self.record_attempt(
                unit,
                vendor,
                ticket,
                false,
                Outcome::Failure(Reason::Timeout),
                None,
                now_ms,
            );
            {
                let mut jb = j.borrow_mut();
                jb.stage = Stage::Rescuing;
                jb.first_token_deadline = None;
            }
            metrics::add(self.stats.first_token_timeouts, 1);
            self.rescue(&j, Move::Failure, now_ms);
        }
    }

    /// Requests held in their headers whose body never came: Envoy is not
    /// letting the filter read bodies (`allow_on_headers_stop_iteration` is
    /// off). Let them go as routed at their headers, and stop holding.
    pub fn release_stuck(&self, now_ms: u64) {
        let stuck: Vec<JourneyRef> = self
            .journeys
            .borrow()
            .values()
            .filter(|j| matches!(j.borrow().stage, Stage::Buffering { since_ms } if now_ms.saturating_sub(since_ms) >= 1_000))
            .cloned()
            .collect();
        if !stuck.is_empty() && !self.no_body_access.get() {
            self.no_body_access.set(true);
            log::warn!(
                "request bodies are not reaching the filter: set allow_on_headers_stop_iteration: true in the wasm \
                 filter's config to enable model-based routing, body rewriting and same-request failover; \
                 until then requests are routed at their headers"
            );
        }
        for j in stuck {
            let ctx = j.borrow().ctx;
            // Passed first: resuming may deliver the body at once.
            j.borrow_mut().stage = Stage::Passed;
            if host::set_effective_context(ctx).is_ok() {
                let jb = j.borrow();
                if let Some((vendor, planned)) = &jb.at_headers {
                    if let Some(v) = self.config.vendors.get(*vendor) {
                        self.adapt_headers(v, planned.as_ref(), jb.format, &jb);
                    }
                }
                drop(jb);
                let _ = host::resume_request();
            }
        }
    }
}

/// Sends the filter's own answer for a journey. The answer passes through
/// this stream's own response callbacks at once, which must let it by: the
/// journey says `Replying`, and no borrow is held across the call.
pub fn send_own_reply(j: &JourneyRef, status: u32, headers: &[(&str, &[u8])], body: &[u8], details: &str) -> bool {
    // Envoy may pass the answer through the encoders now or once the current
    // callback returns: the stage stays `Replying` from here on.
    j.borrow_mut().stage = Stage::Replying;
    match host::send_response(status, headers, body, details) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("cannot send the filter's answer (host status {})", e.0);
            false
        }
    }
}

pub const ATTEMPTS_HEADER: &str = "x-llm-failover-attempts";
pub const TRIED_HEADER: &str = "x-llm-failover-tried";

/// The vendor's credentials for a request in `format`.
fn vendor_credentials(vendor: &Vendor, format: Option<Format>, j: &Journey) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(key) = &vendor.api_key {
        match format {
            Some(Format::Anthropic) => out.push(("x-api-key", key.expose().to_string())),
            _ => out.push(("authorization", format!("Bearer {}", key.expose()))),
        }
    }
    if format == Some(Format::Anthropic) && j.header("anthropic-version").is_none() {
        out.push(("anthropic-version", ANTHROPIC_VERSION.to_string()));
    }
    out
}
