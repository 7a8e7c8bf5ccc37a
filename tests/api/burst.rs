//! proptest-driven bursts of customers: generated stores, products and stocks, and
//! bursts of concurrent multi-line orders whose demand exceeds the stock, fired at a
//! real server. Afterwards every invariant of SPEC.md is checked against the database.
//!
//! `KITARA_PROPTEST_CASES` sets the number of cases (default 8 per test).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper::StatusCode;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;

use crate::helpers::{Api, Backend, TestDb, order, series, spawn_app_with, start_kitara};

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

/// Which layers of checking are on (SPEC.md: any one may have a bug; together they must
/// hold, and layers 4 and 5 must hold alone).
#[derive(Debug, Clone, Copy)]
struct Layers {
    /// Layer 3: the actor's check against memory.
    memory_check: bool,
    /// Layer 4's guard: `WHERE current_stock + d >= 0` on every decrement.
    database_guard: bool,
}

const ALL_LAYERS: Layers = Layers {
    memory_check: true,
    database_guard: true,
};

/// Where the burst is fired: Kitara in the test's process (sharing its two worker
/// threads with the clients), or the real binary as its own process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    InProcess,
    Binary,
}

async fn run_case(
    db: &TestDb,
    scenario: &Scenario,
    layers: Layers,
    server: Server,
) -> Result<(), TestCaseError> {
    reset(db, scenario).await;
    let (api, stop): (Arc<Api>, Box<dyn FnOnce() -> BoxFuture + Send>) = match server {
        Server::InProcess => {
            let app = spawn_app_with(db, |s| {
                s.memory_check = layers.memory_check;
                s.database_guard = layers.database_guard;
                s.writers = scenario.writers;
            })
            .await;
            let api = Arc::new(Api::new(app.addr));
            (api, Box::new(move || Box::pin(app.stop())))
        }
        Server::Binary => {
            assert!(layers.memory_check && layers.database_guard);
            let writers = scenario.writers.to_string();
            let (mut child, api, _logs) =
                start_kitara(&db.url, &[("KITARA_WRITERS", writers.as_str())]).await;
            let stop = move || -> BoxFuture {
                Box::pin(async move {
                    child.start_kill().ok();
                    child.wait().await.ok();
                })
            };
            (Arc::new(api), Box::new(stop))
        }
    };

    // Memory never lists a negative stock, not even for a moment: the listing is sampled
    // for as long as the burst runs. (Without the memory check memory may go below 0: the
    // database refuses what it took, and the store reloads.)
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (api, running) = (api.clone(), running.clone());
        tokio::spawn(async move {
            let mut samples = 0u32;
            while running.load(Ordering::Relaxed) || samples == 0 {
                let listed = api.listed_stocks().await;
                if let Some((product, stock)) = listed.iter().find(|(_, s)| **s < 0) {
                    return Err(format!(
                        "product {product} listed at {stock} during the burst"
                    ));
                }
                samples += 1;
            }
            Ok(samples)
        })
    };

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
            let api = api.clone();
            tokio::spawn(async move { api.lock(&body).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(tasks.len());
    for task in tasks {
        answers.push(task.await.expect("request task"));
    }
    running.store(false, Ordering::Relaxed);
    let sampled = sampler.await.expect("sampler");
    check(sampled.is_ok() || !layers.memory_check, || {
        format!("{sampled:?}")
    })?;

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
            // Without the memory check an order refused twice by the database gets 503;
            // never any other.
            StatusCode::SERVICE_UNAVAILABLE if !layers.memory_check => {
                refused += 1;
                check(answer["message"] == "stock changed concurrently", || {
                    format!("unexpected 503 {answer}")
                })?;
            }
            other => return Err(TestCaseError::fail(format!("status {other}: {answer}"))),
        }
    }
    check(served > 0, || "no order was served".into())?;
    check(refused > 0, || "no order was refused".into())?;
    // Who refused: with the memory check on, memory did, and the database never had
    // to; with it off, the database did (the guard, or the schema's CHECK alone).
    let (_, metrics) = api.text("/metrics").await;
    let database_refused = series(&metrics, r#"kitara_database_errors_total{kind="refused"}"#);
    if layers.memory_check {
        check(database_refused == 0.0, || {
            format!("the database refused {database_refused} writes memory allowed")
        })?;
    } else {
        check(database_refused > 0.0, || {
            "the database refused nothing: the burst did not test it".into()
        })?;
    }
    let stored = db.count("orders").await;
    check(stored == served, || {
        format!("{served} answered 200 but {stored} order rows")
    })?;
    db.assert_invariants(&scenario.initial_stock()).await;
    let listed = api.listed_stocks().await;
    let stocks = db.stocks().await;
    check(listed == stocks, || {
        format!("listed {listed:?} but stored {stocks:?}")
    })?;

    match Arc::try_unwrap(api) {
        Ok(_) => stop().await,
        Err(_) => return Err(TestCaseError::fail("requests still hold the server")),
    }
    Ok(())
}

type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

fn burst(backend: Backend, layers: Layers, server: Server) {
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
        runtime.block_on(run_case(&db, &scenario, layers, server))
    });
    runtime.block_on(db.drop_database());
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The same tests on each backend.
macro_rules! bursts {
    ($backend:expr) => {
        use super::{ALL_LAYERS, Layers, Server, burst};

        #[test]
        fn bursts_of_customers_never_oversell() {
            burst($backend, ALL_LAYERS, Server::InProcess);
        }

        #[test]
        fn bursts_against_the_real_binary_never_oversell() {
            burst($backend, ALL_LAYERS, Server::Binary);
        }

        #[test]
        fn the_database_guard_alone_stops_oversell() {
            let layers = Layers {
                memory_check: false,
                ..ALL_LAYERS
            };
            burst($backend, layers, Server::InProcess);
        }

        #[test]
        fn the_schema_check_alone_stops_oversell() {
            let layers = Layers {
                memory_check: false,
                database_guard: false,
            };
            burst($backend, layers, Server::InProcess);
        }
    };
}

mod sqlite {
    bursts!(super::Backend::Sqlite);
}

mod mysql {
    bursts!(super::Backend::Mysql);
}
