//! Event batches (stored once per `(host, seq)`; the host's state follows its highest
//! sequence number).

use qx_core::fleet::{Event, EventType, EventsAccepted};
use sqlx::AnyConnection;

use super::bind::{get, seq_of, seq_value, to_json, Sql};
use super::{db, unknown_host};
use crate::fleet::store::{FleetResult, Millis};

/// The host state an event moves to; `None`: the event leaves it.
pub(crate) fn state_after(kind: EventType) -> Option<&'static str> {
    use EventType::*;
    match kind {
        Offered | DownloadStarted | DownloadDone | InstallStarted => Some("updating"),
        Installed | Reboot => Some("installed"),
        Confirmed => Some("confirmed"),
        Failed => Some("failed"),
        RolledBack => Some("rolled_back"),
        Reverted => Some("reverted"),
        Deferred | Cancelled | Dropped => None,
    }
}

/// The event type's name on the wire and in the `type` column.
pub(crate) fn type_name(kind: EventType) -> String {
    match serde_json::to_value(kind) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{kind:?}"),
    }
}

/// An event ready for its row.
struct EventRow<'e> {
    event: &'e Event,
    seq: i64,
    body: String,
}

/// Stores one batch inside `tx`, in three statements: the host's last sequence number (an
/// unknown host fails here, before anything is written), the new events in one `INSERT` that
/// answers which were new, and the host's state, message and last sequence number in one
/// `UPDATE`; then, in the same transaction, the host's rollout stage when a rollout offered it a
/// version and the new events name it (one more read, one `UPDATE` when it moved).
pub(crate) async fn record_events(
    conn: &mut AnyConnection,
    host: &str,
    events: &[Event],
    now: Millis,
) -> FleetResult<EventsAccepted> {
    let rows = events
        .iter()
        .map(|event| {
            Ok(EventRow {
                event,
                seq: seq_value(event.seq)?,
                body: to_json("event", event)?,
            })
        })
        .collect::<FleetResult<Vec<_>>>()?;
    // The same read says whether any rollout offered the host a version: only then are its
    // stages followed (a host outside rollouts costs no statement more).
    let mut sql = Sql::new(
        "SELECT last_seq, CAST(CASE WHEN EXISTS (SELECT 1 FROM rollout_hosts WHERE host_id = ",
    );
    sql.text(host)
        .push(") THEN 1 ELSE 0 END AS BIGINT) AS in_rollout FROM hosts WHERE id = ");
    sql.text(host);
    let stored = sql
        .query()
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("reading a host's last event"))?
        .ok_or_else(|| unknown_host(host))?;
    let last_seq: i64 = get(&stored, "last_seq")?;
    let in_rollout = get::<i64>(&stored, "in_rollout")? != 0;
    let inserted = insert_events(conn, host, &rows, now).await?;
    // A sequence number sent twice in one batch is new once, the first time.
    let mut seen = std::collections::BTreeSet::new();
    let new: Vec<&EventRow<'_>> = rows
        .iter()
        .filter(|r| inserted.contains(&r.seq) && seen.insert(r.seq))
        .collect();
    follow_newest(conn, host, &new).await?;
    if in_rollout {
        let new_events: Vec<&Event> = new.iter().map(|r| r.event).collect();
        super::rollouts::follow_stage(conn, host, &new_events, now).await?;
    }
    let newest = new.iter().map(|r| r.seq).max().unwrap_or(last_seq);
    let accepted = new.len() as u64;
    Ok(EventsAccepted {
        accepted,
        duplicates: events.len() as u64 - accepted,
        last_seq: seq_of(last_seq.max(newest)),
    })
}

/// Inserts the events whose `(host, seq)` is not stored yet; the sequence numbers inserted.
async fn insert_events(
    conn: &mut AnyConnection,
    host: &str,
    rows: &[EventRow<'_>],
    now: Millis,
) -> FleetResult<std::collections::BTreeSet<i64>> {
    if rows.is_empty() {
        return Ok(Default::default());
    }
    let mut sql =
        Sql::new("INSERT INTO events (host_id, seq, type, message, received, body) VALUES ");
    for (i, row) in rows.iter().enumerate() {
        sql.push(if i == 0 { "(" } else { ", (" });
        sql.text(host).push(", ").int(row.seq).push(", ");
        sql.text(&type_name(row.event.kind)).push(", ");
        sql.opt_text(row.event.message.as_deref());
        sql.push(", ").int(now).push(", ").text(&row.body).push(")");
    }
    sql.push(" ON CONFLICT (host_id, seq) DO NOTHING RETURNING seq")
        .once();
    let done = sql
        .query()
        .fetch_all(&mut *conn)
        .await
        .map_err(db("storing events"))?;
    done.iter().map(|r| get::<i64>(r, "seq")).collect()
}

/// Moves the host's state, message and last sequence number to the newest of the new events,
/// each only when it is newer than what the host holds (an older event arriving late changes
/// nothing): one `UPDATE`, its assignments guarded by `CASE`.
async fn follow_newest(
    conn: &mut AnyConnection,
    host: &str,
    new: &[&EventRow<'_>],
) -> FleetResult<()> {
    let newest = |keep: &dyn Fn(&EventRow<'_>) -> bool| {
        new.iter()
            .filter(|r| keep(r))
            .max_by_key(|r| r.seq)
            .copied()
    };
    let Some(last) = newest(&|_| true) else {
        return Ok(());
    };
    let mut sql = Sql::new("UPDATE hosts SET last_seq = CASE WHEN last_seq < ");
    sql.int(last.seq).push(" THEN ").int(last.seq);
    sql.push(" ELSE last_seq END");
    if let Some(r) = newest(&|r| state_after(r.event.kind).is_some()) {
        let state = state_after(r.event.kind).unwrap_or("idle");
        let newer = |sql: &mut Sql| {
            sql.push(" CASE WHEN state_seq IS NULL OR state_seq < ")
                .int(r.seq)
                .push(" THEN ");
        };
        sql.push(", state =");
        newer(&mut sql);
        sql.text(state).push(" ELSE state END, state_seq =");
        newer(&mut sql);
        sql.int(r.seq).push(" ELSE state_seq END");
    }
    let failure =
        |r: &EventRow<'_>| matches!(r.event.kind, EventType::Failed | EventType::RolledBack);
    if let Some(r) = newest(&failure) {
        let newer = |sql: &mut Sql| {
            sql.push(" CASE WHEN message_seq IS NULL OR message_seq < ")
                .int(r.seq)
                .push(" THEN ");
        };
        sql.push(", last_message =");
        newer(&mut sql);
        sql.opt_text(r.event.message.as_deref())
            .push(" ELSE last_message END, message_seq =");
        newer(&mut sql);
        sql.int(r.seq).push(" ELSE message_seq END");
    }
    sql.push(" WHERE id = ").text(host);
    sql.query()
        .execute(&mut *conn)
        .await
        .map_err(db("updating a host's state"))?;
    Ok(())
}
