//! Several nodes on one MariaDB database: real `kitara serve` processes on random ports,
//! one database per test, a lease of a second. Bursts spread over every node never
//! oversell; a node killed, paused, stopped or joined mid-burst loses no answered order,
//! books a retried key once, passes no limit, and its stores are served again within
//! SPEC.md's bounds; a stale epoch is refused by the fence itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use kitara::db::persist::{self, Batch, Plan, Token};
use kitara::db::write::Fence;
use kitara::domain::{OrderLine, ProductId, StoreId, rightful};
use serde_json::{Value, json};
use tokio::process::Child;
use tokio::sync::Mutex;

use crate::helpers::{ADMIN_TOKEN, Api, Backend, TestDb, order, start_kitara_with};
use crate::mariadb::signal;

/// Short, so that takeovers happen within the test's patience; not so short that a
/// node starved of CPU by three others and MariaDB on two cores misses its heartbeat.
const LEASE: Duration = Duration::from_millis(2000);

/// SIGKILL of an owner: its stores are served by others within the lease + 3 s.
const KILL_BOUND: Duration = Duration::from_secs(5);

crate::on_mysql! {
    three_nodes_sell_a_hot_product_once_mysql => three_nodes_sell_a_hot_product_once().await;
    a_killed_owner_loses_no_answered_order_and_books_a_retried_key_once_mysql =>
        a_killed_owner_loses_no_answered_order().await;
    a_paused_owner_cannot_pass_a_limit_after_a_takeover_mysql =>
        a_paused_owner_cannot_pass_a_limit_after_a_takeover().await;
    a_stale_epoch_is_refused_by_the_fence_mysql => a_stale_epoch_is_refused_by_the_fence().await;
    a_node_stopped_under_load_hands_its_stores_over_within_two_seconds_mysql =>
        a_node_stopped_under_load_hands_its_stores_over().await;
    a_joining_node_takes_only_its_share_mysql => a_joining_node_takes_only_its_share().await;
    holds_of_a_killed_owner_expire_on_time_on_the_new_owner_mysql =>
        holds_of_a_killed_owner_expire_on_time().await;
}

/// A `kitara serve` of the cluster.
pub struct Node {
    pub id: String,
    child: Child,
    pub api: Api,
    pid: u32,
    logs: std::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>,
}

impl Node {
    pub async fn start(db: &TestDb, id: &str) -> Self {
        Self::launch(&[], ("127.0.0.1", 0), &db.url, id).await
    }

    /// A node run by `launcher` (see `start_kitara_with`), listening on `listen`,
    /// against the database at `url`.
    pub async fn launch(launcher: &[String], listen: (&str, u16), url: &str, id: &str) -> Self {
        let lease = LEASE.as_millis().to_string();
        let (child, api, logs) = start_kitara_with(
            launcher,
            listen,
            url,
            &[
                ("KITARA_NODE_ID", id),
                ("KITARA_LEASE_MS", &lease),
                ("KITARA_ADMIN_TOKEN", ADMIN_TOKEN),
                ("KITARA_DB_POOL_SIZE", "8"),
            ],
        )
        .await;
        let pid = child.id().expect("a running node has a pid");
        Node {
            id: id.to_owned(),
            child,
            api,
            pid,
            logs: std::sync::Mutex::new(logs),
        }
    }

    /// Its log lines so far (for a failing test's output).
    pub fn logs(&self) -> String {
        let mut logs = self.logs.lock().unwrap();
        let mut text = String::new();
        while let Ok(line) = logs.try_recv() {
            text.push_str(&self.id);
            text.push_str(": ");
            text.push_str(&line);
            text.push('\n');
        }
        text
    }

    pub fn kill(&self) {
        signal(self.pid, "KILL");
    }

    pub fn pause(&self) {
        signal(self.pid, "STOP");
    }

    pub fn resume(&self) {
        signal(self.pid, "CONT");
    }

    /// SIGTERM, and waits for the process to exit; answers when it did.
    pub async fn stop(&mut self) -> Instant {
        signal(self.pid, "TERM");
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("a node stops within 30 s of SIGTERM")
            .expect("wait for the node");
        assert!(status.success(), "{} exited with {status}", self.id);
        Instant::now()
    }

