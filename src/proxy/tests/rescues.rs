//! Tests of same-request failover: held answers, callouts, delivered answers, the 503.

use super::*;
use crate::proxy::fake::envoy::Request;

/// anthropic and openai serve both formats at their own paths with their
/// own keys and models; xai passes everything through.
const ADAPTED: &str = r#"{"vendors":[
    {"name":"anthropic","api_key_env":"AK","models":{"*":"claude-sonnet-4-5"}},
    {"name":"openai","priority":1,"api_key_env":"OK","host":"api.openai.com",
     "paths":{"openai":"/openai/v1/chat/completions"},"models":{"*":"gpt-4.1"}},
    {"name":"xai","priority":2}],
    "rescue":{"retry_backoff":"off","rate_limit_wait":"off"}}"#;

fn adapted() -> FakeEnvoy {
    capture::clear();
    let env = [("AK", "sk-anthropic"), ("OK", "sk-openai")];
    let e = FakeEnvoy::with_env(ADAPTED, &CLUSTERS, 1, &env).unwrap();
    e.set_now(1_000);
    e
}

#[test]
fn a_first_attempt_that_answers_503_is_rescued_by_a_callout_adapted_to_the_next_vendor() {
    let mut e = adapted();
    let got = e.send(
        0,
        &Request::openai("gpt-x", false),
        &mut vendors(&[("anthropic", Answer::status(503))]),
    );
    assert_eq!(got.asked.len(), 2);
    let callout = &got.asked[1];
    assert!(callout.callout);
    assert_eq!(callout.cluster, "openai");
    assert_eq!(callout.header(":path"), Some("/openai/v1/chat/completions"));
    assert_eq!(callout.header(":authority"), Some("api.openai.com"));
    assert_eq!(
        callout.header("authorization"),
        Some("Bearer sk-openai"),
        "its key, not the client's"
    );
    assert_eq!(callout.header("x-api-key"), None);
    let body = String::from_utf8_lossy(&callout.body);
    assert!(body.contains(r#""model":"gpt-4.1""#), "{body}");
    // The callout's 200 is the client's answer, with the accounting headers.
    assert_eq!(got.status, 200);
    assert!(got.body_text().contains("served_by\":\"openai"));
    assert_eq!(got.header("x-llm-failover-vendor"), Some("openai"));
    assert_eq!(got.header("x-llm-failover-attempts"), Some("2"));
    assert_eq!(got.header("x-llm-failover-tried"), Some("anthropic,openai"));
    assert_eq!(e.main.metric("llm_failover.rescued"), 1);
    assert_eq!(e.main.metric("llm_failover.rescue_attempts"), 1);
    assert_eq!(e.main.metric("llm_failover.vendor.anthropic.failures"), 1);
}

#[test]
fn when_every_candidate_fails_the_client_gets_503_in_its_own_format() {
    let mut e = adapted();
    let all = [
        ("anthropic", Answer::status(529)),
        ("openai", Answer::status(500)),
        ("xai", Answer::refused()),
    ];
    let got = e.send(0, &Request::anthropic("m", false), &mut vendors(&all));
    assert_eq!(got.status, 503);
    // openai serves no Anthropic path: xai is the only other candidate.
    assert_eq!(got.header("x-llm-failover-tried"), Some("anthropic,xai"));
    assert!(got.body_text().contains(r#""type":"error""#), "{}", got.body_text());
    assert!(got.header("retry-after").is_some());
    assert_eq!(e.main.metric("llm_failover.rescues_failed"), 1);
}

#[test]
fn a_stream_whose_first_event_is_an_error_is_peeked_at_and_rescued() {
    let mut e = adapted();
    let overloaded =
        Answer::sse(&["event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n"]);
    let ok = Answer::sse(&[
        "event: message_start\ndata: {\"type\":\"message_start\"}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ]);
    let got = e.send(
        0,
        &Request::anthropic("m", true),
        &mut vendors(&[("anthropic", overloaded), ("xai", ok)]),
    );
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-llm-failover-vendor"), Some("xai"));
    assert!(got.body_text().contains("message_stop"));
    assert_eq!(
        e.main
            .metric("llm_failover.vendor.anthropic.stream_errors.overloaded_error"),
        1
    );
}

#[test]
fn a_stream_whose_first_event_is_fine_is_released_as_it_came() {
    let mut e = adapted();
    let ok = Answer::sse(&[
        "event: message_start\ndata: {\"type\":\"message_start\"}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ]);
    let got = e.send(0, &Request::anthropic("m", true), &mut vendors(&[("anthropic", ok)]));
    assert_eq!(got.asked.len(), 1);
    assert_eq!(got.header("x-llm-failover-vendor"), Some("anthropic"));
    assert!(got.body_text().starts_with("event: message_start"));
    assert!(got.body_text().contains("message_stop"));
}

#[test]
fn a_context_overflow_moves_only_to_a_larger_window() {
    let json = r#"{"vendors":[{"name":"anthropic"},{"name":"openai","priority":1},{"name":"xai","priority":2}],
        "groups":[{"models":["big"],"targets":[
            {"vendor":"anthropic","model":"small-ctx","context_window":8000},
            {"vendor":"xai","model":"mid-ctx","context_window":4000},
            {"vendor":"openai","model":"large-ctx","context_window":128000}]}]}"#;
    let mut e = envoy(json, 1);
    let overflow = Answer::json(
        400,
        r#"{"error":{"message":"too long","code":"context_length_exceeded"}}"#,
    );
    let got = e.send(
        0,
        &Request::openai("big", false),
        &mut vendors(&[("anthropic", overflow)]),
    );
    assert_eq!(got.status, 200);
    assert_eq!(
        got.asked.iter().map(|a| a.cluster.as_str()).collect::<Vec<_>>(),
        ["anthropic", "openai"]
    );
    assert!(String::from_utf8_lossy(&got.asked[1].body).contains("large-ctx"));
    assert_eq!(
        e.main.metric("llm_failover.vendor.anthropic.failures"),
        0,
        "the client's doing"
    );
}

#[test]
fn a_callout_answer_for_a_client_that_went_away_is_dropped() {
    let mut e = adapted();
    // The stream ended (on_log) before the callout answered.
    let mut stream = e.workers[0].root.new_stream(4242);
    stream.on_callout(12345, 0, 0);
    e.workers[0].root.on_callout(12345, 0, 0);
    let got = e.send(0, &Request::openai("m", false), &mut vendors(&[]));
    assert_eq!(got.status, 200);
}
