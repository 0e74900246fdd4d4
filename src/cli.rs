//! The library half of the CLI: what `onbehalf check` (and the load tool) share with tests
//! and benchmarks. Parsing arguments stays in `main.rs`.

pub mod check;
pub mod exchange;
