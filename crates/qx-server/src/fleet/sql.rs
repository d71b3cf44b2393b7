//! The fleet store in SQL, one implementation for both engines: the SQL is written once in
//! the dialect SQLite and PostgreSQL share (`$n` parameters, `ON CONFLICT`, `RETURNING`,
//! partial indexes), and runs over sqlx's engine-neutral connection. [`super::sqlite`] and
//! [`super::postgres`] open the pools and bring their migrations.
//!
//! Writes go through `write` (SQLite: one connection, the one writer the engine allows;
//! PostgreSQL: a pool); check-ins and event batches are grouped into shared transactions by
//! [`batch`] on both, the other writes are one transaction each. Reads go through `read`.

mod batch;
mod bind;
mod checkins;
mod events;
mod hosts;
mod rollouts;
mod tokens;

use futures_util::future::BoxFuture;
use qx_core::fleet::{CheckIn, Event, EventsAccepted, HostDetail, HostList, Labels, LabelsPatch};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::AnyPool;

use super::store::{
    ChannelHost, ChannelView, EnrollRefused, EnrolledHost, FleetCounts, FleetError, FleetResult,
    FleetStore, HostAuth, HostQuery, HostStage, LivenessRule, Millis, NewEnrollmentToken, NewHost,
    NewOperatorToken, OperatorTokenRow, PinRow, RolloutChange, RolloutRow, SharedLock, StageCount,
    TokenHash,
};

/// Which engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// The fleet store over a SQL database.
pub struct SqlStore {
    engine: Engine,
    read: AnyPool,
    write: AnyPool,
    migrator: &'static Migrator,
    /// The writer tasks that group check-ins and event batches.
    batch: batch::Batcher,
    /// SQLite: the background checkpoint of the WAL (the writer never checkpoints).
    checkpointer: Option<super::sqlite::Checkpointer>,
}

/// One migration at a time in this process, whatever the store (PostgreSQL also takes an
/// advisory lock across servers; a SQLite file is one server's).
static MIGRATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl SqlStore {
    pub(crate) fn new(
        engine: Engine,
        read: AnyPool,
        write: AnyPool,
        migrator: &'static Migrator,
    ) -> Self {
        let writers = match engine {
            Engine::Sqlite => 1,
            Engine::Postgres => super::postgres::WRITERS,
        };
        let batch = batch::Batcher::start(write.clone(), writers);
        SqlStore {
            engine,
            read,
            write,
            migrator,
            batch,
            checkpointer: None,
        }
    }

    pub(crate) fn with_checkpointer(mut self, c: super::sqlite::Checkpointer) -> Self {
        self.checkpointer = Some(c);
        self
    }

    /// SQLite: checkpoints the WAL now (the background task does it on its own); `None` on
    /// PostgreSQL.
    pub async fn checkpoint(&self) -> FleetResult<Option<super::sqlite::WalState>> {
        match &self.checkpointer {
            Some(c) => c.run().await.map(Some),
            None => Ok(None),
        }
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Closes the pools (tests drop databases after this).
    pub async fn close(&self) {
        if let Some(c) = &self.checkpointer {
            c.close().await;
        }
        self.write.close().await;
        self.read.close().await;
    }

    async fn run_migrations(&self) -> FleetResult<()> {
        let _one = MIGRATING.lock().await;
        match self.migrator.run(&self.write).await {
            Ok(()) => Ok(()),
            Err(MigrateError::VersionMissing(v)) => Err(FleetError::SchemaTooNew(format!(
                "migration {v} is applied but unknown to this server"
            ))),
            Err(e) => Err(FleetError::Database(format!(
                "migrating the fleet database ({:?}): {e}",
                self.engine
            ))),
        }
    }
}

/// Maps a database error to [`FleetError::Database`], saying what was being done.
pub(crate) fn db(doing: &'static str) -> impl Fn(sqlx::Error) -> FleetError {
    move |e| FleetError::Database(format!("{doing}: {e}"))
}

/// Begins a write transaction. On SQLite `BEGIN IMMEDIATE`: the write lock is taken at once,
/// waiting for it under the busy timeout; a transaction that read first could not wait for it
/// when it writes (SQLite answers "locked" at once), and the background checkpoint holds it
/// now and then.
pub(crate) async fn begin_write(
    pool: &AnyPool,
    doing: &'static str,
) -> FleetResult<sqlx::Transaction<'static, sqlx::Any>> {
    let begun = if pool.connect_options().database_url.scheme() == "sqlite" {
        pool.begin_with("BEGIN IMMEDIATE").await
    } else {
        pool.begin().await
    };
    begun.map_err(db(doing))
}

