//! The gateway's shared client pool, built once at start-up and cloned into
//! every handler: one balanced, policy-wrapped client per service (see
//! [`crate::upstream`]) and one `reqwest::Client` for plain-HTTP upstreams.

use std::time::Duration;

use mesh_proto::cache::v1::cache_service_client::CacheServiceClient;
use mesh_proto::counter::v1::counter_service_client::CounterServiceClient;
use mesh_proto::items::v1::Item;
use mesh_proto::items::v1::item_service_client::ItemServiceClient;
use mesh_proto::tasks::v1::task_service_client::TaskServiceClient;

use crate::singleflight::SingleFlight;
use crate::upstream::{Transport, Upstream};

#[derive(Clone)]
pub struct AppState {
    pub items: Upstream<ItemServiceClient<Transport>>,
    pub cache: Upstream<CacheServiceClient<Transport>>,
    pub tasks: Upstream<TaskServiceClient<Transport>>,
    pub counter: Upstream<CounterServiceClient<Transport>>,
    pub http: reqwest::Client,
    pub upstream: Option<String>,
    /// Every route's deadline, shared by all the calls it makes.
    pub route_timeout: Duration,
    /// How long `GET /items/{id}` keeps an item in the cache.
    pub item_ttl: Duration,
    /// Coalesces concurrent `GET /items/{id}` for one id into one read path.
    pub item_reads: SingleFlight<i64, Result<(Item, &'static str), crate::error::AppError>>,
}

impl AppState {
    /// Each service's replicas as `/readyz` and `/overview` report them.
    pub fn upstream_members(&self) -> [(&'static str, Vec<crate::upstream::MemberView>); 4] {
        [
            (self.items.name, self.items.members().snapshot()),
            (self.cache.name, self.cache.members().snapshot()),
            (self.tasks.name, self.tasks.members().snapshot()),
            (self.counter.name, self.counter.members().snapshot()),
        ]
    }
}
