//! Which candidate takes a request now: by level and weight, from the worker's view.
//!
//! Candidates are tried by level (lower first); inside a level, healthy
//! ones share traffic by weight. A half-open unit takes a request only by
//! claiming one of its probe slots with compare-and-swap, so all workers
//! together send it no more than the probe budget. When every candidate is
//! ejected, `AllDown` decides.

use crate::policy::config::{AllDown, Table, UnitId, VendorId};
use crate::policy::health::{Availability, Phase, Rules, Ticket, Transition};
use crate::policy::plan::{Attempt, Candidate};
use crate::policy::store::{self, Store};
use crate::policy::view::View;
use std::num::NonZeroU64;

#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    Route {
        /// The candidate chosen, and what its outcome is recorded with.
        attempt: Attempt,
        /// A phase change made while choosing (an ejection ran out).
        transition: Option<Transition>,
    },
    /// Every candidate is ejected and the policy is to refuse.
    Reject { due: Vec<Due>, now_ms: u64 },
    /// No candidate at all (none left untried, or none serves the request).
    Nothing,
}

/// When an ejected unit is due back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub unit: UnitId,
    /// The candidate's unit it stands for (see `Attempt::planned`).
    pub planned: UnitId,
    pub vendor: VendorId,
    pub due_ms: u64,
}

/// One request for a choice.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Sorted by level.
    pub candidates: &'a [Candidate],
    pub all_down: AllDown,
    /// Units already tried for this request: passed over.
    pub tried: &'a [UnitId],
    /// Without it, half-open units are passed over rather than given one of
    /// their probe slots (for a provisional choice that may be made again: a
    /// slot taken twice for one request is lost).
    pub claim_probes: bool,
    /// The model the client asked for, where known (for drained models).
    pub requested: Option<&'a str>,
}

impl<'a> Ask<'a> {
    /// A request's first choice among `candidates`.
    pub fn first(candidates: &'a [Candidate], all_down: AllDown) -> Self {
        Ask {
            candidates,
            all_down,
            tried: &[],
            claim_probes: true,
            requested: None,
        }
    }
}

/// The units' shared state: the rules it follows, each unit's store key
/// and the store.
pub struct Shared<'a, S: Store + ?Sized> {
    pub rules: &'a Rules,
    pub keys: &'a Table<UnitId, String>,
    pub store: &'a S,
}

#[derive(Debug, Clone, Copy)]
enum Standing {
    Healthy(Option<Ticket>),
    Probe,
}

/// What one worker keeps between choices.
#[derive(Debug, Clone, Default)]
pub struct Worker {
    /// Round-robin position for weighted choice.
    pub turn: u64,
    /// Vendors whose Envoy cluster does not exist. Such vendors are
    /// skipped unless every candidate's is missing (then the mask says
    /// nothing).
    pub missing: Table<VendorId, bool>,
    /// This worker's copy of every unit's shared state.
    pub view: View,
}

impl Worker {
    pub fn new(units: usize, vendors: usize) -> Self {
        Worker {
            turn: 0,
            missing: Table::filled(vendors, false),
            view: View::new(units),
        }
    }

    fn is_missing(&self, vendor: VendorId) -> bool {
        self.missing.get(vendor).copied().unwrap_or(false)
    }
}

/// Reads the clock at most once, and only if a choice needs it: routing to a
/// closed unit from the worker's copy needs no time at all.
pub struct LazyClock<'a> {
    read: &'a mut dyn FnMut() -> u64,
    now: Option<u64>,
}

impl<'a> LazyClock<'a> {
    pub fn new(read: &'a mut dyn FnMut() -> u64) -> Self {
        LazyClock { read, now: None }
    }

    pub fn now(&mut self) -> u64 {
        match self.now {
            Some(t) => t,
            None => {
                let t = (self.read)();
                self.now = Some(t);
                t
            }
        }
    }
}

