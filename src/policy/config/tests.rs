//! Tests of the whole configuration: defaults, every field, every refusal, and random documents.

use super::*;
use crate::policy::config::{UnitId, VendorId};
use serde_json::{Map, Value};
use std::num::{NonZeroU32, NonZeroU64};

fn n32(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn n64(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).unwrap()
}

fn parse(json: &str) -> Result<Config, ConfigError> {
    Config::parse(json.as_bytes())
}

fn field_of(json: &str) -> String {
    parse(json).expect_err("config should be refused").field
}

const ONE: &str = r#"{"vendors":[{"name":"anthropic"}]}"#;

#[test]
fn minimal_config_takes_every_default() {
    let c = parse(ONE).unwrap();
    assert_eq!(c.cluster_header, "x-llm-failover-cluster");
    assert_eq!(c.vendor_header.as_deref(), Some("x-llm-failover-vendor"));
    assert_eq!(
        c.vendors.as_slice(),
        [Vendor {
            name: "anthropic".into(),
            cluster: "anthropic".into(),
            priority: 0,
            weight: n32(1),
            host: None,
            api_key: None,
            paths: Paths::Unchanged,
            models: None,
            context_window: None,
            model_units: DEFAULT_MODEL_UNITS,
            prefill: Prefill::Auto,
            buffered: false,
            disabled: false,
        }]
    );
    // Its own unit, then its model slots.
    let units = c.units.as_slice();
    assert_eq!(
        units[0],
        Unit {
            vendor: VendorId(0),
            model: None,
            slot: None,
        }
    );
    assert_eq!(units.len(), 1 + DEFAULT_MODEL_UNITS as usize);
    assert!(units[1..].iter().enumerate().all(|(k, u)| u.slot == Some(k as u32)));
    assert!(c.groups.is_empty());
    assert_eq!(
        c.rescue,
        Rescue {
            max_attempts: n32(3),
            deadline_ms: 120_000,
            max_body_bytes: 512 * 1024,
            first_token_ms: None,
            max_answer_bytes: 2 * 1024 * 1024,
            relay: false,
            retry_backoff_ms: Some(100),
            rate_limit_wait_ms: Some(1_000),
            buffered_timeout_ms: 60_000,
        }
    );
    assert_eq!(
        c.window,
        WindowSpec {
            bucket_ms: n64(1_000),
            buckets: n32(10)
        }
    );
    assert_eq!(c.trip.min_requests, n32(10));
    assert_eq!(c.trip.failure_ratio, 0.5);
    assert_eq!(c.trip.consecutive_failures, 3);
    assert_eq!(
        c.ejection,
        Backoff {
            base_ms: 30_000,
            max_ms: 300_000,
            decay_ms: n64(60_000)
        }
    );
    assert_eq!(
        c.recovery,
        Recovery {
            probes: n32(3),
            successes: n32(3),
            probe_timeout_ms: 120_000
        }
    );
    assert_eq!(
        c.failure_statuses.to_vec(),
        vec![401, 403, 408, 500, 502, 503, 504, 529]
    );
    assert_eq!(
        c.slow,
        SlowLimits {
            first_byte_ms: Some(60_000),
            stall_ms: Some(30_000),
            ratio: 1.0
        }
    );
    assert_eq!(c.trip.slow_ratio, Some(1.0));
    assert_eq!(
        c.rate_limit,
        RateLimit {
            default_cooldown_ms: 5_000,
            max_cooldown_ms: 60_000
        }
    );
    assert_eq!(c.all_down, AllDown::Soonest);
    assert_eq!(c.refresh_ms, 1_000);
}

#[test]
fn an_empty_section_takes_the_same_defaults_as_an_absent_one() {
    let absent = parse(ONE).unwrap();
    for section in ["rescue", "window", "trip", "slow", "rate_limit", "ejection", "recovery"] {
        let json = format!(r#"{{"vendors":[{{"name":"anthropic"}}],"{section}":{{}}}}"#);
        assert_eq!(parse(&json).unwrap(), absent, "{section}");
    }
    assert_eq!(absent.window, WindowSpec::default());
    assert_eq!(absent.trip.min_requests, TripRule::default().min_requests);
    assert_eq!(absent.ejection, Backoff::default());
    assert_eq!(absent.recovery, Recovery::default());
    assert_eq!(absent.slow, SlowLimits::default());
    assert_eq!(absent.rate_limit, RateLimit::default());
    assert_eq!(absent.rescue, Rescue::default());
    assert_eq!(absent.failure_statuses, StatusSet::default());
    assert_eq!(absent.all_down, AllDown::default());
}

#[test]
fn full_config_is_read() {
    let c = parse(
        r#"{
        "cluster_header": "x-route-to",
        "vendor_header": "",
        "vendors": [
            {"name": "openai", "cluster": "openai_api", "priority": 1, "weight": 3},
            {"name": "anthropic", "cluster": "outbound|443||api.anthropic.com", "priority": 0},
            {"name": "xai", "priority": 1, "weight": 1}
        ],
        "window": {"length": "30s", "buckets": 30},
        "trip": {"min_requests": 4, "failure_ratio": 0.25, "consecutive_failures": 0},
        "ejection": {"base": "2s", "max": "1m", "decay": "10s"},
        "recovery": {"probes": 5, "successes": 2, "probe_timeout": "30s"},
        "failure_statuses": [500, 429],
        "all_down": "reject",
        "refresh_interval": "500ms"
    }"#,
    )
    .unwrap();
    assert_eq!(c.cluster_header, "x-route-to");
    assert_eq!(c.vendor_header, None);
    assert_eq!(c.by_preference, vec![VendorId(1), VendorId(0), VendorId(2)]);
    assert_eq!(c.vendors[VendorId(1)].cluster, "outbound|443||api.anthropic.com");
    assert_eq!(c.vendors[VendorId(0)].weight, n32(3));
    assert_eq!(
        c.window,
        WindowSpec {
            bucket_ms: n64(1_000),
            buckets: n32(30)
        }
    );
    assert_eq!(c.trip.consecutive_failures, 0);
    assert_eq!(
        c.ejection,
        Backoff {
            base_ms: 2_000,
            max_ms: 60_000,
            decay_ms: n64(10_000)
        }
    );
    assert_eq!(
        c.recovery,
        Recovery {
            probes: n32(5),
            successes: n32(2),
            probe_timeout_ms: 30_000
        }
    );
    assert!(c.failure_statuses.contains(429));
    assert!(!c.failure_statuses.contains(503));
    assert_eq!(c.all_down, AllDown::Reject);
    assert_eq!(c.refresh_ms, 500);
}

