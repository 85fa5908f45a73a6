//! Tests of the request callbacks: routing, holding for the body, adapting, the filter's own answers.

use super::*;
use crate::proxy::fake::envoy::Request;
use crate::proxy::host::{Host, Map};
use proxy_wasm::types::Action;

#[test]
fn request_headers_while_the_preferred_vendor_is_ejected_name_the_next_vendor() {
    let mut e = envoy(&three(r#","rescue":{"max_attempts":1}"#), 2);
    eject(&mut e, "anthropic", 5);
    // On the other worker, which learns of the ejection by notification.
    let got = e.send(1, &Request::openai("m", false), &mut vendors(&[]));
    assert_eq!(got.asked[0].cluster, "openai");
    assert_eq!(got.asked[0].header("x-llm-failover-cluster"), Some("openai"));
    assert_eq!(got.header("x-llm-failover-vendor"), Some("openai"));
}

#[test]
fn request_headers_overwrite_a_clients_routing_header_and_drop_its_credentials() {
    let mut e = envoy(&three(r#","rescue":{"max_attempts":1}"#), 1);
    let request = Request::openai("m", false)
        .with("x-llm-failover-cluster", "xai")
        .with("x-api-key", "client-key-2");
    let got = e.send(0, &request, &mut vendors(&[]));
    let asked = &got.asked[0];
    assert_eq!(asked.header("x-llm-failover-cluster"), Some("anthropic"));
    assert_eq!(asked.header("authorization"), None);
    assert_eq!(asked.header("x-api-key"), None);
    assert_eq!(got.status, 200);
}

#[test]
fn request_headers_hold_a_known_format_until_its_body_routes_it() {
    let json = r#"{"vendors":[{"name":"anthropic","api_key_env":"AK","models":{"sonnet":"claude-sonnet-4-5"}},
        {"name":"openai","priority":1}]}"#;
    capture::clear();
    let process = crate::proxy::fake::Process::new();
    let host = crate::proxy::fake::FakeHost::worker(&process);
    for c in CLUSTERS {
        host.add_cluster(c);
    }
    host.set_env("AK", "sk-anthropic");
    let mut root = crate::proxy::root::Root::new(host.clone());
    assert!(root.on_configure(host.set_configuration(json)));
    let request = Request::anthropic("sonnet", false);
    host.with_stream(7, |s| {
        s.request_headers = request.headers.clone();
        s.request_body = request.body.clone();
    });
    host.enter(7);
    let mut stream = root.new_stream(7);
    assert_eq!(stream.on_request_headers(5, false), Action::Pause, "held for its body");
    assert_eq!(
        host.header(Map::RequestHeaders, "x-llm-failover-cluster").unwrap(),
        None,
        "nothing chosen until the body chooses (or the request goes unread)"
    );
    assert_eq!(stream.on_request_body(10, false), Action::Pause, "more to come");
    assert_eq!(stream.on_request_body(request.body.len(), true), Action::Continue);
    let s = host.stream(7);
    let body = String::from_utf8(s.request_body.clone()).unwrap();
    assert!(body.contains(r#""model":"claude-sonnet-4-5""#), "{body}");
    let get = |n: &str| s.request_headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    assert_eq!(get("content-length"), Some(body.len().to_string().into_bytes()));
    assert_eq!(
        get("x-api-key"),
        Some(b"sk-anthropic".to_vec()),
        "the vendor's key, not the client's"
    );
    assert_eq!(get("anthropic-version"), Some(b"2023-06-01".to_vec()));
}

#[test]
fn request_body_for_a_model_no_vendor_serves_is_answered_404_in_the_clients_format() {
    let json = r#"{"vendors":[{"name":"anthropic","models":{"sonnet":"claude-sonnet-4-5"}}]}"#;
    let mut e = envoy(json, 1);
    let got = e.send(0, &Request::anthropic("gpt-9", false), &mut vendors(&[]));
    assert_eq!(got.status, 404);
    assert!(got.asked.is_empty(), "no vendor was asked");
    assert!(got.body_text().contains("not_found_error"), "{}", got.body_text());
    assert_eq!(e.main.metric("llm_failover.model_not_served"), 1);
}

#[test]
fn request_body_larger_than_the_filter_holds_passes_as_routed_at_its_headers() {
    let mut e = envoy(&three(r#","rescue":{"max_body_bytes":16}"#), 1);
    let request = Request::openai("m", false);
    // The declared length is already too large: not held at all.
    let got = e.send(0, &request, &mut vendors(&[]));
    assert_eq!(got.status, 200);
    assert_eq!(got.asked[0].body, request.body, "untouched");
    assert_eq!(e.main.metric("llm_failover.body_too_large"), 1);
}

#[test]
fn every_vendor_ejected_with_reject_answers_503_with_retry_after() {
    let json = r#"{"vendors":[{"name":"anthropic"}],"all_down":"reject","rescue":{"max_attempts":1}}"#;
    let mut e = envoy(json, 1);
    eject(&mut e, "anthropic", 3);
    let got = e.send(0, &Request::openai("m", false), &mut vendors(&[]));
    assert_eq!(got.status, 503);
    assert!(got.asked.is_empty());
    assert_eq!(got.header("retry-after"), Some("30"));
    assert!(got.body_text().contains("all_vendors_unavailable"));
    assert_eq!(e.main.metric("llm_failover.rejected"), 1);
}
