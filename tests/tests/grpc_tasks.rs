//! The tasks service over gRPC: submit, get, list, cancel, watch, priorities,
//! and durability across a restart.

use std::time::Duration;

use futures::StreamExt;
use mesh_tests::proto::tasks::v1::task_service_client::TaskServiceClient;
use mesh_tests::proto::tasks::v1::*;
use mesh_tests::{Server, WAIT, args, eventually};
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

fn payload(v: serde_json::Value) -> Option<prost_types::Value> {
    Some(mesh_tests::proto::json::to_proto(v))
}

fn submit(kind: &str, p: serde_json::Value, priority: i32) -> SubmitTaskRequest {
    SubmitTaskRequest {
        kind: kind.into(),
        payload: payload(p),
        priority,
        ..Default::default()
    }
}

async fn tasks(dir: &tempfile::TempDir, workers: &str) -> (Server, TaskServiceClient<Channel>) {
    let server = Server::start(
        "tasks-service",
        &args(&["--data-dir", &dir.path().display().to_string(), "--workers", workers]),
    )
    .await;
    let client = TaskServiceClient::new(server.channel());
    (server, client)
}

/// Follows a task with WatchTask until it ends; returns every state seen.
async fn watch(c: &mut TaskServiceClient<Channel>, id: i64) -> Vec<Task> {
    let mut stream = c.watch_task(WatchTaskRequest { id }).await.unwrap().into_inner();
    let mut seen = Vec::new();
    while let Some(t) = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("watch stalled")
    {
        seen.push(t.unwrap());
    }
    seen
}