#[test]
fn each_kind_of_bad_config_names_its_field() {
    let cases = [
        ("", "(root)"),
        ("[1]", "(root)"),
        ("{}", "vendors"),
        (r#"{"vendors":{}}"#, "vendors"),
        (r#"{"vendors":[]}"#, "vendors"),
        (r#"{"vendors":[7]}"#, "vendors[0]"),
        (r#"{"vendors":[{}]}"#, "vendors[0].name"),
        (r#"{"vendors":[{"name":"Open AI"}]}"#, "vendors[0].name"),
        (r#"{"vendors":[{"name":"a"},{"name":"a"}]}"#, "vendors[1].name"),
        (
            r#"{"vendors":[{"name":"a","cluster":"has space"}]}"#,
            "vendors[0].cluster",
        ),
        (r#"{"vendors":[{"name":"a","cluster":""}]}"#, "vendors[0].cluster"),
        (r#"{"vendors":[{"name":"a","priority":-1}]}"#, "vendors[0].priority"),
        (r#"{"vendors":[{"name":"a","weight":0}]}"#, "vendors[0].weight"),
        (r#"{"vendors":[{"name":"a","weight":"2"}]}"#, "vendors[0].weight"),
        (r#"{"vendors":[{"name":"a","color":"red"}]}"#, "vendors[0].color"),
        (r#"{"vendors":[{"name":"a"}],"colour":1}"#, "colour"),
        (r#"{"vendors":[{"name":"a"}],"cluster_header":""}"#, "cluster_header"),
        (
            r#"{"vendors":[{"name":"a"}],"cluster_header":"X-Upper"}"#,
            "cluster_header",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"vendor_header":"x-llm-failover-cluster"}"#,
            "vendor_header",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"window":{"length":"10"}}"#,
            "window.length",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"window":{"length":"10s","buckets":0}}"#,
            "window.buckets",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"window":{"length":"10s","buckets":3}}"#,
            "window.buckets",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"window":{"length":"100ms","buckets":20}}"#,
            "window.buckets",
        ),
        (r#"{"vendors":[{"name":"a"}],"window":{"size":"10s"}}"#, "window.size"),
        (r#"{"vendors":[{"name":"a"}],"window":5}"#, "window"),
        (
            r#"{"vendors":[{"name":"a"}],"trip":{"failure_ratio":1.5}}"#,
            "trip.failure_ratio",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"trip":{"failure_ratio":0}}"#,
            "trip.failure_ratio",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"trip":{"failure_ratio":"half"}}"#,
            "trip.failure_ratio",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"trip":{"min_requests":0}}"#,
            "trip.min_requests",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"trip":{"consecutive_failures":1.5}}"#,
            "trip.consecutive_failures",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"ejection":{"base":"1m","max":"10s"}}"#,
            "ejection.max",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"ejection":{"base":"0s"}}"#,
            "ejection.base",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"ejection":{"decay":30}}"#,
            "ejection.decay",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"recovery":{"probes":2,"successes":3}}"#,
            "recovery.successes",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"recovery":{"probes":0}}"#,
            "recovery.probes",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"recovery":{"probe_timeout":"soon"}}"#,
            "recovery.probe_timeout",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"failure_statuses":503}"#,
            "failure_statuses",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"failure_statuses":[503,700]}"#,
            "failure_statuses[1]",
        ),
        (r#"{"vendors":[{"name":"a"}],"all_down":"panic"}"#, "all_down"),
        (
            r#"{"vendors":[{"name":"a"}],"refresh_interval":"1ms"}"#,
            "refresh_interval",
        ),
    ];
    for (json, field) in cases {
        assert_eq!(field_of(json), field, "config {json}");
    }
}

