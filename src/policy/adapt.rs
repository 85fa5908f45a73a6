//! Request bodies: the model and stream flag, the body with its model replaced, context-overflow errors.
//!
//! A body with its model replaced keeps every other byte as it was.

/// What routing needs from a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub model: Option<String>,
    pub stream: bool,
}

/// The two fields routing reads; serde skips every other one without
/// building it (this runs on every request body).
#[derive(serde::Deserialize)]
struct Peek {
    #[serde(default)]
    model: Option<serde_json::Value>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
}

/// Reads a JSON request body; `None` if it is not a JSON object.
pub fn read_request(body: &[u8]) -> Option<Request> {
    // A derived struct would also accept a JSON array.
    if body.get(skip_ws(body, 0)) != Some(&b'{') {
        return None;
    }
    let peek: Peek = serde_json::from_slice(body).ok()?;

    Some(Request {
        model: peek.model.as_ref().and_then(|m| m.as_str()).map(str::to_string),
        stream: peek.stream.and_then(|s| s.as_bool()).unwrap_or(false),
    })
}

/// The body with the top-level `"model"` value replaced by `model`; every
/// other byte is kept. `None` when the body has no top-level `"model"`
/// string or is not a well-formed JSON object.
pub fn with_model(body: &[u8], model: &str) -> Option<Vec<u8>> {
    let (start, end) = top_level_value(body, b"model")?;
    if body.get(start) != Some(&b'"') {
        return None;
    }
    let encoded = serde_json::to_string(model).ok()?;
    let mut out = Vec::with_capacity(body.len() + encoded.len());
    out.extend_from_slice(body.get(..start)?);
    out.extend_from_slice(encoded.as_bytes());
    out.extend_from_slice(body.get(end..)?);
    Some(out)
}

/// The byte span of the value of a top-level key of a JSON object. The
/// whole object is walked, so a body cut short is refused.
fn top_level_value(b: &[u8], key: &[u8]) -> Option<(usize, usize)> {
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return None;
    }
    let mut found = None;
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(b, i)?;
        let this_key = b.get(i + 1..key_end - 1)?;
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(b, i + 1);
        let value_end = skip_value(b, value_start)?;
        if this_key == key && found.is_none() {
            found = Some((value_start, value_end));
        }
        i = skip_ws(b, value_end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') if skip_ws(b, i + 1) == b.len() => return found,
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Index just past the string starting at `i` (which holds its `"`).
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match b.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// Index just past the JSON value starting at `i`.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while let Some(&c) = b.get(j) {
                if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
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

    #[test]
    fn reads_model_and_stream() {
        let r = read_request(br#"{"model":"claude-x","stream":true,"messages":[]}"#).unwrap();
        assert_eq!(
            r,
            Request {
                model: Some("claude-x".into()),
                stream: true
            }
        );
        let r = read_request(br#"{"messages":[]}"#).unwrap();
        assert_eq!(
            r,
            Request {
                model: None,
                stream: false
            }
        );
        assert_eq!(read_request(b"[1]"), None);
        assert_eq!(read_request(b"not json"), None);
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
    }

    #[test]
    fn new_model_names_are_json_escaped() {
        let out = with_model(br#"{"model":"a"}"#, "we\"ird\\name").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "we\"ird\\name");
    }

    #[test]
    fn no_model_or_bad_json_leaves_it_alone() {
        assert_eq!(with_model(br#"{"messages":[]}"#, "m"), None);
        assert_eq!(with_model(br#"{"model":7}"#, "m"), None);
        assert_eq!(with_model(br#"{"model":"a""#, "m"), None);
        assert_eq!(with_model(br#"[{"model":"a"}]"#, "m"), None);
        assert_eq!(with_model(b"", "m"), None);
        // Truncated at every byte: never a panic.
        let body = br#"{"a":[1,{"b":"\"}"}],"model":"x","c":null}"#;
        for n in 0..body.len() {
            let _ = with_model(&body[..n], "m");
        }
        assert!(with_model(body, "m").is_some());
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
