//! One HTTP stream's callbacks, each asking the policy and mapping its answer to host calls.
//!
//! The policy modules asked are `journey`, `answer` and `observe`.
//!
//! Per request: the request headers choose the vendor and write its
//! cluster into the routing header (a request in a known API format is
//! first held until its body is complete, so its model can choose the
//! route); the response callbacks judge the first attempt's answer (pass,
//! peek, inspect, or hold and rescue) and watch it pass; `on_log`, which
//! Envoy calls once when the stream ends however it ends, records the
//! outcome.

use crate::policy::adapt;
use crate::policy::answer::{self, AtHeaders, AtInspect, AtPeek, Head};
use crate::policy::choice::{Ask, Choice};
use crate::policy::classify::{self, Observed, Outcome};
use crate::policy::config::Format;
use crate::policy::journey::{self, Arrival, Aside, BodyAccess, BodyStep, Journey, JourneyRef, Stage, BUFFERED_HEADER};
use crate::policy::observe::Watch;
use crate::policy::outbound;
use crate::policy::plan::{self, Attempt, Unserved};
use crate::policy::ratelimit;
use crate::policy::relay::RELAY_HEADER;
use crate::policy::reply;
use crate::policy::rescue::{Flight, Move, Pending};
use crate::policy::resume::{End, Follow};
use crate::policy::sse::{self, Scanner};
use crate::proxy::admin;
use crate::proxy::host::{find, Buffer, Host, Map, RESPONSE_CODE, RESPONSE_FLAGS};
use crate::proxy::plugin::Plugin;
use crate::proxy::relay;
use crate::proxy::rescue;
use crate::proxy::resume::{self, Continuing};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::rc::Rc;

pub struct Stream<H: Host> {
    plugin: Option<Rc<Plugin<H>>>,
    ctx: u32,
    /// Where the router's attempt went, until its outcome is recorded.
    routed: Option<Attempt>,
    /// Set for requests in a known API format that may be adapted and rescued.
    journey: Option<JourneyRef>,
    watch: Watch,
    /// The API format the request's path speaks, if any.
    format: Option<Format>,
    /// Envoy's own reply for a failed vendor, said again in the client's
    /// format: the body that replaces Envoy's text.
    retold: Option<Vec<u8>>,
    /// A 2xx stream followed event by event, for a continuation if it fails
    /// after content reached the client (`policy::resume`).
    follow: Option<Follow>,
    /// That continuation, in flight.
    continuing: Option<Continuing>,
}

impl<H: Host> Stream<H> {
    pub fn new(plugin: Option<Rc<Plugin<H>>>, ctx: u32) -> Self {
        Stream {
            plugin,
            ctx,
            routed: None,
            journey: None,
            watch: Watch::default(),
            format: None,
            retold: None,
            follow: None,
            continuing: None,
        }
    }

    fn stage(&self) -> Option<Stage> {
        self.journey.as_ref().map(|j| j.borrow().stage)
    }

    fn set_stage(&self, stage: Stage) {
        if let Some(j) = &self.journey {
            j.borrow_mut().stage = stage;
        }
    }

    /// While the filter answers the client itself, the response callbacks
    /// stay out of the way.
    fn aside(&self) -> Option<Action> {
        match self.stage()?.aside()? {
            Aside::LetBy => Some(Action::Continue),
            Aside::Hold => Some(Action::Pause),
        }
    }

