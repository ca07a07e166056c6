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
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
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

/// The settings [`init`] reads from the environment.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `RUST_LOG`; `None` (or invalid) means `info`.
    pub rust_log: Option<String>,
    /// `MESH_ACCESS_LOG=1`.
    pub access_log: bool,
    /// `MESH_SLOW_MS`; `0` means never.
    pub slow_ms: u64,
    /// Colours.
    pub ansi: bool,
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

/// Installs the subscriber (see the module docs for what it logs and the
/// environment it reads). A second call in one process installs nothing and
/// returns an inert guard.
pub fn init() -> LogGuard {
    let (settings, problems) = Settings::from_env();
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
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(settings.ansi)
        .fmt_fields(WithRequestId(DefaultFields::new()))
        .event_format(CallEvents(tracing_subscriber::fmt::format()))
        .with_writer(writer);
    tracing_subscriber::registry().with(settings.filter()).with(layer)
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

/// What a call's log lines share: its request id, and whether it has logged
/// a WARN or ERROR line yet (so its end line need not repeat the alarm).
struct Call {
    request_id: HeaderValue,
    /// Who the gateway authenticated (`x-mesh-principal`), when the call
    /// came from the gateway's certificate.
    principal: Option<HeaderValue>,
    warned: Cell<bool>,
}

tokio::task_local! {
    static CALL: Call;
}

/// Runs `fut` as one call: every line it logs carries `request_id`.
pub fn scope<F: Future>(request_id: HeaderValue, fut: F) -> impl Future<Output = F::Output> {
    scope_as(request_id, None, fut)
}

/// Like [`scope`], made on behalf of `principal`: every line also carries
/// `principal`.
pub fn scope_as<F: Future>(
    request_id: HeaderValue,
    principal: Option<HeaderValue>,
    fut: F,
) -> impl Future<Output = F::Output> {
    CALL.scope(
        Call {
            request_id,
            principal,
            warned: Cell::new(false),
        },
        fut,
    )
}

/// Whether the current call (see [`scope`]) has logged a WARN or ERROR line.
pub fn warned() -> bool {
    CALL.try_with(|c| c.warned.get()).unwrap_or(false)
}

thread_local! {
    /// The request id [`CallEvents`] hands to [`WithRequestId`] for the event
    /// being formatted on this thread.
    static PENDING: Cell<Option<(HeaderValue, Option<HeaderValue>)>> = const { Cell::new(None) };
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
        let meta = event.metadata();
        let id = CALL
            .try_with(|call| {
                if *meta.level() <= Level::WARN {
                    call.warned.set(true);
                }
                (call.request_id.clone(), call.principal.clone())
            })
            .ok()
            .filter(|_| meta.fields().field("request_id").is_none());
        let Some(id) = id else {
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
        let Some((id, principal)) = PENDING.take() else {
            return Ok(());
        };
        write_field(&mut writer, "request_id", &id)?;
        match principal {
            Some(principal) => write_field(&mut writer, "principal", &principal),
            None => Ok(()),
        }
    }
}

/// ` name=value`. A client chooses its request id (and a token its subject):
/// anything but a plain token is quoted, so it cannot pose as more fields.
fn write_field(writer: &mut Writer<'_>, name: &str, value: &HeaderValue) -> fmt::Result {
    if writer.has_ansi_escapes() {
        write!(writer, " \x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m")?;
    } else {
        write!(writer, " {name}=")?;
    }
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
        let captured = Captured::default();
        let settings = Settings {
            rust_log: Some(rust_log.to_string()),
            access_log,
            slow_ms: super::DEFAULT_SLOW_MS,
            ansi: false,
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
