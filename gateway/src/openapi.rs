//! The gateway's HTTP contract as OpenAPI 3.1, generated from the code:
//! routes from the handlers' `#[utoipa::path]`, bodies from the JSON types'
//! `ToSchema`, and each operation that calls an RPC described by that RPC's
//! comments in the protos (read from `mesh_proto::FILE_DESCRIPTOR_SET`,
//! which keeps source info, through the `mesh_proto::bindings` table), so the
//! protos and the HTTP docs cannot drift apart.
//!
//! What every route shares is added here once ([`Contract`]): the error
//! responses each route can answer ([`ERRORS`]), `x-request-id`, and
//! `Retry-After`. Served at `GET /openapi.json`, rendered at `GET /docs`, and
//! committed as `gateway/openapi.json` (kept equal by `tests/openapi.rs`).

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::OpenApi;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required};
use utoipa::{Modify, ToSchema};

use crate::routes::{cache, counter, items, ops, seed, tasks};

/// The one error body: `{"error": {"code", "message", "reason"?}}`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "NOT_FOUND", "message": "item 7 not found"}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The gRPC code's name (`NOT_FOUND`, `INVALID_ARGUMENT`, `ABORTED`, ...),
    /// or the gateway's own (`UNSUPPORTED_MEDIA_TYPE`, `PAYLOAD_TOO_LARGE`,
    /// `METHOD_NOT_ALLOWED`).
    #[schema(example = "NOT_FOUND")]
    pub code: &'static str,
    /// For people; a 5xx message never carries a service's internals.
    pub message: String,
    /// A finer reason than the code, when the service gives one
    /// (`IDEMPOTENCY_KEY_REUSED`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "IDEMPOTENCY_KEY_REUSED")]
    pub reason: Option<String>,
}

/// Where the docs are: the answer of `GET /`.
#[derive(Serialize, ToSchema)]
pub struct Index {
    /// The interactive docs page.
    #[schema(example = "/docs")]
    pub docs: &'static str,
    /// This contract, as OpenAPI 3.1 JSON.
    #[schema(example = "/openapi.json")]
    pub openapi: &'static str,
}

/// `GET /`: where the docs and the contract are.
#[utoipa::path(get, path = "/", tag = "ops", operation_id = "index",
    responses((status = 200, description = "Links to the docs page and the OpenAPI document", body = Index,
        example = json!({"docs": "/docs", "openapi": "/openapi.json"}))))]
pub async fn index() -> axum::Json<Index> {
    axum::Json(Index {
        docs: "/docs",
        openapi: "/openapi.json",
    })
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mesh gateway",
        description = "The mesh's HTTP/JSON edge in front of the items, cache, tasks and counter gRPC services. \
            Operations that call a service are described by the comments of the RPC they call \
            (`proto/mesh/<service>/v1/*.proto`). Every error has one shape, `ErrorBody`.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    // Relative: the gateway that serves this document.
    servers((url = "/", description = "This gateway")),
    paths(
        items::create, items::list, items::get, items::patch, items::delete,
        cache::get, cache::put, cache::delete,
        tasks::submit, tasks::submit_batch, tasks::list, tasks::stats, tasks::get, tasks::cancel, tasks::retry, tasks::events,
        counter::get, counter::reset, counter::increment,
        seed::test, seed::cached_data, seed::increment, seed::start_task, seed::run_blocking_task,
        seed::call_another_service,
        ops::healthz, ops::readyz, ops::overview, index,
    ),
    components(schemas(
        ErrorBody, ErrorDetail, items::CacheOutcome,
        ops::OverviewItems, ops::OverviewCache, ops::OverviewTasks, ops::OverviewCounter,
    )),
    tags(
        (name = "items", description = "The catalogue (ItemService), with cache-aside reads."),
        (name = "cache", description = "The public keyspace of the cache service (CacheService)."),
        (name = "tasks", description = "The background queue (TaskService)."),
        (name = "counters", description = "Named counters that never lose an increment (CounterService)."),
        (name = "seed", description = "The seed article's routes, served through the mesh: same paths, same JSON."),
        (name = "ops", description = "Liveness, readiness, the overview, and where the docs are."),
    ),
    modifiers(&Contract),
)]
struct ApiDoc;

/// The contract as committed: each operation's description filled from the
/// protos, and authentication as a gateway with `--auth` and the default
/// scopes asks for it.
pub fn spec() -> utoipa::openapi::OpenApi {
    let anonymous = crate::auth::AuthArgs::default_anonymous();
    rate_limited(secured(ApiDoc::openapi(), |method, path| {
        crate::auth::default_requirement(method, path, &anonymous)
    }))
}

