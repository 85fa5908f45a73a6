//! Continuing a stream that failed after content reached the client: follow what was delivered, ask the next vendor to go on from it, say its answer in the client's dialect.
//!
//! While a 2xx stream passes, `Follow` forwards it event by event: a partial
//! event at the end of a chunk is held until it is complete, and an error
//! event is held back (with anything after it). It keeps the text delivered
//! so far. If the stream then ends without its end marker, or with an error,
//! the next vendor is asked to continue from that text (an assistant
//! prefill, in the way the vendor takes one: `Style`), and its answer is
//! appended to the client's stream as more deltas, one end marker and its
//! usage, so the client gets one whole answer.

use crate::policy::config::{Format, Prefill};
use crate::policy::sse::{find, Ending, Scanner};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::borrow::Cow;

/// The longest answer text kept for a continuation; past it the stream is
/// no longer followed for one.
pub const MAX_TEXT: usize = 1024 * 1024;
/// The longest partial event held back at the end of a chunk; a longer one
/// is forwarded as it comes (and the stream is no longer continuable).
pub const MAX_TAIL: usize = 64 * 1024;

/// How a vendor takes the text to continue from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A trailing assistant message (Anthropic Messages; some
    /// OpenAI-compatible servers).
    Assistant,
    /// A trailing assistant message with `"prefix": true` (DeepSeek).
    AssistantPrefix,
    /// A trailing assistant message and `"continue_final_message": true,
    /// "add_generation_prompt": false` (vLLM).
    ContinueFinalMessage,
}

/// How a vendor declared with `prefill` continues a request in `format`;
/// `None`: it does not.
pub fn style(prefill: Prefill, format: Format) -> Option<Style> {
    match (prefill, format) {
        (Prefill::None, _) => None,
        (_, Format::Anthropic) => Some(Style::Assistant),
        (Prefill::Auto, Format::OpenAi) => None,
        (Prefill::Assistant, Format::OpenAi) => Some(Style::Assistant),
        (Prefill::AssistantPrefix, Format::OpenAi) => Some(Style::AssistantPrefix),
        (Prefill::ContinueFinalMessage, Format::OpenAi) => Some(Style::ContinueFinalMessage),
    }
}

/// What the stream said of itself, for the continuation's events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// OpenAI: the chunks' `id`, `created` and `model`.
    pub id: Option<String>,
    pub created: Option<u64>,
    pub model: Option<String>,
    /// Anthropic: the text block still open, and the next block index.
    pub open_block: Option<u64>,
    pub next_block: u64,
}

/// Follows a stream in the client's dialect as it passes.
#[derive(Debug, Clone)]
pub struct Follow {
    format: Format,
    scanner: Scanner,
    tail: Vec<u8>,
    text: String,
    meta: Meta,
    /// Only text so far, within bounds: a continuation can go on from it.
    capable: bool,
    /// The vendor's error event, held back from the client.
    held_error: Option<Vec<u8>>,
}

/// What the stream's end calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// It ended well (or in a way no continuation mends): send what is held.
    Release(Vec<u8>),
    /// It failed after content reached the client: continue it.
    Continue,
}

impl Follow {
    pub fn new(format: Format) -> Self {
        Follow {
            format,
            scanner: Scanner::with_dialect(Some(crate::policy::sse::dialect_of(format))),
            tail: Vec::new(),
            text: String::new(),
            meta: Meta::default(),
            capable: true,
            held_error: None,
        }
    }

    /// Takes the next bytes of the stream; the bytes to send on now: every
    /// complete event before an error event.
    pub fn take(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.held_error.is_some() {
            return Vec::new(); // nothing after the error reaches the client
        }
        self.tail.extend_from_slice(chunk);
        let buf = std::mem::take(&mut self.tail);
        // Complete events go on; the bytes after the last one stay held.
        let mut sent = 0;
        while let Some(len) = event_end(buf.get(sent..).unwrap_or_default()) {
            let event = buf.get(sent..sent + len).unwrap_or_default();
            self.scanner.feed(event);
            if self.scanner.error().is_some() {
                self.held_error = Some(event.to_vec());
                return buf.get(..sent).unwrap_or_default().to_vec();
            }
            self.note(event);
            sent += len;
        }
        let mut out = buf;
        self.tail = out.split_off(sent);
        if self.tail.len() > MAX_TAIL {
            // A giant event: pass it on unjudged, and no continuation.
            self.capable = false;
            self.scanner.feed(&self.tail);
            out.append(&mut self.tail);
        }
        out
    }

