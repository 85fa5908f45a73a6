//! Server-sent-event scanning: errors inside 200 streams, and streams cut before their end marker.
//!
//! The scan runs chunk by chunk as the bytes pass to the client: nothing is
//! held back or buffered beyond the event being read.
//!
//! Lines may end in LF, CRLF or CR and may be split across chunks at any
//! byte; `data:` may span several lines; comments (`:`) and keep-alives are
//! skipped. What counts as an error or an end marker is in one table,
//! `DIALECTS`, so another vendor's stream format is a small addition.

use crate::policy::config::Format;

/// Bytes of one line, and of one event's data, kept for inspection. Longer
/// lines and events are still followed (their structure is tracked), but
/// only their first bytes are inspected: the markers sought are short and
/// come first.
pub const LINE_CAP: usize = 16 * 1024;
pub const DATA_CAP: usize = 16 * 1024;

/// A stream format: how it names its events, ends, and reports errors.
#[derive(Debug, PartialEq, Eq)]
pub struct Dialect {
    pub name: &'static str,
    /// Event names (`event:` lines) only this dialect uses.
    pub event_names: &'static [&'static str],
    /// A JSON fragment only this dialect's data carries.
    pub data_marker: Option<&'static str>,
    /// Event names that end a complete stream.
    pub end_events: &'static [&'static str],
    /// Data payloads that end a complete stream.
    pub end_data: &'static [&'static str],
    /// JSON keys whose non-null value marks the last chunk of an answer.
    pub finish_keys: &'static [&'static str],
    /// Request path fragments that mean this dialect's API.
    pub paths: &'static [&'static str],
}

/// OpenAI chat completions, and every OpenAI-compatible API (xAI, Groq,
/// Mistral, DeepSeek, vLLM, Gemini's OpenAI endpoint...).
pub const OPENAI: Dialect = Dialect {
    name: "openai",
    event_names: &[],
    data_marker: Some("\"chat.completion.chunk\""),
    end_events: &[],
    end_data: &["[DONE]"],
    finish_keys: &["\"finish_reason\""],
    paths: &["/chat/completions", "/completions"],
};

/// Anthropic Messages.
pub const ANTHROPIC: Dialect = Dialect {
    name: "anthropic",
    event_names: &[
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ],
    data_marker: Some("\"message_start\""),
    end_events: &["message_stop"],
    end_data: &[],
    finish_keys: &[],
    paths: &["/messages"],
};

/// Google Gemini `streamGenerateContent?alt=sse`.
pub const GEMINI: Dialect = Dialect {
    name: "gemini",
    event_names: &[],
    data_marker: Some("\"candidates\""),
    end_events: &[],
    end_data: &[],
    finish_keys: &["\"finishReason\""],
    paths: &[":streamGenerateContent"],
};

pub const DIALECTS: [&Dialect; 3] = [&OPENAI, &ANTHROPIC, &GEMINI];

/// The stream dialect of a client API format.
pub fn dialect_of(format: Format) -> &'static Dialect {
    match format {
        Format::OpenAi => &OPENAI,
        Format::Anthropic => &ANTHROPIC,
    }
}

/// The dialect a request path speaks, if any.
pub fn dialect_for_path(path: &[u8]) -> Option<&'static Dialect> {
    DIALECTS
        .into_iter()
        .find(|d| d.paths.iter().any(|p| find(path, p.as_bytes()).is_some()))
}

/// An error a vendor reported inside the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    /// The vendor's error type (`overloaded_error`, `server_error`...), or
    /// `"error"` when it gave none.
    pub kind: String,
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Its end marker arrived and no error did.
    Complete,
    /// The vendor reported an error inside the stream.
    Error(StreamError),
    /// It ended without its end marker.
    Truncated,
    /// A format this scanner does not know: no judgement.
    Unknown,
}

/// Scans one response stream.
#[derive(Debug, Default, Clone)]
pub struct Scanner {
    dialect: Option<&'static Dialect>,
    line: Vec<u8>,
    line_len: usize,
    /// The previous chunk ended in CR: a leading LF belongs to that line end.
    after_cr: bool,
    event_name: Vec<u8>,
    data: Vec<u8>,
    data_len: usize,
    has_data: bool,
    events: u64,
    ended: bool,
    error: Option<StreamError>,
}

