//! Random sequences of kill, pause, resume, join and leave among three nodes, with
//! keyed traffic running through whichever nodes are up. After every step, once the
//! cluster has settled: SPEC.md's invariants hold, `kitara check` passes, every order
//! answered 200 is stored as answered, no buyer holds more than the limit, each store
//! has one owner at an epoch that never goes down (and rises when the owner changes),
//! and the nodes that are up serve each store once between them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;
use tokio::sync::{Mutex, RwLock};

use crate::cluster::{Node, owners, settled, stores_with_products};
use crate::helpers::{Api, Backend, TestDb, order};

/// What happens to node `n1`, `n2` or `n3` (by index).
#[derive(Debug, Clone, Copy)]
enum Step {
    Kill(usize),
    Pause(usize),
    Resume(usize),
    Join(usize),
    Leave(usize),
}

enum State {
    Up(Node),
    Paused(Node),
    Down,
}

/// Clients, each with at most one key in flight.
const CLIENTS: usize = 6;
/// A per-customer limit on the limited product.
const LIMIT: i64 = 3;
/// Stores become their rightful node's within the lease + 3 s (and a paused node's
/// heartbeat must age past the lease first); a wide margin for two loaded cores.
const SETTLE: Duration = Duration::from_secs(12);

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = (0..5u8, 0..3usize).prop_map(|(kind, n)| match kind {
        0 => Step::Kill(n),
        1 => Step::Pause(n),
        2 => Step::Resume(n),
        3 => Step::Join(n),
        _ => Step::Leave(n),
    });
    prop::collection::vec(step, 5..=8)
}

/// Orders answered 200: the key, the buyer, the product, the answer.
type Placed = Arc<Mutex<Vec<(String, i64, i64, Value)>>>;

/// The addresses of the nodes that are up, for the clients.
type UpNodes = Arc<std::sync::RwLock<Vec<Arc<Api>>>>;

