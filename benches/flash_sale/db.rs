//! The databases the workloads run on: a fresh one each (a new MySQL database, dropped
//! afterwards, or a temporary SQLite file), and the invariants checked after them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use kitara::config::Settings;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

use crate::{Bench, USERS};

pub(crate) struct BenchDb {
    pub(crate) url: String,
    pub(crate) name: String,
    pub(crate) mysql: bool,
    pub(crate) conn: DatabaseConnection,
    pub(crate) initial: BTreeMap<i64, i64>,
    pub(crate) products_per_store: i64,
    pub(crate) _dir: Option<tempfile::TempDir>,
}

impl BenchDb {
    /// How many nodes own stores, and how many stores have no owner.
    pub(crate) async fn owners(&self) -> (usize, i64) {
        let rows = self
            .conn
            .query_all_raw(Statement::from_string(
                self.conn.get_database_backend(),
                "SELECT owner, COUNT(*) FROM kitara_store_owners GROUP BY owner",
            ))
            .await
            .expect("read the owners");
        let mut owners = 0;
        let mut unowned = 0;
        for row in rows {
            let owner: Option<String> = row.try_get_by_index(0).expect("owner");
            let count: i64 = row.try_get_by_index(1).expect("count");
            match owner {
                Some(_) => owners += 1,
                None => unowned += count,
            }
        }
        (owners, unowned)
    }

