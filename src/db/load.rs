//! Reads: what start-up loads, what a store reloads, the known-user lookup, and the
//! order an order endpoint answers with.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::NaiveDateTime;
use futures_util::StreamExt;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, FromQueryResult, QueryResult, Statement,
    StreamTrait, TransactionTrait, Value,
};

use crate::domain::{
    Deadline, LockOrder, OrderDetailId, OrderId, OrderLine, OrderStatus, ProductId, StoreId, UserId,
};

/// A product that can be ordered: neither it nor its store is deleted.
#[derive(Debug, Clone, FromQueryResult)]
pub struct ProductRow {
    pub id: i64,
    pub product_name: String,
    pub current_stock: i64,
    pub store_id: i64,
    pub store_name: String,
    pub max_per_customer: Option<i64>,
}

const PRODUCTS: &str = "SELECT p.id, p.product_name, p.current_stock, p.store_id, \
                        s.store_name, p.max_per_customer \
                        FROM products p JOIN stores s ON s.id = p.store_id \
                        WHERE p.deleted_at IS NULL AND s.deleted_at IS NULL";

pub async fn products(db: &impl ConnectionTrait) -> Result<Vec<ProductRow>, DbErr> {
    let sql = format!("{PRODUCTS} ORDER BY p.id");
    ProductRow::find_by_statement(Statement::from_string(db.get_database_backend(), sql))
        .all(db)
        .await
}

/// The orderable products of `store` (or of every store) with an id above `after`,
/// ascending, at most `limit`: a page of the catalogue, through the primary key.
pub async fn products_page(
    db: &impl ConnectionTrait,
    store: Option<StoreId>,
    after: ProductId,
    limit: Option<u32>,
) -> Result<Vec<ProductRow>, DbErr> {
    let mut sql = format!("{PRODUCTS} AND p.id > ?");
    let mut values = vec![Value::from(after.0)];
    if let Some(store) = store {
        sql.push_str(" AND p.store_id = ?");
        values.push(Value::from(store.0));
    }
    sql.push_str(" ORDER BY p.id");
    if let Some(limit) = limit {
        sql.push_str(" LIMIT ?");
        values.push(Value::from(limit));
    }
    ProductRow::find_by_statement(super::prepared(db, sql, values))
        .all(db)
        .await
}

/// One orderable product.
pub async fn product(
    db: &impl ConnectionTrait,
    id: ProductId,
) -> Result<Option<ProductRow>, DbErr> {
    let sql = format!("{PRODUCTS} AND p.id = ?");
    ProductRow::find_by_statement(super::prepared(db, sql, [Value::from(id.0)]))
        .one(db)
        .await
}

/// A live hold (an order still `locked`) as the database has it.
#[derive(Debug, Clone)]
pub struct HoldRow {
    pub id: OrderId,
    pub store: StoreId,
    pub order: Arc<LockOrder>,
    pub expires_at: Option<Deadline>,
    /// Its details as stored, ascending product id.
    pub details: Vec<(OrderDetailId, OrderLine)>,
}

/// What a buyer holds or bought of a product with a per-customer limit.
#[derive(Debug, Clone, Copy)]
pub struct PurchaseRow {
    pub store: StoreId,
    pub buyer: UserId,
    pub product: ProductId,
    pub units: i64,
}

/// What a store actor starts from: its orderable products (as the catalog shows them),
/// their stock and limits, its live holds, and its buyers' purchases of limited products.
#[derive(Debug, Default)]
pub struct StoreState {
    pub products: Vec<ProductRow>,
    pub stock: Vec<(ProductId, i64)>,
    pub limits: Vec<(ProductId, i64)>,
    pub holds: Vec<HoldRow>,
    pub purchases: Vec<PurchaseRow>,
    /// The number of its last event (0 before its first): its actor numbers on from it.
    pub last_event: i64,
}

