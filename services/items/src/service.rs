//! `mesh.items.v1.ItemService`: tonic's requests in, the store's answers out;
//! the store does the work (and speaks the contract's messages).

use mesh_proto::items::v1 as pb;
use mesh_proto::items::v1::item_service_server::ItemService;
use tonic::{Request, Response, Status};

use crate::store::ItemStore;

#[derive(Clone, Debug)]
pub struct ItemsApi {
    store: ItemStore,
}

impl ItemsApi {
    pub fn new(store: ItemStore) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl ItemService for ItemsApi {
    #[tracing::instrument(level = "debug", skip_all, fields(name = %request.get_ref().name))]
    async fn create_item(&self, request: Request<pb::CreateItemRequest>) -> Result<Response<pb::Item>, Status> {
        let item = self.store.create(request.into_inner()).await?;
        tracing::debug!(id = item.id, "item created");
        Ok(Response::new(item))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(id = request.get_ref().id))]
    async fn get_item(&self, request: Request<pb::GetItemRequest>) -> Result<Response<pb::Item>, Status> {
        Ok(Response::new(self.store.get(request.get_ref().id).await?))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list_items(
        &self,
        request: Request<pb::ListItemsRequest>,
    ) -> Result<Response<pb::ListItemsResponse>, Status> {
        let r = request.into_inner();
        let page = self.store.list(r.page_size, &r.page_token).await?;
        Ok(Response::new(pb::ListItemsResponse {
            items: page.items,
            next_page_token: page.next_token.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(id = request.get_ref().id))]
    async fn update_item(&self, request: Request<pb::UpdateItemRequest>) -> Result<Response<pb::Item>, Status> {
        Ok(Response::new(self.store.update(request.into_inner()).await?))
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