/// The contract a gateway serves: with its own authentication (`None`:
/// every route open, no 401 or 403).
pub fn spec_for(auth: Option<&crate::auth::Auth>, limits: bool) -> utoipa::openapi::OpenApi {
    let spec = match auth {
        None => ApiDoc::openapi(),
        Some(auth) => secured(ApiDoc::openapi(), |method, path| {
            let method = axum::http::Method::from_bytes(method.as_bytes()).unwrap_or(axum::http::Method::GET);
            auth.requirement(&method, path)
        }),
    };
    if limits { rate_limited(spec) } else { spec }
}

/// Adds what `--rate-limit` answers: 429 on every operation, and the
/// `RateLimit` and `RateLimit-Policy` headers on every answer.
fn rate_limited(mut openapi: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let components = openapi.components.get_or_insert_with(Default::default);
    for (name, description) in [
        (
            "RateLimit-Policy",
            "The route group's limit (IETF httpapi draft): `\"write\";q=20;w=1`, `q` requests per `w` \
             seconds (some may come at once, up to the group's burst). On every answer in a group with a \
             --rate-limit.",
        ),
        (
            "RateLimit",
            "What is left of the limit: `\"write\";r=12;t=1`, `r` requests now, full again in `t` seconds.",
        ),
    ] {
        components.headers.insert(
            name.into(),
            RefOr::T(
                HeaderBuilder::new()
                    .schema(Some(string_schema()))
                    .description(Some(description))
                    .build(),
            ),
        );
    }
    let (name, description, example) = error_response(429);
    let mut response = error_component(description, example);
    for header in ["Retry-After", "RateLimit-Policy", "RateLimit"] {
        response.headers.insert(header.into(), header_ref(header));
    }
    components.responses.insert(name.into(), RefOr::T(response));
    // Every answer the limiter lets through carries both headers too: the
    // shared error responses and each operation's own. Not the ones given
    // before the limiter runs: a refused credential (401, 403; the
    // authentication layer is outside it) and the edge's own 408, 414, 431.
    let limit_headers = |response: &mut RefOr<utoipa::openapi::response::Response>| {
        if let RefOr::T(response) = response {
            for header in ["RateLimit-Policy", "RateLimit"] {
                response.headers.insert(header.into(), header_ref(header));
            }
        }
    };
    let before_the_limiter: Vec<&str> = [401, 403, 408, 414, 431]
        .into_iter()
        .map(|status| error_response(status).0)
        .collect();
    components
        .responses
        .iter_mut()
        .filter(|(name, _)| !before_the_limiter.contains(&name.as_str()))
        .for_each(|(_, response)| limit_headers(response));
    for (_, item) in openapi.paths.paths.iter_mut() {
        for (_, operation) in operations(item) {
            operation.responses.responses.values_mut().for_each(limit_headers);
            operation.responses.responses.insert(
                "429".into(),
                RefOr::Ref(Ref::new(format!("#/components/responses/{name}"))),
            );
        }
    }
    openapi
}

/// Adds the security schemes, each operation's requirement (a scope, or
/// none), and 401 and 403 to every operation that needs a credential.
fn secured(
    mut openapi: utoipa::openapi::OpenApi,
    requirement: impl Fn(&str, &str) -> crate::auth::Requirement,
) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::security::{
        ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };
    let components = openapi.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        "bearer".into(),
        RefOr::T(SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT or API key")
                .description(Some(
                    "`Authorization: Bearer <token>`: a JWT signed by a key of the gateway's --jwks \
                     (scopes from its `scope` or `scp` claim), or an API key's secret (--api-keys).",
                ))
                .build(),
        )),
    );
    components.security_schemes.insert(
        "apiKey".into(),
        RefOr::T(SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "x-api-key",
            "An API key's secret (--api-keys).",
        )))),
    );
    components.headers.insert(
        "WWW-Authenticate".into(),
        RefOr::T(
            HeaderBuilder::new()
                .schema(Some(string_schema()))
                .description(Some(
                    "The challenge (RFC 6750): `Bearer realm=\"mesh\"`, with `error=\"invalid_token\"` when a \
                     credential was refused, or `error=\"insufficient_scope\"` and the `scope` needed.",
                ))
                .build(),
        ),
    );
    for status in AUTH_ERRORS {
        let (name, description, example) = error_response(*status);
        let mut response = error_component(description, example);
        response
            .headers
            .insert("WWW-Authenticate".into(), header_ref("WWW-Authenticate"));
        components.responses.insert(name.into(), RefOr::T(response));
    }
    for (path, item) in openapi.paths.paths.iter_mut() {
        for (method, operation) in operations(item) {
            match requirement(method, path) {
                crate::auth::Requirement::Anonymous => {
                    operation.security = Some(vec![SecurityRequirement::default()]);
                }
                crate::auth::Requirement::Scope(scope) => {
                    operation.security = Some(vec![
                        SecurityRequirement::new("bearer", [scope.as_str()]),
                        SecurityRequirement::new("apiKey", [scope.as_str()]),
                    ]);
                    for status in AUTH_ERRORS {
                        let (name, _, _) = error_response(*status);
                        operation.responses.responses.insert(
                            status.to_string(),
                            RefOr::Ref(Ref::new(format!("#/components/responses/{name}"))),
                        );
                    }
                }
            }
        }
    }
    openapi
}

