//! Kitara on a three-node MariaDB Galera cluster (`scripts/galera-cluster`): three
//! "machines" (network namespaces), each with a Galera node and a Kitara node connected
//! to it. A flash sale runs through all three Kitara nodes, with `Idempotency-Key`
//! retries through any node, while a fault strikes a machine: its Galera node killed,
//! the whole machine killed, the machine cut off by a network partition, its Galera
//! node paused past the suspect timeout, or its Kitara node's clock skewed. After each:
//! every order answered 200 is stored once on every Galera node, no unit is sold twice,
//! no limit is passed, holds end on time, `kitara check` passes on every node, and every
//! store was served again within a bound.
//!
//! The cluster is shared by the module's tests, one at a time, and restored between
//! them (`Bed::restore`); it is stopped when the test process ends. It needs root (the
//! namespaces), `galera-4` and `rsync`: without them the tests are skipped, except under
//! `CI=true`, where they fail.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{Mutex, MutexGuard};

use crate::cluster::{Node, fenced_order, owners_on, settled, stores_with_products};
use crate::helpers::{Api, TestDb, database_args, series};

/// How long a store may go without an order placed while clients keep asking, through
/// any fault here: Galera's eviction of a lost node (3 s with the test bed's settings),
/// the Kitara lease (2 s), loading the store, and the clients' own retry timeouts.
const SERVED_AGAIN_WITHIN: Duration = Duration::from_secs(20);

/// Units each customer may hold or buy of each store's limited product.
const LIMIT: i64 = 5;

/// Clients of the sale, each a customer of its own.
const CLIENTS: usize = 24;

/// Where each machine's Kitara node listens.
const KITARA_PORT: u16 = 6071;

macro_rules! on_galera {
    ($($name:ident => $body:expr;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if Bed::available() {
                    $body
                }
            }
        )*
    };
}

on_galera! {
    a_killed_galera_node_loses_no_answered_order => a_sale_loses_nothing(Fault::KillGalera).await;
    a_killed_machine_loses_no_answered_order => a_sale_loses_nothing(Fault::KillMachine).await;
    a_partitioned_machine_loses_no_answered_order => a_sale_loses_nothing(Fault::Partition).await;
    a_paused_galera_node_loses_no_answered_order => a_sale_loses_nothing(Fault::PauseGalera).await;
    a_skewed_kitara_clock_loses_no_answered_order => a_sale_loses_nothing(Fault::SkewedClock).await;
    a_certification_conflict_is_written_again_not_refused => a_certification_conflict_is_written_again().await;
    a_stale_owner_cannot_commit_after_a_takeover_on_another_galera_node =>
        a_stale_owner_cannot_commit_after_a_takeover().await;
}

/// The private cluster (see `scripts/galera-cluster`).
pub struct Bed {
    dir: PathBuf,
    addresses: Vec<String>,
}

static BED: Mutex<Option<Bed>> = Mutex::const_new(None);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/galera-cluster")
}

/// `scripts/galera-cluster COMMAND DIR ARGS…`, to run.
fn script_command(command: &str, dir: &Path, args: &[&str]) -> tokio::process::Command {
    let mut script = tokio::process::Command::new(script());
    script.arg(command).arg(dir).args(args);
    script
}

