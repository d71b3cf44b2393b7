//! The SQLite writer: check-ins and event batches from concurrent requests are grouped into
//! one transaction by one task (SQLite has one writer, and a commit costs the same for one
//! write as for a hundred). Each write runs under its own savepoint, so one that fails (an
//! unknown host) is undone alone; every caller is answered after the commit.

use qx_core::fleet::{CheckIn, Event, EventsAccepted};
use sqlx::{Acquire, AnyPool};
use tokio::sync::{mpsc, oneshot};

use super::db;
use super::events::{record_check_in, record_events};
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
    /// Starts the writer on the current runtime.
    pub(crate) fn start(pool: AnyPool) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, rx));
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

async fn run(pool: AnyPool, mut rx: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match apply(&pool, &batch).await {
            Ok(outcomes) => {
                for (write, outcome) in batch.drain(..).zip(outcomes) {
                    answer(write, outcome);
                }
            }
            Err(e) => {
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
        }
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

/// Writes the batch in one transaction, each write under a savepoint; the outcomes in order.
async fn apply(pool: &AnyPool, batch: &[Write]) -> FleetResult<Vec<Outcome>> {
    let mut tx = pool
        .begin()
        .await
        .map_err(db("starting a batch of writes"))?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for write in batch {
        let mut one = tx
            .begin()
            .await
            .map_err(db("starting a write of a batch"))?;
        let outcome = match write {
            Write::CheckIn {
                host,
                report,
                now,
                next_due,
                ..
            } => Outcome::CheckIn(record_check_in(&mut one, host, report, *now, *next_due).await),
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
        outcomes.push(outcome);
    }
    tx.commit()
        .await
        .map_err(db("committing a batch of writes"))?;
    Ok(outcomes)
}