#[test]
fn error_text_names_field_and_value() {
    let e = parse(r#"{"vendors":[{"name":"a"}],"trip":{"failure_ratio":1.5}}"#).unwrap_err();
    assert_eq!(
        e.to_string(),
        "config field `trip.failure_ratio`: must be greater than 0 and at most 1, got 1.5"
    );
    let e = parse(r#"{"vendors":[{"name":"a"}],"window":{"size":"10s"}}"#).unwrap_err();
    assert!(e.to_string().contains("`window.size`: is not a known field"), "{e}");
    assert!(e.to_string().contains("length"), "{e}");
}

#[test]
fn vendor_adaptation_groups_and_units() {
    let env = |name: &str| (name == "ANTHROPIC_KEY").then(|| "sk-ant-secret".to_string());
    let c = Config::parse_with_env(
        br#"{
        "vendors": [
            {"name": "anthropic", "host": "api.anthropic.com", "api_key_env": "ANTHROPIC_KEY",
             "paths": {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"},
             "models": {"claude-opus": "claude-opus-4-1", "*": "claude-sonnet-4-5"}},
            {"name": "openai", "paths": {"openai": "/openai/v1/chat/completions"}},
            {"name": "xai"}
        ],
        "groups": [
            {"models": ["opus", "claude-opus"], "targets": [
                {"vendor": "anthropic", "model": "claude-opus-4-1", "context_window": 200000},
                {"vendor": "openai", "model": "gpt-4.1", "context_window": 1000000},
                {"vendor": "xai"}
            ]}
        ],
        "rescue": {"max_attempts": 2, "deadline": "30s", "max_body_bytes": 1024, "first_token_timeout": "5s"}
    }"#,
        &env,
    )
    .unwrap();
    let a = &c.vendors[VendorId(0)];
    assert_eq!(a.host.as_deref(), Some("api.anthropic.com"));
    assert_eq!(a.api_key.as_ref().map(Secret::expose), Some("sk-ant-secret"));
    assert_eq!(format!("{:?}", a.api_key), "Some([redacted])", "keys never show");
    assert_eq!(a.paths.for_format(Format::Anthropic), Some(Some("/v1/messages")));
    assert_eq!(c.vendors[VendorId(1)].paths.for_format(Format::Anthropic), None);
    assert_eq!(c.vendors[VendorId(2)].paths.for_format(Format::OpenAi), Some(None));
    // Units: the vendors' own, two from anthropic's map, the model slots of
    // the two that pass models through, one from the group.
    let units: Vec<(usize, Option<&str>, Option<u32>)> = c
        .units
        .values()
        .map(|u| (u.vendor.0, u.model.as_deref(), u.slot))
        .collect();
    let mut expected = vec![
        (0, None, None),
        (1, None, None),
        (2, None, None),
        (0, Some("claude-sonnet-4-5"), None),
        (0, Some("claude-opus-4-1"), None),
    ];
    for v in [1, 2] {
        expected.extend((0..DEFAULT_MODEL_UNITS).map(|k| (v, None, Some(k))));
    }
    expected.push((1, Some("gpt-4.1"), None));
    assert_eq!(units, expected);
    assert_eq!(c.model_slots.as_slice(), [None, Some(UnitId(5)), Some(UnitId(13))]);
    let g = &c.groups[0];
    assert_eq!(g.models, vec!["opus", "claude-opus"]);
    assert_eq!(g.targets.iter().map(|t| t.unit.0).collect::<Vec<_>>(), vec![4, 21, 2]);

    assert_eq!(g.targets[2].model, None);
    assert_eq!(c.rescue.first_token_ms, Some(5_000));
}

#[test]
fn adaptation_errors_name_their_field() {
    let none = |_: &str| None;
    let cases = [
        (
            r#"{"vendors":[{"name":"a","api_key_env":"NOPE"}]}"#,
            "vendors[0].api_key_env",
        ),
        (r#"{"vendors":[{"name":"a","host":"bad host"}]}"#, "vendors[0].host"),
        (r#"{"vendors":[{"name":"a","paths":{}}]}"#, "vendors[0].paths"),
        (
            r#"{"vendors":[{"name":"a","paths":{"openai":"v1/chat"}}]}"#,
            "vendors[0].paths.openai",
        ),
        (
            r#"{"vendors":[{"name":"a","paths":{"gemini":"/x"}}]}"#,
            "vendors[0].paths.gemini",
        ),
        (r#"{"vendors":[{"name":"a","models":{"x":""}}]}"#, "vendors[0].models.x"),
        (r#"{"vendors":[{"name":"a","models":[]}]}"#, "vendors[0].models"),
        (r#"{"vendors":[{"name":"a"}],"groups":{}}"#, "groups"),
        (
            r#"{"vendors":[{"name":"a"}],"groups":[{"targets":[{"vendor":"a"}]}]}"#,
            "groups[0].models",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"groups":[{"models":["m"]}]}"#,
            "groups[0].targets",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"groups":[{"models":["m"],"targets":[{"vendor":"b"}]}]}"#,
            "groups[0].targets[0].vendor",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"groups":[{"models":["m"],"targets":[{"vendor":"a","context_window":0}]}]}"#,
            "groups[0].targets[0].context_window",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"groups":[{"models":["m"],"targets":[{"vendor":"a","weight":2}]}]}"#,
            "groups[0].targets[0].weight",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"groups":[{"models":["m"],"targets":[{"vendor":"a"}]},{"models":["m"],"targets":[{"vendor":"a"}]}]}"#,
            "groups[1].models",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"rescue":{"max_attempts":0}}"#,
            "rescue.max_attempts",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"rescue":{"deadline":"0s"}}"#,
            "rescue.deadline",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"rescue":{"first_token_timeout":"soon"}}"#,
            "rescue.first_token_timeout",
        ),
        (
            r#"{"vendors":[{"name":"a"}],"rescue":{"max_answer_bytes":10}}"#,
            "rescue.max_answer_bytes",
        ),
        (r#"{"vendors":[{"name":"a"}],"rescue":{"retries":1}}"#, "rescue.retries"),
    ];
    for (json, field) in cases {
        let e = Config::parse_with_env(json.as_bytes(), &none).expect_err(json);
        assert_eq!(e.field, field, "config {json}: {e}");
    }
    let e = Config::parse_with_env(br#"{"vendors":[{"name":"a","api_key_env":"K"}]}"#, &none).unwrap_err();
    assert!(e.problem.contains("environment variable K"), "{e}");
}

#[test]
fn a_zero_count_is_out_of_range_like_any_other() {
    let cases = [
        (
            r#""rescue":{"max_attempts":0}"#,
            "must be a whole number from 1 to 10, got 0",
        ),
        (
            r#""window":{"buckets":0}"#,
            "must be a whole number from 1 to 120, got 0",
        ),
        (
            r#""trip":{"min_requests":0}"#,
            "must be a whole number from 1 to 1000000, got 0",
        ),
        (
            r#""recovery":{"successes":0}"#,
            "must be a whole number from 1 to 1000, got 0",
        ),
        (
            r#""ejection":{"decay":"0s"}"#,
            r#""0s" (0 ms) must be from 100 ms to 86400000 ms"#,
        ),
    ];
    for (section, problem) in cases {
        let e = parse(&format!(r#"{{"vendors":[{{"name":"a"}}],{section}}}"#)).unwrap_err();
        assert_eq!(e.problem, problem, "{section}");
    }
    let e = parse(r#"{"vendors":[{"name":"a","weight":0}]}"#).unwrap_err();
    assert_eq!(e.problem, "must be a whole number from 1 to 10000, got 0");
}

#[test]
fn slowness_limits_can_be_turned_off() {
    let c = parse(r#"{"vendors":[{"name":"a"}],"slow":{"first_byte":"off","stall":null}}"#).unwrap();
    assert_eq!((c.slow.first_byte_ms, c.slow.stall_ms), (None, None));
    assert_eq!(c.trip.slow_ratio, None, "no limit, no slow trips");
    let c = parse(r#"{"vendors":[{"name":"a"}],"slow":{"first_byte":"2s","stall":"off","ratio":0.5}}"#).unwrap();
    assert_eq!((c.slow.first_byte_ms, c.slow.stall_ms), (Some(2_000), None));
    assert_eq!(c.trip.slow_ratio, Some(0.5));
}

#[test]
fn successes_default_follows_probes() {
    let c = parse(r#"{"vendors":[{"name":"a"}],"recovery":{"probes":1}}"#).unwrap();
    assert_eq!(c.recovery.successes, n32(1));
}

/// Every field of the configuration reference (the README's table), with
/// `[]` standing for any list index.
const REFERENCE: &[&str] = &[
    "role",
    "cluster_header",
    "vendor_header",
    "vendors",
    "vendors[].name",
    "vendors[].cluster",
    "vendors[].priority",
    "vendors[].weight",
    "vendors[].host",
    "vendors[].api_key_env",
    "vendors[].paths",
    "vendors[].models",
    "vendors[].context_window",
    "vendors[].model_units",
    "vendors[].prefill",
    "vendors[].buffered",
    "vendors[].disabled",
    "groups",
    "rescue.max_attempts",
    "rescue.deadline",
    "rescue.max_body_bytes",
    "rescue.first_token_timeout",
    "rescue.max_answer_bytes",
    "rescue.relay",
    "rescue.retry_backoff",
    "rescue.rate_limit_wait",
    "rescue.buffered_timeout",
    "window.length",
    "window.buckets",
    "trip.min_requests",
    "trip.failure_ratio",
    "trip.consecutive_failures",
    "ejection.base",
    "ejection.max",
    "ejection.decay",
    "recovery.probes",
    "recovery.successes",
    "recovery.probe_timeout",
    "failure_statuses",
    "slow.first_byte",
    "slow.stall",
    "slow.ratio",
    "rate_limit.default_cooldown",
    "rate_limit.max_cooldown",
    "all_down",
    "refresh_interval",
    "admin.path",
    "admin.token_env",
];

/// The fields inside the reference's compound values, and the sections.
const INNER: &[&str] = &[
    "vendors[]",
    "vendors[].paths.openai",
    "vendors[].paths.anthropic",
    "vendors[].models.*.model",
    "vendors[].models.*.context_window",
    "vendors[].models.*.disabled",
    "groups[]",
    "groups[].models",
    "groups[].targets",
    "groups[].targets[]",
    "groups[].targets[].vendor",
    "groups[].targets[].model",
    "groups[].targets[].context_window",
    "groups[].buffered",
    "rescue",
    "window",
    "trip",
    "ejection",
    "recovery",
    "slow",
    "rate_limit",
    "admin",
];

#[test]
fn the_reference_list_is_the_readme_table() {
    let readme = include_str!("../../../README.md");
    let table = readme.split("## Configuration reference").nth(1).unwrap();
    let table = table.split("\n## ").next().unwrap();
    let mut documented: Vec<&str> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    documented.sort_unstable();
    let mut listed = REFERENCE.to_vec();
    listed.sort_unstable();
    assert_eq!(documented, listed);
}

/// A field path with every list index written `[]`.
fn normalized(path: &str) -> String {
    let out = indices_normalized(path);
    // A model map's keys are the client's model names: any key is `*`.
    match out.strip_prefix("vendors[].models.") {
        Some(rest) if !rest.is_empty() => {
            let inner = rest.split_once('.').map(|(_, field)| field);
            match inner {
                Some(field) => format!("vendors[].models.*.{field}"),
                None => "vendors[].models.*".to_string(),
            }
        }
        _ => out,
    }
}

fn indices_normalized(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[]");
            }
            ']' if in_index => in_index = false,
            _ if in_index => {}
            c => out.push(c),
        }
    }
    out
}

/// Every path in `value`, written as the parser writes field paths.
fn paths_in(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                out.push(path.clone());
                paths_in(child, &path, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let path = format!("{prefix}[{i}]");
                out.push(path.clone());
                paths_in(child, &path, out);
            }
        }
        _ => {}
    }
}

/// Whether a refusal's `field` is real: `(root)` for a document that is no
/// JSON object; otherwise a path the document holds, or a reference field
/// the document lacks inside an object it holds (a required field, or the
/// one a cross-field rule blames).
fn names_a_real_field(field: &str, doc: Option<&Value>) -> bool {
    let Some(doc @ Value::Object(_)) = doc else {
        return field == "(root)";
    };
    let mut paths = Vec::new();
    paths_in(doc, "", &mut paths);
    if paths.iter().any(|p| p == field) {
        return true;
    }
    let n = normalized(field);
    let known = REFERENCE.contains(&n.as_str()) || INNER.contains(&n.as_str());
    let parent_held = match field.rsplit_once('.') {
        Some((parent, _)) => paths.iter().any(|p| p == parent),
        None => true,
    };
    known && parent_held
}

/// What every parsed configuration satisfies, and what it must echo of
/// the document it came from.
fn assert_invariants(c: &Config, doc: &Value) {
    let n = c.vendors.len();
    assert!((1..=MAX_VENDORS).contains(&n));
    let names: Vec<&str> = doc["vendors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(c.vendors.values().map(|v| v.name.as_str()).collect::<Vec<_>>(), names);
    for v in c.vendors.values() {
        assert!(v.priority <= 1_000 && v.weight.get() <= 10_000, "{v:?}");
        assert!(!v.cluster.is_empty() && v.cluster.bytes().all(|b| b.is_ascii_graphic()));
        assert!(!matches!(&v.paths, Paths::Only(list) if list.is_empty()));
        assert!(!matches!(&v.models, Some(map) if map.is_empty()));
    }
    // By priority, equal priorities in config order.
    let mut order = c.by_preference.clone();
    order.sort_unstable();
    assert_eq!(order, (0..n).map(VendorId).collect::<Vec<_>>());
    for w in c.by_preference.windows(2) {
        let (a, b) = (c.vendors[w[0]].priority, c.vendors[w[1]].priority);
        assert!(a < b || (a == b && w[0] < w[1]), "{:?}", c.by_preference);
    }
    // Units: every vendor's pass-through unit first, then distinct model units.
    let units = c.units.as_slice();
    for (i, u) in units.iter().enumerate() {
        if i < n {
            assert_eq!(
                u,
                &Unit {
                    vendor: VendorId(i),
                    model: None,
                    slot: None,
                }
            );
        } else {
            assert!(u.vendor.0 < n && (u.model.is_some() != u.slot.is_some()), "{u:?}");
        }
        assert!(!units[..i].contains(u), "unit {u:?} listed twice");
    }
    for (i, v) in c.vendors.iter() {
        for m in v.models.iter().flatten() {
            let unit = Unit {
                vendor: i,
                model: Some(m.model.clone()),
                slot: None,
            };
            assert!(units.contains(&unit), "no unit for {unit:?}");
        }
    }
    // Groups: as many as listed; targets name existing vendors and units.
    assert_eq!(
        c.groups.len(),
        doc.get("groups").and_then(Value::as_array).map_or(0, Vec::len)
    );
    for (i, g) in c.groups.iter().enumerate() {
        assert!(!g.models.is_empty() && !g.targets.is_empty());
        for m in &g.models {
            assert!(c.groups[..i].iter().all(|e| !e.models.contains(m)), "{m} in two groups");
        }
        for t in &g.targets {
            assert!(t.vendor.0 < n);
            let unit = Unit {
                vendor: t.vendor,
                model: t.model.clone(),
                slot: None,
            };
            assert_eq!(c.units[t.unit], unit);
            assert_ne!(t.context_window, Some(0));
        }
    }
    // Tuning.
    let w = c.window;
    assert!(w.bucket_ms.get() >= 10 && w.buckets.get() <= MAX_BUCKETS, "{w:?}");
    assert!((100..=3_600_000).contains(&w.length_ms()), "{w:?}");
    assert!(c.trip.failure_ratio > 0.0 && c.trip.failure_ratio <= 1.0);
    assert!(c.trip.min_requests.get() <= 1_000_000 && c.trip.consecutive_failures <= 1_000_000);
    let slow_limited = c.slow.first_byte_ms.is_some() || c.slow.stall_ms.is_some();
    assert_eq!(c.trip.slow_ratio, slow_limited.then_some(c.slow.ratio));
    assert!(c.slow.ratio > 0.0 && c.slow.ratio <= 1.0);
    assert!(
        c.ejection.base_ms >= 100 && c.ejection.max_ms >= c.ejection.base_ms,
        "{:?}",
        c.ejection
    );
    assert!(c.ejection.decay_ms.get() >= 100);
    assert!(c.recovery.successes <= c.recovery.probes && c.recovery.probes.get() <= 1_000);
    assert!(c.rate_limit.max_cooldown_ms >= c.rate_limit.default_cooldown_ms);
    assert!(c.rescue.max_attempts.get() <= 10 && c.rescue.deadline_ms >= 100);
    assert!(c.rescue.max_body_bytes <= 64 * 1024 * 1024);
    assert!((100..=60_000).contains(&c.refresh_ms));
    assert!(!c.cluster_header.is_empty());
    assert_ne!(c.vendor_header.as_deref(), Some(c.cluster_header.as_str()));
}

/// xorshift64: deterministic, so a failing round can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

/// Fields a document may get wrong on purpose: the reference's, and those
/// inside its compound values.
const FAULTS: &[&str] = &[
    "vendors[].paths.openai",
    "vendors[].paths.anthropic",
    "groups[].models",
    "groups[].targets",
    "groups[].targets[].vendor",
    "groups[].targets[].model",
    "groups[].targets[].context_window",
    "vendors[].models.*.model",
    "vendors[].models.*.context_window",
];

/// A field: its key, values the reference allows, values it does not.
type Field<'a> = (&'a str, &'a [&'a str], &'a [&'a str]);

