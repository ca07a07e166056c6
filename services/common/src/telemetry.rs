//! Logging: the subscriber every binary installs once at start-up, and the
//! per-call context that ties a log line to its request.
//!
//! # What is logged
//!
//! By default nothing per request: a successful HTTP request or RPC writes no
//! line (at tens of thousands of requests a second, a line each costs a
//! third of the throughput and fills a disk in hours). What is still logged,
//! at WARN, each line with the call's `request_id`:
//!
//! - a request that ends with a 5xx (the gateway), an RPC that ends with a
//!   server-fault gRPC code (`UNKNOWN`, `DEADLINE_EXCEEDED`, `INTERNAL`,
//!   `UNAVAILABLE`, `DATA_LOSS`), when the call has not already logged a
//!   WARN or ERROR line of its own (which then says more). 4xx and client
//!   codes are the caller's mistakes: they are not logged, so a client
//!   cannot flood the log;
//! - a request or RPC slower than `MESH_SLOW_MS`: `slow request` (gateway),
//!   `slow call` (services), with `latency_ms`.
//!
//! # Settings, read once by [`init`]
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `RUST_LOG` | `info` | levels per target ([`EnvFilter`] syntax) |
//! | `MESH_ACCESS_LOG` | off | `1` turns the access log on: one INFO line per HTTP request (`response`, gateway) and per RPC (`rpc done`, services), under the target [`ACCESS`] (`access`), with method, path or status, `latency_ms` and `request_id`. This variable is the one switch: whatever `RUST_LOG` says, the `access` target is on exactly when it is `1` |
//! | `MESH_SLOW_MS` | `1000` | threshold of the `slow request` / `slow call` WARN lines, access log or not; `0` turns them off |
//! | `MESH_LOG_ANSI` | colour when stderr is a terminal (and `NO_COLOR` is unset) | `0` / `1` force colours off / on |
//!
//! # Request ids without spans
//!
//! The gateway's edge layer and the services' [`crate::rpc`] layer run each
//! call inside [`scope`], a tokio task-local holding its request id; the
//! formatter appends ` request_id=<id>` to every line logged inside it (the
//! call's own lines, a route's or a store's warnings, its end line). That
//! costs no tracing work on the fast path: no span is created, entered or
//! formatted per call, and a call that logs nothing does nothing here but
//! swap one thread-local per poll. Work a call spawns onto another task
//! leaves the scope (as it would leave a span) and logs without the id.
//!
//! # Writer
//!
//! Lines are formatted on the thread that logs them and written to stderr by
//! one background thread (`tracing_appender::non_blocking`), so a slow stderr
//! (a full pipe, a slow terminal) never stalls the async runtime. Its queue
//! holds [`QUEUE_LINES`] lines. Only when stderr cannot keep up for that long
//! does a logging thread wait for room: no line is ever dropped (a lost
//! error line costs an operator more than a brief wait, and with the access
//! log off by default only warnings and errors are written per request). [`init`]
//! returns the [`LogGuard`] that flushes the queue when dropped: keep it
//! until `main` returns, so the last lines (`gateway stopped ...`) are written.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use tracing::{Event, Level, Subscriber};

pub use crate::tracecontext::TraceId;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

/// The target of access-log lines (`tracing::info!(target: ACCESS, ...)`).
pub const ACCESS: &str = "access";

/// Lines the non-blocking writer queues before it drops new ones.
pub const QUEUE_LINES: usize = 16_384;

const DEFAULT_SLOW_MS: u64 = 1000;

static SLOW_MS: AtomicU64 = AtomicU64::new(DEFAULT_SLOW_MS);

/// How lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event: time, level, target, message,
    /// `key=value` fields.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`,
    /// `message`, the event's fields, `spans`, and inside a call
    /// `trace_id`, `request_id` and `principal`.
    Json,
}

/// The logging and tracing flags every binary takes (flattened into its config).
#[derive(clap::Args, Clone, Debug)]
pub struct LogArgs {
    /// How log lines are written: `text` or `json` (one object per line).
    #[arg(long, env = "MESH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub otel: crate::otel::OtelArgs,

    /// Record per-call metrics (served at /metrics on the admin listener);
    /// `false` leaves their series at zero.
    #[arg(long, env = "MESH_METRICS", default_value_t = true, action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new())]
    pub metrics: bool,
}

impl Default for LogArgs {
    /// What a binary gets with no flags: text logs, no traces, metrics on.
    fn default() -> Self {
        LogArgs {
            log_format: LogFormat::Text,
            otel: crate::otel::OtelArgs::default(),
            metrics: true,
        }
    }
}

