//! Authentication and scopes at the edge (the credentials themselves are
//! the `mesh-auth` crate's).
//!
//! Every matched route has a [`Requirement`]: anonymous, or a scope. The
//! defaults ([`default_requirement`]) are:
//!
//! | scope | routes |
//! |-------|--------|
//! | anonymous | `GET /`, `/healthz`, `/readyz`, `/docs`, `/openapi.json`, `/test` (`--anonymous-routes` replaces this list) |
//! | `read` | every other `GET` that changes nothing |
//! | `write` | creates, updates, increments, task submits and cancels (and the seed's `GET /increment`, `/start-task`, `/run-blocking-task`, which do those) |
//! | `admin` | deletes, counter resets, cache writes, task retries, and `GET /overview` (it shows the mesh's make-up) |
//!
//! `--route-scope "POST /items=admin"` changes one route's.
//!
//! A request without a credential, or with one that does not verify, is
//! answered 401 with `WWW-Authenticate`; one whose credential lacks the
//! route's scope, 403. Neither body repeats the credential. The principal
//! rides on the request (handlers' service calls send it as
//! `x-mesh-principal`), and every admin route's outcome is logged once under
//! the `audit` target, with the principal and never the credential.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mesh_auth::jwt::{JwtSettings, JwtVerifier, KeySet};
use mesh_auth::keys::KeyTable;
use mesh_auth::reload::{Reload, Reloading};
use mesh_auth::{AuthError, Credential, Principal, Scope, Verifier};

use crate::error::AppError;

/// The authentication flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct AuthArgs {
    /// Which credentials the gateway accepts: `keys` (--api-keys), `jwt`
    /// (--jwks), both (`keys,jwt`), or `none`. Unset means `none` on a
    /// loopback address; on any other address the gateway refuses to start
    /// until it is set.
    #[arg(long = "auth", env = "GATEWAY_AUTH", value_delimiter = ',', value_parser = ["none", "keys", "jwt"])]
    pub modes: Vec<String>,

    /// File of API keys, one `ID SHA256_HEX SCOPES` per line (make one with
    /// `mesh api-key ID read,write`). Re-read when it changes.
    #[arg(long, env = "GATEWAY_API_KEYS")]
    pub api_keys: Option<PathBuf>,

    /// JWKS file with the keys that sign bearer tokens (RS256, ES256,
    /// HS256). Re-read when it changes.
    #[arg(long, env = "GATEWAY_JWKS")]
    pub jwks: Option<PathBuf>,

    /// The `iss` every token must carry.
    #[arg(long, env = "GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// The `aud` every token must carry.
    #[arg(long, env = "GATEWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(long, env = "GATEWAY_JWT_LEEWAY_SECS", default_value_t = 30)]
    pub jwt_leeway_secs: u64,

    /// How often the key and JWKS files are checked for changes, in ms
    /// (SIGHUP checks at once).
    #[arg(long, env = "GATEWAY_AUTH_RELOAD_MS", default_value_t = 2000)]
    pub auth_reload_ms: u64,

    /// Route templates anyone may call, any method (replaces the default list).
    #[arg(long, env = "GATEWAY_ANONYMOUS_ROUTES", value_delimiter = ',', default_value = DEFAULT_ANONYMOUS)]
    pub anonymous_routes: Vec<String>,

    /// A route's scope instead of its default, as `METHOD TEMPLATE=SCOPE`
    /// (e.g. `POST /items=admin`, `GET /overview=read`); repeatable.
    #[arg(long = "route-scope", env = "GATEWAY_ROUTE_SCOPES", value_delimiter = ';', value_parser = parse_route_scope)]
    pub route_scopes: Vec<RouteScope>,
}

/// The routes anyone may call unless `--anonymous-routes` says otherwise.
pub const DEFAULT_ANONYMOUS: &str = "/,/healthz,/readyz,/docs,/openapi.json,/test";

impl AuthArgs {
    /// [`DEFAULT_ANONYMOUS`] as a list.
    pub fn default_anonymous() -> Vec<String> {
        DEFAULT_ANONYMOUS.split(',').map(str::to_owned).collect()
    }
}

/// One `--route-scope`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteScope {
    pub method: Method,
    pub path: String,
    pub scope: Scope,
}