fn values(texts: &[&str]) -> Vec<Value> {
    texts.iter().map(|t| serde_json::from_str(t).unwrap()).collect()
}

/// Builds documents along the configuration reference: each field present
/// or not, with a value the reference allows, except for the one field
/// given a bad value on purpose (`fault`) and, at odds of 1 in `bad_odds`
/// (0: never), any other.
struct Gen {
    rng: Rng,
    fault: Option<&'static str>,
    bad_odds: u64,
}

impl Gen {
    fn is_fault(&self, path: &str) -> bool {
        self.fault == Some(path)
    }

    /// Whether something at `path` (a reference path) goes wrong this time.
    fn goes_bad(&mut self, path: &str, odds_factor: u64) -> bool {
        self.is_fault(path) || (self.bad_odds > 0 && self.rng.one_in(self.bad_odds * odds_factor))
    }

    /// Whether to write `path`: always when the fault lies at or under it,
    /// otherwise with odds 1 in `odds`.
    fn writes(&mut self, path: &str, odds: u64) -> bool {
        let under = self.fault.is_some_and(|f| {
            f.strip_prefix(path)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        });
        under || self.rng.one_in(odds)
    }

    /// One of `good`, or when `path` goes bad one of `bad` or junk.
    fn value(&mut self, path: &str, good: &[&str], bad: &[&str]) -> Value {
        if self.goes_bad(path, 1) {
            return self.bad(bad);
        }
        self.rng.pick(&values(good))
    }