    /// A fresh database with `stores` stores of `products` products each (`stock` units
    /// apiece) and `USERS` users.
    pub(crate) async fn create(bench: &Bench, stores: i64, products: i64, stock: i64) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "kitara_bench_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let (url, dir) = match &bench.mysql {
            Some(base) => {
                let base = base.trim_end_matches('/');
                let admin = Database::connect(base).await.expect("connect to MySQL");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
                    .await
                    .expect("create database");
                admin.close().await.ok();
                (format!("{base}/{name}"), None)
            }
            None => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                (url, Some(dir))
            }
        };
        let conn = kitara::db::connect(&Settings::local(&url).database)
            .await
            .expect("connect");
        kitara::db::migrate_and_seed(&conn, false)
            .await
            .expect("migrate");

        let mut sql = String::from("INSERT INTO users (id, name) VALUES ");
        for id in 1..=USERS {
            let _ = write!(sql, "{}({id}, 'user {id}')", if id > 1 { ", " } else { "" });
        }
        conn.execute_unprepared(&sql).await.expect("users");
        let mut initial = BTreeMap::new();
        for chunk in (1..=stores).collect::<Vec<_>>().chunks(200) {
            let mut stores_sql =
                String::from("INSERT INTO stores (id, store_name, user_id) VALUES ");
            let mut products_sql = String::from(
                "INSERT INTO products (id, product_name, current_stock, store_id) VALUES ",
            );
            for (i, &store) in chunk.iter().enumerate() {
                let _ = write!(
                    stores_sql,
                    "{}({store}, 'store {store}', 1)",
                    if i > 0 { ", " } else { "" }
                );
                for p in 0..products {
                    let id = (store - 1) * products + p + 1;
                    initial.insert(id, stock);
                    let sep = if i > 0 || p > 0 { ", " } else { "" };
                    let _ = write!(
                        products_sql,
                        "{sep}({id}, 'product {id}', {stock}, {store})"
                    );
                }
            }
            conn.execute_unprepared(&stores_sql).await.expect("stores");
            conn.execute_unprepared(&products_sql)
                .await
                .expect("products");
        }
        BenchDb {
            url,
            name,
            mysql: bench.mysql.is_some(),
            conn,
            initial,
            products_per_store: products,
            _dir: dir,
        }
    }

    pub(crate) async fn query_pairs(&self, sql: &str) -> Vec<(i64, i64)> {
        let rows = self
            .conn
            .query_all_raw(Statement::from_string(
                self.conn.get_database_backend(),
                sql,
            ))
            .await
            .expect(sql);
        rows.iter()
            .map(|r| {
                (
                    r.try_get_by_index(0).unwrap(),
                    r.try_get_by_index(1).unwrap(),
                )
            })
            .collect()
    }

    pub(crate) async fn stock_of(&self, product: i64) -> i64 {
        self.query_pairs(&format!(
            "SELECT id, current_stock FROM products WHERE id = {product}"
        ))
        .await[0]
            .1
    }

    /// Checks SPEC.md's invariants and returns the number of order rows.
    pub(crate) async fn check_invariants(&self) -> u64 {
        let stocks: BTreeMap<i64, i64> = self
            .query_pairs("SELECT id, current_stock FROM products")
            .await
            .into_iter()
            .collect();
        // Units held or sold: the lines of orders that are locked or confirmed.
        let sold: BTreeMap<i64, i64> = self
            .query_pairs(
                "SELECT d.product_id, CAST(SUM(d.quantity) AS SIGNED) FROM order_details d \
                 JOIN orders o ON o.id = d.order_id WHERE o.status IN ('locked', 'confirmed') \
                 GROUP BY d.product_id",
            )
            .await
            .into_iter()
            .collect();
        for (product, start) in &self.initial {
            let now = stocks[product];
            let sold = sold.get(product).copied().unwrap_or(0);
            assert!(
                now >= 0,
                "INVARIANT BROKEN: product {product} has stock {now}"
            );
            assert_eq!(
                *start,
                now + sold,
                "INVARIANT BROKEN (oversell): product {product}: initial {start} != {now} + sold {sold}"
            );
        }
        let broken = self
            .query_pairs(
                "SELECT o.id, o.quantity FROM orders o LEFT JOIN order_details d ON d.order_id = o.id \
                 GROUP BY o.id, o.quantity HAVING COUNT(d.id) = 0 OR SUM(d.quantity) <> o.quantity",
            )
            .await;
        assert!(
            broken.is_empty(),
            "INVARIANT BROKEN: orders not whole: {broken:?}"
        );
        self.query_pairs("SELECT COUNT(*), 0 FROM orders").await[0].0 as u64
    }

    pub(crate) async fn count(&self, table: &str) -> u64 {
        self.query_pairs(&format!("SELECT COUNT(*), 0 FROM {table}"))
            .await[0]
            .0 as u64
    }

    pub(crate) async fn count_where(&self, table: &str, condition: &str) -> u64 {
        self.query_pairs(&format!(
            "SELECT COUNT(*), 0 FROM {table} WHERE {condition}"
        ))
        .await[0]
            .0 as u64
    }

    /// `n` locked orders of one unit of `product`, by random users, all expiring at
    /// `deadline` (Unix seconds), written as a tool would: the units leave the stock
    /// and the initial stock stays what the invariant counts from.
    pub(crate) async fn insert_holds(&self, product: i64, n: i64, deadline: i64) {
        let at = chrono::DateTime::from_timestamp(deadline, 0)
            .expect("deadline")
            .format("%Y-%m-%d %H:%M:%S");
        let store = 1 + (product - 1) / self.products_per_store;
        for chunk in (1..=n).collect::<Vec<_>>().chunks(5_000) {
            let mut orders = String::from(
                "INSERT INTO orders (id, buyer_id, quantity, store_id, expires_at) VALUES ",
            );
            let mut details = String::from(
                "INSERT INTO order_details (id, order_id, product_id, quantity) VALUES ",
            );
            for (i, id) in chunk.iter().enumerate() {
                let sep = if i > 0 { ", " } else { "" };
                let user = 1 + id % USERS;
                let _ = write!(orders, "{sep}({id}, {user}, 1, {store}, '{at}')");
                let _ = write!(details, "{sep}({id}, {id}, {product}, 1)");
            }
            self.conn.execute_unprepared(&orders).await.expect("holds");
            self.conn
                .execute_unprepared(&details)
                .await
                .expect("hold lines");
        }
        self.conn
            .execute_unprepared(&format!(
                "UPDATE products SET current_stock = current_stock - {n} WHERE id = {product}"
            ))
            .await
            .expect("held units");
    }

    /// Orders per transaction, from the transaction tokens Kitara stores.
    pub(crate) async fn batching_note(&self) -> String {
        let (orders, commits) = self
            .query_pairs(
                "SELECT (SELECT COUNT(*) FROM orders), (SELECT COUNT(*) FROM kitara_commits)",
            )
            .await[0];
        if commits == 0 {
            return "one transaction per order".into();
        }
        format!("{:.1} orders per commit", orders as f64 / commits as f64)
    }

    pub(crate) async fn drop(self) {
        if self.mysql {
            self.conn
                .execute_unprepared(&format!("DROP DATABASE `{}`", self.name))
                .await
                .ok();
        }
        self.conn.close().await.ok();
    }
}