/// Picks the best candidate of `ask` that may take a request now; `clock`
/// reads the time in ms.
pub fn choose<S: Store + ?Sized>(
    ask: &Ask,
    shared: &Shared<S>,
    clock: &mut dyn FnMut() -> u64,
    worker: &mut Worker,
) -> Choice {
    let Shared { rules, keys, store } = *shared;
    let mut clock = LazyClock::new(clock);
    let untried: Vec<&Candidate> = ask.candidates.iter().filter(|c| !ask.tried.contains(&c.unit)).collect();
    if untried.is_empty() {
        return Choice::Nothing;
    }
    let all_missing = untried.iter().all(|c| worker.is_missing(c.vendor));
    let skips = |w: &Worker, c: &Candidate| !all_missing && w.is_missing(c.vendor);
    let mut due: Vec<Due> = Vec::new();
    let mut start = 0;
    while start < untried.len() {
        let level_of = |i: usize| untried.get(i).map_or(u32::MAX, |c| c.level);
        let level = level_of(start);
        let end = (start..untried.len())
            .find(|&i| level_of(i) != level)
            .unwrap_or(untried.len());
        let this_level = untried.get(start..end).unwrap_or(&[]);
        start = end;

        let mut standing: Vec<(&Candidate, UnitId, Option<u64>, Standing)> = Vec::with_capacity(this_level.len());
        for &c in this_level {
            if skips(worker, c) {
                continue;
            }
            let (unit, owner) = slot_or_vendor(c, shared, &mut clock, worker);
            let vendor = c.vendor;
            let Some(key) = keys.get(unit) else {
                continue;
            };
            let judged = match worker.view.get(unit) {
                Some(cached) if cached.state.phase == Phase::Closed => {
                    // A rate limit holds until its reset, like an ejection.
                    let until = cached.state.cooldown_until_ms;
                    if until != 0 && clock.now() < until {
                        due.push(Due {
                            unit,
                            planned: c.unit,
                            vendor,
                            due_ms: until,
                        });
                        None
                    } else {
                        Some(Standing::Healthy(Some(Ticket {
                            generation: cached.state.generation,
                            probe: false,
                            quiet: cached.quiet,
                        })))
                    }
                }
                // An ejection cannot end early: until it runs out, the copy holds.
                Some(cached) if matches!(cached.state.phase, Phase::Open { until_ms } if clock.now() < until_ms) => {
                    if let Phase::Open { until_ms } = cached.state.phase {
                        due.push(Due {
                            unit,
                            planned: c.unit,
                            vendor,
                            due_ms: until_ms,
                        });
                    }
                    None
                }
                // Not plainly closed, or no copy: judge from a fresh read.
                _ => match store::load(store, key, rules.window) {
                    // Unreadable state must not take a vendor out of service.
                    Err(_) => Some(Standing::Healthy(None)),
                    Ok(loaded) => {
                        let now = clock.now();
                        let availability = loaded.state.availability(now, rules);
                        worker.view.put(unit, loaded.state, now);
                        match availability {
                            Availability::Routable(t) => Some(Standing::Healthy(Some(t))),
                            Availability::Probe => Some(Standing::Probe),
                            Availability::Unavailable { due_ms } => {
                                due.push(Due {
                                    unit,
                                    planned: c.unit,
                                    vendor,
                                    due_ms,
                                });
                                None
                            }
                        }
                    }
                },
            };
            if let Some(judged) = judged {
                standing.push((c, unit, owner, judged));
            }
        }
        while !standing.is_empty() {
            let pick = weighted_pick(&standing, &mut worker.turn);
            let Some(&(c, unit, owner, judged)) = standing.get(pick) else {
                break;
            };
            let route = |ticket, transition| Choice::Route {
                attempt: Attempt {
                    unit,
                    planned: c.unit,
                    vendor: c.vendor,
                    ticket,
                    forced: false,
                    owner,
                },
                transition,
            };
            match judged {
                Standing::Healthy(ticket) => return route(ticket, None),
                Standing::Probe if !ask.claim_probes => {
                    due.push(Due {
                        unit,
                        planned: c.unit,
                        vendor: c.vendor,
                        due_ms: clock.now(),
                    });
                    standing.remove(pick);
                }
                Standing::Probe => {
                    let now = clock.now();
                    let key = keys.get(unit).map(String::as_str).unwrap_or_default();
                    let claimed = store::update(store, key, rules.window, |s| s.claim_probe(now, rules));
                    if let Ok(done) = claimed {
                        let claim = done.result;
                        worker.view.put(unit, done.state, now);
                        if let Some((ticket, transition)) = claim {
                            return route(Some(ticket), transition);
                        }
                    }
                    // Another worker took the last slot: it is being probed.
                    due.push(Due {
                        unit,
                        planned: c.unit,
                        vendor: c.vendor,
                        due_ms: now,
                    });
                    standing.remove(pick);
                }
            }
        }
    }

    // Every candidate is ejected.
    match ask.all_down {
        AllDown::Reject => {
            due.sort_by_key(|d| d.due_ms);
            Choice::Reject {
                due,
                now_ms: clock.now(),
            }
        }
        AllDown::Soonest => {
            // `due` is in preference order, and min_by_key keeps the first of
            // equals, so ties go to the preferred candidate.
            let soonest = due
                .iter()
                .min_by_key(|d| d.due_ms)
                .map(|d| (d.unit, d.planned, d.vendor));
            let (unit, planned, vendor) = soonest
                .or_else(|| {
                    untried
                        .iter()
                        .find(|c| !skips(worker, c))
                        .map(|c| (c.unit, c.unit, c.vendor))
                })
                .unwrap_or((UnitId(0), UnitId(0), VendorId(0)));
            Choice::Route {
                attempt: Attempt {
                    unit,
                    planned,
                    vendor,
                    ticket: None,
                    forced: true,
                    owner: None,
                },
                transition: None,
            }
        }
    }
}

