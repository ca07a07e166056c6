//! `mesh.cache.v1.CacheService`: proto <-> domain only.

use std::time::Duration;

use bytes::Bytes;
use mesh_proto::cache::v1 as pb;
use mesh_proto::cache::v1::cache_service_server::CacheService;
use tonic::{Request, Response, Status};

use crate::error::CacheError;
use crate::store::CacheStore;

#[derive(Clone)]
pub struct CacheApi {
    store: CacheStore,
}

impl CacheApi {
    pub fn new(store: CacheStore) -> Self {
        Self { store }
    }
}

fn ttl_from_proto(ttl: Option<prost_types::Duration>) -> Result<Option<Duration>, CacheError> {
    match ttl {
        None => Ok(None),
        Some(d) => Duration::try_from(d)
            .map(Some)
            .map_err(|_| CacheError::invalid("ttl", "must be a positive duration")),
    }
}

/// Namespaces are the gateway's (e.g. its item cache): under mutual TLS only
/// a caller with the gateway's certificate may read or write them.
fn check_namespace<T>(request: &Request<T>, namespace: &str) -> Result<(), Status> {
    // The RPC layer always says who the peer is; without it, refuse.
    let gateway = request
        .extensions()
        .get::<mesh_common::rpc::Peer>()
        .is_some_and(|peer| peer.may_act_as_gateway());
    if namespace.is_empty() || gateway {
        Ok(())
    } else {
        Err(Status::permission_denied(
            "namespace: namespaces are reserved for the gateway's certificate; use the public keyspace (namespace \"\")",
        ))
    }
}

#[tonic::async_trait]
impl CacheService for CacheApi {
    #[tracing::instrument(level = "debug", skip_all, fields(key = %request.get_ref().key))]
    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        check_namespace(&request, &request.get_ref().namespace)?;
        let r = request.get_ref();
        let value = self.store.get(&r.namespace, &r.key).await?;
        Ok(Response::new(match value {
            Some(value) => pb::GetResponse {
                found: true,
                value: value.to_vec(),
            },
            None => pb::GetResponse::default(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(key = %request.get_ref().key))]
    async fn set(&self, request: Request<pb::SetRequest>) -> Result<Response<pb::SetResponse>, Status> {
        check_namespace(&request, &request.get_ref().namespace)?;
        let r = request.into_inner();
        let ttl = ttl_from_proto(r.ttl)?;
        self.store.set(&r.namespace, &r.key, Bytes::from(r.value), ttl).await?;
        Ok(Response::new(pb::SetResponse {}))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(key = %request.get_ref().key))]
    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        check_namespace(&request, &request.get_ref().namespace)?;
        let r = request.get_ref();
        let deleted = self.store.delete(&r.namespace, &r.key).await?;
        Ok(Response::new(pb::DeleteResponse { deleted }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn stats(&self, _request: Request<pb::StatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        let s = self.store.stats().await?;
        Ok(Response::new(pb::StatsResponse {
            hits: s.hits,
            misses: s.misses,
            entries: s.entries,
        }))
    }
}