/// Its output; the script's failure, with what it wrote, fails the test.
fn succeeded(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Bed {
    /// Whether this machine can run the cluster: root, `galera-4`, `rsync`, `mariadbd`.
    pub fn available() -> bool {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| out.stdout.starts_with(b"0\n"));
        let found = root
            && std::path::Path::new("/usr/lib/galera/libgalera_smm.so").exists()
            && ["rsync", "faketime", "ip"].iter().all(|tool| {
                std::process::Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .output()
                    .is_ok_and(|out| out.status.success())
            })
            && crate::mariadb::PrivateMariadb::available();
        crate::helpers::runnable(
            found,
            "CI=true but the Galera tests cannot run: they need root, galera-4, rsync, faketime and iproute2",
            "skipping a Galera test: needs root, galera-4, rsync, faketime, iproute2",
        )
    }

    /// The shared cluster, started if this is the first test to ask, restored
    /// otherwise; held until the guard is dropped.
    pub async fn shared() -> MutexGuard<'static, Option<Bed>> {
        let mut bed = BED.lock().await;
        match bed.as_ref() {
            Some(started) => started.restore().await,
            None => *bed = Some(Self::start().await),
        }
        bed
    }

    async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kitara-galera-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let started = Instant::now();
        let pid = std::process::id().to_string();
        let out = script_command("start", &dir, &[])
            .env("GALERA_STOP_WITH", &pid)
            .output()
            .await
            .expect("run scripts/galera-cluster");
        let nodes = succeeded(out, "the Galera cluster did not start");
        println!(
            "a Galera cluster of three nodes started in {:?}:\n{nodes}",
            started.elapsed()
        );
        let mut bed = Self {
            dir,
            addresses: Vec::new(),
        };
        for n in 1..=3 {
            let address = bed.run(&["address", &n.to_string()]).await;
            bed.addresses.push(address.trim().to_owned());
        }
        bed
    }

    /// Runs a command of the script on this cluster; its output.
    async fn run(&self, args: &[&str]) -> String {
        let (command, rest) = args.split_first().expect("a command");
        let out = script_command(command, &self.dir, rest)
            .output()
            .await
            .expect("run scripts/galera-cluster");
        succeeded(out, &format!("galera-cluster {args:?}"))
    }

    async fn on(&self, command: &str, n: usize) {
        self.run(&[command, &n.to_string()]).await;
    }

    pub fn address(&self, n: usize) -> &str {
        &self.addresses[n - 1]
    }

    /// Node `n`'s server, without a database.
    pub fn url(&self, n: usize) -> String {
        format!("mysql://kitara:kitara@{}:3306", self.address(n))
    }

    /// A database of the test's own with the demo data, made through node 1: Galera
    /// copies it to the others.
    async fn demo_db(&self) -> TestDb {
        let db = TestDb::on_server(&self.url(1)).await;
        kitara::db::migrate_and_seed(&db.conn, true)
            .await
            .expect("demo data");
        db
    }

    /// A connection to `db` through node `n`, as a tool beside Kitara would open it.
    async fn connect(&self, db: &TestDb, n: usize) -> sea_orm::DatabaseConnection {
        kitara::db::connect(&database_args(&db.url_on(&self.url(n))))
            .await
            .unwrap_or_else(|e| panic!("connect to node {n}: {e}"))
    }

    /// What runs a program on machine `n`.
    pub fn launcher(&self, n: usize) -> Vec<String> {
        vec![
            script().display().to_string(),
            "exec".into(),
            self.dir.display().to_string(),
            n.to_string(),
        ]
    }

    /// Every node running, reachable and synced, whatever a test left behind.
    async fn restore(&self) {
        for n in 1..=3 {
            self.on("resume", n).await;
            self.on("heal", n).await;
        }
        for n in 1..=3 {
            if !self.running(n).await {
                self.on("restart", n).await;
            }
        }
        self.run(&["wait"]).await;
    }

    async fn running(&self, n: usize) -> bool {
        script_command("running", &self.dir, &[&n.to_string()])
            .status()
            .await
            .is_ok_and(|s| s.success())
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// SIGKILL of machine 2's Galera node; restarted 6 s later.
    KillGalera,
    /// SIGKILL of machine 3's Kitara node and Galera node together; both restarted 6 s
    /// later.
    KillMachine,
    /// Machine 3 cut off from the others (its link down) for 8 s.
    Partition,
    /// SIGSTOP of machine 1's Galera node for 8 s, past the suspect timeout.
    PauseGalera,
    /// Machine 3's Kitara node runs 5 s ahead of the others' clocks, all along.
    SkewedClock,
}

/// The machine a fault strikes.
impl Fault {
    fn machine(self) -> usize {
        match self {
            Fault::KillGalera => 2,
            Fault::PauseGalera => 1,
            Fault::KillMachine | Fault::Partition | Fault::SkewedClock => 3,
        }
    }
}

/// An order answered 200.
struct Placed {
    key: String,
    request: Value,
    /// The store, for an order of its unlimited product.
    store: Option<usize>,
    user: i64,
    body: Value,
    at: Instant,
}

