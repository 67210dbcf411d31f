//! The database: SQLite (embedded default) and PostgreSQL (scale-out) behind one
//! interface. Each query is written once with `$N` placeholders, which both engines
//! accept, and run on whichever pool is open (`with_db!`). The store knows no jobs, web
//! or CLI; it is handed "now" by its callers.

mod backup;
mod bounces;
mod catalog;
mod ledger;
mod maintenance;
mod measure;
mod ops;
mod privacy;
mod stock;

pub use crate::domain::{FollowupState, ScheduleRule, SkipReason};
pub use backup::{Backup, BackupError};
pub use bounces::{BounceKind, BounceOutcome};
pub use catalog::{CustomerRow, History, ImportOutcome, Kept, KeptWhy, OrderContext};
pub use ledger::{Claimed, Finish, FollowupRow};
pub use measure::{Hit, LinkTarget};
pub use ops::{
    LATENCY_BUCKETS, MetricsReport, RelayPause, StatusReport, SuppressionRow, WorkerRow,
};
pub use privacy::Forgotten;
pub use stock::{InventoryItem, InventoryLevel, LevelOutcome};

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
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
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
    /// SQLite: one connection with a short busy timeout for the health probe's write, so
    /// a locked file is reported in seconds instead of waiting out the pool's 30 s.
    health: Option<SqlitePool>,
}

/// How long `/healthz` waits for its write before calling the database unwritable.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

impl Store {
    /// Opens a pool. SQLite: the file (and its folder) is created when missing, owner-only
    /// (see [`private_sqlite_files`]); WAL, synchronous=NORMAL, foreign keys on, a busy
    /// timeout so writers queue instead of failing.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        let err = |source| StoreError::Connect {
            url: redact(url),
            source,
        };
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.trim_start_matches("//");
            private_sqlite_files(path).map_err(|e| err(sqlx::Error::Io(e)))?;
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
            let health = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(HEALTH_TIMEOUT)
                .connect_lazy_with(opts.clone().busy_timeout(HEALTH_TIMEOUT));
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections.max(2))
                .acquire_timeout(Duration::from_secs(60))
                .connect_with(opts)
                .await
                .map_err(err)?;
            Ok(Store {
                db: Db::Sqlite(pool),
                write_gate: Default::default(),
                health: Some(health),
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
                health: None,
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

    /// Ok when the database takes a write now: one tiny upsert in its own transaction,
    /// given up after [`HEALTH_TIMEOUT`] (a locked SQLite file, a PostgreSQL table lock,
    /// a read-only or full disk, an exhausted pool all fail it).
    pub async fn check_writable(&self, now: crate::domain::Timestamp) -> Result<()> {
        let sql = "INSERT INTO meta (key, value) VALUES ('healthz_at', $1)
                   ON CONFLICT (key) DO UPDATE SET value = excluded.value";
        let value = now.0.to_string();
        let probe = async {
            match (&self.db, &self.health) {
                (Db::Sqlite(_), Some(h)) => {
                    sqlx::query(sql).bind(&value).execute(h).await?;
                }
                (Db::Sqlite(p), None) => {
                    sqlx::query(sql).bind(&value).execute(p).await?;
                }
                (Db::Postgres(p), _) => {
                    let mut tx = p.begin().await?;
                    // Scoped to this transaction (is_local): the pooled connection keeps its settings.
                    let ms = format!("{}ms", HEALTH_TIMEOUT.as_millis());
                    sqlx::query("SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $1, true)")
                        .bind(&ms)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(sql).bind(&value).execute(&mut *tx).await?;
                    tx.commit().await?;
                }
            }
            Ok(())
        };
        // The margin covers the pool's wait for a connection on top of the lock wait.
        let limit = HEALTH_TIMEOUT + Duration::from_secs(1);
        tokio::time::timeout(limit, probe)
            .await
            .unwrap_or(Err(StoreError::Timeout(limit)))
    }

    pub async fn close(&self) {
        with_db!(&self.db, p => p.close().await);
        if let Some(h) = &self.health {
            h.close().await;
        }
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

/// Makes the database file and its `-wal`/`-shm`/`-journal` siblings owner-only: they
/// hold every customer's address and, unless one is configured, the unsubscribe signing
/// key. A missing file is created 0600 (in folders created 0700) before SQLite opens it,
/// because SQLite creates a new database with 0644 minus the umask, but gives the
/// siblings it creates the database file's own mode. An existing file readable by others
/// is tightened, with a warning.
fn private_sqlite_files(path: &str) -> std::io::Result<()> {
    let file = path.split('?').next().unwrap_or(path);
    if file.is_empty() || file == ":memory:" || path.contains("mode=memory") {
        return Ok(());
    }
    let file = std::path::Path::new(file);
    if let Some(dir) = file.parent() {
        crate::files::create_private_dirs(dir)?;
    }
    match crate::files::create_private_file(file) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = file.as_os_str().to_owned();
        name.push(suffix);
        let f = std::path::Path::new(&name);
        if !f.exists() {
            continue;
        }
        match crate::files::make_private(f) {
            Ok(Some((old, new))) => tracing::warn!(
                file = %f.display(),
                "database file was readable by other users (mode {old:o}); changed to {new:o}"
            ),
            Ok(None) => {}
            // Not ours to change (another owner): say so, and carry on.
            Err(e) => tracing::warn!(
                file = %f.display(),
                error = %e,
                "database file is readable by other users and its mode cannot be changed"
            ),
        }
    }
    Ok(())
}

/// Kept here for the store's own messages; it lives in `domain` so that `config` and
/// `mail` need not know the store.
pub use crate::domain::redact;

/// Chunks for multi-row writes: big enough to amortise a transaction, small enough to
/// keep a writer's lock short.
pub(crate) const CHUNK: usize = 1000;
