//! The host calls one ordinary request costs (each is a trip out of the VM;
//! bench/README.md measures what they cost in Envoy). A budget, so a change
//! that adds one to the common path shows up here first.

use super::*;
use crate::proxy::fake::envoy::Request;
use std::collections::BTreeMap;

/// The bench's filter config (bench/run.py): three vendors, default settings.
const BENCH: &str = r#"{"cluster_header":"x-llm-failover-cluster","vendors":[{"name":"anthropic","cluster":"anthropic"},
    {"name":"openai","cluster":"openai","priority":1},{"name":"xai","cluster":"xai","priority":2}]}"#;

/// Host calls of one successful request on a warm worker.
fn calls_of(request: &Request, answer: Answer) -> BTreeMap<&'static str, u64> {
    let mut e = envoy(BENCH, 1);
    let ok = [("anthropic", answer)];
    for _ in 0..3 {
        e.send(0, request, &mut vendors(&ok));
    }
    e.process.take_calls();
    let got = e.send(0, request, &mut vendors(&ok));
    assert_eq!(got.status, 200);
    let calls = e.process.take_calls();
    println!("{calls:?}");
    calls
}

fn total(calls: &BTreeMap<&'static str, u64>) -> u64 {
    calls.values().sum()
}

#[test]
fn a_json_request_costs_a_few_host_calls() {
    let calls = calls_of(
        &Request::openai("gpt-4o-mini", false),
        Answer::json(200, r#"{"id":"x"}"#),
    );
    assert!(total(&calls) <= 12, "{calls:?}");
    assert_eq!(
        calls.get("get"),
        None,
        "the shared state is read on the tick, not per request: {calls:?}"
    );
    assert_eq!(calls.get("set"), None, "successes are batched: {calls:?}");
}

#[test]
fn a_streamed_request_costs_a_few_host_calls() {
    let events = [
        "data: {\"id\":\"x\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
        "data: {\"id\":\"x\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n",
    ];
    let calls = calls_of(&Request::openai("gpt-4o-mini", true), Answer::sse(&events));
    assert!(total(&calls) <= 16, "{calls:?}");
}
