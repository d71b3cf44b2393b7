//! The embedded engine: a SQLite file (by default `fleet.db` beside the releases). WAL, so
//! readers never wait for the writer; `synchronous=NORMAL` (a commit survives a crash of the
//! server; a power cut may lose the last commits, never corrupt the file); a busy timeout for
//! a second process on the same file; foreign keys on. One write connection (SQLite has one
//! writer) and a small pool of read-only connections.

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Executor};

use super::sql::{Engine, SqlStore};
use super::store::{FleetError, FleetResult};

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a statement waits for another process's write lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Read connections.
pub const READERS: u32 = 4;

/// Opens (creating it when missing) the SQLite database at `path`; does not migrate.
pub async fn open(path: &Path) -> FleetResult<SqlStore> {
    super::install_drivers();
    let url = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .to_url_lossy();
    let options = AnyConnectOptions::from_url(&url)
        .map_err(|e| FleetError::Database(format!("fleet database {}: {e}", path.display())))?;
    let write = AnyPoolOptions::new()
        .max_connections(1)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("PRAGMA journal_mode = WAL").await?;
                pragmas(conn, false).await
            })
        })
        .connect_with(options.clone())
        .await
        .map_err(|e| open_error(path, e))?;
    let read = AnyPoolOptions::new()
        .max_connections(READERS)
        .after_connect(|conn, _| Box::pin(pragmas(conn, true)))
        .connect_with(options)
        .await
        .map_err(|e| open_error(path, e))?;
    Ok(SqlStore::new(Engine::Sqlite, read, write, &MIGRATOR))
}

async fn pragmas(conn: &mut sqlx::AnyConnection, read_only: bool) -> Result<(), sqlx::Error> {
    conn.execute("PRAGMA synchronous = NORMAL").await?;
    conn.execute("PRAGMA foreign_keys = ON").await?;
    let busy = format!("PRAGMA busy_timeout = {}", BUSY_TIMEOUT.as_millis());
    conn.execute(busy.as_str()).await?;
    if read_only {
        conn.execute("PRAGMA query_only = ON").await?;
    }
    Ok(())
}

fn open_error(path: &Path, e: sqlx::Error) -> FleetError {
    FleetError::Database(format!(
        "opening the fleet database {}: {e}; check that its directory exists and is writable",
        path.display()
    ))
}