/// A write for a host the store does not know.
pub(crate) fn unknown_host(host: &str) -> FleetError {
    FleetError::Invalid(format!("host {host} is not enrolled"))
}

/// Whether the error is a unique-constraint violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl FleetStore for SqlStore {
    fn migrate(&self) -> BoxFuture<'_, FleetResult<()>> {
        Box::pin(self.run_migrations())
    }

    fn shared_lock(&self, key: i64) -> BoxFuture<'_, FleetResult<Option<SharedLock>>> {
        Box::pin(async move {
            if self.engine == Engine::Sqlite {
                return Ok(None);
            }
            // A transaction-scoped advisory lock: released by the rollback when the guard
            // drops its transaction, or by the database when the connection dies with us.
            let mut tx = self
                .write
                .begin()
                .await
                .map_err(db("taking a shared lock"))?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(db("taking a shared lock"))?;
            Ok(Some(SharedLock(Box::new(tx))))
        })
    }

    fn create_operator_token(&self, t: NewOperatorToken) -> BoxFuture<'_, FleetResult<()>> {
        Box::pin(tokens::create_operator_token(&self.write, t))
    }

    fn operator_token(
        &self,
        hash: TokenHash,
    ) -> BoxFuture<'_, FleetResult<Option<OperatorTokenRow>>> {
        Box::pin(tokens::operator_token(&self.read, hash))
    }

    fn list_operator_tokens(&self) -> BoxFuture<'_, FleetResult<Vec<OperatorTokenRow>>> {
        Box::pin(tokens::list_operator_tokens(&self.read))
    }

    fn revoke_operator_token(&self, name: String, now: Millis) -> BoxFuture<'_, FleetResult<bool>> {
        Box::pin(tokens::revoke_operator_token(&self.write, name, now))
    }

    fn create_enrollment_token(&self, t: NewEnrollmentToken) -> BoxFuture<'_, FleetResult<()>> {
        Box::pin(tokens::create_enrollment_token(&self.write, t))
    }

    fn revoke_enrollment_token(&self, id: String, now: Millis) -> BoxFuture<'_, FleetResult<bool>> {
        Box::pin(tokens::revoke_enrollment_token(&self.write, id, now))
    }

    fn enroll(
        &self,
        token: TokenHash,
        host: NewHost,
    ) -> BoxFuture<'_, FleetResult<Result<EnrolledHost, EnrollRefused>>> {
        Box::pin(tokens::enroll(&self.write, token, host))
    }

    fn host_by_token(&self, hash: TokenHash) -> BoxFuture<'_, FleetResult<Option<HostAuth>>> {
        Box::pin(tokens::host_by_token(&self.read, hash))
    }

    fn check_in(
        &self,
        host: String,
        report: CheckIn,
        now: Millis,
        next_due: Millis,
    ) -> BoxFuture<'_, FleetResult<()>> {
        Box::pin(self.batch.check_in(host, report, now, next_due))
    }

    fn append_events(
        &self,
        host: String,
        events: Vec<Event>,
        now: Millis,
    ) -> BoxFuture<'_, FleetResult<EventsAccepted>> {
        Box::pin(self.batch.append_events(host, events, now))
    }

    fn list_hosts(
        &self,
        query: HostQuery,
        rule: LivenessRule,
        now: Millis,
    ) -> BoxFuture<'_, FleetResult<HostList>> {
        Box::pin(hosts::list_hosts(&self.read, query, rule, now))
    }

    fn host(
        &self,
        id: String,
        events: u32,
        rule: LivenessRule,
        now: Millis,
    ) -> BoxFuture<'_, FleetResult<Option<HostDetail>>> {
        Box::pin(hosts::host(&self.read, id, events, rule, now))
    }

    fn patch_labels(&self, id: String, patch: LabelsPatch) -> BoxFuture<'_, FleetResult<bool>> {
        Box::pin(hosts::patch_labels(&self.write, id, patch))
    }

    fn decommission(&self, id: String, now: Millis) -> BoxFuture<'_, FleetResult<bool>> {
        Box::pin(hosts::decommission(&self.write, id, now))
    }

    fn counts(
        &self,
        rule: LivenessRule,
        now: Millis,
        since: Millis,
    ) -> BoxFuture<'_, FleetResult<FleetCounts>> {
        Box::pin(hosts::counts(&self.read, rule, now, since))
    }

    fn create_rollout(&self, row: RolloutRow) -> BoxFuture<'_, FleetResult<bool>> {
        Box::pin(rollouts::create_rollout(&self.write, row))
    }

    fn rollout(&self, id: String) -> BoxFuture<'_, FleetResult<Option<RolloutRow>>> {
        Box::pin(rollouts::rollout(&self.read, id))
    }

    fn rollouts(
        &self,
        product: String,
        channel: Option<String>,
    ) -> BoxFuture<'_, FleetResult<Vec<RolloutRow>>> {
        Box::pin(rollouts::rollouts(&self.read, product, channel))
    }

    fn unfinished_rollouts(&self) -> BoxFuture<'_, FleetResult<Vec<RolloutRow>>> {
        Box::pin(rollouts::unfinished_rollouts(&self.read))
    }

    fn change_rollout(
        &self,
        id: String,
        change: RolloutChange,
    ) -> BoxFuture<'_, FleetResult<bool>> {
        Box::pin(rollouts::change_rollout(&self.write, id, change))
    }

    fn host_stage(
        &self,
        rollout: String,
        host: String,
    ) -> BoxFuture<'_, FleetResult<Option<HostStage>>> {
        Box::pin(rollouts::host_stage(&self.read, rollout, host))
    }

    fn record_offer(
        &self,
        rollout: String,
        host: String,
        wave: u32,
        now: Millis,
    ) -> BoxFuture<'_, FleetResult<bool>> {
        Box::pin(rollouts::record_offer(
            &self.write,
            rollout,
            host,
            wave,
            now,
        ))
    }

    fn sweep_timeouts(&self, now: Millis) -> BoxFuture<'_, FleetResult<u64>> {
        Box::pin(rollouts::sweep_timeouts(&self.read, &self.write, now))
    }

    fn stage_counts(&self, rollout: String) -> BoxFuture<'_, FleetResult<Vec<StageCount>>> {
        Box::pin(rollouts::stage_counts(&self.read, rollout))
    }

    fn rollout_hosts(&self, rollout: String) -> BoxFuture<'_, FleetResult<Vec<String>>> {
        Box::pin(rollouts::rollout_hosts(&self.read, rollout))
    }

    fn top_failures(
        &self,
        rollout: String,
        limit: u32,
    ) -> BoxFuture<'_, FleetResult<Vec<(String, u64)>>> {
        Box::pin(rollouts::top_failures(&self.read, rollout, limit))
    }

    fn host_labels(&self, host: String) -> BoxFuture<'_, FleetResult<Labels>> {
        Box::pin(rollouts::host_labels(&self.read, host))
    }

    fn channel_hosts(
        &self,
        product: String,
        channel: String,
    ) -> BoxFuture<'_, FleetResult<Vec<ChannelHost>>> {
        Box::pin(rollouts::channel_hosts(&self.read, product, channel))
    }

    fn channel_view(
        &self,
        product: String,
        channel: String,
    ) -> BoxFuture<'_, FleetResult<ChannelView>> {
        Box::pin(rollouts::channel_view(&self.read, product, channel))
    }

    fn host_cancel(
        &self,
        product: String,
        channel: String,
        host: String,
    ) -> BoxFuture<'_, FleetResult<Option<String>>> {
        Box::pin(rollouts::host_cancel(&self.read, product, channel, host))
    }

    fn create_pin(&self, pin: PinRow) -> BoxFuture<'_, FleetResult<()>> {
        Box::pin(rollouts::create_pin(&self.write, pin))
    }

    fn pins(
        &self,
        product: String,
        channel: Option<String>,
    ) -> BoxFuture<'_, FleetResult<Vec<PinRow>>> {
        Box::pin(rollouts::pins(&self.read, product, channel))
    }

    fn delete_pin(&self, product: String, id: String) -> BoxFuture<'_, FleetResult<bool>> {
        Box::pin(rollouts::delete_pin(&self.write, product, id))
    }
}