impl Scanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// A scanner that already knows the dialect (from the request path).
    pub fn with_dialect(dialect: Option<&'static Dialect>) -> Self {
        Scanner {
            dialect,
            ..Self::default()
        }
    }

    pub fn dialect(&self) -> Option<&'static Dialect> {
        self.dialect
    }

    pub fn set_dialect_if_unknown(&mut self, dialect: Option<&'static Dialect>) {
        if self.dialect.is_none() {
            self.dialect = dialect;
        }
    }

    /// Events seen so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The first error seen inside the stream, as soon as it is seen.
    pub fn error(&self) -> Option<&StreamError> {
        self.error.as_ref()
    }

    /// True while a line or an event has started but not ended.
    pub fn mid_event(&self) -> bool {
        self.line_len > 0 || self.has_data || !self.event_name.is_empty()
    }

    /// Feeds the next bytes of the stream.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while let Some(end) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (part, rest) = chunk.split_at(end);
            self.take_line_part(part);
            self.end_line();
            let Some((&terminator, mut rest)) = rest.split_first() else {
                break;
            };
            if terminator == b'\r' {
                match rest.first() {
                    Some(b'\n') => rest = rest.get(1..).unwrap_or_default(),
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            chunk = rest;
        }
        self.take_line_part(chunk);
    }

    /// The verdict if the stream ended now, leaving this scanner as it is.
    pub fn clone_finish(&self) -> Ending {
        self.clone().finish()
    }

    /// The verdict once the stream has ended (no more bytes will come).
    pub fn finish(&mut self) -> Ending {
        // An unterminated last line or event still counts for the verdict:
        // its content reached the client.
        if self.line_len > 0 {
            self.end_line();
        }
        if self.has_data || !self.event_name.is_empty() {
            self.dispatch();
        }
        if let Some(e) = &self.error {
            return Ending::Error(e.clone());
        }
        if self.ended {
            return Ending::Complete;
        }
        // A stream without a single event is no answer in any format.
        if self.dialect.is_some() || self.events == 0 {
            Ending::Truncated
        } else {
            Ending::Unknown
        }
    }

    fn take_line_part(&mut self, part: &[u8]) {
        self.line_len = self.line_len.saturating_add(part.len());
        let room = LINE_CAP.saturating_sub(self.line.len());
        self.line
            .extend_from_slice(part.get(..room.min(part.len())).unwrap_or_default());
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        let len = std::mem::replace(&mut self.line_len, 0);
        self.process_line(&line, len);
        self.line = line;
        self.line.clear();
    }

    fn process_line(&mut self, line: &[u8], full_len: usize) {
        if full_len == 0 {
            self.dispatch();
            return;
        }
        if line.first() == Some(&b':') {
            return; // comment or keep-alive
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let (f, v) = line.split_at(i);
                let v = v.get(1..).unwrap_or_default();
                (f, v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => {
                self.event_name.clear();
                self.event_name.extend_from_slice(value.get(..64).unwrap_or(value));
            }
            b"data" => {
                if self.has_data {
                    self.push_data(b"\n");
                }
                self.has_data = true;
                // The kept line may have been cut at LINE_CAP: count the rest.
                self.push_data(value);
                let cut = full_len.saturating_sub(line.len());
                self.data_len = self.data_len.saturating_add(cut);
            }
            _ => {} // id, retry, unknown fields
        }
    }

    fn push_data(&mut self, bytes: &[u8]) {
        self.data_len = self.data_len.saturating_add(bytes.len());
        let room = DATA_CAP.saturating_sub(self.data.len());
        self.data
            .extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
    }

    fn dispatch(&mut self) {
        if !self.has_data && self.event_name.is_empty() {
            return;
        }
        self.events += 1;
        let name = std::mem::take(&mut self.event_name);
        let data = std::mem::take(&mut self.data);
        self.inspect(&name, &data);
        self.event_name = name;
        self.event_name.clear();
        self.data = data;
        self.data.clear();
        self.data_len = 0;
        self.has_data = false;
    }

    fn inspect(&mut self, name: &[u8], data: &[u8]) {
        if self.dialect.is_none() {
            self.dialect = DIALECTS.into_iter().find(|d| {
                d.event_names.iter().any(|n| n.as_bytes() == name)
                    || d.data_marker.is_some_and(|m| find(data, m.as_bytes()).is_some())
            });
        }
        if name == b"error" {
            self.note_error(error_kind(data).unwrap_or_else(|| "error".to_string()));
            return;
        }
        let trimmed = trim(data);
        if trimmed.first() == Some(&b'{') {
            if let Some(kind) = json_error(trimmed) {
                self.note_error(kind);
                return;
            }
        }
        let Some(d) = self.dialect else {
            // Before the dialect is known, only the universal end marker.
            if trimmed == b"[DONE]" {
                self.ended = true;
            }
            return;
        };
        if d.end_events.iter().any(|e| e.as_bytes() == name)
            || d.end_data.iter().any(|e| e.as_bytes() == trimmed)
            || d.finish_keys.iter().any(|k| has_non_null(trimmed, k.as_bytes()))
        {
            self.ended = true;
        }
    }

    fn note_error(&mut self, kind: String) {
        if self.error.is_none() {
            self.error = Some(StreamError { kind });
        }
    }
}

