//! The operator's views: the host list (filters and liveness in SQL, keyset paging by id),
//! one host with its events, labels, decommissioning and the fleet counts.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use qx_core::fleet::{
    Event, HostDetail, HostList, HostSummary, Labels, LabelsPatch, Liveness, SlotReport,
    StoredEvent,
};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use sqlx::AnyPool;

use super::bind::{from_json, get, Sql};
use super::db;
use crate::fleet::clock::rfc3339;
use crate::fleet::store::{FleetCounts, FleetError, FleetResult, HostQuery, LivenessRule, Millis};

/// How many ids one `IN (…)` list carries.
const IN_CHUNK: usize = 500;

const SUMMARY_COLUMNS: &str = "SELECT h.id, h.product, h.hostname, h.channel, h.state, \
    h.enrolled_at, h.last_checkin, h.next_due, h.agent_version, h.last_message, \
    h.decommissioned_at, h.booted_slot, h.slots, h.pending FROM hosts h";

/// Inserts labels from `source` (`token`, `host`, `operator`); a key the host has already keeps
/// its value (so a host's own labels never override its token's).
pub(crate) async fn insert_labels(
    conn: &mut AnyConnection,
    host: &str,
    labels: &Labels,
    source: &str,
) -> FleetResult<()> {
    for (key, value) in labels {
        let mut sql = Sql::new("INSERT INTO host_labels (host_id, key, value, source) VALUES (");
        sql.text(host).push(", ").text(key).push(", ").text(value);
        sql.push(", ")
            .text(source)
            .push(") ON CONFLICT (host_id, key) DO NOTHING");
        sql.query()
            .execute(&mut *conn)
            .await
            .map_err(db("storing a host's labels"))?;
    }
    Ok(())
}

/// The page's cursor: the last id, opaque to clients.
fn cursor_of(id: &str) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn id_of_cursor(cursor: &str) -> FleetResult<String> {
    URL_SAFE_NO_PAD
        .decode(cursor.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            FleetError::Invalid(format!(
                "cursor {cursor:?} is not one this server issued; pass the \"next\" of the previous page"
            ))
        })
}

/// Appends the liveness condition (the rule of [`LivenessRule::judge`] in SQL).
fn push_liveness(sql: &mut Sql, l: Liveness, rule: LivenessRule, now: Millis) {
    let online_from = now - rule.grace;
    let overdue_from = now - rule.offline_after;
    match l {
        Liveness::Decommissioned => {
            sql.push(" AND h.decommissioned_at IS NOT NULL");
        }
        Liveness::Online => {
            sql.push(" AND h.decommissioned_at IS NULL AND (h.next_due IS NULL OR h.next_due >= ");
            sql.int(online_from).push(")");
        }
        Liveness::Overdue => {
            sql.push(" AND h.decommissioned_at IS NULL AND h.next_due < ")
                .int(online_from);
            sql.push(" AND h.next_due >= ").int(overdue_from);
        }
        Liveness::Offline => {
            sql.push(" AND h.decommissioned_at IS NULL AND h.next_due < ")
                .int(overdue_from);
        }
    }
}

/// The filtered, ordered, limited query of one page (one row more than asked: is there a next?).
fn page_query(q: &HostQuery, rule: LivenessRule, now: Millis) -> FleetResult<(Sql, usize)> {
    let mut sql = Sql::new(SUMMARY_COLUMNS);
    sql.push(" WHERE 1 = 1");
    for (col, v) in [
        ("product", &q.product),
        ("channel", &q.channel),
        ("state", &q.state),
    ] {
        if let Some(v) = v {
            sql.push(&format!(" AND h.{col} = ")).text(v);
        }
    }
    if let Some(v) = &q.version {
        sql.push(
            " AND EXISTS (SELECT 1 FROM host_versions v WHERE v.host_id = h.id AND v.version = ",
        );
        sql.text(v).push(")");
    }
    for m in &q.labels {
        sql.push(if m.equal {
            " AND EXISTS"
        } else {
            " AND NOT EXISTS"
        });
        sql.push(" (SELECT 1 FROM host_labels l WHERE l.host_id = h.id AND l.key = ");
        sql.text(&m.key)
            .push(" AND l.value = ")
            .text(&m.value)
            .push(")");
    }
    match q.liveness {
        Some(l) => push_liveness(&mut sql, l, rule, now),
        None if !q.decommissioned => {
            sql.push(" AND h.decommissioned_at IS NULL");
        }
        None => {}
    }
    if let Some(c) = &q.cursor {
        sql.push(" AND h.id > ").text(&id_of_cursor(c)?);
    }
    let limit = q.limit.max(1) as usize;
    sql.push(" ORDER BY h.id LIMIT ").int(limit as i64 + 1);
    Ok((sql, limit))
}

