//! The writer: check-ins and event batches from concurrent requests are grouped into
//! one transaction by one task (SQLite has one writer; on both engines a commit costs the same
//! for one write as for a hundred). The batch's check-ins are written together (one read, one
//! `UPDATE`: [`record_check_ins`]), then each event batch; a write refused for its content (an
//! unknown host) is refused before it writes anything. A database error abandons the transaction and the
//! batch is written again one write at a time, each under a savepoint, so that only the write
//! that caused it fails. Every caller is answered after the commit.

use qx_core::fleet::{CheckIn, Event, EventsAccepted};
use std::sync::Arc;

use sqlx::{Acquire, AnyPool};
use tokio::sync::{mpsc, oneshot};

use super::checkins::{record_check_ins, CheckInWrite};
use super::events::record_events;
use super::{begin_write, db};
use crate::fleet::store::{FleetError, FleetResult, Millis};

/// The most writes one transaction takes.
pub const MAX_BATCH: usize = 128;
/// Writes waiting for the writer before callers wait to queue.
const QUEUE: usize = 1024;

enum Write {
    CheckIn {
        host: String,
        report: Box<CheckIn>,
        now: Millis,
        next_due: Millis,
        done: oneshot::Sender<FleetResult<()>>,
    },
    Events {
        host: String,
        events: Vec<Event>,
        now: Millis,
        done: oneshot::Sender<FleetResult<EventsAccepted>>,
    },
}

enum Outcome {
    CheckIn(FleetResult<()>),
    Events(FleetResult<EventsAccepted>),
}

impl Outcome {
    fn is_ok(&self) -> bool {
        match self {
            Outcome::CheckIn(r) => r.is_ok(),
            Outcome::Events(r) => r.is_ok(),
        }
    }
}

/// The handle of the writer task; the task ends when the handle is dropped.
pub(crate) struct Batcher {
    queue: mpsc::Sender<Write>,
}

fn stopped() -> FleetError {
    FleetError::Database("the fleet database's writer stopped; restart the server".into())
}

