//! Idempotency keys: looking a stored key up, finding which keys of a refused batch
//! were taken, and purging keys past their time.
//!
//! Keys are written only with what they answered, in the writer's transaction
//! (`persist`); the database's primary key on them is what makes a retry that races
//! its original book once.

use chrono::NaiveDateTime;
use sea_orm::{ConnectionTrait, DbErr, Value};

use crate::domain::{Fingerprint, IdempotencyKey, OrderId};

/// A stored key: what it is bound to, and the order its request placed or ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub fingerprint: Fingerprint,
    pub order_id: OrderId,
}

pub async fn stored(
    db: &impl ConnectionTrait,
    key: &IdempotencyKey,
) -> Result<Option<StoredKey>, DbErr> {
    let sql = "SELECT fingerprint, order_id FROM idempotency_keys WHERE idempotency_key = ?";
    let Some(row) = db
        .query_one_raw(super::prepared(
            db,
            sql,
            [Value::from(key.as_bytes().to_vec())],
        ))
        .await?
    else {
        return Ok(None);
    };
    let fingerprint: Vec<u8> = row.try_get_by_index(0)?;
    let fingerprint = fingerprint
        .try_into()
        .map_err(|_| DbErr::Custom("a stored fingerprint is not 16 bytes".into()))?;
    Ok(Some(StoredKey {
        fingerprint: Fingerprint(fingerprint),
        order_id: OrderId(row.try_get_by_index(1)?),
    }))
}

/// Keys looked up per statement; a shorter list is padded with its first key, so the
/// statement has one shape and stays in the statement cache.
const TAKEN_CHUNK: usize = 32;

/// Which of these keys are already stored.
pub async fn taken(db: &impl ConnectionTrait, keys: &[&[u8]]) -> Result<Vec<Vec<u8>>, DbErr> {
    let placeholders = vec!["?"; TAKEN_CHUNK].join(", ");
    let sql = format!(
        "SELECT idempotency_key FROM idempotency_keys WHERE idempotency_key IN ({placeholders})"
    );
    let mut found = Vec::new();
    for chunk in keys.chunks(TAKEN_CHUNK) {
        let values: Vec<Value> = (0..TAKEN_CHUNK)
            .map(|i| Value::from(chunk.get(i).unwrap_or(&chunk[0]).to_vec()))
            .collect();
        for row in db.query_all_raw(super::prepared(db, &sql, values)).await? {
            found.push(row.try_get_by_index::<Vec<u8>>(0)?);
        }
    }
    Ok(found)
}

/// One step of the purge's sweep through the keys in key order: deletes the keys
/// stored before `before` (UTC) among the `limit` keys after `after` (from the first
/// key when `None`). Returns how many it deleted, and where the next step starts
/// (`None` once the sweep has reached the last key).
pub async fn purge_step(
    db: &impl ConnectionTrait,
    before: NaiveDateTime,
    after: Option<&[u8]>,
    limit: u32,
) -> Result<(u64, Option<Vec<u8>>), DbErr> {
    let after = after.unwrap_or_default().to_vec();
    // The last key of this step's range, if the range is full.
    let end: Option<Vec<u8>> = db
        .query_one_raw(super::prepared(
            db,
            "SELECT idempotency_key FROM idempotency_keys WHERE idempotency_key > ? \
             ORDER BY idempotency_key LIMIT 1 OFFSET ?",
            [
                Value::from(after.clone()),
                Value::from(limit.saturating_sub(1)),
            ],
        ))
        .await?
        .map(|row| row.try_get_by_index(0))
        .transpose()?;
    let deleted = match &end {
        Some(end) => {
            db.execute_raw(super::prepared(
                db,
                "DELETE FROM idempotency_keys WHERE idempotency_key > ? \
                 AND idempotency_key <= ? AND created_at < ?",
                [
                    Value::from(after),
                    Value::from(end.clone()),
                    Value::from(before),
                ],
            ))
            .await?
        }
        None => {
            db.execute_raw(super::prepared(
                db,
                "DELETE FROM idempotency_keys WHERE idempotency_key > ? AND created_at < ?",
                [Value::from(after), Value::from(before)],
            ))
            .await?
        }
    };
    Ok((deleted.rows_affected(), end))
}
