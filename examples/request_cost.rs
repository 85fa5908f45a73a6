//! What the filter's own code costs per ordinary request, on the host, and
//! its parts (`make bench-floors` runs it; bench/README.md reads it).
//!
//! Drives whole JSON requests through the real contexts with the recording
//! fake host (`FakeEnvoy`, the bench's three-vendor default config), then
//! times the pure steps of the common path alone: reading the request body
//! (JSON handling) and planning the candidates. `perf record` on this
//! example splits the whole request between the fake and the filter's code
//! (bench/README.md). Inside Envoy the same code
//! runs as wasm in V8; `perf` there (bench/README.md) puts it at about 5 µs.

use llm_failover::policy::adapt::read_request;
use llm_failover::policy::config::{Config, Format};
use llm_failover::policy::plan::plan;
use llm_failover::proxy::fake::envoy::{Answer, Asked, FakeEnvoy, Request};
use std::hint::black_box;
use std::time::Instant;

const CONFIG: &str = r#"{"cluster_header":"x-llm-failover-cluster","vendors":[{"name":"anthropic","cluster":"anthropic"},
    {"name":"openai","cluster":"openai","priority":1},{"name":"xai","cluster":"xai","priority":2}]}"#;
const BODY: &[u8] =
    br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}]}"#;
const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1764064800,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}"#;

fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..n / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

fn main() {
    let n = 100_000;
    let request = Request::new("/v1/chat/completions", BODY);
    let answer = Answer::json(200, ANSWER);
    let mut upstream = |_: &Asked| answer.clone();

    let Ok(mut e) = FakeEnvoy::new(CONFIG, &["anthropic", "openai", "xai"], 1) else {
        eprintln!("config refused");
        std::process::exit(1);
    };
    e.set_now(1_000);
    let whole = per_call(n, || {
        let got = e.send(0, &request, &mut upstream);
        black_box(got.status);
    });

    let read = per_call(n, || {
        black_box(read_request(black_box(BODY)).is_ok());
    });
    let Ok(config) = Config::parse(CONFIG.as_bytes()) else {
        eprintln!("config refused");
        std::process::exit(1);
    };
    let planned = per_call(n, || {
        black_box(
            plan(&config, Some(Format::OpenAi), Some("gpt-4o-mini"))
                .map(|c| c.len())
                .unwrap_or(0),
        );
    });

    println!("one JSON chat completion through the filter's contexts, natively ({n} requests):");
    println!("  whole request, the fake host included  {:>7.0} ns", whole);
    println!("    of it: reading the body (JSON)       {:>7.0} ns", read);
    println!("    of it: planning the candidates       {:>7.0} ns", planned);
}