fn parse_route_scope(raw: &str) -> Result<RouteScope, String> {
    let (route, scope) = raw
        .rsplit_once('=')
        .ok_or_else(|| format!("{raw:?}: expected `METHOD TEMPLATE=SCOPE`"))?;
    let (method, path) = route
        .trim()
        .split_once(' ')
        .ok_or_else(|| format!("{raw:?}: expected `METHOD TEMPLATE=SCOPE`"))?;
    let method = Method::from_bytes(method.trim().to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("{raw:?}: {method:?} is not an HTTP method"))?;
    let path = path.trim();
    if !path.starts_with('/') {
        return Err(format!("{raw:?}: the route template must start with '/'"));
    }
    Ok(RouteScope {
        method,
        path: path.to_owned(),
        scope: scope.trim().parse()?,
    })
}

/// What a route asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requirement {
    Anonymous,
    Scope(Scope),
}

/// The default requirement of a route (method and template), with
/// `anonymous` the templates anyone may call.
pub fn default_requirement(method: &str, path: &str, anonymous: &[String]) -> Requirement {
    // axum answers HEAD with the GET handler (running it, then dropping the
    // body), so HEAD must need exactly what GET needs.
    let method = if method == "HEAD" { "GET" } else { method };
    let is_docs_asset = path.starts_with("/docs/") && anonymous.iter().any(|a| a == "/docs");
    if is_docs_asset || anonymous.iter().any(|a| a == path) {
        return Requirement::Anonymous;
    }
    Requirement::Scope(match (method, path) {
        ("DELETE", _)
        | ("PUT", "/cache/{key}")
        | ("POST", "/counters/{name}/reset" | "/tasks/{id}/retry")
        | ("GET", "/overview") => Scope::Admin,
        ("GET", "/increment" | "/start-task" | "/run-blocking-task") => Scope::Write,
        ("GET", _) => Scope::Read,
        _ => Scope::Write,
    })
}

/// The gateway's authentication: who may call what.
pub struct Auth {
    verifier: Verifier,
    anonymous: Vec<String>,
    overrides: Vec<RouteScope>,
    files: Vec<Arc<dyn Reload>>,
    reload_every: Duration,
    /// The `WWW-Authenticate` challenge of a 401 without a credential.
    challenge: HeaderValue,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("verifier", &self.verifier)
            .field("anonymous", &self.anonymous)
            .field("overrides", &self.overrides)
            .finish_non_exhaustive()
    }
}

impl AuthArgs {
    /// The configured authentication, `None` for none. Refuses a gateway on
    /// a non-loopback `listen` with no authentication chosen, and flag sets
    /// that contradict each other.
    pub fn build(&self, listen: SocketAddr, tls: bool) -> anyhow::Result<Option<Arc<Auth>>> {
        let none = self.modes.iter().any(|m| m == "none");
        let keys = self.modes.iter().any(|m| m == "keys");
        let jwt = self.modes.iter().any(|m| m == "jwt");
        if none && (keys || jwt) {
            anyhow::bail!("--auth none cannot be combined with keys or jwt");
        }
        for o in &self.route_scopes {
            if !crate::openapi::ERRORS
                .iter()
                .any(|(m, p, _)| *m == o.method.as_str() && *p == o.path)
            {
                anyhow::bail!(
                    "--route-scope {} {}: the gateway has no such route (templates as in the OpenAPI document, e.g. /items/{{id}})",
                    o.method,
                    o.path
                );
            }
        }
        for path in &self.anonymous_routes {
            let docs = path == "/docs" || path == "/openapi.json";
            if !docs && !crate::openapi::ERRORS.iter().any(|(_, p, _)| p == path) {
                anyhow::bail!("--anonymous-routes {path}: the gateway has no such route");
            }
        }
        if !keys && !jwt {
            if !none && !listen.ip().is_loopback() {
                anyhow::bail!(
                    "the gateway would listen on {listen}, which is not a loopback address, with no authentication: \
                     set --auth keys (with --api-keys FILE) and/or --auth jwt (with --jwks FILE, --jwt-issuer, \
                     --jwt-audience), or --auth none to serve anyone who can reach it"
                );
            }
            if self.api_keys.is_some() || self.jwks.is_some() {
                anyhow::bail!("--api-keys and --jwks take effect with --auth keys / --auth jwt");
            }
            return Ok(None);
        }
        if !listen.ip().is_loopback() && !tls {
            tracing::warn!(
                %listen,
                "credentials will cross the network in the clear unless TLS ends in front of the gateway or --tls-cert is set"
            );
        }
        let mut verifier = Verifier::default();
        let mut files: Vec<Arc<dyn Reload>> = Vec::new();
        if keys {
            let path = self.api_keys.as_ref().context("--auth keys needs --api-keys FILE")?;
            let table = Arc::new(Reloading::load("API keys file", path, KeyTable::parse)?);
            if table.current().is_empty() {
                tracing::warn!(file = %path.display(), "the API keys file lists no keys: every key is refused");
            }
            files.push(table.clone());
            verifier.keys = Some(table);
        }
        if jwt {
            let path = self.jwks.as_ref().context("--auth jwt needs --jwks FILE")?;
            let settings = JwtSettings {
                issuer: self.jwt_issuer.clone().context("--auth jwt needs --jwt-issuer")?,
                audience: self.jwt_audience.clone().context("--auth jwt needs --jwt-audience")?,
                leeway_secs: self.jwt_leeway_secs.min(300),
            };
            let set = Arc::new(Reloading::load("JWKS file", path, KeySet::parse)?);
            files.push(set.clone());
            verifier.jwt = Some(Arc::new(JwtVerifier::new(set, settings)));
        }
        Ok(Some(Arc::new(Auth {
            verifier,
            anonymous: self.anonymous_routes.clone(),
            overrides: self.route_scopes.clone(),
            files,
            reload_every: Duration::from_millis(self.auth_reload_ms.max(10)),
            challenge: HeaderValue::from_static("Bearer realm=\"mesh\""),
        })))
    }
}

