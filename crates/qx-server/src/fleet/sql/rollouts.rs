//! Rollouts, their hosts' stages and pins (docs/spec.md §10). A rollout's state changes are
//! conditional `UPDATE`s (`… WHERE id = $1 AND state IN (…)`), so that servers sharing one
//! database record each halt, opening and ending once: the caller whose update changed a row
//! is the one that counts it and tells the webhook.

use qx_core::fleet::Labels;
use sqlx::any::AnyRow;
use sqlx::AnyPool;

use super::bind::{from_json, get, to_json, Sql};
use super::{begin_write, db};
use crate::fleet::store::{
    ChannelHost, ChannelView, FleetError, FleetResult, HostStage, Millis, PinRow, RolloutChange,
    RolloutRow, StageCount,
};

/// The stages that are in progress (their deadline is watched).
pub(crate) const TIMED: &str = "('downloading', 'installing', 'confirming')";

/// An enum's wire name (its serde name).
pub(crate) fn name_of<T: serde::Serialize>(value: T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// An enum from its wire name.
pub(crate) fn parse_name<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> FleetResult<T> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| FleetError::Database(format!("the stored {what} {text:?} is unknown")))
}

fn count(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uncount(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

const COLUMNS: &str = "id, product, channel, version, plan, state, started_at, updated_at, \
    opened, halt, halts, acknowledged_failures, acknowledged_finished, ended_reason";

fn rollout_of(row: &AnyRow) -> FleetResult<RolloutRow> {
    let halt: Option<String> = get(row, "halt")?;
    Ok(RolloutRow {
        id: get(row, "id")?,
        product: get(row, "product")?,
        channel: get(row, "channel")?,
        version: get(row, "version")?,
        plan: from_json("rollout plan", &get::<String>(row, "plan")?)?,
        state: parse_name("rollout state", &get::<String>(row, "state")?)?,
        started_at: get(row, "started_at")?,
        updated_at: get(row, "updated_at")?,
        opened: from_json("opened waves", &get::<String>(row, "opened")?)?,
        halt: halt.map(|h| from_json("halt", &h)).transpose()?,
        halts: from_json("halts", &get::<String>(row, "halts")?)?,
        acknowledged_failures: uncount(get(row, "acknowledged_failures")?),
        acknowledged_finished: uncount(get(row, "acknowledged_finished")?),
        ended_reason: get(row, "ended_reason")?,
    })
}

fn ms(seconds: u64) -> i64 {
    i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}

pub(crate) async fn create_rollout(pool: &AnyPool, r: RolloutRow) -> FleetResult<bool> {
    let d = r.plan.policy.deadlines;
    let mut sql = Sql::new(
        "INSERT INTO rollouts (id, product, channel, version, plan, download_ms, install_ms, \
         confirm_ms, state, started_at, updated_at, opened, halts) VALUES (",
    );
    sql.text(&r.id).push(", ").text(&r.product).push(", ");
    sql.text(&r.channel).push(", ").text(&r.version).push(", ");
    sql.text(&to_json("rollout plan", &r.plan)?).push(", ");
    sql.int(ms(d.download_s))
        .push(", ")
        .int(ms(d.install_s))
        .push(", ");
    sql.int(ms(d.confirm_s)).push(", ").text(&name_of(r.state));
    sql.push(", ")
        .int(r.started_at)
        .push(", ")
        .int(r.updated_at);
    sql.push(", ").text(&to_json("opened waves", &r.opened)?);
    sql.push(", '[]') ON CONFLICT DO NOTHING");
    let mut tx = begin_write(pool, "storing a rollout").await?;
    let done = sql
        .query()
        .execute(&mut *tx)
        .await
        .map_err(db("storing a rollout"))?;
    tx.commit().await.map_err(db("storing a rollout"))?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn rollout(pool: &AnyPool, id: String) -> FleetResult<Option<RolloutRow>> {
    let mut sql = Sql::new(&format!("SELECT {COLUMNS} FROM rollouts WHERE id = "));
    sql.text(&id);
    let row = sql
        .query()
        .fetch_optional(pool)
        .await
        .map_err(db("reading a rollout"))?;
    row.as_ref().map(rollout_of).transpose()
}

pub(crate) async fn rollouts(
    pool: &AnyPool,
    product: String,
    channel: Option<String>,
) -> FleetResult<Vec<RolloutRow>> {
    let mut sql = Sql::new(&format!("SELECT {COLUMNS} FROM rollouts WHERE product = "));
    sql.text(&product);
    if let Some(c) = &channel {
        sql.push(" AND channel = ").text(c);
    }
    sql.push(" ORDER BY started_at DESC, id DESC");
    let rows = sql
        .query()
        .fetch_all(pool)
        .await
        .map_err(db("listing rollouts"))?;
    rows.iter().map(rollout_of).collect()
}

pub(crate) async fn unfinished_rollouts(pool: &AnyPool) -> FleetResult<Vec<RolloutRow>> {
    let sql = Sql::new(&format!(
        "SELECT {COLUMNS} FROM rollouts WHERE state IN ('running', 'paused', 'halted') \
         ORDER BY started_at"
    ));
    let rows = sql
        .query()
        .fetch_all(pool)
        .await
        .map_err(db("listing unfinished rollouts"))?;
    rows.iter().map(rollout_of).collect()
}

/// The `SET` list of a change (always `updated_at`).
fn change_set(sql: &mut Sql, c: &RolloutChange) -> FleetResult<()> {
    sql.push("UPDATE rollouts SET updated_at = ").int(c.now);
    if let Some(s) = c.state {
        sql.push(", state = ").text(&name_of(s));
    }
    if let Some((_, new)) = &c.opened {
        sql.push(", opened = ").text(&to_json("opened waves", new)?);
    }
    if let Some(h) = &c.halt {
        let text = h.as_ref().map(|h| to_json("halt", h)).transpose()?;
        sql.push(", halt = ").opt_text(text.as_deref());
    }
    if let Some(h) = &c.halts {
        sql.push(", halts = ").text(&to_json("halts", h)?);
    }
    if let Some((f, n)) = c.acknowledged {
        sql.push(", acknowledged_failures = ").int(count(f));
        sql.push(", acknowledged_finished = ").int(count(n));
    }
    if let Some(r) = &c.ended_reason {
        sql.push(", ended_reason = ").text(r);
    }
    Ok(())
}

pub(crate) async fn change_rollout(
    pool: &AnyPool,
    id: String,
    c: RolloutChange,
) -> FleetResult<bool> {
    let mut sql = Sql::new("");
    change_set(&mut sql, &c)?;
    sql.push(" WHERE id = ").text(&id);
    let states: Vec<String> = c.from.iter().map(|s| name_of(*s)).collect();
    if !states.is_empty() {
        sql.push(" AND state IN ").list(&states);
    }
    if let Some((old, _)) = &c.opened {
        sql.push(" AND opened = ")
            .text(&to_json("opened waves", old)?);
    }
    sql.once();
    let mut tx = begin_write(pool, "changing a rollout").await?;
    let done = sql
        .query()
        .execute(&mut *tx)
        .await
        .map_err(db("changing a rollout"))?;
    tx.commit().await.map_err(db("changing a rollout"))?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn host_stage(
    pool: &AnyPool,
    rollout: String,
    host: String,
) -> FleetResult<Option<HostStage>> {
    let mut sql = Sql::new(
        "SELECT wave, stage, since, deadline, message FROM rollout_hosts WHERE rollout_id = ",
    );
    sql.text(&rollout).push(" AND host_id = ").text(&host);
    let row = sql
        .query()
        .fetch_optional(pool)
        .await
        .map_err(db("reading a host's rollout stage"))?;
    row.map(|row| {
        Ok(HostStage {
            wave: u32::try_from(get::<i64>(&row, "wave")?).unwrap_or(u32::MAX),
            stage: parse_name("rollout stage", &get::<String>(&row, "stage")?)?,
            since: get(&row, "since")?,
            deadline: get(&row, "deadline")?,
            message: get(&row, "message")?,
        })
    })
    .transpose()
}

pub(crate) async fn record_offer(
    pool: &AnyPool,
    rollout: String,
    host: String,
    wave: u32,
    now: Millis,
) -> FleetResult<bool> {
    let mut sql =
        Sql::new("INSERT INTO rollout_hosts (rollout_id, host_id, wave, stage, since) VALUES (");
    sql.text(&rollout).push(", ").text(&host).push(", ");
    sql.int(i64::from(wave)).push(", 'offered', ").int(now);
    sql.push(") ON CONFLICT (rollout_id, host_id) DO NOTHING");
    let mut tx = begin_write(pool, "recording an offer").await?;
    let done = sql
        .query()
        .execute(&mut *tx)
        .await
        .map_err(db("recording an offer"))?;
    tx.commit().await.map_err(db("recording an offer"))?;
    Ok(done.rows_affected() == 1)
}

/// Times out the stages past their deadline. A read on the read pool first: when nothing is
/// due (the common tick) no write transaction is taken, so the tick never waits for, nor
/// holds up, the batch writer.
pub(crate) async fn sweep_timeouts(
    read: &AnyPool,
    pool: &AnyPool,
    now: Millis,
) -> FleetResult<u64> {
    let mut due = Sql::new("SELECT 1 AS due FROM rollout_hosts WHERE deadline < ");
    due.int(now).push(&format!(" AND stage IN {TIMED} LIMIT 1"));
    let any = due
        .query()
        .fetch_optional(read)
        .await
        .map_err(db("looking for overdue rollout stages"))?;
    if any.is_none() {
        return Ok(0);
    }
    let mut sql =
        Sql::new("UPDATE rollout_hosts SET stage = 'timed_out', deadline = NULL, since = ");
    sql.int(now).push(" WHERE deadline < ").int(now);
    sql.push(&format!(" AND stage IN {TIMED}"));
    let mut tx = begin_write(pool, "timing out rollout stages").await?;
    let done = sql
        .query()
        .execute(&mut *tx)
        .await
        .map_err(db("timing out rollout stages"))?;
    tx.commit().await.map_err(db("timing out rollout stages"))?;
    Ok(done.rows_affected())
}

pub(crate) async fn stage_counts(pool: &AnyPool, rollout: String) -> FleetResult<Vec<StageCount>> {
    let mut sql =
        Sql::new("SELECT wave, stage, COUNT(*) AS hosts FROM rollout_hosts WHERE rollout_id = ");
    sql.text(&rollout).push(" GROUP BY wave, stage");
    let rows = sql
        .query()
        .fetch_all(pool)
        .await
        .map_err(db("counting a rollout's hosts"))?;
    rows.iter()
        .map(|row| {
            Ok(StageCount {
                wave: u32::try_from(get::<i64>(row, "wave")?).unwrap_or(u32::MAX),
                stage: parse_name("rollout stage", &get::<String>(row, "stage")?)?,
                hosts: uncount(get(row, "hosts")?),
            })
        })
        .collect()
}

pub(crate) async fn rollout_hosts(pool: &AnyPool, rollout: String) -> FleetResult<Vec<String>> {
    let mut sql = Sql::new("SELECT host_id FROM rollout_hosts WHERE rollout_id = ");
    sql.text(&rollout);
    let rows = sql
        .query()
        .fetch_all(pool)
        .await
        .map_err(db("listing a rollout's hosts"))?;
    rows.iter().map(|r| get(r, "host_id")).collect()
}

pub(crate) async fn top_failures(
    pool: &AnyPool,
    rollout: String,
    limit: u32,
) -> FleetResult<Vec<(String, u64)>> {
    let mut sql = Sql::new(
        "SELECT COALESCE(message, stage) AS m, COUNT(*) AS hosts FROM rollout_hosts \
         WHERE rollout_id = ",
    );
    sql.text(&rollout);
    sql.push(" AND stage IN ('failed', 'rolled_back', 'timed_out') GROUP BY COALESCE(message, stage) ORDER BY hosts DESC, m LIMIT ");
    sql.int(i64::from(limit));
    let rows = sql
        .query()
        .fetch_all(pool)
        .await
        .map_err(db("reading a rollout's failures"))?;
    rows.iter()
        .map(|r| Ok((get(r, "m")?, uncount(get(r, "hosts")?))))
        .collect()
}

pub(crate) async fn host_labels(pool: &AnyPool, host: String) -> FleetResult<Labels> {
    let mut sql = Sql::new("SELECT key, value FROM host_labels WHERE host_id = ");
    sql.text(&host);
    let rows = sql
        .query()
        .fetch_all(pool)
        .await
        .map_err(db("reading a host's labels"))?;
    rows.iter()
        .map(|r| Ok((get(r, "key")?, get(r, "value")?)))
        .collect()
}

pub(crate) async fn channel_hosts(
    pool: &AnyPool,
    product: String,
    channel: String,
) -> FleetResult<Vec<ChannelHost>> {
    let mut sql = Sql::new(
        "SELECT id, last_checkin, next_due, slots FROM hosts WHERE decommissioned_at IS NULL AND product = ",
    );
    sql.text(&product).push(" AND channel = ").text(&channel);
    let rows = sql
        .query()
        .fetch_all(pool)
        .await
        .map_err(db("listing a channel's hosts"))?;
    let mut hosts = std::collections::BTreeMap::new();
    for row in &rows {
        let id: String = get(row, "id")?;
        let slots: String = get(row, "slots")?;
        let slots: Vec<qx_core::fleet::SlotReport> =
            serde_json::from_str(&slots).unwrap_or_default();
        let host = ChannelHost {
            id: id.clone(),
            labels: Labels::new(),
            last_checkin: get(row, "last_checkin")?,
            next_due: get(row, "next_due")?,
            versions: slots.into_iter().filter_map(|s| s.version).collect(),
        };
        hosts.insert(id, host);
    }
    fill_channel_hosts(pool, &product, &channel, &mut hosts).await?;
    Ok(hosts.into_values().collect())
}

/// Adds the labels and component versions of a channel's hosts (two joined reads).
async fn fill_channel_hosts(
    pool: &AnyPool,
    product: &str,
    channel: &str,
    hosts: &mut std::collections::BTreeMap<String, ChannelHost>,
) -> FleetResult<()> {
    for (table, a, b) in [
        ("host_labels", "key", "value"),
        ("host_versions", "component", "version"),
    ] {
        let mut sql = Sql::new(&format!(
            "SELECT t.host_id, t.{a} AS a, t.{b} AS b FROM {table} t JOIN hosts h ON h.id = t.host_id \
             WHERE h.decommissioned_at IS NULL AND h.product = "
        ));
        sql.text(product).push(" AND h.channel = ").text(channel);
        let rows = sql
            .query()
            .fetch_all(pool)
            .await
            .map_err(db("reading a channel's hosts"))?;
        for row in &rows {
            let Some(h) = hosts.get_mut(&get::<String>(row, "host_id")?) else {
                continue;
            };
            let (ka, vb): (String, String) = (get(row, "a")?, get(row, "b")?);
            if table == "host_labels" {
                h.labels.insert(ka, vb);
            } else {
                h.versions.push(vb);
            }
        }
    }
    Ok(())
}

pub(crate) async fn create_pin(pool: &AnyPool, p: PinRow) -> FleetResult<()> {
    let mut sql = Sql::new(
        "INSERT INTO pins (id, product, channel, host_id, selector, version, created_at) VALUES (",
    );
    sql.text(&p.id)
        .push(", ")
        .text(&p.product)
        .push(", ")
        .text(&p.channel);
    sql.push(", ").opt_text(p.host.as_deref()).push(", ");
    sql.opt_text(p.selector.as_deref())
        .push(", ")
        .text(&p.version);
    sql.push(", ").int(p.created_at).push(")");
    let mut tx = begin_write(pool, "storing a pin").await?;
    sql.query()
        .execute(&mut *tx)
        .await
        .map_err(db("storing a pin"))?;
    tx.commit().await.map_err(db("storing a pin"))
}

/// The channel's pins (newest first) and whether any of its hosts is offered or downloading
/// in a halted or aborted rollout: one read.
pub(crate) async fn channel_view(
    pool: &AnyPool,
    product: String,
    channel: String,
) -> FleetResult<ChannelView> {
    let mut sql = Sql::new(
        "SELECT 'pin' AS kind, id, host_id, selector, version, created_at FROM pins \
         WHERE product = ",
    );
    sql.text(&product).push(" AND channel = ").text(&channel);
    sql.push(
        " UNION ALL SELECT 'cancelable', MIN(r.id), NULL, NULL, MIN(r.version), 0 \
         FROM rollout_hosts rh JOIN rollouts r ON r.id = rh.rollout_id WHERE r.product = ",
    );
    sql.text(&product).push(" AND r.channel = ").text(&channel);
    sql.push(
        " AND rh.stage IN ('offered', 'downloading') AND r.state IN ('halted', 'aborted') \
         HAVING COUNT(*) > 0 ORDER BY 6 DESC, 2 DESC",
    );
    let rows = sql
        .query()
        .fetch_all(pool)
        .await
        .map_err(db("reading a channel's pins"))?;
    let mut view = ChannelView::default();
    for r in &rows {
        if get::<String>(r, "kind")? == "cancelable" {
            view.cancelable = true;
            continue;
        }
        view.pins.push(PinRow {
            id: get(r, "id")?,
            product: product.clone(),
            channel: channel.clone(),
            host: get(r, "host_id")?,
            selector: get(r, "selector")?,
            version: get(r, "version")?,
            created_at: get(r, "created_at")?,
        });
    }
    Ok(view)
}

/// The version of the newest halted or aborted rollout of the channel in which the host is
/// offered or downloading.
pub(crate) async fn host_cancel(
    pool: &AnyPool,
    product: String,
    channel: String,
    host: String,
) -> FleetResult<Option<String>> {
    let mut sql = Sql::new(
        "SELECT r.version FROM rollout_hosts rh JOIN rollouts r ON r.id = rh.rollout_id \
         WHERE rh.host_id = ",
    );
    sql.text(&host).push(" AND r.product = ").text(&product);
    sql.push(" AND r.channel = ").text(&channel);
    sql.push(
        " AND rh.stage IN ('offered', 'downloading') AND r.state IN ('halted', 'aborted') \
         ORDER BY r.started_at DESC, r.id DESC LIMIT 1",
    );
    let row = sql
        .query()
        .fetch_optional(pool)
        .await
        .map_err(db("reading a host's cancel"))?;
    row.map(|r| get::<String>(&r, "version")).transpose()
}

pub(crate) async fn pins(
    pool: &AnyPool,
    product: String,
    channel: Option<String>,
) -> FleetResult<Vec<PinRow>> {
    let mut sql = Sql::new(
        "SELECT id, product, channel, host_id, selector, version, created_at FROM pins \
         WHERE product = ",
    );
    sql.text(&product);
    if let Some(c) = &channel {
        sql.push(" AND channel = ").text(c);
    }
    sql.push(" ORDER BY created_at DESC, id DESC");
    let rows = sql
        .query()
        .fetch_all(pool)
        .await
        .map_err(db("listing pins"))?;
    rows.iter()
        .map(|r| {
            Ok(PinRow {
                id: get(r, "id")?,
                product: get(r, "product")?,
                channel: get(r, "channel")?,
                host: get(r, "host_id")?,
                selector: get(r, "selector")?,
                version: get(r, "version")?,
                created_at: get(r, "created_at")?,
            })
        })
        .collect()
}

pub(crate) async fn delete_pin(pool: &AnyPool, product: String, id: String) -> FleetResult<bool> {
    let mut sql = Sql::new("DELETE FROM pins WHERE product = ");
    sql.text(&product).push(" AND id = ").text(&id);
    let mut tx = begin_write(pool, "deleting a pin").await?;
    let done = sql
        .query()
        .execute(&mut *tx)
        .await
        .map_err(db("deleting a pin"))?;
    tx.commit().await.map_err(db("deleting a pin"))?;
    Ok(done.rows_affected() == 1)
}

/// Follows a host's rollout stage from its new events, inside the event batch's transaction:
/// only events naming the version of a rollout that offered it to this host (the newest such
/// rollout), in sequence order; see [`crate::fleet::rollout::rules::next_stage`].
pub(crate) async fn follow_stage(
    conn: &mut sqlx::AnyConnection,
    host: &str,
    events: &[&qx_core::fleet::Event],
    now: Millis,
) -> FleetResult<()> {
    use crate::fleet::rollout::rules;
    let versions: Vec<String> = events.iter().filter_map(|e| e.version.clone()).collect();
    if versions.is_empty()
        || !events
            .iter()
            .any(|e| rules::stage_of_event(e.kind).is_some())
    {
        return Ok(());
    }
    let Some(held) = held_stage(conn, host, &versions).await? else {
        return Ok(());
    };
    let mut ordered: Vec<&&qx_core::fleet::Event> = events
        .iter()
        .filter(|e| e.version.as_deref() == Some(held.version.as_str()))
        .collect();
    ordered.sort_by_key(|e| e.seq);
    let mut at = held.position.clone();
    for e in ordered {
        at = rules::next_position(&at, e, held.deadlines, now);
    }
    if at == held.position {
        return Ok(());
    }
    write_stage(conn, &held.rollout_id, host, &at, now).await
}

/// Where a host stands in the newest rollout of one of `versions` that offered it one.
struct HeldStage {
    rollout_id: String,
    version: String,
    position: crate::fleet::rollout::rules::Position,
    deadlines: crate::fleet::rollout::rules::Deadlines,
}

async fn held_stage(
    conn: &mut sqlx::AnyConnection,
    host: &str,
    versions: &[String],
) -> FleetResult<Option<HeldStage>> {
    use crate::fleet::rollout::rules;
    let mut sql = Sql::new(
        "SELECT rh.rollout_id, rh.stage, rh.deadline, rh.message, r.version, r.download_ms, \
         r.install_ms, r.confirm_ms FROM rollout_hosts rh JOIN rollouts r ON r.id = rh.rollout_id \
         WHERE rh.host_id = ",
    );
    sql.text(host).push(" AND r.version IN ").list(versions);
    sql.push(" ORDER BY r.started_at DESC LIMIT 1").once();
    let Some(row) = sql
        .query()
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("reading a host's rollout stage"))?
    else {
        return Ok(None);
    };
    Ok(Some(HeldStage {
        rollout_id: get(&row, "rollout_id")?,
        version: get(&row, "version")?,
        position: rules::Position {
            stage: parse_name("rollout stage", &get::<String>(&row, "stage")?)?,
            deadline: get(&row, "deadline")?,
            message: get(&row, "message")?,
        },
        deadlines: rules::Deadlines {
            download: get(&row, "download_ms")?,
            install: get(&row, "install_ms")?,
            confirm: get(&row, "confirm_ms")?,
        },
    }))
}

/// Stores the host's new position in the rollout.
async fn write_stage(
    conn: &mut sqlx::AnyConnection,
    rollout: &str,
    host: &str,
    at: &crate::fleet::rollout::rules::Position,
    now: Millis,
) -> FleetResult<()> {
    let mut up = Sql::new("UPDATE rollout_hosts SET stage = ");
    up.text(&name_of(at.stage)).push(", since = ").int(now);
    up.push(", deadline = ");
    match at.deadline {
        Some(d) => up.int(d),
        None => up.push("NULL"),
    };
    up.push(", message = ").opt_text(at.message.as_deref());
    up.push(" WHERE rollout_id = ").text(rollout);
    up.push(" AND host_id = ").text(host);
    up.query()
        .execute(&mut *conn)
        .await
        .map_err(db("updating a host's rollout stage"))?;
    Ok(())
}
