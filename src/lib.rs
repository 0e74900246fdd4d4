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

// Modules in layer order, lowest first: each imports only modules above it in this list
// (`crate::x` outside `tests.rs` files), never one below. `src/tests.rs` checks it. One
// declaration per paragraph, so that rustfmt keeps the order.
//
//   jose, ids, config, watch, serving, readiness: JOSE keys and algorithms, random ids,
//     configuration, file watching, serving threads, the readiness latch (no domain knowledge)
//   identity, input: who a token names; the edge in (CheckRequest -> input document)
//   cache: generic digest -> value caches with deadlines
//   authn: bearer tokens -> verified identities
//   policy: compiled Rego, bundles, read-set analysis, verdicts
//   state: one snapshot of the policy and every issuer's keys per Check
//   key: the decision-cache key from the policy's read set, the input and the identity
//   decision, telemetry: the edge out (Decision -> CheckResponse); counters and logging
//   decision_log: decision logs in OPA's shape, written off the request path
//   mint: just-in-time upstream tokens
//   pipeline: the phase order of one Check
//   exchange: RFC 8693 token exchange, over the pipeline's verifier and policy
//   grpc, cli, admin, app: serving, the CLI's library half, the admin server, wiring
//   demo: the quickstart's gRPC upstream, generated from proto/
//   testing: one token signer for every test harness (imports nothing of the crate)
pub mod jose;

pub mod ids;

pub mod config;

pub mod watch;

pub mod serving;

pub mod readiness;

pub mod identity;

pub mod input;

pub mod cache;

pub mod authn;

pub mod policy;

pub mod state;

pub mod key;

pub mod decision;

pub mod telemetry;

pub mod decision_log;

pub mod mint;

pub mod pipeline;

pub mod exchange;

pub mod grpc;

pub mod cli;

pub mod admin;

pub mod app;

pub mod demo;

#[doc(hidden)]
pub mod testing;

#[cfg(test)]
mod tests;