    /// The stream ended: whether to continue it, or what to send.
    pub fn end(&mut self) -> End {
        let cut_mid_event = !self.tail.is_empty();
        let mut scanner = self.scanner.clone();
        scanner.feed(&self.tail);
        let ending = scanner.finish();
        let failed = self.held_error.is_some() || cut_mid_event || ending == Ending::Truncated;
        if failed && self.capable && !self.text.trim().is_empty() {
            return End::Continue;
        }
        let mut out = std::mem::take(&mut self.tail);
        if let Some(e) = self.held_error.take() {
            out.extend_from_slice(&e);
        }
        End::Release(out)
    }

    /// Its scanner, having read everything the vendor sent (what is held
    /// included): the stream's verdict is judged by it.
    pub fn scanner(&self) -> Scanner {
        let mut scanner = self.scanner.clone();
        scanner.feed(&self.tail);
        scanner
    }

    /// The text delivered so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The vendor's own error event, if it sent one (the failure to end
    /// with when no continuation can be had).
    pub fn held_error(&self) -> Option<&[u8]> {
        self.held_error.as_deref()
    }

    /// Whether the partial event held at the end was cut mid-way.
    pub fn cut_mid_event(&self) -> bool {
        !self.tail.is_empty()
    }

    fn note(&mut self, event: &[u8]) {
        if !self.capable {
            return;
        }
        let Some(data) = event_data(event) else {
            return;
        };
        // The common event, a plain text delta, is read by its one field
        // (see `quick_delta`); any other is read typed, only the fields kept
        // (a generic JSON tree per event costs several times more).
        if let Some(text) = self.quick_delta(&data) {
            self.text.push_str(&text);
        } else {
            match self.format {
                Format::OpenAi => {
                    if let Ok(chunk) = serde_json::from_slice::<OpenAiChunk>(&data) {
                        self.note_openai(chunk);
                    }
                }
                Format::Anthropic => {
                    if let Ok(event) = serde_json::from_slice::<AnthropicEvent>(&data) {
                        self.note_anthropic(event);
                    }
                }
            }
        }
        if self.text.len() > MAX_TEXT {
            self.capable = false;
        }
    }

