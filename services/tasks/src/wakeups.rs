//! Wake-ups across replicas on PostgreSQL: every replica LISTENs on one
//! channel per tasks schema, and a replica that queues a task (a submit, a
//! retry, a retry after back-off, a task whose worker was lost) NOTIFYs it
//! with the time the task becomes ready (`TaskStore::announce`). Idle
//! workers on every replica wake at once, or set their next wake-up to that
//! time, instead of finding the task at their next poll, which stays as a
//! slow fallback (`--poll-ms`) for notifications lost while a listener
//! reconnects. On SQLite, replicas share no server to notify through; the
//! in-process wake-up serves the replica that took the submit.

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::store::TaskStore;

/// The channel for the tasks schema `schema` (one mesh's replicas share it;
/// another mesh on the same database, with another schema, does not).
pub fn channel(schema: &str) -> String {
    format!("{schema}_queued")
}

/// Listens on `channel` until `stop` turns true, reconnecting (after a
/// second) whenever the connection is lost. Every notification, whatever
/// its origin, wakes this replica's idle workers.
pub async fn listen(url: String, channel: String, store: TaskStore, mut stop: watch::Receiver<bool>) {
    loop {
        match subscribe(&url, &channel).await {
            Ok(mut listener) => {
                tracing::debug!(%channel, "listening for queued tasks");
                // Anything queued while we were not listening.
                store.heard(0);
                loop {
                    tokio::select! {
                        // `try_recv` says when the connection was lost (None;
                        // the next call reconnects): notifications sent in
                        // between are gone, so look at the queue then.
                        received = listener.try_recv() => match received {
                            Ok(Some(notification)) => store.heard(notification.payload().parse().unwrap_or(0)),
                            Ok(None) => {
                                tracing::info!("LISTEN connection lost; reconnecting");
                                store.heard(0);
                            }
                            Err(err) => {
                                tracing::warn!(error = %err, "lost the LISTEN connection; workers poll until it is back");
                                break;
                            }
                        },
                        _ = stop.changed() => return,
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot LISTEN for queued tasks; workers poll until it works"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn subscribe(url: &str, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(channel).await?;
    Ok(listener)
}
