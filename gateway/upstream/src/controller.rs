//! Which replicas of a service are in rotation, kept up to date at run time.
//!
//! One controller task per service owns the member list and sets the
//! balancer's [`Rotation`] whenever it changes. A replica is in rotation
//! while it is (1) resolved from the endpoint spec ([`crate::resolver`], every
//! `resolve_interval`), (2) healthy by its last check ([`crate::health`]),
//! and (3) not ejected by passive outlier detection ([`crate::outlier`]).
//! If that leaves nobody, every resolved replica is used (Envoy's panic
//! mode), so callers get the real error at once instead of waiting for a
//! deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::balance::{Replica, Rotation};
use crate::health::{self, Verdict};
use crate::members::{MemberView, Members};
use crate::outlier::Outlier;
use crate::resolver::Resolver;
use crate::settings::Settings;
use crate::spec::Spec;

/// The latency a replica is assumed to have until it has answered: low, so a
/// new or returning replica is tried soon and then judged by what it measures.
const NEW_REPLICA_RTT: Duration = Duration::from_millis(1);

/// How far back a replica's peak-EWMA latency remembers.
const RTT_DECAY: Duration = Duration::from_secs(10);

/// Starts the controller of service `name`. Resolves the spec once before
/// returning, so the balancer starts with every replica the spec names.
/// The controller runs until the returned rotation's last other holder (the
/// upstream) is dropped.
pub async fn start(name: &'static str, spec: Spec, settings: Settings) -> (Rotation, Members) {
    let rotation = Rotation::default();
    let (ejections, ejections_rx) = mpsc::channel(256);
    let (verdicts, verdicts_rx) = mpsc::channel(256);
    let members = Members::default();
    let mut controller = Controller {
        name,
        settings,
        ejections,
        verdicts,
        rotation: rotation.clone(),
        view: members.clone(),
        members: BTreeMap::new(),
        in_balancer: BTreeMap::new(),
        panicking: false,
    };
    let mut resolver = Resolver::new(spec);
    let initial = resolver.resolve().await;
    if initial.is_empty() {
        tracing::warn!(service = name, "no replica resolved yet; calls fail until one is");
    }
    controller.resolved(initial);
    controller.reconcile();
    tokio::spawn(controller.run(resolver, ejections_rx, verdicts_rx));
    crate::metrics::watch_replicas(name, &members, &rotation);
    (rotation, members)
}

struct Member {
    channel: Channel,
    failures: Arc<AtomicU32>,
    healthy: bool,
    ejected_until: Option<Instant>,
    ejections: u32,
    last_ejection: Option<Instant>,
    checker: tokio::task::JoinHandle<()>,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.checker.abort();
    }
}

struct Controller {
    name: &'static str,
    settings: Settings,
    /// Handed to each replica's outlier layer.
    ejections: mpsc::Sender<Arc<str>>,
    /// Handed to each replica's health checker.
    verdicts: mpsc::Sender<Verdict>,
    rotation: Rotation,
    view: Members,
    members: BTreeMap<Arc<str>, Member>,
    /// The replicas in rotation, as the balancer has them (a replica keeps
    /// its latency estimate while it stays in rotation).
    in_balancer: BTreeMap<Arc<str>, Arc<Replica>>,
    panicking: bool,
}

