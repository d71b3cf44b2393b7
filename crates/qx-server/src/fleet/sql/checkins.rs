//! Check-ins: the host row's report columns, and its versions and own labels when they changed.
//! A group of check-ins (the writer's batch) is written with one read of the hosts' previous
//! check-ins and one `UPDATE` of all their rows, so its cost hardly grows with its size.

use std::collections::{BTreeMap, HashMap};

use qx_core::fleet::CheckIn;
use sqlx::AnyConnection;

use super::bind::{get, to_json, Sql};
use super::{db, unknown_host};
use crate::fleet::store::{FleetResult, Millis};

/// One check-in of a group.
pub(crate) struct CheckInWrite<'a> {
    pub host: &'a str,
    pub report: &'a CheckIn,
    pub now: Millis,
    pub next_due: Millis,
}

/// The check-in's report columns, ready for the `UPDATE`.
struct Columns<'a> {
    write: &'a CheckInWrite<'a>,
    slots: String,
    report: String,
    /// Channel, agent version, slots or pending update differ from the previous check-in's
    /// (they rarely do: the usual check-in rewrites only its report and times, and no index
    /// but the due time's moves).
    described: bool,
}

/// Whether `now` changes the host's descriptive columns (those of its indexes among them).
fn describes_anew(now: &CheckIn, before: Option<&CheckIn>) -> bool {
    before.is_none_or(|b| {
        b.channel != now.channel
            || b.agent_version != now.agent_version
            || b.booted_slot != now.booted_slot
            || b.slots != now.slots
            || b.pending != now.pending
    })
}

/// Writes a group of check-ins inside one transaction; one outcome per check-in, in order.
/// A host that is not enrolled gets its error and nothing is written for it. When a host
/// appears more than once, its last check-in is the one written (the earlier ones are
/// answered as if written before it). The `Err` of the whole is a database error: the
/// transaction must then be abandoned.
pub(crate) async fn record_check_ins(
    conn: &mut AnyConnection,
    writes: &[CheckInWrite<'_>],
) -> FleetResult<Vec<FleetResult<()>>> {
    let hosts: Vec<String> = writes.iter().map(|w| w.host.to_owned()).collect();
    let previous = previous_reports(conn, &hosts).await?;
    // The last check-in of each enrolled host, by host id (one order for the row locks).
    let mut last: BTreeMap<&str, &CheckInWrite<'_>> = BTreeMap::new();
    for w in writes.iter().filter(|w| previous.contains_key(w.host)) {
        last.insert(w.host, w);
    }
    let rows = last
        .values()
        .map(|w| {
            let before = previous.get(w.host).and_then(Option::as_ref);
            Ok(Columns {
                write: w,
                slots: to_json("slots", &w.report.slots)?,
                report: to_json("check-in", w.report)?,
                described: describes_anew(w.report, before),
            })
        })
        .collect::<FleetResult<Vec<_>>>()?;
    let (described, same): (Vec<Columns<'_>>, Vec<Columns<'_>>) =
        rows.into_iter().partition(|r| r.described);
    update_host_rows(conn, &described, true).await?;
    update_host_rows(conn, &same, false).await?;
    for w in last.values() {
        let before = previous.get(w.host).and_then(Option::as_ref);
        write_changes(conn, w, before).await?;
    }
    Ok(writes
        .iter()
        .map(|w| match previous.contains_key(w.host) {
            true => Ok(()),
            false => Err(unknown_host(w.host)),
        })
        .collect())
}

/// The stored previous check-in of each enrolled host among `hosts` (`None`: none yet, or
/// unreadable: then everything is written again). A host missing from the map is not
/// enrolled.
async fn previous_reports(
    conn: &mut AnyConnection,
    hosts: &[String],
) -> FleetResult<HashMap<String, Option<CheckIn>>> {
    let mut sql = Sql::new("SELECT id, report FROM hosts WHERE id IN ");
    sql.once().list(hosts);
    let rows = sql
        .query()
        .fetch_all(&mut *conn)
        .await
        .map_err(db("reading the hosts' last check-ins"))?;
    rows.iter()
        .map(|row| {
            let text: Option<String> = get(row, "report")?;
            let report = text.and_then(|t| serde_json::from_str(&t).ok());
            Ok((get(row, "id")?, report))
        })
        .collect()
}

/// The report columns of every row, in one statement: the new values as a table joined to
/// `hosts` by id (the same SQL on both engines). Without `described`, only the report and the
/// times (the rows' other columns are unchanged).
async fn update_host_rows(
    conn: &mut AnyConnection,
    rows: &[Columns<'_>],
    described: bool,
) -> FleetResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut sql = Sql::new(if described {
        "WITH v (id, report, last_checkin, next_due, channel, agent_version, booted_slot, \
         slots, pending) AS (VALUES "
    } else {
        "WITH v (id, report, last_checkin, next_due) AS (VALUES "
    });
    for (i, row) in rows.iter().enumerate() {
        let (w, r) = (row.write, row.write.report);
        sql.push(if i == 0 { "(" } else { ", (" });
        sql.text(w.host).push(", ").text(&row.report).push(", ");
        sql.int(w.now).push(", ").int(w.next_due);
        if described {
            sql.push(", ").text(&r.channel).push(", ");
            sql.text(&r.agent_version).push(", ");
            sql.opt_text(r.booted_slot.as_deref()).push(", ");
            sql.text(&row.slots).push(", ");
            sql.opt_text(r.pending.as_deref());
        }
        sql.push(")");
    }
    sql.push(
        ") UPDATE hosts SET report = v.report, last_checkin = v.last_checkin, \
         next_due = v.next_due",
    );
    if described {
        sql.push(
            ", channel = v.channel, agent_version = v.agent_version, \
             booted_slot = v.booted_slot, slots = v.slots, pending = v.pending",
        );
    }
    sql.push(" FROM v WHERE hosts.id = v.id").once();
    sql.query()
        .execute(&mut *conn)
        .await
        .map_err(db("recording check-ins"))?;
    Ok(())
}

/// The host's versions and own labels, each only when it differs from `before`.
async fn write_changes(
    conn: &mut AnyConnection,
    w: &CheckInWrite<'_>,
    before: Option<&CheckIn>,
) -> FleetResult<()> {
    if before.map(|p| &p.installed) != Some(&w.report.installed) {
        replace_versions(conn, w.host, w.report).await?;
    }
    if before.map(|p| &p.labels) != Some(&w.report.labels) {
        let mut clear = Sql::new("DELETE FROM host_labels WHERE source = 'host' AND host_id = ");
        clear.text(w.host);
        clear
            .query()
            .execute(&mut *conn)
            .await
            .map_err(db("replacing a host's own labels"))?;
        super::hosts::insert_labels(conn, w.host, &w.report.labels, "host").await?;
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