    /// The text of a plain text delta, read without parsing the whole event:
    /// the string after the delta's text key. A key written raw cannot occur
    /// inside a JSON string (its quotes would be escaped), so the first one
    /// after `"delta":` is the delta's own. `None` (read it typed) for the
    /// first OpenAI chunk (its id and model are kept), anything that is not
    /// a lone text delta, or a shape this does not recognise.
    fn quick_delta<'a>(&self, data: &'a [u8]) -> Option<Cow<'a, str>> {
        let key: &[u8] = match self.format {
            Format::OpenAi if self.meta.id.is_some() => b"\"content\":",
            Format::OpenAi => return None,
            Format::Anthropic => {
                // Only text deltas (not tool input or thinking).
                find(data, b"\"text_delta\"")?;
                b"\"text\":"
            }
        };
        const DELTA: &[u8] = b"\"delta\":";
        let rest = data.get(find(data, DELTA)? + DELTA.len()..)?;
        if find(rest, DELTA).is_some() {
            return None; // several deltas (several choices): read it typed
        }
        if self.format == Format::OpenAi
            && (find(rest, b"\"tool_calls\"").is_some() || find(rest, b"\"function_call\"").is_some())
        {
            return None;
        }
        let value = rest.get(find(rest, key)? + key.len()..)?;
        let value = value.get(value.iter().position(|b| !b.is_ascii_whitespace())?..)?;
        if value.first() != Some(&b'"') {
            return None;
        }
        let mut strings = serde_json::Deserializer::from_slice(value).into_iter::<Cow<str>>();
        strings.next()?.ok()
    }

    fn note_openai(&mut self, v: OpenAiChunk) {
        if self.meta.id.is_none() {
            self.meta.id = v.id.map(Cow::into_owned);
            self.meta.created = v.created;
            self.meta.model = v.model.map(Cow::into_owned);
        }
        for c in v.choices {
            if c.index != 0 {
                self.capable = false; // several choices: not one answer to go on from
            }
            let Some(delta) = c.delta else {
                continue;
            };
            if delta.tool_calls.is_some() || delta.function_call.is_some() {
                self.capable = false;
            }
            if let Some(t) = delta.content {
                self.text.push_str(&t);
            }
        }
    }

    fn note_anthropic(&mut self, v: AnthropicEvent) {
        match v.kind.as_ref() {
            "message_start" => {
                if let Some(m) = v.message {
                    self.meta.id = m.id.map(Cow::into_owned);
                    self.meta.model = m.model.map(Cow::into_owned);
                }
            }
            "content_block_start" => {
                let kind = v.content_block.as_ref().and_then(|b| b.kind.as_deref());
                if kind != Some("text") {
                    self.capable = false; // tool use, thinking: no prefill goes on from those
                }
                self.meta.open_block = v.index;
                self.meta.next_block = v.index.map_or(self.meta.next_block, |i| i.saturating_add(1));
            }
            "content_block_delta" => match v.delta {
                Some(AnthropicDelta { kind: Some(k), text }) if k == "text_delta" => {
                    if let Some(t) = text {
                        self.text.push_str(&t);
                    }
                }
                _ => self.capable = false,
            },
            "content_block_stop" => self.meta.open_block = None,
            _ => {}
        }
    }
}

/// The fields of an OpenAI chunk a continuation needs.
#[derive(Deserialize)]
struct OpenAiChunk<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    created: Option<u64>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Vec<OpenAiChoice<'a>>,
}

#[derive(Deserialize)]
struct OpenAiChoice<'a> {
    #[serde(default)]
    index: u64,
    #[serde(borrow, default)]
    delta: Option<OpenAiDelta<'a>>,
}

#[derive(Deserialize)]
struct OpenAiDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<IgnoredAny>,
    #[serde(default)]
    function_call: Option<IgnoredAny>,
}

/// The fields of an Anthropic event a continuation needs.
#[derive(Deserialize)]
struct AnthropicEvent<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    message: Option<AnthropicMessage<'a>>,
    #[serde(borrow, default)]
    content_block: Option<AnthropicBlock<'a>>,
    #[serde(borrow, default)]
    delta: Option<AnthropicDelta<'a>>,
}

#[derive(Deserialize)]
struct AnthropicMessage<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct AnthropicBlock<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct AnthropicDelta<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

/// The end of the first complete event in `bytes` (just past its blank
/// line), if there is one.
fn event_end(bytes: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(off) = bytes.get(i..)?.iter().position(|&b| b == b'\n' || b == b'\r') {
        let at = i + off;
        let rest = bytes.get(at..).unwrap_or_default();
        for sep in [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"] {
            if rest.starts_with(sep) {
                return Some(at + sep.len());
            }
        }
        i = at + 1;
    }
    None
}

/// An event's `data` lines, joined.
fn event_data(event: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut data: Option<Cow<'_, [u8]>> = None;
    for line in event.split(|&b| b == b'\n' || b == b'\r') {
        if let Some(v) = line.strip_prefix(b"data:") {
            let v = v.strip_prefix(b" ").unwrap_or(v);
            data = Some(match data {
                // One data line, the usual case: no copy.
                None => Cow::Borrowed(v),
                Some(d) => {
                    let mut joined = d.into_owned();
                    joined.push(b'\n');
                    joined.extend_from_slice(v);
                    Cow::Owned(joined)
                }
            });
        }
    }
    data
}

