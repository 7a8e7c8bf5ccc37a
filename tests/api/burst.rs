//! proptest-driven bursts of customers: generated stores, products and stocks, and
//! bursts of concurrent multi-line orders whose demand exceeds the stock, fired at a
//! real server. Afterwards every invariant of SPEC.md is checked against the database.
//!
//! `KITARA_PROPTEST_CASES` sets the number of cases (default 8 per test).

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::StatusCode;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;

use crate::helpers::{Backend, TestDb, order, spawn_app_with};

#[derive(Debug, Clone)]
struct Scenario {
    /// Stock of each product, per store. Store `s` has id `s + 1`; products are numbered
    /// from 1 across stores in this order.
    stores: Vec<Vec<i64>>,
    orders: Vec<GeneratedOrder>,
    /// Database writer tasks (SQLite always uses one).
    writers: u32,
}

/// (buyer, store index, lines as (product index in the store, quantity)).
type GeneratedOrder = (i64, usize, Vec<(usize, i64)>);

impl Scenario {
    fn product_id(&self, store: usize, index: usize) -> i64 {
        let before: usize = self.stores[..store].iter().map(Vec::len).sum();
        (before + index + 1) as i64
    }

    fn initial_stock(&self) -> BTreeMap<i64, i64> {
        let mut stock = BTreeMap::new();
        for (s, products) in self.stores.iter().enumerate() {
            for (i, &q) in products.iter().enumerate() {
                stock.insert(self.product_id(s, i), q);
            }
        }
        stock
    }

    fn demand(&self) -> BTreeMap<i64, i64> {
        let mut demand = BTreeMap::new();
        for (_, s, lines) in &self.orders {
            for &(i, q) in lines {
                *demand.entry(self.product_id(*s, i)).or_insert(0) += q;
            }
        }
        demand
    }

    /// Some product is wanted more than it is stocked, so some order must be refused.
    fn oversubscribed(&self) -> bool {
        let stock = self.initial_stock();
        self.demand().iter().any(|(p, d)| *d > stock[p])
    }
}

/// Every order fits the initial stock on its own (so the first order a store judges is
/// served), while the total demand exceeds it (so some order is refused).
fn scenarios() -> impl Strategy<Value = Scenario> {
    prop::collection::vec(prop::collection::vec(1i64..=6, 1..=3), 1..=3)
        .prop_flat_map(|stores| {
            let shapes = stores.clone();
            let one_order = (0..stores.len()).prop_flat_map(move |s| {
                let stock = shapes[s].clone();
                let line = (0..stock.len()).prop_flat_map(move |i| (Just(i), 1..=stock[i]));
                (1i64..=3, Just(s), prop::collection::vec(line, 1..=3))
            });
            (
                Just(stores),
                prop::collection::vec(one_order, 12..=60),
                1u32..=3,
            )
        })
        .prop_map(|(stores, orders, writers)| Scenario {
            stores,
            orders,
            writers,
        })
        .prop_filter("demand must exceed stock", Scenario::oversubscribed)
}

fn runner() -> TestRunner {
    let cases = std::env::var("KITARA_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    TestRunner::new(Config {
        cases,
        max_shrink_iters: 16,
        failure_persistence: None,
        ..Config::default()
    })
}

async fn reset(db: &TestDb, scenario: &Scenario) {
    for table in [
        "stock_movements",
        "order_details",
        "orders",
        "products",
        "stores",
        "users",
    ] {
        db.exec(&format!("DELETE FROM {table}")).await;
    }
    db.exec("INSERT INTO users (id, name) VALUES (1, 'kitara'), (2, 'rara'), (3, 'deni')")
        .await;
    for (s, products) in scenario.stores.iter().enumerate() {
        let store = s + 1;
        db.exec(&format!(
            "INSERT INTO stores (id, store_name, user_id) VALUES ({store}, 'store {store}', 1)"
        ))
        .await;
        for (i, stock) in products.iter().enumerate() {
            let id = scenario.product_id(s, i);
            db.exec(&format!(
                "INSERT INTO products (id, product_name, current_stock, store_id) \
                 VALUES ({id}, 'product {id}', {stock}, {store})"
            ))
            .await;
        }
    }
}

