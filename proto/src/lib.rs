//! The mesh's gRPC contracts, generated from `proto/mesh/<service>/v1/*.proto`.
//!
//! Module map (mirrors the proto packages):
//! - [`items::v1`], [`cache::v1`], [`tasks::v1`], [`counter::v1`]: messages, clients, servers;
//! - [`FILE_DESCRIPTOR_SET`]: every file (with its imports) for server reflection;
//! - [`bindings`]: each RPC's HTTP route (`google.api.http`) and `idempotency_level`,
//!   a table generated at build time;
//! - [`json`] and [`time`]: hand-written conversions between proto well-known types
//!   and the plain Rust types the services use, so domain code never sees prost.
#![forbid(unsafe_code)]

pub mod items {
    pub mod v1 {
        tonic::include_proto!("mesh.items.v1");
    }
}

pub mod cache {
    pub mod v1 {
        tonic::include_proto!("mesh.cache.v1");
    }
}

pub mod tasks {
    pub mod v1 {
        tonic::include_proto!("mesh.tasks.v1");
    }
}

pub mod counter {
    pub mod v1 {
        tonic::include_proto!("mesh.counter.v1");
    }
}

/// Encoded `FileDescriptorSet` of every mesh proto and the files it imports
/// (`google/api/*`, `google/protobuf/*`), with custom options such as
/// `google.api.http` kept, so reflection clients see and resolve them.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mesh_descriptor.bin"));

pub mod services;

pub mod bindings {
    //! The HTTP binding (`google.api.http`) and `idempotency_level` of every
    //! mesh RPC, read from the protos' options by `proto/build.rs` (with
    //! prost-reflect) when the crate is built: nothing parses protos at run time.
    //!
    //! - [`METHODS`]: every RPC of every mesh service;
    //! - [`BINDINGS`]: every HTTP route an RPC is bound to (an RPC may have
    //!   none, e.g. `CacheService.Stats`, or several);
    //! - [`idempotency`] and [`method`]: lookups by gRPC path.

    /// A method's `idempotency_level` option (`google.protobuf.MethodOptions`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Idempotency {
        /// `IDEMPOTENCY_UNKNOWN`, the default: a repeat may act again (count
        /// twice, queue twice) or answer differently; never repeat it on the
        /// caller's behalf.
        Unknown,
        /// `NO_SIDE_EFFECTS`: a read.
        NoSideEffects,
        /// `IDEMPOTENT`: a repeat leaves the state one call leaves (its answer
        /// may differ, e.g. cache `Delete`'s `deleted`).
        Idempotent,
    }

    impl Idempotency {
        /// Whether a call may be sent again after a failure without the
        /// caller asking (a read or an idempotent write).
        pub fn is_safe_to_repeat(self) -> bool {
            !matches!(self, Idempotency::Unknown)
        }

        /// The level's name in the proto (`NO_SIDE_EFFECTS`, ...).
        pub fn as_str_name(self) -> &'static str {
            match self {
                Idempotency::Unknown => "IDEMPOTENCY_UNKNOWN",
                Idempotency::NoSideEffects => "NO_SIDE_EFFECTS",
                Idempotency::Idempotent => "IDEMPOTENT",
            }
        }
    }

    /// One RPC of a mesh service.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Method {
        /// The service's full name, `mesh.items.v1.ItemService`.
        pub service: &'static str,
        /// The method's name, `GetItem`.
        pub method: &'static str,
        /// The gRPC path (HTTP/2 `:path`), `/mesh.items.v1.ItemService/GetItem`.
        pub grpc_path: &'static str,
        /// Whether the server answers with a stream (`WatchTask`).
        pub server_streaming: bool,
        pub idempotency: Idempotency,
    }

    /// One HTTP binding of an RPC: a `google.api.http` rule (or one of its
    /// `additional_bindings`), with the RPC it belongs to.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Binding {
        pub service: &'static str,
        pub method: &'static str,
        pub grpc_path: &'static str,
        pub server_streaming: bool,
        pub idempotency: Idempotency,
        /// `GET`, `PUT`, `POST`, `DELETE`, `PATCH` (or a custom rule's kind).
        pub http_method: &'static str,
        /// The path template: `/items/{id}`.
        pub path: &'static str,
        /// Where the request body goes: `*` (the whole request message, less
        /// the path's fields), a field's name, or `""` (no body).
        pub body: &'static str,
    }

    /// What a request message says about the RPC it is sent to. Implemented
    /// by `proto/build.rs` for the request message of every mesh RPC (each
    /// RPC has its own request type), so a caller holding a request knows
    /// whether it may repeat it without naming the RPC again.
    pub trait Rpc {
        /// The gRPC path of the RPC this message is the request of.
        const GRPC_PATH: &'static str;
        /// That RPC's `idempotency_level` option.
        const IDEMPOTENCY: Idempotency;

        /// The caller's idempotency key (`""`: none, or the message has no
        /// such field). With one, the service applies a repeat once, so even
        /// an RPC of unknown idempotency may be repeated.
        fn idempotency_key(&self) -> &str {
            ""
        }
    }

    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

    /// The RPC at `grpc_path` (`/mesh.items.v1.ItemService/GetItem`).
    pub fn method(grpc_path: &str) -> Option<&'static Method> {
        METHODS.iter().find(|m| m.grpc_path == grpc_path)
    }

    /// The idempotency level of the RPC at `grpc_path`; [`Idempotency::Unknown`]
    /// for a path that is not a mesh RPC.
    pub fn idempotency(grpc_path: &str) -> Idempotency {
        method(grpc_path).map_or(Idempotency::Unknown, |m| m.idempotency)
    }
}

