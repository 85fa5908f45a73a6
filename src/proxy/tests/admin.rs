//! The operator's endpoint through the fake host: status, drains, who may ask.

use super::*;
use crate::proxy::fake::envoy::Request;

const TOKEN: &str = "test-token-0123456789";

fn envoy_with_admin(workers: usize, extra: &str) -> FakeEnvoy {
    capture::clear();
    let json = whole(&format!(
        r#"{extra},"admin":{{"path":"/llm-failover","token_env":"ADMIN_TOKEN"}}"#
    ));
    let e = FakeEnvoy::with_env(&json, &CLUSTERS, workers, &[("ADMIN_TOKEN", TOKEN)]).unwrap();
    e.set_now(1_000);
    e
}

fn operator(method: &str, path: &str, token: Option<&str>) -> Request {
    let mut r = Request::new(path, b"").with(":method", method);
    if let Some(t) = token {
        r = r.with("authorization", &format!("Bearer {t}"));
    }
    r
}

fn served_by(e: &mut FakeEnvoy, worker: usize) -> String {
    let got = e.send(worker, &Request::openai("m", false), &mut vendors(&[]));
    got.asked.first().map(|a| a.cluster.clone()).unwrap_or_default()
}

#[test]
fn status_is_answered_to_the_token_only() {
    let mut e = envoy_with_admin(1, "");
    let got = e.send(0, &operator("GET", "/llm-failover", Some(TOKEN)), &mut vendors(&[]));
    assert_eq!(got.status, 200);
    assert!(got.asked.is_empty(), "answered by the filter");
    let doc: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(doc["vendors"][0]["name"], "anthropic");
    assert_eq!(doc["units"][0]["state"], "closed");
    let html = e.send(
        0,
        &operator("GET", "/llm-failover?format=html", Some(TOKEN)),
        &mut vendors(&[]),
    );
    assert!(html.body_text().contains("<table>") && !html.body_text().contains("<script"));
    for token in [None, Some("wrong-token-0123456789"), Some(&TOKEN[..10])] {
        let got = e.send(0, &operator("GET", "/llm-failover", token), &mut vendors(&[]));
        assert_eq!(got.asked.len(), 1, "goes on as if the path did not exist: {token:?}");
    }
    let logged = capture::lines(log::Level::Trace).join("\n");
    assert!(!logged.contains(TOKEN) && !logged.contains("wrong-token"));
}

#[test]
fn a_drain_moves_traffic_on_every_worker_and_an_undrain_brings_it_back() {
    let mut e = envoy_with_admin(2, "");
    assert_eq!(served_by(&mut e, 1), "anthropic");
    let got = e.send(
        0,
        &operator("POST", "/llm-failover/drain?vendor=anthropic", Some(TOKEN)),
        &mut vendors(&[]),
    );
    assert_eq!(got.status, 200, "{}", got.body_text());
    e.deliver_notifications();
    assert_eq!(served_by(&mut e, 0), "openai");
    assert_eq!(served_by(&mut e, 1), "openai", "the other worker, told at once");
    assert_eq!(e.main.metric("llm_failover.vendor.anthropic.drained"), 1);
    let status = e.send(1, &operator("GET", "/llm-failover", Some(TOKEN)), &mut vendors(&[]));
    let doc: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(doc["vendors"][0]["drained"], "api");
    assert!(capture::lines(log::Level::Info)
        .iter()
        .any(|l| l.contains("anthropic: drained by an operator")));
    let got = e.send(
        1,
        &operator("POST", "/llm-failover/undrain?vendor=anthropic", Some(TOKEN)),
        &mut vendors(&[]),
    );
    assert_eq!(got.status, 200);
    e.deliver_notifications();
    assert_eq!(served_by(&mut e, 0), "anthropic");
}

#[test]
fn draining_the_last_vendor_is_refused_unless_forced() {
    let mut e = envoy_with_admin(1, "");
    for v in ["anthropic", "openai"] {
        let path = format!("/llm-failover/drain?vendor={v}");
        assert_eq!(
            e.send(0, &operator("POST", &path, Some(TOKEN)), &mut vendors(&[]))
                .status,
            200
        );
    }
    let got = e.send(
        0,
        &operator("POST", "/llm-failover/drain?vendor=xai", Some(TOKEN)),
        &mut vendors(&[]),
    );
    assert_eq!(got.status, 409);
    assert!(got.body_text().contains("would leave no vendor to serve"));
    assert_eq!(served_by(&mut e, 0), "xai");
    let got = e.send(
        0,
        &operator("POST", "/llm-failover/drain?vendor=xai&force=true", Some(TOKEN)),
        &mut vendors(&[]),
    );
    assert_eq!(got.status, 200);
    let got = e.send(0, &Request::openai("m", false), &mut vendors(&[]));
    assert_eq!((got.status, got.asked.len()), (503, 0), "nothing left to serve");
}

#[test]
fn a_vendor_or_model_disabled_in_the_configuration_is_never_routed_to() {
    let json = r#"{"vendors":[{"name":"anthropic","disabled":true},
        {"name":"openai","priority":1,"models":{"a":{"model":"gpt-a","disabled":true},"*":"gpt-b"}},
        {"name":"xai","priority":2}],"rescue":{"retry_backoff":"off"}}"#;
    capture::clear();
    let mut e = FakeEnvoy::new(json, &CLUSTERS, 1).unwrap();
    let got = e.send(0, &Request::openai("a", false), &mut vendors(&[]));
    assert_eq!(
        got.asked[0].cluster, "xai",
        "anthropic disabled, openai's gpt-a disabled"
    );
    let got = e.send(0, &Request::openai("b", false), &mut vendors(&[]));
    assert_eq!(got.asked[0].cluster, "openai");
    assert_eq!(e.main.metric("llm_failover.vendor.anthropic.drained"), 1);
    assert!(FakeEnvoy::new(r#"{"vendors":[{"name":"a","disabled":true}]}"#, &CLUSTERS, 1).is_err());
}
