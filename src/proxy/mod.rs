//! The proxy adapter: everything that talks to Envoy, all through `Host`.
//!
//! Each callback asks the policy and maps its answer to host calls.

pub mod abi;
pub mod admin;
#[cfg(not(target_arch = "wasm32"))]
pub mod fake;
pub mod host;
pub mod plugin;
pub mod relay;
pub mod rescue;
pub mod resume;
pub mod root;
pub mod sdk;
pub mod stats;
pub mod stream;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "wasm32")]
pub mod wasm;

#[cfg(target_arch = "wasm32")]
pub use sdk::register;