/// What a route that needs a credential can answer besides its own errors.
const AUTH_ERRORS: &[u16] = &[401, 403];

fn header_ref(name: &str) -> RefOr<utoipa::openapi::header::Header> {
    RefOr::Ref(Ref::new(format!("#/components/headers/{name}")))
}

/// An error response in the one error shape, with `x-request-id`.
fn error_component(description: &str, example: serde_json::Value) -> utoipa::openapi::response::Response {
    let mut response = ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .example(Some(example))
                .build(),
        )
        .build();
    response
        .headers
        .insert("x-request-id".into(), header_ref("x-request-id"));
    response
}

/// The contract as committed (`gateway/openapi.json`): pretty JSON and a newline.
pub fn spec_json() -> String {
    let mut text = spec().to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}

/// The error statuses each route can answer besides its own successes: one
/// row per route (a test checks the rows against the router's routes). The
/// edge's 414 (URI too long) and 431 (headers too large) apply to every route
/// and are added to all. 500 is a service's INTERNAL/UNKNOWN/DATA_LOSS; a
/// route with no service call cannot answer it.
pub const ERRORS: &[(&str, &str, &[u16])] = &[
    ("POST", "/items", &[400, 408, 413, 415, 500, 503, 504]),
    ("GET", "/items", &[400, 500, 503, 504]),
    ("GET", "/items/{id}", &[400, 404, 500, 503, 504]),
    ("PATCH", "/items/{id}", &[400, 404, 408, 409, 413, 415, 500, 503, 504]),
    ("DELETE", "/items/{id}", &[400, 404, 409, 500, 503, 504]),
    ("GET", "/cache/{key}", &[400, 404, 500, 503, 504]),
    ("PUT", "/cache/{key}", &[400, 408, 413, 415, 500, 503, 504]),
    ("DELETE", "/cache/{key}", &[400, 404, 500, 503, 504]),
    ("POST", "/tasks", &[400, 408, 413, 415, 422, 500, 503, 504]),
    ("POST", "/tasks:batch", &[400, 408, 413, 415, 422, 500, 503, 504]),
    ("GET", "/tasks", &[400, 500, 503, 504]),
    ("GET", "/tasks/stats", &[400, 500, 503, 504]),
    ("GET", "/tasks/{id}", &[400, 404, 500, 503, 504]),
    ("POST", "/tasks/{id}/cancel", &[400, 404, 409, 500, 503, 504]),
    ("POST", "/tasks/{id}/retry", &[400, 404, 409, 500, 503, 504]),
    ("GET", "/tasks/{id}/events", &[400, 404, 500, 503, 504]),
    ("GET", "/counters/{name}", &[400, 500, 503, 504]),
    ("POST", "/counters/{name}/reset", &[400, 500, 503, 504]),
    (
        "POST",
        "/counters/{name}/increment",
        &[400, 408, 413, 415, 422, 429, 500, 503, 504],
    ),
    ("GET", "/test", &[]),
    ("GET", "/cached-data", &[400, 500, 503, 504]),
    ("GET", "/increment", &[429, 500, 503, 504]),
    ("GET", "/start-task", &[500, 503, 504]),
    ("GET", "/run-blocking-task", &[400, 500, 503, 504]),
    ("GET", "/call-another-service", &[502, 503]),
    ("GET", "/healthz", &[]),
    ("GET", "/readyz", &[]),
    ("GET", "/overview", &[]),
    ("GET", "/", &[]),
];

