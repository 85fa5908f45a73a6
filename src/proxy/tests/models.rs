//! Tests of per-model health on vendors that pass models through (their
//! model units), and of context windows without route groups.

use super::*;
use crate::policy::config::{model_hash, DEFAULT_MODEL_UNITS};
use crate::proxy::fake::envoy::Request;

fn slot(model: &str) -> u64 {
    model_hash(model) % u64::from(DEFAULT_MODEL_UNITS)
}

/// Two model names in different model units, and two in the same one.
fn names() -> ((String, String), (String, String)) {
    let all: Vec<String> = (0..200).map(|i| format!("model-{i}")).collect();
    let a = all[0].clone();
    let apart = all.iter().find(|m| slot(m) != slot(&a)).unwrap().clone();
    let together = all.iter().skip(1).find(|m| slot(m) == slot(&a)).unwrap().clone();
    ((a.clone(), apart), (a, together))
}

fn limited(seconds: u64) -> Answer {
    Answer::Http {
        status: 429,
        headers: vec![("retry-after".into(), seconds.to_string())],
        chunks: vec![b"{}".to_vec()],
    }
}

#[test]
fn a_429_on_one_model_leaves_the_vendors_other_models_alone() {
    let ((a, b), _) = names();
    let mut e = envoy(&three(""), 1);
    e.set_now(1_000);
    // Model a is rate limited at anthropic (and rescued by openai)...
    let got = e.send(
        0,
        &Request::openai(&a, false),
        &mut vendors(&[("anthropic", limited(30))]),
    );
    assert_eq!(got.header("x-llm-failover-vendor"), Some("openai"));
    // ...model b still goes to anthropic; a does not, until its reset.
    let got = e.send(0, &Request::openai(&b, false), &mut vendors(&[]));
    assert_eq!(got.asked[0].cluster, "anthropic");
    let got = e.send(0, &Request::openai(&a, false), &mut vendors(&[]));
    assert_eq!(got.asked[0].cluster, "openai");
    e.set_now(31_000);
    let got = e.send(0, &Request::openai(&a, false), &mut vendors(&[]));
    assert_eq!(got.asked[0].cluster, "anthropic");
}

