//! Tests of the response callbacks and the stream's end.

use super::*;
use crate::policy::store::vendor_key;
use crate::proxy::fake::envoy::Request;
use crate::proxy::host::Host;

const WINDOW: crate::policy::config::WindowSpec = crate::policy::config::WindowSpec::DEFAULT;

#[test]
fn response_headers_name_the_vendor_that_answered() {
    let mut e = envoy(&three(r#","rescue":{"max_attempts":1}"#), 1);
    let got = e.send(0, &Request::openai("m", false), &mut vendors(&[]));
    assert_eq!(got.header("x-llm-failover-vendor"), Some("anthropic"));
    assert_eq!(
        got.header("x-llm-failover-attempts"),
        None,
        "one attempt: no accounting headers"
    );
}

#[test]
fn response_body_of_a_cut_stream_is_closed_with_an_error_event() {
    let mut e = envoy(&three(r#","rescue":{"max_attempts":1}"#), 1);
    let cut = Answer::Http {
        status: 200,
        headers: vec![
            ("content-type".into(), "text/event-stream".into()),
            ("content-length".into(), "120".into()),
        ],
        chunks: vec![
            b"data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n".to_vec(),
        ],
    };
    let got = e.send(0, &Request::openai("m", true), &mut vendors(&[("anthropic", cut)]));
    assert!(got.body_text().contains("stream_truncated"), "{}", got.body_text());
    assert_eq!(got.header("content-length"), None, "the appended event would break it");
    assert_eq!(e.main.metric("llm_failover.vendor.anthropic.truncations_closed"), 1);
    assert_eq!(
        e.main
            .metric("llm_failover.vendor.anthropic.failures_by_reason.truncated"),
        1
    );
}

#[test]
fn response_trailers_end_a_clean_answer_that_records_as_a_batched_success() {
    let mut e = envoy(&whole(r#","rescue":{"max_attempts":1}"#), 1);
    e.set_now(5_000);
    let got = e.send(0, &Request::openai("m", false), &mut vendors(&[]));
    assert_eq!(got.status, 200);
    // A quiet success waits in the worker's batch for the tick.
    let key = vendor_key("anthropic", WINDOW);
    let totals = |e: &FakeEnvoy| load(&e.process.store, &key, WINDOW).unwrap().state.window.totals(5_000);
    assert_eq!(totals(&e).successes, 0);
    e.workers[0].root.on_tick();
    e.set_now(6_000);
    e.workers[0].root.on_tick();
    assert_eq!(totals(&e).successes, 1);
    assert_eq!(e.main.metric("llm_failover.vendor.anthropic.requests"), 1);
    // The trailers callback itself just marks the end.
    let mut s = e.workers[0].root.new_stream(999);
    assert_eq!(s.on_response_trailers(0), proxy_wasm::types::Action::Continue);
}

#[test]
fn on_log_of_a_failure_changes_the_shared_window_and_notifies_the_other_worker() {
    let mut e = envoy(&whole(r#","rescue":{"max_attempts":1}"#), 2);
    e.set_now(1_000);
    let key = vendor_key("anthropic", WINDOW);
    let got = e.send(
        0,
        &Request::openai("m", false),
        &mut vendors(&[("anthropic", Answer::refused())]),
    );
    assert_eq!(got.status, 503);
    assert_eq!(window_failures(&e, &key), 1);
    assert_eq!(
        e.main
            .metric("llm_failover.vendor.anthropic.failures_by_reason.connect_failure"),
        1
    );
    // The first failure of a quiet vendor is news for every other worker.
    let queued = e.workers[1].host.ready_queues();
    assert_eq!(queued.len(), 1);
    assert_eq!(e.workers[0].host.ready_queues(), Vec::<u32>::new(), "not its own");
    let message = e.workers[1].host.dequeue(queued[0]).unwrap().unwrap();
    assert_eq!(message, key.as_bytes());
}

#[test]
fn on_log_of_a_client_error_leaves_health_alone() {
    let mut e = envoy(&whole(r#","rescue":{"max_attempts":1}"#), 1);
    let bad = Answer::json(400, r#"{"error":{"code":"invalid_request"}}"#);
    for _ in 0..10 {
        e.send(
            0,
            &Request::openai("m", false),
            &mut vendors(&[("anthropic", bad.clone())]),
        );
    }
    assert_eq!(window_failures(&e, &vendor_key("anthropic", WINDOW)), 0);
    assert_eq!(e.main.metric("llm_failover.vendor.anthropic.client_errors"), 10);
}

#[test]
fn a_429_skips_the_vendor_until_its_reset() {
    let mut e = envoy(&three(r#","rescue":{"max_attempts":1}"#), 1);
    e.set_now(10_000);
    let limited = Answer::Http {
        status: 429,
        headers: vec![("retry-after".into(), "2".into())],
        chunks: vec![b"{}".to_vec()],
    };
    e.send(0, &Request::openai("m", false), &mut vendors(&[("anthropic", limited)]));
    let next = e.send(0, &Request::openai("m", false), &mut vendors(&[]));
    assert_eq!(next.asked[0].cluster, "openai");
    e.set_now(12_000);
    let back = e.send(0, &Request::openai("m", false), &mut vendors(&[]));
    assert_eq!(back.asked[0].cluster, "anthropic");
    assert!(capture::lines(log::Level::Info)
        .iter()
        .any(|l| l.contains("closed -> rate-limited")));
}