impl Auth {
    /// What a route asks of its caller under this configuration.
    pub fn requirement(&self, method: &Method, path: &str) -> Requirement {
        // HEAD runs the GET handler: it needs what GET needs.
        let method = if method == Method::HEAD { &Method::GET } else { method };
        if let Some(o) = self.overrides.iter().find(|o| o.method == method && o.path == path) {
            return Requirement::Scope(o.scope);
        }
        default_requirement(method.as_str(), path, &self.anonymous)
    }

    /// Re-reads the credential files as they change, until `stop`.
    pub fn watch(&self, stop: impl std::future::Future<Output = ()> + Send + 'static) {
        mesh_auth::reload::watch(self.files.clone(), self.reload_every, stop);
    }

    /// The principal a request's credential proves.
    fn authenticate(&self, request: &Request) -> Result<Principal, Refusal> {
        let headers = request.headers();
        let credential = if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = value
                .to_str()
                .map_err(|_| Refusal::Invalid("the Authorization header is not ASCII".into()))?;
            match value.split_once(' ') {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
                    Credential::Bearer(token.trim())
                }
                _ => {
                    return Err(Refusal::Invalid(
                        "the Authorization header must be `Bearer <token or API key>`".into(),
                    ));
                }
            }
        } else if let Some(value) = headers.get("x-api-key") {
            let value = value
                .to_str()
                .map_err(|_| Refusal::Invalid("the x-api-key header is not ASCII".into()))?;
            Credential::ApiKey(value.trim())
        } else {
            return Err(Refusal::Missing);
        };
        self.verifier
            .verify(credential)
            .map_err(|e: AuthError| Refusal::Invalid(e.to_string()))
    }
}

enum Refusal {
    Missing,
    Invalid(String),
}

/// The route layer: authenticates, checks the scope, and audits admin routes.
pub async fn check(State(auth): State<Arc<Auth>>, mut request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let method = request.method().clone();
    let needed = match auth.requirement(&method, &route) {
        Requirement::Anonymous => return next.run(request).await,
        Requirement::Scope(scope) => scope,
    };
    let principal = match auth.authenticate(&request) {
        Ok(principal) => principal,
        Err(Refusal::Missing) => {
            let message =
                "this route needs a credential: send `Authorization: Bearer <token or API key>` or `x-api-key`";
            return unauthenticated(message.into(), auth.challenge.clone());
        }
        Err(Refusal::Invalid(reason)) => {
            let challenge = format!(
                "Bearer realm=\"mesh\", error=\"invalid_token\", error_description=\"{}\"",
                reason.replace(['"', '\\'], "'")
            );
            let challenge = HeaderValue::from_str(&challenge).unwrap_or_else(|_| auth.challenge.clone());
            return unauthenticated(format!("the credential was refused: {reason}"), challenge);
        }
    };
    if !principal.scopes.contains(needed) {
        let response = forbidden(&principal, needed, &method, &route);
        if needed == Scope::Admin {
            audit(&principal, &method, &route, response.status());
        }
        return response;
    }
    request.extensions_mut().insert(principal.clone());
    let response = next.run(request).await;
    if needed == Scope::Admin {
        audit(&principal, &method, &route, response.status());
    }
    response
}

