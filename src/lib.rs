//! onbehalf: policy-governed delegation for AI agents, enforced at the proxy.
//!
//! An Envoy external-authorization (gRPC) server that verifies RFC 8693 delegation tokens,
//! decodes the `sub`/`act` chain, and lets Rego policy decide.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod admin;
pub mod app;
pub mod authn;
pub mod authz;
pub mod cache;
pub mod check;
pub mod config;
pub mod decision;
pub mod grpc;
pub mod input;
pub mod jose;
pub mod mint;
pub mod policy;
pub mod telemetry;
pub mod watch;
pub mod workers;