#[tokio::test]
async fn each_builtin_kind_runs_and_watch_streams_every_state() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, mut c) = tasks(&dir, "2").await;

    // Due in a second, so that the watch is open before the task runs (a
    // busy machine can take longer than the 200 ms sleep to open it) and
    // sees it queued, running and succeeded.
    let t = c
        .submit_task(SubmitTaskRequest {
            countdown: prost_types::Duration::try_from(Duration::from_secs(1)).ok(),
            ..submit("sleep", json!({"ms": 200}), 0)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.status, TaskStatus::Queued as i32);
    let states = watch(&mut c, t.id).await;
    let statuses: Vec<i32> = states.iter().map(|t| t.status).collect();
    assert_eq!(statuses.last(), Some(&(TaskStatus::Succeeded as i32)), "{states:?}");
    assert!(statuses.contains(&(TaskStatus::Running as i32)), "{statuses:?}");
    let done = states.last().unwrap().clone();
    assert_eq!(done.attempts, 1);
    let result = mesh_tests::proto::json::from_proto(done.result.unwrap());
    assert_eq!(result["message"], "Task complete!");
    let started = mesh_tests::proto::time::to_millis(&done.start_time.unwrap());
    let finished = mesh_tests::proto::time::to_millis(&done.finish_time.unwrap());
    assert!(finished - started >= 200, "slept {} ms", finished - started);

    let h = c
        .submit_task(submit("hash", json!({"data": "abc", "rounds": 1}), 5))
        .await
        .unwrap()
        .into_inner();
    let done = watch(&mut c, h.id).await.pop().unwrap();
    let result = mesh_tests::proto::json::from_proto(done.result.unwrap());
    assert_eq!(
        result["sha256"],
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );

    let e = c
        .submit_task(submit("echo", json!({"a": [1, "b"]}), 9))
        .await
        .unwrap()
        .into_inner();
    let done = watch(&mut c, e.id).await.pop().unwrap();
    assert_eq!(
        mesh_tests::proto::json::from_proto(done.result.unwrap()),
        json!({"a": [1, "b"]})
    );

    let got = c.get_task(GetTaskRequest { id: e.id }).await.unwrap().into_inner();
    assert_eq!(got.status, TaskStatus::Succeeded as i32);
    let listed = c
        .list_tasks(ListTasksRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![e.id, h.id],
        "newest first"
    );
    let rest = c
        .list_tasks(ListTasksRequest {
            page_size: 2,
            page_token: listed.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.tasks.iter().map(|t| t.id).collect::<Vec<_>>(), vec![t.id]);
    assert!(rest.next_page_token.is_empty());
}

#[tokio::test]
async fn bad_submissions_are_refused_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, mut c) = tasks(&dir, "1").await;
    let cases = [
        (submit("nope", json!(null), 0), "kind"),
        (submit("echo", json!(null), 10), "priority"),
        (submit("echo", json!(null), -1), "priority"),
        (submit("sleep", json!({}), 0), "payload"),
        (submit("sleep", json!({"ms": "soon"}), 0), "payload"),
        (submit("hash", json!({"rounds": 0}), 0), "payload"),
    ];
    for (req, field) in cases {
        let err = c.submit_task(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(field), "{field}: {err:?}");
    }
    assert_eq!(
        c.get_task(GetTaskRequest { id: 424242 }).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        c.get_task(GetTaskRequest { id: 0 }).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.watch_task(WatchTaskRequest { id: 424242 }).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        c.cancel_task(CancelTaskRequest { id: 424242 })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let err = c
        .list_tasks(ListTasksRequest {
            status: 42,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().starts_with("status"), "{err:?}");
}

#[tokio::test]
async fn higher_priority_runs_first_when_the_worker_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, mut c) = tasks(&dir, "1").await;
    let busy = c
        .submit_task(submit("sleep", json!({"ms": 600}), 0))
        .await
        .unwrap()
        .into_inner();
    // Wait until the one worker holds the busy task.
    eventually("the worker runs the busy task", WAIT, async || {
        let t = c.get_task(GetTaskRequest { id: busy.id }).await.unwrap().into_inner();
        if t.status == TaskStatus::Running as i32 {
            Ok(())
        } else {
            Err(t)
        }
    })
    .await;
    let low = c
        .submit_task(submit("echo", json!("low"), 1))
        .await
        .unwrap()
        .into_inner();
    let high = c
        .submit_task(submit("echo", json!("high"), 8))
        .await
        .unwrap()
        .into_inner();
    let low_done = watch(&mut c, low.id).await.pop().unwrap();
    let high_done = watch(&mut c, high.id).await.pop().unwrap();
    let started = |t: &Task| mesh_tests::proto::time::to_millis(t.start_time.as_ref().unwrap());
    assert!(
        started(&high_done) <= started(&low_done),
        "high started at {} but low at {}",
        started(&high_done),
        started(&low_done)
    );
    // And the later one really did start after the submitted-later high one finished queuing.
    assert!(low.id < high.id);
}

#[tokio::test]
async fn cancel_a_queued_task_but_not_a_finished_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, mut c) = tasks(&dir, "0").await; // no workers: everything stays queued
    let t = c.submit_task(submit("echo", json!(1), 0)).await.unwrap().into_inner();
    let cancelled = c
        .cancel_task(CancelTaskRequest { id: t.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.status, TaskStatus::Cancelled as i32);
    assert!(cancelled.finish_time.is_some());
    let again = c.cancel_task(CancelTaskRequest { id: t.id }).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(again.message().contains("cancelled"), "{again:?}");
    let only = c
        .list_tasks(ListTasksRequest {
            status: TaskStatus::Cancelled as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only.tasks.len(), 1);
    // A watch of an ended task sends its final state and ends.
    let states = watch(&mut c, t.id).await;
    assert_eq!(states.len(), 1);
}

#[tokio::test]
async fn a_task_queued_before_a_restart_runs_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, mut c) = tasks(&dir, "0").await;
    let t = c
        .submit_task(submit("echo", json!("survives"), 3))
        .await
        .unwrap()
        .into_inner();
    assert!(first.terminate().await.success(), "{}", first.logs());

    let (_second, mut c) = tasks(&dir, "1").await;
    let done = watch(&mut c, t.id).await.pop().unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded as i32);
    assert_eq!(
        mesh_tests::proto::json::from_proto(done.result.unwrap()),
        json!("survives")
    );
}
