//! Rate limits at the edge: GCRA (the generic cell rate algorithm) per
//! principal, and per client address for anonymous callers.
//!
//! Every route belongs to a group: `anonymous`, or the scope it needs
//! (`read`, `write`, `admin`; see [`crate::auth`]). `--rate-limit` gives a
//! group a rate and a burst (`write=20/s:40`): the group admits `burst`
//! requests at once, then one every `1/rate`. The key is the authenticated
//! principal (`key:ci`, `jwt:alice`), else the client's address (an IPv6
//! client's /64, which one host can rotate through at will).
//!
//! Behind a proxy every client arrives from the proxy's address:
//! `--trusted-proxies` lists the proxies whose forwarding header is
//! believed, and `--forwarded-header` names the one header they set
//! (`x-forwarded-for` or `forwarded`; the other is ignored, since a client
//! could have sent it). The client is the nearest address in it that is not
//! itself a trusted proxy. Anyone else's header is ignored.
//!
//! With `--redis-url` every gateway replica shares each limit through one
//! Lua script on Redis's clock. When Redis does not answer (within 250 ms),
//! each gateway applies the limit on its own for a second (fail open to the
//! local limit, never closed for everyone) and logs a warning.
//!
//! A refused request gets 429 with `Retry-After`; every answer in a limited
//! group carries `RateLimit-Policy` and `RateLimit` (the IETF httpapi
//! draft's structured fields: `"write";q=20;w=1`, the sustained quota, and
//! `"write";r=12;t=1`: requests left now, and seconds until the whole
//! burst is available again.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;
use mesh_auth::{Principal, Scope};

use crate::auth::{Auth, Requirement};
use crate::error::AppError;

/// The rate-limit flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RateArgs {
    /// Rate limits per route group, `GROUP=RATE/UNIT[:BURST]`, comma-separated:
    /// groups `anonymous` (per client address), `read`, `write`, `admin`
    /// (per principal; per client address without --auth); UNIT `s`, `m`
    /// or `h`; BURST defaults to RATE. E.g. `read=200/s:400,write=20/s,anonymous=50/s`.
    /// Unset: no limits.
    #[arg(long = "rate-limit", env = "GATEWAY_RATE_LIMIT", value_delimiter = ',', value_parser = GroupLimit::from_str)]
    pub limits: Vec<GroupLimit>,

    /// Redis shared by every gateway replica, for limits that hold across
    /// them (without it each gateway counts on its own).
    #[arg(long, env = "GATEWAY_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of the gateway's keys in Redis (gateways that share a limit
    /// must share it).
    #[arg(long, env = "GATEWAY_REDIS_PREFIX", default_value = "mesh:ratelimit:")]
    pub redis_prefix: String,

    /// The proxies (CIDRs: list only the proxies' own addresses) whose
    /// forwarding header (--forwarded-header) says who the client is.
    #[arg(long, env = "GATEWAY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpNet>,

    /// Which header the trusted proxies set: `x-forwarded-for` or
    /// `forwarded` (RFC 7239). Only that one is read: a proxy passes the
    /// other through from the client unchanged.
    #[arg(long, env = "GATEWAY_FORWARDED_HEADER", default_value = "x-forwarded-for",
          value_parser = ["x-forwarded-for", "forwarded"])]
    pub forwarded_header: String,
}

/// A route group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    Anonymous,
    Scope(Scope),
}

impl Group {
    fn name(self) -> &'static str {
        match self {
            Group::Anonymous => "anonymous",
            Group::Scope(scope) => scope.as_str(),
        }
    }

    fn index(self) -> usize {
        match self {
            Group::Anonymous => 0,
            Group::Scope(Scope::Read) => 1,
            Group::Scope(Scope::Write) => 2,
            Group::Scope(Scope::Admin) => 3,
        }
    }
}

/// One `--rate-limit` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupLimit {
    pub group: Group,
    /// Time between two requests at the steady rate.
    pub interval: Duration,
    pub burst: NonZeroU32,
    /// The steady rate as given: `count` requests per `period`.
    pub count: u32,
    pub period: Duration,
    /// As written, for messages (`20/s`).
    pub rate: String,
}

impl FromStr for GroupLimit {
    type Err = String;

