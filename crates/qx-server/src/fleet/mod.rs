//! The fleet view (docs/spec.md §9): hosts enroll, check in and report events; operators list
//! and inspect them. [`store`] is the storage trait its engines implement: [`sqlite`] (the
//! embedded default) and [`postgres`], both through [`sql`]; [`connect`] picks one. The HTTP
//! side: [`api`] (handlers), [`auth`] (tokens and scopes), [`admin`] (token creation shared
//! with the command line), [`validate`] and [`query`] (what requests may hold), [`limit`]
//! (the overload limit) and [`clock`] (the injectable time); [`ui`] the dashboard, its
//! overview counts and its change stream.

pub mod admin;
pub mod api;
pub mod auth;
pub mod clock;
pub mod limit;
pub mod postgres;
pub mod query;
pub mod rollout;
pub mod sql;
pub mod sqlite;
pub mod store;
pub mod ui;
pub mod validate;

use std::path::Path;
use std::sync::{Arc, Once};

use store::{FleetResult, FleetStore};

/// Registers both engines with sqlx's engine-neutral connection (once per process).
fn install_drivers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        sqlx::any::install_drivers(&[sqlx::sqlite::any::DRIVER, sqlx::postgres::any::DRIVER])
            .expect("the fleet store's drivers are installed once, here");
    });
}

/// Whether `target` names a PostgreSQL database rather than a SQLite file.
pub fn is_postgres_url(target: &str) -> bool {
    target.starts_with("postgres://") || target.starts_with("postgresql://")
}

/// Opens the fleet store named by `target` (a `postgres://…` URL, or the path of a SQLite
/// file, created when missing) and brings its schema up to date.
pub async fn connect(target: &str) -> FleetResult<Arc<dyn FleetStore>> {
    let store = if is_postgres_url(target) {
        postgres::open(target).await?
    } else {
        let path = target.strip_prefix("sqlite://").unwrap_or(target);
        sqlite::open(Path::new(path)).await?
    };
    store.migrate().await?;
    Ok(Arc::new(store))
}

/// The fleet store's migrations, the same files for both engines (`crates/qx-server/migrations/`).
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
