//! Hedged reads: when a read is still outstanding past a percentile of
//! recent read latency, a second copy goes out (the balancer will most
//! likely pick another replica) and the first answer wins. A budget caps
//! the extra load.

use std::future::Future;
use std::time::{Duration, Instant};

use tower::retry::budget::{Budget, TpsBudget};

use crate::latency::Window;
use crate::settings::HedgeSettings;

pub struct Hedger {
    /// The service's name, for the metrics.
    service: &'static str,
    settings: HedgeSettings,
    budget: TpsBudget,
    /// Whole reads, hedged or not.
    latencies: Window,
}

impl Hedger {
    pub fn new(service: &'static str, settings: HedgeSettings) -> Self {
        Self {
            service,
            settings,
            budget: TpsBudget::new(Duration::from_secs(10), 0, settings.ratio),
            latencies: Window::default(),
        }
    }

    /// Runs `read` once, and a second time if the first is slow.
    pub async fn run<T, E, A, Fut>(&self, read: A) -> Result<T, E>
    where
        A: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.budget.deposit();
        let started = Instant::now();
        let first = read();
        tokio::pin!(first);
        let Some(after) = self.latencies.percentile(self.settings.percentile) else {
            let out = first.await;
            self.latencies.record(started.elapsed());
            return out;
        };
        tokio::select! {
            out = &mut first => {
                self.latencies.record(started.elapsed());
                return out;
            }
            () = tokio::time::sleep(after) => {}
        }
        if !self.budget.withdraw() {
            let out = first.await;
            self.latencies.record(started.elapsed());
            return out;
        }
        tracing::debug!(after_ms = after.as_millis() as u64, "read is slow; hedging");
        crate::metrics::hedged(self.service);
        let second = read();
        tokio::pin!(second);
        // The first success wins; if one fails, wait for the other.
        let out = tokio::select! {
            out = &mut first => match out {
                Ok(r) => Ok(r),
                Err(_) => second.await,
            },
            out = &mut second => match out {
                Ok(r) => {
                    crate::metrics::hedge_won(self.service);
                    Ok(r)
                }
                Err(_) => first.await,
            },
        };
        self.latencies.record(started.elapsed());
        out
    }
}
