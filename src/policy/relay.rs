//! Live-streamed rescue: a failed answer handed back to Envoy's router as an internal redirect.
//!
//! The same module, loaded as an upstream filter on each vendor cluster
//! (`role: "upstream"`, in a VM of its own), judges the vendor's answer
//! before any of it leaves the cluster. A failure that may move the request
//! becomes a `307` back to the client's own URL; the route's
//! `internal_redirect_policy` makes Envoy send the buffered request through
//! the listener's filter chain again, where the downstream filter picks the
//! journey up, charges the failed attempt and routes the request to the
//! next candidate, whose answer then streams to the client as it comes.
//!
//! The two filters talk only through the relay header. On the request
//! (`Offer`): the journey's token, what the request may still do, and the
//! client's URL. On the 307, copied onto the redirected request by the
//! route's `response_headers_to_copy` (`HandBack`): the token, and what the
//! vendor answered. The downstream filter keeps its journeys with an
//! attempt out in `Relays`, by token; a token is honoured only on the
//! connection that opened it. Neither a client's copy of the header nor a
//! vendor's reaches the other side.

use crate::policy::answer::Room;
use crate::policy::classify::{self, Observed, Outcome, Reason};
use crate::policy::config::{Format, StatusSet};
use crate::policy::journey::{JourneyRef, Stage};
use crate::policy::rescue::{Flight, Move};
use std::collections::HashMap;

/// The header carrying a journey between the filters.
pub const RELAY_HEADER: &str = "x-llm-failover-relay";

/// How long a journey whose stream ended with its attempt out waits for a
/// redirected request to pick it up before it is dropped.
pub const CLAIM_WAIT_MS: u64 = 10_000;

/// What the downstream filter tells the upstream filter of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hints {
    pub stream: bool,
    /// Another attempt may follow a failure.
    pub failure: bool,
    /// Another attempt may follow a context overflow.
    pub overflow: bool,
    /// The client's API format (the dialect of its stream).
    pub format: Option<Format>,
}

impl Hints {
    pub fn of(flight: &Flight, now_ms: u64) -> Hints {
        Hints {
            stream: flight.stream,
            failure: flight.may_move(Move::Failure, now_ms),
            overflow: flight.may_move(Move::ContextOverflow, now_ms),
            format: flight.format,
        }
    }
}

impl Room for Hints {
    fn stream(&self) -> bool {
        self.stream
    }

    fn may_move(&self, why: Move, _now_ms: u64) -> bool {
        match why {
            Move::Failure => self.failure,
            Move::ContextOverflow => self.overflow,
        }
    }
}

/// The relay header on a request the downstream filter routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub token: u64,
    pub hints: Hints,
    /// The client's URL: where the redirect sends the request back to.
    pub location: String,
}

impl Offer {
    pub fn to_header(&self) -> String {
        let h = &self.hints;
        let mut flags = String::with_capacity(4);
        for (on, c) in [(h.stream, 's'), (h.failure, 'f'), (h.overflow, 'o')] {
            if on {
                flags.push(c);
            }
        }
        flags.push(match h.format {
            Some(Format::OpenAi) => 'p',
            Some(Format::Anthropic) => 'a',
            None => '-',
        });
        format!("{};{flags};{}", format_token(self.token), self.location)
    }

    pub fn parse(value: &[u8]) -> Option<Offer> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.splitn(3, ';');
        let token = parse_token(parts.next()?.as_bytes())?;
        let flags = parts.next()?;
        let location = parts.next()?;
        if !valid_location(location) || flags.len() > 4 {
            return None;
        }
        let format = match flags.chars().last()? {
            'p' => Some(Format::OpenAi),
            'a' => Some(Format::Anthropic),
            '-' => None,
            _ => return None,
        };
        Some(Offer {
            token,
            hints: Hints {
                stream: flags.contains('s'),
                failure: flags.contains('f'),
                overflow: flags.contains('o'),
                format,
            },
            location: location.to_string(),
        })
    }
}

/// What the vendor answered, as the upstream filter saw it before handing
/// the attempt back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A failing status; for a 429, the wait it asked for.
    Status { status: u16, retry_after_ms: Option<u64> },
    /// A 2xx stream whose first event was an error of this type.
    StreamError(String),
    /// A 2xx stream that ended before its first event.
    Cut,
    /// A 400 saying the context window overflowed.
    Overflow,
}

/// The relay header on the upstream filter's 307, and on the redirected
/// request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandBack {
    pub token: u64,
    pub seen: Seen,
}

