//! Regression tests of hostile input and broken vendors, each through the
//! real contexts over the fake host.

use super::*;
use crate::proxy::fake::envoy::Request;

/// Rescue on, keys for every vendor, no model maps.
const KEYED: &str = r#"{"vendors":[
    {"name":"anthropic","api_key_env":"AK"},
    {"name":"openai","priority":1,"api_key_env":"OK"},
    {"name":"xai","priority":2,"api_key_env":"XK"}]}"#;

fn keyed(json: &str) -> FakeEnvoy {
    capture::clear();
    let env = [("AK", "sk-a"), ("OK", "sk-o"), ("XK", "sk-x")];
    match FakeEnvoy::with_env(json, &CLUSTERS, 1, &env) {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    }
}

/// A body of `n` bytes of valid JSON for `model`.
fn big_body(model: &str, n: usize) -> Vec<u8> {
    let head = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":""#);
    let mut body = head.into_bytes();
    body.resize(n.saturating_sub(4), b'a');
    body.extend_from_slice(br#""}]}"#);
    body
}

fn without_length(mut r: Request) -> Request {
    r.headers.retain(|(n, _)| n != "content-length");
    r.with("transfer-encoding", "chunked")
}

fn credentials(r: Request) -> Request {
    r.with("authorization", "Bearer client-secret")
        .with("x-api-key", "client-secret")
        .with("proxy-authorization", "Basic client-secret")
        .with("api-key", "client-secret")
        .with("x-goog-api-key", "client-secret")
}

#[test]
fn a_chunked_body_too_large_to_hold_leaves_with_the_vendors_key_and_none_of_the_clients() {
    let mut e = keyed(KEYED);
    let request = credentials(without_length(Request::new(
        "/v1/chat/completions",
        &big_body("m", 524_300),
    )));
    let got = e.send(0, &request, &mut vendors(&[]));
    assert_eq!(got.status, 200);
    let asked = &got.asked[0];
    for (name, value) in &asked.headers {
        let value = String::from_utf8_lossy(value);
        assert!(!value.contains("client-secret"), "{name}: {value}");
    }
    assert_eq!(asked.header("authorization"), Some("Bearer sk-a"));
    assert_eq!(asked.body.len(), 524_300, "the body untouched");
    assert_eq!(e.main.metric("llm_failover.body_too_large"), 1);
}

#[test]
fn a_declared_body_too_large_to_hold_leaves_without_the_clients_proxy_credentials() {
    let mut e = keyed(KEYED);
    let request = credentials(Request::new("/v1/messages", &big_body("m", 600_000)));
    let got = e.send(0, &request, &mut vendors(&[]));
    let asked = &got.asked[0];
    assert_eq!(asked.header("proxy-authorization"), None);
    assert_eq!(asked.header("x-api-key"), Some("sk-a"));
}

#[test]
fn a_body_too_large_to_read_is_refused_where_a_model_map_would_change_it() {
    let json = r#"{"vendors":[{"name":"anthropic","models":{"*":"claude-x"}},{"name":"openai","priority":1}]}"#;
    let mut e = envoy(json, 1);
    for request in [
        without_length(Request::new("/v1/chat/completions", &big_body("o1-pro", 600_000))),
        Request::new("/v1/messages", &big_body("o1-pro", 600_000)),
    ] {
        let got = e.send(0, &request, &mut vendors(&[]));
        assert_eq!(got.status, 413, "{}", got.body_text());
        assert!(got.asked.is_empty());
        assert!(got.body_text().contains("request_too_large"));
    }
}

#[test]
fn a_model_that_reads_two_ways_is_refused_in_the_clients_format() {
    let json = r#"{"vendors":[{"name":"anthropic","models":{"claude-sonnet":"claude-sonnet-4-5"}},
        {"name":"xai","priority":1,"models":{"*":"grok-4"}}]}"#;
    let mut e = envoy(json, 1);
    let dup = br#"{"model":"claude-sonnet","messages":[],"model":"o1-pro"}"#;
    for (path, kind) in [
        ("/v1/chat/completions", "invalid_request_body"),
        ("/v1/messages", "invalid_request_error"),
    ] {
        let got = e.send(
            0,
            &Request::new(path, dup),
            &mut vendors(&[("anthropic", Answer::status(503))]),
        );
        assert_eq!(got.status, 400);
        assert!(got.asked.is_empty(), "no vendor saw it");
        assert!(got.body_text().contains(kind), "{}", got.body_text());
    }
    // An escaped key is the model: mapped like any other.
    let escaped = br#"{"mod\u0065l":"o1-pro","messages":[]}"#;
    let got = e.send(0, &Request::new("/v1/chat/completions", escaped), &mut vendors(&[]));
    assert_eq!(got.asked[0].cluster, "xai");
    assert_eq!(got.asked[0].body, br#"{"mod\u0065l":"grok-4","messages":[]}"#);
    assert_eq!(e.main.metric("llm_failover.unreadable_bodies"), 2);
}

/// Envoy's own 408 for a client that stopped sending: through the stream's
/// encoders, then the stream's end.
fn time_out(e: &mut FakeEnvoy, ctx: u32, stream: &mut crate::proxy::stream::Stream<crate::proxy::fake::FakeHost>) {
    let host = e.workers[0].host.clone();
    host.with_stream(ctx, |s| {
        s.response_headers = vec![(":status".into(), b"408".to_vec())];
        s.properties.insert(
            b"response\0flags".to_vec(),
            crate::policy::classify::flags::STREAM_IDLE_TIMEOUT
                .to_le_bytes()
                .to_vec(),
        );
    });
    host.enter(ctx);
    assert_eq!(stream.on_response_headers(1, true), proxy_wasm::types::Action::Continue);
    stream.on_done();
}

#[test]
fn an_upload_that_never_completes_is_the_clients_doing() {
    let window = crate::policy::config::WindowSpec::DEFAULT;
    let key = crate::policy::store::vendor_key("anthropic", window);
    // Held for its body (rescue on), or routed at its headers (rescue off):
    // either way the vendor is not charged when Envoy times the client out.
    for (json, held) in [(three(""), true), (three(r#","rescue":{"max_attempts":1}"#), false)] {
        let mut e = envoy(&json, 1);
        e.set_now(1_000);
        for ctx in 10..16 {
            let request = Request::openai("m", false);
            let host = e.workers[0].host.clone();
            host.with_stream(ctx, |s| s.request_headers = request.headers.clone());
            host.enter(ctx);
            let mut s = e.workers[0].root.new_stream(ctx);
            let action = s.on_request_headers(5, false);
            assert_eq!(action == proxy_wasm::types::Action::Pause, held);
            time_out(&mut e, ctx, &mut s);
            if held {
                let named = host
                    .stream(ctx)
                    .response_headers
                    .iter()
                    .any(|(n, _)| n == "x-llm-failover-vendor");
                assert!(!named, "no vendor was asked");
            }
        }
        assert_eq!(window_failures(&e, &key), 0, "held: {held}");
        assert_eq!(e.main.metric("llm_failover.vendor.anthropic.failures"), 0);
        let got = e.send(0, &Request::openai("m", false), &mut vendors(&[]));
        assert_eq!(got.asked[0].cluster, "anthropic", "still in service");
    }
}
