//! What onbehalf tells operators: log lines, metrics (`/metrics`) and traces.

mod histogram;
mod metrics;

use crate::config::{LogConfig, LogFormat};

pub use histogram::Latency;
pub use metrics::{
    CONTENT_TYPE, DecisionLogCounts, EvalEngine, ExchangeResult, Metrics, MintResult, Scrape,
};

/// Installs the global `tracing` subscriber: JSON lines or text, to stderr.
pub fn init_logging(config: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests, `check` after `serve` set-up) keeps the first subscriber.
    let _ = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