/// The state of one store, or of every store (`None`) grouped by store, read in one
/// transaction.
pub async fn stores(
    db: &DatabaseConnection,
    only: Option<StoreId>,
) -> Result<HashMap<StoreId, StoreState>, DbErr> {
    // A write whose outcome Kitara gave up on (its COMMIT still on its way when the
    // outcome deadline passed) may land after a reload starts reading, and memory would
    // then miss it. Every write on MySQL carries the fence, a write of its store's
    // ownership row, whose lock it holds until it ends: a reload first waits for that
    // lock, in a statement of its own (autocommit: the lock is let go as it answers),
    // and what it reads next includes whatever the write came to. (A load of every store
    // needs no wait: each of them was just taken by a write of its ownership row, which
    // waited for the same lock.)
    if let Some(store) = only
        && db.get_database_backend() == DbBackend::MySql
    {
        db.query_all_raw(super::prepared(
            db,
            "SELECT store_id FROM kitara_store_owners WHERE store_id = ? LOCK IN SHARE MODE",
            [Value::from(store.0)],
        ))
        .await?;
    }
    let txn = db.begin().await?;
    let backend = ConnectionTrait::get_database_backend(&txn);
    let filter = |sql: &str, column: &str| match only {
        Some(_) => format!("{sql} AND {column} = ?"),
        None => sql.to_owned(),
    };
    let values: Vec<Value> = only.map(|s| Value::from(s.0)).into_iter().collect();
    let statement = |sql: String| Statement::from_sql_and_values(backend, sql, values.clone());
    let mut stores: HashMap<StoreId, StoreState> = HashMap::new();

    let sql = filter(
        "SELECT p.id, p.product_name, p.current_stock, p.store_id, s.store_name, p.max_per_customer \
         FROM products p JOIN stores s ON s.id = p.store_id \
         WHERE p.deleted_at IS NULL AND s.deleted_at IS NULL",
        "p.store_id",
    );
    for row in ProductRow::find_by_statement(statement(sql))
        .all(&txn)
        .await?
    {
        let product = ProductId(row.id);
        let store = stores.entry(StoreId(row.store_id)).or_default();
        store.stock.push((product, row.current_stock));
        if let Some(limit) = row.max_per_customer {
            store.limits.push((product, limit));
        }
        store.products.push(row);
    }

    let sql = filter(
        "SELECT o.id, o.buyer_id, o.store_id, o.expires_at, d.product_id, d.quantity, d.id \
         FROM orders o JOIN order_details d ON d.order_id = o.id \
         WHERE o.status = 'locked' AND o.deleted_at IS NULL",
        "o.store_id",
    ) + " ORDER BY o.id, d.product_id, d.id";
    // Streamed: a store may hold millions of holds, and each row is small once read.
    let mut rows = txn.stream_raw(statement(sql)).await?;
    let mut holds = Holds::default();
    while let Some(row) = rows.next().await {
        if let Some(hold) = holds.push(&row?)? {
            stores.entry(hold.store).or_default().holds.push(hold);
        }
    }
    drop(rows);
    if let Some(hold) = holds.finish() {
        stores.entry(hold.store).or_default().holds.push(hold);
    }

    let sql = filter(
        "SELECT p.store_id, o.buyer_id, d.product_id, CAST(SUM(d.quantity) AS SIGNED) \
         FROM orders o JOIN order_details d ON d.order_id = o.id \
         JOIN products p ON p.id = d.product_id \
         WHERE p.max_per_customer IS NOT NULL AND o.status IN ('locked', 'confirmed') \
         AND o.deleted_at IS NULL",
        "p.store_id",
    ) + " GROUP BY p.store_id, o.buyer_id, d.product_id";
    for row in txn.query_all_raw(statement(sql)).await? {
        let purchase = PurchaseRow {
            store: StoreId(row.try_get_by_index(0)?),
            buyer: UserId(row.try_get_by_index(1)?),
            product: ProductId(row.try_get_by_index(2)?),
            units: row.try_get_by_index(3)?,
        };
        stores
            .entry(purchase.store)
            .or_default()
            .purchases
            .push(purchase);
    }
    for (store, last) in super::events::last_seqs(&txn, only).await? {
        stores.entry(store).or_default().last_event = last;
    }
    txn.commit().await?;
    Ok(stores)
}

/// Groups the rows of live holds, one per order line, ordered by order id, into one
/// hold per order.
#[derive(Default)]
struct Holds {
    current: Option<(OrderId, UserId, StoreId, Option<Deadline>)>,
    details: Vec<(OrderDetailId, OrderLine)>,
}

impl Holds {
    /// Takes a row; returns the previous order's hold once this row starts another.
    fn push(&mut self, row: &QueryResult) -> Result<Option<HoldRow>, DbErr> {
        let id = OrderId(row.try_get_by_index(0)?);
        let mut done = None;
        if self.current.is_none_or(|(current, ..)| current != id) {
            done = self.finish();
            self.current = Some((
                id,
                UserId(row.try_get_by_index(1)?),
                StoreId(row.try_get_by_index(2)?),
                deadline(row.try_get_by_index(3)?),
            ));
        }
        self.details.push((
            OrderDetailId(row.try_get_by_index(6)?),
            OrderLine {
                product: ProductId(row.try_get_by_index(4)?),
                quantity: row.try_get_by_index(5)?,
            },
        ));
        Ok(done)
    }