pub(super) async fn list_hosts(
    pool: &AnyPool,
    q: HostQuery,
    rule: LivenessRule,
    now: Millis,
) -> FleetResult<HostList> {
    let (sql, limit) = page_query(&q, rule, now)?;
    let mut rows = sql
        .query()
        .fetch_all(pool)
        .await
        .map_err(db("listing hosts"))?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let mut hosts = rows
        .iter()
        .map(|r| summary(r, rule, now))
        .collect::<FleetResult<Vec<_>>>()?;
    fill_labels_and_versions(pool, &mut hosts).await?;
    let next = match hosts.last() {
        Some(h) if more => Some(cursor_of(&h.id)),
        _ => None,
    };
    Ok(HostList { hosts, next })
}

fn summary(row: &AnyRow, rule: LivenessRule, now: Millis) -> FleetResult<HostSummary> {
    let next_due: Option<i64> = get(row, "next_due")?;
    let decommissioned: Option<i64> = get(row, "decommissioned_at")?;
    let liveness = match decommissioned {
        Some(_) => Liveness::Decommissioned,
        None => rule.judge(next_due, now),
    };
    Ok(HostSummary {
        id: get(row, "id")?,
        product: get(row, "product")?,
        hostname: get(row, "hostname")?,
        channel: get(row, "channel")?,
        versions: BTreeMap::new(),
        state: get(row, "state")?,
        liveness,
        labels: Labels::new(),
        enrolled_at: rfc3339(get(row, "enrolled_at")?),
        last_checkin: get::<Option<i64>>(row, "last_checkin")?.map(rfc3339),
        next_checkin_due: next_due.map(rfc3339),
        agent_version: get(row, "agent_version")?,
        last_message: get(row, "last_message")?,
    })
}

/// Reads the labels and versions of the listed hosts, a chunk of ids at a time.
async fn fill_labels_and_versions(pool: &AnyPool, hosts: &mut [HostSummary]) -> FleetResult<()> {
    let mut at: BTreeMap<String, usize> = BTreeMap::new();
    for (i, h) in hosts.iter().enumerate() {
        at.insert(h.id.clone(), i);
    }
    let ids: Vec<String> = hosts.iter().map(|h| h.id.clone()).collect();
    for chunk in ids.chunks(IN_CHUNK) {
        let mut sql = Sql::new("SELECT host_id, key, value FROM host_labels WHERE host_id IN ");
        sql.list(chunk);
        for row in sql
            .query()
            .fetch_all(pool)
            .await
            .map_err(db("reading host labels"))?
        {
            if let Some(&i) = at.get(&get::<String>(&row, "host_id")?) {
                hosts[i]
                    .labels
                    .insert(get(&row, "key")?, get(&row, "value")?);
            }
        }
        let mut sql =
            Sql::new("SELECT host_id, component, version FROM host_versions WHERE host_id IN ");
        sql.list(chunk);
        for row in sql
            .query()
            .fetch_all(pool)
            .await
            .map_err(db("reading host versions"))?
        {
            if let Some(&i) = at.get(&get::<String>(&row, "host_id")?) {
                hosts[i]
                    .versions
                    .insert(get(&row, "component")?, get(&row, "version")?);
            }
        }
    }
    Ok(())
}

