//! `/items`: CRUD over the items service, with cache-aside reads.
//!
//! `GET /items/{id}` looks in the cache service first (`x-cache: hit`), falls
//! back to the items service and fills the cache (`x-cache: miss`); if the
//! cache service is down it still answers from the items service
//! (`x-cache: bypass`). Updates and deletes invalidate the cached copy.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use mesh_proto::cache::v1 as cache_pb;
use mesh_proto::cache::v1::cache_service_client::CacheServiceClient;
use mesh_proto::items::v1 as pb;
use mesh_proto::items::v1::item_service_client::ItemServiceClient;
use prost::Message;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::rfc3339;
use crate::error::AppError;
use crate::extract::{Call, Json, Path, Query, parse_id};
use crate::state::AppState;

/// An item as the gateway shows it.
#[derive(Serialize, ToSchema)]
#[schema(as = Item, example = json!(item_example()))]
pub struct ItemJson {
    #[schema(minimum = 1)]
    pub id: i64,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000]*[^\u0000\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000]*$"
    )]
    pub name: String,
    #[schema(max_length = 10000, pattern = "^[^\\u0000]*$")]
    pub description: String,
    #[schema(minimum = 0)]
    pub price_cents: i64,
    #[schema(schema_with = crate::openapi::tags_schema)]
    pub tags: Vec<String>,
    /// RFC 3339.
    #[schema(format = DateTime, required = true)]
    pub created_at: Option<String>,
    /// RFC 3339.
    #[schema(format = DateTime, required = true)]
    pub updated_at: Option<String>,
    /// Starts at 1 and grows by one with every update.
    #[schema(minimum = 1)]
    pub version: i64,
}

fn item_example() -> serde_json::Value {
    serde_json::json!({
        "id": 7, "name": "pen", "description": "blue ink", "price_cents": 150, "tags": ["office"],
        "created_at": "2026-11-26T16:32:12.361Z", "updated_at": "2026-11-26T16:32:12.361Z", "version": 1,
    })
}

/// One page of items, in ascending id order.
#[derive(Serialize, ToSchema)]
pub struct ItemPage {
    pub items: Vec<ItemJson>,
    /// Pass as `page_token` for the next page; empty on the last one.
    #[schema(pattern = "^(after-[1-9][0-9]{0,17})?$")]
    pub next_page_token: String,
}

impl From<pb::Item> for ItemJson {
    fn from(i: pb::Item) -> Self {
        Self {
            id: i.id,
            name: i.name,
            description: i.description,
            price_cents: i.price_cents,
            tags: i.tags,
            created_at: rfc3339(i.create_time),
            updated_at: rfc3339(i.update_time),
            version: i.version,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "pen", "description": "blue ink", "price_cents": 150, "tags": ["office"]}))]
pub struct CreateItem {
    /// Trimmed; 1..=200 characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000]*[^\u0000\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000]*$"
    )]
    name: String,
    #[serde(default)]
    #[schema(max_length = 10000, pattern = "^[^\\u0000]*$")]
    description: String,
    #[serde(default)]
    #[schema(minimum = 0)]
    price_cents: i64,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::tags_schema)]
    tags: Vec<String>,
}

/// The fields to change; absent ones stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"price_cents": 175, "version": 1}))]
pub struct PatchItem {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000]*[^\u0000\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000]*$"
    )]
    name: Option<String>,
    #[schema(max_length = 10000, pattern = "^[^\\u0000]*$")]
    description: Option<String>,
    #[schema(minimum = 0)]
    price_cents: Option<i64>,
    /// `[]` clears the tags; absent or `null` leaves them.
    #[schema(schema_with = crate::openapi::nullable_tags_schema)]
    tags: Option<Vec<String>>,
    /// When given, the update only applies to this version (else 409).
    #[schema(minimum = 1)]
    version: Option<i64>,
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// 1..=1000; absent or 0: 50.
    #[param(minimum = 0, maximum = 1000)]
    page_size: Option<i32>,
    /// From the previous page's `next_page_token`.
    #[param(pattern = "^(after-[1-9][0-9]{0,17})?$")]
    page_token: Option<String>,
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// When given, only this version is deleted (else 409).
    #[param(minimum = 1)]
    version: Option<i64>,
}

/// The cache keyspace of the gateway's own entries. The public `/cache`
/// routes always use the public keyspace (""), so no HTTP client can write
/// (forge) or read a cached item. (Over gRPC the cache service still takes any
/// namespace from any caller until callers are authenticated.)
pub const CACHE_NAMESPACE: &str = "gateway";

pub fn cache_key(id: i64) -> String {
    format!("item:{id}")
}