/// Longest vendor error type carried over (its stat name).
const MAX_KIND: usize = 64;

impl HandBack {
    pub fn why(&self) -> Move {
        match self.seen {
            Seen::Overflow => Move::ContextOverflow,
            _ => Move::Failure,
        }
    }

    pub fn to_header(&self) -> String {
        let t = format_token(self.token);
        match &self.seen {
            Seen::Status {
                status,
                retry_after_ms: Some(ms),
            } => format!("{t};s{status};r{ms}"),
            Seen::Status { status, .. } => format!("{t};s{status}"),
            Seen::StreamError(kind) => format!("{t};e{kind}"),
            Seen::Cut => format!("{t};c"),
            Seen::Overflow => format!("{t};o"),
        }
    }

    pub fn parse(value: &[u8]) -> Option<HandBack> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.split(';');
        let token = parse_token(parts.next()?.as_bytes())?;
        let what = parts.next()?;
        let extra = parts.next();
        if parts.next().is_some() {
            return None;
        }
        let (tag, rest) = what.split_at_checked(1)?;
        let seen = match (tag, extra) {
            ("s", _) => {
                let status: u16 = rest.parse().ok().filter(|s| (100..600).contains(s))?;
                let retry_after_ms = match extra {
                    Some(r) => Some(r.strip_prefix('r')?.parse().ok()?),
                    None => None,
                };
                Seen::Status { status, retry_after_ms }
            }
            ("e", None) => {
                let ok = !rest.is_empty()
                    && rest.len() <= MAX_KIND
                    && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !ok {
                    return None;
                }
                Seen::StreamError(rest.to_string())
            }
            ("c", None) if rest.is_empty() => Seen::Cut,
            ("o", None) if rest.is_empty() => Seen::Overflow,
            _ => return None,
        };
        Some(HandBack { token, seen })
    }

    /// The failed attempt's outcome, judged by the downstream filter's own
    /// `failure_statuses`, and the vendor's error type if it sent one.
    pub fn outcome(&self, failure_statuses: &StatusSet) -> (Outcome, Option<String>) {
        match &self.seen {
            Seen::Status { status, retry_after_ms } => {
                let seen = Observed {
                    status: Some(*status),
                    retry_after_ms: *retry_after_ms,
                    ..Observed::default()
                };
                let slow = crate::policy::config::SlowLimits::DEFAULT;
                (classify::classify(&seen, failure_statuses, &slow), None)
            }
            Seen::StreamError(kind) => (Outcome::Failure(Reason::StreamError), Some(kind.clone())),
            Seen::Cut => (Outcome::Failure(Reason::Truncated), None),
            Seen::Overflow => (Outcome::Neutral(Some(400)), None),
        }
    }
}

/// What the upstream filter hands back for an outcome it judged.
pub fn seen_of(outcome: &Outcome, status: Option<u16>, retry_after_ms: Option<u64>, kind: Option<String>) -> Seen {
    match (outcome, kind) {
        (Outcome::Failure(Reason::StreamError), Some(kind)) if kind.len() <= MAX_KIND => {
            let clean: String = kind
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
                .collect();
            Seen::StreamError(clean)
        }
        (Outcome::Failure(Reason::StreamError), _) => Seen::StreamError("other".into()),
        (Outcome::Failure(Reason::Truncated), _) => Seen::Cut,
        (Outcome::Neutral(Some(400)), _) => Seen::Overflow,
        _ => Seen::Status {
            status: status.unwrap_or(503),
            retry_after_ms,
        },
    }
}

pub struct Entry {
    pub journey: JourneyRef,
    /// Envoy's id of the client connection.
    pub connection: Option<u64>,
}

/// Why a redirected request's relay header was not honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a token this VM handed out, or its journey ended.
    Unknown,
    /// Its journey has no attempt out.
    NotOut,
    /// Another connection's journey.
    OtherConnection,
}

/// One VM's journeys with an attempt out, by token.
#[derive(Default)]
pub struct Relays {
    entries: HashMap<u64, Entry>,
    state: u64,
}

