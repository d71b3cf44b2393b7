//! The embedded engine: a SQLite file (by default `fleet.db` beside the releases). WAL, so
//! readers never wait for the writer; `synchronous=NORMAL` (a commit survives a crash of the
//! server; a power cut may lose the last commits, never corrupt the file); a busy timeout for
//! a second process on the same file; foreign keys on. One write connection (SQLite has one
//! writer) and a small pool of read-only connections.
//!
//! The writer never checkpoints the WAL (a checkpoint copies pages into the database file and
//! syncs it: on the writer it held every check-in of the fleet waiting, and cost 40 % of the
//! ingest rate at 50,000 hosts). A [`Checkpointer`] with its own connection does it in the
//! background every [`CHECKPOINT_EVERY`]: a passive checkpoint, which blocks nobody; and when
//! the WAL has grown past [`RESTART_FRAMES`] (a writer that never pauses leaves a passive
//! checkpoint always a little behind, and the WAL can only start again from its beginning once
//! it is all copied), a restarting one, which holds the writer only for the few pages the
//! passive one left. The WAL file is cut back to [`WAL_SIZE_LIMIT`] when it starts again.

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::AnyPool;
use sqlx::{ConnectOptions, Executor};

use super::sql::{Engine, SqlStore};
use super::store::{FleetError, FleetResult};

/// How long a statement waits for another process's write lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Read connections.
pub const READERS: u32 = 4;
/// How often the background checkpoint runs.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// The size the WAL file is cut back to when it restarts (bytes).
pub const WAL_SIZE_LIMIT: u64 = 64 << 20;
/// WAL frames (pages) past which the background checkpoint restarts the WAL: 32 MiB of 4 KiB
/// pages.
pub const RESTART_FRAMES: i64 = 8192;

/// Opens (creating it when missing) the SQLite database at `path`; does not migrate.
pub async fn open(path: &Path) -> FleetResult<SqlStore> {
    open_with(path, CHECKPOINT_EVERY).await
}

/// [`open`] with the background checkpoint every `checkpoint_every` (tests make it long and
/// call [`SqlStore::checkpoint`] themselves).
pub async fn open_with(path: &Path, checkpoint_every: Duration) -> FleetResult<SqlStore> {
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
                conn.execute("PRAGMA wal_autocheckpoint = 0").await?;
                let limit = format!("PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}");
                conn.execute(limit.as_str()).await?;
                pragmas(conn, false).await
            })
        })
        .connect_with(options.clone())
        .await
        .map_err(|e| open_error(path, e))?;
    let read = AnyPoolOptions::new()
        .max_connections(READERS)
        .after_connect(|conn, _| Box::pin(pragmas(conn, true)))
        .connect_with(options.clone())
        .await
        .map_err(|e| open_error(path, e))?;
    let checkpoints = AnyPoolOptions::new()
        .max_connections(1)
        .after_connect(|conn, _| Box::pin(pragmas(conn, false)))
        .connect_with(options)
        .await
        .map_err(|e| open_error(path, e))?;
    let store = SqlStore::new(Engine::Sqlite, read, write, &super::MIGRATOR);
    Ok(store.with_checkpointer(Checkpointer::start(checkpoints, checkpoint_every)))
}

/// The background checkpoint: its connection and its task (stopped when dropped).
pub(crate) struct Checkpointer {
    pool: AnyPool,
    task: tokio::task::AbortHandle,
}

/// What a checkpoint found: the WAL's frames, and how many of them are in the database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalState {
    pub frames: i64,
    pub checkpointed: i64,
}

impl Checkpointer {
    fn start(pool: AnyPool, every: Duration) -> Self {
        let background = pool.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = checkpoint(&background).await {
                    if background.is_closed() {
                        return;
                    }
                    tracing::warn!(error = %e, "fleet: the background checkpoint failed; it runs again");
                }
            }
        });
        Checkpointer {
            pool,
            task: task.abort_handle(),
        }
    }

    /// Copies what it can of the WAL into the database file now, waiting for nobody.
    pub(crate) async fn run(&self) -> FleetResult<WalState> {
        checkpoint(&self.pool).await
    }

    pub(crate) async fn close(&self) {
        self.task.abort();
        self.pool.close().await;
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A passive checkpoint, then a restarting one when the WAL is past [`RESTART_FRAMES`]; what
/// the passive one found.
async fn checkpoint(pool: &AnyPool) -> FleetResult<WalState> {
    let state = pragma_checkpoint(pool, "PASSIVE").await?;
    if state.frames > RESTART_FRAMES {
        pragma_checkpoint(pool, "RESTART").await?;
    }
    Ok(state)
}

async fn pragma_checkpoint(pool: &AnyPool, mode: &str) -> FleetResult<WalState> {
    use sqlx::Row;
    let row = sqlx::query(&format!("PRAGMA wal_checkpoint({mode})"))
        .fetch_one(pool)
        .await
        .map_err(|e| FleetError::Database(format!("checkpointing the fleet database: {e}")))?;
    let column = |i: usize| {
        row.try_get::<i64, _>(i)
            .map_err(|e| FleetError::Database(format!("reading a checkpoint's result: {e}")))
    };
    Ok(WalState {
        frames: column(1)?,
        checkpointed: column(2)?,
    })
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