pub mod json {
    //! `google.protobuf.Value` <-> `serde_json::Value`.
    use prost_types::{ListValue, Struct, Value, value::Kind};

    /// The deepest nesting of arrays and objects a JSON value in the mesh may
    /// have (`[[1]]` is 2 deep). Each level costs up to three protobuf message
    /// levels (`Value`, `Struct`, a map entry), and protobuf decoders stop at
    /// 100: a message holding a value 32 deep still decodes everywhere.
    pub const MAX_DEPTH: usize = 32;

    /// How deeply `value` nests arrays and objects (a scalar is 0).
    pub fn depth(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Like [`to_proto`], but anything nested deeper than [`MAX_DEPTH`] is
    /// replaced by a string saying so. For values read back from storage: a
    /// message must always decode, whatever was stored.
    pub fn to_proto_bounded(value: serde_json::Value) -> Value {
        bounded(value, MAX_DEPTH)
    }

    fn bounded(value: serde_json::Value, levels_left: usize) -> Value {
        let kind = match value {
            serde_json::Value::Array(_) | serde_json::Value::Object(_) if levels_left == 0 => {
                Kind::StringValue(format!("(not shown: nested deeper than {MAX_DEPTH} levels)"))
            }
            serde_json::Value::Array(items) => Kind::ListValue(ListValue {
                values: items.into_iter().map(|v| bounded(v, levels_left - 1)).collect(),
            }),
            serde_json::Value::Object(map) => Kind::StructValue(Struct {
                fields: map.into_iter().map(|(k, v)| (k, bounded(v, levels_left - 1))).collect(),
            }),
            scalar => return to_proto(scalar),
        };
        Value { kind: Some(kind) }
    }

    /// Converts a JSON value into a protobuf `Value`.
    ///
    /// Integers become doubles, as protobuf's JSON mapping does.
    pub fn to_proto(value: serde_json::Value) -> Value {
        let kind = match value {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
            serde_json::Value::String(s) => Kind::StringValue(s),
            serde_json::Value::Array(items) => Kind::ListValue(ListValue {
                values: items.into_iter().map(to_proto).collect(),
            }),
            serde_json::Value::Object(map) => Kind::StructValue(Struct {
                fields: map.into_iter().map(|(k, v)| (k, to_proto(v))).collect(),
            }),
        };
        Value { kind: Some(kind) }
    }

    /// Converts a protobuf `Value` into JSON. A missing kind is `null`; a
    /// non-finite number (which JSON cannot hold) is `null` too.
    pub fn from_proto(value: Value) -> serde_json::Value {
        match value.kind {
            None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
            Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
            Some(Kind::NumberValue(n)) => number(n),
            Some(Kind::StringValue(s)) => serde_json::Value::String(s),
            Some(Kind::ListValue(list)) => serde_json::Value::Array(list.values.into_iter().map(from_proto).collect()),
            Some(Kind::StructValue(s)) => {
                serde_json::Value::Object(s.fields.into_iter().map(|(k, v)| (k, from_proto(v))).collect())
            }
        }
    }

    /// Whole numbers that fit an `i64` come back as integers, so `{"ms": 5}`
    /// round-trips as `5`, not `5.0`.
    fn number(n: f64) -> serde_json::Value {
        const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: beyond it f64 skips integers
        if n.fract() == 0.0 && n.abs() < EXACT {
            serde_json::Value::from(n as i64)
        } else {
            serde_json::Number::from_f64(n)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null)
        }
    }
}

