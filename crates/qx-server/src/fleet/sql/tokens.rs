//! Operator tokens, enrollment tokens and enrollment (one use taken and the host created in
//! one transaction), and the host-token lookup.

use qx_core::fleet::{Labels, Scope};
use sqlx::any::AnyRow;
use sqlx::AnyPool;
use sqlx::{Any, Transaction};

use super::bind::{from_json, get, to_json, Sql};
use super::{db, is_unique_violation};
use crate::fleet::store::{
    EnrollRefused, EnrolledHost, FleetError, FleetResult, HostAuth, Millis, NewEnrollmentToken,
    NewHost, NewOperatorToken, OperatorTokenRow, TokenHash,
};

pub(super) async fn create_operator_token(pool: &AnyPool, t: NewOperatorToken) -> FleetResult<()> {
    let mut sql =
        Sql::new("INSERT INTO operator_tokens (token_hash, name, scopes, created_at) VALUES (");
    sql.text(&t.hash.to_hex())
        .push(", ")
        .text(&t.name)
        .push(", ");
    sql.text(&to_json("scopes", &t.scopes)?)
        .push(", ")
        .int(t.now)
        .push(")");
    match sql.query().execute(pool).await {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => {
            Err(FleetError::Conflict(format!("operator token {:?}", t.name)))
        }
        Err(e) => Err(db("storing an operator token")(e)),
    }
}

const OPERATOR_COLUMNS: &str = "SELECT name, scopes, created_at, revoked_at FROM operator_tokens";

fn operator_row(row: &AnyRow) -> FleetResult<OperatorTokenRow> {
    let scopes: String = get(row, "scopes")?;
    Ok(OperatorTokenRow {
        name: get(row, "name")?,
        scopes: from_json::<Vec<Scope>>("operator token scopes", &scopes)?,
        created_at: get(row, "created_at")?,
        revoked_at: get(row, "revoked_at")?,
    })
}

pub(super) async fn operator_token(
    pool: &AnyPool,
    hash: TokenHash,
) -> FleetResult<Option<OperatorTokenRow>> {
    let mut sql = Sql::new(OPERATOR_COLUMNS);
    sql.push(" WHERE token_hash = ").text(&hash.to_hex());
    let row = sql
        .query()
        .fetch_optional(pool)
        .await
        .map_err(db("looking up an operator token"))?;
    row.as_ref().map(operator_row).transpose()
}

pub(super) async fn list_operator_tokens(pool: &AnyPool) -> FleetResult<Vec<OperatorTokenRow>> {
    let sql = Sql::new(&format!("{OPERATOR_COLUMNS} ORDER BY created_at, name"));
    let rows = sql
        .query()
        .fetch_all(pool)
        .await
        .map_err(db("listing operator tokens"))?;
    rows.iter().map(operator_row).collect()
}

pub(super) async fn revoke_operator_token(
    pool: &AnyPool,
    name: String,
    now: Millis,
) -> FleetResult<bool> {
    let mut sql = Sql::new("UPDATE operator_tokens SET revoked_at = ");
    sql.int(now)
        .push(" WHERE name = ")
        .text(&name)
        .push(" AND revoked_at IS NULL");
    let done = sql
        .query()
        .execute(pool)
        .await
        .map_err(db("revoking an operator token"))?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn create_enrollment_token(
    pool: &AnyPool,
    t: NewEnrollmentToken,
) -> FleetResult<()> {
    let mut sql = Sql::new(
        "INSERT INTO enrollment_tokens (id, token_hash, name, product, labels, uses, uses_left, \
         expires_at, created_at) VALUES (",
    );
    sql.text(&t.id).push(", ").text(&t.hash.to_hex()).push(", ");
    match &t.name {
        Some(n) => sql.text(n),
        None => sql.push("NULL"),
    };
    sql.push(", ").text(&t.product).push(", ");
    sql.text(&to_json("labels", &t.labels)?).push(", ");
    sql.int(i64::from(t.uses)).push(", ").int(i64::from(t.uses));
    sql.push(", ")
        .int(t.expires_at)
        .push(", ")
        .int(t.now)
        .push(")");
    match sql.query().execute(pool).await {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => {
            Err(FleetError::Conflict(format!("enrollment token {}", t.id)))
        }
        Err(e) => Err(db("storing an enrollment token")(e)),
    }
}

pub(super) async fn revoke_enrollment_token(
    pool: &AnyPool,
    id: String,
    now: Millis,
) -> FleetResult<bool> {
    let mut sql = Sql::new("UPDATE enrollment_tokens SET revoked_at = ");
    sql.int(now)
        .push(" WHERE id = ")
        .text(&id)
        .push(" AND revoked_at IS NULL");
    let done = sql
        .query()
        .execute(pool)
        .await
        .map_err(db("revoking an enrollment token"))?;
    Ok(done.rows_affected() > 0)
}

/// Takes one use of the token (the `UPDATE … WHERE uses_left > 0` is the atomic step: of two
/// enrollments racing for the last use, the second finds none left) and creates the host.
pub(super) async fn enroll(
    pool: &AnyPool,
    token: TokenHash,
    host: NewHost,
) -> FleetResult<Result<EnrolledHost, EnrollRefused>> {
    let hash = token.to_hex();
    let mut tx = super::begin_write(pool, "starting an enrollment").await?;
    if let Some(answer) = replay(&mut tx, &hash, &host).await? {
        tx.commit()
            .await
            .map_err(db("committing a repeated enrollment"))?;
        return Ok(answer);
    }
    let mut take =
        Sql::new("UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE token_hash = ");
    take.text(&hash)
        .push(" AND uses_left > 0 AND revoked_at IS NULL AND expires_at > ")
        .int(host.now)
        .push(" RETURNING id, product, labels");
    let taken = take
        .query()
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("taking a use of an enrollment token"))?;
    let Some(taken) = taken else {
        let why = refusal(&mut tx, &hash, host.now).await?;
        tx.rollback()
            .await
            .map_err(db("ending a refused enrollment"))?;
        return Ok(Err(why));
    };
    let token_id: String = get(&taken, "id")?;
    let product: String = get(&taken, "product")?;
    let token_labels: Labels =
        from_json("enrollment token labels", &get::<String>(&taken, "labels")?)?;
    insert_host(&mut tx, &host, &token_id, &product).await?;
    let mut labels = host.labels.clone();
    labels.extend(token_labels.clone());
    super::hosts::insert_labels(&mut tx, &host.id, &token_labels, "token").await?;
    super::hosts::insert_labels(&mut tx, &host.id, &host.labels, "host").await?;
    tx.commit().await.map_err(db("committing an enrollment"))?;
    Ok(Ok(EnrolledHost {
        id: host.id,
        product,
        labels,
    }))
}

