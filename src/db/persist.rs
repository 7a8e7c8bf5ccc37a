//! The write-through transaction of a batch of decided orders (layer 4 of SPEC.md).
//!
//! One transaction holds a guarded decrement per product for the batch's total, the
//! order rows, their detail rows, and the transaction's token. Besides BEGIN and COMMIT
//! it takes one round trip: all of it as one multi-statement request.
//!
//! These statements are sent as text, not prepared: a batch's size changes every time,
//! and prepared statements of ever-new shapes would churn sqlx's statement cache (each
//! eviction costs MySQL a round trip that stalls ~40 ms behind Nagle's algorithm) and
//! pay the server's per-parameter binding for thousands of values. Only integers Kitara
//! produced and its own hexadecimal token are written into the SQL, through `Sql`, which
//! accepts nothing else.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr};

use crate::domain::{OrderLine, ProductId};

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

/// A transaction token: lowercase hexadecimal digits and dashes only, so it can be
/// written into SQL text as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(parts: &[u128]) -> Self {
        let text = parts
            .iter()
            .map(|p| format!("{p:x}"))
            .collect::<Vec<_>>()
            .join("-");
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
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

/// SQL text that only ever receives integers and tokens.
struct Sql(String);

impl Sql {
    fn new(head: &str) -> Self {
        Self(String::from(head))
    }

    fn text(&mut self, text: &str) -> &mut Self {
        self.0.push_str(text);
        self
    }

    fn int(&mut self, value: i64) -> &mut Self {
        let _ = write!(self.0, "{value}");
        self
    }

    fn token(&mut self, token: &Token) -> &mut Self {
        let _ = write!(self.0, "'{}'", token.0);
        self
    }

    /// `(a, b, c)` for one row of integers.
    fn row(&mut self, first: bool, values: &[i64]) -> &mut Self {
        self.text(if first { "(" } else { ", (" });
        for (i, &value) in values.iter().enumerate() {
            if i > 0 {
                self.text(", ");
            }
            self.int(value);
        }
        self.text(")")
    }
}

/// Writes the batch inside `txn`; the caller commits.
///
/// The database reports the rows affected by all statements together. Every insert
/// either writes all its rows or fails the request, so what is left for the decrement
/// is exactly the number of products whose guard held.
pub async fn write_batch(
    txn: &DatabaseTransaction,
    orders: &[NewOrder<'_>],
    token: &Token,
) -> Result<(), WriteError> {
    let mut totals: BTreeMap<ProductId, i64> = BTreeMap::new();
    for line in orders.iter().flat_map(|o| o.lines) {
        *totals.entry(line.product).or_insert(0) += line.quantity;
    }
    let mut sql = Sql::new("");
    decrement(&mut sql, &totals);

    sql.text("; INSERT INTO orders (id, buyer_id, quantity, store_id) VALUES ");
    for (i, o) in orders.iter().enumerate() {
        sql.row(i == 0, &[o.id, o.buyer, o.total, o.store]);
    }
    sql.text("; INSERT INTO order_details (id, order_id, product_id, quantity) VALUES ");
    let mut details = 0u64;
    for o in orders {
        for (i, line) in o.lines.iter().enumerate() {
            let id = o.first_detail_id + i as i64;
            sql.row(details == 0, &[id, o.id, line.product.0, line.quantity]);
            details += 1;
        }
    }
    sql.text("; INSERT INTO kitara_commits (token, orders) VALUES (")
        .token(token)
        .text(", ")
        .int(orders.len() as i64)
        .text(")");

    let affected = txn.execute_unprepared(&sql.0).await?.rows_affected();
    let inserted = orders.len() as u64 + details + 1;
    let expected = totals.len() as u64;
    let matched = affected.saturating_sub(inserted);
    if matched != expected {
        return Err(WriteError::GuardTripped { expected, matched });
    }
    Ok(())
}

/// `SET current_stock = current_stock - q WHERE id = ? AND current_stock >= q` for every
/// product of the batch in one statement. Each product matches at most one row, so "rows
/// affected = number of products" proves that every product's guard held (MySQL counts
/// matched rows here, as SQLite does). Ascending id: concurrent writers lock rows in one
/// order.
fn decrement(sql: &mut Sql, totals: &BTreeMap<ProductId, i64>) {
    let mut case = Sql::new("CASE id");
    for (product, quantity) in totals {
        case.text(" WHEN ")
            .int(product.0)
            .text(" THEN ")
            .int(*quantity);
    }
    case.text(" END");
    sql.text("UPDATE products SET current_stock = current_stock - (")
        .text(&case.0)
        .text("), updated_at = CURRENT_TIMESTAMP WHERE deleted_at IS NULL AND current_stock >= (")
        .text(&case.0)
        .text(") AND id IN (");
    for (i, product) in totals.keys().enumerate() {
        if i > 0 {
            sql.text(", ");
        }
        sql.int(product.0);
    }
    sql.text(")");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_hold_only_integers() {
        let mut sql = Sql::new("VALUES ");
        sql.row(true, &[1, -2]).row(false, &[3, 4]);
        assert_eq!(sql.0, "VALUES (1, -2), (3, 4)");
    }

    #[test]
    fn tokens_are_hexadecimal() {
        let token = Token::new(&[255, 16, 1]);
        assert_eq!(token.as_str(), "ff-10-1");
        let mut sql = Sql::new("");
        sql.token(&token);
        assert_eq!(sql.0, "'ff-10-1'");
    }
}
