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

/// How a replica's answers are turned into verdicts.
#[derive(Clone, Copy, Debug)]
pub struct Checking {
    pub interval: Duration,
    /// How long one check may take before it counts as no answer.
    pub timeout: Duration,
    /// Consecutive checks without an answer before the replica is taken out.
    pub misses: u32,
}

/// Asks the replica's `grpc.health.v1` (the whole server's status) every
/// `interval`, and reports changes. A `SERVING` answer puts the replica
/// back at once and a `NOT_SERVING` one (draining, maintenance, backend
/// down) takes it out at once: the replica said so. No answer within
/// `timeout` (refused, reset, too slow) takes it out only after
/// `misses` such checks in a row, so one check lost on a busy machine
/// does not flap a service's only replica out of rotation (calls that fail
/// eject a dead replica sooner anyway). A replica starts healthy, so a new
/// one is tried at once. Returns when the controller is gone.
pub async fn watch(replica: Arc<str>, channel: Channel, checking: Checking, verdicts: mpsc::Sender<Verdict>) {
    let mut client = HealthClient::new(channel);
    let mut state = State::new(checking.misses);
    let mut tick = tokio::time::interval(checking.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
        request.set_timeout(checking.timeout);
        let answer = match tokio::time::timeout(checking.timeout, client.check(request)).await {
            Ok(Ok(r)) => Answer::Said(r.get_ref().status == ServingStatus::Serving as i32),
            _ => Answer::Silent,
        };
        if let Some(healthy) = state.update(answer) {
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

/// One check's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// The replica answered: serving or not.
    Said(bool),
    /// No answer in time.
    Silent,
}

/// The verdict so far and the misses in a row behind it.
#[derive(Debug)]
struct State {
    healthy: bool,
    misses: u32,
    threshold: u32,
}

impl State {
    fn new(threshold: u32) -> Self {
        State {
            healthy: true,
            misses: 0,
            threshold: threshold.max(1),
        }
    }

    /// The new verdict, when this answer changes it.
    fn update(&mut self, answer: Answer) -> Option<bool> {
        let healthy = match answer {
            Answer::Said(serving) => {
                self.misses = 0;
                serving
            }
            Answer::Silent => {
                self.misses = self.misses.saturating_add(1);
                self.healthy && self.misses < self.threshold
            }
        };
        (healthy != self.healthy).then(|| {
            self.healthy = healthy;
            healthy
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Answer, State};

    fn run(threshold: u32, answers: &[Answer]) -> Vec<Option<bool>> {
        let mut state = State::new(threshold);
        answers.iter().map(|a| state.update(*a)).collect()
    }

    #[test]
    fn silence_takes_a_replica_out_only_after_the_threshold() {
        use Answer::*;
        assert_eq!(
            run(3, &[Silent, Silent, Silent, Silent]),
            [None, None, Some(false), None]
        );
        // An answer in between starts the count again.
        assert_eq!(
            run(2, &[Silent, Said(true), Silent, Silent]),
            [None, None, None, Some(false)]
        );
        assert_eq!(run(1, &[Silent]), [Some(false)]);
        assert_eq!(run(0, &[Silent]), [Some(false)], "0 means 1");
    }

    #[test]
    fn what_the_replica_says_counts_at_once() {
        use Answer::*;
        assert_eq!(
            run(3, &[Said(false), Said(false), Said(true)]),
            [Some(false), None, Some(true)]
        );
        // Out for silence, back with the first answer.
        assert_eq!(run(2, &[Silent, Silent, Said(true)]), [None, Some(false), Some(true)]);
        // Out because it said so: silence afterwards keeps it out.
        assert_eq!(
            run(2, &[Said(false), Silent, Silent, Said(true)]),
            [Some(false), None, None, Some(true)]
        );
    }
}
