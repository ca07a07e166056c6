//! One SQL connection path for both backends a service can run on.
//!
//! Services write their queries once, against `sqlx::Any` with `$1`-style
//! parameters (which both SQLite and PostgreSQL accept), and pick the backend
//! at start-up from a URL:
//! - no URL: an SQLite file in the data directory, in WAL mode so several
//!   processes (replicas) can share it safely;
//! - `postgres://...`: a bounded pool on a shared PostgreSQL database.
#![forbid(unsafe_code)]

pub mod metrics;

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

pub use sqlx;

/// Which database a pool talks to, for the few statements that must differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Connection settings shared by every SQL-backed service (flattened into
/// each service's clap config). Its `Debug` masks the URL's password.
#[derive(clap::Args, Clone)]
pub struct SqlConfig {
    /// PostgreSQL URL (postgres://user@host/db). Unset: an SQLite file in --data-dir.
    #[arg(long, env = "MESH_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Most connections this process opens.
    #[arg(long, env = "MESH_DB_MAX_CONNECTIONS", default_value_t = 8)]
    pub db_max_connections: u32,

    /// How long a call waits for a free connection before failing UNAVAILABLE.
    #[arg(long, env = "MESH_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 2000)]
    pub db_acquire_timeout_ms: u64,

    /// Prefix of this service's PostgreSQL schema, which is `<prefix><service>`
    /// (e.g. `items`, or `staging_items` with prefix `staging_`) and is created
    /// if missing. Each service owns its schema, so services, deployments and
    /// test runs can share one database without touching each other's tables.
    #[arg(long, env = "MESH_DB_SCHEMA_PREFIX", default_value = "", value_parser = parse_schema_prefix)]
    pub db_schema_prefix: String,
}

impl std::fmt::Debug for SqlConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlConfig")
            .field(
                "database_url",
                &self.database_url.as_deref().map(mesh_common::redact::passwords),
            )
            .field("db_max_connections", &self.db_max_connections)
            .field("db_acquire_timeout_ms", &self.db_acquire_timeout_ms)
            .field("db_schema_prefix", &self.db_schema_prefix)
            .finish()
    }
}

/// The schema name goes into SQL text (`SET search_path`), so only plain
/// identifier characters are accepted.
fn parse_schema_prefix(s: &str) -> Result<String, String> {
    let ok = s.len() <= 48
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(s.to_string())
    } else {
        Err("at most 48 characters of a-z, 0-9 and _, not starting with a digit".into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("unsupported database URL {0:?}: expected postgres://... or sqlite://...")]
    UnsupportedUrl(String),
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("cannot take the migration lock: {0}")]
    MigrationLock(#[source] std::io::Error),
    #[error("cannot apply migrations: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error(
        "the database has migration {version} applied, which this binary does not know although it knows \
         migrations up to {newest}: a renamed or deleted migration file, or another program's schema"
    )]
    UnknownMigration { version: i64, newest: i64 },
}

