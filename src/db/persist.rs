//! The write-through transaction of a batch of decisions (layer 4 of SPEC.md).
//!
//! One transaction holds, for everything the store actors decided since the last one:
//! the change of every product's stock (units taken by new orders, units given back by
//! cancelled and expired holds) under a guard, the new order rows and their detail rows,
//! the status of every hold that ended (only if it is still `locked`), the idempotency
//! keys of the keyed requests, and the transaction's token. Besides BEGIN and COMMIT it
//! takes one round trip: all of it as one multi-statement request.
//!
//! These statements are sent as text, not prepared: a batch's size changes every time,
//! and prepared statements of ever-new shapes would churn sqlx's statement cache (each
//! eviction costs MySQL a round trip that stalls ~40 ms behind Nagle's algorithm) and
//! pay the server's per-parameter binding for thousands of values. Only values Kitara
//! produced are written into the SQL, through `Sql`, which accepts integers, Kitara's
//! hexadecimal tokens, its own status words and timestamps, and bytes written as
//! hexadecimal literals (keys and answers): nothing a client sent reaches the SQL text
//! as text.

use std::collections::BTreeMap;

use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, ExecResult, Statement, Value};

use super::events::{self, EventDraft, Stored};
use super::keys;
use super::sql::Sql;
pub use super::sql::Token;
use super::write::{AdminWrite, Fence, KeyRecord};
use crate::domain::{Deadline, Fingerprint, IdempotencyKey, OrderLine, OrderStatus, ProductId};

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
    /// When the hold expires; `None` holds until confirmed or cancelled.
    pub expires_at: Option<Deadline>,
}

/// A hold that ends: its order leaves `locked` for `status`.
#[derive(Debug)]
pub struct EndedHold<'a> {
    pub order_id: i64,
    pub status: OrderStatus,
    /// The units that go back to the stock: the order's lines, unless it was confirmed.
    pub returned: &'a [OrderLine],
}

/// An idempotency key, what it is bound to, and the order its request wrote.
#[derive(Debug)]
pub struct KeyRow<'a> {
    pub key: &'a [u8],
    pub fingerprint: &'a [u8; 16],
    pub order_id: i64,
}

/// Everything one transaction writes.
#[derive(Debug, Default)]
pub struct Batch<'a> {
    pub orders: Vec<NewOrder<'a>>,
    pub ended: Vec<EndedHold<'a>>,
    pub keys: Vec<KeyRow<'a>>,
    /// Written after the rest, one prepared statement or two each: they are rare, and
    /// they carry the owner's text (names, reasons), which only travels as a bound
    /// value.
    pub admin: Vec<AdminRow<'a>>,
    /// The events of the orders' changes, rendered (an admin write's event is rendered
    /// and written with it, once the database gave a new product its id).
    pub events: Vec<Stored>,
    /// The stores whose writes these are, each with the epoch its node owns it at: the
    /// transaction commits only if every one of them is still owned at that epoch.
    pub fences: Vec<Fence>,
}

