//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the
//! `traceparent` and `tracestate` headers that tie every hop of one request
//! together, whatever tracing system the operator runs.
//!
//! The gateway continues the trace a client sends (a valid `traceparent`)
//! or starts one, and sends `traceparent` on every gRPC attempt, each
//! attempt with its own span id, plus the client's `tracestate` unchanged.
//! Services read it, and every log line of a call carries its `trace_id`.
//!
//! Ids only have to be unique and well spread, not secret: each process
//! draws random keys once and mixes a counter through SplitMix64, so making
//! one costs no system call.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;

/// The header names, as HTTP and gRPC metadata spell them.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` forwarded: the specification's 32 members of at
/// most 256 characters each would allow more, but it lets a hop cut there,
/// and a client must not make every call carry kilobytes.
pub const MAX_TRACESTATE: usize = 512;

/// The `sampled` flag: the caller records this trace.
pub const SAMPLED: u8 = 0x01;

/// A trace id: 16 bytes, never all zero; shown as 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(pub u128);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A parsed `traceparent`: the trace, the caller's span, and its flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value as the specification says a receiver
    /// must: version `00` exactly 55 characters; a later version at least
    /// that, with a `-` after the flags if longer; version `ff`, upper-case
    /// hex, and all-zero ids are invalid. `None` means "start a new trace".
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        if value.len() < 55 || [2, 35, 52].iter().any(|&i| value[i] != b'-') {
            return None;
        }
        let version = hex(&value[0..2])? as u8;
        match version {
            0xff => return None,
            0x00 if value.len() != 55 => return None,
            _ if value.len() > 55 && value[55] != b'-' => return None,
            _ => {}
        }
        let trace_id = hex(&value[3..35])?;
        let parent_id = hex(&value[36..52])? as u64;
        let flags = hex(&value[53..55])? as u8;
        (trace_id != 0 && parent_id != 0).then_some(TraceParent {
            trace_id: TraceId(trace_id),
            parent_id,
            flags,
        })
    }
}

/// Lower-case hex digits (at most 32) as a number; `None` on anything else.
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |n, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u128::from(d))
    })
}

/// The trace one request belongs to, as the gateway passes it on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    pub trace_id: TraceId,
    /// Only the `sampled` bit: the one flag version 00 defines.
    pub flags: u8,
    /// The client's `tracestate`, forwarded unchanged.
    pub state: Option<Arc<str>>,
    /// The gateway's own span for the request, when it records one
    /// ([`crate::otel`]): the parent of its calls' spans.
    pub span_id: Option<u64>,
}

impl Trace {
    /// The trace of a request: the client's when its `traceparent` parsed
    /// (and its `tracestate` then, if not too long), else a new one, not
    /// sampled.
    pub fn of(parent: Option<TraceParent>, tracestate: Option<&HeaderValue>) -> Trace {
        match parent {
            Some(parent) => Trace {
                trace_id: parent.trace_id,
                flags: parent.flags & SAMPLED,
                state: tracestate
                    .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE)
                    .and_then(|s| s.to_str().ok())
                    .map(Arc::from),
                span_id: None,
            },
            None => Trace {
                trace_id: new_trace_id(),
                flags: 0,
                state: None,
                span_id: None,
            },
        }
    }

    /// The `traceparent` for one outgoing call: this trace, a new span id.
    pub fn traceparent(&self) -> HeaderValue {
        // Hex digits and dashes: always a valid header value.
        HeaderValue::from_bytes(&self.traceparent_bytes()).unwrap_or(HeaderValue::from_static("-"))
    }

    /// [`Trace::traceparent`] as bytes, made on the stack.
    pub fn traceparent_bytes(&self) -> [u8; 55] {
        self.traceparent_for(new_span_id())
    }

    /// The `traceparent` of a call whose span is `span_id`.
    pub fn traceparent_for(&self, span_id: u64) -> [u8; 55] {
        let mut buf = [0u8; 55];
        buf[..3].copy_from_slice(b"00-");
        write_hex(self.trace_id.0, &mut buf[3..35]);
        buf[35] = b'-';
        write_hex(u128::from(span_id), &mut buf[36..52]);
        buf[52] = b'-';
        write_hex(u128::from(self.flags), &mut buf[53..55]);
        buf
    }
}