#[test]
fn an_outage_of_one_model_ejects_that_model_only() {
    let ((a, b), _) = names();
    let mut e = envoy(&three(r#","rescue":{"max_attempts":1}"#), 1);
    for _ in 0..5 {
        e.send(
            0,
            &Request::openai(&a, false),
            &mut vendors(&[("anthropic", Answer::status(529))]),
        );
    }
    let got = e.send(0, &Request::openai(&a, false), &mut vendors(&[]));
    assert_eq!(got.asked[0].cluster, "openai", "model a is ejected at anthropic");
    let got = e.send(0, &Request::openai(&b, false), &mut vendors(&[]));
    assert_eq!(got.asked[0].cluster, "anthropic", "model b is not");
    let opened = capture::lines(log::Level::Info)
        .into_iter()
        .find(|l| l.contains("closed -> open"))
        .unwrap();
    assert!(
        opened.starts_with(&format!("vendor anthropic/{a}#{}: ", slot(&a))),
        "{opened}"
    );
    e.advance(1_000);
    e.tick();
    assert_eq!(e.main.metric("llm_failover.vendor.anthropic.models_ejected"), 1);
    assert_eq!(
        e.main.metric("llm_failover.vendor.anthropic.state"),
        0,
        "the vendor as a whole is fine"
    );
}

#[test]
fn a_model_whose_unit_another_holds_uses_the_vendors_own_until_it_is_free() {
    let (_, (a, c)) = names();
    let json = three(r#","rescue":{"max_attempts":1},"window":{"length":"10s"},"ejection":{"base":"1s","max":"2s"}"#);
    let mut e = envoy(&json, 1);
    e.set_now(1_000);
    // a fails once: it holds the unit (a failure in its window).
    e.send(
        0,
        &Request::openai(&a, false),
        &mut vendors(&[("anthropic", Answer::status(503))]),
    );
    // c maps to the same unit: it is judged by the vendor's own unit, so
    // five failures of c eject the whole vendor, not a's unit.
    for _ in 0..5 {
        e.send(
            0,
            &Request::openai(&c, false),
            &mut vendors(&[("anthropic", Answer::status(503))]),
        );
    }
    let key = crate::policy::store::vendor_key("anthropic", crate::policy::config::WindowSpec::DEFAULT);
    assert!(
        window_failures(&e, &key) == 0,
        "the vendor's own unit was ejected (window cleared)"
    );
    assert_eq!(e.main.metric("llm_failover.vendor.anthropic.ejections"), 1);
    // Once the unit has been left alone for longer than the window and the
    // longest ejection, c takes it.
    e.set_now(1_000 + 12_001);
    e.tick();
    e.send(
        0,
        &Request::openai(&c, false),
        &mut vendors(&[("anthropic", Answer::status(503))]),
    );
    let slot_key = format!("llm_failover.v3.anthropic#{}.1000msx10", slot(&c));
    assert_eq!(
        window_failures(&e, &slot_key),
        1,
        "c's failure lands in the unit it took"
    );
}

#[test]
fn a_vendor_can_keep_one_unit_for_all_its_models() {
    let json = r#"{"vendors":[{"name":"anthropic","model_units":0},{"name":"openai","priority":1}],"rescue":{"max_attempts":1}}"#;
    let ((a, b), _) = names();
    let mut e = envoy(json, 1);
    for _ in 0..5 {
        e.send(
            0,
            &Request::openai(&a, false),
            &mut vendors(&[("anthropic", Answer::status(529))]),
        );
    }
    let got = e.send(0, &Request::openai(&b, false), &mut vendors(&[]));
    assert_eq!(got.asked[0].cluster, "openai", "the whole vendor is out");
}

#[test]
fn a_context_overflow_moves_to_a_larger_window_without_a_route_group() {
    let json = r#"{"vendors":[
        {"name":"anthropic","context_window":8000},
        {"name":"openai","priority":1},
        {"name":"xai","priority":2,"models":{"*":{"model":"grok-4","context_window":256000}}}]}"#;
    let mut e = envoy(json, 1);
    let overflow = Answer::json(
        400,
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 9000 tokens > 8000 maximum"}}"#,
    );
    let got = e.send(
        0,
        &Request::anthropic("claude", false),
        &mut vendors(&[("anthropic", overflow.clone())]),
    );
    assert_eq!(got.status, 200);
    // openai declares no window: skipped; xai's model entry declares one.
    let asked: Vec<&str> = got.asked.iter().map(|a| a.cluster.as_str()).collect();
    assert_eq!(asked, ["anthropic", "xai"]);
    assert!(String::from_utf8_lossy(&got.asked[1].body).contains("grok-4"));
    // Without any larger window declared, the 400 goes back as it is.
    let plain = r#"{"vendors":[{"name":"anthropic","context_window":8000},{"name":"openai","priority":1}]}"#;
    let mut e = envoy(plain, 1);
    let got = e.send(
        0,
        &Request::anthropic("claude", false),
        &mut vendors(&[("anthropic", overflow)]),
    );
    assert_eq!(got.status, 400);
    assert_eq!(got.asked.len(), 1);
}

#[test]
fn group_patterns_route_whole_families_of_models() {
    let json = r#"{"vendors":[{"name":"anthropic"},{"name":"openai","priority":1},{"name":"xai","priority":2}],
        "groups":[{"models":["gpt-*"],"targets":[{"vendor":"openai"},{"vendor":"xai","model":"grok-4"}]}],
        "rescue":{"retry_backoff":"off"}}"#;
    let mut e = envoy(json, 1);
    let got = e.send(
        0,
        &Request::openai("gpt-4.1-mini", false),
        &mut vendors(&[("openai", Answer::status(503))]),
    );
    let asked: Vec<&str> = got.asked.iter().map(|a| a.cluster.as_str()).collect();
    assert_eq!(asked, ["openai", "xai"]);
    let got = e.send(0, &Request::openai("claude", false), &mut vendors(&[]));
    assert_eq!(got.asked[0].cluster, "anthropic", "outside the pattern: by priority");
}