/// The unit a candidate is judged and recorded under: a model slot, while
/// no other model holds it; else its vendor's own unit.
fn slot_or_vendor<S: Store + ?Sized>(
    c: &Candidate,
    shared: &Shared<S>,
    clock: &mut LazyClock,
    worker: &mut Worker,
) -> (UnitId, Option<u64>) {
    let Some(owner) = c.owner else {
        return (c.unit, None);
    };
    let held_by_another = match worker.view.get(c.unit) {
        Some(cached) => {
            let st = &cached.state;
            st.owner != owner && st.owner != 0 && !st.is_free(clock.now(), shared.rules)
        }
        None => match shared
            .keys
            .get(c.unit)
            .map(|k| store::load(shared.store, k, shared.rules.window))
        {
            Some(Ok(loaded)) => {
                let now = clock.now();
                let another = !loaded.state.serves(owner, now, shared.rules);
                worker.view.put(c.unit, loaded.state, now);
                another
            }
            _ => false,
        },
    };
    if held_by_another {
        (c.vendor.pass_through(), None)
    } else {
        (c.unit, Some(owner))
    }
}

/// Smooth-enough weighted round robin: turn `n` lands on the candidate whose
/// cumulative weight range holds `n mod total`.
fn weighted_pick(standing: &[(&Candidate, UnitId, Option<u64>, Standing)], turn: &mut u64) -> usize {
    let Some(((first, ..), rest)) = standing.split_first() else {
        return 0;
    };
    if rest.is_empty() {
        return 0;
    }
    // Weights are never zero, so neither is their sum.
    let total = rest.iter().fold(NonZeroU64::from(first.weight), |sum, (c, ..)| {
        sum.saturating_add(u64::from(c.weight.get()))
    });
    let mut slot = *turn % total;
    *turn = turn.wrapping_add(1);
    for (i, (c, ..)) in standing.iter().enumerate() {
        let w = u64::from(c.weight.get());
        if slot < w {
            return i;
        }
        slot -= w;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::config::Config;
    use crate::policy::config::{UnitId, VendorId};
    use crate::policy::health::{Phase, Verdict};
    use crate::policy::plan::default_candidates;
    use crate::policy::store::{create_if_missing, load, update, vendor_key, MemoryStore};

    struct World {
        config: Config,
        rules: Rules,
        keys: Table<UnitId, String>,
        store: MemoryStore,
    }

    impl World {
        fn new(json: &str) -> World {
            let config = Config::parse(json.as_bytes()).unwrap();
            let rules = Rules::from_config(&config);
            let keys: Table<UnitId, String> = config
                .vendors
                .values()
                .map(|v| vendor_key(&v.name, config.window))
                .collect();
            let store = MemoryStore::new();
            for k in keys.values() {
                create_if_missing(&store, k, rules.window).unwrap();
            }
            World {
                config,
                rules,
                keys,
                store,
            }
        }

        fn worker(&self) -> Worker {
            Worker::new(self.config.units.len(), self.config.vendors.len())
        }

        /// A choice by a worker whose copy of the state is up to date (it
        /// was told of every change), as the glue's notifications ensure.
        fn choose(&self, now: u64, worker: &mut Worker) -> Choice {
            worker.view.forget_all();
            self.choose_cached(now, worker)
        }

        /// A choice from whatever the worker's copy holds.
        fn choose_cached(&self, now: u64, worker: &mut Worker) -> Choice {
            self.choose_with(&mut || now, worker)
        }

        fn shared(&self) -> Shared<'_, MemoryStore> {
            Shared {
                rules: &self.rules,
                keys: &self.keys,
                store: &self.store,
            }
        }

        /// The vendors' pass-through units, as a request with no body asks.
        fn choose_with(&self, clock: &mut dyn FnMut() -> u64, worker: &mut Worker) -> Choice {
            let candidates = default_candidates(&self.config);
            choose(
                &Ask::first(&candidates, self.config.all_down),
                &self.shared(),
                clock,
                worker,
            )
        }

        fn name(&self, choice: &Choice) -> &str {
            match choice {
                Choice::Route { attempt, .. } => &self.config.vendors[attempt.vendor].name,
                Choice::Reject { .. } => "(rejected)",
                Choice::Nothing => "(nothing)",
            }
        }

        fn eject(&self, vendor: usize, until_ms: u64) {
            update(&self.store, &self.keys[UnitId(vendor)], self.rules.window, |s| {
                s.phase = Phase::Open { until_ms };
                s.generation += 1;
            })
            .unwrap();
        }
    }

    const THREE: &str = r#"{"vendors":[
        {"name":"anthropic","priority":0},
        {"name":"openai","priority":1},
        {"name":"xai","priority":2}]}"#;

    #[test]
    fn healthy_primary_takes_everything_with_one_read() {
        let w = World::new(THREE);
        let reads = w.store.reads.get();
        let mut turn = w.worker();
        for _ in 0..10 {
            assert_eq!(w.name(&w.choose(0, &mut turn)), "anthropic");
        }
        assert_eq!(w.store.reads.get() - reads, 10, "one shared-data read per request");
    }

    #[test]
    fn ejected_primary_sends_traffic_to_the_next_priority() {
        let w = World::new(THREE);
        w.eject(0, 10_000);
        let mut turn = w.worker();
        assert_eq!(w.name(&w.choose(5_000, &mut turn)), "openai");
        w.eject(1, 10_000);
        assert_eq!(w.name(&w.choose(5_000, &mut turn)), "xai");
    }

    #[test]
    fn weights_split_traffic_inside_a_priority() {
        let w = World::new(
            r#"{"vendors":[
            {"name":"a","weight":3},{"name":"b","weight":1},{"name":"c","priority":1}]}"#,
        );
        let mut turn = w.worker();
        let mut counts = std::collections::HashMap::new();
        for _ in 0..400 {
            *counts.entry(w.name(&w.choose(0, &mut turn)).to_string()).or_insert(0) += 1;
        }
        assert_eq!(counts["a"], 300);
        assert_eq!(counts["b"], 100);
        assert!(!counts.contains_key("c"));
        // With a out, b takes all of its priority's traffic.
        w.eject(0, 1_000);
        for _ in 0..10 {
            assert_eq!(w.name(&w.choose(0, &mut turn)), "b");
        }
    }

    #[test]
    fn ended_ejection_admits_probes_up_to_the_budget_then_falls_through() {
        let w = World::new(THREE);
        w.eject(0, 10_000);
        let mut turn = w.worker();
        let mut routed = vec![];
        let mut transitions = 0;
        for _ in 0..6 {
            let c = w.choose(10_000, &mut turn);
            if let Choice::Route {
                transition: Some(_), ..
            } = &c
            {
                transitions += 1;
            }
            routed.push(w.name(&c).to_string());
        }
        assert_eq!(
            routed,
            ["anthropic", "anthropic", "anthropic", "openai", "openai", "openai"]
        );
        assert_eq!(transitions, 1, "exactly one request reports open -> half-open");
    }

    #[test]
    fn a_provisional_choice_takes_no_probe_slot() {
        let w = World::new(THREE);
        w.eject(0, 10_000);
        let mut worker = w.worker();
        let candidates = default_candidates(&w.config);
        let provisional = Ask {
            claim_probes: false,
            ..Ask::first(&candidates, AllDown::Soonest)
        };
        for _ in 0..5 {
            let c = choose(&provisional, &w.shared(), &mut || 10_000, &mut worker);
            assert_eq!(w.name(&c), "openai");
        }
        // All three slots are still there for the real choices.
        let mut probes = 0;
        for _ in 0..5 {
            if let Choice::Route {
                attempt:
                    Attempt {
                        ticket: Some(Ticket { probe: true, .. }),
                        ..
                    },
                ..
            } = w.choose(10_000, &mut worker)
            {
                probes += 1;
            }
        }
        assert_eq!(probes, 3);
    }

    #[test]
    fn probe_budget_is_shared_by_all_workers() {
        let w = World::new(THREE);
        w.eject(0, 10_000);
        // Four workers, each with its own round-robin counter, same store.
        let mut turns: Vec<Worker> = (0..4).map(|_| w.worker()).collect();
        let mut probes = 0;
        for round in 0..5 {
            for turn in turns.iter_mut() {
                if let Choice::Route {
                    attempt:
                        Attempt {
                            vendor: VendorId(0),
                            ticket: Some(t),
                            ..
                        },
                    ..
                } = w.choose(10_000 + round, turn)
                {
                    assert!(t.probe);
                    probes += 1;
                }
            }
        }
        assert_eq!(probes, 3);
    }

    #[test]
    fn probe_claims_survive_racing_workers() {
        let w = World::new(THREE);
        w.eject(0, 10_000);
        // Another worker claims two slots between our read and our write.
        let key = w.keys[UnitId(0)].clone();
        let rules = w.rules;
        w.store.before_next_set(move |s| {
            for _ in 0..2 {
                update(s, &key, rules.window, |st| st.claim_probe(10_000, &rules)).unwrap();
            }
        });
        let mut turn = w.worker();
        assert_eq!(w.name(&w.choose(10_000, &mut turn)), "anthropic");
        let st = load(&w.store, &w.keys[UnitId(0)], w.rules.window).unwrap().state;
        assert!(matches!(st.phase, Phase::HalfOpen { taken: 3, .. }), "{:?}", st.phase);
        assert_eq!(w.name(&w.choose(10_000, &mut turn)), "openai");
    }

    #[test]
    fn all_down_soonest_picks_the_vendor_back_first() {
        let w = World::new(THREE);
        w.eject(0, 30_000);
        w.eject(1, 20_000);
        w.eject(2, 25_000);
        let mut turn = w.worker();
        let c = w.choose(10_000, &mut turn);
        assert_eq!(w.name(&c), "openai");
        assert!(matches!(
            c,
            Choice::Route {
                attempt: Attempt {
                    forced: true,
                    ticket: None,
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn all_down_soonest_ties_go_to_the_preferred_vendor() {
        let w = World::new(THREE);
        for v in 0..3 {
            w.eject(v, 30_000);
        }
        let mut turn = w.worker();
        assert_eq!(w.name(&w.choose(10_000, &mut turn)), "anthropic");
    }

    #[test]
    fn all_down_reject_lists_every_vendor_soonest_first() {
        let w = World::new(r#"{"all_down":"reject","vendors":[{"name":"a"},{"name":"b","priority":1}]}"#);
        w.eject(0, 30_000);
        w.eject(1, 20_000);
        let mut turn = w.worker();
        assert_eq!(
            w.choose(10_000, &mut turn),
            Choice::Reject {
                due: vec![
                    Due {
                        unit: UnitId(1),
                        planned: UnitId(1),
                        vendor: VendorId(1),
                        due_ms: 20_000
                    },
                    Due {
                        unit: UnitId(0),
                        planned: UnitId(0),
                        vendor: VendorId(0),
                        due_ms: 30_000
                    }
                ],
                now_ms: 10_000
            }
        );
    }

    #[test]
    fn outcome_of_a_forced_request_is_not_recorded() {
        // The ticket is None: the glue only counts stats for it.
        let w = World::new(r#"{"vendors":[{"name":"a"}]}"#);
        w.eject(0, 30_000);
        let mut turn = w.worker();
        assert!(matches!(
            w.choose(0, &mut turn),
            Choice::Route {
                attempt: Attempt {
                    ticket: None,
                    forced: true,
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn a_vendor_without_an_envoy_cluster_is_skipped() {
        let w = World::new(THREE);
        let mut worker = w.worker();
        worker.missing = vec![true, false, false].into();
        assert_eq!(w.name(&w.choose(0, &mut worker)), "openai");
        // Ejections of the others do not bring it back...
        w.eject(1, 10_000);
        w.eject(2, 20_000);
        assert_eq!(w.name(&w.choose(0, &mut worker)), "openai");
        // ...but when nothing is known to exist, the mask is ignored.
        worker.missing = vec![true, true, true].into();
        assert_eq!(w.name(&w.choose(0, &mut worker)), "anthropic");
    }

    #[test]
    fn a_worker_routes_to_a_closed_vendor_from_its_copy_without_reading() {
        let w = World::new(THREE);
        let mut worker = w.worker();
        w.choose_cached(0, &mut worker);
        let reads = w.store.reads.get();
        let mut clock_reads = 0;
        for _ in 0..100 {
            let mut clock = || {
                clock_reads += 1;
                0
            };
            let c = w.choose_with(&mut clock, &mut worker);
            assert_eq!(w.name(&c), "anthropic");
        }
        assert_eq!(w.store.reads.get(), reads, "no shared-data read");
        assert_eq!(clock_reads, 0, "no clock read");
    }

    #[test]
    fn a_copy_of_an_ejection_holds_until_it_runs_out_then_is_read_again() {
        let w = World::new(THREE);
        w.eject(0, 10_000);
        let mut worker = w.worker();
        assert_eq!(w.name(&w.choose_cached(5_000, &mut worker)), "openai");
        let reads = w.store.reads.get();
        assert_eq!(w.name(&w.choose_cached(9_999, &mut worker)), "openai");
        assert_eq!(w.store.reads.get() - reads, 0, "ejected primary judged from the copy");
        // At 10 s the ejection has run out: fresh read, probe claimed.
        let c = w.choose_cached(10_000, &mut worker);
        assert_eq!(w.name(&c), "anthropic");
        assert!(matches!(
            c,
            Choice::Route {
                attempt: Attempt {
                    ticket: Some(Ticket { probe: true, .. }),
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn a_stale_copy_routes_with_a_stale_ticket_until_the_worker_is_told() {
        let w = World::new(THREE);
        let mut worker = w.worker();
        w.choose_cached(0, &mut worker);
        w.eject(0, 10_000); // by another worker
        let c = w.choose_cached(1, &mut worker);
        // Until the notification arrives the copy routes there; the outcome
        // carries the old generation and will be ignored.
        assert!(matches!(
            c,
            Choice::Route {
                attempt: Attempt {
                    vendor: VendorId(0),
                    ticket: Some(Ticket { generation: 0, .. }),
                    ..
                },
                ..
            }
        ));
        worker.view.forget(UnitId(0)); // the notification
        assert_eq!(w.name(&w.choose_cached(2, &mut worker)), "openai");
    }

    #[test]
    fn a_rate_limited_vendor_is_skipped_until_its_reset_from_the_copy_too() {
        let w = World::new(THREE);
        let key = w.keys[UnitId(0)].clone();
        update(&w.store, &key, w.rules.window, |s| {
            s.cooldown_until_ms = 2_000;
        })
        .unwrap();
        let mut worker = w.worker();
        assert_eq!(w.name(&w.choose_cached(1_000, &mut worker)), "openai");
        let reads = w.store.reads.get();
        assert_eq!(w.name(&w.choose_cached(1_999, &mut worker)), "openai");
        assert_eq!(w.name(&w.choose_cached(2_000, &mut worker)), "anthropic");
        assert_eq!(w.store.reads.get(), reads, "judged from the copy");
    }

    #[test]
    fn corrupt_state_reads_as_healthy() {
        let w = World::new(THREE);
        w.store.put_raw(&w.keys[UnitId(0)], b"\x00\x01garbage");
        let mut turn = w.worker();
        let c = w.choose(0, &mut turn);
        assert_eq!(w.name(&c), "anthropic");
        // ...and the outcome repairs it.
        if let Choice::Route {
            attempt: Attempt { ticket: Some(t), .. },
            ..
        } = c
        {
            update(&w.store, &w.keys[UnitId(0)], w.rules.window, |s| {
                s.record(0, Verdict::Success, t, &w.rules)
            })
            .unwrap();
        }
        assert_eq!(load(&w.store, &w.keys[UnitId(0)], w.rules.window).unwrap().reset, None);
    }
}
