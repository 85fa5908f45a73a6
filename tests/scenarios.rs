//! Whole-filter scenarios on the host: several worker VMs of one fake Envoy
//! share its shared data and queues, a fake clock advances, mock vendors
//! fail on a schedule, and every request runs through the real contexts
//! (choice, recording, batching, notifications). Only the proxy is missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use llm_failover::policy::config::Config;
use llm_failover::policy::health::PhaseKind;
use llm_failover::policy::store::{load, vendor_key};
use llm_failover::proxy::fake::capture;
use llm_failover::proxy::fake::envoy::{Answer, FakeEnvoy, Request};

struct Sim {
    envoy: FakeEnvoy,
    config: Config,
    /// (time, "vendor from -> to") for every state change logged.
    transitions: Vec<(u64, String, PhaseKind, PhaseKind)>,
    seen_lines: usize,
    next_tick: u64,
}

fn kind(name: &str) -> PhaseKind {
    match name {
        "closed" => PhaseKind::Closed,
        "open" => PhaseKind::Open,
        "half-open" => PhaseKind::HalfOpen,
        _ => PhaseKind::RateLimited,
    }
}

impl Sim {
    fn new(json: &str, workers: usize) -> Sim {
        capture::clear();
        let config = Config::parse(json.as_bytes()).unwrap();
        let envoy = FakeEnvoy::new(json, &["anthropic", "openai", "xai"], workers).unwrap();
        Sim {
            envoy,
            config,
            transitions: vec![],
            seen_lines: capture::lines(log::Level::Info).len(),
            next_tick: 0,
        }
    }

    /// One request on `worker` at `now`; `status_of(vendor)` is its answer.
    /// Each worker ticks every 100 ms of simulated time, as Envoy would.
    fn request(&mut self, worker: usize, now: u64, status_of: impl Fn(&str) -> u16) -> String {
        while self.next_tick <= now {
            self.envoy.set_now(self.next_tick);
            self.envoy.tick();
            self.next_tick += 100;
        }
        self.envoy.set_now(now);
        let got = self.envoy.send(worker, &Request::openai("m", false), &mut |asked| {
            Answer::status(status_of(&asked.cluster))
        });
        let lines = capture::lines(log::Level::Info);
        for line in lines.iter().skip(self.seen_lines) {
            // "vendor anthropic: closed -> open (...)"
            let Some(rest) = line.strip_prefix("vendor ") else {
                continue;
            };
            let Some((name, change)) = rest.split_once(": ") else {
                continue;
            };
            let words: Vec<&str> = change.split_whitespace().collect();
            if words.get(1) == Some(&"->") {
                self.transitions
                    .push((now, name.to_string(), kind(words[0]), kind(words[2])));
            }
        }
        self.seen_lines = lines.len();
        got.header("x-llm-failover-vendor").unwrap().to_string()
    }

    fn phase(&self, vendor: usize, now: u64) -> PhaseKind {
        let name = &self.config.vendors.values().nth(vendor).unwrap().name;
        let key = vendor_key(name, self.config.window);
        let rules = llm_failover::policy::health::Rules::from_config(&self.config);
        load(&self.envoy.process.store, &key, rules.window)
            .unwrap()
            .state
            .effective_kind(now)
    }
}

/// The health scenarios watch one attempt per request (rescue is off), and
/// each vendor as a whole (one unit for all its models).
const DEMO: &str = r#"{"vendors":[
    {"name":"anthropic","priority":0,"model_units":0},
    {"name":"openai","priority":1,"model_units":0},
    {"name":"xai","priority":2,"model_units":0}],
    "rescue":{"max_attempts":1}}"#;

