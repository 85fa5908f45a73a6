//! Same-vendor retries: a transient failure tried once more on its vendor after a jittered back-off, a short 429 waited out.

use super::*;
use crate::proxy::fake::envoy::Request;

/// Three vendors with same-vendor retries at their defaults (100 ms back-off,
/// 429s up to 1 s waited out).
fn retrying(extra: &str) -> FakeEnvoy {
    let json = format!(
        r#"{{"vendors":[{{"name":"anthropic","model_units":0}},{{"name":"openai","priority":1,"model_units":0}},{{"name":"xai","priority":2,"model_units":0}}]{extra}}}"#
    );
    capture::clear();
    let e = FakeEnvoy::new(&json, &CLUSTERS, 1).unwrap();
    e.set_now(1_000);
    e
}

/// Answers each upstream request with the next answer of its cluster's
/// list (the last one again when the list runs out), 200 for others.
fn in_turn(lists: Vec<(&'static str, Vec<Answer>)>) -> impl FnMut(&Asked) -> Answer {
    let mut seen: Vec<(&'static str, usize)> = lists.iter().map(|(c, _)| (*c, 0)).collect();
    move |asked: &Asked| {
        let Some(at) = lists.iter().position(|(c, _)| *c == asked.cluster) else {
            return Answer::json(200, &format!(r#"{{"served_by":"{}"}}"#, asked.cluster));
        };
        let n = seen[at].1;
        seen[at].1 += 1;
        let list = &lists[at].1;
        list[n.min(list.len() - 1)].clone()
    }
}

fn clusters(got: &crate::proxy::fake::envoy::Got) -> Vec<&str> {
    got.asked.iter().map(|a| a.cluster.as_str()).collect()
}

fn rate_limited(retry_after: &str) -> Answer {
    Answer::Http {
        status: 429,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("retry-after".into(), retry_after.into()),
        ],
        chunks: vec![br#"{"error":{"type":"rate_limit_error"}}"#.to_vec()],
    }
}

#[test]
fn a_transient_failure_is_retried_once_on_its_vendor_after_a_short_back_off() {
    let mut e = retrying("");
    let ok = Answer::json(200, r#"{"served_by":"anthropic, again"}"#);
    let got = e.send(
        0,
        &Request::openai("m", false),
        &mut in_turn(vec![("anthropic", vec![Answer::status(503), ok])]),
    );
    assert_eq!(got.status, 200);
    assert_eq!(clusters(&got), ["anthropic", "anthropic"]);
    assert!(got.asked[1].callout);
    assert_eq!(got.header("x-llm-failover-tried"), Some("anthropic,anthropic"));
    let waited = e.main.now() - 1_000;
    assert!(
        (50..=150).contains(&waited),
        "back-off of 100 ms jittered to 50-150: {waited}"
    );
    assert_eq!(e.main.metric("llm_failover.same_vendor_retries"), 1);
}

#[test]
fn a_vendor_is_tried_twice_at_most_then_the_request_moves() {
    let mut e = retrying("");
    let got = e.send(
        0,
        &Request::openai("m", false),
        &mut in_turn(vec![("anthropic", vec![Answer::status(529)])]),
    );
    assert_eq!(got.status, 200);
    assert_eq!(clusters(&got), ["anthropic", "anthropic", "openai"]);
}

#[test]
fn a_short_429_is_waited_out_and_a_long_one_moves_at_once() {
    let mut e = retrying("");
    let got = e.send(
        0,
        &Request::openai("m", false),
        &mut in_turn(vec![("anthropic", vec![rate_limited("1"), Answer::status(200)])]),
    );
    assert_eq!(clusters(&got), ["anthropic", "anthropic"]);
    assert!(e.main.now() - 1_000 >= 1_000, "waited the full second");
    assert_eq!(got.status, 200);

    let mut e = retrying("");
    let got = e.send(
        0,
        &Request::openai("m", false),
        &mut in_turn(vec![("anthropic", vec![rate_limited("30")])]),
    );
    assert_eq!(clusters(&got), ["anthropic", "openai"]);
    assert_eq!(e.main.now(), 1_000, "no wait");
}

#[test]
fn a_vendor_its_failure_ejected_is_not_retried() {
    let mut e = retrying(r#","trip":{"consecutive_failures":1}"#);
    let got = e.send(
        0,
        &Request::openai("m", false),
        &mut in_turn(vec![("anthropic", vec![Answer::status(503)])]),
    );
    assert_eq!(clusters(&got), ["anthropic", "openai"]);
    assert_eq!(got.status, 200);
    assert_eq!(e.main.now(), 1_000, "no wait for a vendor that is out");
    assert_eq!(e.main.metric("llm_failover.same_vendor_retries"), 0);
}

#[test]
fn a_second_failure_in_a_row_moves_at_once() {
    let mut e = retrying("");
    // The first request's failure broke a run of successes: a blip, retried.
    let got = e.send(
        0,
        &Request::openai("m", false),
        &mut in_turn(vec![("anthropic", vec![Answer::status(503)])]),
    );
    assert_eq!(clusters(&got), ["anthropic", "anthropic", "openai"]);
    assert_eq!(e.main.metric("llm_failover.same_vendor_retries"), 1);
    // The next one fails there too: the vendor is going down, no retry.
    let before = e.main.now();
    let got = e.send(
        0,
        &Request::openai("m", false),
        &mut in_turn(vec![("anthropic", vec![Answer::status(503)])]),
    );
    assert_eq!(clusters(&got), ["anthropic", "openai"]);
    assert_eq!(e.main.now(), before, "no wait");
    assert_eq!(e.main.metric("llm_failover.same_vendor_retries"), 1);
}

#[test]
fn failures_that_a_retry_would_not_mend_move_at_once() {
    for answer in [Answer::status(401), Answer::status(408), Answer::refused()] {
        let mut e = retrying("");
        let got = e.send(
            0,
            &Request::openai("m", false),
            &mut in_turn(vec![("anthropic", vec![answer.clone()])]),
        );
        assert_eq!(clusters(&got), ["anthropic", "openai"], "{answer:?}");
    }
}

#[test]
fn retries_off_move_at_once() {
    let mut e = retrying(r#","rescue":{"retry_backoff":"off","rate_limit_wait":"off"}"#);
    let got = e.send(
        0,
        &Request::openai("m", false),
        &mut in_turn(vec![("anthropic", vec![Answer::status(503), rate_limited("0.1")])]),
    );
    assert_eq!(clusters(&got), ["anthropic", "openai"]);
}
