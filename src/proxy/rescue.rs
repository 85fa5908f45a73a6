//! Same-request failover as host actions: callouts, their answers delivered, the 503, the tick's checks.

use crate::policy::answer::{self, AfterCallout, CalloutAnswer};
use crate::policy::choice::{Ask, Choice, Due};
use crate::policy::classify::{Outcome, Reason};
use crate::policy::config::AllDown;
use crate::policy::health::Availability;
use crate::policy::journey::{self, BodyAccess, Journey, JourneyRef, Stage};
use crate::policy::outbound;
use crate::policy::plan::{Attempt, Candidate};
use crate::policy::reply;
use crate::policy::rescue::{Move, Pending};
use crate::policy::store;
use crate::proxy::host::{find, Buffer, Host, Map, REQUEST_TOTAL_SIZE};
use crate::proxy::plugin::Plugin;

/// A failed attempt (its `outcome` recorded): retried on the same vendor
/// after a wait where the policy allows (see `Flight::same_vendor_wait`),
/// else moved on to the next candidate.
pub fn after_failure<H: Host>(p: &Plugin<H>, j: &JourneyRef, outcome: &Outcome, why: Move, now_ms: u64) {
    if why == Move::Failure {
        if let Some(wait) = same_vendor_wait(p, j, outcome, now_ms) {
            schedule_retry(p, j, now_ms.saturating_add(wait));
            return;
        }
    }
    next(p, j, why, now_ms);
}

