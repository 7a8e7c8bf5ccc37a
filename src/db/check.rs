//! `kitara check`: proves the ledger's equation for every product,
//! `current_stock = Σ stock_movements.delta − Σ quantities of live order lines`,
//! where a live line is one of an order still `locked` or `confirmed`; and that every
//! idempotency key names an order that exists. A key is written in the transaction of
//! its order, so a key without one is a transaction the database kept in part (see
//! SCALING.md, "On a MariaDB Galera cluster").
//!
//! One statement reads every figure, so the read is one consistent snapshot (InnoDB's
//! consistent read, SQLite's read transaction) and takes no lock: it is safe while
//! Kitara serves, and a batch that commits meanwhile is either wholly in it or not.

use sea_orm::{ConnectionTrait, DbErr, FromQueryResult, Statement};

use super::persist::LIVE_UNITS_OF_P;

/// One product's side of the equation.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct Balance {
    pub id: i64,
    pub product_name: String,
    pub current_stock: i64,
    /// Σ delta of its ledger.
    pub ledger: i64,
    /// Σ quantities of its live order lines.
    pub live_units: i64,
    /// Rows of its ledger: none means a product made by SQL since Kitara last started.
    pub movements: i64,
}

impl Balance {
    pub fn holds(&self) -> bool {
        self.movements > 0 && self.current_stock == self.ledger - self.live_units
    }
}

impl std::fmt::Display for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let expected = self.ledger - self.live_units;
        write!(
            f,
            "product {} {:?}: current_stock {} but ledger {} - live order units {} = {} (off by {:+})",
            self.id,
            self.product_name,
            self.current_stock,
            self.ledger,
            self.live_units,
            expected,
            self.current_stock - expected,
        )?;
        if self.movements == 0 {
            write!(
                f,
                "; it has no ledger (made by SQL; Kitara adopts it at start)"
            )?;
        }
        Ok(())
    }
}

/// Every product's balance, deleted ones included (their holds still return units).
pub async fn balances(db: &impl ConnectionTrait) -> Result<Vec<Balance>, DbErr> {
    let sql = format!(
        "SELECT p.id, p.product_name, p.current_stock, \
         CAST(COALESCE((SELECT SUM(m.delta) FROM stock_movements m WHERE m.product_id = p.id), 0) AS SIGNED) AS ledger, \
         CAST(COALESCE(({LIVE_UNITS_OF_P}), 0) AS SIGNED) AS live_units, \
         (SELECT COUNT(*) FROM stock_movements m WHERE m.product_id = p.id) AS movements \
         FROM products p ORDER BY p.id"
    );
    Balance::find_by_statement(Statement::from_string(db.get_database_backend(), sql))
        .all(db)
        .await
}

/// The orders that idempotency keys name but that do not exist: a transaction of which
/// the database kept the key and lost the order.
pub async fn orphan_keys(db: &impl ConnectionTrait) -> Result<Vec<i64>, DbErr> {
    // An admin write's key names no order (its answer is stored with it).
    let sql = "SELECT k.order_id FROM idempotency_keys k LEFT JOIN orders o ON o.id = k.order_id \
               WHERE o.id IS NULL AND k.answer IS NULL ORDER BY k.order_id";
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    rows.iter().map(|row| row.try_get_by_index(0)).collect()
}