/// The RPCs a route calls that the protos do not bind to it (the seed's
/// routes and the overview compose service calls of their own).
pub const CALLS: &[(&str, &str, &[&str])] = &[
    ("GET", "/cached-data", &["/mesh.cache.v1.CacheService/Get"]),
    ("GET", "/increment", &["/mesh.counter.v1.CounterService/Increment"]),
    ("GET", "/start-task", &["/mesh.tasks.v1.TaskService/SubmitTask"]),
    (
        "GET",
        "/run-blocking-task",
        &[
            "/mesh.tasks.v1.TaskService/SubmitTask",
            "/mesh.tasks.v1.TaskService/WatchTask",
            "/mesh.tasks.v1.TaskService/CancelTask",
        ],
    ),
    (
        "GET",
        "/overview",
        &[
            "/mesh.items.v1.ItemService/ListItems",
            "/mesh.cache.v1.CacheService/Stats",
            "/mesh.tasks.v1.TaskService/ListTasks",
            "/mesh.tasks.v1.TaskService/QueueStats",
            "/mesh.counter.v1.CounterService/Get",
        ],
    ),
];

/// Each error status's name in `components.responses` and what it means here.
fn error_response(status: u16) -> (&'static str, &'static str, serde_json::Value) {
    let (name, description, code, message) = match status {
        400 => (
            "BadRequest",
            "The request is invalid: a bad path segment, query parameter, header or body field \
             (named in the message), or a service refused it (INVALID_ARGUMENT, OUT_OF_RANGE).",
            "INVALID_ARGUMENT",
            "price_cents: expected an integer, got a string",
        ),
        401 => (
            "Unauthenticated",
            "No credential was sent, or the one sent was refused (unknown or revoked key; a token that is \
             expired, not yet valid, for another audience or issuer, or badly signed). The body says which, \
             and never repeats the credential.",
            "UNAUTHENTICATED",
            "the credential was refused: the token is invalid: it has expired",
        ),
        403 => (
            "Forbidden",
            "The credential is valid but lacks the route's scope (read, write or admin).",
            "PERMISSION_DENIED",
            "DELETE /items/{id} needs the admin scope; key:dashboard has read",
        ),
        404 => ("NotFound", "No such resource.", "NOT_FOUND", "item 7 not found"),
        408 => (
            "RequestTimeout",
            "The body did not arrive within --body-read-timeout-ms.",
            "DEADLINE_EXCEEDED",
            "the request body did not arrive within 30000 ms",
        ),
        409 => (
            "Conflict",
            "The resource's state does not allow the request: the stored version is not the one given \
             (`version`; ABORTED), or the task has already ended (cancel) or has not failed (retry; FAILED_PRECONDITION).",
            "ABORTED",
            "item 7 is at version 4, not the expected 3",
        ),
        413 => (
            "PayloadTooLarge",
            "The body is over --max-body-bytes.",
            "PAYLOAD_TOO_LARGE",
            "the request body is over the gateway's size limit (--max-body-bytes)",
        ),
        414 => (
            "UriTooLong",
            "The request target is too long.",
            "INVALID_ARGUMENT",
            "the request URI is 9000 bytes; at most 8192",
        ),
        415 => (
            "UnsupportedMediaType",
            "The body is not sent as JSON.",
            "UNSUPPORTED_MEDIA_TYPE",
            "the request body must be JSON, sent with `Content-Type: application/json`",
        ),
        422 => (
            "IdempotencyKeyReused",
            "The `Idempotency-Key` was first used with a different request (reason `IDEMPOTENCY_KEY_REUSED`).",
            "INVALID_ARGUMENT",
            "IDEMPOTENCY_KEY_REUSED: idempotency_key was first used on this counter with delta 1, not 5; \
             use a new key for a different request",
        ),
        429 => (
            "TooManyRequests",
            "A limit is reached (RESOURCE_EXHAUSTED): the gateway's --rate-limit for the route's group \
             (retry after `Retry-After` seconds), or a service's own, e.g. --max-counters in process.",
            "RESOURCE_EXHAUSTED",
            "rate limit reached: 20/s write requests (burst 40); retry after 1 s",
        ),
        431 => (
            "HeadersTooLarge",
            "The request headers are over --max-header-bytes.",
            "INVALID_ARGUMENT",
            "request headers are 20480 bytes; at most 16384",
        ),
        500 => (
            "InternalError",
            "A service failed unexpectedly (INTERNAL, UNKNOWN, DATA_LOSS); the details are in the gateway's log, \
             never in the body.",
            "INTERNAL",
            "the items service failed; see the gateway log",
        ),
        502 => (
            "BadGateway",
            "The plain-HTTP upstream failed or answered an error.",
            "UNAVAILABLE",
            "the upstream service did not answer",
        ),
        503 => (
            "Unavailable",
            "A service is down, has no ready replica, or is at its in-flight limit; retry after `Retry-After` seconds.",
            "UNAVAILABLE",
            "the items service is unavailable; try again",
        ),
        504 => (
            "GatewayTimeout",
            "The route's deadline (--route-timeout-ms) passed before the service answered.",
            "DEADLINE_EXCEEDED",
            "the items service did not answer in time",
        ),
        _ => ("Error", "An error.", "UNKNOWN", "error"),
    };
    let mut error = serde_json::json!({"code": code, "message": message});
    if status == 422 {
        error["reason"] = "IDEMPOTENCY_KEY_REUSED".into();
    }
    (name, description, serde_json::json!({ "error": error }))
}

