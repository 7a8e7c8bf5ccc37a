//! Idempotency keys: looking a stored key up, finding which keys of a refused batch
//! were taken, and purging keys past their time.
//!
//! Keys are written only with what they answered, in the writer's transaction
//! (`persist`); the database's primary key on them is what makes a retry that races
//! its original book once.

use chrono::NaiveDateTime;
use sea_orm::{ConnectionTrait, DbErr, Value};

use crate::domain::{Fingerprint, IdempotencyKey, OrderId};

/// A stored key: what it is bound to, and the order its request placed or ended; or,
/// for an admin write, the answer it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub fingerprint: Fingerprint,
    pub order_id: OrderId,
    /// An admin write's status and `data`, as the database had it at COMMIT.
    pub answer: Option<(u16, String)>,
}

pub async fn stored(
    db: &impl ConnectionTrait,
    key: &IdempotencyKey,
) -> Result<Option<StoredKey>, DbErr> {
    let sql = "SELECT fingerprint, order_id, answer_status, answer FROM idempotency_keys \
               WHERE idempotency_key = ?";
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
    let status: Option<i32> = row.try_get_by_index(2)?;
    let answer: Option<String> = row.try_get_by_index(3)?;
    Ok(Some(StoredKey {
        fingerprint: Fingerprint(fingerprint),
        order_id: OrderId(row.try_get_by_index(1)?),
        answer: status.and_then(|s| u16::try_from(s).ok()).zip(answer),
    }))
}

/// What an admin write answers with: the row it made or changed, as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerOf {
    User(i64),
    Store(i64),
    Product(i64),
}

/// Stores an admin write's key in its transaction, after the write, with its answer
/// made by the database from the row as the write left it: the answer a retry gets.
pub(crate) async fn store_admin(
    db: &impl ConnectionTrait,
    key: &IdempotencyKey,
    fingerprint: &Fingerprint,
    status: u16,
    answer: AnswerOf,
) -> Result<u64, DbErr> {
    let (data, id) = match answer {
        AnswerOf::User(id) => ("JSON_OBJECT('id', id, 'name', name) FROM users", id),
        AnswerOf::Store(id) => (
            "JSON_OBJECT('id', id, 'store_name', store_name, 'user_id', user_id) FROM stores",
            id,
        ),
        AnswerOf::Product(id) => (
            "JSON_OBJECT('id', id, 'product_name', product_name, 'current_stock', current_stock, \
             'store_id', store_id, 'max_per_customer', max_per_customer) FROM products",
            id,
        ),
    };
    let sql = format!(
        "INSERT INTO idempotency_keys (idempotency_key, fingerprint, order_id, answer_status, answer) \
         SELECT ?, ?, 0, ?, {data} WHERE id = ?"
    );
    let values = [
        Value::from(key.as_bytes().to_vec()),
        Value::from(fingerprint.0.to_vec()),
        Value::from(i32::from(status)),
        Value::from(id),
    ];
    Ok(db
        .execute_raw(super::prepared(db, &sql, values))
        .await?
        .rows_affected())
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
