//! The balancer: power of two choices over the replicas in rotation, each
//! weighted by its peak-EWMA latency times its calls in flight (the policy
//! of tower's `p2c::Balance` over `PeakEwma`, and Finagle's and Linkerd's).
//!
//! Unlike tower's balancer it needs no `&mut self`, so it is shared by every
//! caller as it is, with no `Buffer` in front: a call picks its replica on
//! the caller's own task (a read lock and two random numbers) and goes
//! straight to that replica's channel. tower's `Buffer` hands every call to
//! one worker task and the answer back through a oneshot channel; that hop
//! cost the gateway about a tenth of its CPU per proxied call (callgrind).
//!
//! The [`crate::controller`] decides the rotation ([`Rotation::set`]); each
//! replica's answers feed its latency estimate and its [`Outlier`] detector.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;
use tower::{BoxError, ServiceExt};

use crate::outlier::{Outlier, PerTryCut};

/// One replica in rotation: its channel, its load and its outlier detector.
pub struct Replica {
    channel: Channel,
    load: Load,
    outlier: Outlier,
}

impl Replica {
    /// A replica entering rotation, assumed to answer in `initial_rtt` until
    /// it has answered: low, so a new or returning replica is tried soon.
    pub fn new(channel: Channel, outlier: Outlier, initial_rtt: Duration, decay: Duration) -> Self {
        Self {
            channel,
            load: Load::new(initial_rtt, decay),
            outlier,
        }
    }

    /// Its address.
    pub fn address(&self) -> &Arc<str> {
        self.outlier.key()
    }

    /// Calls sent to it and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.load.in_flight.load(Ordering::Relaxed)
    }

    /// Its peak-EWMA latency estimate as of now (decayed since the last
    /// answer, as the balancer sees it), without changing it.
    pub fn latency(&self) -> Duration {
        let estimate = self.load.estimate.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = nanos(Instant::now().saturating_duration_since(estimate.updated));
        let rtt = estimate.rtt_ns * (-elapsed / self.load.decay_ns).exp();
        Duration::from_nanos(rtt as u64)
    }
}

/// Peak-EWMA latency and calls in flight.
struct Load {
    in_flight: AtomicUsize,
    estimate: Mutex<Estimate>,
    decay_ns: f64,
}

struct Estimate {
    rtt_ns: f64,
    updated: Instant,
}

impl Load {
    fn new(initial_rtt: Duration, decay: Duration) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            estimate: Mutex::new(Estimate {
                rtt_ns: nanos(initial_rtt).max(1.0),
                updated: Instant::now(),
            }),
            decay_ns: nanos(decay).max(1.0),
        }
    }

    /// What sending one more call here is expected to cost: the latency
    /// estimate (decayed towards zero since it was last updated, so an idle
    /// replica is tried again) times the calls that would then be in flight.
    fn cost(&self, now: Instant) -> f64 {
        let rtt = self.update(now, 0.0);
        rtt * (self.in_flight.load(Ordering::Relaxed) + 1) as f64
    }

    /// Folds one observed latency into the estimate: a slower one becomes
    /// the estimate at once (the peak); a faster one pulls it down in
    /// proportion to the time since the last update.
    fn update(&self, now: Instant, rtt_ns: f64) -> f64 {
        let mut estimate = self.estimate.lock().unwrap_or_else(|p| p.into_inner());
        // A caller that read the clock before another's update: no decay.
        let now = now.max(estimate.updated);
        if estimate.rtt_ns < rtt_ns {
            estimate.rtt_ns = rtt_ns;
        } else {
            let elapsed = nanos(now.saturating_duration_since(estimate.updated));
            let decay = (-elapsed / self.decay_ns).exp();
            estimate.rtt_ns = estimate.rtt_ns * decay + rtt_ns * (1.0 - decay);
        }
        estimate.updated = now;
        estimate.rtt_ns
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// The replicas in rotation, replaced as a whole by the controller. Cloning
/// it is one reference count.
#[derive(Clone, Default)]
pub struct Rotation(Arc<RwLock<Arc<[Arc<Replica>]>>>);

impl Rotation {
    pub(crate) fn set(&self, replicas: Vec<Arc<Replica>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = replicas.into();
    }

    /// Whether the controller holds the only reference (the upstream that
    /// used it is gone).
    pub(crate) fn is_orphan(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }

    /// A weak handle for the metrics, which must not keep the controller alive.
    pub(crate) fn downgrade(&self) -> std::sync::Weak<RwLock<Arc<[Arc<Replica>]>>> {
        Arc::downgrade(&self.0)
    }

    pub(crate) fn snapshot(&self) -> Arc<[Arc<Replica>]> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Power of two choices: of two replicas drawn at random, the cheaper.
    fn pick(&self) -> Option<Arc<Replica>> {
        let replicas = self.snapshot();
        match replicas.len() {
            0 => None,
            1 => Some(replicas[0].clone()),
            n => {
                let a = random_below(n);
                // A second, different one.
                let b = (a + 1 + random_below(n - 1)) % n;
                let now = Instant::now();
                let (ra, rb) = (&replicas[a], &replicas[b]);
                Some(if ra.load.cost(now) <= rb.load.cost(now) {
                    ra.clone()
                } else {
                    rb.clone()
                })
            }
        }
    }
}

/// The balancer as a service. Always ready: the replica's channel, once
/// picked, is waited on inside the call.
#[derive(Clone)]
pub struct Balance {
    rotation: Rotation,
}

impl Balance {
    pub fn new(rotation: Rotation) -> Self {
        Self { rotation }
    }
}

/// No replica was in rotation when the call was made.
#[derive(Debug, thiserror::Error)]
#[error("no replica in rotation")]
pub struct NoReplica;

type Request = http::Request<tonic::body::Body>;
type Response = http::Response<tonic::body::Body>;

impl tower::Service<Request> for Balance {
    type Response = Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Some(replica) = self.rotation.pick() else {
            return Box::pin(async { Err(NoReplica.into()) });
        };
        let cut_at = request.extensions().get::<PerTryCut>().map(|cut| cut.0);
        Box::pin(async move {
            // Until the response head (tower's `CompleteOnResponse`), or until
            // the caller gives up: an abandoned call's time counts too, so a
            // replica that hangs looks slow, not idle (as tower's PeakEwma).
            let in_flight = InFlight::enter(&replica);
            let attempt = replica.outlier.attempt(cut_at);
            let result = replica.channel.clone().oneshot(request).await;
            drop(in_flight);
            attempt.answered(&result);
            result.map_err(BoxError::from)
        })
    }
}