    /// Mostly one of `bad`, otherwise junk of any type.
    fn bad(&mut self, bad: &[&str]) -> Value {
        let junk = ["null", "true", "-1", "1.5", "\"x\"", "[]", "{}", "18446744073709551615"];
        if !bad.is_empty() && !self.rng.one_in(3) {
            return self.rng.pick(&values(bad));
        }
        self.rng.pick(&values(&junk))
    }

    fn maybe_unknown(&mut self, map: &mut Map<String, Value>) {
        if self.bad_odds > 0 && self.rng.one_in(self.bad_odds * 3) {
            map.insert("bogus".into(), Value::from(1));
        }
    }

    /// A section holding each of `fields` with odds 1 in 2; now and then
    /// no object at all.
    fn section(&mut self, path: &str, fields: &[Field]) -> Value {
        if self.bad_odds > 0 && self.rng.one_in(self.bad_odds * 2) {
            return self.bad(&["5", "\"x\"", "[]", "null"]);
        }
        let mut map = Map::new();
        for (key, good, bad) in fields {
            let field = format!("{path}.{key}");
            if self.writes(&field, 2) {
                map.insert(key.to_string(), self.value(&field, good, bad));
            }
        }
        self.maybe_unknown(&mut map);
        Value::Object(map)
    }

