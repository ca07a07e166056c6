//! `mesh.items.v1.ItemService`: proto <-> domain only; the store does the work.

use mesh_proto::items::v1 as pb;
use mesh_proto::items::v1::item_service_server::ItemService;
use mesh_proto::time::from_millis;
use tonic::{Request, Response, Status};

use crate::store::{Item, ItemPatch, ItemStore, NewItem};

#[derive(Clone, Debug)]
pub struct ItemsApi {
    store: ItemStore,
}

impl ItemsApi {
    pub fn new(store: ItemStore) -> Self {
        Self { store }
    }
}

fn to_proto(item: Item) -> pb::Item {
    pb::Item {
        id: item.id,
        name: item.name,
        description: item.description,
        price_cents: item.price_cents,
        tags: item.tags,
        create_time: Some(from_millis(item.created_ms)),
        update_time: Some(from_millis(item.updated_ms)),
        version: item.version,
    }
}

#[tonic::async_trait]
impl ItemService for ItemsApi {
    #[tracing::instrument(level = "debug", skip_all, fields(name = %request.get_ref().name))]
    async fn create_item(&self, request: Request<pb::CreateItemRequest>) -> Result<Response<pb::Item>, Status> {
        let r = request.into_inner();
        let item = self
            .store
            .create(NewItem {
                name: r.name,
                description: r.description,
                price_cents: r.price_cents,
                tags: r.tags,
            })
            .await?;
        tracing::debug!(id = item.id, "item created");
        Ok(Response::new(to_proto(item)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(id = request.get_ref().id))]
    async fn get_item(&self, request: Request<pb::GetItemRequest>) -> Result<Response<pb::Item>, Status> {
        let item = self.store.get(request.get_ref().id).await?;
        Ok(Response::new(to_proto(item)))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list_items(
        &self,
        request: Request<pb::ListItemsRequest>,
    ) -> Result<Response<pb::ListItemsResponse>, Status> {
        let r = request.into_inner();
        let page = self.store.list(r.page_size, &r.page_token).await?;
        Ok(Response::new(pb::ListItemsResponse {
            items: page.items.into_iter().map(to_proto).collect(),
            next_page_token: page.next_token.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(id = request.get_ref().id))]
    async fn update_item(&self, request: Request<pb::UpdateItemRequest>) -> Result<Response<pb::Item>, Status> {
        let r = request.into_inner();
        let patch = ItemPatch {
            name: r.name,
            description: r.description,
            price_cents: r.price_cents,
            tags: r.tags.map(|t| t.values),
        };
        let item = self.store.update(r.id, patch, r.expected_version).await?;
        Ok(Response::new(to_proto(item)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(id = request.get_ref().id))]
    async fn delete_item(
        &self,
        request: Request<pb::DeleteItemRequest>,
    ) -> Result<Response<pb::DeleteItemResponse>, Status> {
        let r = request.into_inner();
        self.store.delete(r.id, r.expected_version).await?;
        Ok(Response::new(pb::DeleteItemResponse {}))
    }
}