/// The error event the filter appends to a stream that ended without its
/// end marker. One shape serves both SDK families: the Anthropic SDK raises
/// on any `event: error`, the OpenAI SDK on any data object with an `error`.
pub fn truncation_event(vendor: &str, dialect: Option<&Dialect>, mid_event: bool) -> Vec<u8> {
    let message = format!(
        "llm-failover: the {} stream from vendor {vendor} ended before its end marker; the answer is incomplete",
        dialect.map_or("event", |d| d.name)
    );
    let body = serde_json::json!({
        "type": "error",
        "error": {
            "type": "api_error",
            "code": "stream_truncated",
            "message": message,
        }
    });
    let mut out = Vec::new();
    if mid_event {
        out.extend_from_slice(b"\n\n");
    }
    out.extend_from_slice(b"event: error\ndata: ");
    out.extend_from_slice(body.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
    out
}

/// Byte-string search (the haystacks are small: one event's first bytes).
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    let first = *needle.first()?;
    let last_start = haystack.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        let rel = haystack.get(i..=last_start)?.iter().position(|&b| b == first)?;
        i += rel;
        if haystack.get(i..i + needle.len()) == Some(needle) {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    b.get(start..end).unwrap_or_default()
}

/// True if `key` (with its quotes) appears as a JSON key whose value is not
/// `null`. A key inside a JSON string would have escaped quotes, so a plain
/// match with a following colon is a real key.
fn has_non_null(json: &[u8], key: &[u8]) -> bool {
    let mut from = 0;
    while let Some(at) = json.get(from..).and_then(|rest| find(rest, key)) {
        let after = from + at + key.len();
        let rest = trim_start(json.get(after..).unwrap_or_default());
        if let Some(value) = rest.strip_prefix(b":") {
            let value = trim_start(value);
            if !value.is_empty() && !value.starts_with(b"null") {
                return true;
            }
        }
        from = after;
    }
    false
}

fn trim_start(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    b.get(start..).unwrap_or_default()
}

/// The error type of a JSON error payload: `{"error": {...}}` (OpenAI) or
/// `{"type": "error", "error": {"type": ...}}` (Anthropic). Parsed only
/// when an `"error"` key is present, so ordinary chunks cost a byte search.
fn json_error(data: &[u8]) -> Option<String> {
    // Ordinary chunks never contain the quoted word: one search rules them out.
    find(data, b"\"error\"")?;
    if !has_key(data, b"\"error\"") && !has_key(data, b"\"type\"") {
        return None;
    }

    let value: serde_json::Value = serde_json::from_slice(data).ok()?;
    let obj = value.as_object()?;
    let is_error = match obj.get("error") {
        Some(serde_json::Value::Null) | None => obj.get("type").and_then(|t| t.as_str()) == Some("error"),
        Some(_) => true,
    };
    if !is_error {
        return None;
    }
    Some(kind_of(&value))
}

fn has_key(json: &[u8], key: &[u8]) -> bool {
    let mut from = 0;
    while let Some(at) = json.get(from..).and_then(|rest| find(rest, key)) {
        let after = from + at + key.len();
        if trim_start(json.get(after..).unwrap_or_default()).starts_with(b":") {
            return true;
        }
        from = after;
    }
    false
}

/// The error type in an `event: error` payload, if it is JSON.
fn error_kind(data: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(trim(data)).ok()?;
    Some(kind_of(&value))
}

fn kind_of(value: &serde_json::Value) -> String {
    let error = value.get("error");
    let kind = error
        .and_then(|e| {
            ["type", "status", "code"]
                .iter()
                .find_map(|k| e.get(k).and_then(|v| v.as_str()))
        })
        .or_else(|| error.and_then(|e| e.as_str()))
        .unwrap_or("error");
    // The kind names a stat: keep it short and plain.
    kind.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(48)
        .collect::<String>()
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENAI_OK: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: [DONE]\n\n";

    const ANTHROPIC_OK: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude\",\"stop_reason\":null,\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\ndata: {\"type\": \"ping\"}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":2}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    const ANTHROPIC_OVERLOADED: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n\
event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";

    const OPENAI_ERROR: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n\
data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n";

    fn scan_whole(s: &[u8]) -> Ending {
        let mut sc = Scanner::new();
        sc.feed(s);
        sc.finish()
    }

    /// Feeds `s` split at every pair of positions (three chunks), and checks
    /// every split gives `expected`.
    fn every_split(s: &[u8], expected: &Ending) {
        for i in 0..=s.len() {
            let mut sc = Scanner::new();
            sc.feed(&s[..i]);
            sc.feed(&s[i..]);
            assert_eq!(&sc.finish(), expected, "split at {i}");
        }
        let step = (s.len() / 40).max(1);
        for i in (0..=s.len()).step_by(step) {
            for j in (i..=s.len()).step_by(step) {
                let mut sc = Scanner::new();
                sc.feed(&s[..i]);
                sc.feed(&s[i..j]);
                sc.feed(&s[j..]);
                assert_eq!(&sc.finish(), expected, "splits at {i}, {j}");
            }
        }
        // One byte at a time.
        let mut sc = Scanner::new();
        for b in s {
            sc.feed(std::slice::from_ref(b));
        }
        assert_eq!(&sc.finish(), expected, "byte by byte");
    }

    fn crlf(s: &str) -> String {
        s.replace('\n', "\r\n")
    }

    fn cr(s: &str) -> String {
        s.replace('\n', "\r")
    }

    fn err(kind: &str) -> Ending {
        Ending::Error(StreamError { kind: kind.into() })
    }

    #[test]
    fn complete_streams_at_every_split_with_every_line_ending() {
        for s in [OPENAI_OK, ANTHROPIC_OK] {
            every_split(s.as_bytes(), &Ending::Complete);
            every_split(crlf(s).as_bytes(), &Ending::Complete);
            every_split(cr(s).as_bytes(), &Ending::Complete);
        }
    }

    #[test]
    fn errors_inside_200_streams_at_every_split() {
        every_split(ANTHROPIC_OVERLOADED.as_bytes(), &err("overloaded_error"));
        every_split(crlf(ANTHROPIC_OVERLOADED).as_bytes(), &err("overloaded_error"));
        every_split(OPENAI_ERROR.as_bytes(), &err("server_error"));
        every_split(crlf(OPENAI_ERROR).as_bytes(), &err("server_error"));
    }

    #[test]
    fn an_error_is_seen_as_soon_as_its_event_ends() {
        let mut sc = Scanner::new();
        let cut = ANTHROPIC_OVERLOADED.len() - 1;
        sc.feed(&ANTHROPIC_OVERLOADED.as_bytes()[..cut]);
        assert!(sc.error().is_none(), "the event has not ended yet");
        sc.feed(b"\n");
        assert_eq!(sc.error().map(|e| e.kind.as_str()), Some("overloaded_error"));
    }

    #[test]
    fn truncated_streams_at_every_split() {
        // Everything before the end marker, cut at the end of each event.
        for (s, marker) in [(OPENAI_OK, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}"), (ANTHROPIC_OK, "event: message_stop")] {
            let cut = s.find(marker).unwrap();
            every_split(&s.as_bytes()[..cut], &Ending::Truncated);
            // Cut in the middle of an event too.
            every_split(&s.as_bytes()[..cut - 20], &Ending::Truncated);
        }
    }

    #[test]
    fn openai_finish_reason_without_done_is_complete() {
        let s = OPENAI_OK.replace("data: [DONE]\n\n", "");
        assert_eq!(scan_whole(s.as_bytes()), Ending::Complete);
        // ...but finish_reason null is not.
        let s = OPENAI_OK
            .split("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},")
            .next()
            .unwrap();
        assert_eq!(scan_whole(s.as_bytes()), Ending::Truncated);
    }

    #[test]
    fn comments_keepalives_ids_and_retry_are_skipped() {
        let s = format!(": keep-alive\n\nid: 7\nretry: 1000\n: another comment\n{OPENAI_OK}: trailing comment\n\n");
        every_split(s.as_bytes(), &Ending::Complete);
    }

    #[test]
    fn data_spanning_lines_is_joined() {
        let s = "event: error\ndata: {\"type\":\"error\",\ndata:  \"error\":{\"type\":\"api_error\",\"message\":\"x\"}}\n\n";
        every_split(s.as_bytes(), &err("api_error"));
        let s = "data: {\"error\":\ndata: {\"type\":\"server_error\"}}\n\n";
        every_split(s.as_bytes(), &err("server_error"));
    }

    #[test]
    fn a_very_large_event_is_followed_without_keeping_it() {
        let big = "x".repeat(300_000);
        let s = format!(
            "data: {{\"object\":\"chat.completion.chunk\",\"choices\":[{{\"delta\":{{\"content\":\"{big}\"}},\"finish_reason\":null}}]}}\n\n\
             data: [DONE]\n\n"
        );
        let mut sc = Scanner::new();
        for chunk in s.as_bytes().chunks(1000) {
            sc.feed(chunk);
            assert!(sc.line.capacity() <= 2 * LINE_CAP && sc.data.capacity() <= 2 * DATA_CAP);
        }
        assert_eq!(sc.finish(), Ending::Complete);
        assert_eq!(sc.events(), 2);
    }

    #[test]
    fn content_that_mentions_errors_is_not_an_error() {
        let s = OPENAI_OK.replace(
            "\\\"content\\\":\\\"Hel\\\"",
            "\\\"content\\\":\\\"the \\\\\\\"error\\\\\\\": key and finish_reason\\\"",
        );
        let s = s.replace(
            "\"content\":\"Hel\"",
            "\"content\":\"say \\\"error\\\": {\\\"type\\\":\\\"x\\\"} and \\\"finish_reason\\\": 1\"",
        );
        assert_eq!(scan_whole(s.as_bytes()), Ending::Complete);
        let cut = s.find("data: [DONE]").unwrap();
        let without_end = s[..cut].replace("\"finish_reason\":\"stop\"", "\"finish_reason\":null");
        assert_eq!(scan_whole(without_end.as_bytes()), Ending::Truncated);
    }

    #[test]
    fn malformed_json_and_non_utf8_do_not_confuse_it() {
        let mut s =
            b"data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"\xff\xfe\"}".to_vec();
        s.extend_from_slice(
            b"\n\ndata: {not json at all\n\ndata: {\"error\": oops}\n\n\xc3\x28: \xff\n\ndata: [DONE]\n\n",
        );
        assert_eq!(scan_whole(&s), Ending::Complete);
        let s = b"event: error\ndata: \xff\xfe not json\n\n";
        assert_eq!(scan_whole(s), err("error"));
    }

    #[test]
    fn unknown_formats_get_no_verdict_unless_the_path_names_one_or_nothing_came() {
        let s = b"event: token\ndata: hello\n\nevent: token\ndata: world\n\n";
        assert_eq!(scan_whole(s), Ending::Unknown);
        let mut sc = Scanner::with_dialect(dialect_for_path(b"/v1/chat/completions"));
        sc.feed(b": nothing yet\n\n");
        assert_eq!(sc.finish(), Ending::Truncated);
        // No event at all is no answer, whatever the format.
        assert_eq!(scan_whole(b""), Ending::Truncated);
        assert_eq!(scan_whole(b": keep-alive\n\n"), Ending::Truncated);
        // An error is an error in any format.
        assert_eq!(scan_whole(b"event: error\ndata: {}\n\n"), err("error"));
    }

    #[test]
    fn gemini_streams() {
        let ok = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hi\"}]}}]}\r\n\r\n\
                  data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"!\"}]}, \"finishReason\": \"STOP\"}]}\r\n\r\n";
        every_split(ok.as_bytes(), &Ending::Complete);
        let cut = ok
            .find("data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"!\"")
            .unwrap();
        assert_eq!(scan_whole(&ok.as_bytes()[..cut]), Ending::Truncated);
        let error = "data: {\"error\": {\"code\": 503, \"message\": \"overloaded\", \"status\": \"UNAVAILABLE\"}}\n\n";
        assert_eq!(scan_whole(error.as_bytes()), err("unavailable"));
    }

    #[test]
    fn dialects_by_path() {
        assert_eq!(dialect_for_path(b"/v1/messages").map(|d| d.name), Some("anthropic"));
        assert_eq!(
            dialect_for_path(b"/openai/v1/chat/completions?x=1").map(|d| d.name),
            Some("openai")
        );
        assert_eq!(
            dialect_for_path(b"/v1beta/models/gemini-pro:streamGenerateContent?alt=sse").map(|d| d.name),
            Some("gemini")
        );
        assert_eq!(dialect_for_path(b"/v1/embeddings"), None);
    }

    #[test]
    fn the_appended_event_is_an_error_to_both_sdk_families() {
        let mut sc = Scanner::new();
        let ev = truncation_event("openai", Some(&OPENAI), false);
        sc.feed(&ev);
        assert_eq!(sc.finish(), err("api_error"));
        let text = String::from_utf8(ev).unwrap();
        assert!(text.starts_with("event: error\ndata: {"));
        let data: serde_json::Value =
            serde_json::from_str(text.trim_end().strip_prefix("event: error\ndata: ").unwrap()).unwrap();
        assert_eq!(data["error"]["code"], "stream_truncated");
        assert_eq!(data["type"], "error");
        // Cut mid-event: the event is closed first.
        assert!(truncation_event("x", None, true).starts_with(b"\n\nevent: error"));
    }

    #[test]
    fn find_works_at_the_edges() {
        assert_eq!(find(b"abc", b"abc"), Some(0));
        assert_eq!(find(b"xxabc", b"abc"), Some(2));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"aab", b"ab"), Some(1));
        assert_eq!(find(b"", b"a"), None);
        assert_eq!(find(b"a", b""), None);
    }

    /// Random streams assembled from fragments of real ones, cut into random
    /// chunks: the scanner never panics and gives the same verdict however the
    /// stream is cut. Runs briefly here; `make fuzz` runs it longer.
    #[test]
    fn property_verdict_does_not_depend_on_chunking() {
        let rounds: u64 = std::env::var("LLMF_FUZZ_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2_000);
        let pieces: Vec<&[u8]> = vec![
            b"data: ",
            b"event: ",
            b"error",
            b"message_stop",
            b"[DONE]",
            b"\n",
            b"\r\n",
            b"\r",
            b":",
            b" ",
            b"{\"error\":{\"type\":\"x\"}}",
            b"{\"finish_reason\":\"stop\"}",
            b"{\"finish_reason\":null}",
            b"\"chat.completion.chunk\"",
            b"message_start",
            b"\xff",
            b"{",
            b"}",
            b"\"",
            b"data:[DONE]\n\n",
            b"event: error\n",
            b"{\"type\":\"error\"}",
            b"id: 1\n",
            b"retry: 5\n",
        ];
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..rounds {
            let n = (next() % 40) as usize;
            let mut s = Vec::new();
            for _ in 0..n {
                s.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]);
            }
            let whole = scan_whole(&s);
            let mut sc = Scanner::new();
            let mut rest = &s[..];
            while !rest.is_empty() {
                let take = ((next() % 7) as usize + 1).min(rest.len());
                sc.feed(&rest[..take]);
                rest = &rest[take..];
            }
            assert_eq!(sc.finish(), whole, "stream {:?}", String::from_utf8_lossy(&s));
        }
    }
}