/// The settings [`init`] reads from the environment.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `RUST_LOG`; `None` (or invalid) means `info`.
    pub rust_log: Option<String>,
    /// `MESH_ACCESS_LOG=1`.
    pub access_log: bool,
    /// `MESH_SLOW_MS`; `0` means never.
    pub slow_ms: u64,
    /// Colours (text only).
    pub ansi: bool,
    /// `--log-format` (`MESH_LOG_FORMAT`).
    pub format: LogFormat,
}

impl Settings {
    /// Reads `RUST_LOG`, `MESH_ACCESS_LOG`, `MESH_SLOW_MS` and `MESH_LOG_ANSI`.
    /// Unparsable values fall back to the defaults (the second element names them).
    pub fn from_env() -> (Settings, Vec<String>) {
        let mut problems = Vec::new();
        let mut flag = |name: &str| match std::env::var(name).ok()?.trim() {
            "" => None,
            "1" | "true" | "yes" | "on" => Some(true),
            "0" | "false" | "no" | "off" => Some(false),
            other => {
                problems.push(format!("{name}={other:?} is not 0 or 1; ignored"));
                None
            }
        };
        let access_log = flag("MESH_ACCESS_LOG").unwrap_or(false);
        let ansi = flag("MESH_LOG_ANSI").unwrap_or_else(|| {
            std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        });
        let slow_ms = match std::env::var("MESH_SLOW_MS") {
            Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| {
                problems.push(format!(
                    "MESH_SLOW_MS={v:?} is not a whole number of milliseconds; using {DEFAULT_SLOW_MS}"
                ));
                DEFAULT_SLOW_MS
            }),
            _ => DEFAULT_SLOW_MS,
        };
        let rust_log = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
        let settings = Settings {
            rust_log,
            access_log,
            slow_ms,
            ansi,
            format: LogFormat::Text,
        };
        (settings, problems)
    }

    /// The level filter: `RUST_LOG` (default `info`), with the `access` target
    /// set by [`Settings::access_log`] alone.
    pub fn filter(&self) -> EnvFilter {
        let base = self
            .rust_log
            .as_deref()
            .and_then(|s| EnvFilter::try_new(s).ok())
            .unwrap_or_else(|| EnvFilter::new("info"));
        let access = if self.access_log { "access=info" } else { "access=off" };
        base.add_directive(access.parse().expect("a valid directive"))
    }
}

/// Keeps the background log writer running; dropping it writes out every
/// queued line (waiting up to a second) and stops the writer. Hold it for the
/// whole of `main`: `let _log = telemetry::init();`.
#[must_use = "logging stops when the guard drops: keep it until main returns (`let _log = init();`)"]
pub struct LogGuard {
    worker: Option<WorkerGuard>,
    dropped: Option<ErrorCounter>,
}

impl fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogGuard")
            .field("active", &self.worker.is_some())
            .finish()
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        // Flush first: the worker writes every line queued so far.
        drop(self.worker.take());
        let dropped = self.dropped.as_ref().map_or(0, ErrorCounter::dropped_lines);
        if dropped > 0 {
            eprintln!(
                "WARN {}: {dropped} log lines were dropped because stderr did not keep up",
                module_path!()
            );
        }
    }
}

/// Installs the subscriber, writing lines as `format` says (see the module
/// docs for what it logs and the environment it reads). A second call in
/// one process installs nothing and returns an inert guard.
pub fn init(format: LogFormat) -> LogGuard {
    let (mut settings, problems) = Settings::from_env();
    settings.format = format;
    SLOW_MS.store(settings.slow_ms, Ordering::Relaxed);
    let stderr = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let (writer, worker) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("log-writer")
        .finish(stderr);
    let dropped = writer.error_counter();
    match tracing::subscriber::set_global_default(subscriber(&settings, writer)) {
        Ok(()) => {
            for problem in problems {
                tracing::warn!("{problem}");
            }
            LogGuard {
                worker: Some(worker),
                dropped: Some(dropped),
            }
        }
        Err(_) => LogGuard {
            worker: None,
            dropped: None,
        },
    }
}

/// The subscriber [`init`] installs, writing to `writer` (tests capture it).
pub fn subscriber<W>(settings: &Settings, writer: W) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Clone + Send + Sync + 'static,
{
    let text = (settings.format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(settings.ansi)
            .fmt_fields(WithRequestId(DefaultFields::new()))
            .event_format(CallEvents(tracing_subscriber::fmt::format()))
            .with_writer(writer.clone())
    });
    let json = (settings.format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .fmt_fields(JsonSpanFields)
            .event_format(JsonEvents)
            .with_writer(writer)
    });
    tracing_subscriber::registry()
        .with(settings.filter())
        .with(text)
        .with(json)
}

