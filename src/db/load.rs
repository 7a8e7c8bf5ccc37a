//! Reads: what start-up loads, what a store reloads, the known-user lookup.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, FromQueryResult, Statement, Value};

use crate::domain::{ProductId, StoreId, UserId};

/// A product that can be ordered: neither it nor its store is deleted.
#[derive(Debug, Clone, FromQueryResult)]
pub struct ProductRow {
    pub id: i64,
    pub product_name: String,
    pub current_stock: i64,
    pub store_id: i64,
    pub store_name: String,
}

pub async fn products(db: &impl ConnectionTrait) -> Result<Vec<ProductRow>, DbErr> {
    let sql = "SELECT p.id, p.product_name, p.current_stock, p.store_id, s.store_name \
               FROM products p JOIN stores s ON s.id = p.store_id \
               WHERE p.deleted_at IS NULL AND s.deleted_at IS NULL ORDER BY p.id";
    ProductRow::find_by_statement(Statement::from_string(db.get_database_backend(), sql))
        .all(db)
        .await
}

/// The stock of a store's orderable products, as the database has it now.
pub async fn store_stock(
    db: &impl ConnectionTrait,
    store: StoreId,
) -> Result<Vec<(ProductId, i64)>, DbErr> {
    let sql = "SELECT p.id, p.current_stock FROM products p JOIN stores s ON s.id = p.store_id \
               WHERE p.store_id = ? AND p.deleted_at IS NULL AND s.deleted_at IS NULL";
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            [Value::from(store.0)],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                ProductId(row.try_get_by_index(0)?),
                row.try_get_by_index(1)?,
            ))
        })
        .collect()
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
        .query_one_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            [Value::from(user.0)],
        ))
        .await?;
    Ok(row.is_some())
}

/// The largest `orders.id` and `order_details.id`: Kitara numbers new rows itself, so
/// one multi-row INSERT can write a whole batch and still answer every id.
pub async fn max_ids(db: &impl ConnectionTrait) -> Result<(i64, i64), DbErr> {
    let sql = "SELECT (SELECT COALESCE(MAX(id), 0) FROM orders), \
               (SELECT COALESCE(MAX(id), 0) FROM order_details)";
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?
        .ok_or_else(|| DbErr::Custom("no row for MAX(id)".into()))?;
    Ok((row.try_get_by_index(0)?, row.try_get_by_index(1)?))
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
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [Value::from(token)],
        ))
        .await?;
    Ok(row.is_some())
}