/// Every error status used in [`ERRORS`], plus the edge's.
const EDGE_ERRORS: &[u16] = &[414, 431];

fn string_schema() -> RefOr<utoipa::openapi::schema::Schema> {
    ObjectBuilder::new().schema_type(Type::String).into()
}

fn request_id_header() -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(Some(string_schema()))
        .description(Some(
            "The request's id: the client's `x-request-id` if it sent one, else one the gateway made. \
             Also in the gateway's log lines and forwarded to the services.",
        ))
        .build()
}

/// Adds what every route shares, and the protos' descriptions.
struct Contract;

impl Modify for Contract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components
            .headers
            .insert("x-request-id".into(), RefOr::T(request_id_header()));
        components.headers.insert(
            "Retry-After".into(),
            RefOr::T(
                HeaderBuilder::new()
                    .schema(Some(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0))))
                    .description(Some("Seconds to wait before retrying."))
                    .build(),
            ),
        );
        components.parameters.insert(
            "x-request-id".into(),
            RefOr::T(
                ParameterBuilder::new()
                    .name("x-request-id")
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .schema(Some(string_schema()))
                    .description(Some(
                        "An id for the request, echoed in the response and the logs (one is made when absent).",
                    ))
                    .build(),
            ),
        );
        let mut used: Vec<u16> = EDGE_ERRORS.to_vec();
        for (_, _, statuses) in ERRORS {
            used.extend_from_slice(statuses);
        }
        used.sort_unstable();
        used.dedup();
        for status in &used {
            let (name, description, example) = error_response(*status);
            let mut response = error_component(description, example);
            if matches!(status, 429 | 503) {
                response.headers.insert("Retry-After".into(), header_ref("Retry-After"));
            }
            components.responses.insert(name.into(), RefOr::T(response));
        }

        let comments = rpc_comments();
        for (path, item) in openapi.paths.paths.iter_mut() {
            for (method, operation) in operations(item) {
                let errors = ERRORS
                    .iter()
                    .find(|(m, p, _)| *m == method && p == path)
                    .map_or(&[][..], |(_, _, e)| e);
                for status in errors.iter().chain(EDGE_ERRORS) {
                    let (name, _, _) = error_response(*status);
                    operation.responses.responses.insert(
                        status.to_string(),
                        RefOr::Ref(Ref::new(format!("#/components/responses/{name}"))),
                    );
                }
                for response in operation.responses.responses.values_mut() {
                    if let RefOr::T(response) = response {
                        response
                            .headers
                            .insert("x-request-id".into(), header_ref("x-request-id"));
                    }
                }
                operation
                    .parameters
                    .get_or_insert_with(Vec::new)
                    .push(RefOr::Ref(Ref::new("#/components/parameters/x-request-id")));
                if let Some(RefOr::T(body)) = &mut operation.request_body {
                    not_null(body);
                }
                if let Some(description) = describe(method, path, &comments) {
                    operation.description = Some(description);
                }
            }
        }
    }
}

/// An optional body (`Option<T>`) is one that may be left out, never JSON
/// `null` (the extractors take objects only): `T`'s schema, not required.
fn not_null(body: &mut utoipa::openapi::request_body::RequestBody) {
    use utoipa::openapi::schema::{Schema, SchemaType};
    for content in body.content.values_mut() {
        let RefOr::T(content) = content else { continue };
        let Some(RefOr::T(Schema::OneOf(one))) = &content.schema else {
            continue;
        };
        let is_null = |s: &RefOr<Schema>| matches!(s, RefOr::T(Schema::Object(o)) if o.schema_type == SchemaType::Type(Type::Null));
        if let [a, b] = one.items.as_slice() {
            let rest = match (is_null(a), is_null(b)) {
                (true, false) => b.clone(),
                (false, true) => a.clone(),
                _ => continue,
            };
            content.schema = Some(rest);
            body.required = Some(Required::False);
        }
    }
}

