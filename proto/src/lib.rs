//! The mesh's gRPC contracts, generated from `proto/mesh/<service>/v1/*.proto`.
//!
//! Module map (mirrors the proto packages):
//! - [`items::v1`], [`cache::v1`], [`tasks::v1`], [`counter::v1`]: messages, clients, servers;
//! - [`FILE_DESCRIPTOR_SET`]: every file (with its imports) for server reflection;
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

/// Encoded `FileDescriptorSet` of every mesh proto and the well-known types it imports.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mesh_descriptor.bin"));

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
        for want in ["mesh/items/v1/items.proto", "google/protobuf/timestamp.proto"] {
            assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
        }
    }
}
