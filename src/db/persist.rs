//! The write-through transaction of a batch of decided orders (layer 4 of SPEC.md).
//!
//! One transaction holds a guarded decrement per product for the batch's total, the
//! order rows and their detail rows. Statements come in a few fixed sizes (powers of two
//! up to `MAX_CHUNK`) so that every connection's prepared-statement cache holds all of
//! them and never evicts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::NaiveDateTime;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, Statement, Value};

use crate::domain::{OrderLine, ProductId};

/// Largest number of rows one statement writes.
const MAX_CHUNK: usize = 256;

/// An order ready to be written, with the ids Kitara gave it.
#[derive(Debug)]
pub struct NewOrder<'a> {
    pub id: i64,
    pub buyer: i64,
    pub store: i64,
    pub total: i64,
    /// Detail rows take consecutive ids from here, one per line.
    pub first_detail_id: i64,
    pub lines: &'a [OrderLine],
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A guarded decrement matched fewer rows than products: the database has less
    /// stock than memory believed (or the product is gone).
    #[error("stock guard tripped: {matched} of {expected} products had enough stock")]
    GuardTripped { expected: u64, matched: u64 },
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// Writes the batch inside `txn`; the caller commits.
pub async fn write_batch(
    txn: &DatabaseTransaction,
    orders: &[NewOrder<'_>],
    token: &str,
    now: NaiveDateTime,
) -> Result<(), WriteError> {
    let mut totals: BTreeMap<ProductId, i64> = BTreeMap::new();
    for line in orders.iter().flat_map(|o| o.lines) {
        *totals.entry(line.product).or_insert(0) += line.quantity;
    }
    // Ascending product id: concurrent transactions lock rows in one order.
    let totals: Vec<(ProductId, i64)> = totals.into_iter().collect();
    for chunk in totals.chunks(MAX_CHUNK) {
        decrement(txn, chunk, now).await?;
    }

    let mut rest = orders;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(chunk_len(rest.len()));
        insert_orders(txn, chunk, token, now).await?;
        rest = tail;
    }

    let details: Vec<(i64, i64, &OrderLine)> = orders
        .iter()
        .flat_map(|o| {
            o.lines
                .iter()
                .enumerate()
                .map(move |(i, line)| (o.first_detail_id + i as i64, o.id, line))
        })
        .collect();
    let mut rest = &details[..];
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(chunk_len(rest.len()));
        insert_details(txn, chunk, now).await?;
        rest = tail;
    }
    Ok(())
}

/// The largest power of two not above `n`, capped at `MAX_CHUNK`.
fn chunk_len(n: usize) -> usize {
    debug_assert!(n > 0);
    MAX_CHUNK.min(1 << n.ilog2())
}

/// `SET current_stock = current_stock - q WHERE id = ? AND current_stock >= q` for up to
/// `MAX_CHUNK` products in one statement. Every product matches at most one row, so
/// "rows affected = number of products" proves that each product's guard held. The list
/// is padded with product 0 (never an id) to a power of two to keep the shapes few.
async fn decrement(
    txn: &DatabaseTransaction,
    chunk: &[(ProductId, i64)],
    now: NaiveDateTime,
) -> Result<(), WriteError> {
    let padded = chunk.len().next_power_of_two();
    let mut case = String::from("CASE id");
    for _ in 0..padded {
        case.push_str(" WHEN ? THEN ?");
    }
    case.push_str(" END");
    let mut sql = format!(
        "UPDATE products SET current_stock = current_stock - ({case}), updated_at = ? \
         WHERE deleted_at IS NULL AND current_stock >= ({case}) AND id IN ("
    );
    push_placeholders(&mut sql, padded);
    sql.push(')');

    let pairs = chunk
        .iter()
        .map(|&(p, q)| (p.0, q))
        .chain(std::iter::repeat((0, 0)))
        .take(padded);
    let mut values: Vec<Value> = Vec::with_capacity(padded * 5 + 1);
    for (p, q) in pairs.clone() {
        values.push(p.into());
        values.push(q.into());
    }
    values.push(now.into());
    for (p, q) in pairs.clone() {
        values.push(p.into());
        values.push(q.into());
    }
    values.extend(pairs.map(|(p, _)| Value::from(p)));

    let result = txn
        .execute_raw(Statement::from_sql_and_values(
            txn.get_database_backend(),
            sql,
            values,
        ))
        .await?;
    let expected = chunk.len() as u64;
    let matched = result.rows_affected();
    if matched != expected {
        return Err(WriteError::GuardTripped { expected, matched });
    }
    Ok(())
}

async fn insert_orders(
    txn: &DatabaseTransaction,
    chunk: &[NewOrder<'_>],
    token: &str,
    now: NaiveDateTime,
) -> Result<(), DbErr> {
    let mut sql = String::from(
        "INSERT INTO orders (id, buyer_id, quantity, store_id, tx_token, created_at, updated_at) VALUES ",
    );
    push_rows(&mut sql, chunk.len(), 7);
    let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 7);
    for o in chunk {
        values.extend([
            o.id.into(),
            o.buyer.into(),
            o.total.into(),
            o.store.into(),
            token.into(),
            now.into(),
            now.into(),
        ]);
    }
    txn.execute_raw(Statement::from_sql_and_values(
        txn.get_database_backend(),
        sql,
        values,
    ))
    .await?;
    Ok(())
}

async fn insert_details(
    txn: &DatabaseTransaction,
    chunk: &[(i64, i64, &OrderLine)],
    now: NaiveDateTime,
) -> Result<(), DbErr> {
    let mut sql = String::from(
        "INSERT INTO order_details (id, order_id, product_id, quantity, created_at, updated_at) VALUES ",
    );
    push_rows(&mut sql, chunk.len(), 6);
    let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 6);
    for &(id, order, line) in chunk {
        values.extend([
            id.into(),
            order.into(),
            line.product.0.into(),
            line.quantity.into(),
            now.into(),
            now.into(),
        ]);
    }
    txn.execute_raw(Statement::from_sql_and_values(
        txn.get_database_backend(),
        sql,
        values,
    ))
    .await?;
    Ok(())
}

/// `(?, ?, ?), (?, ?, ?)` for `rows` rows of `columns` values.
fn push_rows(sql: &mut String, rows: usize, columns: usize) {
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        push_placeholders(sql, columns);
        sql.push(')');
    }
}

fn push_placeholders(sql: &mut String, n: usize) {
    for i in 0..n {
        let _ = write!(sql, "{}?", if i > 0 { ", " } else { "" });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_powers_of_two_up_to_the_cap() {
        assert_eq!(chunk_len(1), 1);
        assert_eq!(chunk_len(3), 2);
        assert_eq!(chunk_len(255), 128);
        assert_eq!(chunk_len(256), 256);
        assert_eq!(chunk_len(10_000), 256);
    }

    #[test]
    fn rows_have_one_placeholder_per_column() {
        let mut sql = String::new();
        push_rows(&mut sql, 2, 3);
        assert_eq!(sql, "(?, ?, ?), (?, ?, ?)");
    }
}