/// Create an item.
#[utoipa::path(post, path = "/items", tag = "items", operation_id = "create_item",
    request_body = CreateItem,
    responses((status = 201, description = "Created", body = ItemJson,
        headers(("Location" = String, description = "`/items/{id}` of the new item")))))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn create(
    State(state): State<AppState>,
    call: Call,
    Json(body): Json<CreateItem>,
) -> Result<Response, AppError> {
    let message = pb::CreateItemRequest {
        name: body.name,
        description: body.description,
        price_cents: body.price_cents,
        tags: body.tags,
    };
    let item = state
        .items
        .unary(&call, message, ItemServiceClient::create_item)
        .await?;
    let location = HeaderValue::from_str(&format!("/items/{}", item.id)).ok();
    let mut response = (StatusCode::CREATED, axum::Json(ItemJson::from(item))).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(axum::http::header::LOCATION, location);
    }
    Ok(response)
}

/// List items.
#[utoipa::path(get, path = "/items", tag = "items", operation_id = "list_items", params(ListParams),
    responses((status = 200, description = "One page of items", body = ItemPage,
        example = json!({"items": [item_example()], "next_page_token": ""}))))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list(
    State(state): State<AppState>,
    call: Call,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<ItemPage>, AppError> {
    let message = pb::ListItemsRequest {
        page_size: params.page_size.unwrap_or(0),
        page_token: params.page_token.unwrap_or_default(),
    };
    let page = state.items.unary(&call, message, ItemServiceClient::list_items).await?;
    Ok(axum::Json(ItemPage {
        items: page.items.into_iter().map(ItemJson::from).collect(),
        next_page_token: page.next_page_token,
    }))
}

/// Get an item (cache-aside).
#[utoipa::path(get, path = "/items/{id}", tag = "items", operation_id = "get_item",
    params(("id" = i64, Path, minimum = 1, description = "The item's id")),
    responses((status = 200, description = "The item", body = ItemJson,
        headers(("x-cache" = CacheOutcome, description = "`hit` (from the cache), `miss` (from the items \
            service, now cached) or `bypass` (the cache is down; from the items service)")))))]
#[tracing::instrument(level = "debug", skip_all, fields(id = %id))]
pub async fn get(State(state): State<AppState>, call: Call, Path(id): Path<String>) -> Result<Response, AppError> {
    let id = parse_id(&id, "id")?;
    // The hot path: a cache hit needs nothing shared with other requests.
    let (item, how) = match cached(&state, &call, id).await {
        Cached::Hit(item) => (item, CacheOutcome::Hit),
        Cached::Miss | Cached::Unavailable => {
            // Concurrent misses of one id share one read path (which looks
            // in the cache again first), so a hot key expiring sends one call
            // to the database, not hundreds. Keyed by the write epoch too: a
            // read that starts after a write never joins a read path that
            // began before it (read-your-writes).
            let epoch = state.item_writes.load(Ordering::Acquire);
            let read: futures::future::BoxFuture<'static, _> =
                Box::pin(read_through(state.clone(), call.clone(), id, epoch));
            let lost = Err(AppError::Unavailable("the item read was interrupted; try again".into()));
            state.item_reads.run((id, epoch), read, lost).await?
        }
    };
    crate::metrics::cache_lookup(how.as_str());
    let mut response = axum::Json(ItemJson::from(item)).into_response();
    response
        .headers_mut()
        .insert("x-cache", HeaderValue::from_static(how.as_str()));
    Ok(response)
}

/// How `GET /items/{id}` served the item: its `x-cache` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum CacheOutcome {
    /// From the cache.
    Hit,
    /// From the items service; now cached.
    Miss,
    /// From the items service, the cache being down.
    Bypass,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Bypass => "bypass",
        }
    }
}

enum Cached {
    Hit(pb::Item),
    Miss,
    Unavailable,
}

/// Looks the item up in the cache. A value that does not decode, or that is
/// not the item asked for, counts as a miss: the read goes to the items
/// service and replaces the entry.
async fn cached(state: &AppState, call: &Call, id: i64) -> Cached {
    let get = cache_pb::GetRequest {
        key: cache_key(id),
        namespace: CACHE_NAMESPACE.into(),
    };
    let found = state.cache.unary(call, get, CacheServiceClient::get).await;
    match found {
        Ok(found) if found.found => match pb::Item::decode(found.value.as_slice()) {
            Ok(item) if item.id == id => Cached::Hit(item),
            Ok(item) => {
                tracing::warn!(id, cached_id = item.id, "cached entry holds another item; refetching");
                Cached::Miss
            }
            Err(err) => {
                tracing::warn!(error = %err, id, "cached item does not decode; refetching");
                Cached::Miss
            }
        },
        Ok(_) => Cached::Miss,
        Err(err) => {
            tracing::warn!(error = %err, "cache unavailable; reading items directly");
            Cached::Unavailable
        }
    }
}

