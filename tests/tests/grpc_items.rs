//! The items service over gRPC: every RPC and its error cases.

use mesh_tests::Server;
use mesh_tests::proto::items::v1::item_service_client::ItemServiceClient;
use mesh_tests::proto::items::v1::*;
use tonic::Code;
use tonic::transport::Channel;

async fn items() -> (Server, ItemServiceClient<Channel>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        "items-service",
        &mesh_tests::args(&["--data-dir", &dir.path().display().to_string()]),
    )
    .await;
    let client = ItemServiceClient::new(server.channel());
    (server, client, dir)
}

fn new_item(name: &str, price: i64) -> CreateItemRequest {
    CreateItemRequest {
        name: name.into(),
        description: "d".into(),
        price_cents: price,
        tags: vec!["t1".into(), " t2 ".into(), "t1".into()],
    }
}

#[tokio::test]
async fn create_get_update_delete_round_trip() {
    let (_server, mut c, _dir) = items().await;
    let created = c.create_item(new_item("  pen  ", 150)).await.unwrap().into_inner();
    assert!(created.id > 0);
    assert_eq!(created.name, "pen", "names are trimmed");
    assert_eq!(created.tags, vec!["t1", "t2"], "tags are trimmed and deduplicated");
    assert_eq!(created.version, 1);
    assert!(created.create_time.is_some() && created.update_time.is_some());

    let got = c
        .get_item(GetItemRequest { id: created.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);

    let updated = c
        .update_item(UpdateItemRequest {
            id: created.id,
            price_cents: Some(200),
            tags: Some(TagList { values: vec![] }),
            expected_version: Some(1),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (updated.price_cents, updated.version, updated.name.as_str()),
        (200, 2, "pen")
    );
    assert!(updated.tags.is_empty(), "a set, empty tag list clears the tags");

    let unconditional = c
        .update_item(UpdateItemRequest {
            id: created.id,
            description: Some("new".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((unconditional.description.as_str(), unconditional.version), ("new", 3));

    c.delete_item(DeleteItemRequest {
        id: created.id,
        expected_version: None,
    })
    .await
    .unwrap();
    let gone = c.get_item(GetItemRequest { id: created.id }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert!(gone.message().contains(&created.id.to_string()), "{gone:?}");
}

#[tokio::test]
async fn stale_versions_are_aborted_and_leave_the_item_alone() {
    let (_server, mut c, _dir) = items().await;
    let item = c.create_item(new_item("cup", 300)).await.unwrap().into_inner();
    c.update_item(UpdateItemRequest {
        id: item.id,
        name: Some("mug".into()),
        expected_version: Some(1),
        ..Default::default()
    })
    .await
    .unwrap();
    let stale = c
        .update_item(UpdateItemRequest {
            id: item.id,
            name: Some("bowl".into()),
            expected_version: Some(1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    assert!(stale.message().contains("version 2"), "{stale:?}");
    let del = c
        .delete_item(DeleteItemRequest {
            id: item.id,
            expected_version: Some(1),
        })
        .await
        .unwrap_err();
    assert_eq!(del.code(), Code::Aborted);
    let now = c.get_item(GetItemRequest { id: item.id }).await.unwrap().into_inner();
    assert_eq!((now.name.as_str(), now.version), ("mug", 2));
}

#[tokio::test]
async fn concurrent_same_version_updates_exactly_one_wins() {
    let (_server, c, _dir) = items().await;
    let item = c.clone().create_item(new_item("race", 1)).await.unwrap().into_inner();
    let attempts = (0..8).map(|n| {
        let mut c = c.clone();
        async move {
            c.update_item(UpdateItemRequest {
                id: item.id,
                price_cents: Some(n),
                expected_version: Some(1),
                ..Default::default()
            })
            .await
        }
    });
    let results = futures::future::join_all(attempts).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| e.code() == Code::Aborted)
    );
}

#[tokio::test]
async fn bad_input_names_the_field() {
    let (_server, mut c, _dir) = items().await;
    let cases = [
        (new_item("   ", 1), "name"),
        (new_item("x", -1), "price_cents"),
        (new_item(&"n".repeat(201), 1), "name"),
        (
            CreateItemRequest {
                tags: vec!["".into()],
                ..new_item("x", 1)
            },
            "tags",
        ),
    ];
    for (req, field) in cases {
        let err = c.create_item(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(field), "{field}: {err:?}");
    }
    for id in [0, -5] {
        let err = c.get_item(GetItemRequest { id }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with("id"));
    }
    let err = c
        .update_item(UpdateItemRequest {
            id: 999_999,
            name: Some("x".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .delete_item(DeleteItemRequest {
            id: 999_999,
            expected_version: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .list_items(ListItemsRequest {
            page_size: 5,
            page_token: "garbage".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("page_token"));
    let err = c
        .list_items(ListItemsRequest {
            page_size: 5000,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert!(err.message().starts_with("page_size"), "{err:?}");
}

#[tokio::test]
async fn list_pages_cover_every_item_once_in_id_order() {
    let (_server, mut c, _dir) = items().await;
    let mut ids = Vec::new();
    for n in 0..7 {
        ids.push(
            c.create_item(new_item(&format!("i{n}"), n))
                .await
                .unwrap()
                .into_inner()
                .id,
        );
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .list_items(ListItemsRequest {
                page_size: 3,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|i| i.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ids);
    assert_eq!(pages, 3);
    // Default page size applies when 0.
    let all = c.list_items(ListItemsRequest::default()).await.unwrap().into_inner();
    assert_eq!(all.items.len(), 7);
    assert!(all.next_page_token.is_empty());
}

#[tokio::test]
async fn replicas_started_together_on_one_fresh_sqlite_file_all_come_up() {
    // Their first migrations race for the same file; a file lock makes them take turns.
    let dir = tempfile::tempdir().unwrap();
    let data = mesh_tests::args(&["--data-dir", &dir.path().display().to_string()]);
    for bin in ["items-service", "tasks-service"] {
        let (a, b, c) = tokio::join!(
            Server::start(bin, &data),
            Server::start(bin, &data),
            Server::start(bin, &data)
        );
        for s in [&a, &b, &c] {
            s.wait_serving().await;
        }
    }
}
