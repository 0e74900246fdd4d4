//! OpenTelemetry traces: a span per Check (and per token exchange), with a child per phase,
//! exported over OTLP in batches by the SDK's own thread.
//!
//! Spans are `tracing` spans of target [`TARGET`], which only the OpenTelemetry layer sees
//! (log lines never carry them). Whether a Check is traced is decided before any span is
//! built, from its parent — Envoy's `traceparent` (or B3) on the gRPC call, else on the
//! request it asks about — or, without one, by `sampler.ratio`. A Check that is not traced
//! builds nothing: every span is `Span::none()`, and recording on it does nothing. With
//! traces off (the default) not even the parent is read.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::{OtlpProtocol, Propagator, TracesConfig};

/// The `tracing` target of onbehalf's trace spans.
pub const TARGET: &str = "onbehalf::trace";

/// What a Check needs to decide whether it is traced; set once, when traces are on.
#[derive(Debug)]
struct Settings {
    ratio: f64,
    tracecontext: bool,
    b3: bool,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Whether traces are on in this process.
pub fn enabled() -> bool {
    SETTINGS.get().is_some()
}

/// The exporter and the tracer provider for `config`, when traces are on (an endpoint in the
/// config or in the standard environment variables). Must run inside the Tokio runtime (the
/// gRPC exporter's channel lives there).
pub(super) fn provider(
    config: &TracesConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<SdkTracerProvider>> {
    let from_env = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|k| env(k).is_some_and(|v| !v.is_empty()));
    if config.endpoint.is_none() && !from_env {
        return Ok(None);
    }
    let protocol = match config.protocol {
        Some(p) => p,
        None => match [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ]
        .iter()
        .find_map(|k| env(k))
        .as_deref()
        {
            None | Some("grpc") => OtlpProtocol::Grpc,
            Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some(other) => anyhow::bail!(
                "OTEL_EXPORTER_OTLP_PROTOCOL: {other:?} is not supported (grpc or http/protobuf)"
            ),
        },
    };
    let endpoint_error = |e: opentelemetry_otlp::ExporterBuildError| {
        anyhow::anyhow!("telemetry.traces.endpoint: cannot export traces there: {e}")
    };
    let exporter = match protocol {
        OtlpProtocol::Grpc => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_timeout(config.timeout.0);
            if let Some(endpoint) = &config.endpoint {
                b = b.with_endpoint(endpoint.clone());
            }
            b.build().map_err(endpoint_error)?
        }
        OtlpProtocol::HttpProtobuf => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(config.timeout.0);
            if let Some(endpoint) = &config.endpoint {
                // As the standard variable: the signal's path goes after the base URL.
                let base = endpoint.trim_end_matches('/');
                b = b.with_endpoint(match base.ends_with("/v1/traces") {
                    true => base.to_string(),
                    false => format!("{base}/v1/traces"),
                });
            }
            b.build().map_err(endpoint_error)?
        }
    };
    // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read by the resource's detectors.
    let mut resource = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("onbehalf");
    }
    let resource = resource
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        // Which Checks are traced is decided before their spans are built (`check_span`);
        // a span that exists is exported.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let _ = SETTINGS.set(Settings {
        ratio: config.sampler.ratio,
        tracecontext: config.propagators.contains(&Propagator::Tracecontext),
        b3: config.propagators.contains(&Propagator::B3),
    });
    Ok(Some(provider))
}

/// The `tracing` layer that turns onbehalf's trace spans into OpenTelemetry spans.
pub(super) fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use tracing_subscriber::Layer as _;
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("onbehalf"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        .with_tracked_inactivity(false)
        // Nothing inside a Check reads OpenTelemetry's current context (onbehalf propagates
        // nothing downstream): entering a span need not attach one.
        .with_context_activation(false)
        // Only onbehalf's trace spans: no log event becomes a span event.
        .with_filter(
            tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::TRACE),
        )
}

/// Where a parent span's context is read from: header names are lowercase.
pub trait Carrier {
    fn get(&self, name: &str) -> Option<&str>;
}

impl Carrier for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        HashMap::get(self, name).map(String::as_str)
    }
}

impl Carrier for tonic::metadata::MetadataMap {
    fn get(&self, name: &str) -> Option<&str> {
        self.get(name)?.to_str().ok()
    }
}

impl Carrier for axum::http::HeaderMap {
    fn get(&self, name: &str) -> Option<&str> {
        self.get(name)?.to_str().ok()
    }
}

struct AsExtractor<'a>(&'a dyn Carrier);

impl Extractor for AsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }
    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// The parent span's context in `carrier`, with the parent's sampling decision (`None`: B3
/// without one, left to this side).
fn parent_in(settings: &Settings, carrier: &dyn Carrier) -> Option<(SpanContext, Option<bool>)> {
    if settings.tracecontext && carrier.get("traceparent").is_some() {
        let cx = TraceContextPropagator::new().extract(&AsExtractor(carrier));
        let parent = cx.span().span_context().clone();
        if parent.is_valid() {
            let sampled = parent.is_sampled();
            return Some((parent, Some(sampled)));
        }
    }
    if settings.b3 {
        return b3(carrier);
    }
    None
}