/// Cache-aside: the cache first (`hit`); on a miss the items service, then
/// fill the cache (`miss`); with the cache down, the items service alone
/// (`bypass`).
async fn read_through(state: AppState, call: Call, id: i64, epoch: u64) -> Result<(pb::Item, CacheOutcome), AppError> {
    let key = cache_key(id);
    match cached(&state, &call, id).await {
        Cached::Hit(item) => Ok((item, CacheOutcome::Hit)),
        Cached::Miss => Ok((
            fetch_and_fill(&state, &call, id, key, Some(epoch)).await?,
            CacheOutcome::Miss,
        )),
        Cached::Unavailable => Ok((
            fetch_and_fill(&state, &call, id, key, None).await?,
            CacheOutcome::Bypass,
        )),
    }
}

/// Reads the item from the items service and, with `fill` (the write epoch
/// the read began in), stores it in the cache, unless an item write happened
/// since: the value read might predate it, and the write has just invalidated
/// the cache. A failed fill is logged, never returned: the read succeeded.
async fn fetch_and_fill(
    state: &AppState,
    call: &Call,
    id: i64,
    key: String,
    fill: Option<u64>,
) -> Result<pb::Item, AppError> {
    let item = state
        .items
        .unary(call, pb::GetItemRequest { id }, ItemServiceClient::get_item)
        .await?;
    if fill.is_some_and(|epoch| state.item_writes.load(Ordering::Acquire) == epoch) {
        let set = cache_pb::SetRequest {
            key,
            value: item.encode_to_vec(),
            ttl: prost_types::Duration::try_from(state.item_ttl).ok(),
            namespace: CACHE_NAMESPACE.into(),
        };
        // Setting a key to the same value twice is harmless: safe to retry.
        let filled = state.cache.unary(call, set, CacheServiceClient::set).await;
        if let Err(err) = filled {
            tracing::warn!(error = %err, "cannot fill the cache");
        }
    }
    Ok(item)
}

/// Update an item.
#[utoipa::path(patch, path = "/items/{id}", tag = "items", operation_id = "update_item",
    params(("id" = i64, Path, minimum = 1, description = "The item's id")),
    request_body = PatchItem,
    responses((status = 200, description = "The updated item", body = ItemJson)))]
#[tracing::instrument(level = "debug", skip_all, fields(id = %id))]
pub async fn patch(
    State(state): State<AppState>,
    call: Call,
    Path(id): Path<String>,
    Json(body): Json<PatchItem>,
) -> Result<axum::Json<ItemJson>, AppError> {
    let id = parse_id(&id, "id")?;
    check_version(body.version)?;
    let message = pb::UpdateItemRequest {
        id,
        name: body.name,
        description: body.description,
        price_cents: body.price_cents,
        tags: body.tags.map(|values| pb::TagList { values }),
        expected_version: body.version,
    };
    state.item_writes.fetch_add(1, Ordering::AcqRel);
    let item = state
        .items
        .unary(&call, message, ItemServiceClient::update_item)
        .await?;
    invalidate(&state, &call, id).await;
    Ok(axum::Json(ItemJson::from(item)))
}

/// Delete an item.
#[utoipa::path(delete, path = "/items/{id}", tag = "items", operation_id = "delete_item",
    params(("id" = i64, Path, minimum = 1, description = "The item's id"), DeleteParams),
    responses((status = 204, description = "Deleted")))]
#[tracing::instrument(level = "debug", skip_all, fields(id = %id))]
pub async fn delete(
    State(state): State<AppState>,
    call: Call,
    Path(id): Path<String>,
    Query(params): Query<DeleteParams>,
) -> Result<StatusCode, AppError> {
    let id = parse_id(&id, "id")?;
    check_version(params.version)?;
    let message = pb::DeleteItemRequest {
        id,
        expected_version: params.version,
    };
    state.item_writes.fetch_add(1, Ordering::AcqRel);
    state
        .items
        .unary(&call, message, ItemServiceClient::delete_item)
        .await?;
    invalidate(&state, &call, id).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `version` is the HTTP name of the service's `expected_version`: checked
/// here so that the message names the field the client sent.
fn check_version(version: Option<i64>) -> Result<(), AppError> {
    match version {
        Some(v) if v < 1 => Err(AppError::invalid(format!("version: must be at least 1, got {v}"))),
        _ => Ok(()),
    }
}

/// Drops the cached copy after a write. If the cache is down the entry
/// expires by its TTL; the write itself has succeeded either way.
///
/// The write epoch moves before the write and again here: a read that began
/// before either does not fill the cache with what it read.
async fn invalidate(state: &AppState, call: &Call, id: i64) {
    state.item_writes.fetch_add(1, Ordering::AcqRel);
    let delete = cache_pb::DeleteRequest {
        key: cache_key(id),
        namespace: CACHE_NAMESPACE.into(),
    };
    // Deleting twice is harmless: safe to retry.
    let deleted = state.cache.unary(call, delete, CacheServiceClient::delete).await;
    if let Err(err) = deleted {
        tracing::warn!(error = %err, id, "cannot invalidate the cached item; it expires by TTL");
    }
}