/// The continuation request: the client's request (`body`, already mapped
/// for the vendor) as a non-streamed one, ending with the assistant's
/// `text` as the vendor takes a prefill. `None` if the body is not a JSON
/// object with a message list.
pub fn request(body: &[u8], format: Format, style: Style, text: &str) -> Option<Vec<u8>> {
    let mut v: Map<String, Value> = serde_json::from_slice(body).ok()?;
    v.insert("stream".into(), Value::Bool(false));
    v.remove("stream_options");
    // Anthropic refuses a final assistant message that ends in whitespace.
    let prefix = match format {
        Format::Anthropic => text.trim_end(),
        Format::OpenAi => text,
    };
    let mut message = Map::new();
    message.insert("role".into(), Value::from("assistant"));
    message.insert("content".into(), Value::from(prefix));
    match style {
        Style::Assistant => {}
        Style::AssistantPrefix => {
            message.insert("prefix".into(), Value::Bool(true));
        }
        Style::ContinueFinalMessage => {
            v.insert("continue_final_message".into(), Value::Bool(true));
            v.insert("add_generation_prompt".into(), Value::Bool(false));
        }
    }
    v.get_mut("messages")?.as_array_mut()?.push(Value::Object(message));
    serde_json::to_vec(&v).ok()
}

/// A continuation's answer as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Continued {
    pub text: String,
    /// Why it stopped (`stop`, `end_turn`...).
    pub stop: Option<String>,
    pub usage: Option<Value>,
}

/// Reads a continuation's non-streamed answer in `format`.
pub fn read_answer(format: Format, body: &[u8]) -> Option<Continued> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let usage = v.get("usage").filter(|u| u.is_object()).cloned();
    match format {
        Format::OpenAi => {
            let c = v.get("choices")?.as_array()?.first()?;
            let text = c.get("message")?.get("content")?.as_str()?.to_string();
            let stop = c.get("finish_reason").and_then(Value::as_str).map(str::to_string);
            Some(Continued { text, stop, usage })
        }
        Format::Anthropic => {
            let blocks = v.get("content")?.as_array()?;
            let text: String = blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect();
            let stop = v.get("stop_reason").and_then(Value::as_str).map(str::to_string);
            Some(Continued { text, stop, usage })
        }
    }
}