/// Opens the pool and applies the backend's migrations (tolerating newer
/// ones a later release applied: see the comment on `set_ignore_missing`).
///
/// `service` names the SQLite file (`<service>.db` in `data_dir`) when no URL
/// is given, and the PostgreSQL schema (after the prefix) when one is.
pub async fn connect(
    config: &SqlConfig,
    data_dir: &Path,
    service: &str,
    sqlite_migrations: Migrator,
    postgres_migrations: Migrator,
) -> Result<(AnyPool, Backend), ConnectError> {
    sqlx::any::install_default_drivers();
    let url = match &config.database_url {
        Some(url) => url.clone(),
        None => {
            std::fs::create_dir_all(data_dir).map_err(|source| ConnectError::DataDir {
                path: data_dir.display().to_string(),
                source,
            })?;
            format!("sqlite://{}?mode=rwc", data_dir.join(format!("{service}.db")).display())
        }
    };
    let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Backend::Postgres
    } else if url.starts_with("sqlite:") {
        Backend::Sqlite
    } else {
        return Err(ConnectError::UnsupportedUrl(
            mesh_common::redact::passwords(&url).into_owned(),
        ));
    };
    let options: AnyConnectOptions = url.parse().map_err(ConnectError::Connect)?;
    let schema = match backend {
        Backend::Postgres => Some(schema_name(config, service)),
        Backend::Sqlite => None,
    };
    if let Some(schema) = &schema {
        create_schema(&options, schema).await?;
    }
    let pool_options = AnyPoolOptions::new()
        .max_connections(config.db_max_connections.max(1))
        .acquire_timeout(Duration::from_millis(config.db_acquire_timeout_ms));
    let search_path = schema.as_ref().map(|s| format!("SET search_path TO \"{s}\""));
    let pool = pool_options
        .after_connect(move |conn, _meta| {
            let search_path = search_path.clone();
            Box::pin(async move {
                if let Some(set) = search_path {
                    conn.execute(set.as_str()).await?;
                }
                if backend == Backend::Sqlite {
                    // WAL lets readers and one writer work at once, across
                    // processes; busy_timeout makes writers queue, not fail.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(ConnectError::Connect)?;
    let mut migrator = match backend {
        Backend::Sqlite => sqlite_migrations,
        Backend::Postgres => postgres_migrations,
    };
    // Rolling upgrades: the first replica of a new release applies its
    // migrations while replicas of the previous release keep serving, and a
    // rollback starts old replicas on the migrated schema. Migrations only
    // expand (new tables, indexes, nullable or defaulted columns) until no
    // older binary runs, so a migration this binary does not know is
    // expected, not an error. Known ones are still checked by checksum.
    migrator.set_ignore_missing(true);
    // PostgreSQL serialises replicas' migrations with an advisory lock (sqlx
    // takes it); SQLite has none, so replicas sharing a file take a file lock.
    let _guard = match backend {
        Backend::Sqlite => Some(lock_file(&data_dir.join(format!("{service}.db.migrate-lock"))).await?),
        Backend::Postgres => None,
    };
    refuse_unknown_older(&pool, &migrator).await?;
    migrator.run(&pool).await.map_err(ConnectError::Migrate)?;
    tracing::info!(?backend, schema = schema.as_deref().unwrap_or("-"), "database ready");
    Ok((pool, backend))
}

/// An applied migration this binary does not know is tolerated only when it
/// is newer than every one it knows (a later release's). One at or below
/// its newest means a migration file was renamed or deleted, or the schema
/// belongs to something else: refused, where sqlx with `ignore_missing`
/// would carry on.
async fn refuse_unknown_older(pool: &AnyPool, migrator: &Migrator) -> Result<(), ConnectError> {
    let known: std::collections::HashSet<i64> = migrator.iter().map(|m| m.version).collect();
    let Some(newest) = known.iter().max().copied() else {
        return Ok(());
    };
    // No table yet is a fresh schema; any other failure shows again, and is
    // reported, when the migrations run.
    let Ok(applied) = sqlx::query_scalar::<_, i64>("SELECT version FROM _sqlx_migrations")
        .fetch_all(pool)
        .await
    else {
        return Ok(());
    };
    match applied.into_iter().find(|v| *v <= newest && !known.contains(v)) {
        Some(version) => Err(ConnectError::UnknownMigration { version, newest }),
        None => Ok(()),
    }
}

/// The PostgreSQL schema `service` keeps its tables in.
pub fn schema_name(config: &SqlConfig, service: &str) -> String {
    format!("{}{service}", config.db_schema_prefix)
}

/// Takes an exclusive lock on `path` (created if missing), waiting for any
/// other process holding it; released when the file is dropped.
async fn lock_file(path: &Path) -> Result<std::fs::File, ConnectError> {
    let path = path.to_path_buf();
    let locked = tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.lock()?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()));
    locked.and_then(|r| r).map_err(ConnectError::MigrationLock)
}

/// `CREATE SCHEMA IF NOT EXISTS`, tolerating a replica that creates it at
/// the same moment (PostgreSQL reports that race as a unique violation).
async fn create_schema(options: &AnyConnectOptions, schema: &str) -> Result<(), ConnectError> {
    use sqlx::{ConnectOptions, Connection};
    let mut conn = options.connect().await.map_err(ConnectError::Connect)?;
    let created = conn
        .execute(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"").as_str())
        .await;
    let _ = conn.close().await;
    match created {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => Ok(()),
        Err(err) => Err(ConnectError::Connect(err)),
    }
}

/// True when the database answers a trivial query within `timeout`.
pub async fn ping(pool: &AnyPool, timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, pool.execute("SELECT 1")).await, Ok(Ok(_)))
}

/// Whether an error means "the database cannot be reached right now" (so the
/// caller should answer UNAVAILABLE), as opposed to a bug or bad data.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
    ) || matches!(err, sqlx::Error::Database(db) if is_busy(db.code().as_deref()))
}

/// SQLITE_BUSY / SQLITE_LOCKED, and PostgreSQL's admin shutdown / cannot-connect classes.
fn is_busy(code: Option<&str>) -> bool {
    matches!(code, Some("5" | "6" | "57P01" | "57P02" | "57P03")) || code.is_some_and(|c| c.starts_with("08"))
}

/// Milliseconds since the Unix epoch, the time unit every table stores.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A positive id written the one way the services write it: 1 to 18 ASCII
/// digits, no sign, no leading zero (`[1-9][0-9]{0,17}`, as the page-token
/// patterns in the OpenAPI document say). Anything else is `None`, so a
/// token that breaks the documented pattern is refused, never read leniently.
pub fn positive_id(digits: &str) -> Option<i64> {
    let well_formed =
        (1..=18).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0');
    well_formed.then(|| digits.parse().ok()).flatten()
}

/// The one text rule both backends share: PostgreSQL refuses the NUL
/// character in `TEXT` while SQLite stores it, so a value with one is refused
/// up front, on either backend, with a message naming the field's problem.
pub fn check_text(text: &str) -> Result<(), &'static str> {
    if text.contains('\0') {
        Err("must not contain the NUL character (U+0000)")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::positive_id;

    #[test]
    fn positive_ids_are_read_only_in_their_one_written_form() {
        assert_eq!(positive_id("1"), Some(1));
        assert_eq!(positive_id("42"), Some(42));
        assert_eq!(positive_id("999999999999999999"), Some(999_999_999_999_999_999));
        for bad in ["", "0", "007", "+5", "-3", " 5", "5 ", "1x", "1000000000000000000", "١"] {
            assert_eq!(positive_id(bad), None, "{bad:?}");
        }
    }
}