fn check(condition: bool, message: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if condition {
        Ok(())
    } else {
        Err(TestCaseError::fail(message()))
    }
}

async fn run_case(
    db: &TestDb,
    scenario: &Scenario,
    memory_check: bool,
) -> Result<(), TestCaseError> {
    reset(db, scenario).await;
    let app = Arc::new(
        spawn_app_with(db, |s| {
            s.memory_check = memory_check;
            s.writers = scenario.writers;
        })
        .await,
    );

    let bodies: Vec<(i64, Value)> = scenario
        .orders
        .iter()
        .map(|(buyer, s, lines)| {
            let lines: Vec<(i64, i64)> = lines
                .iter()
                .map(|&(i, q)| (scenario.product_id(*s, i), q))
                .collect();
            (*buyer, order(*buyer, &lines))
        })
        .collect();
    let tasks: Vec<_> = bodies
        .iter()
        .cloned()
        .map(|(_, body)| {
            let app = app.clone();
            tokio::spawn(async move { app.lock(&body).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(tasks.len());
    for task in tasks {
        answers.push(task.await.expect("request task"));
    }

    let mut served = 0;
    let mut refused = 0;
    for ((buyer, body), (status, answer)) in bodies.iter().zip(&answers) {
        match *status {
            StatusCode::OK => {
                served += 1;
                db.assert_order_stored(answer, *buyer).await;
                let mut asked: BTreeMap<i64, i64> = BTreeMap::new();
                for line in body["products"].as_array().unwrap() {
                    *asked
                        .entry(line["product_id"].as_i64().unwrap())
                        .or_insert(0) += line["quantity"].as_i64().unwrap();
                }
                let got: BTreeMap<i64, i64> = answer["data"]["order_details"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| {
                        (
                            d["product_id"].as_i64().unwrap(),
                            d["quantity"].as_i64().unwrap(),
                        )
                    })
                    .collect();
                check(got == asked, || format!("answered {got:?} for {asked:?}"))?;
            }
            StatusCode::BAD_REQUEST => {
                refused += 1;
                let message = answer["message"].as_str().unwrap_or_default();
                check(message.ends_with("product not available"), || {
                    format!("unexpected refusal {answer}")
                })?;
            }
            StatusCode::SERVICE_UNAVAILABLE if !memory_check => refused += 1,
            other => return Err(TestCaseError::fail(format!("status {other}: {answer}"))),
        }
    }
    check(served > 0, || "no order was served".into())?;
    check(refused > 0, || "no order was refused".into())?;
    let stored = db.count("orders").await;
    check(stored == served, || {
        format!("{served} answered 200 but {stored} order rows")
    })?;
    db.assert_invariants(&scenario.initial_stock()).await;
    let listed = app.listed_stocks().await;
    let stocks = db.stocks().await;
    check(listed == stocks, || {
        format!("listed {listed:?} but stored {stocks:?}")
    })?;

    match Arc::try_unwrap(app) {
        Ok(app) => app.stop().await,
        Err(_) => return Err(TestCaseError::fail("requests still hold the app")),
    }
    Ok(())
}

fn burst(backend: Backend, memory_check: bool) {
    if !backend.available() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let db = runtime.block_on(TestDb::new(backend));
    let result = runner().run(&scenarios(), |scenario| {
        runtime.block_on(run_case(&db, &scenario, memory_check))
    });
    runtime.block_on(db.drop_database());
    if let Err(e) = result {
        panic!("{e}");
    }
}

mod sqlite {
    #[test]
    fn bursts_of_customers_never_oversell() {
        super::burst(super::Backend::Sqlite, true);
    }

    #[test]
    fn the_database_guard_alone_stops_oversell() {
        super::burst(super::Backend::Sqlite, false);
    }
}

mod mysql {
    #[test]
    fn bursts_of_customers_never_oversell() {
        super::burst(super::Backend::Mysql, true);
    }

    #[test]
    fn the_database_guard_alone_stops_oversell() {
        super::burst(super::Backend::Mysql, false);
    }
}
