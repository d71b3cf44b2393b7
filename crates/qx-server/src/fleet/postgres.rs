//! The shared engine: PostgreSQL (`DATABASE_URL=postgres://…`), for several servers on one
//! database. Migrations take the database's advisory lock, so servers starting together
//! migrate once.

use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};

use super::sql::{Engine, SqlStore};
use super::store::{FleetError, FleetResult};

/// Connections per server.
pub const CONNECTIONS: u32 = 16;
/// Writer tasks grouping check-ins and event batches, each on its own connection (a batch's
/// rows are locked in one order, and a batch that still meets another's locks is written
/// again one write at a time).
pub const WRITERS: usize = 4;
/// How long a request waits for a free connection.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the database at `url` (`postgres://…` or `postgresql://…`); does not migrate.
pub async fn open(url: &str) -> FleetResult<SqlStore> {
    super::install_drivers();
    let options: AnyConnectOptions = url.parse().map_err(|e| {
        FleetError::Database(format!(
            "DATABASE_URL is not a PostgreSQL URL ({e}); write postgres://user:password@host/database"
        ))
    })?;
    let pool = AnyPoolOptions::new()
        .max_connections(CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|e| {
            FleetError::Database(format!(
                "connecting to the fleet database (DATABASE_URL): {e}; check the URL and that \
                 the database server runs"
            ))
        })?;
    Ok(SqlStore::new(
        Engine::Postgres,
        pool.clone(),
        pool,
        &super::MIGRATOR,
    ))
}