/// The wait before a same-vendor retry, if the policy allows one.
pub fn same_vendor_wait<H: Host>(p: &Plugin<H>, j: &JourneyRef, outcome: &Outcome, now_ms: u64) -> Option<u64> {
    let jb = j.borrow();
    // Jitter from the clock and the request: spreads the retries of many
    // requests that failed at once.
    let jitter = (now_ms ^ u64::from(jb.ctx).rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 33;
    // As this worker last saw the unit (the failure is recorded already
    // when it counts at once; a deferred one is not, hence at least 1).
    let in_a_row = jb.flight.current().map_or(1, |a| p.failures_in_a_row(a.unit).max(1));
    jb.flight
        .same_vendor_wait(outcome, &p.config.rescue, now_ms, jitter, in_a_row)
}

/// Holds the journey until `at`; the tick then retries it (`retry_due`).
pub fn schedule_retry<H: Host>(p: &Plugin<H>, j: &JourneyRef, at: u64) {
    j.borrow_mut().retry_at = Some(at);
    p.tick_fast(true);
    p.add(p.stats.same_vendor_retries, 1);
}

/// Moves a journey whose current attempt failed to the next candidate,
/// or answers the client if none is left.
pub fn next<H: Host>(p: &Plugin<H>, j: &JourneyRef, why: Move, now_ms: u64) {
    // Each turn either sends a callout, gives up, or marks one more
    // candidate missing: bounded by the plan (and guarded anyway).
    let turns = j.borrow().flight.plan.len() + 1;
    for _ in 0..turns {
        let Some((attempt, candidate)) = choose(p, j, why, now_ms) else {
            break;
        };
        if dispatch(p, j, attempt, &candidate, now_ms) {
            return;
        }
    }
    give_up(p, j, now_ms);
}

/// Sends the journey's attempt as a callout; `false` if it could not even
/// start (the cluster is gone: that attempt failed).
pub fn dispatch<H: Host>(p: &Plugin<H>, j: &JourneyRef, attempt: Attempt, candidate: &Candidate, now_ms: u64) -> bool {
    let Some(v) = p.config.vendors.get(attempt.vendor) else {
        return false;
    };
    let (request, timeout_ms, ctx) = {
        let jb = j.borrow();
        let request = outbound::callout_request(&jb, v, candidate, &p.config.cluster_header);
        let left = jb.flight.time_left(now_ms);
        // A buffered attempt's whole answer must come in time: past it,
        // a stall mid-answer moves the request like a failure.
        let timeout = if jb.buffered {
            left.min(p.config.rescue.buffered_timeout_ms)
        } else {
            left
        };
        (request, timeout, jb.ctx)
    };
    match p
        .host
        .dispatch(&v.cluster, &request.header_refs(), Some(&request.body), timeout_ms)
    {
        Ok(token) => {
            p.callouts.borrow_mut().insert(token, ctx);
            p.add(p.stats.rescue_attempts, 1);
            log::debug!("rescuing a request with vendor {}", v.name);
            true
        }
        Err(e) => {
            log::debug!("cannot send a rescue to {} (host status {})", v.cluster, e.0);
            p.mark_missing(attempt.vendor);
            false
        }
    }
}

/// The same vendor again for the journey's current candidate, started; `None`
/// if it may not take it now (ejected, rate-limited, busy probing) or the
/// journey is out of attempts or time.
pub fn choose_same<H: Host>(p: &Plugin<H>, j: &JourneyRef, now_ms: u64) -> Option<(Attempt, Candidate)> {
    let mut jb = j.borrow_mut();
    let candidate = jb.flight.current_candidate()?.clone();
    if (jb.flight.attempts.len() as u32) >= jb.flight.max_attempts.get() || now_ms >= jb.flight.deadline_ms {
        return None;
    }
    let candidates = [candidate.clone()];
    let requested = jb.request.as_ref().and_then(|r| r.model.clone());
    let ask = Ask {
        candidates: &candidates,
        all_down: AllDown::Reject,
        tried: &[],
        claim_probes: true,
        requested: requested.as_deref(),
    };
    let Choice::Route { attempt, .. } = p.pick(&ask, &mut || now_ms) else {
        return None;
    };
    jb.flight.start(attempt)?;
    Some((attempt, candidate))
}

/// Journeys whose same-vendor retry is due, their wait cleared, with the
/// stage they wait in: held in the filter (`Rescuing`: retried by a
/// callout, `retry_by_callout`) or a redirected request held in its
/// headers (`Waiting`: `relay::retry`).
pub fn due_retries<H: Host>(p: &Plugin<H>, now_ms: u64) -> Vec<JourneyRef> {
    let due: Vec<JourneyRef> = p
        .journeys
        .borrow()
        .values()
        .filter(|j| j.borrow().retry_at.is_some_and(|at| now_ms >= at))
        .cloned()
        .collect();
    for j in &due {
        j.borrow_mut().retry_at = None;
    }
    due
}

/// Whether a same-vendor retry still waits on this worker.
pub fn retry_waiting<H: Host>(p: &Plugin<H>) -> bool {
    p.journeys.borrow().values().any(|j| j.borrow().retry_at.is_some())
}

/// A journey held in the filter, its retry due: sent to the same vendor
/// again by a callout, or moved on if that vendor may not take it now.
pub fn retry_by_callout<H: Host>(p: &Plugin<H>, j: &JourneyRef, now_ms: u64) {
    match choose_same(p, j, now_ms) {
        Some((attempt, candidate)) if dispatch(p, j, attempt, &candidate, now_ms) => {}
        _ => next(p, j, Move::Failure, now_ms),
    }
}

/// The journey's next attempt, started: the best candidate left that is
/// neither ejected nor busy probing, or `None` if it may not move (out of
/// attempts, past its deadline, or nothing left).
pub fn choose<H: Host>(p: &Plugin<H>, j: &JourneyRef, why: Move, now_ms: u64) -> Option<(Attempt, Candidate)> {
    let mut jb = j.borrow_mut();
    if !jb.flight.may_move(why, now_ms) {
        return None;
    }
    let candidates = jb.flight.next_candidates(why);
    start_among(p, &mut jb, &candidates, now_ms)
}

/// The best of `candidates` for the journey (units it tried are skipped,
/// ejected ones refused, a probe slot claimed), its attempt started.
pub fn start_among<H: Host>(
    p: &Plugin<H>,
    jb: &mut Journey,
    candidates: &[Candidate],
    now_ms: u64,
) -> Option<(Attempt, Candidate)> {
    let tried = jb.flight.tried_units();
    let ask = Ask {
        candidates,
        all_down: AllDown::Reject,
        tried: &tried,
        claim_probes: true,
        requested: jb.request.as_ref().and_then(|r| r.model.as_deref()),
    };
    let Choice::Route { attempt, .. } = p.pick(&ask, &mut || now_ms) else {
        return None;
    };
    let candidate = jb.flight.start(attempt).cloned()?;
    Some((attempt, candidate))
}

/// A rescue callout answered (in the context that dispatched it).
pub fn on_callout<H: Host>(p: &Plugin<H>, token: u32, num_headers: usize, body_size: usize) {
    let Some(ctx) = p.callouts.borrow_mut().remove(&token) else {
        return;
    };
    let Some(j) = p.journeys.borrow().get(&ctx).cloned() else {
        return; // the client went away meanwhile
    };
    if j.borrow().stage != Stage::Rescuing {
        return;
    }
    let _ = p.host.set_effective_context(ctx);
    let now_ms = p.now();
    let read = CalloutRead::of(p, num_headers, body_size);
    let (status, too_large) = (read.status, read.too_large);
    let seen = read.seen();
    let (judged, attempt) = {
        let jb = j.borrow();
        let judged = answer::judge_callout(&seen, jb.format, jb.flight.deadline_ms, now_ms, &p.config);
        (judged, jb.flight.current().copied())
    };
    let Some(attempt) = attempt else {
        return;
    };
    let defers = j.borrow().flight.defers(&judged.outcome);
    if defers {
        j.borrow_mut().flight.pending.push(Pending {
            attempt,
            outcome: judged.outcome,
            stream_error: judged.stream_error.clone(),
        });
    } else {
        p.record(&attempt, judged.outcome, judged.stream_error.as_deref(), now_ms);
    }
    let after = answer::after_callout(&judged, status, &j.borrow().flight, now_ms);
    match after {
        AfterCallout::Move(why) => after_failure(p, &j, &judged.outcome, why, now_ms),
        AfterCallout::GiveUp => give_up(p, &j, now_ms),
        AfterCallout::Deliver(_) if too_large => {
            settle(p, &j, true, now_ms);
            let format = j.borrow().format;
            let limit = p.config.rescue.max_answer_bytes;
            let r = reply::answer_too_large(format, p.vendor_name(attempt.vendor), limit);
            p.refuse(&j, r, "llm_failover_answer_too_large");
        }
        AfterCallout::Deliver(s) => {
            settle(p, &j, true, now_ms);
            deliver(p, &j, s, &read.headers, &read.body);
        }
    }
}

/// A callout's answer as read from the host: its headers, its status and
/// its body, unless that is past `rescue.max_answer_bytes` (the whole
/// answer would sit in the VM, whose memory never shrinks).
pub struct CalloutRead {
    pub headers: Vec<(String, Vec<u8>)>,
    pub status: Option<u16>,
    pub body: Vec<u8>,
    pub too_large: bool,
}

impl CalloutRead {
    pub fn of<H: Host>(p: &Plugin<H>, num_headers: usize, body_size: usize) -> Self {
        let headers = if num_headers > 0 {
            p.host.headers(Map::CalloutHeaders).unwrap_or_default()
        } else {
            Vec::new()
        };
        let too_large = body_size as u64 > p.config.rescue.max_answer_bytes;
        let body = if too_large {
            Vec::new()
        } else {
            p.host
                .buffer(Buffer::CalloutBody, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        let status = find(&headers, ":status").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
        CalloutRead {
            headers,
            status,
            body,
            too_large,
        }
    }

    /// What the policy judges.
    pub fn seen(&self) -> CalloutAnswer<'_> {
        CalloutAnswer {
            status: self.status,
            headers: &self.headers,
            body: (!self.too_large).then_some(self.body.as_slice()),
        }
    }
}

/// Answers the client with a rescue's answer.
fn deliver<H: Host>(p: &Plugin<H>, j: &JourneyRef, status: u16, headers: &[(String, Vec<u8>)], body: &[u8]) {
    let (vendor, attempts, tried) = {
        let jb = j.borrow();
        let names: Vec<&str> = jb.flight.tried_vendors().iter().map(|&v| p.vendor_name(v)).collect();
        let vendor = jb.flight.current().map(|a| p.vendor_name(a.vendor)).unwrap_or_default();
        (
            vendor.to_string(),
            jb.flight.attempts.len().to_string(),
            names.join(","),
        )
    };
    let out = outbound::delivered_headers(headers, p.config.vendor_header.as_deref(), &vendor, &attempts, &tried);
    let rescued = j.borrow().flight.attempts.len() > 1;
    if p.send_own_reply(j, u32::from(status), &out, body, "llm_failover_rescued") && rescued {
        p.add(p.stats.rescued, 1);
        log::debug!("request rescued by {vendor} after {attempts} attempts ({tried})");
    }
}

/// Charges the journey's pending failures as it ends: as they were if a
/// vendor `served` the request, as neutral if none did (see
/// `Flight::defers`).
pub fn settle<H: Host>(p: &Plugin<H>, j: &JourneyRef, served: bool, now_ms: u64) {
    let (pending, everywhere) = {
        let mut jb = j.borrow_mut();
        let everywhere = !served && jb.flight.failed_everywhere();
        (jb.flight.settle(served), everywhere)
    };
    for x in pending {
        p.record(&x.attempt, x.outcome, x.stream_error.as_deref(), now_ms);
    }
    if everywhere {
        p.add(p.stats.failed_everywhere, 1);
    }
}

/// Answers 503 in the client's format: every candidate failed or is out.
pub fn give_up<H: Host>(p: &Plugin<H>, j: &JourneyRef, now_ms: u64) {
    settle(p, j, false, now_ms);
    let (format, units, tried) = {
        let jb = j.borrow();
        let units: Vec<_> = jb.flight.plan.iter().map(|c| (c.unit, c.vendor)).collect();
        (jb.format, units, jb.flight.tried_vendors())
    };
    let mut due = Vec::new();
    for (unit, vendor) in units {
        let Some(key) = p.keys.get(unit) else {
            continue;
        };
        if let Ok(loaded) = store::load(&p.host, key, p.rules.window) {
            if let Availability::Unavailable { due_ms } = loaded.state.availability(now_ms, &p.rules) {
                due.push(Due {
                    unit,
                    planned: unit,
                    vendor,
                    due_ms,
                });
            }
        }
    }
    due.sort_by_key(|d| d.due_ms);
    let r = reply::unavailable(format, &p.config, &due, now_ms, &tried);
    let retry_after = r.retry_after_s.to_string();
    let names: Vec<&str> = tried.iter().map(|&v| p.vendor_name(v)).collect();
    let tried_list = names.join(",");
    let attempts = tried.len().to_string();
    let headers: [(&str, &[u8]); 4] = [
        ("content-type", b"application/json"),
        ("retry-after", retry_after.as_bytes()),
        (outbound::ATTEMPTS_HEADER, attempts.as_bytes()),
        (outbound::TRIED_HEADER, tried_list.as_bytes()),
    ];
    let details = "llm_failover_all_vendors_unavailable";
    if p.send_own_reply(j, r.status, &headers, r.body.as_bytes(), details) {
        p.add(p.stats.rescues_failed, 1);
    }
}

/// Abandons first attempts whose stream has not shown its first event in
/// time (from the tick: a stream has no timer of its own).
pub fn check_first_tokens<H: Host>(p: &Plugin<H>, now_ms: u64) {
    let late: Vec<JourneyRef> = p
        .journeys
        .borrow()
        .values()
        .filter(|j| j.borrow().first_token_late(now_ms))
        .cloned()
        .collect();
    for j in late {
        let ctx = j.borrow().ctx;
        if p.host.set_effective_context(ctx).is_err() {
            continue;
        }
        let Some(attempt) = j.borrow().flight.current().copied() else {
            continue;
        };
        p.record(&attempt, Outcome::Failure(Reason::Timeout), None, now_ms);
        {
            let mut jb = j.borrow_mut();
            jb.stage = Stage::Rescuing;
            jb.first_token_deadline = None;
        }
        p.add(p.stats.first_token_timeouts, 1);
        next(p, &j, Move::Failure, now_ms);
    }
}

/// Requests held in their headers with no body callback at all. If Envoy
/// counted body bytes for one of them, it is not handing the filter bodies
/// (`allow_on_headers_stop_iteration` is off): say so once, let every such
/// request go as routed at its headers, and stop holding. A client that is
/// merely slow, or sends nothing, proves nothing: its request stays held
/// until it completes or Envoy's own timeouts end it.
pub fn release_stuck<H: Host>(p: &Plugin<H>, now_ms: u64) {
    let overdue: Vec<JourneyRef> = p
        .journeys
        .borrow()
        .values()
        .filter(|j| j.borrow().body_overdue(now_ms))
        .cloned()
        .collect();
    if overdue.is_empty() {
        return;
    }
    if p.body_access.get() != BodyAccess::Missing {
        let proven = overdue.iter().any(|j| {
            let ctx = j.borrow().ctx;
            let received = || -> Option<u64> {
                p.host.set_effective_context(ctx).ok()?;
                let total = p.host.property_u64(REQUEST_TOTAL_SIZE)?;
                let headers = p.host.headers(Map::RequestHeaders).ok()?;
                let header_bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
                Some(total.saturating_sub(header_bytes as u64))
            };
            journey::shows_no_body_access(p.body_access.get(), received())
        });
        if !proven {
            return;
        }
        p.body_access.set(BodyAccess::Missing);
        log::warn!(
            "request bodies are not reaching the filter: set allow_on_headers_stop_iteration: true in the wasm \
             filter's config to enable model-based routing, body rewriting and same-request failover; \
             until then requests are routed at their headers"
        );
    }
    for j in overdue {
        let ctx = j.borrow().ctx;
        // Passed first: resuming may deliver the body at once.
        j.borrow_mut().stage = Stage::Passed;
        if p.host.set_effective_context(ctx).is_ok() {
            let route = p.route_unread(&j.borrow(), now_ms);
            // `None`: answered, every vendor out.
            if let Some(chosen) = route {
                j.borrow_mut().at_headers = Some(chosen);
                let _ = p.host.resume_request();
            }
        }
    }
}
