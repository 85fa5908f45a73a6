//! Request bodies: the model and stream flag, the body with its model replaced, context-overflow errors.
//!
//! A body with its model replaced keeps every other byte as it was.

/// What routing needs from a request body, read unambiguously.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub model: Option<String>,
    pub stream: bool,
    /// Where the `model` value's bytes are, for rewriting it.
    model_span: Option<(usize, usize)>,
}

/// Why a request body cannot be read unambiguously: the filter refuses it
/// rather than forward a body whose model one reader could see differently
/// from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// Not a well-formed JSON document (or not UTF-8).
    NotJson,
    /// Well-formed, but not a JSON object.
    NotObject,
    /// A top-level key the filter reads appears twice (after unescaping).
    Duplicate(&'static str),
    /// `model` is there but not a string.
    ModelNotString,
}

impl Unreadable {
    pub fn message(self) -> String {
        match self {
            Unreadable::NotJson => "the request body is not well-formed JSON".into(),
            Unreadable::NotObject => "the request body is not a JSON object".into(),
            Unreadable::Duplicate(key) => format!("the request body names \"{key}\" more than once"),
            Unreadable::ModelNotString => "the request body's \"model\" is not a string".into(),
        }
    }
}

/// Reads a request body: the whole document is checked to be strict JSON
/// (RFC 8259, UTF-8; no depth limit, no recursion), and its top-level
/// `model` and `stream` are read with escapes decoded, so `"mod\u0065l"` is
/// `model` and a second `model` is refused.
pub fn read_request(body: &[u8]) -> Result<Request, Unreadable> {
    if std::str::from_utf8(body).is_err() {
        return Err(Unreadable::NotJson);
    }
    let mut i = skip_ws(body, 0);
    if body.get(i) != Some(&b'{') {
        // Anything else must still be valid JSON to say which error it is.
        let end = value_end(body, i).ok_or(Unreadable::NotJson)?;
        return Err(if skip_ws(body, end) == body.len() {
            Unreadable::NotObject
        } else {
            Unreadable::NotJson
        });
    }
    let mut request = Request {
        model: None,
        stream: false,
        model_span: None,
    };
    let mut seen_stream = false;
    i = skip_ws(body, i + 1);
    if body.get(i) == Some(&b'}') {
        return finish(body, i + 1, request);
    }
    loop {
        let key_end = string_end(body, i).ok_or(Unreadable::NotJson)?;
        let key = decode_string(body.get(i..key_end).ok_or(Unreadable::NotJson)?).ok_or(Unreadable::NotJson)?;
        i = skip_ws(body, key_end);
        if body.get(i) != Some(&b':') {
            return Err(Unreadable::NotJson);
        }
        let start = skip_ws(body, i + 1);
        let end = value_end(body, start).ok_or(Unreadable::NotJson)?;
        let value = body.get(start..end).ok_or(Unreadable::NotJson)?;
        match key.as_str() {
            "model" => {
                if request.model_span.is_some() {
                    return Err(Unreadable::Duplicate("model"));
                }
                if value.first() != Some(&b'"') {
                    return Err(Unreadable::ModelNotString);
                }
                request.model = Some(decode_string(value).ok_or(Unreadable::NotJson)?);
                request.model_span = Some((start, end));
            }
            "stream" => {
                if seen_stream {
                    return Err(Unreadable::Duplicate("stream"));
                }
                seen_stream = true;
                request.stream = value == b"true";
            }
            _ => {}
        }
        i = skip_ws(body, end);
        match body.get(i) {
            Some(b',') => i = skip_ws(body, i + 1),
            Some(b'}') => return finish(body, i + 1, request),
            _ => return Err(Unreadable::NotJson),
        }
        if body.get(i) != Some(&b'"') {
            return Err(Unreadable::NotJson);
        }
    }
}

/// Only white space may follow the top-level object.
fn finish(body: &[u8], i: usize, request: Request) -> Result<Request, Unreadable> {
    if skip_ws(body, i) == body.len() {
        Ok(request)
    } else {
        Err(Unreadable::NotJson)
    }
}

impl Request {
    /// The body with the top-level `model` value replaced by `model`; every
    /// other byte is kept. `None` when the body has no `model`.
    pub fn with_model(&self, body: &[u8], model: &str) -> Option<Vec<u8>> {
        let (start, end) = self.model_span?;
        let encoded = serde_json::to_string(model).ok()?;
        let mut out = Vec::with_capacity(body.len() + encoded.len());
        out.extend_from_slice(body.get(..start)?);
        out.extend_from_slice(encoded.as_bytes());
        out.extend_from_slice(body.get(end..)?);
        Some(out)
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Index just past the strict JSON string starting at `i` (its `"`).
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        match *b.get(j)? {
            b'"' => return Some(j + 1),
            b'\\' => match *b.get(j + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => j += 2,
                b'u' => {
                    let hex = b.get(j + 2..j + 6)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    j += 6;
                }
                _ => return None,
            },
            c if c < 0x20 => return None,
            _ => j += 1,
        }
    }
}