    fn finish(&mut self) -> Option<HoldRow> {
        let (id, buyer, store, expires_at) = self.current.take()?;
        let details = std::mem::take(&mut self.details);
        let lines = details.iter().map(|(_, l)| (l.product, l.quantity));
        Some(HoldRow {
            id,
            store,
            order: Arc::new(LockOrder::stored(buyer, lines)),
            expires_at,
            details,
        })
    }
}

/// `expires_at` as a deadline; a fraction of a second (written by a tool) rounds up.
fn deadline(at: Option<NaiveDateTime>) -> Option<Deadline> {
    at.map(|at| {
        let at = at.and_utc();
        at.timestamp() + i64::from(at.timestamp_subsec_nanos() > 0)
    })
}

pub async fn user_ids(db: &impl ConnectionTrait) -> Result<Vec<UserId>, DbErr> {
    let sql = "SELECT id FROM users WHERE deleted_at IS NULL";
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    rows.iter()
        .map(|row| Ok(UserId(row.try_get_by_index(0)?)))
        .collect()
}

pub async fn user_exists(db: &impl ConnectionTrait, user: UserId) -> Result<bool, DbErr> {
    let sql = "SELECT id FROM users WHERE id = ? AND deleted_at IS NULL";
    let row = db
        .query_one_raw(super::prepared(db, sql, [Value::from(user.0)]))
        .await?;
    Ok(row.is_some())
}

/// The store of a product, if the product and its store are live.
pub async fn store_of(
    db: &impl ConnectionTrait,
    product: ProductId,
) -> Result<Option<StoreId>, DbErr> {
    let sql = "SELECT p.store_id FROM products p JOIN stores s ON s.id = p.store_id \
               WHERE p.id = ? AND p.deleted_at IS NULL AND s.deleted_at IS NULL";
    let row = db
        .query_one_raw(super::prepared(db, sql, [Value::from(product.0)]))
        .await?;
    row.map(|row| row.try_get_by_index(0).map(StoreId))
        .transpose()
}

/// An order as `GET /api/v1/order/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    pub id: OrderId,
    pub buyer: UserId,
    pub store: StoreId,
    pub status: OrderStatus,
    pub expires_at: Option<Deadline>,
    pub details: Vec<DetailRow>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetailRow {
    pub id: OrderDetailId,
    pub product: ProductId,
    pub product_name: String,
    pub quantity: i64,
}

/// The columns `orders_of` reads, one row per detail (or one for an order without any).
const ORDER_COLUMNS: &str = "SELECT o.id, o.buyer_id, o.store_id, o.status, o.expires_at, \
     d.id, d.product_id, p.product_name, d.quantity FROM orders o \
     LEFT JOIN order_details d ON d.order_id = o.id \
     LEFT JOIN products p ON p.id = d.product_id";

/// The order with this id, unless there is none (or it is deleted), with its details in
/// ascending product id: one query, a row per detail.
pub async fn order(db: &impl ConnectionTrait, id: OrderId) -> Result<Option<OrderRow>, DbErr> {
    let sql = format!(
        "{ORDER_COLUMNS} WHERE o.id = ? AND o.deleted_at IS NULL ORDER BY d.product_id, d.id"
    );
    let rows = db
        .query_all_raw(super::prepared(db, sql, [Value::from(id.0)]))
        .await?;
    Ok(orders_of(&rows)?.pop())
}

/// Which orders the admin API lists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrderFilter {
    pub store: Option<StoreId>,
    pub status: Option<OrderStatus>,
    /// Only orders with a larger id.
    pub after: i64,
    /// Only orders with a smaller id, and of those the last `limit`: the newest page.
    pub before: Option<i64>,
    pub limit: u32,
}