/// Each operation of a path item, with its HTTP method.
fn operations(item: &mut PathItem) -> Vec<(&'static str, &mut Operation)> {
    [
        ("GET", item.get.as_mut()),
        ("PUT", item.put.as_mut()),
        ("POST", item.post.as_mut()),
        ("DELETE", item.delete.as_mut()),
        ("PATCH", item.patch.as_mut()),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.map(|op| (m, op)))
    .collect()
}

/// The description of the operation `method path`: the comments of the RPC
/// bound to it in the protos (`google.api.http`), or of the RPCs it calls
/// ([`CALLS`]). `None` for a route that calls no RPC.
fn describe(method: &str, path: &str, comments: &BTreeMap<String, String>) -> Option<String> {
    let bound = mesh_proto::bindings::BINDINGS
        .iter()
        .find(|b| b.http_method == method && b.path == path)
        .map(|b| vec![b.grpc_path]);
    let called = CALLS
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .map(|(_, _, rpcs)| rpcs.to_vec());
    let rpcs = bound.or(called)?;
    let parts: Vec<String> = rpcs
        .iter()
        .map(|rpc| {
            let text = comments.get(*rpc).map(String::as_str).unwrap_or_default();
            format!("**gRPC `{rpc}`**\n\n{text}")
        })
        .collect();
    Some(parts.join("\n\n"))
}

/// Every mesh RPC's comments (`/pkg.Service/Method` → text): the comment
/// above the `rpc`, then those above its options (the HTTP binding's notes),
/// in source order, from the descriptor set's source info.
pub fn rpc_comments() -> BTreeMap<String, String> {
    use prost::Message;
    // Source info paths: FileDescriptorProto.service = 6,
    // ServiceDescriptorProto.method = 2.
    const SERVICE: i32 = 6;
    const METHOD: i32 = 2;
    let mut out = BTreeMap::new();
    let Ok(fds) = prost_types::FileDescriptorSet::decode(mesh_proto::FILE_DESCRIPTOR_SET) else {
        return out;
    };
    for file in fds.file.iter().filter(|f| f.package().starts_with("mesh.")) {
        let Some(info) = &file.source_code_info else {
            continue;
        };
        for (s, service) in file.service.iter().enumerate() {
            for (m, method) in service.method.iter().enumerate() {
                let prefix = [SERVICE, s as i32, METHOD, m as i32];
                let text: Vec<String> = info
                    .location
                    .iter()
                    .filter(|l| l.path.starts_with(&prefix) && l.path.len() != 5)
                    .flat_map(|l| {
                        l.leading_detached_comments
                            .iter()
                            .chain(&l.leading_comments)
                            .chain(&l.trailing_comments)
                    })
                    .map(|c| uncomment(c))
                    .filter(|c| !c.is_empty())
                    .collect();
                let key = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                out.insert(key, text.join("\n\n"));
            }
        }
    }
    out
}

/// A comment's text without the one space after each `//`.
fn uncomment(comment: &str) -> String {
    comment
        .lines()
        .map(|line| line.strip_prefix(' ').unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

/// [`tags_schema`], or `null` (an update's "leave the tags as they are").
pub fn nullable_tags_schema() -> utoipa::openapi::schema::Array {
    let mut tags = tags_schema();
    tags.schema_type = utoipa::openapi::schema::SchemaType::from_iter([Type::Array, Type::Null]);
    tags
}

/// Text that must not be blank (it is trimmed) and must not contain NUL
/// (PostgreSQL's `TEXT` cannot hold it, so both backends refuse it). The
/// whitespace is spelled out, as the set Rust's `str::trim` removes (Unicode
/// White_Space), because regex engines disagree on `\s` (Python's includes
/// U+001C..U+001F).
pub const NOT_BLANK_PATTERN: &str =
    r"^[^\u0000]*[^\u0000\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000]*$";

/// Schema of a list of item tags: at most 32, each 1..=64 characters, not
/// blank (tags are trimmed).
pub fn tags_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(64))
                .pattern(Some(NOT_BLANK_PATTERN)),
        )
        .max_items(Some(32))
        .build()
}