/// `MESH_SLOW_MS` as read by [`init`] (1 s if it was not called); `None` when 0.
pub fn slow_threshold() -> Option<Duration> {
    match SLOW_MS.load(Ordering::Relaxed) {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    }
}

/// Whether access-log lines are written (`MESH_ACCESS_LOG=1`). One cached
/// callsite check: cheap enough for every request.
#[inline]
pub fn access_log_enabled() -> bool {
    tracing::enabled!(target: ACCESS, Level::INFO)
}

/// A duration shown in milliseconds with two decimals: `latency_ms=12.63`.
#[derive(Clone, Copy, Debug)]
pub struct Millis(pub Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2}", self.0.as_secs_f64() * 1000.0)
    }
}

/// What a call's log lines share: its ids, and whether it has logged a
/// WARN or ERROR line yet (so its end line need not repeat the alarm).
struct Call {
    ids: CallIds,
    warned: Cell<bool>,
}

/// The ids on every line of a call.
#[derive(Clone, Debug)]
pub struct CallIds {
    pub request_id: HeaderValue,
    /// Its W3C trace (`traceparent`), when it has one.
    pub trace_id: Option<TraceId>,
    /// Who the gateway authenticated (`x-mesh-principal`), when the call
    /// came from the gateway's certificate.
    pub principal: Option<HeaderValue>,
}

tokio::task_local! {
    static CALL: Call;
}

/// Runs `fut` as one call: every line it logs carries `request_id`.
pub fn scope<F: Future>(request_id: HeaderValue, fut: F) -> impl Future<Output = F::Output> {
    scope_with(
        CallIds {
            request_id,
            trace_id: None,
            principal: None,
        },
        fut,
    )
}

/// Runs `fut` as one call: every line it logs carries these ids.
pub fn scope_with<F: Future>(ids: CallIds, fut: F) -> impl Future<Output = F::Output> {
    CALL.scope(
        Call {
            ids,
            warned: Cell::new(false),
        },
        fut,
    )
}

/// Whether the current call (see [`scope`]) has logged a WARN or ERROR line.
pub fn warned() -> bool {
    CALL.try_with(|c| c.warned.get()).unwrap_or(false)
}

/// The current call's ids for an event about to be written (noting a
/// WARN or ERROR on the call); `None` outside a call, or when the event
/// names its own `request_id`.
fn call_ids(event: &Event<'_>) -> Option<CallIds> {
    let meta = event.metadata();
    CALL.try_with(|call| {
        if *meta.level() <= Level::WARN {
            call.warned.set(true);
        }
        call.ids.clone()
    })
    .ok()
    .filter(|_| meta.fields().field("request_id").is_none())
}

thread_local! {
    /// The ids [`CallEvents`] hands to [`WithRequestId`] for the event
    /// being formatted on this thread.
    static PENDING: Cell<Option<CallIds>> = const { Cell::new(None) };
}

/// The event format, plus the current call's request id for the fields.
struct CallEvents<F>(F);

impl<S, N, F> FormatEvent<S, N> for CallEvents<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let Some(id) = call_ids(event) else {
            return self.0.format_event(ctx, writer, event);
        };
        PENDING.set(Some(id));
        let result = self.0.format_event(ctx, writer, event);
        PENDING.set(None);
        result
    }
}

/// The field format, appending ` request_id=...` to an event's fields when
/// [`CallEvents`] asked for it (span fields are formatted without it).
struct WithRequestId<N>(N);

impl<'w, N: for<'a> FormatFields<'a>> FormatFields<'w> for WithRequestId<N> {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        self.0.format_fields(writer.by_ref(), fields)?;
        let Some(ids) = PENDING.take() else {
            return Ok(());
        };
        if let Some(trace_id) = ids.trace_id {
            write_name(&mut writer, "trace_id")?;
            write!(writer, "{trace_id}")?;
        }
        write_field(&mut writer, "request_id", &ids.request_id)?;
        match ids.principal {
            Some(principal) => write_field(&mut writer, "principal", &principal),
            None => Ok(()),
        }
    }
}

/// ` name=value`. A client chooses its request id (and a token its subject):
/// anything but a plain token is quoted, so it cannot pose as more fields.
fn write_field(writer: &mut Writer<'_>, name: &str, value: &HeaderValue) -> fmt::Result {
    write_name(writer, name)?;
    match value.to_str() {
        Ok(s)
            if !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'@')) =>
        {
            writer.write_str(s)
        }
        _ => write!(writer, "{value:?}"),
    }
}