    fn from_str(raw: &str) -> Result<GroupLimit, String> {
        let bad = |why: &str| format!("{raw:?}: {why} (expected GROUP=RATE/UNIT[:BURST], e.g. write=20/s:40)");
        let (group, limit) = raw.split_once('=').ok_or_else(|| bad("no '='"))?;
        let group = match group.trim() {
            "anonymous" => Group::Anonymous,
            scope => Group::Scope(
                scope
                    .parse()
                    .map_err(|_| bad("the groups are anonymous, read, write, admin"))?,
            ),
        };
        let (rate, burst) = match limit.split_once(':') {
            Some((rate, burst)) => (rate.trim(), Some(burst.trim())),
            None => (limit.trim(), None),
        };
        let (count, unit) = rate.split_once('/').ok_or_else(|| bad("no '/UNIT'"))?;
        let count: u32 = count
            .parse()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| bad("RATE must be a positive integer"))?;
        let period = match unit {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad("UNIT must be s, m or h")),
        };
        let burst = match burst {
            None => count,
            Some(b) => b
                .parse()
                .ok()
                .filter(|b| *b > 0)
                .ok_or_else(|| bad("BURST must be a positive integer"))?,
        };
        Ok(GroupLimit {
            group,
            interval: period / count,
            burst: NonZeroU32::new(burst).ok_or_else(|| bad("BURST must be positive"))?,
            count,
            period,
            rate: rate.to_owned(),
        })
    }
}

type Local = RateLimiter<String, DashMapStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// One group's limit and its local state.
struct Limit {
    spec: GroupLimit,
    local: Local,
    policy: HeaderValue,
}

/// The shared store, when there is one.
struct Shared {
    conn: mesh_redis::Conn,
    prefix: String,
    script: mesh_redis::redis::Script,
    /// Until when (ms since `epoch`) Redis is taken as down.
    down_until_ms: AtomicU64,
    epoch: Instant,
}

/// The gateway's rate limits.
pub struct Limiter {
    limits: [Option<Limit>; 4],
    shared: Option<Shared>,
    trusted: Vec<IpNet>,
    /// Whether the trusted proxies' header is `Forwarded` (else `X-Forwarded-For`).
    rfc7239: bool,
    auth: Option<Arc<Auth>>,
    anonymous: Vec<String>,
    clock: DefaultClock,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let limits: Vec<_> = self.limits.iter().flatten().map(|l| &l.spec).collect();
        f.debug_struct("Limiter")
            .field("limits", &limits)
            .field("shared", &self.shared.is_some())
            .field("trusted", &self.trusted)
            .finish_non_exhaustive()
    }
}

/// GCRA on Redis's clock, in microseconds: admit when the new theoretical
/// arrival time is at most `burst` intervals ahead of now. Answers
/// `{1, remaining}` or `{0, wait_us}`.
const GCRA_LUA: &str = r#"
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > capacity then
  return {0, new_tat - capacity - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.floor((new_tat - now) / 1000) + 1)
return {1, math.floor((capacity - (new_tat - now)) / interval)}
"#;

/// How long Redis may take before the local limit applies instead (a
/// loopback or same-zone Redis answers in well under a millisecond).
const SHARED_TIMEOUT: Duration = Duration::from_millis(250);
/// How long the local limit applies after Redis failed, before Redis is tried again.
const SHARED_BACKOFF: Duration = Duration::from_secs(1);

enum Verdict {
    Allow { remaining: u32 },
    Deny { wait: Duration },
}

impl RateArgs {
    /// `--check-config`: everything [`RateArgs::build`] checks (its Redis
    /// connection is lazy: nothing connects).
    pub fn check(&self) -> anyhow::Result<()> {
        self.build(None).map(|_| ())
    }