pub mod time {
    //! `google.protobuf.Timestamp` <-> milliseconds since the Unix epoch.
    use prost_types::Timestamp;

    pub fn from_millis(ms: i64) -> Timestamp {
        Timestamp {
            seconds: ms.div_euclid(1000),
            nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
        }
    }

    /// Saturates instead of overflowing: a timestamp beyond what an `i64` of
    /// milliseconds holds (year ±292 million) is clamped, never a panic.
    pub fn to_millis(ts: &Timestamp) -> i64 {
        ts.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(ts.nanos) / 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_proto_value() {
        let v = serde_json::json!({"ms": 5, "x": [1.5, "a", null, true], "n": {"deep": -3}});
        assert_eq!(json::from_proto(json::to_proto(v.clone())), v);
    }

    #[test]
    fn deep_values_are_measured_and_bounded() {
        let mut deep = serde_json::json!(1);
        for _ in 0..50 {
            deep = serde_json::json!([deep]);
        }
        assert_eq!(json::depth(&deep), 50);
        assert_eq!(json::depth(&serde_json::json!({"a": [1, {"b": 2}]})), 3);
        let shown = json::from_proto(json::to_proto_bounded(deep));
        assert_eq!(json::depth(&shown), json::MAX_DEPTH);
        // Every message holding it decodes again (prost stops at 100 levels).
        use prost::Message;
        let task = tasks::v1::ListTasksResponse {
            tasks: vec![tasks::v1::Task {
                payload: Some(json::to_proto(shown)),
                ..Default::default()
            }],
            next_page_token: String::new(),
        };
        assert!(tasks::v1::ListTasksResponse::decode(task.encode_to_vec().as_slice()).is_ok());
        let shallow = serde_json::json!({"a": [1, 2]});
        assert_eq!(json::from_proto(json::to_proto_bounded(shallow.clone())), shallow);
    }

    #[test]
    fn the_deepest_allowed_object_decodes() {
        use prost::Message;
        let mut deep = serde_json::json!(1);
        for _ in 0..json::MAX_DEPTH {
            deep = serde_json::json!({ "k": deep });
        }
        let task = tasks::v1::ListTasksResponse {
            tasks: vec![tasks::v1::Task {
                payload: Some(json::to_proto(deep)),
                ..Default::default()
            }],
            next_page_token: String::new(),
        };
        assert!(tasks::v1::ListTasksResponse::decode(task.encode_to_vec().as_slice()).is_ok());
    }

    #[test]
    fn timestamps_round_trip_including_before_epoch() {
        for ms in [0, 1, 999, 1_700_000_000_123, -1, -1001] {
            assert_eq!(time::to_millis(&time::from_millis(ms)), ms);
        }
        let far = prost_types::Timestamp {
            seconds: i64::MAX / 10,
            nanos: 0,
        };
        assert_eq!(time::to_millis(&far), i64::MAX);
    }

    #[test]
    fn descriptor_set_names_every_service() {
        use prost::Message;
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let names: Vec<_> = fds.file.iter().map(|f| f.name().to_string()).collect();
        for want in [
            "mesh/items/v1/items.proto",
            "google/protobuf/timestamp.proto",
            // What the options import, so reflection clients resolve them.
            "google/api/annotations.proto",
            "google/api/http.proto",
            "google/protobuf/descriptor.proto",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
        }
    }

    /// Every RPC of every mesh service, from the descriptor set: (gRPC path,
    /// server streaming, idempotency level as in the proto).
    fn rpcs_in_descriptor_set() -> Vec<(String, bool, i32)> {
        use prost::Message;
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let mut rpcs = Vec::new();
        for file in fds.file.iter().filter(|f| f.name().starts_with("mesh/")) {
            for service in &file.service {
                for method in &service.method {
                    rpcs.push((
                        format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                        method.server_streaming(),
                        method.options.as_ref().map_or(0, |o| o.idempotency_level() as i32),
                    ));
                }
            }
        }
        rpcs
    }

    #[test]
    fn the_table_has_every_mesh_rpc_and_its_idempotency_level() {
        use bindings::{Idempotency, METHODS};
        let rpcs = rpcs_in_descriptor_set();
        assert_eq!(rpcs.len(), 20, "{rpcs:?}");
        assert_eq!(METHODS.len(), rpcs.len());
        for (path, streaming, level) in &rpcs {
            let m = bindings::method(path).unwrap_or_else(|| panic!("{path} missing from METHODS"));
            assert_eq!(m.grpc_path, format!("/{}/{}", m.service, m.method));
            assert_eq!(m.server_streaming, *streaming, "{path}");
            let want = match level {
                0 => Idempotency::Unknown,
                1 => Idempotency::NoSideEffects,
                2 => Idempotency::Idempotent,
                other => panic!("{path}: level {other}"),
            };
            assert_eq!(m.idempotency, want, "{path}");
        }
        // The generated code's paths are the table's (tonic's `/pkg.Svc/Method`).
        assert_eq!(
            bindings::method("/mesh.items.v1.ItemService/GetItem").map(|m| (m.service, m.method)),
            Some(("mesh.items.v1.ItemService", "GetItem"))
        );
    }

    #[test]
    fn idempotency_levels_are_the_ones_chosen() {
        use bindings::{Idempotency::*, idempotency};
        for (rpc, want) in [
            ("/mesh.items.v1.ItemService/GetItem", NoSideEffects),
            ("/mesh.items.v1.ItemService/ListItems", NoSideEffects),
            ("/mesh.items.v1.ItemService/CreateItem", Unknown),
            ("/mesh.items.v1.ItemService/UpdateItem", Unknown),
            ("/mesh.items.v1.ItemService/DeleteItem", Unknown),
            ("/mesh.cache.v1.CacheService/Get", NoSideEffects),
            ("/mesh.cache.v1.CacheService/Stats", NoSideEffects),
            ("/mesh.cache.v1.CacheService/Set", Idempotent),
            ("/mesh.cache.v1.CacheService/Delete", Idempotent),
            ("/mesh.tasks.v1.TaskService/GetTask", NoSideEffects),
            ("/mesh.tasks.v1.TaskService/ListTasks", NoSideEffects),
            ("/mesh.tasks.v1.TaskService/WatchTask", NoSideEffects),
            ("/mesh.tasks.v1.TaskService/QueueStats", NoSideEffects),
            ("/mesh.tasks.v1.TaskService/SubmitTask", Unknown),
            ("/mesh.tasks.v1.TaskService/CancelTask", Unknown),
            ("/mesh.tasks.v1.TaskService/RetryTask", Unknown),
            ("/mesh.counter.v1.CounterService/Get", NoSideEffects),
            ("/mesh.counter.v1.CounterService/Increment", Unknown),
            ("/mesh.counter.v1.CounterService/Reset", Unknown),
        ] {
            assert_eq!(idempotency(rpc), want, "{rpc}");
        }
        assert_eq!(idempotency("/mesh.items.v1.ItemService/Nope"), Unknown);
        assert_eq!(idempotency(""), Unknown);
        assert!(NoSideEffects.is_safe_to_repeat() && Idempotent.is_safe_to_repeat());
        assert!(!Unknown.is_safe_to_repeat());
        assert_eq!(Idempotent.as_str_name(), "IDEMPOTENT");
    }

    #[test]
    fn bindings_are_the_gateway_routes() {
        let rows: Vec<_> = bindings::BINDINGS
            .iter()
            .map(|b| (b.http_method, b.path, b.body, b.method))
            .collect();
        for want in [
            ("POST", "/items", "*", "CreateItem"),
            ("GET", "/items/{id}", "", "GetItem"),
            ("GET", "/items", "", "ListItems"),
            ("PATCH", "/items/{id}", "*", "UpdateItem"),
            ("DELETE", "/items/{id}", "", "DeleteItem"),
            ("GET", "/cache/{key}", "", "Get"),
            ("PUT", "/cache/{key}", "*", "Set"),
            ("DELETE", "/cache/{key}", "", "Delete"),
            ("POST", "/tasks", "*", "SubmitTask"),
            ("POST", "/tasks:batch", "*", "SubmitTasks"),
            ("GET", "/tasks/{id}", "", "GetTask"),
            ("POST", "/tasks/{id}/cancel", "", "CancelTask"),
            ("GET", "/tasks", "", "ListTasks"),
            ("GET", "/tasks/{id}/events", "", "WatchTask"),
            ("POST", "/tasks/{id}/retry", "", "RetryTask"),
            ("GET", "/tasks/stats", "", "QueueStats"),
            ("POST", "/counters/{name}/increment", "*", "Increment"),
            ("GET", "/counters/{name}", "", "Get"),
            ("POST", "/counters/{name}/reset", "", "Reset"),
        ] {
            assert!(rows.contains(&want), "{want:?} missing from {rows:?}");
        }
        assert_eq!(rows.len(), 19, "{rows:?}");
        // Stats is used by /overview only: no binding of its own.
        assert!(
            bindings::BINDINGS
                .iter()
                .all(|b| b.grpc_path != "/mesh.cache.v1.CacheService/Stats")
        );
        // Each row agrees with its method's entry.
        for b in bindings::BINDINGS {
            let m = bindings::method(b.grpc_path).unwrap();
            assert_eq!((m.idempotency, m.server_streaming), (b.idempotency, b.server_streaming));
        }
        let watch = bindings::BINDINGS.iter().find(|b| b.method == "WatchTask").unwrap();
        assert!(watch.server_streaming);
    }

    /// The descriptor set served by reflection keeps each `google.api.http`
    /// option (prost_types would drop it), and they are the table's. Decoded
    /// here with just the fields needed: FileDescriptorSet.file (1),
    /// FileDescriptorProto.package (2) / service (6), ServiceDescriptorProto.name
    /// (1) / method (2), MethodDescriptorProto.name (1) / options (4),
    /// MethodOptions' extension 72295728 (google.api.http), HttpRule's
    /// get/put/post/delete/patch (2..=6) and body (7).
    #[test]
    fn reflection_keeps_the_http_options() {
        use prost::Message;
        #[derive(Clone, PartialEq, Message)]
        struct Fds {
            #[prost(message, repeated, tag = "1")]
            file: Vec<File>,
        }
        #[derive(Clone, PartialEq, Message)]
        struct File {
            #[prost(string, tag = "2")]
            package: String,
            #[prost(message, repeated, tag = "6")]
            service: Vec<Service>,
        }
        #[derive(Clone, PartialEq, Message)]
        struct Service {
            #[prost(string, tag = "1")]
            name: String,
            #[prost(message, repeated, tag = "2")]
            method: Vec<Rpc>,
        }
        #[derive(Clone, PartialEq, Message)]
        struct Rpc {
            #[prost(string, tag = "1")]
            name: String,
            #[prost(message, optional, tag = "4")]
            options: Option<Options>,
        }
        #[derive(Clone, PartialEq, Message)]
        struct Options {
            #[prost(message, optional, tag = "72295728")]
            http: Option<HttpRule>,
        }
        #[derive(Clone, PartialEq, Message)]
        struct HttpRule {
            #[prost(string, tag = "2")]
            get: String,
            #[prost(string, tag = "3")]
            put: String,
            #[prost(string, tag = "4")]
            post: String,
            #[prost(string, tag = "5")]
            delete: String,
            #[prost(string, tag = "6")]
            patch: String,
            #[prost(string, tag = "7")]
            body: String,
        }
        let fds = Fds::decode(FILE_DESCRIPTOR_SET).unwrap();
        let mut found = Vec::new();
        for file in &fds.file {
            for service in &file.service {
                for rpc in &service.method {
                    let Some(rule) = rpc.options.as_ref().and_then(|o| o.http.as_ref()) else {
                        continue;
                    };
                    let (verb, path) = [
                        ("GET", &rule.get),
                        ("PUT", &rule.put),
                        ("POST", &rule.post),
                        ("DELETE", &rule.delete),
                        ("PATCH", &rule.patch),
                    ]
                    .into_iter()
                    .find(|(_, p)| !p.is_empty())
                    .unwrap();
                    found.push((
                        format!("/{}.{}/{}", file.package, service.name, rpc.name),
                        verb,
                        path.clone(),
                        rule.body.clone(),
                    ));
                }
            }
        }
        let table: Vec<_> = bindings::BINDINGS
            .iter()
            .map(|b| {
                (
                    b.grpc_path.to_string(),
                    b.http_method,
                    b.path.to_string(),
                    b.body.to_string(),
                )
            })
            .collect();
        assert_eq!(found, table);
    }
}