/// The continuation said as the rest of the client's stream: its text as
/// deltas of the answer already started, one end, its usage.
pub fn events(format: Format, meta: &Meta, c: &Continued) -> Vec<u8> {
    let mut out = Vec::new();
    let mut event = |name: Option<&str>, data: &Value| {
        if let Some(n) = name {
            out.extend_from_slice(format!("event: {n}\n").as_bytes());
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(data.to_string().as_bytes());
        out.extend_from_slice(b"\n\n");
    };
    match format {
        Format::OpenAi => {
            let chunk = |delta: Value, finish: Value| {
                json!({
                    "id": meta.id.clone().unwrap_or_else(|| "chatcmpl-llm-failover".into()),
                    "object": "chat.completion.chunk",
                    "created": meta.created.unwrap_or(0),
                    "model": meta.model.clone().unwrap_or_default(),
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
                })
            };
            if !c.text.is_empty() {
                event(None, &chunk(json!({"content": c.text}), Value::Null));
            }
            let mut last = chunk(
                json!({}),
                Value::String(c.stop.clone().unwrap_or_else(|| "stop".into())),
            );
            if let (Some(u), Some(o)) = (&c.usage, last.as_object_mut()) {
                o.insert("usage".into(), u.clone());
            }
            event(None, &last);
            out.extend_from_slice(b"data: [DONE]\n\n");
        }
        Format::Anthropic => {
            let index = match meta.open_block {
                Some(i) => i,
                None => {
                    let i = meta.next_block;
                    event(
                        Some("content_block_start"),
                        &json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}),
                    );
                    i
                }
            };
            if !c.text.is_empty() {
                event(
                    Some("content_block_delta"),
                    &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": c.text}}),
                );
            }
            event(
                Some("content_block_stop"),
                &json!({"type": "content_block_stop", "index": index}),
            );
            let output_tokens = c
                .usage
                .as_ref()
                .and_then(|u| u.get("output_tokens"))
                .cloned()
                .unwrap_or(json!(0));
            event(
                Some("message_delta"),
                &json!({
                    "type": "message_delta",
                    "delta": {"stop_reason": c.stop.clone().unwrap_or_else(|| "end_turn".into()), "stop_sequence": null},
                    "usage": {"output_tokens": output_tokens},
                }),
            );
            event(Some("message_stop"), &json!({"type": "message_stop"}));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openai_chunk(content: &str) -> String {
        format!(
            "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}]}}\n\n",
            serde_json::to_string(content).unwrap()
        )
    }

    fn anthropic_events(pieces: &[&str]) -> Vec<String> {
        let mut out = vec![
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m1\",\"model\":\"claude\"}}\n\n".to_string(),
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_string(),
        ];
        for p in pieces {
            out.push(format!(
                "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{}}}}}\n\n",
                serde_json::to_string(p).unwrap()
            ));
        }
        out
    }

    #[test]
    fn events_go_on_whole_and_a_partial_one_waits_for_its_end() {
        let mut f = Follow::new(Format::OpenAi);
        let a = openai_chunk("Hello");
        let b = openai_chunk(" there");
        let joined = format!("{a}{b}");
        let (first, second) = joined.as_bytes().split_at(a.len() + 10);
        assert_eq!(f.take(first), a.as_bytes(), "the partial second event is held");
        assert_eq!(f.take(second), b.as_bytes());
        assert_eq!(f.text(), "Hello there");
        assert_eq!(f.meta().id.as_deref(), Some("c1"));
        assert_eq!(f.take(b"data: [DONE]\n\n"), b"data: [DONE]\n\n");
        assert_eq!(f.end(), End::Release(Vec::new()));
    }

    #[test]
    fn a_stream_cut_after_content_is_continued() {
        let mut f = Follow::new(Format::OpenAi);
        f.take(openai_chunk("Hello").as_bytes());
        f.take(b"data: {\"id\":\"c1\",\"cho");
        assert!(f.cut_mid_event());
        assert_eq!(f.end(), End::Continue);

        let mut f = Follow::new(Format::Anthropic);
        for e in anthropic_events(&["Hello", " fr"]) {
            assert_eq!(f.take(e.as_bytes()), e.as_bytes());
        }
        assert_eq!(f.end(), End::Continue, "no message_stop");
        assert_eq!(f.text(), "Hello fr");
        assert_eq!(f.meta().open_block, Some(0));
    }

    #[test]
    fn an_error_event_is_held_back_with_everything_after_it() {
        let mut f = Follow::new(Format::Anthropic);
        for e in anthropic_events(&["Hello"]) {
            f.take(e.as_bytes());
        }
        let error = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        let out = f.take(format!("{error}event: ping\ndata: {{}}\n\n").as_bytes());
        assert!(out.is_empty());
        assert_eq!(f.held_error(), Some(error.as_bytes()));
        assert_eq!(f.end(), End::Continue);
    }

    #[test]
    fn nothing_delivered_or_tool_calls_are_not_continued() {
        let mut f = Follow::new(Format::Anthropic);
        f.take(anthropic_events(&[])[0].as_bytes());
        let error = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n";
        f.take(error.as_bytes());
        assert_eq!(
            f.end(),
            End::Release(error.as_bytes().to_vec()),
            "the error goes to the client"
        );

        let mut f = Follow::new(Format::OpenAi);
        f.take(openai_chunk("Hi").as_bytes());
        f.take(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}\n\n");
        assert_eq!(f.end(), End::Release(Vec::new()));
    }

    #[test]
    fn a_giant_event_is_passed_on_and_ends_following() {
        let mut f = Follow::new(Format::OpenAi);
        f.take(openai_chunk("Hi").as_bytes());
        let big = vec![b'x'; MAX_TAIL + 1];
        assert_eq!(f.take(&big).len(), big.len());
        assert_eq!(f.end(), End::Release(Vec::new()));
    }

    #[test]
    fn styles_by_vendor_and_format() {
        assert_eq!(style(Prefill::Auto, Format::Anthropic), Some(Style::Assistant));
        assert_eq!(style(Prefill::Auto, Format::OpenAi), None);
        assert_eq!(style(Prefill::None, Format::Anthropic), None);
        assert_eq!(
            style(Prefill::AssistantPrefix, Format::OpenAi),
            Some(Style::AssistantPrefix)
        );
        assert_eq!(
            style(Prefill::ContinueFinalMessage, Format::OpenAi),
            Some(Style::ContinueFinalMessage)
        );
    }

    #[test]
    fn the_request_ends_with_the_text_as_the_vendor_takes_it() {
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
        let v: Value =
            serde_json::from_slice(&request(body, Format::Anthropic, Style::Assistant, "Hello ").unwrap()).unwrap();
        assert_eq!(v["stream"], false);
        assert!(v.get("stream_options").is_none());
        assert_eq!(v["messages"][1], json!({"role": "assistant", "content": "Hello"}));
        let v: Value =
            serde_json::from_slice(&request(body, Format::OpenAi, Style::AssistantPrefix, "Hello ").unwrap()).unwrap();
        assert_eq!(
            v["messages"][1],
            json!({"role": "assistant", "content": "Hello ", "prefix": true})
        );
        let v: Value =
            serde_json::from_slice(&request(body, Format::OpenAi, Style::ContinueFinalMessage, "Hi").unwrap()).unwrap();
        assert_eq!(
            (v["continue_final_message"].clone(), v["add_generation_prompt"].clone()),
            (json!(true), json!(false))
        );
        assert_eq!(request(b"[1]", Format::OpenAi, Style::Assistant, "x"), None);
        assert_eq!(
            request(br#"{"model":"m"}"#, Format::OpenAi, Style::Assistant, "x"),
            None
        );
    }

    #[test]
    fn the_continuation_is_said_in_the_clients_dialect_with_one_end() {
        let c = read_answer(
            Format::OpenAi,
            br#"{"choices":[{"index":0,"message":{"role":"assistant","content":" world"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#,
        )
        .unwrap();
        let mut f = Follow::new(Format::OpenAi);
        f.take(openai_chunk("Hello").as_bytes());
        let out = events(Format::OpenAi, f.meta(), &c);
        let mut check = Follow::new(Format::OpenAi);
        assert_eq!(check.take(&out), out, "well-formed events");
        assert_eq!(check.text(), " world");
        assert_eq!(check.end(), End::Release(Vec::new()), "ends complete");
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"id\":\"c1\"") && text.contains("\"usage\":{") && text.ends_with("data: [DONE]\n\n"));

        let c = read_answer(
            Format::Anthropic,
            br#"{"content":[{"type":"text","text":"om claude"}],"stop_reason":"end_turn","usage":{"input_tokens":9,"output_tokens":3}}"#,
        )
        .unwrap();
        let mut f = Follow::new(Format::Anthropic);
        for e in anthropic_events(&["Hello", " fr"]) {
            f.take(e.as_bytes());
        }
        let out = events(Format::Anthropic, f.meta(), &c);
        for e in anthropic_events(&["Hello", " fr"]) {
            let _ = e;
        }
        let mut whole = Follow::new(Format::Anthropic);
        for e in anthropic_events(&["Hello", " fr"]) {
            whole.take(e.as_bytes());
        }
        whole.take(&out);
        assert_eq!(whole.text(), "Hello from claude");
        assert_eq!(whole.end(), End::Release(Vec::new()), "one message_stop ends it");
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("content_block_start"), "the open block goes on");
        assert!(text.contains("\"output_tokens\":3"));
    }
}
