//! Idempotency keys: looking a stored answer up, finding which keys of a refused batch
//! were taken, and purging keys past their time.
//!
//! Keys are written only with what they answered, in the writer's transaction
//! (`persist`); the database's primary key on them is what makes a retry that races
//! its original book once.

use chrono::NaiveDateTime;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};

use crate::domain::{Fingerprint, IdempotencyKey};

/// The answer a key keeps: what it was bound to, and the `data` of its answer 200.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    pub fingerprint: Fingerprint,
    pub response: Vec<u8>,
}

pub async fn stored_answer(
    db: &impl ConnectionTrait,
    key: &IdempotencyKey,
) -> Result<Option<StoredAnswer>, DbErr> {
    let sql = "SELECT fingerprint, response FROM idempotency_keys WHERE idempotency_key = ?";
    let Some(row) = db
        .query_one_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
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
        .map_err(|_| DbErr::Custom("a stored fingerprint is not 32 bytes".into()))?;
    Ok(Some(StoredAnswer {
        fingerprint: Fingerprint(fingerprint),
        response: row.try_get_by_index(1)?,
    }))
}

/// Keys looked up per statement; a shorter list is padded with its first key, so the
/// statement has one shape and stays in the statement cache.
const TAKEN_CHUNK: usize = 32;

/// Which of these keys are already stored.
pub async fn taken(db: &impl ConnectionTrait, keys: &[&[u8]]) -> Result<Vec<Vec<u8>>, DbErr> {
    let backend = db.get_database_backend();
    let placeholders = vec!["?"; TAKEN_CHUNK].join(", ");
    let sql = format!(
        "SELECT idempotency_key FROM idempotency_keys WHERE idempotency_key IN ({placeholders})"
    );
    let mut found = Vec::new();
    for chunk in keys.chunks(TAKEN_CHUNK) {
        let values: Vec<Value> = (0..TAKEN_CHUNK)
            .map(|i| Value::from(chunk.get(i).unwrap_or(&chunk[0]).to_vec()))
            .collect();
        for row in db
            .query_all_raw(Statement::from_sql_and_values(backend, &sql, values))
            .await?
        {
            found.push(row.try_get_by_index::<Vec<u8>>(0)?);
        }
    }
    Ok(found)
}

/// Deletes up to `limit` keys stored before `before` (UTC), oldest first; returns how
/// many it deleted.
pub async fn purge(
    db: &impl ConnectionTrait,
    before: NaiveDateTime,
    limit: u32,
) -> Result<u64, DbErr> {
    let backend = db.get_database_backend();
    // MySQL takes LIMIT on DELETE but not in an IN subquery; SQLite (as built by sqlx)
    // the other way round.
    let sql = match backend {
        DbBackend::MySql => {
            "DELETE FROM idempotency_keys WHERE created_at < ? ORDER BY created_at LIMIT ?"
        }
        _ => {
            "DELETE FROM idempotency_keys WHERE idempotency_key IN \
             (SELECT idempotency_key FROM idempotency_keys WHERE created_at < ? \
             ORDER BY created_at LIMIT ?)"
        }
    };
    let result = db
        .execute_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [Value::from(before), Value::from(limit)],
        ))
        .await?;
    Ok(result.rows_affected())
}
