//! llmvisor: a systemd-native supervisor and OpenAI-compatible router for
//! self-hosted LLM inference. See `DESIGN.md` for how the modules fit.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod fleet;
pub mod gpu;
pub mod proxy;
pub mod router;
pub mod store;
pub mod telemetry;
pub mod units;