/// Zipkin's B3, single header (`b3: traceid-spanid[-sampled[-parentspanid]]`) or multiple
/// (`x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`, `x-b3-flags`).
fn b3(carrier: &dyn Carrier) -> Option<(SpanContext, Option<bool>)> {
    let (trace, span, sampled) = match carrier.get("b3") {
        // A sampling decision alone: "0" is the one a tracer sends on (never traced here).
        Some("0") => return Some((SpanContext::empty_context(), Some(false))),
        Some(single) => {
            let mut parts = single.split('-');
            let trace = parts.next()?;
            let span = parts.next()?;
            (trace, span, parts.next())
        }
        // A decision not to trace, without ids.
        None if carrier.get("x-b3-traceid").is_none()
            && matches!(carrier.get("x-b3-sampled"), Some("0" | "false")) =>
        {
            return Some((SpanContext::empty_context(), Some(false)));
        }
        None => {
            let debug = carrier.get("x-b3-flags") == Some("1");
            let sampled = match debug {
                true => Some("d"),
                false => carrier.get("x-b3-sampled"),
            };
            (
                carrier.get("x-b3-traceid")?,
                carrier.get("x-b3-spanid")?,
                sampled,
            )
        }
    };
    let sampled = match sampled {
        None => None,
        Some("1" | "d" | "true") => Some(true),
        Some("0" | "false") => Some(false),
        Some(_) => return None,
    };
    let trace = match trace.len() {
        32 => TraceId::from_hex(trace).ok()?,
        16 => TraceId::from_hex(&format!("{:0>32}", trace)).ok()?,
        _ => return None,
    };
    if span.len() != 16 {
        return None;
    }
    let span = SpanId::from_hex(span).ok()?;
    let flags = match sampled {
        Some(true) => TraceFlags::SAMPLED,
        _ => TraceFlags::default(),
    };
    let cx = SpanContext::new(trace, span, flags, true, TraceState::default());
    cx.is_valid().then_some((cx, sampled))
}

/// Whether a trace starts here: `ratio` of the time.
fn roll(ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x9e37_79b9_7f4a_7c15);
            h.finish() | 1
        });
    }
    // xorshift64*: enough to pick a sample, never used for anything secret.
    let x = STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    });
    ((x >> 11) as f64 / (1u64 << 53) as f64) < ratio
}

/// The parent found in the first carrier that has one, and whether to trace.
fn decide(first: &dyn Carrier, then: Option<&dyn Carrier>) -> Option<Option<SpanContext>> {
    let settings = SETTINGS.get()?;
    let parent = parent_in(settings, first).or_else(|| then.and_then(|c| parent_in(settings, c)));
    match parent {
        Some((cx, Some(true))) => Some(Some(cx)),
        Some((_, Some(false))) => None,
        Some((cx, None)) => roll(settings.ratio).then(|| {
            // The decision made here is the parent's from now on.
            Some(cx.with_trace_flags_sampled())
        }),
        None => roll(settings.ratio).then_some(None),
    }
}

trait SampledFlag {
    fn with_trace_flags_sampled(self) -> SpanContext;
}

impl SampledFlag for SpanContext {
    fn with_trace_flags_sampled(self) -> SpanContext {
        SpanContext::new(
            self.trace_id(),
            self.span_id(),
            TraceFlags::SAMPLED,
            true,
            self.trace_state().clone(),
        )
    }
}

fn adopt(span: &Span, parent: Option<SpanContext>) {
    if let Some(parent) = parent {
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
}

/// The span of one Check, continuing the trace of its parent: Envoy's span of the ext_authz
/// call (the gRPC metadata), else the request's (its headers). `Span::none()` when traces are
/// off or this Check is not sampled.
pub fn check_span(metadata: &dyn Carrier, headers: Option<&dyn Carrier>) -> Span {
    let Some(parent) = decide(metadata, headers) else {
        return Span::none();
    };
    let span = tracing::info_span!(
        target: TARGET,
        "check",
        otel.name = "onbehalf.check",
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = "envoy.service.auth.v3.Authorization",
        rpc.method = "Check",
        http.request.method = Empty,
        onbehalf.decision = Empty,
        onbehalf.reason = Empty,
        onbehalf.status = Empty,
        onbehalf.subject = Empty,
        onbehalf.actor = Empty,
        onbehalf.depth = Empty,
        onbehalf.policy_revision = Empty,
        onbehalf.decision_id = Empty,
        onbehalf.cached = Empty,
        onbehalf.dry_run = Empty,
    );
    adopt(&span, parent);
    span
}

/// The span of one token exchange (`POST /token`), continuing its caller's trace.
pub fn exchange_span(headers: &axum::http::HeaderMap) -> Span {
    let Some(parent) = decide(headers, None) else {
        return Span::none();
    };
    let span = tracing::info_span!(
        target: TARGET,
        "exchange",
        otel.name = "onbehalf.token_exchange",
        otel.kind = "server",
        onbehalf.result = Empty,
        onbehalf.subject = Empty,
        onbehalf.actor = Empty,
    );
    adopt(&span, parent);
    span
}

/// A span for one phase of a traced Check or exchange: a child of the current span when
/// that is one of onbehalf's, else `Span::none()`.
pub fn phase(name: &'static str) -> Span {
    if !enabled() {
        return Span::none();
    }
    let current = Span::current();
    if current.metadata().is_none_or(|m| m.target() != TARGET) {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        parent: &current,
        "phase",
        otel.name = name,
        onbehalf.cache = Empty,
        onbehalf.engine = Empty,
        onbehalf.result = Empty,
        onbehalf.moved = Empty,
    )
}

#[cfg(test)]
mod tests;
