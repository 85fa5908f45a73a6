//! Whole-filter scenarios on the host: several "workers" (each with its own
//! round-robin counter) share one in-memory store, a fake clock advances,
//! and mock vendors fail on a schedule. Only the proxy is missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use llm_failover::policy::choice::{choose, Choice, Worker};
use llm_failover::policy::classify::{classify, Observed, Outcome};
use llm_failover::policy::config::Config;
use llm_failover::policy::health::{PhaseKind, Rules, Transition};
use llm_failover::policy::store::{load, update, vendor_key, MemoryStore};

struct Sim {
    config: Config,
    rules: Rules,
    keys: Vec<String>,
    store: MemoryStore,
    workers: Vec<Worker>,
    transitions: Vec<(u64, String, Transition)>,
}

impl Sim {
    fn new(json: &str, workers: usize) -> Sim {
        let config = Config::parse(json.as_bytes()).unwrap();
        let rules = Rules::from_config(&config);
        let keys = config
            .vendors
            .iter()
            .map(|v| vendor_key(&v.name, config.window))
            .collect();
        Sim {
            config,
            rules,
            keys,
            store: MemoryStore::new(),
            workers: (0..workers).map(|_| Worker::new(3, 3)).collect(),
            transitions: vec![],
        }
    }

    /// One request on `worker` at `now`; `status_of(vendor)` is the answer.
    fn request(&mut self, worker: usize, now: u64, status_of: impl Fn(&str) -> u16) -> Option<String> {
        let choice = choose(
            &self.config,
            &self.rules,
            &self.keys,
            &self.store,
            &mut || now,
            &mut self.workers[worker],
        );
        let Choice::Route {
            vendor,
            ticket,
            transition,
            ..
        } = choice
        else {
            return None;
        };
        let name = self.config.vendors[vendor].name.clone();
        if let Some(t) = transition {
            self.transitions.push((now, name.clone(), t));
        }
        let seen = Observed {
            status: Some(status_of(&name)),
            ..Observed::default()
        };
        let outcome: Outcome = classify(&seen, &self.config.failure_statuses, &self.config.slow);
        if let Some(ticket) = ticket {
            let rules = self.rules;
            let done = update(&self.store, &self.keys[vendor], rules.window, |s| {
                s.record(now, outcome.verdict(), ticket, &rules)
            })
            .unwrap();
            // What the glue broadcasts: a phase change or a first failure
            // makes every worker drop its copy of the vendor.
            if done.result.is_some() || !done.state.is_quiet(now) {
                for w in &mut self.workers {
                    w.view.forget(vendor);
                }
            }
            if let Some(t) = done.result {
                self.transitions.push((now, name.clone(), t));
            }
        }
        Some(name)
    }

    fn phase(&self, vendor: usize, now: u64) -> PhaseKind {
        load(&self.store, &self.keys[vendor], self.rules.window)
            .unwrap()
            .state
            .effective_kind(now)
    }
}

const DEMO: &str = r#"{"vendors":[
    {"name":"anthropic","priority":0},
    {"name":"openai","priority":1},
    {"name":"xai","priority":2}]}"#;

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
        served.push((now, sim.request(i % 4, now, status).unwrap()));
    }
    // Before the outage: all on the primary.
    assert!(served
        .iter()
        .filter(|(t, _)| *t < 10_000)
        .all(|(_, v)| v == "anthropic"));
    // Trip volume: 5 consecutive failures, then nothing more reaches it.
    let hit_during_outage = served
        .iter()
        .filter(|(t, v)| outage.contains(t) && v == "anthropic")
        .count();
    assert_eq!(hit_during_outage, 5);
    // Ejected at 10.2 s for the default 30 s: openai serves until 40.2 s.
    let (t_open, _, open) = &sim.transitions[0];
    assert_eq!((*t_open, open.to), (10_200, PhaseKind::Open));
    assert!(served
        .iter()
        .filter(|(t, _)| (10_250..40_200).contains(t))
        .all(|(_, v)| v == "openai"));
    // Then three probes close it, and the primary has everything again.
    let kinds: Vec<_> = sim
        .transitions
        .iter()
        .map(|(t, v, tr)| (*t, v.as_str(), tr.from, tr.to))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (10_200, "anthropic", PhaseKind::Closed, PhaseKind::Open),
            (40_200, "anthropic", PhaseKind::Open, PhaseKind::HalfOpen),
            (40_300, "anthropic", PhaseKind::HalfOpen, PhaseKind::Closed),
        ]
    );
    assert!(served
        .iter()
        .filter(|(t, _)| *t > 40_300)
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
        if sim.request((now / 100) as usize % 2, now, status).unwrap() == "anthropic" && down {
            to_primary_while_down += 1;
        }
    }
    let opens: Vec<u64> = sim
        .transitions
        .iter()
        .filter(|(_, _, t)| t.to == PhaseKind::Open)
        .map(|(_, _, t)| t.ejected_for_ms.unwrap())
        .collect();
    assert_eq!(opens, vec![30_000, 60_000, 120_000]);
    // 5 to trip, then one failed probe per ejection.
    assert_eq!(to_primary_while_down, 7);
}

/// Primary and secondary both fail: traffic falls to the third vendor.
#[test]
fn two_vendors_down_traffic_reaches_the_third() {
    let mut sim = Sim::new(DEMO, 2);
    let mut last = String::new();
    for i in 0..40 {
        let status = |v: &str| if v == "xai" { 200 } else { 500 };
        last = sim.request(i % 2, 1_000 + i as u64, status).unwrap();
    }
    assert_eq!(last, "xai");
    assert_eq!(sim.phase(0, 2_000), PhaseKind::Open);
    assert_eq!(sim.phase(1, 2_000), PhaseKind::Open);
}