    fn vendor(&mut self, i: usize) -> Value {
        let mut v = Map::new();
        let dropped = self.goes_bad("vendors[].name", 3) && self.rng.one_in(3);
        if !dropped {
            let name = format!("\"v{i}\"");
            let long = format!("\"{}\"", "a".repeat(65));
            let bad = ["\"\"", "\"Open AI\"", "\"v0\"", &long, "7"];
            v.insert("name".into(), self.value("vendors[].name", &[&name], &bad));
        }
        let long = format!("\"{}\"", "c".repeat(256));
        let fields: [Field; 10] = [
            (
                "cluster",
                &["\"c1\"", "\"outbound|443||api.openai.com\"", "\"openai_api\""],
                &["\"has space\"", "\"\"", &long],
            ),
            ("priority", &["0", "1", "2", "1000"], &["1001", "\"1\""]),
            ("weight", &["1", "2", "3", "10000"], &["0", "10001", "\"2\""]),
            (
                "host",
                &["\"api.openai.com\"", "\"localhost:8080\"", "\"[::1]:443\""],
                &["\"bad host\"", "\"\"", "\"a/b\""],
            ),
            (
                "api_key_env",
                &["\"KEY_A\""],
                &["\"KEY_EMPTY\"", "\"KEY_BAD\"", "\"NOPE\""],
            ),
            ("context_window", &["1", "8000", "200000"], &["0", "-5", "\"big\""]),
            ("model_units", &["0", "1", "8", "64"], &["65", "-1", "\"8\""]),
            (
                "prefill",
                &[
                    "\"auto\"",
                    "\"none\"",
                    "\"assistant\"",
                    "\"assistant_prefix\"",
                    "\"continue_final_message\"",
                ],
                &["\"yes\"", "true"],
            ),
            ("buffered", &["true", "false"], &["1", "\"yes\""]),
            ("disabled", &["false"], &["1", "\"yes\""]),
        ];
        for (key, good, bad) in fields {
            let field = format!("vendors[].{key}");
            if self.writes(&field, 3) {
                v.insert(key.into(), self.value(&field, good, bad));
            }
        }
        if self.writes("vendors[].paths", 3) {
            let paths = if self.goes_bad("vendors[].paths", 2) {
                self.bad(&["{}", "[]", "\"/v1\""])
            } else {
                let mut map = Map::new();
                let formats: [Field; 2] = [
                    (
                        "openai",
                        &["\"/v1/chat/completions\"", "\"/openai/v1/chat/completions\""],
                        &["\"v1/chat\"", "\"/a b\""],
                    ),
                    ("anthropic", &["\"/v1/messages\""], &["\"messages\""]),
                ];
                for (key, good, bad) in formats {
                    let field = format!("vendors[].paths.{key}");
                    if self.writes(&field, 2) || map.is_empty() {
                        map.insert(key.into(), self.value(&field, good, bad));
                    }
                }
                self.maybe_unknown(&mut map);
                Value::Object(map)
            };
            v.insert("paths".into(), paths);
        }
        if self.writes("vendors[].models", 3) {
            let models = if self.goes_bad("vendors[].models", 1) {
                self.bad(&["{}", "[]", "\"m\""])
            } else {
                let mut map = Map::new();
                for _ in 0..1 + self.rng.below(3) {
                    let key = if self.goes_bad("vendors[].models.*", 2) {
                        ""
                    } else {
                        self.rng.pick(&["gpt-4o", "claude", "*", "m1", "m2"])
                    };
                    let good = ["\"gpt-4.1\"", "\"claude-sonnet-4-5\"", "\"m1\""];
                    let to = if self.writes("vendors[].models.*.model", 3) {
                        // The long form: the vendor's model and its window.
                        let mut entry = Map::new();
                        if !(self.goes_bad("vendors[].models.*.model", 3) && self.rng.one_in(2)) {
                            entry.insert(
                                "model".into(),
                                self.value("vendors[].models.*.model", &good, &["\"\"", "5"]),
                            );
                        }
                        if self.writes("vendors[].models.*.context_window", 2) {
                            let window = self.value(
                                "vendors[].models.*.context_window",
                                &["8000", "200000"],
                                &["0", "\"x\""],
                            );
                            entry.insert("context_window".into(), window);
                        }
                        self.maybe_unknown(&mut entry);
                        Value::Object(entry)
                    } else {
                        self.value("vendors[].models.*", &good, &["\"\"", "5"])
                    };
                    map.insert(key.into(), to);
                }
                Value::Object(map)
            };
            v.insert("models".into(), models);
        }
        self.maybe_unknown(&mut v);
        Value::Object(v)
    }

    fn group(&mut self, vendors: &[String]) -> Value {
        let mut g = Map::new();
        let models = if self.goes_bad("groups[].models", 3) {
            (!self.rng.one_in(3)).then(|| self.bad(&["\"\"", "[]", "3"]))
        } else if self.rng.one_in(10) {
            Some(self.value("groups[].models[]", &["\"m1\"", "\"opus\""], &["\"\""]))
        } else {
            let good = [
                "\"m1\"",
                "\"m2\"",
                "\"opus\"",
                "\"gpt\"",
                "\"claude\"",
                "\"gpt-4*\"",
                "\"*\"",
            ];
            let list = (0..1 + self.rng.below(3))
                .map(|_| self.value("groups[].models[]", &good, &["\"\"", "3"]))
                .collect();
            Some(Value::Array(list))
        };
        if let Some(m) = models {
            g.insert("models".into(), m);
        }
        let targets = if self.goes_bad("groups[].targets", 3) {
            (!self.rng.one_in(3)).then(|| self.bad(&["[]", "{}"]))
        } else {
            let mut targets = Vec::new();
            for _ in 0..1 + self.rng.below(3) {
                let mut t = Map::new();
                let dropped = self.goes_bad("groups[].targets[].vendor", 3) && self.rng.one_in(3);
                if !dropped {
                    let name = format!("{:?}", self.rng.pick(vendors));
                    let vendor = self.value("groups[].targets[].vendor", &[&name], &["\"nope\"", "1"]);
                    t.insert("vendor".into(), vendor);
                }
                if self.writes("groups[].targets[].model", 2) {
                    let good = ["\"gpt-4.1\"", "\"claude-opus-4-1\"", "\"m1\""];
                    let model = self.value("groups[].targets[].model", &good, &["\"\"", "3"]);
                    t.insert("model".into(), model);
                }
                if self.writes("groups[].targets[].context_window", 3) {
                    let good = ["1", "8000", "200000", "1000000"];
                    let window = self.value("groups[].targets[].context_window", &good, &["0", "-1", "\"big\""]);
                    t.insert("context_window".into(), window);
                }
                self.maybe_unknown(&mut t);
                targets.push(Value::Object(t));
            }
            Some(Value::Array(targets))
        };
        if let Some(t) = targets {
            g.insert("targets".into(), t);
        }
        if self.writes("groups[].buffered", 3) {
            let buffered = self.value("groups[].buffered", &["true", "false"], &["1", "null"]);
            g.insert("buffered".into(), buffered);
        }
        self.maybe_unknown(&mut g);
        Value::Object(g)
    }

