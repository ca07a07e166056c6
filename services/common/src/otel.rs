//! Traces over OTLP/gRPC (OpenTelemetry), off unless `--otlp-endpoint`
//! (or `OTEL_EXPORTER_OTLP_ENDPOINT`) is given. Off, nothing is recorded
//! and the cost is one relaxed atomic load per call.
//!
//! On, three places make spans, always with the W3C trace that
//! [`crate::tracecontext`] already carries across every hop:
//!
//! - the gateway's edge: one server span per request (`GET /items/{id}`),
//!   continuing the client's `traceparent` or starting the trace;
//! - the gateway's calls: one client span per attempt, retries and hedges
//!   each their own, whose id is the `traceparent` the attempt sends;
//! - each service's call layer: one server span per RPC, child of that
//!   attempt.
//!
//! Sampling is parent-based: a trace the client sampled (or not) stays so;
//! a trace the gateway starts is sampled with `--trace-sample-ratio`
//! (default 1). Spans are batched and exported by the SDK's batch
//! processor (its `OTEL_BSP_*` variables apply) on the process's own tokio
//! runtime. Every span of a request carries its id (`mesh.request_id`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter};

use crate::tracecontext::TraceId;

/// The tracing flags every binary takes (flattened into its config).
#[derive(clap::Args, Clone, Debug)]
pub struct OtelArgs {
    /// Export traces over OTLP/gRPC to this collector (e.g.
    /// `http://otel-collector:4317`). Without it nothing is recorded.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// The share of new traces recorded (0 to 1); a trace a client started
    /// keeps the client's decision.
    #[arg(long, env = "MESH_TRACE_SAMPLE_RATIO", default_value_t = 1.0,
        value_parser = parse_ratio)]
    pub trace_sample_ratio: f64,
}

impl Default for OtelArgs {
    fn default() -> Self {
        OtelArgs {
            otlp_endpoint: None,
            trace_sample_ratio: 1.0,
        }
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a number from 0 to 1")),
    }
}

static ON: AtomicBool = AtomicBool::new(false);
/// `--trace-sample-ratio` as a threshold on a trace id's low 64 bits.
static KEEP_BELOW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether spans are being recorded in this process.
#[inline]
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Exports this process's spans while held; dropping it (at the end of
/// `main`) sends what is left.
#[must_use = "spans stop being exported when the guard drops"]
pub struct OtelGuard(Option<SdkTracerProvider>);

impl OtelGuard {
    /// Sends every span still queued, then stops (off the async runtime:
    /// the export itself runs on it).
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.0.take() {
            ON.store(false, Ordering::Relaxed);
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

impl Drop for OtelGuard {
    /// Only when [`OtelGuard::shutdown`] was not reached (start-up failed
    /// after tracing began): the last spans are sent from a thread of their
    /// own, not waited for, since waiting here could hold the very runtime
    /// worker the export needs.
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            ON.store(false, Ordering::Relaxed);
            std::thread::spawn(move || provider.shutdown());
        }
    }
}