pub(super) async fn host(
    pool: &AnyPool,
    id: String,
    events: u32,
    rule: LivenessRule,
    now: Millis,
) -> FleetResult<Option<HostDetail>> {
    let mut sql = Sql::new(SUMMARY_COLUMNS);
    sql.push(" WHERE h.id = ").text(&id);
    let row = sql
        .query()
        .fetch_optional(pool)
        .await
        .map_err(db("reading a host"))?;
    let Some(row) = row else { return Ok(None) };
    let mut summary = [summary(&row, rule, now)?];
    fill_labels_and_versions(pool, &mut summary).await?;
    let [host] = summary;
    let slots: Vec<SlotReport> = from_json("slots", &get::<String>(&row, "slots")?)?;
    let mut sql = Sql::new("SELECT received, body FROM events WHERE host_id = ");
    sql.text(&id)
        .push(" ORDER BY seq DESC LIMIT ")
        .int(i64::from(events));
    let rows = sql
        .query()
        .fetch_all(pool)
        .await
        .map_err(db("reading a host's events"))?;
    let events = rows
        .iter()
        .map(|r| {
            Ok(StoredEvent {
                event: from_json::<Event>("event", &get::<String>(r, "body")?)?,
                received: rfc3339(get(r, "received")?),
            })
        })
        .collect::<FleetResult<Vec<_>>>()?;
    Ok(Some(HostDetail {
        host,
        slots,
        booted_slot: get(&row, "booted_slot")?,
        pending: get(&row, "pending")?,
        events,
    }))
}

pub(super) async fn patch_labels(
    pool: &AnyPool,
    id: String,
    patch: LabelsPatch,
) -> FleetResult<bool> {
    let mut tx = super::begin_write(pool, "starting a label change").await?;
    let mut sql = Sql::new("SELECT id FROM hosts WHERE id = ");
    sql.text(&id);
    let found = sql
        .query()
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("reading a host"))?;
    if found.is_none() {
        return Ok(false);
    }
    for (key, value) in &patch.labels {
        let sql = match value {
            Some(v) => {
                let mut sql =
                    Sql::new("INSERT INTO host_labels (host_id, key, value, source) VALUES (");
                sql.text(&id).push(", ").text(key).push(", ").text(v);
                sql.push(", 'operator') ON CONFLICT (host_id, key) DO UPDATE SET ");
                sql.push("value = excluded.value, source = excluded.source");
                sql
            }
            None => {
                let mut sql = Sql::new("DELETE FROM host_labels WHERE host_id = ");
                sql.text(&id).push(" AND key = ").text(key);
                sql
            }
        };
        sql.query()
            .execute(&mut *tx)
            .await
            .map_err(db("changing a host's labels"))?;
    }
    tx.commit().await.map_err(db("committing a label change"))?;
    Ok(true)
}

pub(super) async fn decommission(pool: &AnyPool, id: String, now: Millis) -> FleetResult<bool> {
    // The enrollment key goes: enrolling with it again makes a new host.
    let mut sql = Sql::new("UPDATE hosts SET enroll_key_hash = NULL, decommissioned_at = ");
    sql.int(now)
        .push(" WHERE id = ")
        .text(&id)
        .push(" AND decommissioned_at IS NULL");
    let done = sql
        .query()
        .execute(pool)
        .await
        .map_err(db("decommissioning a host"))?;
    Ok(done.rows_affected() > 0)
}

fn count_of(row: &AnyRow) -> FleetResult<u64> {
    Ok(u64::try_from(get::<i64>(row, "n")?).unwrap_or(0))
}

/// The fleet's counts: five grouped reads, run at once on the read pool (each is a scan of
/// the hosts or the recent failures; together they are the dashboard's overview).
pub(super) async fn counts(
    pool: &AnyPool,
    rule: LivenessRule,
    now: Millis,
    since: Millis,
) -> FleetResult<FleetCounts> {
    let (by_version, by_channel, by_state, by_liveness, recent_failures) = tokio::try_join!(
        version_counts(pool),
        channel_counts(pool),
        state_counts(pool),
        liveness_counts(pool, rule, now),
        failure_counts(pool, since),
    )?;
    Ok(FleetCounts {
        by_version,
        by_channel,
        by_state,
        by_liveness,
        recent_failures,
    })
}

