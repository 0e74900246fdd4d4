//! Integration tests, one binary: real gRPC over loopback, real HTTP servers, real files,
//! the real binary, and a real Envoy.

mod common;

mod cache;
mod cli;
mod decision_logs;
mod deploy;
mod envoy;
mod exchange;
mod grpc;
mod hostile;
mod mint;
mod opa_envoy;
mod policy;
mod properties;
mod telemetry;