#[derive(Default)]
struct Sale {
    placed: Vec<Placed>,
    limited: usize,
    retried: usize,
    /// Answers no sale may get, with when and from which node.
    wrong: Vec<String>,
}

async fn start_node(bed: &Bed, db: &TestDb, n: usize, skewed: bool) -> Node {
    let mut launcher = bed.launcher(n);
    if skewed {
        // libfaketime itself (not the `faketime` wrapper, which would stand between the
        // test and Kitara's pid).
        launcher.extend(
            [
                "env",
                "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                "FAKETIME=+5s",
            ]
            .map(String::from),
        );
    }
    // Each machine has its own address: the same port on every one, so that a node
    // restarted on its machine is where its clients look for it.
    Node::launch(
        &launcher,
        (bed.address(n), KITARA_PORT),
        &db.url_on(&bed.url(n)),
        &format!("m{n}"),
    )
    .await
}

/// The sale and its checks, with `fault` striking three seconds in.
async fn a_sale_loses_nothing(fault: Fault) {
    let bed = Bed::shared().await;
    let bed = bed.as_ref().expect("started");
    let db = bed.demo_db().await;
    let mut nodes = Vec::new();
    for n in 1..=3 {
        nodes.push(start_node(bed, &db, n, fault == Fault::SkewedClock && n == 3).await);
    }
    let stores = stores_with_products(&nodes[0].api, 3, 1_000_000, None).await;
    let products: Vec<i64> = stores.values().copied().collect();
    let mut limited = Vec::new();
    for &store in stores.keys() {
        limited.push(limited_product(&nodes[0].api, store).await);
    }
    settled(
        &db,
        &nodes.iter().collect::<Vec<_>>(),
        Duration::from_secs(20),
    )
    .await;
    let mut users = Vec::new();
    for client in 0..CLIENTS {
        let (status, user) = nodes[0]
            .api
            .admin(
                Method::POST,
                "/api/v1/admin/users",
                Some(&json!({"name": format!("buyer {client}")})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{user}");
        users.push(user["data"]["id"].as_i64().unwrap());
    }
    if fault == Fault::SkewedClock {
        let (_, text) = nodes[2].api.text("/healthz").await;
        let answer: Value = serde_json::from_str(&text).expect("JSON");
        let theirs = chrono::DateTime::parse_from_rfc3339(answer["server_time"].as_str().unwrap())
            .expect("server_time");
        let ahead = theirs.signed_duration_since(chrono::Utc::now());
        assert!(
            ahead > chrono::TimeDelta::seconds(4),
            "machine 3's Kitara clock is not ahead: {ahead}"
        );
    }
    let initial = db.stocks().await;
    let apis: Arc<Vec<Api>> = Arc::new(nodes.iter().map(|n| Api::new(n.api.addr)).collect());
    // Machines the clients cannot reach: they try the others.
    let down: Arc<Vec<AtomicBool>> = Arc::new((0..3).map(|_| AtomicBool::new(false)).collect());
    let sale = Arc::new(Mutex::new(Sale::default()));
    let started = Instant::now();
    let fault_at = started + Duration::from_secs(3);
    let ends_at = fault_at + Duration::from_secs(20);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (apis, down, sale, user) =
                (apis.clone(), down.clone(), sale.clone(), users[client]);
            let (products, limited) = (products.clone(), limited.clone());
            tokio::spawn(async move {
                let mut i = 0usize;
                while Instant::now() < ends_at {
                    let store = (client + i) % products.len();
                    let key = format!("c{client}-o{i}");
                    // One order in four holds for 4 s only: its expiry falls in the sale.
                    let hold = if i.is_multiple_of(4) {
                        json!(4)
                    } else {
                        Value::Null
                    };
                    // One in five asks for the store's limited product.
                    let hot = i % 5 != 4;
                    let product = if hot { products[store] } else { limited[store] };
                    let body = json!({
                        "user_id": user,
                        "hold_seconds": hold,
                        "products": [{"product_id": product, "quantity": 1}],
                    });
                    let mut tries = 0usize;
                    loop {
                        let mut pick = (client + i + tries) % apis.len();
                        while down[pick].load(Ordering::Relaxed) {
                            pick = (pick + 1) % apis.len();
                        }
                        let answer = apis[pick]
                            .try_lock_keyed(&body, Some(&key), Duration::from_secs(3))
                            .await;
                        match answer {
                            Some((StatusCode::OK, _, answer)) => {
                                let mut sale = sale.lock().await;
                                sale.placed.push(Placed {
                                    key,
                                    request: body,
                                    store: hot.then_some(store),
                                    user,
                                    body: answer,
                                    at: Instant::now(),
                                });
                                sale.retried += usize::from(tries > 0);
                                break;
                            }
                            Some((StatusCode::BAD_REQUEST, _, answer))
                                if answer["message"] == "purchase limit per customer exceeded" =>
                            {
                                sale.lock().await.limited += 1;
                                break;
                            }
                            Some((StatusCode::SERVICE_UNAVAILABLE, headers, _))
                                if headers.contains_key("retry-after") => {}
                            Some((status, headers, answer)) => {
                                let node = headers.get("kitara-node").cloned();
                                sale.lock().await.wrong.push(format!(
                                    "{status} from {node:?} for {key} ({body}): {answer}"
                                ));
                                break;
                            }
                            None => {}
                        }
                        tries += 1;
                        assert!(
                            Instant::now() < ends_at + SERVED_AGAIN_WITHIN,
                            "client {client}: order {key} never got through"
                        );
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(60)).await;
                }
            })
        })
        .collect();

    tokio::time::sleep_until(fault_at.into()).await;
    let m = fault.machine();
    match fault {
        Fault::KillGalera => bed.on("kill", m).await,
        Fault::KillMachine => {
            down[m - 1].store(true, Ordering::Relaxed);
            nodes[m - 1].kill();
            bed.on("kill", m).await;
        }
        Fault::Partition => {
            down[m - 1].store(true, Ordering::Relaxed);
            bed.on("cut", m).await;
        }
        Fault::PauseGalera => bed.on("pause", m).await,
        Fault::SkewedClock => {}
    }
    let heal_at = Instant::now()
        + Duration::from_secs(match fault {
            Fault::KillGalera | Fault::KillMachine => 6,
            _ => 8,
        });
    if fault != Fault::SkewedClock {
        // The struck machine's Kitara node keeps no lease: a healthy node takes its
        // stores before the fault ends.
        let healthy = bed.connect(&db, m % 3 + 1).await;
        let struck = format!("m{m}");
        loop {
            let owners = owners_on(&healthy).await;
            if owners
                .values()
                .all(|(owner, _)| owner.as_deref() != Some(struck.as_str()))
            {
                println!(
                    "{struck} owned no store {:?} into the fault",
                    fault_at.elapsed()
                );
                break;
            }
            assert!(
                Instant::now() < heal_at,
                "{struck} still owns stores before the fault ends: {owners:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        healthy.close().await.ok();
    }
    if fault == Fault::Partition {
        // Cut off, its Galera node is outside the primary component: its Kitara node
        // says it is not ready.
        let mut curl = bed.launcher(m);
        curl.extend(
            [
                "curl",
                "-s",
                "-w",
                " %{http_code}",
                &format!("http://{}:{KITARA_PORT}/readyz", bed.address(m)),
            ]
            .map(String::from),
        );
        loop {
            let out = tokio::process::Command::new(&curl[0])
                .args(&curl[1..])
                .output()
                .await
                .expect("curl on the machine");
            let status = String::from_utf8_lossy(&out.stdout).into_owned();
            if status.ends_with(" 503") {
                assert!(
                    status.contains("Galera node is outside the primary component"),
                    "{status}"
                );
                println!("m{m} not ready {:?} into the fault", fault_at.elapsed());
                break;
            }
            assert!(
                Instant::now() < heal_at,
                "/readyz of a cut-off node still answers {status}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep_until(heal_at.into()).await;
    let healed_at = Instant::now();
    match fault {
        Fault::KillGalera => bed.on("restart", m).await,
        Fault::KillMachine => {
            bed.on("restart", m).await;
            nodes[m - 1].wait_exit().await;
            nodes[m - 1] = start_node(bed, &db, m, false).await;
            down[m - 1].store(false, Ordering::Relaxed);
        }
        Fault::Partition => {
            bed.on("heal", m).await;
            down[m - 1].store(false, Ordering::Relaxed);
        }
        Fault::PauseGalera => bed.on("resume", m).await,
        Fault::SkewedClock => {}
    }
    let rejoined = healed_at.elapsed();
    for client in clients {
        client.await.expect("a client panicked");
    }
    bed.run(&["wait"]).await;
    let nodes_ref: Vec<&Node> = nodes.iter().collect();
    settled(&db, &nodes_ref, Duration::from_secs(30)).await;

    let sale = sale.lock().await;
    // The longest any store went without an order placed, from a second before the fault.
    let mut stall = Duration::ZERO;
    for store in 0..products.len() {
        let mut times: Vec<Instant> = sale
            .placed
            .iter()
            .filter(|p| p.store == Some(store) && p.at >= fault_at - Duration::from_secs(1))
            .map(|p| p.at)
            .collect();
        times.sort_unstable();
        for pair in times.windows(2) {
            stall = stall.max(pair[1] - pair[0]);
        }
    }
    println!(
        "{fault:?} on machine {m}: {} orders placed, {} refused at the limit, {} after a retry; \
         longest a store went unserved: {stall:?}; the machine was back in {rejoined:?}",
        sale.placed.len(),
        sale.limited,
        sale.retried,
    );
    let logs = || nodes.iter().map(Node::logs).collect::<String>();
    assert!(
        sale.wrong.is_empty(),
        "wrong answers: {:?}\n{}",
        sale.wrong,
        logs()
    );
    assert!(
        stall < SERVED_AGAIN_WITHIN,
        "a store went unserved for {stall:?}\n{}",
        logs()
    );

    // Every order answered 200 is stored once, as answered, on every Galera node.
    let mut ids = HashSet::new();
    for placed in &sale.placed {
        let id = placed.body["data"]["order_id"]
            .as_i64()
            .expect("an order id");
        assert!(ids.insert(id), "order {id} answered twice");
    }
    let stored: Vec<(i64, &Value)> = sale.placed.iter().map(|p| (p.user, &p.body)).collect();
    db.assert_orders_stored(&stored).await;
    db.assert_invariants(&initial).await;
    for n in 1..=3 {
        let conn = bed.connect(&db, n).await;
        let balances = kitara::db::check::balances(&conn)
            .await
            .expect("kitara check");
        let unbalanced: Vec<_> = balances.iter().filter(|b| !b.holds()).collect();
        assert!(
            !balances.is_empty() && unbalanced.is_empty(),
            "kitara check fails on node {n}: {unbalanced:?}"
        );
        let orders = count(&conn, "SELECT COUNT(*) FROM orders").await;
        assert_eq!(
            orders as usize,
            sale.placed.len(),
            "orders on Galera node {n}"
        );
        conn.close().await.ok();
    }
    // No customer holds or bought more than the limit of any product.
    let over = db
        .query_i64s(&format!(
            "SELECT o.buyer_id, d.product_id, CAST(SUM(d.quantity) AS SIGNED) FROM orders o \
             JOIN order_details d ON d.order_id = o.id JOIN products p ON p.id = d.product_id \
             WHERE o.status IN ('locked', 'confirmed') AND p.max_per_customer IS NOT NULL \
             GROUP BY o.buyer_id, d.product_id HAVING SUM(d.quantity) > {LIMIT}"
        ))
        .await;
    assert!(over.is_empty(), "past the limit: {over:?}");
    assert!(
        sale.limited > 0,
        "no order met the limit: the sale did not test it"
    );
    // Holds end on time: none is still locked 3 s past its deadline.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let late = db
        .query_i64s(
            "SELECT id FROM orders WHERE status = 'locked' AND expires_at < NOW(3) - INTERVAL 3 SECOND",
        )
        .await;
    assert!(
        late.is_empty(),
        "holds past their deadline: {late:?}\n{}",
        logs()
    );
    // A sample of the keys: a replay through any node answers the order it booked.
    for (i, placed) in sale.placed.iter().enumerate().step_by(25) {
        let api = &nodes[i % 3].api;
        let (status, headers, body) = api
            .try_lock_keyed(&placed.request, Some(&placed.key), Duration::from_secs(10))
            .await
            .expect("a node answers");
        assert_eq!(status, StatusCode::OK, "{}: {body}", placed.key);
        assert_eq!(body["data"]["order_id"], placed.body["data"]["order_id"]);
        assert_eq!(headers.get("idempotent-replayed").unwrap(), "true");
    }
    drop(sale);
    for node in &mut nodes {
        node.stop().await;
    }
    db.drop_database().await;
}

/// Connections of the tool of `a_certification_conflict_is_written_again`.
const TOUCHERS: usize = 1;

/// A tool on another Galera node touches the hot product's row (its `updated_at`, not
/// its stock) from `TOUCHERS` connections, every 5 ms, while a Kitara node sells it: Kitara's transactions
/// that lose certification to the tool's (1213 at COMMIT, or aborted mid-way by the
/// tool's replicated write) are written again, not refused and not lost. Every order
/// answered 200 is stored once, no refusal is counted, and the conflicts are.
async fn a_certification_conflict_is_written_again() {
    let bed = Bed::shared().await;
    let bed = bed.as_ref().expect("started");
    let db = bed.demo_db().await;
    let node = start_node(bed, &db, 1, false).await;
    let hot = stores_with_products(&node.api, 1, 1_000_000, None)
        .await
        .into_values()
        .next()
        .expect("a product");
    let initial = db.stocks().await;
    let selling = Arc::new(AtomicBool::new(true));
    let mut touchers = Vec::new();
    for _ in 0..TOUCHERS {
        let toucher = bed.connect(&db, 2).await;
        let selling = selling.clone();
        touchers.push(tokio::spawn(async move {
            use sea_orm::ConnectionTrait;
            // A change every time (an update that changes nothing adds no key to
            // certify), and not of the stock.
            let sql = format!(
                "UPDATE products SET updated_at = updated_at + INTERVAL 1 SECOND WHERE id = {hot}"
            );
            let (mut touched, mut lost) = (0u64, 0u64);
            while selling.load(Ordering::Relaxed) {
                // Losing certification to Kitara is the tool's lot too.
                match toucher.execute_unprepared(&sql).await {
                    Ok(_) => touched += 1,
                    Err(_) => lost += 1,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (touched, lost)
        }));
    }
    let clients: Vec<_> = (0..16)
        .map(|client| {
            let api = Api::new(node.api.addr);
            tokio::spawn(async move {
                let (mut placed, mut odd) = (Vec::new(), Vec::new());
                for i in 0..100 {
                    let key = format!("c{client}-o{i}");
                    let (status, _, body) = api
                        .try_lock_keyed(
                            &crate::helpers::order(2, &[(hot, 1)]),
                            Some(&key),
                            Duration::from_secs(10),
                        )
                        .await
                        .expect("Kitara answers");
                    match status {
                        StatusCode::OK => placed.push(body),
                        StatusCode::SERVICE_UNAVAILABLE => {}
                        other => odd.push(format!("{other}: {body}")),
                    }
                }
                (placed, odd)
            })
        })
        .collect();
    let (mut placed, mut odd) = (Vec::new(), Vec::new());
    for client in clients {
        let (p, o) = client.await.expect("a client panicked");
        placed.extend(p);
        odd.extend(o);
    }
    selling.store(false, Ordering::Relaxed);
    let (mut touched, mut lost) = (0, 0);
    for toucher in touchers {
        let (t, l) = toucher.await.expect("a toucher");
        touched += t;
        lost += l;
    }
    let (_, metrics) = node.api.text("/metrics").await;
    let conflicts = series(&metrics, r#"kitara_database_errors_total{kind="conflict"}"#);
    let refused = series(&metrics, r#"kitara_database_errors_total{kind="refused"}"#);
    let unavailable = series(
        &metrics,
        r#"kitara_lock_outcomes_total{result="unavailable"}"#,
    );
    println!(
        "{} orders placed, {unavailable} answered 503, while another node touched the row {touched} times \
         (and lost {lost} times): {conflicts} of Kitara's transactions lost a conflict and were written \
         again, {refused} refusals",
        placed.len()
    );
    assert!(
        odd.is_empty(),
        "answers neither 200 nor 503: {odd:?}\n{}",
        node.logs()
    );
    assert!(
        conflicts > 0.0,
        "no conflict happened: the test tested nothing\n{}",
        node.logs()
    );
    assert_eq!(
        refused,
        0.0,
        "a conflict was taken for a refusal\n{}",
        node.logs()
    );
    let stored: Vec<(i64, &Value)> = placed.iter().map(|b| (2, b)).collect();
    db.assert_orders_stored(&stored).await;
    assert_eq!(db.count("orders").await as usize, placed.len());
    // Nothing of an aborted transaction committed on its own.
    let orphans = db
        .query_i64s(
            "SELECT k.order_id FROM idempotency_keys k LEFT JOIN orders o ON o.id = k.order_id \
             WHERE o.id IS NULL",
        )
        .await;
    assert!(
        orphans.is_empty(),
        "keys of orders never stored: {orphans:?}"
    );
    db.assert_invariants(&initial).await;
    assert!(db.unbalanced().await.is_empty(), "kitara check fails");
    let mut node = node;
    node.stop().await;
    db.drop_database().await;
}

/// The fence on Galera, without timing luck: an owner's write transaction of store 1,
/// fenced at epoch e, has run its statements on Galera node 1 (its ownership row
/// changed, the order inserted) but not committed, when another node takes the store
/// through Galera node 2 (epoch e + 1) and commits. The stale owner's COMMIT must fail:
/// the takeover's write set, applied on node 1, aborts it, or certification refuses it.
/// Its order is never stored. Fifty rounds, the store taken back and forth.
async fn a_stale_owner_cannot_commit_after_a_takeover() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let bed = Bed::shared().await;
    let bed = bed.as_ref().expect("started");
    let db = bed.demo_db().await;
    db.exec("INSERT INTO kitara_store_owners (store_id, owner, epoch) VALUES (1, 'a', 1)")
        .await;
    let owner = bed.connect(&db, 1).await;
    let taker = bed.connect(&db, 2).await;
    let stock = db.stocks().await[&1];
    let mut refusals = std::collections::BTreeMap::<String, usize>::new();
    for round in 0..50i64 {
        let epoch = round + 1;
        let id = 1_000 + round;
        let plan = fenced_order(epoch, id).statements_apart(true);
        let txn = owner.begin().await.expect("begin");
        kitara::db::persist::write_plan(&txn, &plan)
            .await
            .expect("the owner's statements run: the store is still its own");
        let took = taker
            .execute_unprepared(&format!(
                "UPDATE kitara_store_owners SET owner = 'b{round}', epoch = epoch + 1 \
                 WHERE store_id = 1 AND epoch = {epoch}"
            ))
            .await
            .expect("the takeover commits")
            .rows_affected();
        assert_eq!(took, 1, "round {round}: the takeover took the store");
        match txn.commit().await {
            Ok(()) => panic!("round {round}: the stale owner committed after the takeover"),
            Err(e) => *refusals.entry(e.to_string()).or_default() += 1,
        }
    }
    println!("stale owners refused at COMMIT: {refusals:?}");
    assert_eq!(db.count("orders").await, 0, "a stale order was stored");
    assert_eq!(db.stocks().await[&1], stock);
    owner.close().await.ok();
    taker.close().await.ok();
    db.drop_database().await;
}

/// A product of `store` limited to `LIMIT` per customer.
async fn limited_product(api: &Api, store: i64) -> i64 {
    let body = json!({
        "product_name": format!("limited {store}"),
        "store_id": store,
        "current_stock": 1_000_000,
        "max_per_customer": LIMIT,
    });
    let started = Instant::now();
    loop {
        let (status, product) = api
            .admin(Method::POST, "/api/v1/admin/products", Some(&body))
            .await;
        match status {
            StatusCode::CREATED => return product["data"]["id"].as_i64().unwrap(),
            StatusCode::SERVICE_UNAVAILABLE if started.elapsed() < SERVED_AGAIN_WITHIN => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("{other}: {product}"),
        }
    }
}

async fn count(conn: &sea_orm::DatabaseConnection, sql: &str) -> i64 {
    use sea_orm::ConnectionTrait;
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            sql,
        ))
        .await
        .expect("count")
        .expect("a row");
    row.try_get_by_index(0).expect("a count")
}
