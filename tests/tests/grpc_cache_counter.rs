//! The cache and counter services over gRPC.

use mesh_tests::proto::cache::v1::cache_service_client::CacheServiceClient;
use mesh_tests::proto::cache::v1::*;
use mesh_tests::proto::counter::v1::counter_service_client::CounterServiceClient;
use mesh_tests::proto::counter::v1::{GetRequest as CounterGet, IncrementRequest, ResetRequest};
use mesh_tests::{Server, WAIT, eventually};
use tonic::Code;

#[tokio::test]
async fn cache_set_get_delete_stats_and_ttl() {
    let server = Server::start("cache-service", &[]).await;
    let mut c = CacheServiceClient::new(server.channel());
    let miss = c
        .get(GetRequest {
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!miss.found);
    c.set(SetRequest {
        key: "k".into(),
        value: b"v\x00\xff".to_vec(),
        ttl: None,
        ..Default::default()
    })
    .await
    .unwrap();
    let hit = c
        .get(GetRequest {
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(hit.found);
    assert_eq!(hit.value, b"v\x00\xff", "bytes come back unaltered");

    // Long enough to be read back on a stalled machine; then polled until it expires.
    let short = prost_types::Duration { seconds: 3, nanos: 0 };
    c.set(SetRequest {
        key: "short".into(),
        value: b"x".to_vec(),
        ttl: Some(short),
        ..Default::default()
    })
    .await
    .unwrap();
    let read_short = GetRequest {
        key: "short".into(),
        ..Default::default()
    };
    assert!(c.get(read_short.clone()).await.unwrap().into_inner().found);
    let mut hits_while_waiting = 0;
    eventually("the short entry expires", WAIT, async || {
        let found = c.get(read_short.clone()).await.unwrap().into_inner().found;
        hits_while_waiting += u64::from(found);
        !found
    })
    .await;

    let stats = c.stats(StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (stats.hits, stats.misses, stats.entries),
        (2 + hits_while_waiting, 2, 1)
    );

    assert!(
        c.delete(DeleteRequest {
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deleted
    );
    assert!(
        !c.delete(DeleteRequest {
            key: "k".into(),
            ..Default::default()
        })
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
                ..Default::default()
            },
            "key",
        ),
        (
            SetRequest {
                key: "k".repeat(513),
                value: vec![],
                ttl: None,
                ..Default::default()
            },
            "key",
        ),
        (
            SetRequest {
                key: "k".into(),
                value: vec![0; 1024 * 1024 + 1],
                ttl: None,
                ..Default::default()
            },
            "value",
        ),
        (
            SetRequest {
                key: "k".into(),
                value: vec![],
                ttl: Some(prost_types::Duration { seconds: 0, nanos: 0 }),
                ..Default::default()
            },
            "ttl",
        ),
        (
            SetRequest {
                key: "k".into(),
                value: vec![],
                ttl: Some(prost_types::Duration { seconds: -5, nanos: 0 }),
                ..Default::default()
            },
            "ttl",
        ),
    ];
    for (req, field) in cases {
        let err = c.set(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(field), "{field}: {err:?}");
    }
    let err = c
        .get(GetRequest {
            key: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
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