/// Counts a call in flight on a replica for as long as it lives, and on
/// drop (answered, cut or abandoned) folds the time it took into the
/// replica's latency estimate.
struct InFlight<'a> {
    replica: &'a Replica,
    sent: Instant,
}

impl<'a> InFlight<'a> {
    fn enter(replica: &'a Replica) -> Self {
        replica.load.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            replica,
            sent: Instant::now(),
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let load = &self.replica.load;
        load.in_flight.fetch_sub(1, Ordering::Relaxed);
        let now = Instant::now();
        load.update(now, nanos(now.saturating_duration_since(self.sent)));
    }
}

/// A uniform index below `n` (`n` > 0) from a per-thread xorshift generator
/// seeded from std's randomly keyed hasher: the choice only has to be
/// spread evenly, not unpredictable.
fn random_below(n: usize) -> usize {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        // Lemire's multiply-shift: no division, bias below 2^-32 for small n.
        ((u128::from(x) * n as u128) >> 64) as usize
    })
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_indices_cover_the_range_evenly() {
        let mut seen = [0u32; 5];
        for _ in 0..50_000 {
            seen[random_below(5)] += 1;
        }
        for count in seen {
            assert!((9_000..11_000).contains(&count), "{seen:?}");
        }
    }

    #[test]
    fn a_slower_answer_becomes_the_estimate_and_a_faster_one_decays_into_it() {
        let load = Load::new(Duration::from_millis(1), Duration::from_secs(10));
        let ms = |n: u64| nanos(Duration::from_millis(n));
        let t0 = Instant::now();
        assert_eq!(load.update(t0, ms(50)), ms(50));
        // At once, a fast answer does not move it ...
        assert_eq!(load.update(t0, ms(1)), ms(50));
        // ... ten seconds (one decay period) later it pulls it most of the
        // way: 50 / e + 1 × (1 - 1 / e) ≈ 19 ms.
        let later = load.update(t0 + Duration::from_secs(10), ms(1));
        assert!((ms(18)..ms(20)).contains(&later), "{later}");
    }

    #[test]
    fn cost_grows_with_calls_in_flight() {
        let load = Load::new(Duration::from_millis(10), Duration::from_secs(10));
        let t0 = Instant::now();
        let idle = load.cost(t0);
        load.in_flight.store(3, Ordering::Relaxed);
        let busy = load.cost(t0);
        assert!((busy / idle - 4.0).abs() < 0.01, "{idle} {busy}");
    }
}