impl Relays {
    /// Opens an entry for a journey whose first attempt is about to go; its
    /// token. `seed` mixes something of this VM's own into the tokens (a
    /// clock reading, the context id), so they are not guessable counts.
    pub fn open(&mut self, entry: Entry, seed: u64) -> u64 {
        loop {
            self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15 ^ seed.rotate_left(17));
            let token = mix(self.state);
            if token != 0 && !self.entries.contains_key(&token) {
                self.entries.insert(token, entry);
                return token;
            }
        }
    }

    /// The journey a redirected request continues, if its token may be
    /// honoured on `connection`.
    pub fn claim(&self, token: u64, connection: Option<u64>) -> Result<&Entry, Refused> {
        let e = self.entries.get(&token).ok_or(Refused::Unknown)?;
        if !e.journey.borrow().stage.attempt_out() {
            return Err(Refused::NotOut);
        }
        if e.connection != connection {
            return Err(Refused::OtherConnection);
        }
        Ok(e)
    }

    pub fn close(&mut self, token: u64) -> Option<Entry> {
        self.entries.remove(&token)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Journeys whose stream ended with the attempt out more than
    /// `CLAIM_WAIT_MS` ago, never picked up: removed and returned.
    pub fn sweep(&mut self, now_ms: u64) -> Vec<Entry> {
        let stale: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                let j = e.journey.borrow();
                j.stage == Stage::Relaying
                    && j.orphaned_ms
                        .is_some_and(|at| now_ms.saturating_sub(at) >= CLAIM_WAIT_MS)
            })
            .map(|(t, _)| *t)
            .collect();
        stale.iter().filter_map(|t| self.entries.remove(t)).collect()
    }
}

/// A 64-bit finaliser (splitmix64's): tokens that do not show their order.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn format_token(token: u64) -> String {
    format!("{token:016x}")
}

/// A token: exactly 16 hex digits.
pub fn parse_token(value: &[u8]) -> Option<u64> {
    if value.len() != 16 || !value.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(value).ok()?, 16).ok()
}

fn valid_location(l: &str) -> bool {
    (l.starts_with("http://") || l.starts_with("https://")) && l.bytes().all(|b| b.is_ascii_graphic())
}

