//! [`Members`]: the snapshot of one service's replicas that readiness and
//! the overview read, and that the call path asks before sending anything.
//! Written only by the [`crate::controller`].

use std::sync::{Arc, RwLock};

use serde::Serialize;

/// One replica as the gateway sees it.
#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    pub address: String,
    /// Its last `grpc.health.v1` check said `SERVING`.
    pub healthy: bool,
    /// Passive outlier detection has taken it out for a while.
    pub ejected: bool,
    /// The balancer may send it calls (healthy and not ejected, or every
    /// replica in panic mode).
    pub in_rotation: bool,
}

/// A snapshot of a service's members, shared (cloning it is one reference count).
#[derive(Clone, Default)]
pub struct Members(Arc<RwLock<Vec<MemberView>>>);

impl Members {
    pub fn snapshot(&self) -> Vec<MemberView> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replicas resolved from the spec, in rotation or not.
    pub fn known(&self) -> usize {
        self.0.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn in_rotation(&self) -> usize {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|m| m.in_rotation)
            .count()
    }

    /// A weak handle for the metrics.
    pub(crate) fn downgrade(&self) -> std::sync::Weak<RwLock<Vec<MemberView>>> {
        Arc::downgrade(&self.0)
    }

    /// Replaces the snapshot (the controller, after each change).
    pub(crate) fn set(&self, members: Vec<MemberView>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = members;
    }
}
