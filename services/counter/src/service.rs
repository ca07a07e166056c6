//! `mesh.counter.v1.CounterService`: proto <-> domain only.

use mesh_proto::counter::v1 as pb;
use mesh_proto::counter::v1::counter_service_server::CounterService;
use tonic::{Request, Response, Status};

use crate::store::CounterStore;

#[derive(Clone)]
pub struct CounterApi {
    store: CounterStore,
}

impl CounterApi {
    pub fn new(store: CounterStore) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl CounterService for CounterApi {
    #[tracing::instrument(level = "debug", skip_all, fields(name = %request.get_ref().name))]
    async fn increment(&self, request: Request<pb::IncrementRequest>) -> Result<Response<pb::CounterValue>, Status> {
        let r = request.into_inner();
        let key = Some(r.idempotency_key.as_str()).filter(|k| !k.is_empty());
        let value = self.store.increment(&r.name, r.delta.unwrap_or(1), key).await?;
        Ok(Response::new(pb::CounterValue { name: r.name, value }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(name = %request.get_ref().name))]
    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::CounterValue>, Status> {
        let r = request.into_inner();
        let value = self.store.get(&r.name).await?;
        Ok(Response::new(pb::CounterValue { name: r.name, value }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(name = %request.get_ref().name))]
    async fn reset(&self, request: Request<pb::ResetRequest>) -> Result<Response<pb::CounterValue>, Status> {
        let r = request.into_inner();
        let value = self.store.reset(&r.name).await?;
        Ok(Response::new(pb::CounterValue { name: r.name, value }))
    }
}