#[test]
fn random_faults_among_three_nodes_keep_every_invariant_mysql() {
    if !Backend::Mysql.available() {
        return;
    }
    let cases = std::env::var("KITARA_CLUSTER_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 4,
        failure_persistence: None,
        ..Config::default()
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let result = runner.run(&steps(), |steps| runtime.block_on(case(steps)));
    if let Err(e) = result {
        panic!("{e}");
    }
}

async fn case(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let db = TestDb::with_demo_data(Backend::Mysql).await;
    let mut nodes = Vec::new();
    for n in 0..3 {
        nodes.push(State::Up(Node::start(&db, &name(n)).await));
    }
    let first = &up(&nodes)[0].api;
    let mut products: Vec<i64> = stores_with_products(first, 3, 100_000, None)
        .await
        .into_values()
        .collect();
    let limited = *stores_with_products(first, 1, 1_000, Some(LIMIT))
        .await
        .values()
        .next()
        .expect("a limited product");
    products.push(limited);
    settled(&db, &up(&nodes), SETTLE).await;
    let initial = db.stocks().await;

    let up_apis: UpNodes = Arc::default();
    publish(&nodes, &up_apis);
    let placed: Placed = Arc::default();
    // Clients hold it for reading per request; a check takes it for writing, so that
    // it looks at the database with no request in flight.
    let gate = Arc::new(RwLock::new(()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (up_apis, placed, gate, stop, products) = (
                up_apis.clone(),
                placed.clone(),
                gate.clone(),
                stop.clone(),
                products.clone(),
            );
            tokio::spawn(client(c, up_apis, placed, gate, stop, products, limited))
        })
        .collect();

    let mut epochs: BTreeMap<i64, (Option<String>, i64)> = owners(&db).await;
    let mut applied = Vec::new();
    for step in steps {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if !apply(&db, &mut nodes, step).await {
            continue;
        }
        applied.push(step);
        publish(&nodes, &up_apis);
        let quiet = gate.write().await;
        settled(&db, &up(&nodes), SETTLE).await;
        let now = owners(&db).await;
        for (store, (owner, epoch)) in &now {
            if let Some((before, was)) = epochs.get(store) {
                prop_assert!(epoch >= was, "{applied:?}: store {store}'s epoch fell");
                if owner != before && owner.is_some() {
                    prop_assert!(
                        epoch > was,
                        "{applied:?}: store {store} changed owner at the same epoch"
                    );
                }
            }
        }
        epochs = now;
        served_once(&nodes, epochs.len(), &applied).await?;
        check_database(&db, &initial, &placed, limited, &applied, false).await?;
        drop(quiet);
    }

    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("a client panicked");
    }
    check_database(&db, &initial, &placed, limited, &applied, true).await?;
    // A key answered before a fault books its order once: replayed through a node up now.
    let api = up(&nodes)[0].api.addr;
    let api = Api::new(api);
    for (key, buyer, product, body) in placed.lock().await.iter().step_by(7) {
        // A store still moving after the last step (a join hands stores over) answers
        // 503 with Retry-After, as SPEC.md has it: the client retries, as clients do.
        let retry_until = std::time::Instant::now() + Duration::from_secs(15);
        let (status, again) = loop {
            let (status, headers, again) = api
                .try_lock_keyed(
                    &order(*buyer, &[(*product, 1)]),
                    Some(key),
                    Duration::from_secs(10),
                )
                .await
                .expect("a node that is up answers");
            let moving =
                status == StatusCode::SERVICE_UNAVAILABLE && headers.contains_key("retry-after");
            if !moving || std::time::Instant::now() > retry_until {
                break (status, again);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        prop_assert_eq!(status, StatusCode::OK, "{}: {}", key, again);
        prop_assert_eq!(&again["data"]["order_id"], &body["data"]["order_id"]);
    }
    println!(
        "{applied:?}: {} orders answered 200",
        placed.lock().await.len()
    );
    for state in nodes {
        if let State::Paused(node) = &state {
            node.resume();
        }
        if let State::Up(mut node) | State::Paused(mut node) = state {
            node.stop().await;
        }
    }
    db.drop_database().await;
    Ok(())
}

fn name(n: usize) -> String {
    format!("n{}", n + 1)
}

fn up(nodes: &[State]) -> Vec<&Node> {
    nodes
        .iter()
        .filter_map(|s| match s {
            State::Up(node) => Some(node),
            _ => None,
        })
        .collect()
}

fn publish(nodes: &[State], up_apis: &UpNodes) {
    let apis = up(nodes)
        .iter()
        .map(|n| Arc::new(Api::new(n.api.addr)))
        .collect();
    *up_apis.write().unwrap() = apis;
}

/// Applies `step` if it makes sense (a node up is killed, paused or stopped only if
/// another stays up; only a paused node resumes; only a node that is down joins);
/// answers whether it did.
async fn apply(db: &TestDb, nodes: &mut [State], step: Step) -> bool {
    let others_up = |nodes: &[State], n: usize| {
        nodes
            .iter()
            .enumerate()
            .any(|(i, s)| i != n && matches!(s, State::Up(_)))
    };
    match step {
        Step::Kill(n) if !matches!(nodes[n], State::Down) && others_up(nodes, n) => {
            if let State::Up(mut node) | State::Paused(mut node) =
                std::mem::replace(&mut nodes[n], State::Down)
            {
                node.kill();
                node.wait_exit().await;
            }
        }
        Step::Pause(n) if matches!(nodes[n], State::Up(_)) && others_up(nodes, n) => {
            if let State::Up(node) = std::mem::replace(&mut nodes[n], State::Down) {
                node.pause();
                nodes[n] = State::Paused(node);
            }
        }
        Step::Resume(n) if matches!(nodes[n], State::Paused(_)) => {
            if let State::Paused(node) = std::mem::replace(&mut nodes[n], State::Down) {
                node.resume();
                nodes[n] = State::Up(node);
            }
        }
        Step::Join(n) if matches!(nodes[n], State::Down) => {
            nodes[n] = State::Up(Node::start(db, &name(n)).await);
        }
        Step::Leave(n) if matches!(nodes[n], State::Up(_)) && others_up(nodes, n) => {
            if let State::Up(mut node) = std::mem::replace(&mut nodes[n], State::Down) {
                node.stop().await;
            }
        }
        _ => return false,
    }
    true
}

/// Locks one unit at a time, each with a key of its own, through the nodes that are
/// up; a 503 or a lost connection is retried with the same key through another node.
async fn client(
    c: usize,
    up_apis: UpNodes,
    placed: Placed,
    gate: Arc<RwLock<()>>,
    stop: Arc<AtomicBool>,
    products: Vec<i64>,
    limited: i64,
) {
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("client-{c}-{n}");
        let buyer = 2 + (n % 2) as i64;
        let product = products[(c + n) % products.len()];
        let body = order(buyer, &[(product, 1)]);
        let started = Instant::now();
        let mut tries = 0;
        loop {
            let api = {
                let apis = up_apis.read().unwrap();
                apis[(c + tries) % apis.len()].clone()
            };
            let answer = {
                let _open = gate.read().await;
                api.try_lock_keyed(&body, Some(&key), Duration::from_secs(3))
                    .await
            };
            match answer {
                Some((StatusCode::OK, _, answer)) => {
                    placed.lock().await.push((key, buyer, product, answer));
                    break;
                }
                Some((StatusCode::BAD_REQUEST, _, answer)) => {
                    assert_eq!(product, limited, "{answer}");
                    assert_eq!(answer["message"], "purchase limit per customer exceeded");
                    break;
                }
                Some((StatusCode::SERVICE_UNAVAILABLE, _, _)) | None => {}
                Some((status, _, answer)) => panic!("{status}: {answer}"),
            }
            tries += 1;
            // A key whose order may have been booked is retried until it settles; the
            // bound is far beyond any failover the steps cause.
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{key} never got an answer"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The nodes that are up serve each store once between them (their `stores_owned`
/// gauges add up to the number of stores), once each has looked at the table.
async fn served_once(
    nodes: &[State],
    stores: usize,
    applied: &[Step],
) -> Result<(), TestCaseError> {
    let started = Instant::now();
    loop {
        let mut owned = 0;
        for node in up(nodes) {
            let (_, metrics) = node.api.text("/metrics").await;
            owned += metrics
                .lines()
                .find_map(|l| l.strip_prefix("kitara_stores_owned "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0) as usize;
        }
        if owned == stores {
            return Ok(());
        }
        prop_assert!(
            started.elapsed() < Duration::from_secs(3),
            "{applied:?}: the nodes up serve {owned} stores, the table has {stores}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn check_database(
    db: &TestDb,
    initial: &BTreeMap<i64, i64>,
    placed: &Placed,
    limited: i64,
    applied: &[Step],
    settled: bool,
) -> Result<(), TestCaseError> {
    db.assert_invariants(initial).await;
    let unbalanced = db.unbalanced().await;
    prop_assert!(
        unbalanced.is_empty(),
        "{applied:?}: kitara check fails: {unbalanced:?}"
    );
    let placed = placed.lock().await;
    let answered: Vec<(i64, &Value)> = placed.iter().map(|(_, b, _, v)| (*b, v)).collect();
    db.assert_orders_stored(&answered).await;
    // A client whose answer was lost (its node killed mid-request) retries its key
    // after the check: its order may be stored, not yet answered. Once the clients
    // are done, every order is one answered.
    let stored = db.count("orders").await as usize;
    let unsettled = if settled { 0 } else { CLIENTS };
    prop_assert!(
        (placed.len()..=placed.len() + unsettled).contains(&stored),
        "{applied:?}: {stored} orders stored, {} answered 200",
        placed.len()
    );
    let held = db
        .query_i64s(&format!(
            "SELECT CAST(COALESCE(MAX(units), 0) AS SIGNED) FROM (SELECT SUM(d.quantity) AS units \
             FROM orders o JOIN order_details d ON d.order_id = o.id \
             WHERE d.product_id = {limited} AND o.status IN ('locked', 'confirmed') \
             GROUP BY o.buyer_id) AS per_buyer"
        ))
        .await;
    prop_assert!(
        held[0][0] <= LIMIT,
        "{applied:?}: a buyer holds {} > {LIMIT}",
        held[0][0]
    );
    Ok(())
}