/// Index just past the strict JSON number starting at `i`.
fn number_end(b: &[u8], i: usize) -> Option<usize> {
    let digits = |mut j: usize| {
        let from = j;
        while b.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        (j > from).then_some(j)
    };
    let mut j = i;
    if b.get(j) == Some(&b'-') {
        j += 1;
    }
    j = match b.get(j)? {
        b'0' => j + 1,
        b'1'..=b'9' => digits(j)?,
        _ => return None,
    };
    if b.get(j) == Some(&b'.') {
        j = digits(j + 1)?;
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        j += 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        j = digits(j)?;
    }
    Some(j)
}

/// Index just past the strict JSON value starting at `i`, walked without
/// recursion (a stack of open containers), so any depth is safe.
fn value_end(b: &[u8], start: usize) -> Option<usize> {
    let mut open: Vec<u8> = Vec::new();
    let mut i = start;
    loop {
        // A value starts at `i`.
        i = skip_ws(b, i);
        i = match *b.get(i)? {
            b'"' => string_end(b, i)?,
            b'-' | b'0'..=b'9' => number_end(b, i)?,
            b't' => literal(b, i, b"true")?,
            b'f' => literal(b, i, b"false")?,
            b'n' => literal(b, i, b"null")?,
            b'[' => {
                let next = skip_ws(b, i + 1);
                if b.get(next) == Some(&b']') {
                    next + 1
                } else {
                    open.push(b'[');
                    i = next;
                    continue;
                }
            }
            b'{' => {
                let next = skip_ws(b, i + 1);
                if b.get(next) == Some(&b'}') {
                    next + 1
                } else {
                    open.push(b'{');
                    i = member_value(b, next)?;
                    continue;
                }
            }
            _ => return None,
        };
        // A value ended at `i`: close what it completes, or go on to the next.
        loop {
            let Some(&container) = open.last() else {
                return Some(i);
            };
            i = skip_ws(b, i);
            match (container, *b.get(i)?) {
                (b'[', b',') => {
                    i += 1;
                    break;
                }
                (b'{', b',') => {
                    i = member_value(b, skip_ws(b, i + 1))?;
                    break;
                }
                (b'[', b']') | (b'{', b'}') => {
                    open.pop();
                    i += 1;
                }
                _ => return None,
            }
        }
    }
}

/// Past an object member's key and colon, at `i` (the key's `"`): where its value starts.
fn member_value(b: &[u8], i: usize) -> Option<usize> {
    let after_key = skip_ws(b, string_end(b, i)?);
    (b.get(after_key) == Some(&b':')).then_some(after_key + 1)
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    (b.get(i..i + word.len())? == word).then_some(i + word.len())
}

/// The text of a strict JSON string (with its quotes), escapes decoded.
fn decode_string(quoted: &[u8]) -> Option<String> {
    let inner = quoted.get(1..quoted.len().checked_sub(1)?)?;
    if !inner.contains(&b'\\') {
        return std::str::from_utf8(inner).ok().map(str::to_string);
    }
    serde_json::from_slice::<String>(quoted).ok()
}

/// Phrases vendors use when a request does not fit the model's context
/// window (OpenAI's `context_length_exceeded` code; Anthropic's "prompt is
/// too long"; Gemini's, Mistral's and xAI's wordings).
const OVERFLOW_PHRASES: [&str; 7] = [
    "context_length_exceeded",
    "context length",
    "context window",
    "maximum context",
    "prompt is too long",
    "too many tokens",
    "exceeds the maximum number of tokens",
];