/// The JSON event format: one object per line, flat, so `jq` filters by
/// any field (`jq 'select(.trace_id == "...")'`). Strings that a client
/// chose (its request id, a path) are JSON-escaped, so they cannot pose as
/// more fields or more lines.
struct JsonEvents;

impl<S, N> FormatEvent<S, N> for JsonEvents
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        use tracing_subscriber::fmt::time::FormatTime;
        let meta = event.metadata();
        let mut line = serde_json::Map::new();
        let mut timestamp = String::new();
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        line.insert("timestamp".into(), timestamp.into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        event.record(&mut JsonFields(&mut line));
        if let Some(scope) = ctx.event_scope() {
            // The enclosing spans' fields too (a task's id and kind on the
            // worker's lines), the event's own and the innermost span's first.
            let mut names = Vec::new();
            for span in scope {
                names.push(serde_json::Value::from(span.name()));
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(&fields.fields) {
                    for (key, value) in fields {
                        line.entry(key).or_insert(value);
                    }
                }
            }
            names.reverse();
            line.insert("spans".into(), names.into());
        }
        if let Some(ids) = call_ids(event) {
            if let Some(trace_id) = ids.trace_id {
                line.insert("trace_id".into(), trace_id.to_string().into());
            }
            line.insert("request_id".into(), header_text(&ids.request_id));
            if let Some(principal) = ids.principal {
                line.insert("principal".into(), header_text(&principal));
            }
        }
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

/// The JSON format's span fields: one JSON object, kept in the span's
/// extensions and merged into each line written inside it.
struct JsonSpanFields;

impl<'w> FormatFields<'w> for JsonSpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut map = serde_json::Map::new();
        fields.record(&mut JsonFields(&mut map));
        write!(writer, "{}", serde_json::Value::Object(map))
    }

    fn add_fields(&self, current: &'w mut FormattedFields<Self>, fields: &tracing::span::Record<'_>) -> fmt::Result {
        let mut map = match serde_json::from_str(&current.fields) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        fields.record(&mut JsonFields(&mut map));
        current.fields = serde_json::Value::Object(map).to_string();
        Ok(())
    }
}

/// A header value as JSON text (bytes that are not UTF-8 replaced).
fn header_text(value: &HeaderValue) -> serde_json::Value {
    String::from_utf8_lossy(value.as_bytes()).into_owned().into()
}

/// Records an event's fields into a JSON object, numbers and booleans as
/// such, everything else as its text (`message` included).
struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonFields<'_> {
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}

/// ` name=`, in the field name's colours when the line has them.
fn write_name(writer: &mut Writer<'_>, name: &str) -> fmt::Result {
    if writer.has_ansi_escapes() {
        write!(writer, " \x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m")
    } else {
        write!(writer, " {name}=")
    }
}

/// Test support: a subscriber that writes the production format (without
/// colours) to a string, and counts the spans it was asked to create.
#[doc(hidden)]
pub mod testing {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use tracing::span;
    use tracing_subscriber::layer::{Context, SubscriberExt};

    use super::Settings;

    /// What a [`capture`] subscriber saw.
    #[derive(Clone, Debug, Default)]
    pub struct Captured {
        text: Arc<Mutex<Vec<u8>>>,
        spans: Arc<AtomicUsize>,
        events: Arc<AtomicUsize>,
    }

