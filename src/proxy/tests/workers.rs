//! Tests of the root context: configuration, the tick, notifications between workers.

use super::*;
use crate::proxy::fake::envoy::Request;
use crate::proxy::fake::{FakeHost, Process};
use crate::proxy::root::Root;

#[test]
fn configure_accepts_a_good_config_and_says_so() {
    let process = Process::new();
    let host = FakeHost::worker(&process);
    for c in CLUSTERS {
        host.add_cluster(c);
    }
    capture::clear();
    let mut root = Root::new(host.clone());
    assert!(root.on_configure(host.set_configuration(&three(""))));
    assert_eq!(host.tick_ms(), 1_000, "refresh_interval");
    let info = capture::lines(log::Level::Info).join("\n");
    assert!(
        info.contains("vendors by preference: anthropic (cluster anthropic, priority 0, weight 1)"),
        "{info}"
    );
}

#[test]
fn configure_refuses_a_bad_config_naming_the_field() {
    let process = Process::new();
    let host = FakeHost::worker(&process);
    capture::clear();
    let mut root = Root::new(host.clone());
    let bad = r#"{"vendors":[{"name":"a"}],"trip":{"failure_ratio":1.5}}"#;
    assert!(!root.on_configure(host.set_configuration(bad)));
    let errors = capture::lines(log::Level::Error).join("\n");
    assert!(
        errors.contains("configuration refused: config field `trip.failure_ratio`"),
        "{errors}"
    );
    assert!(root.plugin().is_none());
    // A stream of a refused filter passes everything untouched.
    let mut s = root.new_stream(3);
    assert_eq!(s.on_request_headers(1, true), proxy_wasm::types::Action::Continue);
}