/// True if a 400 answer says the request overflowed the context window.
pub fn is_context_overflow(status: u16, body: &[u8]) -> bool {
    if status != 400 {
        return false;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let error = value.get("error").unwrap_or(&value);
    let fields = ["code", "type", "message"];
    fields.iter().any(|f| {
        error
            .get(f)
            .and_then(|v| v.as_str())
            .map(str::to_ascii_lowercase)
            .is_some_and(|text| OVERFLOW_PHRASES.iter().any(|p| text.contains(p)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_model(body: &[u8], model: &str) -> Option<Vec<u8>> {
        read_request(body).ok()?.with_model(body, model)
    }

    #[test]
    fn reads_model_and_stream() {
        let r = read_request(br#"{"model":"claude-x","stream":true,"messages":[]}"#).unwrap();
        assert_eq!((r.model.as_deref(), r.stream), (Some("claude-x"), true));
        let r = read_request(br#" {"messages":[]} "#).unwrap();
        assert_eq!((r.model, r.stream), (None, false));
        assert_eq!(read_request(b"[1]"), Err(Unreadable::NotObject));
        assert_eq!(read_request(b"not json"), Err(Unreadable::NotJson));
        assert_eq!(read_request(b""), Err(Unreadable::NotJson));
    }

    #[test]
    fn a_model_read_two_ways_is_refused() {
        let dup = br#"{"model":"claude-sonnet","messages":[],"model":"o1-pro"}"#;
        assert_eq!(read_request(dup), Err(Unreadable::Duplicate("model")));
        // An escaped key is the same key to every JSON reader.
        let escaped = read_request(br#"{"mod\u0065l":"o1-pro"}"#).unwrap();
        assert_eq!(escaped.model.as_deref(), Some("o1-pro"));
        assert_eq!(
            read_request(br#"{"model":"a","mod\u0065l":"b"}"#),
            Err(Unreadable::Duplicate("model"))
        );
        assert_eq!(
            read_request(br#"{"stream":false,"stream":true}"#),
            Err(Unreadable::Duplicate("stream"))
        );
        assert_eq!(read_request(br#"{"model":7}"#), Err(Unreadable::ModelNotString));
        assert_eq!(read_request(br#"{"model":null}"#), Err(Unreadable::ModelNotString));
        // The value's escapes are decoded too.
        let r = read_request(br#"{"model":"gpt\u002d4"}"#).unwrap();
        assert_eq!(r.model.as_deref(), Some("gpt-4"));
    }

    #[test]
    fn only_strict_json_is_read() {
        for bad in [
            &br#"{"model":"a",}"#[..],
            br#"{"model":"a"} x"#,
            br#"{"model":'a'}"#,
            br#"{"a":01}"#,
            br#"{"a":1.}"#,
            br#"{"a":[1,]}"#,
            br#"{"a":tru}"#,
            b"{\"a\":\"tab\there\"}",
            br#"{"a":"\x"}"#,
            br#"{"a":"\u12"}"#,
            br#"{"a" "b"}"#,
            b"{\"model\":\"\xff\"}",
            br#"{"a":{"b":[}]}"#,
        ] {
            assert_eq!(
                read_request(bad),
                Err(Unreadable::NotJson),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let good = br#"{"a":[1,-2.5e+3,0,true,false,null,{"b":{}},[],"\u00e9\n\"q\""],"model":"m"}"#;
        assert_eq!(read_request(good).unwrap().model.as_deref(), Some("m"));
    }

    #[test]
    fn any_depth_is_walked_without_recursion() {
        let depth = 100_000;
        let mut body = String::from(r#"{"model":"m","x":"#);
        body.push_str(&"[".repeat(depth));
        body.push_str(&"]".repeat(depth));
        body.push('}');
        assert_eq!(read_request(body.as_bytes()).unwrap().model.as_deref(), Some("m"));
        let unbalanced = body.replacen(']', "}", 1);
        assert_eq!(read_request(unbalanced.as_bytes()), Err(Unreadable::NotJson));
    }

    #[test]
    fn agrees_with_serde_on_valid_documents_and_never_panics() {
        let docs = [
            &br#"{"model":"a","messages":[{"role":"user","content":"hi"}],"stream":true}"#[..],
            br#"{"x":{"model":"inner"},"model":"outer"}"#,
            br#"{"model":"\ud83d\ude00"}"#,
        ];
        for doc in docs {
            let v: serde_json::Value = serde_json::from_slice(doc).unwrap();
            let r = read_request(doc).unwrap();
            assert_eq!(r.model.as_deref(), v["model"].as_str());
            for n in 0..doc.len() {
                assert!(read_request(&doc[..n]).is_err(), "a cut document is never read");
            }
        }
    }

    #[test]
    fn replaces_only_the_top_level_model() {
        let body = br#"{ "messages": [{"role":"user","content":"the \"model\": \"x\" {"}], "model" : "gpt-x", "tools":[{"model":"keep"}], "stream": true }"#;
        let out = with_model(body, "gpt-4.1-mini").unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            r#"{ "messages": [{"role":"user","content":"the \"model\": \"x\" {"}], "model" : "gpt-4.1-mini", "tools":[{"model":"keep"}], "stream": true }"#
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["model"], "gpt-4.1-mini");
        // An escaped key is rewritten where it stands.
        let out = with_model(br#"{"mod\u0065l":"o1-pro"}"#, "grok-4").unwrap();
        assert_eq!(out, br#"{"mod\u0065l":"grok-4"}"#);
    }

    #[test]
    fn new_model_names_are_json_escaped() {
        let out = with_model(br#"{"model":"a"}"#, "we\"ird\\name").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "we\"ird\\name");
        assert_eq!(with_model(br#"{"messages":[]}"#, "m"), None, "no model to replace");
    }

    #[test]
    fn context_overflow_in_each_vendors_words() {
        let openai = br#"{"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        let anthropic = br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#;
        let gemini = br#"{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#;
        for body in [&openai[..], &anthropic[..], &gemini[..]] {
            assert!(is_context_overflow(400, body), "{}", String::from_utf8_lossy(body));
        }
        let policy = br#"{"error":{"message":"Your request was rejected as a result of our safety system.","type":"invalid_request_error","code":"content_policy_violation"}}"#;
        assert!(!is_context_overflow(400, policy));
        assert!(!is_context_overflow(500, openai));
        assert!(!is_context_overflow(400, b"not json"));
    }
}
