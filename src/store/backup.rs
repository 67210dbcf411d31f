//! `aftercart backup FILE`: an online copy of the SQLite database, taken with
//! `VACUUM INTO` while workers and the server keep running. The copy is one consistent
//! snapshot (a single read transaction), compacted, and owner-only like the database it
//! comes from. PostgreSQL is backed up with `pg_dump`, not here.

use super::{Db, Store, StoreError};
use std::path::{Path, PathBuf};

/// Why a backup was not written.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{}: already exists; a backup never overwrites a file: choose a new name", .0.display())]
    Exists(PathBuf),
    #[error(
        "aftercart backup copies a SQLite database; this one is PostgreSQL: back it up with \
         pg_dump (e.g. pg_dump --format=custom --file=aftercart.dump DATABASE_URL), \
         restore with pg_restore"
    )]
    Postgres,
    #[error(
        "the database has no aftercart schema (is database.url the right file? \
         `aftercart migrate` creates the schema); nothing backed up"
    )]
    NoSchema,
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A backup that was written.
#[derive(Debug, Clone)]
pub struct Backup {
    pub path: PathBuf,
    pub bytes: u64,
}

impl Store {
    /// Writes a copy of the SQLite database to `target`, which must not exist. The file is
    /// created first, empty and 0600 (so nothing else can take the name meanwhile and the
    /// copy of every customer's address is owner-only), then filled by `VACUUM INTO` and
    /// synced to disk. On failure the file is removed again.
    pub async fn backup_to(&self, target: &Path) -> Result<Backup, BackupError> {
        let Db::Sqlite(pool) = &self.db else {
            return Err(BackupError::Postgres);
        };
        let file_error = |source| BackupError::File {
            path: target.to_owned(),
            source,
        };
        let name = target.to_str().ok_or_else(|| {
            file_error(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the file name is not valid UTF-8",
            ))
        })?;
        let migrations: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(pool)
        .await
        .map_err(StoreError::from)?;
        if migrations == 0 {
            return Err(BackupError::NoSchema);
        }
        match crate::files::create_private_file(target) {
            Ok(f) => drop(f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(BackupError::Exists(target.to_owned()));
            }
            Err(e) => return Err(file_error(e)),
        }
        // SQLite writes into the empty file (it accepts one that exists only when it is
        // empty). The name is a bound parameter, never spliced into the SQL.
        let written = async {
            sqlx::query("VACUUM INTO ?")
                .bind(name)
                .execute(pool)
                .await
                .map_err(StoreError::from)?;
            std::fs::File::open(target)
                .and_then(|f| f.sync_all().and_then(|()| f.metadata()))
                .map_err(file_error)
        }
        .await;
        match written {
            Ok(meta) => Ok(Backup {
                path: target.to_owned(),
                bytes: meta.len(),
            }),
            Err(e) => {
                let _ = std::fs::remove_file(target);
                Err(e)
            }
        }
    }
}