impl Batcher {
    /// Starts `writers` writer tasks on the current runtime, taking batches from one queue
    /// (SQLite: one, the engine's one writer; PostgreSQL: several, each on its own
    /// connection).
    pub(crate) fn start(pool: AnyPool, writers: usize) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..writers.max(1) {
            tokio::spawn(run(pool.clone(), rx.clone()));
        }
        Batcher { queue }
    }

    pub(crate) async fn check_in(
        &self,
        host: String,
        report: CheckIn,
        now: Millis,
        next_due: Millis,
    ) -> FleetResult<()> {
        let (done, answer) = oneshot::channel();
        let report = Box::new(report);
        let write = Write::CheckIn {
            host,
            report,
            now,
            next_due,
            done,
        };
        self.queue.send(write).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    pub(crate) async fn append_events(
        &self,
        host: String,
        events: Vec<Event>,
        now: Millis,
    ) -> FleetResult<EventsAccepted> {
        let (done, answer) = oneshot::channel();
        let write = Write::Events {
            host,
            events,
            now,
            done,
        };
        self.queue.send(write).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(pool: AnyPool, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Write>>>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        // One writer waits for the next batch at a time; the others write theirs meanwhile.
        if rx.lock().await.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        match apply(&pool, &batch).await {
            Ok(outcomes) => {
                for (write, outcome) in batch.drain(..).zip(outcomes) {
                    answer(write, outcome);
                }
            }
            Err(e) => fail_all(&mut batch, &e),
        }
    }
}

/// Answers every write of the batch with the database error that stopped it.
fn fail_all(batch: &mut Vec<Write>, e: &FleetError) {
    let message = e.to_string();
    for write in batch.drain(..) {
        let e = FleetError::Database(message.clone());
        let outcome = match &write {
            Write::CheckIn { .. } => Outcome::CheckIn(Err(e)),
            Write::Events { .. } => Outcome::Events(Err(e)),
        };
        answer(write, outcome);
    }
}

/// Sends the outcome to its caller (one that gave up waiting is not an error).
fn answer(write: Write, outcome: Outcome) {
    match (write, outcome) {
        (Write::CheckIn { done, .. }, Outcome::CheckIn(r)) => {
            let _ = done.send(r);
        }
        (Write::Events { done, .. }, Outcome::Events(r)) => {
            let _ = done.send(r);
        }
        (Write::CheckIn { done, .. }, Outcome::Events(_)) => {
            let _ = done.send(Err(FleetError::Database("writer mixed up answers".into())));
        }
        (Write::Events { done, .. }, Outcome::CheckIn(_)) => {
            let _ = done.send(Err(FleetError::Database("writer mixed up answers".into())));
        }
    }
}

/// Writes the batch in one transaction; the outcomes in order (see the module's comment).
async fn apply(pool: &AnyPool, batch: &[Write]) -> FleetResult<Vec<Outcome>> {
    match apply_grouped(pool, batch).await {
        Ok(outcomes) => Ok(outcomes),
        Err(e) => {
            tracing::warn!(error = %e, writes = batch.len(), "fleet: a grouped write failed; writing its parts one by one");
            apply_each(pool, batch).await
        }
    }
}

/// The check-ins together, then each event batch.
async fn apply_grouped(pool: &AnyPool, batch: &[Write]) -> FleetResult<Vec<Outcome>> {
    let mut tx = begin_write(pool, "starting a batch of writes").await?;
    let check_ins: Vec<CheckInWrite<'_>> = batch.iter().filter_map(check_in_write).collect();
    let mut checked = record_check_ins(&mut tx, &check_ins).await?.into_iter();
    let mut outcomes = Vec::with_capacity(batch.len());
    for write in batch {
        let outcome = match write {
            Write::CheckIn { .. } => Outcome::CheckIn(checked.next().unwrap_or(Ok(()))),
            // Only a database error comes after a write (an unknown host or a bad sequence
            // number is found before any), and it abandons the whole transaction.
            Write::Events {
                host, events, now, ..
            } => match record_events(&mut tx, host, events, *now).await {
                Err(e @ FleetError::Database(_)) => return Err(e),
                r => Outcome::Events(r),
            },
        };
        outcomes.push(outcome);
    }
    tx.commit()
        .await
        .map_err(db("committing a batch of writes"))?;
    Ok(outcomes)
}

/// Every write under its own savepoint.
async fn apply_each(pool: &AnyPool, batch: &[Write]) -> FleetResult<Vec<Outcome>> {
    let mut tx = begin_write(pool, "starting a batch of writes").await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for write in batch {
        outcomes.push(write_one(&mut tx, write).await?);
    }
    tx.commit()
        .await
        .map_err(db("committing a batch of writes"))?;
    Ok(outcomes)
}

fn check_in_write(write: &Write) -> Option<CheckInWrite<'_>> {
    match write {
        Write::CheckIn {
            host,
            report,
            now,
            next_due,
            ..
        } => Some(CheckInWrite {
            host,
            report,
            now: *now,
            next_due: *next_due,
        }),
        Write::Events { .. } => None,
    }
}

/// One write under a savepoint, undone alone when it fails.
async fn write_one(tx: &mut sqlx::AnyConnection, write: &Write) -> FleetResult<Outcome> {
    let mut one = tx
        .begin()
        .await
        .map_err(db("starting a write of a batch"))?;
    let outcome = match write {
        Write::CheckIn { .. } => {
            let w: Vec<CheckInWrite<'_>> = check_in_write(write).into_iter().collect();
            let r = record_check_ins(&mut one, &w).await;
            Outcome::CheckIn(r.and_then(|o| o.into_iter().next().unwrap_or(Ok(()))))
        }
        Write::Events {
            host, events, now, ..
        } => Outcome::Events(record_events(&mut one, host, events, *now).await),
    };
    if outcome.is_ok() {
        one.commit()
            .await
            .map_err(db("ending a write of a batch"))?;
    } else {
        one.rollback()
            .await
            .map_err(db("undoing a failed write of a batch"))?;
    }
    Ok(outcome)
}
