//! Prometheus metrics: one registry per process, served as text at
//! `GET /metrics` on the admin listener (see [`crate::admin`]).
//!
//! Every gRPC server counts its calls with the names go-grpc-prometheus
//! gives them, so dashboards made for it work unchanged:
//! `grpc_server_started_total`, `grpc_server_handled_total` (with
//! `grpc_code`) and the `grpc_server_handling_seconds` histogram, labelled
//! by `grpc_type`, `grpc_service` and `grpc_method`. Labels stay bounded:
//! a path that is not a mesh RPC (see `mesh_proto::bindings`) is counted
//! under `unknown`, and no label ever holds an id, key or URL.
//!
//! `--metrics false` (`MESH_METRICS=0`) stops recording per call (the
//! series stay at zero; gauges read at scrape time still answer): what the
//! benchmark compares, to show what metrics cost.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mesh_proto::bindings;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use tonic::Code;

static ON: AtomicBool = AtomicBool::new(true);

/// Whether per-call metrics are recorded (`--metrics`, on by default).
#[inline]
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Turns per-call recording on or off (at start-up).
pub fn set_enabled(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// The process's registry (the prometheus crate's default one): every
/// metric of the process is registered here.
pub fn registry() -> &'static Registry {
    prometheus::default_registry()
}

/// Registers `metric` in the process's registry and returns it. A metric
/// is registered once (each lives in a `LazyLock`): a second registration of
/// one name is a programming error, reported at start-up.
pub fn register<M: prometheus::core::Collector + Clone + 'static>(metric: M) -> M {
    if let Err(err) = registry().register(Box::new(metric.clone())) {
        tracing::error!(error = %err, "cannot register a metric");
    }
    metric
}

/// The registry as Prometheus text (exposition format 0.0.4).
pub fn render() -> String {
    let mut out = Vec::new();
    if let Err(err) = TextEncoder::new().encode(&registry().gather(), &mut out) {
        tracing::error!(error = %err, "cannot encode metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One side's call metrics (`grpc_server_*` or `grpc_client_*`).
struct Calls {
    started: IntCounterVec,
    handled: IntCounterVec,
    handling: HistogramVec,
}

impl Calls {
    /// The three families of `side` (`server`, `client`), with their help texts.
    fn new(side: &str, help: [&str; 3]) -> Self {
        let labels = ["grpc_type", "grpc_service", "grpc_method"];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(IntCounterVec::new(Opts::new(format!("grpc_{side}_{name}"), help), labels).expect("valid metric"))
        };
        Calls {
            started: counter("started_total", help[0], &labels),
            handled: counter(
                "handled_total",
                help[1],
                &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            ),
            handling: register(
                HistogramVec::new(
                    HistogramOpts::new(format!("grpc_{side}_handling_seconds"), help[2]),
                    &labels,
                )
                .expect("valid metric"),
            ),
        }
    }

    fn started(&self, path: &str) -> [&'static str; 3] {
        if !enabled() {
            return ["", "", ""];
        }
        let labels = call_labels(path);
        self.started.with_label_values(&labels).inc();
        labels
    }

    fn handled(&self, labels: [&'static str; 3], code: Code, took: Duration) {
        if !enabled() {
            return;
        }
        let [kind, service, method] = labels;
        self.handled
            .with_label_values(&[kind, service, method, code_name(code)])
            .inc();
        self.handling.with_label_values(&labels).observe(took.as_secs_f64());
    }
}

static SERVER: LazyLock<Calls> = LazyLock::new(|| {
    Calls::new(
        "server",
        [
            "RPCs started on the server.",
            "RPCs completed on the server, regardless of success or failure.",
            "Response latency (seconds) of gRPC that had been application-level handled by the server.",
        ],
    )
});

static CLIENT: LazyLock<Calls> = LazyLock::new(|| {
    Calls::new(
        "client",
        [
            "RPCs started on the client (retries and hedges included in one).",
            "RPCs completed by the client, regardless of success or failure.",
            "Latency (seconds) of the gRPC until it is finished by the application.",
        ],
    )
});

/// The bounded labels of the call at `path`: (type, service, method).
fn call_labels(path: &str) -> [&'static str; 3] {
    match bindings::method(path) {
        Some(m) => [
            if m.server_streaming { "server_stream" } else { "unary" },
            m.service,
            m.method,
        ],
        None => ["unknown", "unknown", "unknown"],
    }
}

/// A call to `path` started on this server (its labels, for [`handled`]).
pub fn started(path: &str) -> [&'static str; 3] {
    SERVER.started(path)
}

/// The call with `labels` ended on this server with `code` after `took`.
pub fn handled(labels: [&'static str; 3], code: Code, took: Duration) {
    SERVER.handled(labels, code, took);
}

/// A client call (retries and hedges included) to `path` started.
pub fn client_started(path: &str) -> [&'static str; 3] {
    CLIENT.started(path)
}

/// The client call with `labels` ended with `code` after `took`.
pub fn client_handled(labels: [&'static str; 3], code: Code, took: Duration) {
    CLIENT.handled(labels, code, took);
}

/// A status code as gRPC's own implementations spell it (`OK`,
/// `NotFound`, ...), the values go-grpc-prometheus puts in `grpc_code`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_under_bounded_labels() {
        let labels = started("/mesh.counter.v1.CounterService/Increment");
        assert_eq!(labels, ["unary", "mesh.counter.v1.CounterService", "Increment"]);
        handled(labels, Code::Ok, Duration::from_millis(3));
        // Any other path is one series, whatever the caller sends.
        assert_eq!(started("/evil.Service/x-1234"), ["unknown", "unknown", "unknown"]);
        assert_eq!(started("/evil.Service/x-5678"), ["unknown", "unknown", "unknown"]);
        let text = render();
        assert!(
            text.contains(
                "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Increment\",\
                 grpc_service=\"mesh.counter.v1.CounterService\",grpc_type=\"unary\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "grpc_server_started_total{grpc_method=\"unknown\",grpc_service=\"unknown\",grpc_type=\"unknown\"} 2"
            ),
            "{text}"
        );
        assert!(!text.contains("evil"), "{text}");
    }

    #[test]
    fn every_code_has_its_grpc_name() {
        for n in 0..=16 {
            let code = Code::from(n);
            assert_ne!(code_name(code), "", "{code:?}");
        }
        assert_eq!(code_name(Code::Cancelled), "Canceled");
    }
}
