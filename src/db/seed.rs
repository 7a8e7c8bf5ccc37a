//! The Go version's demo data, written by `kitara migrate` (and `serve` on SQLite) into
//! a database that has no stores yet, unless `--no-demo` says otherwise.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Statement, TransactionTrait};

/// The demo data of the Go version, plus a second store to show the one-store rule.
const DEMO: &[&str] = &[
    "INSERT INTO users (id, name) VALUES (1, 'kitara'), (2, 'rara'), (3, 'deni')",
    "INSERT INTO stores (id, store_name, user_id) VALUES (1, 'kitara store', 1), (2, 'deni store', 3)",
    "INSERT INTO products (id, product_name, current_stock, store_id) VALUES \
     (1, 'masker', 10, 1), (2, 'sikat gigi', 5, 1), (3, 'sabun', 20, 2)",
    "INSERT INTO stock_movements (product_id, delta, reason) VALUES \
     (1, 10, 'created'), (2, 5, 'created'), (3, 20, 'created')",
];

/// Loads the demo data into a database without stores. Returns whether it did.
pub async fn load_demo_data(db: &DatabaseConnection) -> Result<bool, DbErr> {
    let txn = db
        .begin_with_options(super::write_transaction_options())
        .await?;
    let backend = txn.get_database_backend();
    let stores = txn
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT COUNT(*) FROM stores",
        ))
        .await?
        .map(|row| row.try_get_by_index::<i64>(0))
        .transpose()?
        .unwrap_or(0);
    if stores > 0 {
        return Ok(false);
    }
    for sql in DEMO {
        txn.execute_raw(Statement::from_string(backend, *sql))
            .await?;
    }
    txn.commit().await?;
    Ok(true)
}
