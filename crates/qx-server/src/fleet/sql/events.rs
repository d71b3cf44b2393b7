//! Check-ins (the host row's report columns, its versions and its own labels) and event
//! batches (stored once per `(host, seq)`; the host's state follows its highest sequence
//! number).

use qx_core::fleet::{CheckIn, Event, EventType, EventsAccepted};
use sqlx::AnyConnection;
use sqlx::AnyPool;

use super::bind::{get, seq_of, seq_value, to_json, Sql};
use super::db;
use crate::fleet::store::{FleetError, FleetResult, Millis};

pub(super) async fn check_in(
    pool: &AnyPool,
    host: String,
    report: CheckIn,
    now: Millis,
    next_due: Millis,
) -> FleetResult<()> {
    let mut tx = pool.begin().await.map_err(db("starting a check-in"))?;
    record_check_in(&mut tx, &host, &report, now, next_due).await?;
    tx.commit().await.map_err(db("committing a check-in"))
}

/// Writes one check-in inside `tx`: the host row, then its versions and its own labels only
/// when they differ from the previous check-in's (the common check-in changes neither, and
/// is then two statements).
pub(crate) async fn record_check_in(
    conn: &mut AnyConnection,
    host: &str,
    report: &CheckIn,
    now: Millis,
    next_due: Millis,
) -> FleetResult<()> {
    let previous = previous_report(conn, host).await?;
    update_host_row(conn, host, report, now, next_due).await?;
    if previous.as_ref().map(|p| &p.installed) != Some(&report.installed) {
        replace_versions(conn, host, report).await?;
    }
    if previous.as_ref().map(|p| &p.labels) != Some(&report.labels) {
        let mut clear = Sql::new("DELETE FROM host_labels WHERE source = 'host' AND host_id = ");
        clear.text(host);
        clear
            .query()
            .execute(&mut *conn)
            .await
            .map_err(db("replacing a host's own labels"))?;
        super::hosts::insert_labels(conn, host, &report.labels, "host").await?;
    }
    Ok(())
}

/// The host's previous check-in as stored (`None`: none yet, or unreadable: then everything
/// is written again). An unknown host is an error.
async fn previous_report(conn: &mut AnyConnection, host: &str) -> FleetResult<Option<CheckIn>> {
    let mut sql = Sql::new("SELECT report FROM hosts WHERE id = ");
    sql.text(host);
    let row = sql
        .query()
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("reading a host's last check-in"))?
        .ok_or_else(|| unknown_host(host))?;
    let text: Option<String> = get(&row, "report")?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

/// The host row's report columns.
async fn update_host_row(
    conn: &mut AnyConnection,
    host: &str,
    report: &CheckIn,
    now: Millis,
    next_due: Millis,
) -> FleetResult<()> {
    let mut sql = Sql::new("UPDATE hosts SET channel = ");
    sql.text(&report.channel)
        .push(", agent_version = ")
        .text(&report.agent_version);
    sql.push(", booted_slot = ");
    optional_text(&mut sql, report.booted_slot.as_deref());
    sql.push(", slots = ")
        .text(&to_json("slots", &report.slots)?);
    sql.push(", pending = ");
    optional_text(&mut sql, report.pending.as_deref());
    sql.push(", report = ").text(&to_json("check-in", report)?);
    sql.push(", last_checkin = ").int(now);
    sql.push(", next_due = ").int(next_due);
    sql.push(" WHERE id = ").text(host);
    let done = sql
        .query()
        .execute(&mut *conn)
        .await
        .map_err(db("recording a check-in"))?;
    if done.rows_affected() == 0 {
        return Err(unknown_host(host));
    }
    Ok(())
}

/// Replaces the host's component versions with the check-in's.
async fn replace_versions(
    conn: &mut AnyConnection,
    host: &str,
    report: &CheckIn,
) -> FleetResult<()> {
    let mut clear = Sql::new("DELETE FROM host_versions WHERE host_id = ");
    clear.text(host);
    clear
        .query()
        .execute(&mut *conn)
        .await
        .map_err(db("replacing a host's versions"))?;
    for (component, version) in &report.installed {
        let mut ins = Sql::new("INSERT INTO host_versions (host_id, component, version) VALUES (");
        ins.text(host)
            .push(", ")
            .text(component)
            .push(", ")
            .text(version)
            .push(")");
        ins.query()
            .execute(&mut *conn)
            .await
            .map_err(db("storing a host's versions"))?;
    }
    Ok(())
}

fn optional_text(sql: &mut Sql, v: Option<&str>) {
    match v {
        Some(v) => sql.text(v),
        None => sql.push("NULL"),
    };
}