    fn document(&mut self) -> Value {
        let mut doc = Map::new();
        let headers: [Field; 2] = [
            (
                "cluster_header",
                &["\"x-route\"", "\"x-llm-failover-cluster\""],
                &["\"\"", "\"X-Upper\"", "\"a b\"", "\"x-llm-failover-vendor\""],
            ),
            (
                "vendor_header",
                &["\"\"", "\"x-served-by\"", "\"x-llm-failover-vendor\""],
                &["\"Bad\"", "\"x-llm-failover-cluster\""],
            ),
        ];
        for (key, good, bad) in headers {
            if self.writes(key, 4) {
                doc.insert(key.into(), self.value(key, good, bad));
            }
        }
        let count = 1 + self.rng.below(4);
        let names: Vec<String> = (0..count).map(|i| format!("v{i}")).collect();
        if self.goes_bad("vendors", 5) {
            if !self.rng.one_in(3) {
                doc.insert("vendors".into(), self.bad(&["[]", "{}", "\"v\""]));
            }
        } else {
            let vendors = (0..count).map(|i| self.vendor(i)).collect();
            doc.insert("vendors".into(), Value::Array(vendors));
        }
        if self.writes("groups", 3) {
            let groups = if self.goes_bad("groups", 2) {
                self.bad(&["{}", "\"g\""])
            } else {
                let under = self.fault.is_some_and(|f| f.starts_with("groups[]"));
                let n = self.rng.below(4).max(usize::from(under));
                Value::Array((0..n).map(|_| self.group(&names)).collect())
            };
            doc.insert("groups".into(), groups);
        }
        let duration = [
            "\"100ms\"",
            "\"1s\"",
            "\"10s\"",
            "\"30s\"",
            "\"1m\"",
            "\"5m\"",
            "\"1h\"",
        ];
        let off = ["\"off\"", "null", "\"10ms\"", "\"2s\"", "\"60s\""];
        let bad_duration = ["\"soon\"", "\"10\"", "\"0s\"", "\"1ms\"", "\"25h\"", "5"];
        let sections: [(&str, &[Field]); 7] = [
            (
                "rescue",
                &[
                    ("max_attempts", &["1", "2", "3", "10"], &["0", "11", "\"3\""]),
                    ("deadline", &duration, &bad_duration),
                    (
                        "max_body_bytes",
                        &["0", "1024", "524288", "67108864"],
                        &["67108865", "\"1k\""],
                    ),
                    ("first_token_timeout", &off, &bad_duration),
                    (
                        "max_answer_bytes",
                        &["1024", "2097152", "67108864"],
                        &["1023", "67108865", "\"2m\""],
                    ),
                    ("relay", &["true", "false"], &["1", "\"yes\""]),
                    (
                        "retry_backoff",
                        &["\"off\"", "null", "\"10ms\"", "\"100ms\"", "\"10s\""],
                        &["\"11s\"", "\"5ms\"", "\"soon\""],
                    ),
                    ("rate_limit_wait", &off, &["\"soon\"", "\"2m\"", "5"]),
                    ("buffered_timeout", &duration, &bad_duration),
                ],
            ),
            (
                "window",
                &[
                    (
                        "length",
                        &["\"100ms\"", "\"1s\"", "\"10s\"", "\"30s\"", "\"1h\""],
                        &bad_duration,
                    ),
                    ("buckets", &["1", "2", "10", "30", "120"], &["0", "121", "3"]),
                ],
            ),
            (
                "trip",
                &[
                    ("min_requests", &["1", "5", "10", "1000000"], &["0", "1000001"]),
                    ("failure_ratio", &["0.25", "0.5", "1"], &["0", "1.5", "\"half\""]),
                    ("consecutive_failures", &["0", "1", "5", "1000000"], &["1000001"]),
                ],
            ),
            (
                "ejection",
                &[
                    ("base", &["\"100ms\"", "\"2s\"", "\"30s\"", "\"1m\""], &bad_duration),
                    (
                        "max",
                        &["\"1m\"", "\"5m\"", "\"24h\""],
                        &["\"100ms\"", "\"25h\"", "\"soon\""],
                    ),
                    ("decay", &duration, &bad_duration),
                ],
            ),
            (
                "recovery",
                &[
                    ("probes", &["1", "2", "3", "5", "1000"], &["0", "1001"]),
                    ("successes", &["1", "2", "3", "5"], &["0", "1001"]),
                    ("probe_timeout", &duration, &bad_duration),
                ],
            ),
            (
                "slow",
                &[
                    ("first_byte", &off, &bad_duration),
                    ("stall", &off, &bad_duration),
                    ("ratio", &["0.1", "0.5", "1"], &["0", "2"]),
                ],
            ),
            (
                "rate_limit",
                &[
                    (
                        "default_cooldown",
                        &["\"0s\"", "\"5s\"", "\"1m\""],
                        &["\"2h\"", "\"x\""],
                    ),
                    ("max_cooldown", &["\"1m\"", "\"5m\"", "\"24h\""], &["\"0s\"", "\"25h\""]),
                ],
            ),
        ];
        for (key, fields) in sections {
            if self.writes(key, 3) {
                let section = self.section(key, fields);
                doc.insert(key.into(), section);
            }
        }
        if self.writes("failure_statuses", 4) {
            let statuses = if self.goes_bad("failure_statuses", 2) {
                self.bad(&["503", "\"500\"", "{}"])
            } else {
                let good = ["100", "401", "429", "500", "503", "529", "599"];
                let list = (0..self.rng.below(5))
                    .map(|_| self.value("failure_statuses[]", &good, &["99", "600"]))
                    .collect();
                Value::Array(list)
            };
            doc.insert("failure_statuses".into(), statuses);
        }
        let tail: [Field; 3] = [
            ("role", &["\"downstream\""], &["\"upstream\"", "\"sideways\"", "1"]),
            ("all_down", &["\"soonest\"", "\"reject\""], &["\"panic\""]),
            (
                "refresh_interval",
                &["\"100ms\"", "\"1s\"", "\"1m\""],
                &["\"1ms\"", "\"2m\""],
            ),
        ];
        for (key, good, bad) in tail {
            if self.writes(key, 4) {
                doc.insert(key.into(), self.value(key, good, bad));
            }
        }
        if self.writes("admin", 5) {
            let mut a = Map::new();
            let path = self.value(
                "admin.path",
                &["\"/llm-failover\"", "\"/ops/lf_1\""],
                &["\"llm\"", "\"/a/\"", "\"/a b\"", "3"],
            );
            a.insert("path".into(), path);
            let token = self.value(
                "admin.token_env",
                &["\"TOKEN_A\""],
                &["\"TOKEN_SHORT\"", "\"NOPE\"", "7"],
            );
            a.insert("token_env".into(), token);
            doc.insert("admin".into(), Value::Object(a));
        }
        self.maybe_unknown(&mut doc);
        Value::Object(doc)
    }
}

