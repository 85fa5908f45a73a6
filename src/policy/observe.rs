//! What the filter sees of an answer as it passes: status, timing, how its stream ended.
//!
//! Gathered chunk by chunk into the `Observed` that classification judges:
//! when the body started, its longest silence, how a stream ended.

use crate::policy::classify::Observed;
use crate::policy::sse::{self, Dialect, Ending, Scanner};

#[derive(Debug, Default, Clone)]
pub struct Watch {
    pub status: Option<u16>,
    /// The answer reached its end (end of stream or trailers).
    pub complete: bool,
    /// When the request arrived.
    pub start_ms: Option<u64>,
    /// The client sent its whole request.
    pub request_complete: bool,
    first_byte_ms: Option<u64>,
    last_chunk_ms: Option<u64>,
    max_gap_ms: Option<u64>,
    /// For a 429: how long its headers asked to wait.
    pub retry_after_ms: Option<u64>,
    /// Set for a 2xx `text/event-stream` answer.
    pub scanner: Option<Scanner>,
    ending: Option<Ending>,
}

impl Watch {
    pub fn new(start_ms: u64) -> Self {
        Watch {
            start_ms: Some(start_ms),
            ..Watch::default()
        }
    }

    /// Notes the first byte of the answer's body (or its end, if bodiless).
    pub fn first_byte(&mut self, now_ms: u64) {
        if let (None, Some(start)) = (self.first_byte_ms, self.start_ms) {
            self.first_byte_ms = Some(now_ms.saturating_sub(start));
        }
    }

    /// Whether a body chunk of `size` bytes needs looking at (and the clock):
    /// the first bytes are timed, a scanned stream is read throughout.
    pub fn wants_chunk(&self, size: usize) -> bool {
        (self.first_byte_ms.is_none() && size > 0) || self.scanner.is_some()
    }

    /// A chunk of `size` bytes arrived at `now_ms`. Returns whether its
    /// bytes are to be fed to the stream scanner.
    pub fn chunk(&mut self, now_ms: u64, size: usize) -> bool {
        if size == 0 {
            return false;
        }
        self.first_byte(now_ms);
        if self.scanner.is_none() {
            return false;
        }
        if let Some(last) = self.last_chunk_ms {
            let gap = now_ms.saturating_sub(last);
            self.max_gap_ms = Some(self.max_gap_ms.map_or(gap, |g| g.max(gap)));
        }
        self.last_chunk_ms = Some(now_ms);
        true
    }

    /// Takes over a scanner that read a held stream's first bytes, released
    /// at `now_ms` with `size` bytes.
    pub fn resume_stream(&mut self, scanner: Option<Scanner>, now_ms: u64, size: usize) {
        self.scanner = scanner;
        if size > 0 {
            self.first_byte(now_ms);
            self.last_chunk_ms = Some(now_ms);
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if let Some(sc) = self.scanner.as_mut() {
            sc.feed(bytes);
        }
    }

    /// The scanned stream's end: judges it, and returns the error event to
    /// append when it was cut before its end marker (so the client never
    /// takes a cut stream for a complete one). `path_dialect` names the
    /// dialect when nothing in the stream did.
    pub fn finish(&mut self, vendor: &str, path_dialect: impl FnOnce() -> Option<&'static Dialect>) -> Option<Vec<u8>> {
        let scanner = self.scanner.as_mut()?;
        if scanner.dialect().is_none() {
            scanner.set_dialect_if_unknown(path_dialect());
        }
        let mid_event = scanner.mid_event();
        let ending = scanner.finish();
        let event = (ending == Ending::Truncated).then(|| sse::truncation_event(vendor, scanner.dialect(), mid_event));
        self.ending = Some(ending);
        event
    }

    /// Whether Envoy's response flags can add anything: not for a 2xx
    /// answer that reached its end (the common case skips reading them).
    pub fn needs_flags(&self) -> bool {
        !(self.complete && self.status.is_some_and(|s| (200..300).contains(&s)))
    }

    /// Everything seen, for classification at the stream's end, with the
    /// vendor's type of an in-stream error. A stream that never reached its
    /// end may still have shown an error.
    pub fn observed(&mut self, status: Option<u16>, flags: u64) -> (Observed, Option<String>) {
        let stream = self.ending.take().or_else(|| {
            let e = self.scanner.as_ref()?.error()?.clone();
            Some(Ending::Error(e))
        });
        let kind = match &stream {
            Some(Ending::Error(e)) => Some(e.kind.clone()),
            _ => None,
        };
        let seen = Observed {
            status,
            flags,
            stream,
            retry_after_ms: self.retry_after_ms,
            first_byte_ms: self.first_byte_ms,
            max_gap_ms: self.max_gap_ms,
            client_unfinished: !self.request_complete,
        };
        (seen, kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_the_first_byte_and_the_longest_silence() {
        let mut w = Watch::new(1_000);
        w.scanner = Some(Scanner::new());
        assert!(w.wants_chunk(0), "a scanned stream is read throughout");
        assert!(w.chunk(1_300, 10));
        assert!(w.chunk(1_350, 10));
        assert!(w.chunk(2_350, 10));
        assert!(!w.chunk(2_400, 0));
        let (seen, _) = w.observed(Some(200), 0);
        assert_eq!(seen.first_byte_ms, Some(300));
        assert_eq!(seen.max_gap_ms, Some(1_000));
    }

    #[test]
    fn a_json_answer_is_looked_at_once() {
        let mut w = Watch::new(0);
        assert!(w.wants_chunk(5));
        assert!(!w.chunk(40, 5), "nothing to scan");
        assert!(!w.wants_chunk(5), "first byte timed already");
        w.status = Some(200);
        assert!(w.needs_flags(), "not complete yet");
        w.complete = true;
        assert!(!w.needs_flags());
        w.status = Some(503);
        assert!(w.needs_flags());
    }

    #[test]
    fn a_cut_stream_gets_an_error_event_and_is_judged_truncated() {
        let mut w = Watch::new(0);
        w.scanner = Some(Scanner::new());
        w.chunk(1, 10);
        w.feed(b"data: {\"object\":\"chat.completion.chunk\",\"choices\":[]}\n\n");
        let event = w.finish("a", || Some(&sse::OPENAI)).unwrap();
        assert!(String::from_utf8_lossy(&event).contains("stream_truncated"));
        let (seen, kind) = w.observed(Some(200), 0);
        assert_eq!(seen.stream, Some(Ending::Truncated));
        assert_eq!(kind, None);
    }

    #[test]
    fn an_error_seen_before_the_client_left_still_counts() {
        let mut w = Watch::new(0);
        w.scanner = Some(Scanner::with_dialect(Some(&sse::ANTHROPIC)));
        w.feed(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n");
        let (seen, kind) = w.observed(Some(200), 0);
        assert!(matches!(seen.stream, Some(Ending::Error(_))));
        assert_eq!(kind.as_deref(), Some("overloaded_error"));
    }
}