/// A version-00 `traceparent` for these ids.
pub fn format_traceparent(trace_id: TraceId, span_id: u64, flags: u8) -> String {
    format!("00-{trace_id}-{span_id:016x}-{flags:02x}")
}

/// Writes the low `out.len()` hex digits of `n`, most significant first.
fn write_hex(mut n: u128, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// SplitMix64's finaliser: a bijection on u64 that spreads a counter's bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Ids {
    keys: [u64; 3],
    next: AtomicU64,
}

fn ids() -> &'static Ids {
    static IDS: std::sync::OnceLock<Ids> = std::sync::OnceLock::new();
    IDS.get_or_init(|| Ids {
        keys: [random_u64(), random_u64(), random_u64()],
        next: AtomicU64::new(0),
    })
}

/// A new trace id: 64 bits unique to this process (a random key through a
/// bijection of a counter) beside 64 more, so two processes' ids collide
/// only if two random keys do. Never zero.
pub fn new_trace_id() -> TraceId {
    let ids = ids();
    let n = ids.next.fetch_add(1, Ordering::Relaxed);
    let high = mix(n ^ ids.keys[0]);
    let low = mix(n.wrapping_add(ids.keys[1]));
    TraceId((u128::from(high) << 64 | u128::from(low)).max(1))
}

/// A new span id, unique within this process. Never zero.
pub fn new_span_id() -> u64 {
    let ids = ids();
    mix(ids.next.fetch_add(1, Ordering::Relaxed) ^ ids.keys[2]).max(1)
}

/// 64 random bits from std's randomly keyed hasher (no extra dependency).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_specifications_example() {
        let p = TraceParent::parse(VALID.as_bytes()).unwrap();
        assert_eq!(p.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.parent_id, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(p.flags, 1);
    }

    #[test]
    fn refuses_what_the_specification_says_to_refuse() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_as_far_as_version_00_goes() {
        let p = TraceParent::parse(b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-comes-next").unwrap();
        assert_eq!(p.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.flags, 9);
        assert!(TraceParent::parse(b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some());
    }

    #[test]
    fn a_valid_parent_is_continued_with_its_sampled_bit_and_state() {
        let parent = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03");
        let state = HeaderValue::from_static("congo=t61rcWkgMzE");
        let trace = Trace::of(TraceParent::parse(parent.as_bytes()), Some(&state));
        assert_eq!(trace.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.flags, SAMPLED, "only the flag version 00 defines");
        assert_eq!(trace.state.as_deref(), Some("congo=t61rcWkgMzE"));
        let out = trace.traceparent();
        let sent = TraceParent::parse(out.as_bytes()).unwrap();
        assert_eq!(sent.trace_id, trace.trace_id);
        assert_ne!(sent.parent_id, 0x00f0_67aa_0ba9_02b7, "each hop is a span of its own");
        assert_eq!(sent.flags, SAMPLED);
        // Each attempt gets its own span id.
        assert_ne!(
            TraceParent::parse(trace.traceparent().as_bytes()).unwrap().parent_id,
            sent.parent_id
        );
    }

    #[test]
    fn an_invalid_parent_starts_a_new_trace_and_drops_the_state() {
        let bad = HeaderValue::from_static("00-00000000000000000000000000000000-00f067aa0ba902b7-01");
        let state = HeaderValue::from_static("congo=t61rcWkgMzE");
        let trace = Trace::of(TraceParent::parse(bad.as_bytes()), Some(&state));
        assert_ne!(trace.trace_id.0, 0);
        assert_eq!((trace.flags, trace.state), (0, None));
        let long = HeaderValue::from_str(&"a".repeat(MAX_TRACESTATE + 1)).unwrap();
        let parent = HeaderValue::from_static(VALID);
        assert_eq!(
            Trace::of(TraceParent::parse(parent.as_bytes()), Some(&long)).state,
            None
        );
    }

    #[test]
    fn new_ids_are_distinct_and_never_zero() {
        let traces: std::collections::HashSet<u128> = (0..10_000).map(|_| new_trace_id().0).collect();
        assert_eq!(traces.len(), 10_000);
        assert!(!traces.contains(&0));
        let spans: std::collections::HashSet<u64> = (0..10_000).map(|_| new_span_id()).collect();
        assert_eq!(spans.len(), 10_000);
        assert!(!spans.contains(&0));
        assert_eq!(TraceId(0xab).to_string(), format!("{}ab", "0".repeat(30)));
    }
}