type VersionKey = (String, String, String, String);

async fn version_counts(pool: &AnyPool) -> FleetResult<Vec<(VersionKey, u64)>> {
    let sql = Sql::new(
        "SELECT h.product, COALESCE(h.channel, '') AS channel, v.component, v.version, \
         COUNT(*) AS n FROM hosts h JOIN host_versions v ON v.host_id = h.id \
         WHERE h.decommissioned_at IS NULL GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
    );
    let rows = sql
        .query()
        .fetch_all(pool)
        .await
        .map_err(db("counting hosts by version"))?;
    rows.iter()
        .map(|r| {
            let key = (
                get(r, "product")?,
                get(r, "channel")?,
                get(r, "component")?,
                get(r, "version")?,
            );
            Ok((key, count_of(r)?))
        })
        .collect()
}

async fn state_counts(pool: &AnyPool) -> FleetResult<Vec<((String, String), u64)>> {
    let sql = Sql::new(
        "SELECT product, state, COUNT(*) AS n FROM hosts WHERE decommissioned_at IS NULL \
         GROUP BY product, state ORDER BY product, state",
    );
    let rows = sql
        .query()
        .fetch_all(pool)
        .await
        .map_err(db("counting hosts by state"))?;
    rows.iter()
        .map(|r| Ok(((get(r, "product")?, get(r, "state")?), count_of(r)?)))
        .collect()
}

async fn failure_counts(
    pool: &AnyPool,
    since: Millis,
) -> FleetResult<Vec<((String, String), u64)>> {
    let mut sql = Sql::new(
        "SELECT type, COALESCE(message, '') AS message, COUNT(*) AS n FROM events \
         WHERE type IN ('failed', 'rolled_back') AND received >= ",
    );
    sql.int(since).push(" GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2");
    let rows = sql
        .query()
        .fetch_all(pool)
        .await
        .map_err(db("counting recent failures"))?;
    rows.iter()
        .map(|r| Ok(((get(r, "type")?, get(r, "message")?), count_of(r)?)))
        .collect()
}

async fn channel_counts(pool: &AnyPool) -> FleetResult<Vec<((String, String), u64)>> {
    let sql = Sql::new(
        "SELECT product, COALESCE(channel, '') AS channel, COUNT(*) AS n FROM hosts \
         WHERE decommissioned_at IS NULL GROUP BY 1, 2 ORDER BY 1, 2",
    );
    let rows = sql
        .query()
        .fetch_all(pool)
        .await
        .map_err(db("counting hosts by channel"))?;
    let mut out = Vec::new();
    for r in rows {
        out.push(((get(&r, "product")?, get(&r, "channel")?), count_of(&r)?));
    }
    Ok(out)
}

async fn liveness_counts(
    pool: &AnyPool,
    rule: LivenessRule,
    now: Millis,
) -> FleetResult<Vec<(Liveness, u64)>> {
    let mut sql = Sql::new("SELECT CASE WHEN next_due IS NULL OR next_due >= ");
    sql.int(now - rule.grace)
        .push(" THEN 'online' WHEN next_due >= ");
    sql.int(now - rule.offline_after)
        .push(" THEN 'overdue' ELSE 'offline' END AS l, COUNT(*) AS n ");
    sql.push("FROM hosts WHERE decommissioned_at IS NULL GROUP BY 1 ORDER BY 1");
    let rows = sql
        .query()
        .fetch_all(pool)
        .await
        .map_err(db("counting hosts by liveness"))?;
    let mut out = Vec::new();
    for r in rows {
        let l = match get::<String>(&r, "l")?.as_str() {
            "online" => Liveness::Online,
            "overdue" => Liveness::Overdue,
            _ => Liveness::Offline,
        };
        out.push((l, count_of(&r)?));
    }
    Ok(out)
}
