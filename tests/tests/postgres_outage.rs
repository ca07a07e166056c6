//! PostgreSQL becomes unreachable for the items service and comes back: the
//! service reports NOT_SERVING, fails calls fast with UNAVAILABLE, and
//! recovers by itself. The outage is a cut TCP proxy between the service and
//! the shared server, which itself is never stopped.

use std::time::{Duration, Instant};

use mesh_tests::backends::{SchemaGuard, postgres, unique};
use mesh_tests::proto::items::v1::item_service_client::ItemServiceClient;
use mesh_tests::proto::items::v1::{CreateItemRequest, GetItemRequest};
use mesh_tests::{Server, TcpProxy, args, eventually};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const FAIL_FAST: Duration = Duration::from_millis(2500);
const NOTICE: Duration = Duration::from_secs(10);

async fn status(server: &Server) -> i32 {
    let mut c = HealthClient::new(server.channel());
    c.check(HealthCheckRequest { service: String::new() })
        .await
        .map_or(-1, |r| r.into_inner().status)
}

#[tokio::test]
async fn items_fail_fast_while_postgres_is_unreachable_and_recover() {
    let Some(url) = postgres("postgres_outage").await else {
        return;
    };
    let parsed = reqwest::Url::parse(&url).unwrap();
    let target = tokio::net::lookup_host((parsed.host_str().unwrap(), parsed.port().unwrap_or(5432)))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = TcpProxy::start(target).await;
    let mut via_proxy = parsed.clone();
    via_proxy.set_host(Some("127.0.0.1")).unwrap();
    via_proxy.set_port(Some(proxy.addr.port())).unwrap();
    let prefix = format!("{}_", unique("pgdown"));
    let _schemas = SchemaGuard::new(&url, [format!("{prefix}items")]);
    let items = Server::start(
        "items-service",
        &args(&[
            "--database-url",
            via_proxy.as_str(),
            "--db-schema-prefix",
            &prefix,
            "--db-acquire-timeout-ms",
            "1000",
        ]),
    )
    .await;
    items.wait_serving().await;
    let mut c = ItemServiceClient::new(items.channel());
    let item = c
        .create_item(CreateItemRequest {
            name: "kept".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let (listen, target) = proxy.cut().await;
    let started = Instant::now();
    let err = c.get_item(GetItemRequest { id: item.id }).await.unwrap_err();
    assert!(started.elapsed() < FAIL_FAST, "took {:?} to fail", started.elapsed());
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    eventually("NOT_SERVING while the database is unreachable", NOTICE, async || {
        status(&items).await == 2
    })
    .await;

    let _proxy = TcpProxy::start_on(listen, target).await;
    eventually("SERVING again once it is back", NOTICE, async || {
        status(&items).await == 1
    })
    .await;
    eventually("reads work again, without a restart", NOTICE, async || {
        c.get_item(GetItemRequest { id: item.id }).await.is_ok()
    })
    .await;
    let again = c.get_item(GetItemRequest { id: item.id }).await.unwrap().into_inner();
    assert_eq!(again, item, "nothing was lost");
}
