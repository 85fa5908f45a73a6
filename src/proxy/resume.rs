//! Continuing a stream cut after content reached the client, as host actions: the continuation's callout, and its answer appended to the held end of the stream.
//!
//! See `policy::resume`. The stream's last chunk is held (its body call
//! returns `Pause`); the continuation's events, or the original failure if
//! none can be had, are appended to it and the stream resumed.

use crate::policy::answer;
use crate::policy::config::Format;
use crate::policy::journey::JourneyRef;
use crate::policy::outbound;
use crate::policy::plan::Attempt;
use crate::policy::rescue::Move;
use crate::policy::resume::{self, Follow, Style};
use crate::proxy::host::{Buffer, Host};
use crate::proxy::plugin::Plugin;
use crate::proxy::rescue::{self, CalloutRead};

/// A continuation in flight for one stream.
pub struct Continuing {
    pub token: u32,
    /// Where its events go in the held last chunk (that chunk's length).
    pub at: usize,
    /// What ends the stream if no continuation can be had: the vendor's
    /// own error event, or the filter's truncation event.
    pub fallback: Vec<u8>,
    pub attempt: Attempt,
    pub format: Format,
}

/// Whether a stream of this journey could be continued if it failed after
/// content reached the client: a candidate is left that takes a prefill
/// for the client's format, and an attempt is left to give it.
pub fn may_continue<H: Host>(p: &Plugin<H>, j: &JourneyRef) -> Option<Format> {
    let jb = j.borrow();
    let format = jb.format?;
    if !jb.flight.stream || jb.flight.attempts.len() as u32 >= jb.flight.max_attempts.get() {
        return None;
    }
    let capable = jb.flight.plan.iter().any(|c| {
        !jb.flight.attempts.iter().any(|a| a.planned == c.unit)
            && p.config
                .vendors
                .get(c.vendor)
                .and_then(|v| resume::style(v.prefill, format))
                .is_some()
    });
    capable.then_some(format)
}

/// Sends the continuation of `follow`'s text to the best candidate left
/// that takes a prefill; `None` if there is none, or it cannot be sent.
pub fn start<H: Host>(
    p: &Plugin<H>,
    j: &JourneyRef,
    follow: &Follow,
    format: Format,
    now_ms: u64,
) -> Option<(u32, Attempt)> {
    let mut jb = j.borrow_mut();
    if !jb.flight.may_move(Move::Failure, now_ms) {
        return None;
    }
    let style_of = |vendor| {
        p.config
            .vendors
            .get(vendor)
            .and_then(|v| resume::style(v.prefill, format))
    };
    let candidates: Vec<_> = jb
        .flight
        .next_candidates(Move::Failure)
        .into_iter()
        .filter(|c| style_of(c.vendor).is_some())
        .collect();
    let (attempt, candidate) = rescue::start_among(p, &mut jb, &candidates, now_ms)?;
    let style: Style = style_of(attempt.vendor)?;
    let vendor = p.config.vendors.get(attempt.vendor)?;
    let body = resume::request(&outbound::body_for(&jb, &candidate), format, style, follow.text())?;
    let mut request = outbound::callout_request(&jb, vendor, &candidate, &p.config.cluster_header);
    request.body = body;
    let timeout_ms = jb.flight.time_left(now_ms);
    match p
        .host
        .dispatch(&vendor.cluster, &request.header_refs(), Some(&request.body), timeout_ms)
    {
        Ok(token) => {
            log::debug!("continuing a cut stream with vendor {}", vendor.name);
            Some((token, attempt))
        }
        Err(e) => {
            log::debug!("cannot send a continuation to {} (host status {})", vendor.cluster, e.0);
            p.mark_missing(attempt.vendor);
            None
        }
    }
}

/// The continuation answered: its events (or the original failure) end the
/// held stream, which goes on.
pub fn answered<H: Host>(
    p: &Plugin<H>,
    ctx: u32,
    c: Continuing,
    follow: Option<&Follow>,
    num_headers: usize,
    body_size: usize,
) {
    let _ = p.host.set_effective_context(ctx);
    let now_ms = p.now();
    let read = CalloutRead::of(p, num_headers, body_size);
    let (status, body) = (read.status, &read.body);
    let seen = read.seen();
    let deadline = now_ms.saturating_add(1);
    let judged = answer::judge_callout(&seen, Some(c.format), deadline, now_ms, &p.config);
    p.record(&c.attempt, judged.outcome, judged.stream_error.as_deref(), now_ms);
    let events = status
        .filter(|s| (200..300).contains(s))
        .and_then(|_| resume::read_answer(c.format, body))
        .zip(follow)
        .map(|(answer, f)| resume::events(c.format, f.meta(), &answer));
    let bytes = match events {
        Some(e) => {
            p.add(p.stats.continued, 1);
            log::debug!(
                "a cut stream was continued by vendor {}",
                p.vendor_name(c.attempt.vendor)
            );
            e
        }
        None => {
            // The prefill refused, or no answer: the original failure ends
            // the stream, never the continuation's own error.
            p.add(p.stats.continuations_failed, 1);
            c.fallback
        }
    };
    if let Err(e) = p.host.set_buffer(Buffer::ResponseBody, c.at, 0, &bytes) {
        log::warn!("cannot append a continuation to a held stream (host status {})", e.0);
    }
    if let Err(e) = p.host.resume_response() {
        log::warn!("cannot resume a held stream (host status {})", e.0);
    }
}