/// Any JSON of the configuration's field names and odd scalars, nested at
/// random: reaches the shapes the reference-shaped documents do not.
fn raw_document(rng: &mut Rng) -> Vec<u8> {
    let keys: Vec<&str> = REFERENCE
        .iter()
        .chain(INNER)
        .map(|f| f.rsplit(['.', ']']).next().unwrap_or(f))
        .chain(["openai", "anthropic", "bogus"])
        .collect();
    let scalars = [
        "0",
        "1",
        "-1",
        "0.5",
        "1.5",
        "1e400",
        "18446744073709551616",
        "true",
        "null",
        "\"\"",
        "\"10s\"",
        "\"250ms\"",
        "\"off\"",
        "\"reject\"",
        "\"soonest\"",
        "\"a\"",
        "\"x-h\"",
        "\"/v1/messages\"",
        "\"\\u0000\"",
        "[]",
        "{}",
        "[503]",
        "[600]",
    ];
    fn value(depth: u32, rng: &mut Rng, keys: &[&str], scalars: &[&str]) -> String {
        match rng.next() % 4 {
            0 if depth < 4 => {
                let fields: Vec<String> = (0..rng.below(5))
                    .map(|_| format!("\"{}\":{}", rng.pick(keys), value(depth + 1, rng, keys, scalars)))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }
            1 if depth < 4 => {
                let items: Vec<String> = (0..rng.below(4))
                    .map(|_| value(depth + 1, rng, keys, scalars))
                    .collect();
                format!("[{}]", items.join(","))
            }
            _ => rng.pick(scalars).to_string(),
        }
    }
    let doc = value(0, rng, &keys, &scalars);
    if rng.one_in(3) {
        // Inside a document that has a vendor, so the parser goes further.
        format!(r#"{{"vendors":[{{"name":"a"}}],{}"#, doc.get(1..).unwrap_or_default()).into_bytes()
    } else {
        doc.into_bytes()
    }
}

/// Random configurations: documents along the configuration reference
/// (every field, good and bad values), raw nestings of its field names
/// with odd scalars, and random byte damage. Each is parsed into a config
/// that keeps its invariants, or refused naming a real field; never a
/// panic. Every reference field is seen both in parsed documents and in
/// refusals. Runs briefly here; `make fuzz` runs it longer.
#[test]
fn property_any_input_is_parsed_or_refused_with_a_field() {
    const DEFAULT_ROUNDS: u64 = 3_000;
    let rounds: u64 = std::env::var("LLMF_FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    let env = |name: &str| match name {
        "KEY_A" => Some("sk-test".to_string()),
        "KEY_EMPTY" => Some(String::new()),
        "KEY_BAD" => Some("has space".to_string()),
        "TOKEN_A" => Some("0123456789abcdef-token".to_string()),
        "TOKEN_SHORT" => Some("abc".to_string()),
        _ => None,
    };
    let mut gen = Gen {
        rng: Rng(0x2545_f491_4f6c_dd1d),
        fault: None,
        bad_odds: 0,
    };
    let faults: Vec<&'static str> = REFERENCE.iter().chain(FAULTS).copied().collect();
    let mut accepted: Vec<String> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    let mut parsed = 0u64;
    for round in 0..rounds {
        // A quarter each: raw nestings; good documents; documents with one
        // field wrong; documents where anything may go wrong.
        let mut doc = match round % 4 {
            0 => raw_document(&mut gen.rng),
            r => {
                gen.fault = (r == 2).then(|| gen.rng.pick(&faults));
                gen.bad_odds = if r == 3 { 8 } else { 0 };
                serde_json::to_vec(&gen.document()).unwrap()
            }
        };
        if gen.rng.one_in(10) && !doc.is_empty() {
            let at = gen.rng.below(doc.len());
            doc[at] = gen.rng.next() as u8;
        }
        let text = String::from_utf8_lossy(&doc).into_owned();
        let value: Option<Value> = serde_json::from_slice(&doc).ok();
        match Config::parse_with_env(&doc, &env) {
            Ok(c) => {
                parsed += 1;
                let value = value.expect("a parsed config is JSON");
                assert_invariants(&c, &value);
                let mut paths = Vec::new();
                paths_in(&value, "", &mut paths);
                accepted.extend(paths.iter().map(|p| normalized(p)));
                accepted.sort_unstable();
                accepted.dedup();
            }
            Err(e) => {
                assert!(
                    names_a_real_field(&e.field, value.as_ref()),
                    "refusal names no field of the document: {e} in {text}"
                );
                assert!(!e.problem.is_empty(), "{text}");
                refused.push(normalized(&e.field));
                refused.sort_unstable();
                refused.dedup();
            }
        }
    }
    if rounds >= DEFAULT_ROUNDS {
        assert!(parsed >= rounds / 10, "only {parsed} of {rounds} documents parsed");
        for field in REFERENCE {
            assert!(accepted.iter().any(|f| f == field), "no parsed document holds {field}");
        }
        for field in &faults {
            assert!(refused.iter().any(|f| f == field), "no refusal names {field}");
        }
    }
}

#[test]
fn too_many_vendors_are_refused() {
    let vendors: Vec<String> = (0..=MAX_VENDORS).map(|i| format!(r#"{{"name":"v{i}"}}"#)).collect();
    let json = format!(r#"{{"vendors":[{}]}}"#, vendors.join(","));
    assert_eq!(field_of(&json), "vendors");
}

#[test]
fn formats_by_path_whatever_the_case_trailing_slash_or_query() {
    for (path, format) in [
        (&b"/v1/chat/completions"[..], Some(Format::OpenAi)),
        (b"/V1/CHAT/COMPLETIONS", Some(Format::OpenAi)),
        (b"/v1/chat/completions/", Some(Format::OpenAi)),
        (
            b"/openai/deployments/x/chat/completions?api-version=2024-01-01",
            Some(Format::OpenAi),
        ),
        (b"/v1/messages//", Some(Format::Anthropic)),
        (b"/v1/Messages?beta=true", Some(Format::Anthropic)),
        (b"/v1/responses", None),
        (b"/", None),
        (b"", None),
        (b"/messages-archive", None),
    ] {
        assert_eq!(Format::of_path(path), format, "{}", String::from_utf8_lossy(path));
    }
}

#[test]
fn an_upstream_filter_takes_its_role_and_failure_statuses_only() {
    assert_eq!(Role::of(br#"{"vendors":[{"name":"a"}]}"#), Ok(Role::Downstream));
    assert_eq!(
        Role::of(br#"{"role":"downstream","vendors":[{"name":"a"}]}"#),
        Ok(Role::Downstream)
    );
    assert_eq!(Role::of(br#"{"role":"upstream"}"#), Ok(Role::Upstream));
    assert_eq!(
        Role::upstream_statuses(br#"{"role":"upstream","failure_statuses":[500]}"#)
            .unwrap()
            .to_vec(),
        vec![500]
    );
    let refused = |json: &str| Role::of(json.as_bytes()).unwrap_err().field;
    assert_eq!(refused(r#"{"role":"upstream","vendors":[]}"#), "vendors");
    assert_eq!(refused(r#"{"role":"sideways"}"#), "role");
    assert_eq!(refused(r#"{"role":1}"#), "role");
    assert_eq!(
        Role::upstream_statuses(br#"{"role":"upstream","failure_statuses":[99]}"#)
            .unwrap_err()
            .field,
        "failure_statuses[0]"
    );
    // The downstream parser never takes an upstream filter's document.
    assert_eq!(parse(r#"{"role":"upstream"}"#).unwrap_err().field, "role");
}
