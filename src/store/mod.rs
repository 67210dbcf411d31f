//! The database: SQLite (embedded default) and PostgreSQL (scale-out) behind one
//! interface. Each query is written once with `$N` placeholders, which both engines
//! accept, and run on whichever pool is open (`with_db!`). The store knows no jobs, web
//! or CLI; it is handed "now" by its callers.

mod catalog;
mod ledger;
mod ops;

pub use catalog::{CustomerRow, History, ImportOutcome, OrderContext};
pub use ledger::{Claimed, Finish, FollowupRow, FollowupState, ScheduleRule};
pub use ops::{
    LATENCY_BUCKETS, MetricsReport, RelayPause, StatusReport, SuppressionRow, WorkerRow,
};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("database URL {0:?} is not sqlite://FILE or postgres://…")]
    BadUrl(String),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs one body against whichever engine is open; `$pool` is bound to the typed pool.
macro_rules! with_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::store::Db::Sqlite($pool) => $body,
            $crate::store::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_db;

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) db: Db,
    /// SQLite allows one writer at a time; a second one waits in SQLite's busy handler,
    /// which sleeps in millisecond steps. Queuing this process's writes here instead
    /// keeps the claim → send → record pipeline moving. (PostgreSQL needs no gate.)
    write_gate: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Store {
    /// Opens a pool. SQLite: the file (and its folder) is created when missing; WAL,
    /// synchronous=NORMAL, foreign keys on, a busy timeout so writers queue instead of
    /// failing.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        let err = |source| StoreError::Connect {
            url: redact(url),
            source,
        };
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.trim_start_matches("//");
            if let Some(dir) = std::path::Path::new(path.split('?').next().unwrap_or(path)).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| err(sqlx::Error::Io(e)))?;
            }
            let opts = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
                .map_err(err)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(30))
                .pragma("cache_size", "-65536")
                .pragma("temp_store", "memory")
                .pragma("mmap_size", "268435456")
                .pragma("wal_autocheckpoint", "10000");
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections.max(2))
                .acquire_timeout(Duration::from_secs(60))
                .connect_with(opts)
                .await
                .map_err(err)?;
            Ok(Store {
                db: Db::Sqlite(pool),
                write_gate: Default::default(),
            })
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url).map_err(err)?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections.max(2))
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await
                .map_err(err)?;
            Ok(Store {
                db: Db::Postgres(pool),
                write_gate: Default::default(),
            })
        } else {
            Err(StoreError::BadUrl(url.to_owned()))
        }
    }

    /// Creates or upgrades the schema; running it again changes nothing.
    pub async fn migrate(&self) -> Result<()> {
        match &self.db {
            Db::Sqlite(p) => SQLITE_MIGRATOR.run(p).await?,
            Db::Postgres(p) => PG_MIGRATOR.run(p).await?,
        }
        Ok(())
    }

    /// Held for the duration of a write on SQLite; free on PostgreSQL.
    pub(crate) async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.db {
            Db::Sqlite(_) => Some(self.write_gate.lock().await),
            Db::Postgres(_) => None,
        }
    }

    pub fn engine(&self) -> &'static str {
        match &self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// True when the database answers (for `/healthz`).
    pub async fn ping(&self) -> bool {
        with_db!(&self.db, p => sqlx::query("SELECT 1").execute(p).await.is_ok())
    }

    pub async fn close(&self) {
        with_db!(&self.db, p => p.close().await)
    }

    /// A value kept in the database (e.g. a generated signing key), created once.
    pub async fn meta_get_or_init(
        &self,
        key: &str,
        init: impl FnOnce() -> String,
    ) -> Result<String> {
        let value = init();
        with_db!(&self.db, p => {
            sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                .bind(key)
                .bind(&value)
                .execute(p)
                .await?;
            let v: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = $1").bind(key).fetch_one(p).await?;
            Ok(v)
        })
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Chunks for multi-row writes: big enough to amortise a transaction, small enough to
/// keep a writer's lock short.
pub(crate) const CHUNK: usize = 1000;