    pub async fn wait_exit(&mut self) {
        let _ = self.child.wait().await;
    }
}

/// Each live store's owner and epoch, as the ownership table has them.
pub async fn owners(db: &TestDb) -> BTreeMap<i64, (Option<String>, i64)> {
    owners_on(&db.conn).await
}

pub async fn owners_on(conn: &sea_orm::DatabaseConnection) -> BTreeMap<i64, (Option<String>, i64)> {
    use sea_orm::ConnectionTrait;
    let rows = conn
        .query_all_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            "SELECT o.store_id, o.owner, o.epoch FROM kitara_store_owners o \
             JOIN stores s ON s.id = o.store_id WHERE s.deleted_at IS NULL",
        ))
        .await
        .expect("owners");
    rows.iter()
        .map(|r| {
            (
                r.try_get_by_index::<i64>(0).unwrap(),
                (
                    r.try_get_by_index::<Option<String>>(1).unwrap(),
                    r.try_get_by_index::<i64>(2).unwrap(),
                ),
            )
        })
        .collect()
}

/// Waits until every store is owned by its rightful node among `nodes`, and each node
/// has loaded what it owns (its `/readyz` answers 200 once what it took is loaded);
/// answers how long that took.
pub async fn settled(db: &TestDb, nodes: &[&Node], within: Duration) -> Duration {
    let started = Instant::now();
    let live: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    loop {
        let owners = owners(db).await;
        let wrong: Vec<(i64, Option<String>)> = owners
            .iter()
            .filter(|(s, (o, _))| o.as_deref() != rightful(StoreId(**s), live.iter().copied()))
            .map(|(s, (o, _))| (*s, o.clone()))
            .collect();
        if wrong.is_empty() {
            let mut ready = true;
            for node in nodes {
                ready &= node.api.text("/readyz").await.0 == StatusCode::OK;
            }
            if ready {
                return started.elapsed();
            }
        }
        assert!(
            started.elapsed() < within,
            "stores not with their rightful owner among {live:?} after {within:?}: {wrong:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Makes `stores` stores through `api`, each with one product of `stock` units (and
/// `limit` per customer); answers the products, by store.
pub async fn stores_with_products(
    api: &Api,
    stores: usize,
    stock: i64,
    limit: Option<i64>,
) -> BTreeMap<i64, i64> {
    let mut made = BTreeMap::new();
    for i in 0..stores {
        let (status, store) = api
            .admin(
                Method::POST,
                "/api/v1/admin/stores",
                Some(&json!({"store_name": format!("store {i}"), "user_id": 1})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{store}");
        let store_id = store["data"]["id"].as_i64().unwrap();
        let body = json!({
            "product_name": format!("product {i}"),
            "store_id": store_id,
            "current_stock": stock,
            "max_per_customer": limit,
        });
        // A store may be on its way to the node that should own it, as nodes join:
        // 503 with Retry-After, as SPEC.md has it, and a retry gets through.
        let started = Instant::now();
        let product = loop {
            let (status, product) = api
                .admin(Method::POST, "/api/v1/admin/products", Some(&body))
                .await;
            match status {
                StatusCode::CREATED => break product,
                StatusCode::SERVICE_UNAVAILABLE if started.elapsed() < KILL_BOUND => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => panic!("{other}: {product}"),
            }
        };
        made.insert(store_id, product["data"]["id"].as_i64().unwrap());
    }
    made
}

/// `N` nodes on `db` (`n1`, `n2`, …), serving `stores` new stores of one product of
/// `stock` units each (`limit` per customer), every store with its rightful owner; the
/// products, by store.
pub async fn nodes_with_stores<const N: usize>(
    db: &TestDb,
    stores: usize,
    stock: i64,
    limit: Option<i64>,
) -> ([Node; N], BTreeMap<i64, i64>) {
    let mut nodes = Vec::new();
    for n in 1..=N {
        nodes.push(Node::start(db, &format!("n{n}")).await);
    }
    let products = stores_with_products(&nodes[0].api, stores, stock, limit).await;
    settled(
        db,
        &nodes.iter().collect::<Vec<_>>(),
        Duration::from_secs(5),
    )
    .await;
    let Ok(nodes) = nodes.try_into() else {
        unreachable!("N nodes were started")
    };
    (nodes, products)
}

/// Where the tests of an owner leaving mid-burst begin: three nodes serving three stores
/// of `stock` units each; the first store's product, the index and id of the node that
/// owns its store, and a client for each node.
async fn three_nodes_and_a_hot_product(
    db: &TestDb,
    stock: i64,
) -> ([Node; 3], i64, usize, String, Arc<Vec<Api>>) {
    let (nodes, products) = nodes_with_stores::<3>(db, 3, stock, None).await;
    let (&store, &hot) = products.iter().next().expect("a store");
    let owner = owners(db).await[&store].0.clone().expect("an owner");
    let at = nodes
        .iter()
        .position(|n| n.id == owner)
        .expect("a node owns it");
    let apis = Arc::new(nodes.iter().map(|n| Api::new(n.api.addr)).collect());
    (nodes, hot, at, owner, apis)
}

/// A lock, retried while it is answered 503 with `Retry-After` (a store being loaded by
/// the node that just took it), as a client that honours `Retry-After` would, for up to
/// the takeover bound.
pub async fn lock_when_served(api: &Api, body: &Value) -> (StatusCode, Value) {
    let started = Instant::now();
    loop {
        let (status, headers, answer) = api
            .try_lock_keyed(body, None, Duration::from_secs(10))
            .await
            .expect("the node answers");
        assert_retry_after(status, &headers, &answer);
        if status != StatusCode::SERVICE_UNAVAILABLE || started.elapsed() > KILL_BOUND {
            return (status, answer);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn node_of(headers: &hyper::HeaderMap) -> String {
    headers
        .get("kitara-node")
        .and_then(|v| v.to_str().ok())
        .expect("every answer names its node")
        .to_owned()
}

/// A 503 says when to come back.
fn assert_retry_after(status: StatusCode, headers: &hyper::HeaderMap, body: &Value) {
    if status == StatusCode::SERVICE_UNAVAILABLE {
        assert!(
            headers.contains_key("retry-after"),
            "503 without Retry-After: {body}"
        );
    }
}

/// Three nodes, seven stores spread over them, and 48 clients sending locks to any node
/// for any product: every answer 200 is stored as answered, decided by the product's
/// owner (its `Kitara-Node`), no product is oversold, and `kitara check` adds up.
async fn three_nodes_sell_a_hot_product_once() {
    let db = TestDb::with_demo_data(Backend::Mysql).await;
    let (nodes, products) = nodes_with_stores::<3>(&db, 5, 120, None).await;
    let owners = owners(&db).await;
    let initial = db.stocks().await;
    let mut owner_of: HashMap<i64, String> = HashMap::new();
    for (store, product) in &products {
        owner_of.insert(*product, owners[store].0.clone().unwrap());
    }
    assert!(
        owner_of
            .values()
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 1,
        "the stores landed on one node: {owner_of:?}"
    );
    let apis: Arc<Vec<Api>> = Arc::new(nodes.iter().map(|n| Api::new(n.api.addr)).collect());
    let hot: Vec<i64> = products.values().copied().collect();
    let clients = (0..48).map(|client| {
        let (apis, hot) = (apis.clone(), hot.clone());
        tokio::spawn(async move {
            let mut placed = Vec::new();
            for attempt in 0..40usize {
                let product = hot[(client + attempt) % hot.len()];
                let quantity = 1 + (client % 3) as i64;
                let api = &apis[(client * 7 + attempt) % apis.len()];
                let (status, headers, body) = api
                    .try_lock_keyed(
                        &order(2, &[(product, quantity)]),
                        None,
                        Duration::from_secs(20),
                    )
                    .await
                    .expect("every node answers");
                match status {
                    StatusCode::OK => placed.push((product, node_of(&headers), body)),
                    StatusCode::BAD_REQUEST => {
                        assert_eq!(body["message"], "all product not available", "{body}")
                    }
                    other => return Err(format!("{other}: {body}")),
                }
            }
            Ok(placed)
        })
    });
    let mut answered = Vec::new();
    for client in clients.collect::<Vec<_>>() {
        match client.await.unwrap() {
            Ok(placed) => answered.extend(placed),
            Err(e) => {
                let logs: String = nodes.iter().map(Node::logs).collect();
                let logs: Vec<&str> = logs
                    .lines()
                    .filter(|l| !l.contains("kitara::db:"))
                    .collect();
                panic!("{e}\n{}", logs.join("\n"));
            }
        }
    }
    assert!(
        answered.len() > 100,
        "only {} orders placed",
        answered.len()
    );
    for (product, node, body) in &answered {
        assert_eq!(
            &owner_of[product], node,
            "order decided by a node that does not own it: {body}"
        );
    }
    let stored: Vec<(i64, &Value)> = answered.iter().map(|(_, _, b)| (2, b)).collect();
    db.assert_orders_stored(&stored).await;
    assert_eq!(db.count("orders").await as usize, answered.len());
    db.assert_invariants(&initial).await;
    let sold_out = db.stocks().await.values().filter(|&&s| s == 0).count();
    assert!(sold_out >= 1, "no product sold out: the burst was not hot");
    assert!(db.unbalanced().await.is_empty(), "kitara check fails");
    db.drop_database().await;
}

/// What the clients of a failover saw.
#[derive(Default)]
struct Booked {
    /// Idempotency key, order id, the answer.
    placed: Vec<(String, i64, Value)>,
    /// Attempts that were retried with their key after a 503 or a lost connection.
    retried: usize,
}

/// 24 clients lock a hot product with a key each, through any node; the owner of its
/// store is SIGKILLed mid-burst. A client whose request failed (503, or a connection
/// lost) retries it with the same key through another node. Every answer 200 is stored
/// once, the store is served again within the lease + 3 s, and a replay of every key
/// answers the order it booked.
async fn a_killed_owner_loses_no_answered_order() {
    let db = TestDb::with_demo_data(Backend::Mysql).await;
    let (mut nodes, hot, victim, owner, apis) = three_nodes_and_a_hot_product(&db, 600).await;
    let initial = db.stocks().await;
    let dead = Arc::new(AtomicBool::new(false));
    let placed_count = Arc::new(AtomicUsize::new(0));
    let booked = Arc::new(Mutex::new(Booked::default()));
    let deadline = Instant::now() + Duration::from_secs(25);
    let clients = (0..24).map(|client| {
        let (apis, dead, placed_count, booked) = (
            apis.clone(),
            dead.clone(),
            placed_count.clone(),
            booked.clone(),
        );
        tokio::spawn(async move {
            for attempt in 0.. {
                let key = format!("client-{client}-attempt-{attempt}");
                let mut tries = 0usize;
                loop {
                    // After the kill, through the others only: what the victim had in
                    // flight is what a retry must settle.
                    let pick = (client + attempt + tries) % apis.len();
                    let pick = if dead.load(Ordering::Relaxed) && pick == victim {
                        (pick + 1) % apis.len()
                    } else {
                        pick
                    };
                    let answer = apis[pick]
                        .try_lock_keyed(&order(2, &[(hot, 1)]), Some(&key), Duration::from_secs(20))
                        .await;
                    match answer {
                        Some((StatusCode::OK, _, body)) => {
                            let id = body["data"]["order_id"].as_i64().unwrap();
                            placed_count.fetch_add(1, Ordering::Relaxed);
                            let mut booked = booked.lock().await;
                            booked.placed.push((key, id, body));
                            booked.retried += usize::from(tries > 0);
                            break;
                        }
                        Some((StatusCode::BAD_REQUEST, _, body)) => {
                            assert_eq!(body["message"], "all product not available", "{body}");
                            return;
                        }
                        Some((StatusCode::SERVICE_UNAVAILABLE, headers, body)) => {
                            assert_retry_after(StatusCode::SERVICE_UNAVAILABLE, &headers, &body);
                        }
                        Some((status, _, body)) => panic!("{status}: {body}"),
                        None => {}
                    }
                    tries += 1;
                    assert!(
                        Instant::now() < deadline,
                        "client {client} never got its order through"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
    });
    let mut clients: Vec<_> = clients.collect();
    until_placed(&placed_count, 150, &mut clients, &nodes).await;
    dead.store(true, Ordering::Relaxed);
    nodes[victim].kill();
    let killed = Instant::now();
    let at_kill = placed_count.load(Ordering::Relaxed);
    // The first order placed after the kill was placed by the new owner.
    until_placed(&placed_count, at_kill + 25, &mut clients, &nodes).await;
    let served_again = killed.elapsed();
    for client in clients {
        client.await.unwrap();
    }
    nodes[victim].wait_exit().await;
    println!(
        "killed {owner} after {at_kill} orders; its store served again {served_again:?} later"
    );
    assert!(
        served_again < KILL_BOUND,
        "served again only after {served_again:?}"
    );
    let booked = booked.lock().await;
    let mut ids: Vec<i64> = booked.placed.iter().map(|(_, id, _)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), booked.placed.len(), "an order id answered twice");
    assert_eq!(db.count("orders").await as usize, booked.placed.len());
    let stored: Vec<(i64, &Value)> = booked.placed.iter().map(|(_, _, b)| (2, b)).collect();
    db.assert_orders_stored(&stored).await;
    db.assert_invariants(&initial).await;
    assert!(db.unbalanced().await.is_empty(), "kitara check fails");
    // Every key books its order once: a replay through any live node answers it.
    let live: Vec<&Node> = nodes.iter().filter(|n| n.id != owner).collect();
    for (i, (key, id, _)) in booked.placed.iter().enumerate() {
        let api = &live[i % live.len()].api;
        let (status, headers, body) = api
            .try_lock_keyed(&order(2, &[(hot, 1)]), Some(key), Duration::from_secs(10))
            .await
            .expect("a live node answers");
        assert_eq!(status, StatusCode::OK, "{key}: {body}");
        assert_eq!(body["data"]["order_id"], *id, "{key}");
        assert_eq!(headers.get("idempotent-replayed").unwrap(), "true");
    }
    println!("{} retried attempts booked once each", booked.retried);
    db.drop_database().await;
}

/// Waits until `placed` reaches `count`. A client that ended first (none may: the stock
/// outlasts the test) fails the test with its panic and the nodes' logs, and so does a
/// wait longer than a minute, far more than the orders take, so that a stuck cluster
/// fails rather than hangs.
async fn until_placed(
    placed: &AtomicUsize,
    count: usize,
    clients: &mut Vec<tokio::task::JoinHandle<()>>,
    nodes: &[Node],
) {
    let started = Instant::now();
    while placed.load(Ordering::Relaxed) < count {
        let ended = clients.iter().position(|c| c.is_finished());
        if ended.is_some() || started.elapsed() > Duration::from_secs(60) {
            let logs: String = nodes.iter().map(Node::logs).collect();
            eprintln!("{logs}");
            if let Some(at) = ended
                && let Err(e) = clients.remove(at).await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
            panic!(
                "{} orders placed, not {count}, after {:?}",
                placed.load(Ordering::Relaxed),
                started.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The fence, without timing luck: the owner of a limited product's store is paused
/// past its lease; another node takes the store and sells the buyer up to the limit;
/// the old owner, resumed, is asked for one more at once. Its memory says the buyer
/// has room; the answer must not be 200, and the database never holds more than the
/// limit.
async fn a_paused_owner_cannot_pass_a_limit_after_a_takeover() {
    let db = TestDb::with_demo_data(Backend::Mysql).await;
    let (nodes, products) = nodes_with_stores::<2>(&db, 4, 100, Some(2)).await;
    let owners_before = owners(&db).await;
    let (&store, &limited) = products.iter().next().unwrap();
    let (owner, epoch) = owners_before[&store].clone();
    let owner = owner.unwrap();
    let (old, new) = match nodes[0].id == owner {
        true => (&nodes[0], &nodes[1]),
        false => (&nodes[1], &nodes[0]),
    };
    let buyer = 3;
    let (status, body) = old.api.lock(&order(buyer, &[(limited, 1)])).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{body}\n{}{}",
        old.logs(),
        new.logs()
    );

    old.pause();
    let paused = Instant::now();
    loop {
        let (o, e) = owners(&db).await[&store].clone();
        if o.as_deref() == Some(new.id.as_str()) {
            assert!(e > epoch, "a takeover raises the epoch");
            break;
        }
        assert!(
            paused.elapsed() < KILL_BOUND,
            "the store was not taken over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The row names the new owner as soon as its take commits; it serves the store
    // once it has loaded it (503 until then, as SPEC.md has it).
    let (status, body) = lock_when_served(&new.api, &order(buyer, &[(limited, 1)])).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the new owner sells up to the limit: {body}"
    );

    old.resume();
    // One more unit past the limit, through the old owner; never 200.
    let one_more = || async {
        let (status, headers, body) = old
            .api
            .try_lock_keyed(
                &order(buyer, &[(limited, 1)]),
                None,
                Duration::from_secs(10),
            )
            .await
            .expect("the resumed node answers");
        assert_ne!(
            status,
            StatusCode::OK,
            "a stale owner passed the limit: {body}"
        );
        (status, headers, body)
    };
    let (status, headers, body) = one_more().await;
    println!(
        "the old owner, resumed, answered {status}: {}",
        body["message"]
    );
    assert_retry_after(status, &headers, &body);
    // Once it has seen the table, it forwards to the owner, which refuses.
    let refused = Instant::now();
    loop {
        let (status, _, body) = one_more().await;
        if status == StatusCode::BAD_REQUEST {
            assert_eq!(body["message"], "purchase limit per customer exceeded");
            break;
        }
        assert!(
            refused.elapsed() < Duration::from_secs(5),
            "{status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = db
        .query_i64s(&format!(
            "SELECT CAST(COALESCE(SUM(d.quantity), 0) AS SIGNED) FROM orders o JOIN order_details d ON d.order_id = o.id \
             WHERE o.buyer_id = {buyer} AND d.product_id = {limited} AND o.status IN ('locked', 'confirmed')"
        ))
        .await;
    assert_eq!(held, vec![vec![2]], "the buyer holds more than the limit");
    assert!(db.unbalanced().await.is_empty(), "kitara check fails");
    db.drop_database().await;
}

/// The plan of a transaction that writes order `id` (one unit of product 1, for user 2)
/// of store 1, fenced at `epoch`.
pub fn fenced_order(epoch: i64, id: i64) -> Plan {
    let lines = [OrderLine {
        product: ProductId(1),
        quantity: 1,
    }];
    let batch = Batch {
        orders: vec![persist::NewOrder {
            id,
            buyer: 2,
            store: 1,
            total: 1,
            first_detail_id: id,
            lines: &lines,
            expires_at: None,
        }],
        fences: vec![Fence {
            store: StoreId(1),
            epoch,
        }],
        ..Default::default()
    };
    Plan::new(
        &batch,
        &Token::new(&[u128::from(epoch as u64), id as u128]),
        true,
    )
}

/// The fence itself: a transaction that writes an order of a store, fenced at an epoch
/// the store has left, is refused and writes nothing; at the store's epoch, it commits
/// and changes the store's ownership row.
async fn a_stale_epoch_is_refused_by_the_fence() {
    use sea_orm::TransactionTrait;
    let db = TestDb::with_demo_data(Backend::Mysql).await;
    // The demo data came after the migration: its stores have no row yet (a node's
    // start makes them).
    db.exec("INSERT INTO kitara_store_owners (store_id, owner, epoch) VALUES (1, 'n2', 7)")
        .await;
    let stock = db.stocks().await[&1];
    for stale in [6, 8] {
        let txn = db.conn.begin().await.unwrap();
        let refused = persist::write_plan(&txn, &fenced_order(stale, 100 + stale)).await;
        txn.rollback().await.unwrap();
        assert!(
            matches!(refused, Err(persist::WriteError::GuardTripped { .. })),
            "epoch {stale} of a store at 7 was not refused: {refused:?}"
        );
    }
    assert_eq!(db.count("orders").await, 0);
    assert_eq!(db.stocks().await[&1], stock);
    let fenced = "SELECT fenced FROM kitara_store_owners WHERE store_id = 1";
    let before = db.query_i64s(fenced).await;
    let txn = db.conn.begin().await.unwrap();
    persist::write_plan(&txn, &fenced_order(7, 200))
        .await
        .expect("the owner's epoch commits");
    txn.commit().await.unwrap();
    assert_eq!(db.count("orders").await, 1);
    assert_eq!(db.stocks().await[&1], stock - 1);
    assert_eq!(
        db.query_i64s(fenced).await,
        vec![vec![before[0][0] + 1]],
        "the fence changes its row"
    );
    db.drop_database().await;
}

/// SIGTERM to the owner of a hot store under load (clients on every node): every
/// answer is 200, 400, or 503 with `Retry-After`, no answered order is lost, and another
/// node serves the store within 2 s of the node's exit.
async fn a_node_stopped_under_load_hands_its_stores_over() {
    let db = TestDb::with_demo_data(Backend::Mysql).await;
    let (mut nodes, hot, leaving, owner, apis) = three_nodes_and_a_hot_product(&db, 100_000).await;
    let initial = db.stocks().await;
    let stop = Arc::new(AtomicBool::new(false));
    let placed_at: Arc<Mutex<Vec<(Instant, String, Value)>>> = Arc::default();
    let clients = (0..16).map(|client| {
        let (apis, stop, placed_at) = (apis.clone(), stop.clone(), placed_at.clone());
        tokio::spawn(async move {
            let mut attempt = 0usize;
            while !stop.load(Ordering::Relaxed) {
                attempt += 1;
                let api = &apis[(client + attempt) % apis.len()];
                // The stopped node's port closes: a connection refused is no answer.
                let Some((status, headers, body)) = api
                    .try_lock_keyed(&order(2, &[(hot, 1)]), None, Duration::from_secs(20))
                    .await
                else {
                    continue;
                };
                assert_retry_after(status, &headers, &body);
                match status {
                    StatusCode::OK => {
                        placed_at
                            .lock()
                            .await
                            .push((Instant::now(), node_of(&headers), body))
                    }
                    StatusCode::SERVICE_UNAVAILABLE => {}
                    other => panic!("{other}: {body}"),
                }
            }
        })
    });
    let clients: Vec<_> = clients.collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let exited = nodes[leaving].stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let placed = placed_at.lock().await;
    let first_after = placed
        .iter()
        .filter(|(at, node, _)| *at > exited && *node != owner)
        .map(|(at, _, _)| *at - exited)
        .min()
        .expect("the store was served again after its owner left");
    println!("{owner} left; its store was served again {first_after:?} after its exit");
    assert!(
        first_after < Duration::from_secs(2),
        "served again only after {first_after:?}"
    );
    let stored: Vec<(i64, &Value)> = placed.iter().map(|(_, _, b)| (2, b)).collect();
    db.assert_orders_stored(&stored).await;
    assert_eq!(db.count("orders").await as usize, placed.len());
    db.assert_invariants(&initial).await;
    assert!(db.unbalanced().await.is_empty(), "kitara check fails");
    db.drop_database().await;
}

/// Two nodes own twelve stores; a third joins. Once it answers `/readyz`, it owns its
/// share within the lease + 3 s; only the stores it now wins moved, each once with its
/// epoch raised, and no epoch ever fell.
async fn a_joining_node_takes_only_its_share() {
    let db = TestDb::with_demo_data(Backend::Mysql).await;
    let (first, _) = nodes_with_stores::<2>(&db, 10, 10, None).await;
    let before = owners(&db).await;
    let sampling = Arc::new(AtomicBool::new(true));
    let samples = {
        let (sampling, url) = (sampling.clone(), db.url.clone());
        tokio::spawn(async move {
            let conn = kitara::db::connect(&crate::helpers::database_args(&url))
                .await
                .unwrap();
            let watcher = TestDbView { conn };
            let mut last: BTreeMap<i64, (Option<String>, i64)> = BTreeMap::new();
            let mut changes: BTreeMap<i64, Vec<(Option<String>, i64)>> = BTreeMap::new();
            while sampling.load(Ordering::Relaxed) {
                for (store, now) in watcher.owners().await {
                    if let Some(was) = last.get(&store) {
                        assert!(
                            now.1 >= was.1,
                            "store {store}'s epoch fell: {was:?} then {now:?}"
                        );
                        if was.0 != now.0 {
                            changes.entry(store).or_default().push(now.clone());
                        }
                    }
                    last.insert(store, now);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            changes
        })
    };
    let third = Node::start(&db, "n3").await;
    let ready = Instant::now();
    let (status, _) = third.api.text("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    let took = settled(
        &db,
        &[&first[0], &first[1], &third],
        LEASE + Duration::from_secs(3),
    )
    .await;
    sampling.store(false, Ordering::Relaxed);
    let changes = samples.await.unwrap();
    println!(
        "n3 owned its share {took:?} after /readyz ({:?} since)",
        ready.elapsed()
    );
    let after = owners(&db).await;
    let mut moved = 0;
    for (store, (owner, epoch)) in &after {
        let rightful = rightful(StoreId(*store), ["n1", "n2", "n3"]).unwrap();
        assert_eq!(owner.as_deref(), Some(rightful));
        if rightful == "n3" {
            moved += 1;
            assert!(
                *epoch > before[store].1,
                "store {store} taken without a new epoch"
            );
        } else {
            assert_eq!(
                (owner, *epoch),
                (&before[store].0, before[store].1),
                "store {store} moved"
            );
        }
    }
    assert!(moved > 0, "n3 won no store");
    for (store, seen) in &changes {
        // Released (no owner), then n3: never another node in between.
        let owners: Vec<Option<&str>> = seen.iter().map(|(o, _)| o.as_deref()).collect();
        assert!(
            owners.iter().all(|o| o.is_none() || *o == Some("n3")),
            "store {store} went through {owners:?}"
        );
    }
    db.drop_database().await;
}

/// A pool of its own, for a task that watches the table while the test runs.
struct TestDbView {
    conn: sea_orm::DatabaseConnection,
}

impl TestDbView {
    async fn owners(&self) -> BTreeMap<i64, (Option<String>, i64)> {
        owners_on(&self.conn).await
    }
}

/// Holds locked on an owner that is then SIGKILLed expire on the node that takes the
/// store, within 1 s of their deadline or of the takeover, whichever is later.
async fn holds_of_a_killed_owner_expire_on_time() {
    let db = TestDb::with_demo_data(Backend::Mysql).await;
    let (nodes, products) = nodes_with_stores::<2>(&db, 3, 50, None).await;
    let (&store, &product) = products.iter().next().unwrap();
    let (owner, epoch) = owners(&db).await[&store].clone();
    let (victim, survivor) = match nodes[0].id == owner.clone().unwrap() {
        true => (&nodes[0], &nodes[1]),
        false => (&nodes[1], &nodes[0]),
    };
    // One hold that falls due before the takeover, one after it.
    let mut holds = Vec::new();
    for seconds in [1, 4] {
        let body = json!({"user_id": 2, "hold_seconds": seconds, "products": [{"product_id": product, "quantity": 2}]});
        let (status, answer) = victim.api.lock(&body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let deadline =
            chrono::DateTime::parse_from_rfc3339(answer["data"]["expires_at"].as_str().unwrap())
                .unwrap()
                .with_timezone(&chrono::Utc);
        holds.push((answer["data"]["order_id"].as_i64().unwrap(), deadline));
    }
    victim.kill();
    let mut taken_at = None;
    let mut expired_at: BTreeMap<i64, chrono::DateTime<chrono::Utc>> = BTreeMap::new();
    let started = Instant::now();
    while expired_at.len() < holds.len() {
        if taken_at.is_none() {
            let (o, e) = owners(&db).await[&store].clone();
            if o.as_deref() == Some(survivor.id.as_str()) && e > epoch {
                taken_at = Some(chrono::Utc::now());
            }
        }
        for (id, _) in &holds {
            if !expired_at.contains_key(id) {
                let (_, body) = survivor.api.get_order(id).await;
                if body["data"]["status"] == "expired" {
                    expired_at.insert(*id, chrono::Utc::now());
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "holds not expired: {expired_at:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let taken_at = taken_at.expect("the store was taken over");
    for (id, deadline) in &holds {
        let due = (*deadline).max(taken_at);
        let late = expired_at[id] - due;
        println!(
            "hold {id}: deadline {deadline}, taken over {taken_at}, expired {late} after the later"
        );
        assert!(
            late < chrono::TimeDelta::milliseconds(1_000),
            "hold {id} expired {late} late"
        );
    }
    assert_eq!(
        db.stocks().await[&product],
        50,
        "the expired holds' units are back"
    );
    assert!(db.unbalanced().await.is_empty(), "kitara check fails");
    db.drop_database().await;
}
