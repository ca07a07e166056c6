//! The cache and counter services over gRPC.

use std::time::Duration;

use mesh_tests::Server;
use mesh_tests::proto::cache::v1::cache_service_client::CacheServiceClient;
use mesh_tests::proto::cache::v1::*;
use mesh_tests::proto::counter::v1::counter_service_client::CounterServiceClient;
use mesh_tests::proto::counter::v1::{GetRequest as CounterGet, IncrementRequest, ResetRequest};
use tonic::Code;

#[tokio::test]
async fn cache_set_get_delete_stats_and_ttl() {
    let server = Server::start("cache-service", &[]).await;
    let mut c = CacheServiceClient::new(server.channel());
    let miss = c.get(GetRequest { key: "k".into() }).await.unwrap().into_inner();
    assert!(!miss.found);
    c.set(SetRequest {
        key: "k".into(),
        value: b"v\x00\xff".to_vec(),
        ttl: None,
    })
    .await
    .unwrap();
    let hit = c.get(GetRequest { key: "k".into() }).await.unwrap().into_inner();
    assert!(hit.found);
    assert_eq!(hit.value, b"v\x00\xff", "bytes come back unaltered");

    let short = prost_types::Duration {
        seconds: 0,
        nanos: 300_000_000,
    };
    c.set(SetRequest {
        key: "short".into(),
        value: b"x".to_vec(),
        ttl: Some(short),
    })
    .await
    .unwrap();
    assert!(
        c.get(GetRequest { key: "short".into() })
            .await
            .unwrap()
            .into_inner()
            .found
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !c.get(GetRequest { key: "short".into() })
            .await
            .unwrap()
            .into_inner()
            .found,
        "expired"
    );

    let stats = c.stats(StatsRequest {}).await.unwrap().into_inner();
    assert_eq!((stats.hits, stats.misses, stats.entries), (2, 2, 1));

    assert!(
        c.delete(DeleteRequest { key: "k".into() })
            .await
            .unwrap()
            .into_inner()
            .deleted
    );
    assert!(
        !c.delete(DeleteRequest { key: "k".into() })
            .await
            .unwrap()
            .into_inner()
            .deleted
    );
}

#[tokio::test]
async fn cache_refuses_bad_input_by_field() {
    let server = Server::start("cache-service", &[]).await;
    let mut c = CacheServiceClient::new(server.channel());
    let cases = [
        (
            SetRequest {
                key: String::new(),
                value: vec![],
                ttl: None,
            },
            "key",
        ),
        (
            SetRequest {
                key: "k".repeat(513),
                value: vec![],
                ttl: None,
            },
            "key",
        ),
        (
            SetRequest {
                key: "k".into(),
                value: vec![0; 1024 * 1024 + 1],
                ttl: None,
            },
            "value",
        ),
        (
            SetRequest {
                key: "k".into(),
                value: vec![],
                ttl: Some(prost_types::Duration { seconds: 0, nanos: 0 }),
            },
            "ttl",
        ),
        (
            SetRequest {
                key: "k".into(),
                value: vec![],
                ttl: Some(prost_types::Duration { seconds: -5, nanos: 0 }),
            },
            "ttl",
        ),
    ];
    for (req, field) in cases {
        let err = c.set(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(field), "{field}: {err:?}");
    }
    let err = c.get(GetRequest { key: String::new() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn counter_increment_get_reset_idempotency_and_errors() {
    let server = Server::start("counter-service", &[]).await;
    let mut c = CounterServiceClient::new(server.channel());
    let v = c
        .increment(IncrementRequest {
            name: "n".into(),
            delta: None,
            idempotency_key: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(v.into_inner().value, 1, "delta defaults to 1");
    let v = c
        .increment(IncrementRequest {
            name: "n".into(),
            delta: Some(-3),
            idempotency_key: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(v.into_inner().value, -2);
    for _ in 0..3 {
        let v = c
            .increment(IncrementRequest {
                name: "n".into(),
                delta: Some(10),
                idempotency_key: "once".into(),
            })
            .await
            .unwrap();
        assert_eq!(v.into_inner().value, 8, "a repeated key returns the first answer");
    }
    assert_eq!(
        c.get(CounterGet { name: "n".into() }).await.unwrap().into_inner().value,
        8
    );
    assert_eq!(
        c.get(CounterGet { name: "never".into() })
            .await
            .unwrap()
            .into_inner()
            .value,
        0
    );

    let err = c
        .increment(IncrementRequest {
            name: "n".into(),
            delta: Some(i64::MAX),
            idempotency_key: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert_eq!(
        c.get(CounterGet { name: "n".into() }).await.unwrap().into_inner().value,
        8,
        "an overflow changes nothing"
    );

    let err = c
        .increment(IncrementRequest {
            name: String::new(),
            delta: None,
            idempotency_key: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("name"));

    assert_eq!(
        c.reset(ResetRequest { name: "n".into() })
            .await
            .unwrap()
            .into_inner()
            .value,
        8,
        "reset returns the old value"
    );
    assert_eq!(
        c.get(CounterGet { name: "n".into() }).await.unwrap().into_inner().value,
        0
    );
}
