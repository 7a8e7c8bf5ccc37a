//! Blocks of order and detail ids. Kitara numbers the rows it inserts itself, so that
//! one multi-row insert can write a whole batch and still answer every id; with several
//! nodes writing one database, each numbers from blocks it reserved in
//! `kitara_id_blocks`, so no two nodes ever hand out one id. A block starts past the
//! table's largest id too, so rows a tool inserted are never collided with.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, TransactionTrait, Value};

/// Which ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequence {
    Orders,
    Details,
}

impl Sequence {
    fn name(self) -> &'static str {
        match self {
            Sequence::Orders => "orders",
            Sequence::Details => "order_details",
        }
    }

    fn max_id(self) -> &'static str {
        match self {
            Sequence::Orders => "SELECT COALESCE(MAX(id), 0) + 1 FROM orders",
            Sequence::Details => "SELECT COALESCE(MAX(id), 0) + 1 FROM order_details",
        }
    }
}

/// Reserves `count` ids of `sequence` for this node alone; answers the first.
pub async fn reserve(
    db: &DatabaseConnection,
    sequence: Sequence,
    count: i64,
) -> Result<i64, DbErr> {
    let txn = db
        .begin_with_options(super::write_transaction_options())
        .await?;
    let lock = match txn.get_database_backend() {
        DbBackend::MySql => " FOR UPDATE",
        _ => "",
    };
    let sql = format!("SELECT next_id FROM kitara_id_blocks WHERE name = ?{lock}");
    let name = Value::from(sequence.name());
    let next: i64 = txn
        .query_one_raw(super::prepared(&txn, sql, [name.clone()]))
        .await?
        .ok_or_else(|| DbErr::Custom(format!("no id block row for {}", sequence.name())))?
        .try_get_by_index(0)?;
    let past_rows: i64 = txn
        .query_one_raw(super::prepared(&txn, sequence.max_id(), []))
        .await?
        .ok_or_else(|| DbErr::Custom("no MAX(id)".into()))?
        .try_get_by_index(0)?;
    let first = next.max(past_rows);
    let sql = "UPDATE kitara_id_blocks SET next_id = ? WHERE name = ?";
    txn.execute_raw(super::prepared(
        &txn,
        sql,
        [Value::from(first + count), name],
    ))
    .await?;
    txn.commit().await?;
    Ok(first)
}

/// Gives back the ids `from..to` of a block, if no node reserved past it since: a node
/// that stops, or renews its blocks, leaves no gap when it was the last to reserve.
pub async fn give_back(
    db: &DatabaseConnection,
    sequence: Sequence,
    from: i64,
    to: i64,
) -> Result<(), DbErr> {
    let sql = "UPDATE kitara_id_blocks SET next_id = ? WHERE name = ? AND next_id = ?";
    let values = [
        Value::from(from),
        Value::from(sequence.name()),
        Value::from(to),
    ];
    db.execute_raw(super::prepared(db, sql, values)).await?;
    Ok(())
}