/// A page of orders in ascending id, with their details: the ids first (through the
/// primary key), then their rows.
pub async fn orders(
    db: &impl ConnectionTrait,
    filter: OrderFilter,
) -> Result<Vec<OrderRow>, DbErr> {
    let mut sql = String::from("SELECT id FROM orders WHERE deleted_at IS NULL AND id > ?");
    let mut values = vec![Value::from(filter.after)];
    if let Some(store) = filter.store {
        sql.push_str(" AND store_id = ?");
        values.push(store.0.into());
    }
    if let Some(status) = filter.status {
        sql.push_str(" AND status = ?");
        values.push(status.as_str().into());
    }
    if let Some(before) = filter.before {
        sql.push_str(" AND id < ? ORDER BY id DESC LIMIT ?");
        values.push(before.into());
    } else {
        sql.push_str(" ORDER BY id LIMIT ?");
    }
    values.push(i64::from(filter.limit).into());
    let mut ids: Vec<i64> = db
        .query_all_raw(super::prepared(db, sql, values))
        .await?
        .iter()
        .map(|row| row.try_get_by_index(0))
        .collect::<Result<_, _>>()?;
    ids.sort_unstable();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders = vec!["?"; ids.len()].join(", ");
    let sql =
        format!("{ORDER_COLUMNS} WHERE o.id IN ({placeholders}) ORDER BY o.id, d.product_id, d.id");
    let values: Vec<Value> = ids.into_iter().map(Value::from).collect();
    let rows = db.query_all_raw(super::prepared(db, sql, values)).await?;
    orders_of(&rows)
}

/// Groups rows of `ORDER_COLUMNS`, ordered by order id, into orders.
fn orders_of(rows: &[QueryResult]) -> Result<Vec<OrderRow>, DbErr> {
    let mut orders: Vec<OrderRow> = Vec::new();
    for row in rows {
        let id = OrderId(row.try_get_by_index(0)?);
        if orders.last().is_none_or(|o| o.id != id) {
            let status: String = row.try_get_by_index(3)?;
            let status = OrderStatus::parse(&status).ok_or_else(|| {
                DbErr::Custom(format!("order {id} has an unknown status {status:?}"))
            })?;
            orders.push(OrderRow {
                id,
                buyer: UserId(row.try_get_by_index(1)?),
                store: StoreId(row.try_get_by_index(2)?),
                status,
                expires_at: deadline(row.try_get_by_index(4)?),
                details: Vec::new(),
            });
        }
        let Some(detail) = row.try_get_by_index::<Option<i64>>(5)? else {
            continue;
        };
        if let Some(order) = orders.last_mut() {
            order.details.push(DetailRow {
                id: OrderDetailId(detail),
                product: ProductId(row.try_get_by_index(6)?),
                product_name: row
                    .try_get_by_index::<Option<String>>(7)?
                    .unwrap_or_default(),
                quantity: row.try_get_by_index(8)?,
            });
        }
    }
    Ok(orders)
}

/// A live store, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct StoreRow {
    pub id: i64,
    pub store_name: String,
    pub user_id: i64,
}

pub async fn store_rows(db: &impl ConnectionTrait) -> Result<Vec<StoreRow>, DbErr> {
    let sql = "SELECT id, store_name, user_id FROM stores WHERE deleted_at IS NULL ORDER BY id";
    StoreRow::find_by_statement(Statement::from_string(db.get_database_backend(), sql))
        .all(db)
        .await
}

/// A row of a product's ledger.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct MovementRow {
    pub id: i64,
    pub delta: i64,
    pub reason: String,
    pub created_at: NaiveDateTime,
}

/// The ledger of a product, ascending id; `None` if there is no such product (deleted
/// ones keep theirs).
pub async fn movements(
    db: &impl ConnectionTrait,
    product: ProductId,
) -> Result<Option<Vec<MovementRow>>, DbErr> {
    let exists = db
        .query_one_raw(super::prepared(
            db,
            "SELECT id FROM products WHERE id = ?",
            [Value::from(product.0)],
        ))
        .await?
        .is_some();
    if !exists {
        return Ok(None);
    }
    let sql = "SELECT id, delta, reason, created_at FROM stock_movements WHERE product_id = ? ORDER BY id";
    MovementRow::find_by_statement(super::prepared(db, sql, [Value::from(product.0)]))
        .all(db)
        .await
        .map(Some)
}

/// Whether the transaction with this token committed (its `kitara_commits` row exists).
///
/// On MySQL the read is a locking read: if the server is still finishing that
/// transaction (its connection died with the COMMIT on the wire), the read waits for
/// the rows' locks and so sees the final outcome, never a state in between.
pub async fn token_committed(db: &impl ConnectionTrait, token: &str) -> Result<bool, DbErr> {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::MySql => "SELECT token FROM kitara_commits WHERE token = ? FOR UPDATE",
        _ => "SELECT token FROM kitara_commits WHERE token = ?",
    };
    let row = db
        .query_one_raw(super::prepared(db, sql, [Value::from(token)]))
        .await?;
    Ok(row.is_some())
}
