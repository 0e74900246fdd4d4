//! What onbehalf tells operators: log lines, metrics (`/metrics`) and traces.

mod histogram;
mod metrics;
pub mod traces;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogConfig, LogFormat};

pub use histogram::Latency;
pub use metrics::{
    CONTENT_TYPE, DecisionLogCounts, EvalEngine, ExchangeResult, Metrics, MintResult, Scrape,
};

/// Installs the global `tracing` subscriber for `serve`: log lines (JSON or text, to stderr)
/// and, when `telemetry.traces` is on, the OpenTelemetry layer. Must run inside the Tokio
/// runtime. The guard exports what is left at shutdown.
pub fn init(config: &Config) -> anyhow::Result<Telemetry> {
    let env = |k: &str| std::env::var(k).ok();
    let provider = traces::provider(&config.telemetry.traces, &env)?;
    let otel = provider.as_ref().map(traces::layer);
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(log_layer(&config.log))
        .with(otel)
        .try_init();
    if provider.is_some() {
        let t = &config.telemetry.traces;
        // Scheme, host and port only: a URL's user info or query may hold a credential.
        let endpoint = t
            .endpoint
            .as_deref()
            .and_then(|e| reqwest::Url::parse(e).ok())
            .map(|u| {
                let host = u.host_str().unwrap_or_default();
                match u.port() {
                    Some(port) => format!("{}://{host}:{port}", u.scheme()),
                    None => format!("{}://{host}", u.scheme()),
                }
            });
        tracing::info!(
            traces.endpoint = endpoint.as_deref().unwrap_or("(from OTEL_EXPORTER_OTLP_*)"),
            traces.ratio = t.sampler.ratio,
            "Exporting traces over OTLP"
        );
    }
    Ok(Telemetry { provider })
}

/// Installs the global `tracing` subscriber with log lines only (the CLI, tests).
pub fn init_logging(config: &LogConfig) {
    let _ = tracing_subscriber::registry()
        .with(log_layer(config))
        .try_init();
}

/// Log lines: JSON or text, to stderr, filtered by `log.level`. onbehalf's trace spans are
/// for the exporter alone, never in a log line.
fn log_layer<S>(config: &LogConfig) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let mut filter = EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    if let Ok(off) = format!("{}=off", traces::TARGET).parse() {
        filter = filter.add_directive(off);
    }
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match config.format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => fmt.with_filter(filter).boxed(),
    }
}

/// Flushes traces at shutdown.
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter (off the runtime's threads:
    /// the SDK waits for its export thread).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "Exporting the last traces failed");
            }
        }
    }
}
