//! The gateway's shared client pool, built once at start-up and cloned into
//! every handler: one multiplexed tonic channel per service (balanced across
//! that service's replicas) and one `reqwest::Client` for plain-HTTP upstreams.

use std::time::Duration;

use mesh_proto::cache::v1::cache_service_client::CacheServiceClient;
use mesh_proto::counter::v1::counter_service_client::CounterServiceClient;
use mesh_proto::items::v1::item_service_client::ItemServiceClient;
use mesh_proto::tasks::v1::task_service_client::TaskServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;

#[derive(Clone)]
pub struct AppState {
    pub items: ItemServiceClient<Channel>,
    pub cache: CacheServiceClient<Channel>,
    pub tasks: TaskServiceClient<Channel>,
    pub counter: CounterServiceClient<Channel>,
    /// Health clients on the same channels, for `/readyz` and `/overview`.
    pub health: Vec<(&'static str, HealthClient<Channel>)>,
    pub http: reqwest::Client,
    pub upstream: Option<String>,
    /// The deadline every service call carries.
    pub call_timeout: Duration,
    /// How long `GET /items/{id}` keeps an item in the cache.
    pub item_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("--{flag}: no endpoint given")]
    Empty { flag: &'static str },
    #[error("--{flag}: {url:?} is not a valid endpoint URL (expected http://HOST:PORT): {reason}")]
    Invalid {
        flag: &'static str,
        url: String,
        reason: String,
    },
}

/// One channel over every endpoint in `list` (comma separated). Connections
/// are made lazily, so the gateway starts even while a service is down.
pub fn channel(
    flag: &'static str,
    list: &str,
    connect_timeout: Duration,
) -> Result<Channel, EndpointError> {
    let endpoints = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|url| {
            Endpoint::from_shared(url.to_string())
                .map_err(|e| EndpointError::Invalid {
                    flag,
                    url: url.to_string(),
                    reason: e.to_string(),
                })
                .and_then(|e| {
                    if e.uri().host().is_none() {
                        return Err(EndpointError::Invalid {
                            flag,
                            url: url.to_string(),
                            reason: "no host".into(),
                        });
                    }
                    Ok(e.connect_timeout(connect_timeout)
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(Duration::from_secs(20))
                        .keep_alive_while_idle(true))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut endpoints = endpoints;
    match endpoints.len() {
        0 => Err(EndpointError::Empty { flag }),
        1 => Ok(endpoints.remove(0).connect_lazy()),
        _ => Ok(Channel::balance_list(endpoints.into_iter())),
    }
}
