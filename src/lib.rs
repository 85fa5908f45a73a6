//! llm-failover: an Envoy proxy-wasm filter that keeps LLM traffic on a
//! healthy vendor. Every module except `filter`, `host` and `metrics` is pure logic that
//! never touches the proxy: time and the shared store are passed in, so the
//! whole decision path is unit-tested on the host.

pub mod abi;
pub mod adapt;
pub mod batch;
pub mod choice;
pub mod classify;
pub mod codec;
pub mod config;
pub mod health;
pub mod notify;
pub mod plan;
pub mod ratelimit;
pub mod reply;
pub mod rescue;
pub mod sse;
pub mod store;
pub mod view;
pub mod window;

#[cfg(target_arch = "wasm32")]
mod filter;
#[cfg(target_arch = "wasm32")]
mod host;
#[cfg(target_arch = "wasm32")]
mod journey;
#[cfg(target_arch = "wasm32")]
mod metrics;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    filter::register();
}}