fn unauthenticated(message: String, challenge: HeaderValue) -> Response {
    let mut response = AppError::BadRequest {
        status: StatusCode::UNAUTHORIZED,
        code: "UNAUTHENTICATED",
        message,
    }
    .into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
    response
}

fn forbidden(principal: &Principal, needed: Scope, method: &Method, route: &str) -> Response {
    let mut response = AppError::BadRequest {
        status: StatusCode::FORBIDDEN,
        code: "PERMISSION_DENIED",
        message: format!(
            "{method} {route} needs the {needed} scope; {} has {}",
            principal.name, principal.scopes
        ),
    }
    .into_response();
    if let Ok(challenge) = HeaderValue::from_str(&format!(
        "Bearer realm=\"mesh\", error=\"insufficient_scope\", scope=\"{needed}\""
    )) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
    }
    response
}

/// One line per admin action, under the `audit` target.
fn audit(principal: &Principal, method: &Method, route: &str, status: StatusCode) {
    tracing::info!(
        target: "audit",
        // Quoted: a token's subject is the caller's choice of characters.
        principal = ?principal.name,
        method = %method,
        route,
        status = status.as_u16(),
        "admin action"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anonymous() -> Vec<String> {
        AuthArgs::default_anonymous()
    }

    #[test]
    fn default_scopes_follow_what_a_route_does() {
        let a = anonymous();
        let r = |m, p| default_requirement(m, p, &a);
        assert_eq!(r("GET", "/test"), Requirement::Anonymous);
        assert_eq!(r("GET", "/docs/swagger-ui.css"), Requirement::Anonymous);
        assert_eq!(r("GET", "/items/{id}"), Requirement::Scope(Scope::Read));
        assert_eq!(r("POST", "/items"), Requirement::Scope(Scope::Write));
        assert_eq!(r("GET", "/increment"), Requirement::Scope(Scope::Write));
        assert_eq!(r("POST", "/tasks/{id}/cancel"), Requirement::Scope(Scope::Write));
        assert_eq!(r("DELETE", "/items/{id}"), Requirement::Scope(Scope::Admin));
        assert_eq!(r("PUT", "/cache/{key}"), Requirement::Scope(Scope::Admin));
        assert_eq!(r("POST", "/counters/{name}/reset"), Requirement::Scope(Scope::Admin));
        assert_eq!(r("POST", "/tasks/{id}/retry"), Requirement::Scope(Scope::Admin));
        assert_eq!(r("GET", "/overview"), Requirement::Scope(Scope::Admin));
        // Without /docs in the list its assets need a credential too.
        assert_eq!(
            default_requirement("GET", "/docs/x.js", &["/test".to_string()]),
            Requirement::Scope(Scope::Read)
        );
    }

    #[test]
    fn route_scope_flags_parse_or_say_why_not() {
        assert_eq!(
            parse_route_scope("post /items=admin").unwrap(),
            RouteScope {
                method: Method::POST,
                path: "/items".into(),
                scope: Scope::Admin
            }
        );
        assert!(
            parse_route_scope("/items=admin")
                .unwrap_err()
                .contains("METHOD TEMPLATE=SCOPE")
        );
        assert!(
            parse_route_scope("GET items=read")
                .unwrap_err()
                .contains("start with '/'")
        );
        assert!(
            parse_route_scope("GET /items=root")
                .unwrap_err()
                .contains("unknown scope")
        );
    }

    #[test]
    fn no_authentication_on_a_public_address_needs_saying_so() {
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let args = AuthArgs::default();
        let err = args.build(public, false).unwrap_err().to_string();
        assert!(
            err.contains("not a loopback address") && err.contains("--auth none"),
            "{err}"
        );
        assert!(args.build(loopback, false).unwrap().is_none());
        let none = AuthArgs {
            modes: vec!["none".into()],
            ..AuthArgs::default()
        };
        assert!(none.build(public, false).unwrap().is_none());
        let keys_without_file = AuthArgs {
            modes: vec!["keys".into()],
            ..AuthArgs::default()
        };
        assert!(
            keys_without_file
                .build(loopback, false)
                .unwrap_err()
                .to_string()
                .contains("--api-keys")
        );
    }
}
