//! Which replicas of a service are in rotation, kept up to date at run time.
//!
//! One controller task per service owns the member list and feeds changes to
//! the p2c balancer as `tower::discover::Change`s. A replica is in rotation
//! while it is (1) resolved from the endpoint spec, (2) healthy by its last
//! `grpc.health.v1` check, and (3) not ejected by passive outlier detection.
//! If that leaves nobody, every resolved replica is used (Envoy's panic mode),
//! so callers get the real error at once instead of waiting for a deadline.
//!
//! The spec is a comma-separated list whose entries are `http://HOST:PORT`
//! (HOST is resolved again every `resolve_interval`, so a DNS name listing
//! several addresses, such as a Kubernetes headless service, tracks its
//! replicas) or `@PATH` (a file of such entries, one per line, re-read every
//! `resolve_interval`). Changing the set needs no restart of the gateway.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PeakEwma};

use super::Settings;
use super::outlier::Outlier;

/// A replica's service as the balancer sees it: latency-weighted (peak
/// EWMA), with outlier detection underneath.
pub type Replica = PeakEwma<Outlier<Channel>>;

pub type Discovered = Result<Change<Arc<str>, Replica>, Infallible>;

/// The latency a replica is assumed to have until it has answered: low, so a
/// new or returning replica is tried soon and then judged by what it measures.
const NEW_REPLICA_RTT: Duration = Duration::from_millis(1);

/// What the controller reacts to.
#[derive(Debug)]
pub enum Event {
    /// The outlier layer saw too many consecutive failures.
    Eject(Arc<str>),
    /// A health check's verdict changed.
    Health(Arc<str>, bool),
}

#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    pub address: String,
    pub healthy: bool,
    pub ejected: bool,
    pub in_rotation: bool,
}

/// A snapshot of the members, for `/readyz` and `/overview`.
#[derive(Clone, Default)]
pub struct Members(Arc<RwLock<Vec<MemberView>>>);

impl Members {
    pub fn snapshot(&self) -> Vec<MemberView> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replicas resolved from the spec, in rotation or not.
    pub fn known(&self) -> usize {
        self.0.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn in_rotation(&self) -> usize {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|m| m.in_rotation)
            .count()
    }