    pub fn on_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(p) = self.plugin.clone() else {
            return Action::Continue;
        };
        let now_ms = p.now();
        self.watch = Watch::new(now_ms);
        self.watch.request_complete = end_of_stream;
        // One host call for every header: the path names the API format,
        // and a rescue replays the rest.
        let mut headers = p.host.headers(Map::RequestHeaders).unwrap_or_default();
        if p.config.admin.is_some() && admin::serve(&p, &headers) {
            return Action::Pause; // an operator's request, answered
        }
        if let Some(value) = find(&headers, RELAY_HEADER).map(<[u8]>::to_vec) {
            let _ = p.host.remove_header(Map::RequestHeaders, RELAY_HEADER);
            if let Some(action) = self.continue_journey(&p, &value, end_of_stream, now_ms) {
                return action;
            }
            // Not a redirect this VM handed back: a client's header, ignored.
            headers.retain(|(n, _)| n != RELAY_HEADER);
        }
        let format = find(&headers, ":path").and_then(Format::of_path);
        self.format = format;
        let declared_len =
            find(&headers, "content-length").and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok());
        let arrival = Arrival {
            format,
            declared_len,
            end_of_stream,
        };
        let bodies_wanted = p.reads_bodies && p.body_access.get() != BodyAccess::Missing;
        let intake = journey::intake(&arrival, p.config.rescue.max_body_bytes, bodies_wanted);
        if intake.too_large {
            p.add(p.stats.body_too_large, 1);
            if !journey::unread_body_routable(&p.config) {
                let r = reply::too_large(format, p.config.rescue.max_body_bytes);
                let headers: [(&str, &[u8]); 1] = [("content-type", b"application/json")];
                if let Err(e) = p
                    .host
                    .send_response(r.status, &headers, r.body.as_bytes(), "llm_failover_too_large")
                {
                    log::warn!("cannot refuse a request too large to read (host status {})", e.0);
                }
                return Action::Pause;
            }
        }
        let buffered_asked = match find(&headers, BUFFERED_HEADER) {
            Some(v) => {
                let asked = journey::asks_buffering(v);
                let _ = p.host.remove_header(Map::RequestHeaders, BUFFERED_HEADER);
                headers.retain(|(n, _)| n != BUFFERED_HEADER);
                asked
            }
            None => false,
        };
        let mut journey = Journey::new(self.ctx, now_ms, format, headers, &p.config);
        journey.buffered = buffered_asked;
        if !intake.hold {
            let Some((attempt, _)) = p.route_unread(&journey, now_ms) else {
                return Action::Pause; // answered already
            };
            self.routed = Some(attempt);
            return Action::Continue;
        }
        // Held for its body, which chooses the route: nothing is chosen now
        // (should it go unread after all, it is chosen then by its headers).
        let j = Rc::new(RefCell::new(journey));
        p.journeys.borrow_mut().insert(self.ctx, j.clone());
        self.journey = Some(j);
        Action::Pause
    }

    /// A request the upstream filter handed back to the router, come
    /// through the listener again: its journey goes on to the next
    /// candidate. `None` if `relay_value` names no such journey.
    fn continue_journey(
        &mut self,
        p: &Plugin<H>,
        relay_value: &[u8],
        end_of_stream: bool,
        now_ms: u64,
    ) -> Option<Action> {
        let (j, why, outcome) = relay::claim(p, self.ctx, relay_value, now_ms)?;
        self.format = j.borrow().format;
        self.journey = Some(j.clone());
        if why == Move::Failure {
            if let Some(wait) = rescue::same_vendor_wait(p, &j, &outcome, now_ms) {
                // Held in its headers until the same vendor may take it again.
                j.borrow_mut().stage = Stage::Waiting { body_in: end_of_stream };
                rescue::schedule_retry(p, &j, now_ms.saturating_add(wait));
                return Some(Action::Pause);
            }
        }
        let Some(attempt) = relay::route_next(p, &j, why, now_ms) else {
            return Some(Action::Pause); // answered: nothing left to try
        };
        self.routed = Some(attempt);
        if end_of_stream {
            self.set_stage(Stage::Routed);
            return Some(Action::Continue);
        }
        Some(Action::Pause)
    }

    pub fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.watch.request_complete |= end_of_stream;
        let (Some(p), Some(j)) = (self.plugin.clone(), self.journey.clone()) else {
            return Action::Continue;
        };
        let stage = j.borrow().stage;
        if let Stage::Waiting { .. } = stage {
            // Held for a same-vendor retry: the body is the one that vendor
            // takes already; the tick lets it go.
            if end_of_stream {
                j.borrow_mut().stage = Stage::Waiting { body_in: true };
            }
            return Action::Pause;
        }
        if stage == Stage::Resending {
            // A redirected request's body, as the last vendor took it.
            if !end_of_stream {
                return Action::Pause;
            }
            relay::replace_body(&p, &j, body_size);
            j.borrow_mut().stage = Stage::Routed;
            return Action::Continue;
        }
        if !matches!(stage, Stage::Buffering { .. }) {
            return Action::Continue;
        }
        j.borrow_mut().body_callbacks += 1;
        p.body_access.set(BodyAccess::Seen);
        match journey::body_step(body_size, end_of_stream, &p.config) {
            BodyStep::TooLarge => {
                p.add(p.stats.body_too_large, 1);
                let format = j.borrow().format;
                if !journey::unread_body_routable(&p.config) {
                    let r = reply::too_large(format, p.config.rescue.max_body_bytes);
                    p.refuse(&j, r, "llm_failover_too_large");
                    return Action::Pause;
                }
                // Too large to hold: it goes as routed by its headers, with
                // the vendor's key and never the client's, its body
                // untouched, without rescue.
                j.borrow_mut().stage = Stage::Passed;
                let now_ms = p.now();
                let route = p.route_unread(&j.borrow(), now_ms);
                match route {
                    Some((attempt, candidate)) => {
                        self.routed = Some(attempt);
                        j.borrow_mut().at_headers = Some((attempt, candidate));
                        Action::Continue
                    }
                    None => Action::Pause, // answered already
                }
            }
            BodyStep::Wait => Action::Pause,
            BodyStep::Complete => self.route_with_body(&p, &j, body_size),
        }
    }

    /// The request body is complete: pick the route by its model, adapt the
    /// request for the vendor, and let it go to the router.
    fn route_with_body(&mut self, p: &Plugin<H>, j: &JourneyRef, body_size: usize) -> Action {
        let body = p
            .host
            .buffer(Buffer::RequestBody, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let format = j.borrow().format;
        let request = match adapt::read_request(&body) {
            Ok(request) => request,
            Err(why) => {
                // Never forward a body whose model could be read two ways.
                p.add(p.stats.unreadable_bodies, 1);
                p.refuse(
                    j,
                    reply::bad_request(format, &why.message()),
                    "llm_failover_unreadable_body",
                );
                return Action::Pause;
            }
        };
        let stream = request.stream;
        if let Some(model) = &request.model {
            p.note_model(model);
        }
        let started = self.watch.start_ms.unwrap_or_default();
        let candidates = match plan::plan(&p.config, format, request.model.as_deref()) {
            Ok(candidates) => candidates,
            Err(Unserved::Model(m)) => {
                p.add(p.stats.model_not_served, 1);
                p.refuse(j, reply::model_not_served(format, &m), "llm_failover_model_not_served");
                return Action::Pause;
            }
        };
        {
            let mut jb = j.borrow_mut();
            jb.flight = Flight::new(format, stream, candidates, started, &p.config.rescue);
            jb.body = body;
            jb.request = Some(request);
        }
        let choice = {
            let jb = j.borrow();
            let requested = jb.request.as_ref().and_then(|r| r.model.as_deref());
            let ask = Ask {
                requested,
                ..Ask::first(&jb.flight.plan, p.all_down())
            };
            p.pick(&ask, &mut || p.now())
        };
        match choice {
            Choice::Route { attempt, .. } => {
                let candidate = j.borrow_mut().flight.start(attempt).cloned();
                let buffered = {
                    let mut jb = j.borrow_mut();
                    let model = jb.request.as_ref().and_then(|r| r.model.clone());
                    jb.buffered = journey::buffered(&p.config, jb.buffered, model.as_deref(), attempt.vendor);
                    jb.buffered
                };
                if let (true, Some(c)) = (buffered, &candidate) {
                    // Answered whole: the first attempt is a callout too.
                    j.borrow_mut().stage = Stage::Rescuing;
                    p.add(p.stats.buffered, 1);
                    if !rescue::dispatch(p, j, attempt, c, started) {
                        rescue::next(p, j, Move::Failure, started);
                    }
                    return Action::Pause;
                }
                {
                    let jb = j.borrow();
                    p.send_to(attempt.vendor, candidate.as_ref(), format, &jb.headers);
                    let rewritten = candidate
                        .as_ref()
                        .and_then(|c| c.model.as_deref())
                        .and_then(|m| jb.request.as_ref()?.with_model(&jb.body, m));
                    if let Some(new_body) = rewritten {
                        // Keep the length the router sends right.
                        if p.host.set_buffer(Buffer::RequestBody, 0, body_size, &new_body).is_ok() {
                            let len = new_body.len().to_string();
                            let _ = p.host.set_header(Map::RequestHeaders, "content-length", len.as_bytes());
                        }
                    }
                }
                self.routed = Some(attempt);
                if p.config.rescue.relay {
                    relay::offer(p, j, started);
                }
                let mut jb = j.borrow_mut();
                jb.stage = Stage::Routed;
                if stream {
                    jb.first_token_deadline = p.config.rescue.first_token_ms.map(|ms| started.saturating_add(ms));
                }
                Action::Continue
            }
            Choice::Reject { due, now_ms } => {
                p.reject(format, &due, now_ms, Some(j));
                Action::Pause
            }
            Choice::Nothing => Action::Continue,
        }
    }

    /// Holds the current attempt's answer and moves the request on.
    fn start_rescue(&mut self, p: &Plugin<H>, outcome: Outcome, why: Move, kind: Option<&str>, now_ms: u64) -> Action {
        let (Some(j), Some(attempt)) = (self.journey.clone(), self.routed) else {
            return Action::Continue;
        };
        p.record(&attempt, outcome, kind, now_ms);
        j.borrow_mut().stage = Stage::Rescuing;
        rescue::after_failure(p, &j, &outcome, why, now_ms);
        Action::Pause
    }

    /// The router's attempt is the journey's current one: a retry the tick
    /// sent on (`relay::retry`), or a request the tick released unread
    /// (`rescue::release_stuck`), started it outside this stream's callbacks.
    fn sync_routed(&mut self) {
        if let Some(j) = &self.journey {
            let jb = j.borrow();
            if matches!(jb.stage, Stage::Routed | Stage::Peeking | Stage::Inspecting) {
                if let Some(a) = jb.flight.current() {
                    self.routed = Some(*a);
                }
            }
            if self.routed.is_none() {
                self.routed = jb.at_headers.as_ref().map(|(a, _)| *a);
            }
        }
    }

    pub fn on_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.watch.complete |= end_of_stream;
        self.sync_routed();
        let (Some(p), Some(routed)) = (self.plugin.clone(), self.routed) else {
            return Action::Continue;
        };
        if let Some(action) = self.aside() {
            return action;
        }
        // One host call for every header: the status, and what decides how
        // the answer is read.
        let headers = p.host.headers(Map::ResponseHeaders).unwrap_or_default();
        let status: Option<u16> = find(&headers, ":status").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
        if let Some(j) = self.journey.clone().filter(|j| j.borrow().relay.is_some()) {
            if let Some(action) = relay::not_followed(&p, &j, status, &headers, p.now()) {
                return action;
            }
        }
        let sse = find(&headers, "content-type").is_some_and(|ct| ct.starts_with(b"text/event-stream"));
        self.watch.status = status;
        // A vendor must not speak for the filter.
        for name in outbound::forged(&headers, p.config.vendor_header.as_deref()) {
            let _ = p.host.remove_header(Map::ResponseHeaders, name);
        }
        let stream_2xx = status.is_some_and(|s| (200..300).contains(&s)) && sse;
        // The filter may append an error event to a cut stream: a declared
        // length would then be wrong.
        if stream_2xx && find(&headers, "content-length").is_some() {
            let _ = p.host.remove_header(Map::ResponseHeaders, "content-length");
        }
        if status == Some(429) {
            let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
            self.watch.retry_after_ms = ratelimit::retry_after_ms(&pairs, p.now());
        }
        let flags = std::cell::OnceCell::new();
        let read_flags = || *flags.get_or_init(|| p.host.property_u64(RESPONSE_FLAGS).unwrap_or(0));
        // The first attempt's answer, before any byte of it reached the
        // client. A second one while the first is held (peeked at or
        // inspected) is Envoy's own reply: the held attempt broke.
        let held = matches!(self.stage(), Some(Stage::Routed | Stage::Peeking | Stage::Inspecting));
        if let (true, Some(j)) = (held, self.journey.clone()) {
            let head = Head {
                status,
                sse,
                end_of_stream,
                retry_after_ms: self.watch.retry_after_ms,
            };
            let decision = {
                let jb = j.borrow();
                answer::at_headers(
                    &head,
                    &jb.flight,
                    &p.config.failure_statuses,
                    &mut || read_flags(),
                    &mut || p.now(),
                )
            };
            match decision {
                AtHeaders::Rescue { outcome, why, now_ms } => {
                    return self.start_rescue(&p, outcome, why, None, now_ms);
                }
                AtHeaders::Inspect => {
                    self.set_stage(Stage::Inspecting);
                    return Action::Pause;
                }
                AtHeaders::Peek => {
                    let mut jb = j.borrow_mut();
                    jb.stage = Stage::Peeking;
                    jb.peek = Some(Scanner::new());
                    return Action::Pause;
                }
                AtHeaders::Pass => self.set_stage(Stage::Passed),
            }
        }
        if stream_2xx {
            self.watch.scanner = Some(Scanner::new());
            self.follow_if_continuable(&p);
        }
        // Envoy's own plain-text reply for a vendor that gave no answer is
        // said again in the client's API format.
        let format = self.format;
        if format.is_some()
            && !end_of_stream
            && status.is_some_and(|s| s >= 500)
            && classify::envoy_answered(read_flags())
        {
            let seen = Observed {
                status,
                flags: read_flags(),
                ..Observed::default()
            };
            let reason = match classify::classify(&seen, &p.config.failure_statuses, &p.config.slow) {
                Outcome::Failure(r) => r.name(),
                _ => "reset",
            };
            let r = reply::vendor_failed(
                format,
                u32::from(status.unwrap_or(503)),
                p.vendor_name(routed.vendor),
                reason,
            );
            let _ = p
                .host
                .set_header(Map::ResponseHeaders, "content-type", b"application/json");
            let _ = p.host.remove_header(Map::ResponseHeaders, "content-length");
            self.retold = Some(r.body.into_bytes());
        }
        if end_of_stream {
            self.watch.first_byte(p.now());
        }
        self.name_vendor(&p, routed)
    }

    /// Names the vendor that answered on the response, and lets it go; a
    /// relayed request's answer also says how many attempts it took and
    /// which vendors were tried.
    fn name_vendor(&self, p: &Plugin<H>, routed: Attempt) -> Action {
        if let (Some(header), Some(v)) = (&p.config.vendor_header, p.config.vendors.get(routed.vendor)) {
            let _ = p.host.set_header(Map::ResponseHeaders, header, v.name.as_bytes());
        }
        if let Some(j) = &self.journey {
            let jb = j.borrow();
            if jb.flight.attempts.len() > 1 {
                let names: Vec<&str> = jb.flight.tried_vendors().iter().map(|&v| p.vendor_name(v)).collect();
                let attempts = jb.flight.attempts.len().to_string();
                let _ = p
                    .host
                    .set_header(Map::ResponseHeaders, outbound::ATTEMPTS_HEADER, attempts.as_bytes());
                let _ = p
                    .host
                    .set_header(Map::ResponseHeaders, outbound::TRIED_HEADER, names.join(",").as_bytes());
                if self.watch.status.is_some_and(|s| s < 400) {
                    p.add(p.stats.rescued, 1);
                }
            }
        }
        Action::Continue
    }

    pub fn on_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.watch.complete |= end_of_stream;
        let (Some(p), Some(routed)) = (self.plugin.clone(), self.routed) else {
            return Action::Continue;
        };
        match self.stage() {
            Some(Stage::Rescuing) => {
                // The failed answer is never sent: keep none of it, so a
                // large one cannot fill Envoy's buffer.
                let _ = p.host.set_buffer(Buffer::ResponseBody, 0, body_size, &[]);
                return Action::Pause;
            }
            Some(Stage::Inspecting) => {
                let body = p
                    .host
                    .buffer(Buffer::ResponseBody, body_size)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                match answer::at_inspect(&body, end_of_stream) {
                    AtInspect::Wait => return Action::Pause,
                    AtInspect::Rescue(outcome) => {
                        let now_ms = p.now();
                        return self.start_rescue(&p, outcome, Move::ContextOverflow, None, now_ms);
                    }
                    AtInspect::Release => {
                        self.set_stage(Stage::Passed);
                        return self.name_vendor(&p, routed);
                    }
                }
            }
            Some(Stage::Peeking) => return self.peek(&p, routed, body_size, end_of_stream),
            _ => {}
        }
        if let Some(action) = self.aside() {
            return action;
        }
        if let Some(text) = self.retold.take() {
            // Envoy's plain text, replaced by the client-format error.
            let _ = p.host.set_buffer(Buffer::ResponseBody, 0, body_size, &text);
            if !end_of_stream {
                self.retold = Some(Vec::new());
            }
            return Action::Continue;
        }
        if self.follow.is_some() {
            let bytes = p
                .host
                .buffer(Buffer::ResponseBody, body_size)
                .ok()
                .flatten()
                .unwrap_or_default();
            // Timed by the watch; scanned by the follower (one scan).
            let now_ms = p.now();
            self.watch.chunk(now_ms, body_size);
            return self.follow_chunk(&p, routed, &bytes, body_size, end_of_stream);
        }
        if !self.watch.wants_chunk(body_size) {
            return Action::Continue;
        }
        let now_ms = p.now();
        if self.watch.chunk(now_ms, body_size) {
            if let Ok(Some(bytes)) = p.host.buffer(Buffer::ResponseBody, body_size) {
                self.watch.feed(&bytes);
            }
        }
        if end_of_stream {
            self.finish_stream(&p, routed, body_size);
        }
        Action::Continue
    }

    /// A held 200 stream: wait for its first event; rescue if it is an error
    /// (or the stream ends without one), release it otherwise.
    fn peek(&mut self, p: &Plugin<H>, routed: Attempt, body_size: usize, end_of_stream: bool) -> Action {
        let Some(j) = self.journey.clone() else {
            return Action::Continue;
        };
        let now_ms = p.now();
        // While held, each call sees everything buffered so far.
        let bytes = p
            .host
            .buffer(Buffer::ResponseBody, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let decision = {
            let mut jb = j.borrow_mut();
            let fed = jb.peek_fed.min(bytes.len());
            jb.peek_fed = bytes.len();
            let dialect = jb.format.map(sse::dialect_of);
            let may_move = jb.flight.may_move(Move::Failure, now_ms);
            let Some(sc) = jb.peek.as_mut() else {
                return Action::Continue;
            };
            sc.feed(bytes.get(fed..).unwrap_or_default());
            let ending = end_of_stream.then(|| {
                sc.set_dialect_if_unknown(dialect);
                sc.clone_finish()
            });
            answer::at_peek(sc, ending.as_ref(), end_of_stream, may_move, bytes.len())
        };
        match decision {
            AtPeek::Wait => Action::Pause,
            AtPeek::Rescue { outcome, kind } => self.start_rescue(p, outcome, Move::Failure, kind.as_deref(), now_ms),
            AtPeek::Release => {
                let scanner = {
                    let mut jb = j.borrow_mut();
                    jb.stage = Stage::Passed;
                    jb.peek.take()
                };
                self.watch.resume_stream(scanner, now_ms, body_size);
                self.follow_if_continuable(p);
                if self.follow.is_some() {
                    // The held bytes go on through the follower like any chunk.
                    let action = self.follow_chunk(p, routed, &bytes, body_size, end_of_stream);
                    let _ = self.name_vendor(p, routed);
                    return action;
                }
                if end_of_stream {
                    self.finish_stream(p, routed, body_size);
                }
                self.name_vendor(p, routed)
            }
        }
    }

    /// Follows a 2xx stream event by event when it could be continued
    /// should it fail after content reached the client.
    fn follow_if_continuable(&mut self, p: &Plugin<H>) {
        if let Some(j) = &self.journey {
            if let Some(format) = resume::may_continue(p, j) {
                log::trace!("following a stream for a continuation");
                self.follow = Some(Follow::new(format));
            }
        }
    }

    /// A chunk of a followed stream (`bytes`, as Envoy holds it): complete
    /// events go on, a partial one and an error event are held; at its end,
    /// a failure after content is continued by the next vendor.
    fn follow_chunk(
        &mut self,
        p: &Plugin<H>,
        routed: Attempt,
        bytes: &[u8],
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        let Some(f) = self.follow.as_mut() else {
            return Action::Continue;
        };
        let out = f.take(bytes);
        let mut len = body_size;
        if out != bytes && p.host.set_buffer(Buffer::ResponseBody, 0, body_size, &out).is_ok() {
            len = out.len();
        }
        if !end_of_stream {
            return Action::Continue;
        }
        match f.end() {
            End::Release(rest) => {
                if !rest.is_empty() && p.host.set_buffer(Buffer::ResponseBody, len, 0, &rest).is_ok() {
                    len += rest.len();
                }
                if let Some(f) = self.follow.take() {
                    self.watch.scanner = Some(f.scanner());
                }
                self.finish_stream(p, routed, len);
                Action::Continue
            }
            End::Continue => self.continue_stream(p, routed, len),
        }
    }

    /// Holds the end of a stream that failed after content reached the
    /// client, and asks the next vendor to continue it.
    fn continue_stream(&mut self, p: &Plugin<H>, routed: Attempt, len: usize) -> Action {
        let (Some(j), Some(f)) = (self.journey.clone(), self.follow.take()) else {
            return Action::Continue;
        };
        let Some(format) = j.borrow().format else {
            return Action::Continue;
        };
        // The original failure, for the vendor's record and as the end the
        // client gets if no continuation can be had.
        let vendor = p.vendor_name(routed.vendor).to_string();
        self.watch.scanner = Some(f.scanner());
        let _ = self.watch.finish(&vendor, || None);
        let fallback = match f.held_error() {
            Some(e) => e.to_vec(),
            None => sse::truncation_event(&vendor, Some(sse::dialect_of(format)), false),
        };
        let now_ms = p.now();
        match resume::start(p, &j, &f, format, now_ms) {
            Some((token, attempt)) => {
                self.continuing = Some(Continuing {
                    token,
                    at: len,
                    fallback,
                    attempt,
                    format,
                });
                self.follow = Some(f);
                Action::Pause
            }
            None => {
                p.add(p.stats.continuations_failed, 1);
                if p.host.set_buffer(Buffer::ResponseBody, len, 0, &fallback).is_ok() && f.held_error().is_none() {
                    p.count_truncation_closed(routed.vendor);
                }
                Action::Continue
            }
        }
    }

    /// The stream's last chunk: judge its end, and close it with an error
    /// event if it was cut before its end marker.
    fn finish_stream(&mut self, p: &Plugin<H>, routed: Attempt, body_size: usize) {
        let path_dialect = || {
            let path = p.host.header(Map::RequestHeaders, ":path").ok().flatten()?;
            sse::dialect_for_path(&path)
        };
        let Some(event) = self.watch.finish(p.vendor_name(routed.vendor), path_dialect) else {
            return;
        };
        // Never hand the client a cut stream that looks complete.
        match p.host.set_buffer(Buffer::ResponseBody, body_size, 0, &event) {
            Ok(()) => p.count_truncation_closed(routed.vendor),
            Err(e) => log::warn!("cannot close a cut stream with an error event (host status {})", e.0),
        }
    }

    pub fn on_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.watch.complete = true;
        Action::Continue
    }

    /// The stream ended, however it ended: record the router's attempt.
    pub fn on_done(&mut self) {
        let Some(p) = self.plugin.clone() else {
            return;
        };
        self.sync_routed();
        // A followed stream that never reached its end: its verdict is the
        // follower's scan.
        if let Some(f) = self.follow.take() {
            self.watch.scanner = Some(f.scanner());
        }
        let stage = self.stage();
        let journey = self.journey.take();
        if let Some(j) = &journey {
            p.journeys.borrow_mut().remove(&self.ctx);
            // A rescue still in flight for a client that went away: nothing
            // more will be learned of this request.
            let ctx = self.ctx;
            p.callouts.borrow_mut().retain(|_, c| *c != ctx);
            if j.borrow().ctx != ctx {
                return; // a redirected request picked the journey up
            }
            // The attempt is out and no answer came: the upstream filter
            // handed it back and the redirected request will pick the
            // journey up (or the client went away: see `relay::sweep`).
            let handed_back =
                j.borrow().relay.is_some() && stage.is_some_and(Stage::attempt_out) && self.watch.status.is_none();
            if handed_back {
                let mut jb = j.borrow_mut();
                jb.stage = Stage::Relaying;
                jb.orphaned_ms = Some(p.now());
                return;
            }
            if let Some(token) = j.borrow_mut().relay.take() {
                p.relays.borrow_mut().close(token);
            }
            if stage == Some(Stage::Rescuing) {
                rescue::settle(&p, j, false, p.now());
            }
        }
        // A rescued or refused request recorded its attempts as they ended.
        if stage.is_some_and(|s| !s.records_at_end()) {
            return;
        }
        let Some(routed) = self.routed else {
            return;
        };
        let flags = if self.watch.needs_flags() {
            p.host.property_u64(RESPONSE_FLAGS).unwrap_or(0)
        } else {
            0
        };
        let status = self.watch.status.or_else(|| {
            p.host
                .property_u64(RESPONSE_CODE)
                .and_then(|c| u16::try_from(c).ok())
                .filter(|&c| c != 0)
        });
        let (seen, kind) = self.watch.observed(status, flags);
        let outcome = classify::classify(&seen, &p.config.failure_statuses, &p.config.slow);
        // Only outcomes that write need the clock; a batched success does not.
        let now_ms = match outcome {
            Outcome::Success => p.last_now(),
            _ => p.now(),
        };
        // A relayed journey's last attempt: its failure waits with the
        // others (see `Flight::defers`), and the journey settles.
        let latest = |j: &JourneyRef| {
            let jb = j.borrow();
            jb.flight.attempts.len() > 1 && jb.flight.current() == Some(&routed)
        };
        if let Some(j) = journey.filter(latest) {
            if j.borrow().flight.defers(&outcome) {
                j.borrow_mut().flight.pending.push(Pending {
                    attempt: routed,
                    outcome,
                    stream_error: kind,
                });
            } else {
                p.record(&routed, outcome, kind.as_deref(), now_ms);
            }
            let served = matches!(outcome, Outcome::Success | Outcome::Slow(_));
            rescue::settle(&p, &j, served, now_ms);
            return;
        }
        p.record(&routed, outcome, kind.as_deref(), now_ms);
    }

    /// A rescue callout of this stream answered.
    pub fn on_callout(&mut self, token: u32, num_headers: usize, body_size: usize) {
        let Some(p) = self.plugin.clone() else {
            return;
        };
        if self.continuing.as_ref().is_some_and(|c| c.token == token) {
            if let Some(c) = self.continuing.take() {
                resume::answered(&p, self.ctx, c, self.follow.as_ref(), num_headers, body_size);
            }
            self.follow = None;
            return;
        }
        rescue::on_callout(&p, token, num_headers, body_size);
    }
}
