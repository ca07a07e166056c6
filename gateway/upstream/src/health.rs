//! Active health checks: each replica's `grpc.health.v1` is asked on an
//! interval, and every change of verdict is reported to the controller.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A replica's health changed.
#[derive(Debug)]
pub struct Verdict {
    pub replica: Arc<str>,
    pub healthy: bool,
}

/// Asks the replica's `grpc.health.v1` (the whole server's status) every
/// `interval`, and reports changes. No answer within the interval (or 1 s)
/// counts as unhealthy. A replica starts healthy, so a new one is tried at
/// once. Returns when the controller is gone.
pub async fn watch(replica: Arc<str>, channel: Channel, interval: Duration, verdicts: mpsc::Sender<Verdict>) {
    let mut client = HealthClient::new(channel);
    let timeout = interval.min(Duration::from_secs(1));
    let mut last = true;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
        request.set_timeout(timeout);
        let healthy = matches!(
            tokio::time::timeout(timeout, client.check(request)).await,
            Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
        );
        if healthy != last {
            last = healthy;
            let verdict = Verdict {
                replica: replica.clone(),
                healthy,
            };
            if verdicts.send(verdict).await.is_err() {
                return;
            }
        }
    }
}
