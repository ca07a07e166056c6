//! The policy settings every upstream shares (the gateway fills them from
//! its command line).

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Settings {
    pub connect_timeout: Duration,
    /// How each replica's health is checked.
    pub health: crate::health::Checking,
    /// How often endpoint specs (DNS names, files) are resolved again.
    pub resolve_interval: Duration,
    /// Consecutive failures that eject a replica.
    pub eject_after: u32,
    /// First ejection's length; each further one doubles, up to `eject_max`.
    pub eject_base: Duration,
    pub eject_max: Duration,
    /// Calls in flight per service before new ones are refused.
    pub max_in_flight: usize,
    /// Retries may add this fraction of the calls made (plus `retry_min_per_sec`).
    pub retry_ratio: f32,
    pub retry_min_per_sec: u32,
    /// How long one attempt of a repeatable call may take before it is cut
    /// and tried again on another replica.
    pub per_try_timeout: PerTryTimeout,
    /// Hedged reads: `None` is off.
    pub hedge: Option<HedgeSettings>,
    /// Mutual TLS to every replica; `None`: plaintext (h2c).
    pub tls: Option<ClientTls>,
}

/// How the gateway reaches replicas over TLS: it trusts `ca` only, checks
/// that each replica's certificate names its service (`items`, `cache`,
/// ...), whatever address the replica was found at, and presents
/// `identity` (its own certificate and key, PEM).
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub ca_pem: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// tonic's TLS settings for a replica of `service`.
    pub fn config(&self, service: &str) -> tonic::transport::ClientTlsConfig {
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .domain_name(service);
        if let Some((cert, key)) = &self.identity {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        config
    }
}

#[derive(Clone, Copy, Debug)]
pub struct HedgeSettings {
    /// A read still outstanding past this percentile of recent read latency
    /// is sent to a second replica.
    pub percentile: f64,
    /// Hedges may add at most this fraction of reads.
    pub ratio: f32,
}

/// The per-try timeout of reads and keyed writes (see [`crate::per_try`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PerTryTimeout {
    /// Every attempt may take the whole deadline.
    Off,
    /// This long, whatever the service's latency.
    Fixed(Duration),
    /// Derived from the latency the service's answers have recently had.
    Derived,
}
