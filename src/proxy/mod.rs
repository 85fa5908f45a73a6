//! The proxy adapter: everything that talks to Envoy.

pub mod abi;
#[cfg(target_arch = "wasm32")]
mod filter;
#[cfg(target_arch = "wasm32")]
mod host;
#[cfg(target_arch = "wasm32")]
mod journey;
#[cfg(target_arch = "wasm32")]
mod metrics;

#[cfg(target_arch = "wasm32")]
pub fn register() {
    filter::register();
}