    /// The configured limits (`None`: no `--rate-limit`).
    pub fn build(&self, auth: Option<Arc<Auth>>) -> anyhow::Result<Option<Arc<Limiter>>> {
        if self.limits.is_empty() {
            if self.redis_url.is_some() {
                anyhow::bail!("--redis-url is for --rate-limit, which is not set");
            }
            return Ok(None);
        }
        let mut limits: [Option<Limit>; 4] = Default::default();
        for spec in &self.limits {
            let slot = &mut limits[spec.group.index()];
            if slot.is_some() {
                anyhow::bail!("--rate-limit: the {} group is given twice", spec.group.name());
            }
            let quota = Quota::with_period(spec.interval)
                .ok_or_else(|| anyhow::anyhow!("--rate-limit {}: too fast", spec.rate))?
                .allow_burst(spec.burst);
            // The sustained quota: `count` requests per `period` (the burst is
            // how many of them may come at once).
            let policy = HeaderValue::from_str(&format!(
                "\"{}\";q={};w={}",
                spec.group.name(),
                spec.count,
                spec.period.as_secs()
            ))?;
            *slot = Some(Limit {
                spec: spec.clone(),
                local: RateLimiter::dashmap(quota).with_middleware::<StateInformationMiddleware>(),
                policy,
            });
        }
        let shared = match &self.redis_url {
            None => None,
            Some(url) => Some(Shared {
                conn: mesh_redis::connect(url)
                    .map_err(|e| anyhow::anyhow!("--redis-url {}: {e}", mesh_common::redact::passwords(url)))?,
                prefix: self.redis_prefix.clone(),
                script: mesh_redis::redis::Script::new(GCRA_LUA),
                down_until_ms: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        };
        Ok(Some(Arc::new(Limiter {
            limits,
            shared,
            trusted: self.trusted_proxies.clone(),
            rfc7239: self.forwarded_header == "forwarded",
            auth,
            anonymous: crate::auth::AuthArgs::default_anonymous(),
            clock: DefaultClock::default(),
        })))
    }
}

impl Limiter {
    fn group(&self, method: &axum::http::Method, route: &str) -> Group {
        let requirement = match &self.auth {
            Some(auth) => auth.requirement(method, route),
            None => crate::auth::default_requirement(method.as_str(), route, &self.anonymous),
        };
        match requirement {
            Requirement::Anonymous => Group::Anonymous,
            Requirement::Scope(scope) => Group::Scope(scope),
        }
    }

    /// Forgets keys whose limit is back to full, every `every`, so memory
    /// follows the callers of the last moments, not of all time.
    pub fn sweep(self: &Arc<Self>, every: Duration, stop: impl std::future::Future<Output = ()> + Send + 'static) {
        let limiter = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::pin!(stop);
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    () = &mut stop => return,
                    _ = tick.tick() => {}
                }
                let Some(limiter) = limiter.upgrade() else { return };
                for limit in limiter.limits.iter().flatten() {
                    limit.local.retain_recent();
                    limit.local.shrink_to_fit();
                }
            }
        });
    }

    async fn decide(&self, limit: &Limit, key: &str) -> Verdict {
        if let Some(shared) = &self.shared {
            let now_ms = shared.epoch.elapsed().as_millis() as u64;
            if now_ms >= shared.down_until_ms.load(Ordering::Relaxed) {
                match self.decide_shared(shared, limit, key).await {
                    Ok(verdict) => return verdict,
                    Err(err) => {
                        let until = now_ms + SHARED_BACKOFF.as_millis() as u64;
                        let was_up = shared.down_until_ms.swap(until, Ordering::Relaxed) <= now_ms;
                        if was_up {
                            tracing::warn!(error = %err, "rate limits: Redis does not answer; each gateway limits on its own until it does");
                        }
                    }
                }
            }
        }
        match limit.local.check_key(&key.to_owned()) {
            Ok(state) => Verdict::Allow {
                remaining: state.remaining_burst_capacity(),
            },
            Err(not_until) => Verdict::Deny {
                wait: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    async fn decide_shared(&self, shared: &Shared, limit: &Limit, key: &str) -> Result<Verdict, String> {
        let interval = limit.spec.interval.as_micros().max(1) as u64;
        let capacity = interval * u64::from(limit.spec.burst.get());
        let mut conn = shared.conn.manager();
        let redis_key = format!("{}{}:{key}", shared.prefix, limit.spec.group.name());
        let mut invocation = shared.script.key(redis_key);
        invocation.arg(interval).arg(capacity);
        let call = invocation.invoke_async::<(i64, i64)>(&mut conn);
        let answer = tokio::time::timeout(SHARED_TIMEOUT, call).await;
        match &answer {
            Err(_) => shared.conn.silent(),
            Ok(result) => shared.conn.note(result),
        }
        match answer {
            Err(_) => Err(format!("no answer within {} ms", SHARED_TIMEOUT.as_millis())),
            Ok(Err(err)) if mesh_redis::is_unavailable(&err) => Err(err.to_string()),
            Ok(Err(err)) => {
                // Not an outage (a wrong password, an out-of-memory Redis):
                // an operator must fix it; meanwhile the local limit applies.
                tracing::error!(error = %err, "rate limits: Redis refused the limit script");
                Err(err.to_string())
            }
            Ok(Ok((1, remaining))) => Ok(Verdict::Allow {
                remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            }),
            Ok(Ok((_, wait_us))) => Ok(Verdict::Deny {
                wait: Duration::from_micros(wait_us.max(0) as u64),
            }),
        }
    }

    /// The client's address: the peer's, or, from a trusted proxy, the
    /// nearest untrusted address its forwarding header names.
    fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let hops = forwarded_for(headers, self.rfc7239);
        let mut client = peer;
        for hop in hops.iter().rev() {
            client = *hop;
            if !self.is_trusted(*hop) {
                break;
            }
        }
        Some(client)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}

/// The addresses the forwarding header lists, nearest last: `Forwarded`'s
/// `for=` values (`rfc7239`), else `X-Forwarded-For`'s; only that header is
/// read. An entry that is not an address (`unknown`, an obfuscated name, a
/// header that is not text) ends the list there: nothing before it can be
/// placed, and with nothing usable the peer itself is the client.
fn forwarded_for(headers: &HeaderMap, rfc7239: bool) -> Vec<IpAddr> {
    let name = if rfc7239 {
        header::FORWARDED
    } else {
        HeaderName::from_static("x-forwarded-for")
    };
    let mut entries: Vec<String> = Vec::new();
    for value in headers.get_all(name) {
        let Ok(value) = value.to_str() else {
            return Vec::new();
        };
        for element in value.split(',') {
            let entry = if rfc7239 {
                element
                    .split(';')
                    .filter_map(|pair| pair.trim().split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                    .map(|(_, v)| v.trim().trim_matches('"').to_owned())
                    .unwrap_or_default()
            } else {
                element.trim().to_owned()
            };
            entries.push(entry);
        }
    }
    let mut hops = Vec::new();
    for entry in entries {
        match parse_hop(&entry) {
            Some(ip) => hops.push(ip),
            None => hops.clear(),
        }
    }
    hops
}

/// `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]`, `[2001:db8::1]:4711`, `2001:db8::1`.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// The key a client is counted under: the principal, else its address
/// (IPv6 by /64). Long principal names are hashed, so keys stay short.
fn key(principal: Option<&Principal>, ip: Option<IpAddr>) -> String {
    if let Some(principal) = principal {
        let name = &*principal.name;
        return if name.len() <= 128 {
            format!("p:{name}")
        } else {
            format!("p#{}", mesh_auth::keys::hash_hex(name))
        };
    }
    match ip.map(|ip| ip.to_canonical()) {
        Some(IpAddr::V4(v4)) => format!("ip:{v4}"),
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        None => "ip:unknown".into(),
    }
}

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The route layer: counts the request against its group's limit.
pub async fn check(State(limiter): State<Arc<Limiter>>, request: Request, next: Next) -> Response {
    let Some(route) = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()) else {
        return next.run(request).await;
    };
    let group = limiter.group(request.method(), &route);
    let Some(limit) = &limiter.limits[group.index()] else {
        return next.run(request).await;
    };
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let ip = limiter.client_ip(peer, request.headers());
    let key = key(request.extensions().get::<Principal>(), ip);
    let interval = limit.spec.interval;
    match limiter.decide(limit, &key).await {
        Verdict::Allow { remaining } => {
            let mut response = next.run(request).await;
            let full_in = (interval * (limit.spec.burst.get().saturating_sub(remaining)))
                .as_secs_f64()
                .ceil() as u64;
            set_headers(response.headers_mut(), limit, remaining, full_in);
            response
        }
        Verdict::Deny { wait } => {
            crate::metrics::rate_limited(group.name());
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut response = AppError::BadRequest {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: "RESOURCE_EXHAUSTED",
                message: format!(
                    "rate limit reached: {} {} requests (burst {}); retry after {seconds} s",
                    limit.spec.rate,
                    group.name(),
                    limit.spec.burst
                ),
            }
            .into_response();
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            // Full again once the wait is over and the rest of the burst refilled.
            let full_in = (wait + interval * (limit.spec.burst.get() - 1)).as_secs_f64().ceil() as u64;
            set_headers(headers, limit, 0, full_in);
            response
        }
    }
}

fn set_headers(headers: &mut HeaderMap, limit: &Limit, remaining: u32, reset_secs: u64) {
    headers.insert(RATELIMIT_POLICY, limit.policy.clone());
    if let Ok(value) = HeaderValue::from_str(&format!("\"{}\";r={remaining};t={reset_secs}", limit.spec.group.name())) {
        headers.insert(RATELIMIT, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_or_say_why_not() {
        let l: GroupLimit = "write=20/s:40".parse().unwrap();
        assert_eq!(l.group, Group::Scope(Scope::Write));
        assert_eq!(l.interval, Duration::from_millis(50));
        assert_eq!(l.burst.get(), 40);
        let l: GroupLimit = "anonymous=120/m".parse().unwrap();
        assert_eq!(
            (l.group, l.interval, l.burst.get()),
            (Group::Anonymous, Duration::from_millis(500), 120)
        );
        for (raw, why) in [
            ("write", "no '='"),
            ("root=1/s", "the groups are"),
            ("read=0/s", "positive integer"),
            ("read=5/d", "UNIT must be"),
            ("read=5/s:0", "BURST must be"),
        ] {
            let err = raw.parse::<GroupLimit>().unwrap_err();
            assert!(err.contains(why), "{raw}: {err}");
        }
    }

    fn limiter(trusted: &[&str]) -> Limiter {
        let args = RateArgs {
            // One an hour: however long the machine stalls between two
            // calls, the second is refused.
            limits: vec!["read=1/h".parse().unwrap()],
            redis_url: None,
            redis_prefix: String::new(),
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            forwarded_header: "x-forwarded-for".into(),
        };
        Arc::into_inner(args.build(None).unwrap().unwrap()).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let l = limiter(&["10.0.0.0/8"]);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let xff = headers(&[("x-forwarded-for", "203.0.113.9, 10.1.1.1")]);
        // From a stranger, the header is ignored.
        assert_eq!(l.client_ip(ip("198.51.100.7"), &xff), ip("198.51.100.7"));
        // From the proxy, the nearest untrusted hop.
        assert_eq!(l.client_ip(ip("10.0.0.2"), &xff), ip("203.0.113.9"));
        // A client cannot pose as another by prepending: the nearest untrusted wins.
        let spoof = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.9")]);
        assert_eq!(l.client_ip(ip("10.0.0.2"), &spoof), ip("203.0.113.9"));
        // Only the configured header counts: a client's own `Forwarded`, which
        // an X-Forwarded-For proxy passes through, is ignored.
        let both = headers(&[("forwarded", "for=1.2.3.4"), ("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(l.client_ip(ip("10.0.0.2"), &both), ip("203.0.113.9"));
        let mut rfc = limiter(&["10.0.0.0/8"]);
        rfc.rfc7239 = true;
        // With `forwarded`: ports, quotes and brackets; X-Forwarded-For ignored.
        let fwd = headers(&[
            ("forwarded", "for=192.0.2.60;proto=http, for=\"[2001:db8::1]:4711\""),
            ("x-forwarded-for", "9.9.9.9"),
        ]);
        assert_eq!(rfc.client_ip(ip("10.0.0.2"), &fwd), ip("2001:db8::1"));
        // Nothing usable: the proxy itself.
        let unknown = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(rfc.client_ip(ip("10.0.0.2"), &unknown), ip("10.0.0.2"));
        assert_eq!(l.client_ip(ip("10.0.0.2"), &headers(&[])), ip("10.0.0.2"));
    }

    #[test]
    fn keys_are_principals_or_addresses_with_ipv6_by_64() {
        let p = Principal {
            name: "key:ci".into(),
            scopes: Default::default(),
            via: mesh_auth::Via::ApiKey,
        };
        assert_eq!(key(Some(&p), None), "p:key:ci");
        assert_eq!(key(None, Some("192.0.2.1".parse().unwrap())), "ip:192.0.2.1");
        assert_eq!(key(None, Some("::ffff:192.0.2.1".parse().unwrap())), "ip:192.0.2.1");
        assert_eq!(
            key(None, Some("2001:db8:1:2:aaaa::1".parse().unwrap())),
            key(None, Some("2001:db8:1:2:bbbb::9".parse().unwrap()))
        );
    }

    #[tokio::test]
    async fn the_local_limit_admits_the_burst_then_refuses_with_a_wait() {
        let l = limiter(&[]);
        let limit = l.limits[Group::Scope(Scope::Read).index()].as_ref().unwrap();
        assert!(matches!(l.decide(limit, "k").await, Verdict::Allow { remaining: 0 }));
        match l.decide(limit, "k").await {
            Verdict::Deny { wait } => assert!(wait > Duration::ZERO && wait <= Duration::from_secs(3600), "{wait:?}"),
            Verdict::Allow { .. } => panic!("the second request within the hour is admitted"),
        }
        assert!(
            matches!(l.decide(limit, "other").await, Verdict::Allow { .. }),
            "keys are separate"
        );
    }
}