    impl Captured {
        /// Every line written so far.
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.text.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
        }
        /// Spans created (enabled by the filter) so far.
        pub fn spans(&self) -> usize {
            self.spans.load(Ordering::Relaxed)
        }
        /// Events that passed the filter so far.
        pub fn events(&self) -> usize {
            self.events.load(Ordering::Relaxed)
        }
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Count(Captured);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
        fn on_new_span(&self, _: &span::Attributes<'_>, _: &span::Id, _: Context<'_, S>) {
            self.0.spans.fetch_add(1, Ordering::Relaxed);
        }
        fn on_event(&self, _: &tracing::Event<'_>, _: Context<'_, S>) {
            self.0.events.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The production subscriber for `RUST_LOG=rust_log` and the access log
    /// on or off, writing to memory; use it with `tracing::dispatcher::set_default`.
    pub fn capture(rust_log: &str, access_log: bool) -> (tracing::Dispatch, Captured) {
        capture_as(rust_log, access_log, super::LogFormat::Text)
    }

    /// Like [`capture`], in `format`.
    pub fn capture_as(rust_log: &str, access_log: bool, format: super::LogFormat) -> (tracing::Dispatch, Captured) {
        let captured = Captured::default();
        let settings = Settings {
            rust_log: Some(rust_log.to_string()),
            access_log,
            slow_ms: super::DEFAULT_SLOW_MS,
            ansi: false,
            format,
        };
        let text = captured.text.clone();
        let subscriber = super::subscriber(&settings, move || Sink(text.clone())).with(Count(captured.clone()));
        (tracing::Dispatch::new(subscriber), captured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_have_two_decimals() {
        assert_eq!(Millis(Duration::from_nanos(12_627_552)).to_string(), "12.63");
        assert_eq!(Millis(Duration::ZERO).to_string(), "0.00");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn lines_in_a_call_carry_its_request_id_and_others_do_not() {
        let (dispatch, captured) = testing::capture("info", false);
        let _default = tracing::dispatcher::set_default(&dispatch);
        tracing::info!("outside");
        let warned = scope(HeaderValue::from_static("abc-1"), async {
            tracing::info!(n = 1, "inside");
            assert!(!warned());
            tracing::warn!("alarm");
            tracing::info!(target: ACCESS, "not on");
            warned()
        })
        .await;
        assert!(warned);
        scope(HeaderValue::from_static("two words"), async {
            tracing::warn!("quoted")
        })
        .await;
        let text = captured.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].ends_with("outside"), "{text}");
        assert!(lines[1].ends_with("inside n=1 request_id=abc-1"), "{text}");
        assert!(
            lines[2].contains("WARN") && lines[2].ends_with("alarm request_id=abc-1"),
            "{text}"
        );
        assert!(lines[3].ends_with("quoted request_id=\"two words\""), "{text}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn json_lines_are_objects_with_the_calls_ids_and_escape_what_clients_chose() {
        let (dispatch, captured) = testing::capture_as("info", false, LogFormat::Json);
        let _default = tracing::dispatcher::set_default(&dispatch);
        tracing::info!("outside");
        let trace = TraceId(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        let ids = CallIds {
            request_id: HeaderValue::from_static("r\"1 x=2"),
            trace_id: Some(trace),
            principal: Some(HeaderValue::from_static("alice")),
        };
        let span = tracing::info_span!("route", task = 12u64, kind = "echo");
        scope_with(ids, async {
            let _entered = span.enter();
            tracing::warn!(status = 503u64, ok = false, latency = 1.5, path = %"/items\n", "request failed");
        })
        .await;
        let text = captured.text();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message"], "outside");
        assert_eq!(lines[0]["level"], "INFO");
        assert!(lines[0].get("request_id").is_none() && lines[0].get("trace_id").is_none());
        let call = &lines[1];
        assert_eq!(call["level"], "WARN");
        assert_eq!(call["message"], "request failed");
        assert_eq!(call["status"], 503);
        assert_eq!(call["ok"], false);
        assert_eq!(call["latency"], 1.5);
        assert_eq!(call["path"], "/items\n");
        assert_eq!(call["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(call["request_id"], "r\"1 x=2");
        assert_eq!(call["principal"], "alice");
        assert_eq!(call["spans"], serde_json::json!(["route"]));
        assert_eq!(
            (call["task"].clone(), call["kind"].clone()),
            (serde_json::json!(12), serde_json::json!("echo"))
        );
        assert!(call["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{call}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn text_lines_carry_the_trace_id_before_the_request_id() {
        let (dispatch, captured) = testing::capture("info", false);
        let _default = tracing::dispatcher::set_default(&dispatch);
        let ids = CallIds {
            request_id: HeaderValue::from_static("abc-1"),
            trace_id: Some(TraceId(0xab)),
            principal: None,
        };
        scope_with(ids, async { tracing::info!("inside") }).await;
        let text = captured.text();
        assert!(
            text.trim_end()
                .ends_with(&format!("inside trace_id={}ab request_id=abc-1", "0".repeat(30))),
            "{text}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn only_the_access_switch_turns_the_access_target_on() {
        for (rust_log, access, on) in [
            ("info", false, false),
            ("access=info", false, false),
            ("warn", true, true),
            ("info", true, true),
        ] {
            let (dispatch, captured) = testing::capture(rust_log, access);
            let _default = tracing::dispatcher::set_default(&dispatch);
            assert_eq!(access_log_enabled(), on, "{rust_log} {access}");
            tracing::info!(target: ACCESS, "line");
            assert_eq!(captured.text().contains("access: line"), on, "{rust_log} {access}");
        }
    }
}
