//! The policy layer: every decision, pure; time, the store and what Envoy showed are passed in.

pub mod adapt;
pub mod admin;
pub mod answer;
pub mod batch;
pub mod choice;
pub mod classify;
pub mod codec;
pub mod config;
pub mod health;
pub mod journey;
pub mod notify;
pub mod observe;
pub mod outbound;
pub mod plan;
pub mod ratelimit;
pub mod record;
pub mod relay;
pub mod reply;
pub mod rescue;
pub mod resume;
pub mod sse;
pub mod store;
pub mod view;
pub mod window;