fn unknown_host(host: &str) -> FleetError {
    FleetError::Invalid(format!("host {host} is not enrolled"))
}

/// The host state an event moves to; `None`: the event leaves it.
pub(crate) fn state_after(kind: EventType) -> Option<&'static str> {
    use EventType::*;
    match kind {
        Offered | DownloadStarted | DownloadDone | InstallStarted => Some("updating"),
        Installed | Reboot => Some("installed"),
        Confirmed => Some("confirmed"),
        Failed => Some("failed"),
        RolledBack => Some("rolled_back"),
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

pub(super) async fn append_events(
    pool: &AnyPool,
    host: String,
    events: Vec<Event>,
    now: Millis,
) -> FleetResult<EventsAccepted> {
    let mut tx = pool.begin().await.map_err(db("starting an event batch"))?;
    let accepted = record_events(&mut tx, &host, &events, now).await?;
    tx.commit().await.map_err(db("committing an event batch"))?;
    Ok(accepted)
}

/// Stores one batch inside `tx`.
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
    let mut last = Sql::new("SELECT last_seq FROM hosts WHERE id = ");
    last.text(host);
    if last
        .query()
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("reading a host's last event"))?
        .is_none()
    {
        return Err(unknown_host(host));
    }
    let mut new = Vec::new();
    for row in &rows {
        if insert_event(conn, host, row, now).await? {
            new.push(row);
        }
    }
    follow_newest(conn, host, &new).await?;
    let mut last = Sql::new("SELECT last_seq FROM hosts WHERE id = ");
    last.text(host);
    let row = last
        .query()
        .fetch_one(&mut *conn)
        .await
        .map_err(db("reading a host's last event"))?;
    let accepted = new.len() as u64;
    Ok(EventsAccepted {
        accepted,
        duplicates: events.len() as u64 - accepted,
        last_seq: seq_of(get(&row, "last_seq")?),
    })
}

/// Inserts the event unless `(host, seq)` is stored; whether it was new.
async fn insert_event(
    conn: &mut AnyConnection,
    host: &str,
    row: &EventRow<'_>,
    now: Millis,
) -> FleetResult<bool> {
    let mut sql =
        Sql::new("INSERT INTO events (host_id, seq, type, message, received, body) VALUES (");
    sql.text(host).push(", ").int(row.seq).push(", ");
    sql.text(&type_name(row.event.kind)).push(", ");
    optional_text(&mut sql, row.event.message.as_deref());
    sql.push(", ").int(now).push(", ").text(&row.body);
    sql.push(") ON CONFLICT (host_id, seq) DO NOTHING");
    let done = sql
        .query()
        .execute(&mut *conn)
        .await
        .map_err(db("storing an event"))?;
    Ok(done.rows_affected() > 0)
}

/// Moves the host's state, message and last sequence number to the newest of the new events
/// when they are newer than what it holds (an older event arriving late changes nothing).
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
    if let Some(r) = newest(&|r| state_after(r.event.kind).is_some()) {
        let state = state_after(r.event.kind).unwrap_or("idle");
        let mut sql = Sql::new("UPDATE hosts SET state = ");
        sql.text(state).push(", state_seq = ").int(r.seq);
        sql.push(" WHERE id = ").text(host);
        sql.push(" AND (state_seq IS NULL OR state_seq < ")
            .int(r.seq)
            .push(")");
        sql.query()
            .execute(&mut *conn)
            .await
            .map_err(db("updating a host's state"))?;
    }
    let failure =
        |r: &EventRow<'_>| matches!(r.event.kind, EventType::Failed | EventType::RolledBack);
    if let Some(r) = newest(&failure) {
        let mut sql = Sql::new("UPDATE hosts SET last_message = ");
        optional_text(&mut sql, r.event.message.as_deref());
        sql.push(", message_seq = ").int(r.seq);
        sql.push(" WHERE id = ").text(host);
        sql.push(" AND (message_seq IS NULL OR message_seq < ")
            .int(r.seq)
            .push(")");
        sql.query()
            .execute(&mut *conn)
            .await
            .map_err(db("updating a host's last message"))?;
    }
    if let Some(r) = newest(&|_| true) {
        let mut sql = Sql::new("UPDATE hosts SET last_seq = ");
        sql.int(r.seq).push(" WHERE id = ").text(host);
        sql.push(" AND last_seq < ").int(r.seq);
        sql.query()
            .execute(&mut *conn)
            .await
            .map_err(db("updating a host's last sequence number"))?;
    }
    Ok(())
}