    fn set(&self, members: Vec<MemberView>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = members;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("--{flag}: no endpoint given")]
    Empty { flag: &'static str },
    #[error("--{flag}: {entry:?} is not an endpoint (expected http://HOST:PORT or @FILE): {reason}")]
    Invalid {
        flag: &'static str,
        entry: String,
        reason: String,
    },
}

#[derive(Clone, Debug)]
enum Source {
    Url { host: String, port: u16 },
    File(PathBuf),
}

/// A parsed endpoint spec.
#[derive(Clone, Debug)]
pub struct Spec {
    flag: &'static str,
    sources: Vec<Source>,
}

impl Spec {
    pub fn parse(flag: &'static str, spec: &str) -> Result<Spec, SpecError> {
        let sources = spec
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|entry| match entry.strip_prefix('@') {
                Some(path) => Ok(Source::File(PathBuf::from(path))),
                None => parse_url(entry).map_err(|reason| SpecError::Invalid {
                    flag,
                    entry: entry.into(),
                    reason,
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if sources.is_empty() {
            return Err(SpecError::Empty { flag });
        }
        Ok(Spec { flag, sources })
    }
}

/// Resolves a spec again and again, remembering what each entry resolved to
/// last. An entry that fails now (a DNS error, an unreadable or empty file)
/// keeps its last addresses, so a DNS hiccup, a file caught half-written or
/// one decommissioned host never empties the set, and the other entries
/// still update.
pub struct Resolver {
    spec: Spec,
    /// Last addresses of each `host:port` entry.
    last: HashMap<(String, u16), BTreeSet<String>>,
    /// Last entries each file listed.
    files: HashMap<PathBuf, Vec<(String, u16)>>,
}

impl Resolver {
    pub fn new(spec: Spec) -> Self {
        Self {
            spec,
            last: HashMap::new(),
            files: HashMap::new(),
        }
    }

    /// Every replica address the spec names now (or last named, entry by entry).
    pub async fn resolve(&mut self) -> BTreeSet<String> {
        let mut entries: Vec<(String, u16)> = Vec::new();
        for source in self.spec.sources.clone() {
            match source {
                Source::Url { host, port } => entries.push((host, port)),
                Source::File(path) => entries.extend(self.file_entries(&path).await),
            }
        }
        let mut out = BTreeSet::new();
        let mut next = HashMap::new();
        for (host, port) in entries {
            let addrs = match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(addrs) => addrs.map(|a| format!("http://{a}")).collect(),
                Err(err) => {
                    tracing::warn!(flag = self.spec.flag, host, error = %err, "cannot resolve; keeping its last addresses");
                    self.last.get(&(host.clone(), port)).cloned().unwrap_or_default()
                }
            };
            out.extend(addrs.iter().cloned());
            next.insert((host, port), addrs);
        }
        self.last = next;
        out
    }

    /// The entries a file lists now; its last ones if it cannot be read or
    /// lists none.
    async fn file_entries(&mut self, path: &PathBuf) -> Vec<(String, u16)> {
        let listed: Result<Vec<_>, String> = match tokio::fs::read_to_string(path).await {
            Err(err) => Err(err.to_string()),
            Ok(text) => {
                let entries: Vec<(String, u16)> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .filter_map(|line| match parse_url(line) {
                        Ok(Source::Url { host, port }) => Some((host, port)),
                        Ok(Source::File(_)) | Err(_) => {
                            tracing::warn!(flag = self.spec.flag, file = %path.display(), line, "not an endpoint; skipped");
                            None
                        }
                    })
                    .collect();
                if entries.is_empty() {
                    Err("it lists no endpoint".into())
                } else {
                    Ok(entries)
                }
            }
        };
        match listed {
            Ok(entries) => {
                self.files.insert(path.clone(), entries.clone());
                entries
            }
            Err(err) => {
                tracing::warn!(flag = self.spec.flag, file = %path.display(), error = %err, "cannot use the endpoints file; keeping its last entries");
                self.files.get(path).cloned().unwrap_or_default()
            }
        }
    }
}

fn parse_url(entry: &str) -> Result<Source, String> {
    let uri: http::Uri = entry.parse().map_err(|e: http::uri::InvalidUri| e.to_string())?;
    if uri.scheme_str() != Some("http") {
        return Err("the scheme must be http".into());
    }
    let host = uri
        .host()
        .ok_or("no host")?
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let port = uri.port_u16().ok_or("no port")?;
    Ok(Source::Url { host, port })
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

/// Starts the controller. Resolves the spec once before returning, so the
/// balancer starts with every replica the spec names.
pub async fn start(
    name: &'static str,
    spec: Spec,
    settings: Settings,
) -> (tokio_stream::wrappers::UnboundedReceiverStream<Discovered>, Members) {
    // Unbounded: the balancer takes changes only when a call polls it, and
    // the controller must never wait for that (an idle gateway still has to
    // follow health and resolution). Changes are few: one per membership event.
    let (changes, changes_rx) = mpsc::unbounded_channel();
    let (events, events_rx) = mpsc::channel(256);
    let members = Members::default();
    let mut controller = Controller {
        name,
        settings,
        events,
        changes,
        view: members.clone(),
        members: BTreeMap::new(),
        in_balancer: BTreeSet::new(),
        panicking: false,
    };
    let mut resolver = Resolver::new(spec);
    let initial = resolver.resolve().await;
    if initial.is_empty() {
        tracing::warn!(service = name, "no replica resolved yet; calls fail until one is");
    }
    controller.resolved(initial);
    // The receiving end is still held here, so this cannot fail.
    let _ = controller.reconcile().await;
    tokio::spawn(controller.run(resolver, events_rx));
    (
        tokio_stream::wrappers::UnboundedReceiverStream::new(changes_rx),
        members,
    )
}

struct Controller {
    name: &'static str,
    settings: Settings,
    events: mpsc::Sender<Event>,
    changes: mpsc::UnboundedSender<Discovered>,
    view: Members,
    members: BTreeMap<Arc<str>, Member>,
    in_balancer: BTreeSet<Arc<str>>,
    panicking: bool,
}

impl Controller {
    async fn run(mut self, mut resolver: Resolver, mut events: mpsc::Receiver<Event>) {
        let mut resolve = tokio::time::interval(self.settings.resolve_interval);
        resolve.tick().await;
        // Ejections end on their own; look for that a few times a second.
        let mut expiry = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => return,
                },
                _ = resolve.tick() => {
                    let set = resolver.resolve().await;
                    self.resolved(set);
                }
                _ = expiry.tick() => {}
            }
            if self.reconcile().await.is_err() {
                return; // the balancer is gone: the gateway is shutting down
            }
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
            let Ok(endpoint) = Endpoint::from_shared(address.clone()) else {
                continue;
            };
            let channel = endpoint
                .connect_timeout(self.settings.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_while_idle(true)
                .connect_lazy();
            let key: Arc<str> = address.into();
            let checker = tokio::spawn(check_health(
                key.clone(),
                channel.clone(),
                self.settings.health_interval,
                self.events.clone(),
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

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Health(key, healthy) => {
                if let Some(m) = self.members.get_mut(&key) {
                    if m.healthy != healthy {
                        tracing::info!(service = self.name, replica = %key, healthy, "health changed");
                    }
                    m.healthy = healthy;
                }
            }
            Event::Eject(key) => {
                let Some(m) = self.members.get_mut(&key) else {
                    return;
                };
                let now = Instant::now();
                // A replica that behaved for a minute starts its back-off over.
                if m.last_ejection.is_some_and(|t| now - t > Duration::from_secs(60)) {
                    m.ejections = 0;
                }
                m.ejections += 1;
                m.last_ejection = Some(now);
                let backoff =
                    (self.settings.eject_base * 2u32.saturating_pow(m.ejections - 1)).min(self.settings.eject_max);
                m.ejected_until = Some(now + backoff);
                m.failures.store(0, Ordering::Relaxed);
                tracing::warn!(service = self.name, replica = %key, backoff_ms = backoff.as_millis() as u64, "replica failed repeatedly; ejected");
            }
        }
    }

    /// Brings the balancer's set in line with the members' state.
    async fn reconcile(&mut self) -> Result<(), ()> {
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
        for key in self.in_balancer.difference(&desired).cloned().collect::<Vec<_>>() {
            self.changes.send(Ok(Change::Remove(key.clone()))).map_err(drop)?;
            self.in_balancer.remove(&key);
        }
        for key in desired.difference(&self.in_balancer).cloned().collect::<Vec<_>>() {
            let Some(m) = self.members.get(&key) else {
                continue;
            };
            let outlier = Outlier::new(
                m.channel.clone(),
                key.clone(),
                m.failures.clone(),
                self.settings.eject_after,
                self.events.clone(),
            );
            let replica = PeakEwma::new(
                outlier,
                NEW_REPLICA_RTT,
                Duration::from_secs(10).as_nanos() as f64,
                CompleteOnResponse::default(),
            );
            self.changes
                .send(Ok(Change::Insert(key.clone(), replica)))
                .map_err(drop)?;
            self.in_balancer.insert(key);
        }
        self.view.set(
            self.members
                .iter()
                .map(|(k, m)| MemberView {
                    address: k.to_string(),
                    healthy: m.healthy,
                    ejected: m.ejected_until.is_some(),
                    in_rotation: self.in_balancer.contains(k),
                })
                .collect(),
        );
        Ok(())
    }
}

/// Asks the replica's `grpc.health.v1` every `interval`; reports changes.
/// No answer within the interval (or 1 s) counts as unhealthy.
async fn check_health(key: Arc<str>, channel: Channel, interval: Duration, events: mpsc::Sender<Event>) {
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
            if events.send(Event::Health(key.clone(), healthy)).await.is_err() {
                return;
            }
        }
    }
}
