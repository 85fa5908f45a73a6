//! Tests of the whole configuration: defaults, every field, every refusal, and random documents.

use super::*;
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
        c.vendors,
        vec![Vendor {
            name: "anthropic".into(),
            cluster: "anthropic".into(),
            priority: 0,
            weight: n32(1),
            host: None,
            api_key: None,
            paths: Paths::Unchanged,
            models: None,
        }]
    );
    assert_eq!(c.units, vec![Unit { vendor: 0, model: None }]);
    assert!(c.groups.is_empty());
    assert_eq!(
        c.rescue,
        Rescue {
            max_attempts: n32(3),
            deadline_ms: 120_000,
            max_body_bytes: 512 * 1024,
            first_token_ms: None
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
    assert_eq!(c.trip.consecutive_failures, 5);
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
    assert_eq!(c.by_preference, vec![1, 0, 2]);
    assert_eq!(c.vendors[1].cluster, "outbound|443||api.anthropic.com");
    assert_eq!(c.vendors[0].weight, n32(3));
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
    let a = &c.vendors[0];
    assert_eq!(a.host.as_deref(), Some("api.anthropic.com"));
    assert_eq!(a.api_key.as_ref().map(Secret::expose), Some("sk-ant-secret"));
    assert_eq!(format!("{:?}", a.api_key), "Some([redacted])", "keys never show");
    assert_eq!(a.paths.for_format(Format::Anthropic), Some(Some("/v1/messages")));
    assert_eq!(c.vendors[1].paths.for_format(Format::Anthropic), None);
    assert_eq!(c.vendors[2].paths.for_format(Format::OpenAi), Some(None));
    // Units: three pass-through, two from anthropic's map, one from the group.
    let units: Vec<(usize, Option<&str>)> = c.units.iter().map(|u| (u.vendor, u.model.as_deref())).collect();
    assert_eq!(
        units,
        vec![
            (0, None),
            (1, None),
            (2, None),
            (0, Some("claude-sonnet-4-5")),
            (0, Some("claude-opus-4-1")),
            (1, Some("gpt-4.1"))
        ]
    );
    let g = &c.groups[0];
    assert_eq!(g.models, vec!["opus", "claude-opus"]);
    assert_eq!(g.targets.iter().map(|t| t.unit).collect::<Vec<_>>(), vec![4, 5, 2]);

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

/// Random configurations built from the real field names with values of
/// every JSON type, plus random byte damage: the parser never panics,
/// and every refusal names a field. Runs briefly here; `make fuzz`
/// runs it longer.
#[test]
fn property_any_input_is_parsed_or_refused_with_a_field() {
    let rounds: u64 = std::env::var("LLMF_FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let keys = [
        "cluster_header",
        "vendor_header",
        "vendors",
        "window",
        "trip",
        "ejection",
        "recovery",
        "failure_statuses",
        "all_down",
        "refresh_interval",
        "slow",
        "rate_limit",
        "name",
        "cluster",
        "priority",
        "weight",
        "length",
        "buckets",
        "min_requests",
        "failure_ratio",
        "consecutive_failures",
        "base",
        "max",
        "decay",
        "probes",
        "successes",
        "probe_timeout",
        "first_byte",
        "stall",
        "ratio",
        "default_cooldown",
        "max_cooldown",
        "bogus",
    ];
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
        "\"\\u0000\"",
        "[]",
        "{}",
        "[503]",
        "[600]",
    ];
    fn value(depth: u32, next: &mut dyn FnMut() -> u64, keys: &[&str], scalars: &[&str]) -> String {
        match next() % 4 {
            0 if depth < 3 => {
                let n = next() % 5;
                let fields: Vec<String> = (0..n)
                    .map(|_| {
                        let k = keys[(next() % keys.len() as u64) as usize];
                        format!("\"{k}\":{}", value(depth + 1, next, keys, scalars))
                    })
                    .collect();
                format!("{{{}}}", fields.join(","))
            }
            1 if depth < 3 => {
                let n = next() % 4;
                let items: Vec<String> = (0..n).map(|_| value(depth + 1, next, keys, scalars)).collect();
                format!("[{}]", items.join(","))
            }
            _ => scalars[(next() % scalars.len() as u64) as usize].to_string(),
        }
    }
    for _ in 0..rounds {
        let mut doc = value(0, &mut next, &keys, &scalars).into_bytes();
        if next() % 3 == 0 {
            doc = format!(
                r#"{{"vendors":[{{"name":"a"}}],{}"#,
                String::from_utf8_lossy(&doc[1.min(doc.len())..])
            )
            .into_bytes();
        }
        if next() % 5 == 0 && !doc.is_empty() {
            let at = (next() % doc.len() as u64) as usize;
            doc[at] = (next() % 256) as u8;
        }
        match Config::parse(&doc) {
            Ok(c) => assert!(!c.vendors.is_empty()),
            Err(e) => {
                assert!(!e.field.is_empty(), "no field for {:?}", String::from_utf8_lossy(&doc));
                assert!(!e.problem.is_empty());
            }
        }
    }
}

#[test]
fn too_many_vendors_are_refused() {
    let vendors: Vec<String> = (0..=MAX_VENDORS).map(|i| format!(r#"{{"name":"v{i}"}}"#)).collect();
    let json = format!(r#"{{"vendors":[{}]}}"#, vendors.join(","));
    assert_eq!(field_of(&json), "vendors");
}
