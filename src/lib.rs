//! llm-failover: an Envoy proxy-wasm filter that keeps LLM traffic on a healthy vendor.
//!
//! Two layers. `policy` decides everything and never touches the proxy:
//! time, the shared store and what the proxy saw are passed in, so every
//! decision is unit-tested on the host. `proxy` is the adapter: Envoy's
//! callbacks, each of which asks `policy` and turns the answer into host
//! calls, all made through the `proxy::host::Host` trait.

pub mod policy;
pub mod proxy;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy::register();
}}
