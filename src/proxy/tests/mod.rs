//! The contexts driven through the fake host: at least one test per callback, as scenarios.

mod admin;
mod answers;
mod calls;
mod hostile;
mod models;
mod requests;
mod rescues;
mod retries;
mod workers;

use crate::policy::store::load;
use crate::proxy::fake::capture;
use crate::proxy::fake::envoy::{Answer, Asked, FakeEnvoy};

pub const CLUSTERS: [&str; 3] = ["anthropic", "openai", "xai"];

/// Same-vendor retries off (tests/retries.rs covers them): a failed
/// attempt moves on at once.
const NO_RETRY: &str = r#""retry_backoff":"off","rate_limit_wait":"off""#;

/// `extra` with same-vendor retries off in its `rescue` section.
fn without_retries(extra: &str) -> String {
    match extra.find(r#""rescue":{"#) {
        Some(at) => {
            let (head, tail) = extra.split_at(at + r#""rescue":{"#.len());
            let sep = if tail.starts_with('}') { "" } else { "," };
            format!("{head}{NO_RETRY}{sep}{tail}")
        }
        None => format!(r#"{extra},"rescue":{{{NO_RETRY}}}"#),
    }
}

/// Three vendors by priority; rescue as `rescue` says (same-vendor
/// retries off).
pub fn three(extra: &str) -> String {
    let extra = without_retries(extra);
    format!(
        r#"{{"vendors":[{{"name":"anthropic"}},{{"name":"openai","priority":1}},{{"name":"xai","priority":2}}]{extra}}}"#
    )
}

/// The same three vendors, each with one unit of health for all its models
/// (no model units): for tests about the vendor as a whole.
pub fn whole(extra: &str) -> String {
    let extra = without_retries(extra);
    format!(
        r#"{{"vendors":[{{"name":"anthropic","model_units":0}},{{"name":"openai","priority":1,"model_units":0}},{{"name":"xai","priority":2,"model_units":0}}]{extra}}}"#
    )
}

pub fn envoy(json: &str, workers: usize) -> FakeEnvoy {
    capture::clear();
    match FakeEnvoy::new(json, &CLUSTERS, workers) {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    }
}

/// Every vendor answers `status` but those listed in `answers`.
pub fn vendors<'a>(answers: &'a [(&'a str, Answer)]) -> impl FnMut(&Asked) -> Answer + 'a {
    move |asked: &Asked| {
        answers
            .iter()
            .find(|(v, _)| *v == asked.cluster)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| {
                Answer::json(
                    200,
                    &format!(r#"{{"id":"x","model":"m","served_by":"{}"}}"#, asked.cluster),
                )
            })
    }
}

/// Ejects `vendor` by `n` failures through worker 0.
pub fn eject(e: &mut FakeEnvoy, vendor: &str, n: usize) {
    let request = crate::proxy::fake::envoy::Request::openai("m", false);
    for _ in 0..n {
        e.send(0, &request, &mut vendors(&[(vendor, Answer::status(503))]));
    }
}

pub fn window_failures(e: &FakeEnvoy, unit_key: &str) -> u64 {
    let spec = crate::policy::config::WindowSpec::DEFAULT;
    load(&e.process.store, unit_key, spec)
        .map(|l| l.state.window.totals(e.main.now()).failures)
        .unwrap_or(0)
}
