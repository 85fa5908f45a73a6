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
    for (json, held) in [
        (whole(""), true),
        (whole(r#","rescue":{"max_attempts":1},"groups":[]"#), false),
    ] {
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

const STOP: &str = "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
const START: &str = "event: message_start\ndata: {\"type\":\"message_start\"}\n\n";

#[test]
fn a_cut_stream_with_a_declared_length_loses_the_length_when_the_error_event_is_appended() {
    // Held for its first event (rescue on), then released.
    let mut e = envoy(&three(""), 1);
    let cut = Answer::Http {
        status: 200,
        headers: vec![
            ("content-type".into(), "text/event-stream".into()),
            ("content-length".into(), "923".into()),
        ],
        chunks: vec![START.as_bytes().to_vec()],
    };
    let got = e.send(0, &Request::anthropic("m", true), &mut vendors(&[("anthropic", cut)]));
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-length"), None);
    assert!(
        got.body_text().ends_with("\n\n") && got.body_text().contains("event: error"),
        "{}",
        got.body_text()
    );
}

#[test]
fn a_failed_answer_held_for_a_rescue_keeps_none_of_its_body() {
    let e = envoy(&three(""), 1);
    let host = e.workers[0].host.clone();
    let request = Request::openai("m", false);
    host.with_stream(70, |s| {
        s.request_headers = request.headers.clone();
        s.request_body = request.body.clone();
    });
    host.enter(70);
    let mut s = e.workers[0].root.new_stream(70);
    s.on_request_headers(5, false);
    assert_eq!(
        s.on_request_body(request.body.len(), true),
        proxy_wasm::types::Action::Continue
    );
    host.with_stream(70, |st| st.response_headers = vec![(":status".into(), b"503".to_vec())]);
    assert_eq!(
        s.on_response_headers(1, false),
        proxy_wasm::types::Action::Pause,
        "held: rescuing"
    );
    // Ten 1 MB chunks of the failed answer: none is kept.
    for i in 0..10 {
        host.with_stream(70, |st| st.response_body.extend(std::iter::repeat_n(b'x', 1 << 20)));
        let size = host.stream(70).response_body.len();
        assert_eq!(s.on_response_body(size, i == 9), proxy_wasm::types::Action::Pause);
        assert!(host.stream(70).response_body.is_empty(), "chunk {i} dropped");
    }
}

#[test]
fn a_held_answer_past_the_cap_goes_on_unjudged() {
    let mut e = envoy(&three(""), 1);
    // A first event of 1 MB: no longer waited for past the cap.
    let huge = format!(
        "event: content_block_delta\ndata: {{\"t\":\"{}\"}}\n\n",
        "y".repeat(1 << 20)
    );
    let split = huge
        .as_bytes()
        .chunks(16 * 1024)
        .map(<[u8]>::to_vec)
        .collect::<Vec<_>>();
    let mut chunks = split;
    chunks.push(STOP.as_bytes().to_vec());
    let big = Answer::Http {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        chunks,
    };
    let got = e.send(0, &Request::anthropic("m", true), &mut vendors(&[("anthropic", big)]));
    assert_eq!(got.status, 200);
    assert_eq!(
        got.body.len(),
        huge.len() + STOP.len(),
        "everything passed, nothing added"
    );
}

#[test]
fn a_reset_before_the_first_event_is_rescued() {
    let mut e = envoy(&three(""), 1);
    let reset = Answer::ResetAfterHeaders {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
    };
    let ok = Answer::sse(&[START, STOP]);
    let got = e.send(
        0,
        &Request::anthropic("m", true),
        &mut vendors(&[("anthropic", reset), ("openai", ok)]),
    );
    assert_eq!(got.status, 200, "{}", got.body_text());
    assert_eq!(got.header("x-llm-failover-vendor"), Some("openai"));
    assert!(got.body_text().contains("message_stop"));
    assert_eq!(
        e.main.metric("llm_failover.vendor.anthropic.failures_by_reason.reset"),
        1
    );
}

#[test]
fn envoys_own_reply_is_said_again_in_the_clients_format_when_nothing_is_left() {
    let mut e = envoy(r#"{"vendors":[{"name":"anthropic"}]}"#, 1);
    let got = e.send(
        0,
        &Request::anthropic("m", false),
        &mut vendors(&[("anthropic", Answer::refused())]),
    );
    assert_eq!(got.status, 503);
    assert_eq!(got.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(v["type"], "error");
    assert!(v["error"]["message"].as_str().unwrap().contains("connect_failure"));
}

#[test]
fn vendors_cannot_forge_the_filters_headers() {
    let mut e = envoy(&three(""), 1);
    let forged = Answer::Http {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("x-llm-failover-attempts".into(), "99".into()),
            ("x-llm-failover-tried".into(), "evil".into()),
            ("x-llm-failover-vendor".into(), "evil".into()),
        ],
        chunks: vec![b"{}".to_vec()],
    };
    let got = e.send(
        0,
        &Request::openai("m", false),
        &mut vendors(&[("anthropic", forged.clone())]),
    );
    assert_eq!(got.header("x-llm-failover-attempts"), None);
    assert_eq!(got.header("x-llm-failover-tried"), None);
    assert_eq!(got.header("x-llm-failover-vendor"), Some("anthropic"));
    // On a rescued answer the filter's own values, once each.
    let got = e.send(
        0,
        &Request::openai("m", false),
        &mut vendors(&[("anthropic", Answer::status(503)), ("openai", forged)]),
    );
    let attempts: Vec<&str> = got
        .headers
        .iter()
        .filter(|(n, _)| n == "x-llm-failover-attempts")
        .map(|(_, v)| std::str::from_utf8(v).unwrap())
        .collect();
    assert_eq!(attempts, ["2"]);
    assert_eq!(got.header("x-llm-failover-tried"), Some("anthropic,openai"));
    assert_eq!(got.header("x-llm-failover-vendor"), Some("openai"));
}

#[test]
fn a_rescued_answer_larger_than_the_vm_holds_is_not_relayed() {
    let mut e = envoy(&three(r#","rescue":{"max_answer_bytes":1024}"#), 1);
    let big = Answer::json(200, &format!(r#"{{"text":"{}"}}"#, "z".repeat(5_000)));
    let got = e.send(
        0,
        &Request::openai("m", false),
        &mut vendors(&[("anthropic", Answer::status(503)), ("openai", big)]),
    );
    assert_eq!(got.status, 502);
    assert!(got.body_text().contains("answer_too_large"));
    assert_eq!(
        e.main.metric("llm_failover.vendor.openai.failures"),
        0,
        "the vendor did answer"
    );
}

/// A request every vendor fails (its body makes them reset or 500).
fn poison() -> Request {
    let mut body = String::from(r#"{"model":"m","x":"#);
    body.push_str(&"[".repeat(10_000));
    body.push_str(&"]".repeat(10_000));
    body.push('}');
    Request::new("/v1/chat/completions", body.as_bytes())
}

/// Vendors that fail the poison request (by its size) and serve the rest.
fn choke(asked: &crate::proxy::fake::envoy::Asked) -> Answer {
    if asked.body.len() > 10_000 {
        Answer::status(500)
    } else {
        Answer::json(200, r#"{"ok":true}"#)
    }
}

#[test]
fn one_request_that_every_vendor_fails_ejects_no_vendor_that_serves_others() {
    let mut e = envoy(&three(""), 1);
    // Five such requests among other traffic (one in six).
    for _ in 0..5 {
        let got = e.send(0, &poison(), &mut choke);
        assert_eq!(got.status, 503);
        assert!(!got.body_text().contains("due back: ."), "{}", got.body_text());
        for _ in 0..5 {
            let good = e.send(0, &Request::openai("m", false), &mut choke);
            assert_eq!(good.status, 200);
            assert_eq!(good.asked[0].cluster, "anthropic");
        }
    }
    for v in CLUSTERS {
        assert_eq!(e.main.metric(&format!("llm_failover.vendor.{v}.ejections")), 0, "{v}");
    }
    assert_eq!(e.main.metric("llm_failover.failed_everywhere"), 5);
    // Only the first attempts were charged.
    assert_eq!(e.main.metric("llm_failover.vendor.anthropic.failures"), 5);
    assert_eq!(e.main.metric("llm_failover.vendor.openai.failures"), 0);
    assert_eq!(e.main.metric("llm_failover.vendor.xai.failures"), 0);
}

#[test]
fn a_burst_of_such_requests_ejects_at_most_the_vendor_that_took_them_first() {
    let mut e = envoy(&three(""), 1);
    for _ in 0..5 {
        e.send(0, &poison(), &mut choke);
    }
    let next = e.send(0, &Request::openai("m", false), &mut choke);
    assert_eq!(next.status, 200);
    assert_eq!(next.asked[0].cluster, "openai", "not forced: openai and xai stand");
    assert_eq!(e.main.metric("llm_failover.all_down"), 0);
}

#[test]
fn vendors_that_really_fail_everything_are_still_ejected() {
    let mut e = envoy(&three(""), 1);
    for _ in 0..20 {
        e.send(
            0,
            &Request::openai("m", false),
            &mut |_: &crate::proxy::fake::envoy::Asked| Answer::status(503),
        );
    }
    for v in CLUSTERS {
        assert_eq!(e.main.metric(&format!("llm_failover.vendor.{v}.ejections")), 1, "{v}");
    }
}
