//! The gateway's shared client pool, built once at start-up and cloned into
//! every handler: one balanced, policy-wrapped client per service (see the
//! `mesh-upstream` crate) and one `reqwest::Client` for plain-HTTP upstreams.

use std::time::Duration;

use mesh_proto::cache::v1::cache_service_client::CacheServiceClient;
use mesh_proto::counter::v1::counter_service_client::CounterServiceClient;
use mesh_proto::items::v1::Item;
use mesh_proto::items::v1::item_service_client::ItemServiceClient;
use mesh_proto::tasks::v1::task_service_client::TaskServiceClient;
use mesh_upstream::{Client, Transport, Upstream};

use crate::singleflight::SingleFlight;

/// One shared item read: the item and how it was served (`hit`, `miss`, `bypass`).
pub type ItemRead = Result<(Item, crate::routes::items::CacheOutcome), crate::error::AppError>;

/// What handlers get: a pointer to the pool. axum clones the state for every
/// request, so it must be one reference count, not a clone of every client.
pub type AppState = std::sync::Arc<Shared>;

pub struct Shared {
    pub items: Client<ItemServiceClient<Transport>>,
    pub cache: Client<CacheServiceClient<Transport>>,
    pub tasks: Client<TaskServiceClient<Transport>>,
    pub counter: Client<CounterServiceClient<Transport>>,
    /// Every service's upstream, in the order of `mesh_proto::services::ALL`
    /// (what `/readyz` and `/overview` report on).
    pub upstreams: Vec<Upstream>,
    pub http: reqwest::Client,
    pub upstream: Option<String>,
    /// Every route's deadline, shared by all the calls it makes.
    pub route_timeout: Duration,
    /// How long `GET /items/{id}` keeps an item in the cache.
    pub item_ttl: Duration,
    /// Flips to true when the gateway starts shutting down, so long-lived
    /// responses (event streams) end instead of holding the shutdown up.
    pub stopping: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    /// Coalesces concurrent `GET /items/{id}` for one id into one read path.
    pub item_reads: SingleFlight<(i64, u64), ItemRead>,
    /// Moves on every item write through this gateway (see `routes::items`),
    /// so reads that began before a write neither fill the cache with what
    /// they read nor are joined by reads that begin after it. (Writes through
    /// another gateway are bounded by the cache TTL instead.)
    pub item_writes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Who may call what; `None` serves anyone (`--auth none`).
    pub auth: Option<std::sync::Arc<crate::auth::Auth>>,
    /// Rate limits; `None` without `--rate-limit`.
    pub limiter: Option<std::sync::Arc<crate::ratelimit::Limiter>>,
}