#[test]
fn configure_skips_a_vendor_whose_cluster_envoy_lacks_until_it_appears() {
    capture::clear();
    let mut e = FakeEnvoy::new(&three(r#","rescue":{"max_attempts":1}"#), &["openai", "xai"], 1).unwrap();
    assert!(capture::lines(log::Level::Warn)
        .iter()
        .any(|l| l.contains("no cluster named \"anthropic\"")));
    let got = e.send(0, &Request::openai("m", false), &mut vendors(&[]));
    assert_eq!(got.asked[0].cluster, "openai");
    e.main.add_cluster("anthropic");
    e.set_now(10_000);
    e.tick();
    let got = e.send(0, &Request::openai("m", false), &mut vendors(&[]));
    assert_eq!(got.asked[0].cluster, "anthropic");
}

#[test]
fn tick_refreshes_the_state_gauges() {
    let mut e = envoy(&whole(r#","rescue":{"max_attempts":1}"#), 1);
    eject(&mut e, "anthropic", 5);
    e.advance(1_000);
    e.tick();
    assert_eq!(e.main.metric("llm_failover.vendor.anthropic.state"), 1);
    assert_eq!(e.main.metric("llm_failover.vendor.anthropic.ejections"), 1);
    assert_eq!(e.main.metric("llm_failover.vendor.openai.state"), 0);
    // Three units of 208 bytes with their keys, and the worker registry.
    let shared = e.main.metric("llm_failover.shared_bytes");
    assert!((3 * 208..3 * 208 + 300).contains(&shared), "{shared}");
}

/// Holds one request on worker 0 (its headers only) at `ctx`; `received`
/// body bytes are what Envoy counted for it.
fn hold(e: &mut FakeEnvoy, ctx: u32, received: u64) -> crate::proxy::stream::Stream<FakeHost> {
    let request = Request::openai("m", false);
    let host = e.workers[0].host.clone();
    host.with_stream(ctx, |s| s.request_headers = request.headers.clone());
    host.enter(ctx);
    let mut s = e.workers[0].root.new_stream(ctx);
    assert_eq!(s.on_request_headers(5, false), proxy_wasm::types::Action::Pause);
    host.with_stream(ctx, |s| {
        let header_bytes: usize = s.request_headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        let total = header_bytes as u64 + received;
        s.properties
            .insert(b"request\0total_size".to_vec(), total.to_le_bytes().to_vec());
    });
    s
}

#[test]
fn tick_releases_held_requests_once_envoy_shows_it_keeps_bodies_from_the_filter() {
    let mut e = envoy(&three(""), 1);
    e.set_now(1_000);
    let _silent = hold(&mut e, 50, 0);
    let _sent = hold(&mut e, 51, 27);
    e.set_now(1_999);
    e.tick();
    let host = e.workers[0].host.clone();
    assert_eq!(host.stream(51).resumed, 0, "not yet overdue");
    e.set_now(2_000);
    e.tick();
    // 27 body bytes arrived for one of them and no callback came: Envoy is
    // not handing bodies to the filter; both go as routed at their headers.
    assert_eq!(host.stream(51).resumed, 1);
    assert_eq!(host.stream(50).resumed, 1);
    assert!(capture::lines(log::Level::Warn)
        .iter()
        .any(|l| l.contains("request bodies are not reaching the filter")));
    // From then on requests are routed at their headers, not held.
    let got = e.send(0, &Request::openai("m", false), &mut vendors(&[]));
    assert_eq!(got.status, 200);
}

#[test]
fn tick_keeps_holding_a_slow_or_silent_client() {
    let mut e = envoy(&three(""), 1);
    e.set_now(1_000);
    let _silent = hold(&mut e, 50, 0);
    let mut trickling = hold(&mut e, 51, 3);
    let host = e.workers[0].host.clone();
    host.enter(51);
    assert_eq!(trickling.on_request_body(3, false), proxy_wasm::types::Action::Pause);
    e.set_now(60_000);
    e.tick();
    assert_eq!(host.stream(50).resumed, 0, "a client that sent nothing proves nothing");
    assert_eq!(host.stream(51).resumed, 0, "a trickling client proves bodies arrive");
    assert!(!capture::lines(log::Level::Warn)
        .iter()
        .any(|l| l.contains("not reaching the filter")));
    // And body handling stays on: the next request is held and rewritten.
    let got = e.send(
        0,
        &Request::openai("m", false),
        &mut vendors(&[("anthropic", Answer::status(503))]),
    );
    assert_eq!(
        got.header("x-llm-failover-attempts"),
        Some("2"),
        "rescued: bodies still read"
    );
}

#[test]
fn tick_rescues_a_stream_whose_first_token_is_late() {
    let json = three(r#","rescue":{"first_token_timeout":"500ms"}"#);
    let mut e = envoy(&json, 1);
    assert_eq!(e.workers[0].host.tick_ms(), 100, "ticks often enough to check it");
    e.set_now(1_000);
    let host = e.workers[0].host.clone();
    let request = Request::openai("m", true);
    host.with_stream(60, |s| {
        s.request_headers = request.headers.clone();
        s.request_body = request.body.clone();
    });
    host.enter(60);
    let probes = host.callouts().len();
    let mut s = e.workers[0].root.new_stream(60);
    s.on_request_headers(5, false);
    assert_eq!(
        s.on_request_body(request.body.len(), true),
        proxy_wasm::types::Action::Continue
    );
    e.set_now(1_499);
    e.tick();
    assert_eq!(host.callouts().len(), probes);
    e.set_now(1_500);
    e.tick();
    let callouts = host.callouts();
    assert_eq!(callouts.len(), probes + 1);
    assert_eq!(callouts[probes].cluster, "openai");
    assert_eq!(e.main.metric("llm_failover.first_token_timeouts"), 1);
}

#[test]
fn queue_ready_makes_a_worker_drop_its_copy() {
    let mut e = envoy(&three(r#","rescue":{"max_attempts":1}"#), 2);
    // Worker 1 has a copy of anthropic as closed.
    let got = e.workers.len();
    assert_eq!(got, 2);
    e.send(1, &Request::openai("m", false), &mut vendors(&[]));
    eject(&mut e, "anthropic", 3);
    let queued = e.workers[1].host.ready_queues();
    assert!(!queued.is_empty(), "worker 0 told worker 1");
    for token in queued {
        e.workers[1].root.on_queue_ready(token);
    }
    assert!(e.workers[1].host.ready_queues().is_empty(), "drained");
    let got = e.send(1, &Request::openai("m", false), &mut vendors(&[]));
    assert_eq!(got.asked[0].cluster, "openai");
}