/// Starts exporting when `args` name an endpoint (and returns `None` when
/// not). Must run inside the tokio runtime that will carry the exports.
pub fn init(args: &OtelArgs, service: &str) -> anyhow::Result<Option<OtelGuard>> {
    let Some(endpoint) = args.otlp_endpoint.as_deref().filter(|e| !e.trim().is_empty()) else {
        return Ok(None);
    };
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .with_context(|| format!("--otlp-endpoint {endpoint:?}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_string())
        .build();
    // The provider hands its resource to the exporter it is given, which
    // is the wrapper below: the inner one is told here.
    exporter.set_resource(&resource);
    let exporter = OnRuntime {
        inner: std::sync::Arc::new(exporter),
        runtime: tokio::runtime::Handle::current(),
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            args.trace_sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    if TRACER.set(provider.tracer("mesh")).is_err() {
        anyhow::bail!("tracing was already started in this process");
    }
    KEEP_BELOW.store(threshold(args.trace_sample_ratio), Ordering::Relaxed);
    ON.store(true, Ordering::Relaxed);
    tracing::info!(endpoint, ratio = args.trace_sample_ratio, "exporting traces over OTLP");
    Ok(Some(OtelGuard(Some(provider))))
}

/// The OTLP exporter, run on the process's tokio runtime: the SDK's batch
/// processor calls it from a thread of its own, where tonic's connection
/// (which needs a tokio reactor) cannot be driven.
#[derive(Debug)]
struct OnRuntime {
    inner: std::sync::Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
}

impl SpanExporter for OnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = self.inner.clone();
        match self.runtime.spawn(async move { inner.export(batch).await }).await {
            Ok(result) => result,
            Err(e) => Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(e.to_string())),
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
}

/// The low-64-bit threshold under which a trace is kept at `ratio`.
fn threshold(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else {
        (ratio.max(0.0) * u64::MAX as f64) as u64
    }
}

/// Whether `--trace-sample-ratio` keeps this trace (by its id, so every
/// process that asks agrees).
pub fn keeps(trace_id: TraceId) -> bool {
    let low = trace_id.0 as u64;
    let below = KEEP_BELOW.load(Ordering::Relaxed);
    below == u64::MAX || low < below
}

/// A span being recorded. Ends when [`Active::end`] is called or when dropped.
pub struct Active(opentelemetry_sdk::trace::Span);

impl Active {
    /// Its trace and its own id: what a call it makes sends as `traceparent`.
    pub fn ids(&self) -> (TraceId, u64, u8) {
        let sc = self.0.span_context();
        let trace = u128::from_be_bytes(sc.trace_id().to_bytes());
        let span = u64::from_be_bytes(sc.span_id().to_bytes());
        (TraceId(trace), span, sc.trace_flags().to_u8())
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        self.0.set_attribute(KeyValue::new(key, value));
    }

    pub fn rename(&mut self, name: String) {
        self.0.update_name(name);
    }

    /// Marks the span failed, with `message`.
    pub fn fail(&mut self, message: String) {
        self.0.set_status(Status::error(message));
    }

    pub fn end(mut self) {
        self.0.end();
    }
}

/// Where a new span hangs: a parent span (remote, from a `traceparent`, or
/// local), or nothing (a new trace).
#[derive(Clone, Copy, Debug)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: u64,
    pub flags: u8,
    pub remote: bool,
}

/// Starts a span of `kind` named `name` under `parent`, or `None` when
/// tracing is off or the trace is not sampled (nothing to record; the
/// caller propagates the trace as before).
pub fn start(name: String, kind: SpanKind, parent: Option<Parent>, request_id: &str) -> Option<Active> {
    if !enabled() {
        return None;
    }
    let tracer = TRACER.get()?;
    let cx = match parent {
        Some(p) => Context::new().with_remote_span_context(p.span_context()),
        None => Context::new(),
    };
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes([KeyValue::new("mesh.request_id", request_id.to_string())])
        .start_with_context(tracer, &cx);
    span.span_context().is_sampled().then_some(Active(span))
}

/// Starts the root span of a new trace, linked to `link` (work done later
/// on behalf of a request, such as a queued task's attempt): `None` when
/// tracing is off or the new trace is not sampled.
pub fn start_linked(name: String, kind: SpanKind, link: Option<Parent>) -> Option<Active> {
    if !enabled() {
        return None;
    }
    let tracer = TRACER.get()?;
    let links = link
        .map(|l| vec![opentelemetry::trace::Link::with_context(l.span_context())])
        .unwrap_or_default();
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_links(links)
        .start_with_context(tracer, &Context::new());
    span.span_context().is_sampled().then_some(Active(span))
}

impl Parent {
    fn span_context(&self) -> SpanContext {
        SpanContext::new(
            opentelemetry::trace::TraceId::from(self.trace_id.0),
            SpanId::from(self.span_id),
            TraceFlags::new(self.flags),
            self.remote,
            TraceState::default(),
        )
    }

    /// The span a `traceparent` names.
    pub fn of_traceparent(value: &str) -> Option<Parent> {
        let p = crate::tracecontext::TraceParent::parse(value.as_bytes())?;
        Some(Parent {
            trace_id: p.trace_id,
            span_id: p.parent_id,
            flags: p.flags,
            remote: true,
        })
    }
}

pub use opentelemetry::trace::SpanKind as Kind;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_records_nothing() {
        assert!(!enabled());
        let parent = Parent {
            trace_id: TraceId(1),
            span_id: 2,
            flags: 1,
            remote: true,
        };
        assert!(start("x".into(), SpanKind::Server, Some(parent), "r").is_none());
        assert_eq!(parse_ratio("0.1"), Ok(0.1));
        assert!(parse_ratio("1.5").is_err() && parse_ratio("x").is_err());
        assert_eq!(threshold(1.0), u64::MAX);
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(0.5), u64::MAX / 2 + 1);
        // Off, every trace is kept (nothing is recorded anyway).
        assert!(keeps(TraceId(0)) && keeps(TraceId(u128::MAX)));
    }
}