/// An admin write, with its event and that event's number if events are on.
#[derive(Debug, Clone, Copy)]
pub struct AdminRow<'a> {
    pub change: &'a AdminWrite,
    pub event: Option<(i64, &'a EventDraft)>,
    pub key: Option<&'a KeyRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A guard matched fewer rows than expected: the database has less stock than
    /// memory believed (or the product is gone), or a hold that memory thought locked
    /// is not.
    #[error("guard tripped: {matched} of {expected} guarded rows matched")]
    GuardTripped { expected: u64, matched: u64 },
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// How one product's stock changes in a batch.
#[derive(Debug, Default, Clone, Copy)]
struct StockChange {
    taken: i64,
    returned: i64,
    /// The product must not be deleted: units are taken from it, or the owner changes
    /// its stock. A product that only gets units back from ended holds may be.
    live: bool,
}

/// What one transaction runs: the batch's statements, owned, so that the transaction
/// can run to its end on a task of its own (`db::call`) whoever stops waiting for it.
#[derive(Debug)]
pub struct Plan {
    /// The multi-statement request: stock, orders, details, ended holds, keys, token.
    sql: String,
    /// Rows its guarded statements must match: one per product, one per ended hold.
    guarded: u64,
    /// Rows its inserts write.
    inserted: u64,
    /// Run after it, one or two prepared statements each, and one more for its event
    /// and for its key.
    admin: Vec<AdminPlan>,
    /// Send its statements one request each (see `statements_apart`).
    apart: bool,
}

/// An admin write as a plan holds it.
#[derive(Debug)]
struct AdminPlan {
    change: AdminWrite,
    event: Option<(i64, EventDraft)>,
    key: Option<(IdempotencyKey, Fingerprint)>,
}

/// Runs the plan inside `txn`; the caller commits. Answers, for each admin write in
/// turn, the id of the row it created (for `Adopt`, the products adopted; else 0).
///
/// The database reports the rows affected by all statements together. Every insert
/// either writes all its rows or fails the request, so what is left is exactly the
/// number of guarded rows that matched: one per product whose stock guard held, one
/// per hold that was still locked. Each guard matches at most its own row, so the total
/// is right only if every guard held.
pub async fn write_plan(txn: &DatabaseTransaction, plan: &Plan) -> Result<Vec<i64>, WriteError> {
    let affected = if plan.apart {
        let mut affected = 0;
        // No literal of a plan holds "; " (numbers, hex bytes, timestamps, a hex token).
        for statement in plan.sql.split("; ").filter(|s| !s.trim().is_empty()) {
            affected += txn.execute_unprepared(statement).await?.rows_affected();
        }
        affected
    } else {
        txn.execute_unprepared(&plan.sql).await?.rows_affected()
    };
    let matched = affected.saturating_sub(plan.inserted);
    if matched != plan.guarded {
        return Err(WriteError::GuardTripped {
            expected: plan.guarded,
            matched,
        });
    }
    let mut answered = Vec::with_capacity(plan.admin.len());
    for AdminPlan { change, event, key } in &plan.admin {
        let created = write_admin(txn, change).await?;
        if let Some((seq, draft)) = event {
            events::insert_one(txn, &draft.render_product(*seq, ProductId(created))).await?;
        }
        if let (Some((key, fingerprint)), Some((status, answer))) = (key, change.answer(created)) {
            let stored = keys::store_admin(txn, key, fingerprint, status, answer).await?;
            if stored != 1 {
                return Err(WriteError::GuardTripped {
                    expected: 1,
                    matched: stored,
                });
            }
        }
        answered.push(created);
    }
    Ok(answered)
}

impl Plan {
    /// The statements that write `batch` and, with it, its transaction's `token`.
    /// `stock_guard` is off only in the test that shows the schema's CHECK alone stops
    /// oversell (`Settings::database_guard`).
    pub fn new(batch: &Batch<'_>, token: &Token, stock_guard: bool) -> Self {
        let mut stock: BTreeMap<ProductId, StockChange> = BTreeMap::new();
        for line in batch.orders.iter().flat_map(|o| o.lines) {
            let change = stock.entry(line.product).or_default();
            change.taken += line.quantity;
            change.live = true;
        }
        for line in batch.ended.iter().flat_map(|e| e.returned) {
            stock.entry(line.product).or_default().returned += line.quantity;
        }
        // The owner's changes of a product take part in the one ordered pass over the
        // products' rows: a restock is a guarded delta like an order's, and an edit or a
        // deletion locks its row there too, in id order, so that two writers' transactions
        // never wait for each other's rows in opposite orders.
        for row in &batch.admin {
            match row.change {
                AdminWrite::Restock { product, delta, .. } => {
                    let entry = stock.entry(*product).or_default();
                    if *delta < 0 {
                        entry.taken -= delta;
                    } else {
                        entry.returned += delta;
                    }
                    entry.live = true;
                }
                AdminWrite::EditProduct { product, .. } | AdminWrite::DeleteProduct { product } => {
                    stock.entry(*product).or_default();
                }
                _ => {}
            }
        }

        let mut sql = Sql::new("");
        let mut guarded = 0u64;
        let mut inserted = 1u64; // the token row
        if !batch.fences.is_empty() {
            fence(&mut sql, &batch.fences);
            sql.text("; ");
            guarded += batch.fences.len() as u64;
        }
        if !stock.is_empty() {
            change_stock(&mut sql, &stock, stock_guard);
            sql.text("; ");
            guarded += stock.len() as u64;
        }
        if !batch.orders.is_empty() {
            sql.text("INSERT INTO orders (id, buyer_id, quantity, store_id, expires_at) VALUES ");
            for (i, o) in batch.orders.iter().enumerate() {
                sql.text(if i == 0 { "(" } else { ", (" })
                    .list([o.id, o.buyer, o.total, o.store])
                    .text(", ")
                    .timestamp(o.expires_at)
                    .text(")");
            }
            sql.text("; INSERT INTO order_details (id, order_id, product_id, quantity) VALUES ");
            let mut details = 0u64;
            for o in &batch.orders {
                for (i, line) in o.lines.iter().enumerate() {
                    let id = o.first_detail_id + i as i64;
                    sql.row(details == 0, &[id, o.id, line.product.0, line.quantity]);
                    details += 1;
                }
            }
            sql.text("; ");
            inserted += batch.orders.len() as u64 + details;
        }
        for status in [
            OrderStatus::Confirmed,
            OrderStatus::Cancelled,
            OrderStatus::Expired,
        ] {
            let ids: Vec<i64> = batch
                .ended
                .iter()
                .filter(|e| e.status == status)
                .map(|e| e.order_id)
                .collect();
            if ids.is_empty() {
                continue;
            }
            // Only a locked hold changes, and only once: the database holds that line too.
            sql.text("UPDATE orders SET status = ")
            .status(status)
            .text(", updated_at = CURRENT_TIMESTAMP WHERE status = 'locked' AND deleted_at IS NULL AND id IN (")
            .list(ids.iter().copied())
            .text("); ");
            guarded += ids.len() as u64;
        }
        if !batch.keys.is_empty() {
            sql.text(
                "INSERT INTO idempotency_keys (idempotency_key, fingerprint, order_id) VALUES ",
            );
            for (i, key) in batch.keys.iter().enumerate() {
                sql.text(if i == 0 { "(" } else { ", (" })
                    .bytes(key.key)
                    .text(", ")
                    .bytes(key.fingerprint)
                    .text(", ")
                    .int(key.order_id)
                    .text(")");
            }
            sql.text("; ");
            inserted += batch.keys.len() as u64;
        }
        if !batch.events.is_empty() {
            inserted += events::insert(&mut sql, &batch.events);
            sql.text("; ");
        }
        sql.text("INSERT INTO kitara_commits (token, orders) VALUES (")
            .token(token)
            .text(", ")
            .int((batch.orders.len() + batch.ended.len()) as i64)
            .text(")");

        Plan {
            sql: sql.0,
            guarded,
            inserted,
            admin: batch
                .admin
                .iter()
                .map(|row| AdminPlan {
                    change: row.change.clone(),
                    event: row.event.map(|(seq, draft)| (seq, draft.clone())),
                    key: row.key.map(|k| (k.key.clone(), k.fingerprint)),
                })
                .collect(),
            apart: false,
        }
    }

    /// Sends the plan's statements one request each instead of one multi-statement
    /// request. Needed on Galera: a transaction aborted there by another node's
    /// replicated write (a brute-force abort) in the middle of a multi-statement
    /// request is rolled back, but the request's remaining statements then run on
    /// their own, each committed at once. Measured on a three-node cluster: of 3,000
    /// such transactions, 82 left a key row without its order. One statement per
    /// request, the statement after an abort fails with the abort's error instead.
    pub fn statements_apart(mut self, apart: bool) -> Self {
        self.apart = apart;
        self
    }
}

/// The fence: one row per store, matched on the store and the epoch its node loaded it
/// at, and changed (a read, or an update that leaves the row as it was, is no fence:
/// Galera certifies only the rows a transaction changes, and MariaDB skips rows an
/// update leaves unchanged). First in the transaction, in store order, so that every
/// transaction locks ownership rows before product rows, in one order.
fn fence(sql: &mut Sql, fences: &[Fence]) {
    sql.text("UPDATE kitara_store_owners SET fenced = fenced + 1 WHERE ");
    for (i, f) in fences.iter().enumerate() {
        sql.text(if i == 0 {
            "(store_id = "
        } else {
            " OR (store_id = "
        })
        .int(f.store.0)
        .text(" AND epoch = ")
        .int(f.epoch)
        .text(")");
    }
}

/// The SQL of one admin write. A change of a product that is gone (deleted behind
/// Kitara's back), or a delta that would take its stock below 0, trips a guard.
async fn write_admin(txn: &DatabaseTransaction, change: &AdminWrite) -> Result<i64, WriteError> {
    let run = |sql: &str, values: Vec<Value>| {
        txn.execute_raw(Statement::from_sql_and_values(
            txn.get_database_backend(),
            sql,
            values,
        ))
    };
    let guarded = |result: ExecResult| match result.rows_affected() {
        1 => Ok(result),
        matched => Err(WriteError::GuardTripped {
            expected: 1,
            matched,
        }),
    };
    let created = |result: ExecResult| {
        i64::try_from(result.last_insert_id())
            .map_err(|_| WriteError::Db(DbErr::Custom("an id beyond i64".into())))
    };
    match change {
        AdminWrite::NewUser { name } => {
            let result = run("INSERT INTO users (name) VALUES (?)", vec![name.into()]).await?;
            created(result)
        }
        AdminWrite::NewStore {
            name,
            owner,
            served_by,
        } => {
            let sql = "INSERT INTO stores (store_name, user_id) \
                       SELECT ?, id FROM users WHERE id = ? AND deleted_at IS NULL";
            let id = created(guarded(run(sql, vec![name.into(), owner.0.into()]).await?)?)?;
            // Its row in the ownership table: owned at once by the node that made it.
            match served_by {
                Some((node, lease)) => {
                    let sql = "INSERT INTO kitara_store_owners \
                               (store_id, owner, epoch, lease_expires_at, fenced) \
                               VALUES (?, ?, 1, NOW(3) + INTERVAL ? MICROSECOND, 1)";
                    let lease = i64::try_from(lease.as_micros()).unwrap_or(i64::MAX);
                    run(sql, vec![id.into(), node.as_str().into(), lease.into()]).await?;
                }
                None => {
                    let sql = "INSERT INTO kitara_store_owners (store_id) VALUES (?)";
                    run(sql, vec![id.into()]).await?;
                }
            }
            Ok(id)
        }
        AdminWrite::NewProduct {
            store,
            name,
            stock,
            limit,
        } => {
            let sql = "INSERT INTO products (product_name, current_stock, store_id, max_per_customer) \
                       SELECT ?, ?, id, ? FROM stores WHERE id = ? AND deleted_at IS NULL";
            let values = vec![
                name.into(),
                (*stock).into(),
                (*limit).into(),
                store.0.into(),
            ];
            let id = created(guarded(run(sql, values).await?)?)?;
            let sql =
                "INSERT INTO stock_movements (product_id, delta, reason) VALUES (?, ?, 'created')";
            run(sql, vec![id.into(), (*stock).into()]).await?;
            Ok(id)
        }
        AdminWrite::Restock {
            product,
            delta,
            reason,
        } => {
            // Its delta was applied, under its guard, with the batch's other stock changes.
            let sql = "INSERT INTO stock_movements (product_id, delta, reason) VALUES (?, ?, ?)";
            run(sql, vec![product.0.into(), (*delta).into(), reason.into()]).await?;
            Ok(0)
        }
        AdminWrite::EditProduct {
            product,
            name,
            limit,
        } => {
            let mut sql = String::from("UPDATE products SET updated_at = CURRENT_TIMESTAMP");
            let mut values: Vec<Value> = Vec::new();
            if let Some(name) = name {
                sql.push_str(", product_name = ?");
                values.push(name.into());
            }
            if let Some(limit) = limit {
                sql.push_str(", max_per_customer = ?");
                values.push((*limit).into());
            }
            sql.push_str(" WHERE id = ? AND deleted_at IS NULL");
            values.push(product.0.into());
            guarded(run(&sql, values).await?)?;
            Ok(0)
        }
        AdminWrite::DeleteProduct { product } => {
            let sql = "UPDATE products SET deleted_at = CURRENT_TIMESTAMP, updated_at = CURRENT_TIMESTAMP \
                       WHERE id = ? AND deleted_at IS NULL";
            guarded(run(sql, vec![product.0.into()]).await?)?;
            Ok(0)
        }
        AdminWrite::Adopt => {
            let sql = format!(
                "INSERT INTO stock_movements (product_id, delta, reason) \
                 SELECT p.id, p.current_stock + COALESCE(({}), 0), 'adopted' FROM products p \
                 WHERE NOT EXISTS (SELECT 1 FROM stock_movements m WHERE m.product_id = p.id)",
                LIVE_UNITS_OF_P
            );
            let result = run(&sql, Vec::new()).await?;
            Ok(result.rows_affected() as i64)
        }
    }
}

/// The units of live order lines (held or sold) of the product `p`: the second term of
/// the ledger's equation, which `kitara check` proves. A line counts as Kitara counts it
/// when it loads a hold: by its order's status alone.
pub(crate) const LIVE_UNITS_OF_P: &str = "SELECT SUM(d.quantity) FROM order_details d \
     JOIN orders o ON o.id = d.order_id WHERE d.product_id = p.id \
     AND o.status IN ('locked', 'confirmed') AND o.deleted_at IS NULL";

/// `SET current_stock = current_stock + d WHERE id = ? AND current_stock + d >= 0` for
/// every product of the batch in one statement, `d` being the units given back (or
/// added by the owner) minus the units taken. Each product matches at most one row, so
/// "rows affected = number of products" proves that every product's guard held (MySQL
/// counts matched rows here, as SQLite does). A product that units are taken from, or
/// whose stock the owner changes, must not be deleted; one that only gets units back
/// may be (its holds still end). Ascending id: concurrent writers lock rows in one
/// order.
fn change_stock(sql: &mut Sql, stock: &BTreeMap<ProductId, StockChange>, guard: bool) {
    let mut case = Sql::new("CASE id");
    for (product, change) in stock {
        case.text(" WHEN ")
            .int(product.0)
            .text(" THEN ")
            .int(change.returned - change.taken);
    }
    case.text(" END");
    sql.text("UPDATE products SET current_stock = current_stock + (");
    sql.0.push_str(case.as_str());
    if guard {
        sql.text("), updated_at = CURRENT_TIMESTAMP WHERE current_stock + (");
        sql.0.push_str(case.as_str());
        sql.text(") >= 0");
    } else {
        sql.text("), updated_at = CURRENT_TIMESTAMP WHERE 1 = 1");
    }
    let returned_only: Vec<i64> = stock
        .iter()
        .filter(|(_, change)| !change.live)
        .map(|(product, _)| product.0)
        .collect();
    if returned_only.is_empty() {
        sql.text(" AND deleted_at IS NULL");
    } else if returned_only.len() < stock.len() {
        sql.text(" AND (deleted_at IS NULL OR id IN (")
            .list(returned_only)
            .text("))");
    }
    sql.text(" AND id IN (")
        .list(stock.keys().map(|p| p.0))
        .text(")");
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

    #[test]
    fn bytes_and_timestamps_cannot_carry_sql() {
        let mut sql = Sql::new("");
        sql.bytes(b"'; DROP TABLE orders; --")
            .text(" ")
            .timestamp(Some(1_764_644_645))
            .text(" ")
            .timestamp(None);
        assert_eq!(
            sql.0,
            "X'273b2044524f50205441424c45206f72646572733b202d2d' '2025-12-02 03:04:05' NULL"
        );
    }

    #[test]
    fn stock_changes_guard_what_is_taken() {
        let change = |taken, returned| StockChange {
            taken,
            returned,
            live: taken > 0,
        };
        let mut sql = Sql::new("");
        change_stock(
            &mut sql,
            &BTreeMap::from([(ProductId(1), change(3, 1)), (ProductId(2), change(0, 2))]),
            true,
        );
        assert_eq!(
            sql.0,
            "UPDATE products SET current_stock = current_stock + (CASE id WHEN 1 THEN -2 WHEN 2 THEN 2 END), \
             updated_at = CURRENT_TIMESTAMP WHERE current_stock + (CASE id WHEN 1 THEN -2 WHEN 2 THEN 2 END) >= 0 \
             AND (deleted_at IS NULL OR id IN (2)) AND id IN (1, 2)"
        );
    }
}
