//! The database: connecting to SQLite or PostgreSQL, the embedded migrations, typed store
//! errors, and the rows that belong to no domain (the installation id, cloud events). Both
//! backends go through sqlx's `Any` driver with portable SQL, so one query serves both;
//! timestamps are Unix milliseconds. A domain keeps the SQL for its own rows next to its types,
//! as an `impl Store` block in its folder (the fleet's nodes are in `fleet/store.rs`).

pub mod cloud_events;
pub mod installation;
pub mod notify;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

/// Migrations compiled into the binary, in order. `{{AUTO_ID}}` is the one backend-specific piece.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "nodes", include_str!("../../migrations/0001_nodes.sql")),
    (
        2,
        "launch_jobs",
        include_str!("../../migrations/0002_launch_jobs.sql"),
    ),
    (
        3,
        "cloud_events",
        include_str!("../../migrations/0003_cloud_events.sql"),
    ),
    (
        4,
        "node_revision",
        include_str!("../../migrations/0004_node_revision.sql"),
    ),
    (
        5,
        "node_pins",
        include_str!("../../migrations/0005_node_pins.sql"),
    ),
    (
        6,
        "installation",
        include_str!("../../migrations/0006_installation.sql"),
    ),
    (
        7,
        "node_model_key",
        include_str!("../../migrations/0007_node_model_key.sql"),
    ),
    (
        8,
        "deployments",
        include_str!("../../migrations/0008_deployments.sql"),
    ),
    (9, "hosts", include_str!("../../migrations/0009_hosts.sql")),
    (
        10,
        "deployment_scale",
        include_str!("../../migrations/0010_deployment_scale.sql"),
    ),
    (
        11,
        "api_keys",
        include_str!("../../migrations/0011_api_keys.sql"),
    ),
];

/// Which database a URL points at; the few backend-specific statements branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Sqlx(sqlx::Error),
    /// The database cannot be reached right now (a restart, a failover, a full pool): not a
    /// fault of the request or the data, so worth trying again shortly.
    #[error("database error: {0}")]
    Unavailable(sqlx::Error),
    /// A write would break a unique index (a live node's name, a job's idempotency key): the
    /// row it names exists already.
    #[error("already stored: {0}")]
    Duplicate(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Another process changed the row since it was read; re-read it and try again.
    #[error("{0} was changed by another process meanwhile")]
    Conflict(String),
    /// The job's lease is no longer this claim's (another process took the job over): nothing
    /// was written, and this claim's work on the job must stop.
    #[error("job {0} is held by another claim now; nothing was written")]
    LeaseLost(String),
}

impl From<sqlx::Error> for StoreError {
    /// Unique-index violations become [`StoreError::Duplicate`] and an unreachable database
    /// [`StoreError::Unavailable`], so no caller has to look into the database's error to tell
    /// them apart.
    fn from(e: sqlx::Error) -> Self {
        match e.as_database_error() {
            Some(d) if d.is_unique_violation() => StoreError::Duplicate(d.message().to_string()),
            _ if database_unreachable(&e) => StoreError::Unavailable(e),
            _ => StoreError::Sqlx(e),
        }
    }
}

/// Errors that mean the database cannot be reached right now (a restart, a failover, a full
/// pool), not that the request or the data is wrong: PostgreSQL's "connection exception" (08)
/// and "operator intervention" (57, e.g. the server shutting down) classes included.
fn database_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57")),
        _ => false,
    }
}

/// The shared handle to the database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Names this process in the change announcements it makes (see `fleet/store.rs`), so it
    /// can tell its own changes from those of other processes on the same database.
    origin: std::sync::Arc<str>,
}

impl Store {
    /// Connects, applies pending migrations, and returns a ready store.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        let options = AnyConnectOptions::from_str(url)?;
        let pool_options = match backend {
            // SQLite has one writer at a time; a few connections let readers run beside it.
            Backend::Sqlite => AnyPoolOptions::new()
                .max_connections(4)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // WAL lets readers run during writes; NORMAL sync in WAL mode still never
                        // corrupts the database and only risks the last commit on power loss.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        Ok(())
                    })
                }),
            Backend::Postgres => AnyPoolOptions::new().max_connections(16),
        };
        let pool = pool_options
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        let store = Store {
            pool,
            backend,
            origin: uuid::Uuid::new_v4().simple().to_string().into(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The default database: a SQLite file in the data dir.
    pub fn sqlite_url_for(data_dir: &Path) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            data_dir.join("skylaunch.db").display()
        )
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        if self.backend == Backend::Postgres {
            // Several processes may start at once against one database; one migrates at a time.
            sqlx::query("SELECT pg_advisory_lock(727001)")
                .execute(&mut *conn)
                .await?;
        }
        let result = self.apply_pending(&mut conn).await;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_unlock(727001)")
                .execute(&mut *conn)
                .await?;
        }
        result
    }

    async fn apply_pending(&self, conn: &mut sqlx::AnyConnection) -> Result<(), StoreError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut *conn)
        .await?;
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations")
            .fetch_all(&mut *conn)
            .await?;
        for (version, name, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            let auto_id = match self.backend {
                Backend::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
                Backend::Postgres => "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
            };
            let sql = sql.replace("{{AUTO_ID}}", auto_id);
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            sqlx::raw_sql(&sql).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(*version)
            .bind(*name)
            .bind(crate::clock::now_ms())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(version, name, "applied database migration");
        }
        Ok(())
    }
}

/// Whether an id from a path or query can name anything: ids are UUIDs, and PostgreSQL refuses
/// text with NUL in it, so such an id is "not found" without asking the database.
pub fn plausible_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 200 && !id.contains('\0')
}

/// Hides the password of a database URL so it can appear in errors and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{redact_url, StoreError};

    #[test]
    fn an_unreachable_database_is_unavailable_and_a_bad_query_is_not() {
        let unavailable =
            |e: sqlx::Error| matches!(StoreError::from(e), StoreError::Unavailable(_));
        assert!(unavailable(sqlx::Error::PoolTimedOut));
        assert!(unavailable(sqlx::Error::PoolClosed));
        assert!(unavailable(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        ))));
        assert!(!unavailable(sqlx::Error::RowNotFound));
    }

    #[test]
    fn redact_url_hides_the_password_only() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/sky"),
            "postgres://app:***@db:5432/sky"
        );
        assert_eq!(redact_url("postgres://app@db/sky"), "postgres://app@db/sky");
        assert_eq!(redact_url("sqlite://./x.db"), "sqlite://./x.db");
    }
}