/// The client's URL, where a redirect sends the request back through the
/// listener as the client asked it.
pub fn location(headers: &[(String, Vec<u8>)]) -> Option<String> {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    };
    let scheme = get(":scheme")
        .filter(|s| *s == "http" || *s == "https")
        .unwrap_or("http");
    let authority = get(":authority").filter(|a| !a.is_empty() && !a.contains(';'))?;
    let path = get(":path").filter(|p| p.starts_with('/'))?;
    let l = format!("{scheme}://{authority}{path}");
    valid_location(&l).then_some(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::config::Config;
    use crate::policy::journey::Journey;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn entry(connection: u64) -> Entry {
        let config = Config::parse(br#"{"vendors":[{"name":"a"},{"name":"b"}]}"#).unwrap();
        let j = Journey::new(7, 0, Some(Format::OpenAi), vec![], &config);
        Entry {
            journey: Rc::new(RefCell::new(j)),
            connection: Some(connection),
        }
    }

    #[test]
    fn tokens_round_trip_and_refuse_anything_else() {
        for t in [1u64, 0xdead_beef, u64::MAX] {
            assert_eq!(parse_token(format_token(t).as_bytes()), Some(t));
        }
        for bad in [
            &b""[..],
            b"123",
            b"0123456789abcdefg",
            b"0123456789abcdeg",
            b"+123456789abcdef",
        ] {
            assert_eq!(parse_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn offers_round_trip() {
        for (stream, failure, overflow, format) in [
            (true, true, false, Some(Format::OpenAi)),
            (false, false, true, Some(Format::Anthropic)),
            (false, false, false, None),
        ] {
            let o = Offer {
                token: 0xabc,
                hints: Hints {
                    stream,
                    failure,
                    overflow,
                    format,
                },
                location: "http://gw:10000/v1/messages?beta=true;x".into(),
            };
            assert_eq!(Offer::parse(o.to_header().as_bytes()), Some(o));
        }
        for bad in [
            &b"0000000000000abc;sp;/v1"[..],
            b"0000000000000abc;sp",
            b"0000000000000abc;sx;http://a/b",
            b"abc;sp;http://a/b",
            b"0000000000000abc;sfoop;http://a/b",
            b"0000000000000abc;sp;http://a/b c",
        ] {
            assert_eq!(Offer::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn hand_backs_round_trip_and_judge_by_the_downstream_statuses() {
        let seen = [
            Seen::Status {
                status: 503,
                retry_after_ms: None,
            },
            Seen::Status {
                status: 429,
                retry_after_ms: Some(1_500),
            },
            Seen::StreamError("overloaded_error".into()),
            Seen::Cut,
            Seen::Overflow,
        ];
        for s in seen {
            let h = HandBack { token: 9, seen: s };
            assert_eq!(HandBack::parse(h.to_header().as_bytes()), Some(h));
        }
        for bad in [
            &b"0000000000000009;s99"[..],
            b"0000000000000009;s503;x1",
            b"0000000000000009;e",
            b"0000000000000009;ebad-kind",
            b"0000000000000009;c;c",
            b"0000000000000009",
            b"0000000000000009;z",
        ] {
            assert_eq!(HandBack::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let statuses = StatusSet::default();
        let h = |seen| HandBack { token: 1, seen };
        assert_eq!(
            h(Seen::Status {
                status: 529,
                retry_after_ms: None
            })
            .outcome(&statuses)
            .0,
            Outcome::Failure(Reason::Status(529))
        );
        assert_eq!(
            h(Seen::Status {
                status: 429,
                retry_after_ms: Some(2_000)
            })
            .outcome(&statuses)
            .0,
            Outcome::RateLimited(Some(2_000))
        );
        assert_eq!(
            h(Seen::StreamError("overloaded_error".into())).outcome(&statuses),
            (Outcome::Failure(Reason::StreamError), Some("overloaded_error".into()))
        );
        assert_eq!(h(Seen::Overflow).why(), Move::ContextOverflow);
        assert_eq!(
            seen_of(
                &Outcome::Failure(Reason::StreamError),
                Some(200),
                None,
                Some("a.b".into())
            ),
            Seen::StreamError("a_b".into())
        );
    }

    #[test]
    fn a_token_is_honoured_while_its_attempt_is_out_on_its_own_connection() {
        let mut r = Relays::default();
        let t = r.open(entry(5), 42);
        let u = r.open(entry(5), 42);
        assert_ne!(t, u, "tokens differ");
        let j = r.claim(u, Some(5)).map(|e| e.journey.clone()).err();
        assert_eq!(j, Some(Refused::NotOut), "still buffering");
        for e in [t, u] {
            r.claim(e, Some(5)).err();
        }
        let jt = r.entries.get(&t).unwrap().journey.clone();
        jt.borrow_mut().stage = Stage::Routed;
        assert_eq!(r.claim(t, Some(6)).err(), Some(Refused::OtherConnection));
        assert!(r.claim(t, Some(5)).is_ok());
        jt.borrow_mut().stage = Stage::Relaying;
        assert!(r.claim(t, Some(5)).is_ok());
        jt.borrow_mut().stage = Stage::Passed;
        assert_eq!(r.claim(t, Some(5)).err(), Some(Refused::NotOut));
        assert_eq!(r.claim(t ^ 1, Some(5)).err(), Some(Refused::Unknown));
        assert!(r.close(t).is_some());
        assert_eq!(r.claim(t, Some(5)).err(), Some(Refused::Unknown));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn journeys_never_picked_up_are_swept() {
        let mut r = Relays::default();
        let t = r.open(entry(1), 0);
        let _out = r.open(entry(1), 0);
        {
            let j = r.entries.get(&t).unwrap().journey.clone();
            let mut j = j.borrow_mut();
            j.stage = Stage::Relaying;
            j.orphaned_ms = Some(1_000);
        }
        assert!(r.sweep(1_000 + CLAIM_WAIT_MS - 1).is_empty());
        assert_eq!(r.sweep(1_000 + CLAIM_WAIT_MS).len(), 1);
        assert_eq!(r.len(), 1, "a journey whose attempt is still out stays");
    }

    #[test]
    fn the_location_is_the_clients_own_url() {
        let h = |pairs: &[(&str, &str)]| -> Vec<(String, Vec<u8>)> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        assert_eq!(
            location(&h(&[
                (":scheme", "https"),
                (":authority", "gw:8443"),
                (":path", "/v1/messages?x=1")
            ]))
            .as_deref(),
            Some("https://gw:8443/v1/messages?x=1")
        );
        assert_eq!(
            location(&h(&[(":authority", "gw"), (":path", "/v1/chat/completions")])).as_deref(),
            Some("http://gw/v1/chat/completions")
        );
        assert_eq!(location(&h(&[(":authority", "gw"), (":path", "v1")])), None);
        assert_eq!(location(&h(&[(":authority", "g w"), (":path", "/v1")])), None);
        assert_eq!(location(&h(&[(":path", "/v1")])), None);
    }
}