/// anthropic returns 529 from 10 s to 20 s; four workers share 20 requests/s.
#[test]
fn vendor_returns_529_for_ten_seconds_then_traffic_moves_and_comes_back() {
    let mut sim = Sim::new(DEMO, 4);
    let outage = 10_000..20_000;
    let mut served = vec![];
    let mut now = 0;
    let mut i = 0;
    while now < 60_000 {
        now += 50;
        i += 1;
        let status = |v: &str| {
            if v == "anthropic" && outage.contains(&now) {
                529
            } else {
                200
            }
        };
        served.push((now, sim.request(i % 4, now, status)));
    }
    // Before the outage: all on the primary.
    assert!(served
        .iter()
        .filter(|(t, _)| *t < 10_000)
        .all(|(_, v)| v == "anthropic"));
    // Trip volume: 3 consecutive failures, then nothing more reaches it.
    let hit_during_outage = served
        .iter()
        .filter(|(t, v)| outage.contains(t) && v == "anthropic")
        .count();
    assert_eq!(hit_during_outage, 3);
    // Ejected at 10.1 s for the default 30 s: openai serves until 40.1 s.
    let (t_open, _, _, to) = &sim.transitions[0];
    assert_eq!((*t_open, *to), (10_100, PhaseKind::Open));
    assert!(served
        .iter()
        .filter(|(t, _)| (10_150..40_100).contains(t))
        .all(|(_, v)| v == "openai"));
    // Then three probes close it, and the primary has everything again.
    let kinds: Vec<_> = sim
        .transitions
        .iter()
        .map(|(t, v, from, to)| (*t, v.as_str(), *from, *to))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (10_100, "anthropic", PhaseKind::Closed, PhaseKind::Open),
            (40_100, "anthropic", PhaseKind::Open, PhaseKind::HalfOpen),
            (40_200, "anthropic", PhaseKind::HalfOpen, PhaseKind::Closed),
        ]
    );
    assert!(served
        .iter()
        .filter(|(t, _)| *t > 40_200)
        .all(|(_, v)| v == "anthropic"));
    assert_eq!(sim.phase(0, 60_000), PhaseKind::Closed);
    assert_eq!(sim.phase(2, 60_000), PhaseKind::Closed, "xai was never needed");
}

/// The outage outlasts the first ejection: the probe fails and the vendor
/// is ejected for twice as long, without flapping traffic back meanwhile.
#[test]
fn a_long_outage_doubles_the_ejection() {
    let mut sim = Sim::new(DEMO, 2);
    let mut now = 0;
    let mut to_primary_while_down = 0;
    while now < 200_000 {
        now += 100;
        let down = now < 100_000;
        let status = |v: &str| if v == "anthropic" && down { 503 } else { 200 };
        if sim.request((now / 100) as usize % 2, now, status) == "anthropic" && down {
            to_primary_while_down += 1;
        }
    }
    let opens: Vec<String> = capture::lines(log::Level::Info)
        .into_iter()
        .filter(|l| l.contains("-> open"))
        .collect();
    let ejected_for: Vec<&str> = opens
        .iter()
        .map(|l| l.split("ejected for ").nth(1).unwrap().split(' ').next().unwrap())
        .collect();
    assert_eq!(ejected_for, vec!["30000", "60000", "120000"]);
    // 3 to trip, then one failed probe per ejection.
    assert_eq!(to_primary_while_down, 5);
}

/// Primary and secondary both fail: traffic falls to the third vendor.
#[test]
fn two_vendors_down_traffic_reaches_the_third() {
    let mut sim = Sim::new(DEMO, 2);
    let mut last = String::new();
    for i in 0..40 {
        let status = |v: &str| if v == "xai" { 200 } else { 500 };
        last = sim.request(i % 2, 1_000 + i as u64, status);
    }
    assert_eq!(last, "xai");
    assert_eq!(sim.phase(0, 2_000), PhaseKind::Open);
    assert_eq!(sim.phase(1, 2_000), PhaseKind::Open);
}

/// Quiet successes are batched per worker and written on the tick: the
/// window holds every request once the workers have ticked.
#[test]
fn batched_successes_all_reach_the_shared_window() {
    let mut sim = Sim::new(DEMO, 3);
    for i in 0..300u64 {
        sim.request((i % 3) as usize, 1_000 + i, |_| 200);
    }
    sim.envoy.set_now(2_000);
    sim.envoy.tick();
    let key = vendor_key("anthropic", sim.config.window);
    let rules = llm_failover::policy::health::Rules::from_config(&sim.config);
    let state = load(&sim.envoy.process.store, &key, rules.window).unwrap().state;
    assert_eq!(state.window.totals(2_000).successes, 300);
}