/// An enrollment sent again with the key of a live host this token enrolled (the host never
/// got the answer): that host takes the new token hash (the lost one stops working) and keeps
/// its id, labels and the use it took. `None` when the key names no such host.
async fn replay(
    tx: &mut Transaction<'static, Any>,
    token_hash: &str,
    host: &NewHost,
) -> FleetResult<Option<Result<EnrolledHost, EnrollRefused>>> {
    let Some(key) = &host.enrollment_key else {
        return Ok(None);
    };
    let mut sql = Sql::new(
        "SELECT h.id, h.product, t.revoked_at FROM hosts h JOIN enrollment_tokens t \
         ON t.id = h.enrollment_token WHERE h.decommissioned_at IS NULL AND h.enroll_key_hash = ",
    );
    sql.text(&key.to_hex())
        .push(" AND t.token_hash = ")
        .text(token_hash);
    let Some(row) = sql
        .query()
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("looking up an enrollment key"))?
    else {
        return Ok(None);
    };
    if get::<Option<i64>>(&row, "revoked_at")?.is_some() {
        return Ok(Some(Err(EnrollRefused::Revoked)));
    }
    let id: String = get(&row, "id")?;
    let mut rotate = Sql::new("UPDATE hosts SET token_hash = ");
    rotate
        .text(&host.token_hash.to_hex())
        .push(" WHERE id = ")
        .text(&id);
    rotate
        .query()
        .execute(&mut **tx)
        .await
        .map_err(db("giving a host a new token"))?;
    let labels = host_labels(tx, &id).await?;
    Ok(Some(Ok(EnrolledHost {
        id,
        product: get(&row, "product")?,
        labels,
    })))
}

async fn host_labels(tx: &mut Transaction<'static, Any>, id: &str) -> FleetResult<Labels> {
    let mut sql = Sql::new("SELECT key, value FROM host_labels WHERE host_id = ");
    sql.text(id);
    let rows = sql
        .query()
        .fetch_all(&mut **tx)
        .await
        .map_err(db("reading a host's labels"))?;
    rows.iter()
        .map(|r| Ok((get(r, "key")?, get(r, "value")?)))
        .collect()
}

/// Why the token gave no use (read in the same transaction).
async fn refusal(
    tx: &mut Transaction<'static, Any>,
    hash: &str,
    now: Millis,
) -> FleetResult<EnrollRefused> {
    let mut sql = Sql::new(
        "SELECT uses_left, expires_at, revoked_at FROM enrollment_tokens WHERE token_hash = ",
    );
    sql.text(hash);
    let row = sql
        .query()
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("reading an enrollment token"))?;
    let Some(row) = row else {
        return Ok(EnrollRefused::Unknown);
    };
    if get::<Option<i64>>(&row, "revoked_at")?.is_some() {
        Ok(EnrollRefused::Revoked)
    } else if get::<i64>(&row, "expires_at")? <= now {
        Ok(EnrollRefused::Expired)
    } else {
        Ok(EnrollRefused::UsedUp)
    }
}

async fn insert_host(
    tx: &mut Transaction<'static, Any>,
    host: &NewHost,
    token_id: &str,
    product: &str,
) -> FleetResult<()> {
    let mut sql = Sql::new(
        "INSERT INTO hosts (id, token_hash, enrollment_token, product, hostname, enrolled_at, \
         enroll_key_hash) VALUES (",
    );
    sql.text(&host.id)
        .push(", ")
        .text(&host.token_hash.to_hex());
    sql.push(", ")
        .text(token_id)
        .push(", ")
        .text(product)
        .push(", ");
    match &host.hostname {
        Some(h) => sql.text(h),
        None => sql.push("NULL"),
    };
    sql.push(", ").int(host.now).push(", ");
    match &host.enrollment_key {
        Some(k) => sql.text(&k.to_hex()),
        None => sql.push("NULL"),
    };
    sql.push(")");
    match sql.query().execute(&mut **tx).await {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(FleetError::Conflict(format!(
            "host {} (or its enrollment key, used with another enrollment token)",
            host.id
        ))),
        Err(e) => Err(db("creating an enrolled host")(e)),
    }
}

pub(super) async fn host_by_token(
    pool: &AnyPool,
    hash: TokenHash,
) -> FleetResult<Option<HostAuth>> {
    let mut sql = Sql::new("SELECT id, product, decommissioned_at FROM hosts WHERE token_hash = ");
    sql.text(&hash.to_hex());
    let row = sql
        .query()
        .fetch_optional(pool)
        .await
        .map_err(db("looking up a host token"))?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(HostAuth {
        id: get(&row, "id")?,
        product: get(&row, "product")?,
        decommissioned: get::<Option<i64>>(&row, "decommissioned_at")?.is_some(),
    }))
}