impl Controller {
    async fn run(
        mut self,
        mut resolver: Resolver,
        mut ejections: mpsc::Receiver<Arc<str>>,
        mut verdicts: mpsc::Receiver<Verdict>,
    ) {
        let mut resolve = tokio::time::interval(self.settings.resolve_interval);
        resolve.tick().await;
        // Ejections end on their own; look for that a few times a second.
        let mut expiry = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                Some(key) = ejections.recv() => self.eject(key),
                Some(verdict) = verdicts.recv() => self.health(verdict),
                _ = resolve.tick() => {
                    let set = resolver.resolve().await;
                    self.resolved(set);
                }
                _ = expiry.tick() => {}
            }
            if self.rotation.is_orphan() {
                return; // the upstream is gone: the gateway is shutting down
            }
            self.reconcile();
        }
    }

    fn resolved(&mut self, set: BTreeSet<String>) {
        self.members.retain(|key, _| {
            let keep = set.contains(key.as_ref());
            if !keep {
                tracing::info!(service = self.name, replica = %key, "replica no longer resolved; removed");
            }
            keep
        });
        for address in set {
            if self.members.contains_key(address.as_str()) {
                continue;
            }
            let endpoint = match &self.settings.tls {
                None => Endpoint::from_shared(address.clone()),
                Some(tls) => {
                    let https = address.replacen("http://", "https://", 1);
                    Endpoint::from_shared(https).and_then(|e| e.tls_config(tls.config(self.name)))
                }
            };
            let Ok(endpoint) = endpoint else {
                tracing::warn!(service = self.name, replica = %address, "cannot make an endpoint for this replica");
                continue;
            };
            let channel = endpoint
                .connect_timeout(self.settings.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_while_idle(true)
                .connect_lazy();
            let key: Arc<str> = address.into();
            let checker = tokio::spawn(health::watch(
                key.clone(),
                channel.clone(),
                self.settings.health,
                self.verdicts.clone(),
            ));
            tracing::info!(service = self.name, replica = %key, "replica added");
            self.members.insert(
                key,
                Member {
                    channel,
                    failures: Arc::default(),
                    healthy: true,
                    ejected_until: None,
                    ejections: 0,
                    last_ejection: None,
                    checker,
                },
            );
        }
    }

    fn health(&mut self, Verdict { replica, healthy }: Verdict) {
        if let Some(m) = self.members.get_mut(&replica) {
            if m.healthy != healthy {
                tracing::info!(service = self.name, replica = %replica, healthy, "health changed");
            }
            m.healthy = healthy;
        }
    }

    fn eject(&mut self, key: Arc<str>) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        let now = Instant::now();
        // Reports keep coming while calls that were in flight fail: one
        // ejection per streak, not one per report.
        if m.ejected_until.is_some_and(|t| t > now) {
            return;
        }
        // A replica that behaved for a minute starts its back-off over.
        if m.last_ejection.is_some_and(|t| now - t > Duration::from_secs(60)) {
            m.ejections = 0;
        }
        m.ejections += 1;
        m.last_ejection = Some(now);
        let backoff = (self.settings.eject_base * 2u32.saturating_pow(m.ejections - 1)).min(self.settings.eject_max);
        m.ejected_until = Some(now + backoff);
        m.failures.store(0, Ordering::Relaxed);
        tracing::warn!(service = self.name, replica = %key, backoff_ms = backoff.as_millis() as u64, "replica failed repeatedly; ejected");
    }

    /// Brings the balancer's rotation in line with the members' state.
    fn reconcile(&mut self) {
        let now = Instant::now();
        for (key, m) in &mut self.members {
            if m.ejected_until.is_some_and(|t| t <= now) {
                m.ejected_until = None;
                tracing::info!(service = self.name, replica = %key, "ejection over; back in rotation");
            }
        }
        let mut desired: BTreeSet<Arc<str>> = self
            .members
            .iter()
            .filter(|(_, m)| m.healthy && m.ejected_until.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        let panicking = desired.is_empty() && !self.members.is_empty();
        if panicking {
            desired = self.members.keys().cloned().collect();
        }
        if panicking != self.panicking {
            self.panicking = panicking;
            if panicking {
                tracing::warn!(
                    service = self.name,
                    "no replica is healthy; using all of them (panic mode)"
                );
            } else {
                tracing::info!(service = self.name, "healthy replicas again; panic mode over");
            }
        }
        let before = self.in_balancer.len();
        self.in_balancer.retain(|key, _| desired.contains(key));
        let mut changed = self.in_balancer.len() != before;
        for key in desired {
            if self.in_balancer.contains_key(&key) {
                continue;
            }
            let Some(m) = self.members.get(&key) else {
                continue;
            };
            let outlier = Outlier::new(
                key.clone(),
                m.failures.clone(),
                self.settings.eject_after,
                self.ejections.clone(),
            );
            let replica = Replica::new(m.channel.clone(), outlier, NEW_REPLICA_RTT, RTT_DECAY);
            self.in_balancer.insert(key, Arc::new(replica));
            changed = true;
        }
        if changed {
            self.rotation.set(self.in_balancer.values().cloned().collect());
        }
        self.view.set(
            self.members
                .iter()
                .map(|(k, m)| MemberView {
                    address: k.to_string(),
                    healthy: m.healthy,
                    ejected: m.ejected_until.is_some(),
                    in_rotation: self.in_balancer.contains_key(k),
                })
                .collect(),
        );
    }
}
