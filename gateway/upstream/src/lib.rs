//! The mesh's traffic policies: each service's replicas behind one shared
//! client, and what happens to every call made through it. Nothing here
//! knows HTTP's edge (no axum, no JSON): callers get an [`UpstreamError`]
//! and decide what it means to their own clients.
//!
//! Module map, from the bottom up (each module uses only ones above it):
//! - [`settings`]: the knobs, shared by every service;
//! - [`context`]: [`CallContext`], one request's deadline and id, which every
//!   call it makes carries;
//! - [`kind`]: [`Kind`], whether a call may be repeated (retried, hedged);
//! - [`error`]: [`UpstreamError`], what a call can end with;
//! - membership: [`spec`] parses endpoint specs, [`resolver`] turns them
//!   into addresses (DNS, files) again and again, [`health`] asks each
//!   replica's `grpc.health.v1`, [`outlier`] watches each replica's answers,
//!   [`balance`] picks a replica per call (power of two choices by
//!   peak-EWMA latency), [`members`] is the snapshot readiness reports, and
//!   [`controller`] owns the member list and sets the balancer's rotation;
//! - [`transport`]: the stack every call goes through, load shedding over a
//!   concurrency limit over the balancer;
//! - [`latency`]: recent latencies, for [`per_try`] timeouts and [`hedge`]d reads;
//! - [`retry`]: repeats a call that the replica could not serve or did not
//!   answer in time, under a retry budget;
//! - [`upstream`]: [`Upstream`], one service's replicas with all of the above;
//! - [`client`]: [`Client`], a generated gRPC client over an upstream, and
//!   [`Client::unary`], the one way calls are made.
#![forbid(unsafe_code)]

pub mod balance;
pub mod client;
pub mod context;
pub mod controller;
pub mod error;
pub mod health;
pub mod hedge;
pub mod kind;
pub mod latency;
pub mod members;
pub mod metrics;
pub mod outlier;
pub mod per_try;
pub mod resolver;
pub mod retry;
pub mod settings;
pub mod spec;
pub mod transport;
pub mod upstream;

pub use client::{Client, Method};
pub use context::CallContext;
pub use error::UpstreamError;
pub use kind::Kind;
pub use members::{MemberView, Members};
pub use settings::{ClientTls, HedgeSettings, PerTryTimeout, Settings};
pub use spec::{Spec, SpecError};
pub use transport::{Transport, TransportError};
pub use upstream::{ReplicaStats, Upstream};
