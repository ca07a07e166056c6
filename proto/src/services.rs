//! The mesh's services, one row each: the one list that the launcher, the
//! gateway and the tests iterate, so adding a service is adding a row (and
//! its protos), not finding every place that names the four.

use crate::{cache, counter, items, tasks};

/// One service of the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    /// Its short name: the launcher's subcommand and `--replicas` key, the
    /// key of its part in the gateway's `/readyz` and `/overview`, logs.
    pub name: &'static str,
    /// The gateway's flag that lists its endpoints (`--items`), without the
    /// dashes (as clap's `long` takes it).
    pub flag: &'static str,
    /// The binary that serves it on its own.
    pub binary: &'static str,
    /// Where its first replica listens by default; replica n listens
    /// `REPLICA_PORT_STEP * n` further.
    pub default_port: u16,
    /// Where its first replica's admin listener is by default (loopback).
    pub default_admin_port: u16,
    /// Its fully qualified gRPC name, which `grpc.health.v1` reports its
    /// status under (beside the whole server's, the empty name).
    pub grpc_name: &'static str,
}

/// The distance between the ports of a service's consecutive replicas
/// (items: 50051, 50061, ...; its admin listeners 9051, 9061, ...).
pub const REPLICA_PORT_STEP: u16 = 10;

pub const ITEMS: Service = Service {
    name: "items",
    flag: "items",
    binary: "items-service",
    default_port: 50051,
    default_admin_port: 9051,
    grpc_name: items::v1::item_service_server::SERVICE_NAME,
};

pub const CACHE: Service = Service {
    name: "cache",
    flag: "cache",
    binary: "cache-service",
    default_port: 50052,
    default_admin_port: 9052,
    grpc_name: cache::v1::cache_service_server::SERVICE_NAME,
};

pub const TASKS: Service = Service {
    name: "tasks",
    flag: "tasks",
    binary: "tasks-service",
    default_port: 50053,
    default_admin_port: 9053,
    grpc_name: tasks::v1::task_service_server::SERVICE_NAME,
};

pub const COUNTER: Service = Service {
    name: "counter",
    flag: "counter",
    binary: "counter-service",
    default_port: 50054,
    default_admin_port: 9054,
    grpc_name: counter::v1::counter_service_server::SERVICE_NAME,
};

/// Every service, in the order the mesh starts them and reports them.
pub const ALL: &[Service] = &[ITEMS, CACHE, TASKS, COUNTER];

/// The service called `name`.
pub fn by_name(name: &str) -> Option<&'static Service> {
    ALL.iter().find(|s| s.name == name)
}

impl Service {
    /// The port of replica `n` (0-based) of this service, and of its admin
    /// listener, by default.
    pub fn replica_ports(&self, n: u16) -> (u16, u16) {
        let step = REPLICA_PORT_STEP * n;
        (self.default_port + step, self.default_admin_port + step)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_flags_binaries_and_ports_are_unique() {
        let unique = |values: Vec<String>| values.iter().collect::<HashSet<_>>().len() == ALL.len();
        assert!(unique(ALL.iter().map(|s| s.name.to_string()).collect()));
        assert!(unique(ALL.iter().map(|s| s.flag.to_string()).collect()));
        assert!(unique(ALL.iter().map(|s| s.binary.to_string()).collect()));
        // No two replicas (up to 9 each) of any services share a port.
        let ports: Vec<u16> = ALL
            .iter()
            .flat_map(|s| (0..9).flat_map(|n| <[u16; 2]>::from(s.replica_ports(n))))
            .collect();
        assert_eq!(ports.iter().collect::<HashSet<_>>().len(), ports.len());
    }

    #[test]
    fn every_grpc_name_is_a_service_of_the_descriptor_set() {
        use prost::Message;
        let fds = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).unwrap();
        let declared: HashSet<String> = fds
            .file
            .iter()
            .flat_map(|f| f.service.iter().map(move |s| format!("{}.{}", f.package(), s.name())))
            .collect();
        for service in ALL {
            assert!(declared.contains(service.grpc_name), "{service:?}");
            assert_eq!(by_name(service.name), Some(service));
        }
    }
}
