//! Kitara on a three-node MariaDB Galera cluster against Kitara on the one MariaDB
//! server of `KITARA_BENCH_MYSQL_URL`, same machine, same run: hot and spread, in
//! alternating slices; the commit of one row, alone, on each; and how long the loss of
//! a Galera node stalls orders. The cluster is `scripts/galera-cluster`'s (root,
//! `galera-4`, `rsync`); one Kitara node, in this process, writes through Galera node 1.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};

use crate::db::BenchDb;
use crate::few_clients::commit_metrics;
use crate::load::{Load, MakeRequest, Rng, drive};
use crate::report::{Row, ms};
use crate::servers::{Running, Server};
use crate::workloads::lock_request;
use crate::{Bench, HUGE_STOCK, USERS};

/// What the Galera run measured.
pub(crate) struct Measured {
    rows: Vec<(Row, Row)>,
    /// A one-row UPDATE committed alone, mean ms: one server, then the cluster.
    commit_alone_ms: (f64, f64),
    /// Kitara's BEGIN-to-COMMIT, mean ms, and orders per commit, under hot: one
    /// server, then the cluster.
    cycle: ((f64, f64), (f64, f64)),
    /// The longest answer while a Galera node was killed, one per kill.
    stalls: Vec<Duration>,
}

struct Cluster {
    dir: PathBuf,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/galera-cluster")
}

impl Cluster {
    async fn start() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("kitara-bench-galera-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let cluster = Self { dir };
        cluster.run(&["start"]).await.map_err(|e| {
            format!("the Galera cluster did not start (root, galera-4 and rsync are needed): {e}")
        })?;
        Ok(cluster)
    }

    async fn run(&self, args: &[&str]) -> Result<String, String> {
        let (command, rest) = args.split_first().expect("a command");
        let out = tokio::process::Command::new(script())
            .arg(command)
            .arg(&self.dir)
            .args(rest)
            .env("GALERA_STOP_WITH", std::process::id().to_string())
            .output()
            .await
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn url(&self, n: usize) -> String {
        let address = self
            .run(&["address", &n.to_string()])
            .await
            .expect("address");
        format!("mysql://kitara:kitara@{}:3306", address.trim())
    }

    async fn stop(self) {
        let _ = self.run(&["stop"]).await;
    }
}

pub(crate) async fn galera(bench: &Bench) -> Result<Measured, String> {
    let Some(server) = bench.mysql.clone() else {
        return Err("galera: skipped (it compares with KITARA_BENCH_MYSQL_URL's server)".into());
    };
    let cluster = Cluster::start().await?;
    let on_cluster = Bench {
        mysql: Some(cluster.url(1).await),
        ..bench.clone()
    };
    let mut rows = Vec::new();
    let mut cycle = ((0.0, 0.0), (0.0, 0.0));
    for (key, stores, products) in [("hot", 1, 1), ("spread", 1_000, 10)] {
        let one = BenchDb::create(bench, stores, products, HUGE_STOCK).await;
        let three = BenchDb::create(&on_cluster, stores, products, HUGE_STOCK).await;
        let (one_kitara, three_kitara) = (
            Running::start(&one, Server::Kitara).await,
            Running::start(&three, Server::Kitara).await,
        );
        let catalog = stores * products;
        let make: MakeRequest = Arc::new(move |rng: &mut Rng, _: Option<&Bytes>| {
            Some(lock_request(rng.below(USERS) + 1, rng.below(catalog) + 1))
        });
        let unit = bench.duration() / (2 * bench.rounds());
        let (mut alone, mut galera) = (Load::default(), Load::default());
        let metrics = (
            commit_metrics(one_kitara.addr).await,
            commit_metrics(three_kitara.addr).await,
        );
        for _ in 0..bench.rounds() {
            alone.then(drive(&[one_kitara.addr], unit, make.clone()).await);
            galera.then(drive(&[three_kitara.addr], unit, make.clone()).await);
        }
        if key == "hot" {
            let after = (
                commit_metrics(one_kitara.addr).await,
                commit_metrics(three_kitara.addr).await,
            );
            cycle = (cycle_of(metrics.0, after.0), cycle_of(metrics.1, after.1));
        }
        one_kitara.stop().await;
        three_kitara.stop().await;
        for (db, load, name) in [(&one, &alone, "one server"), (&three, &galera, "Galera")] {
            let stored = db.check_invariants().await;
            assert_eq!(
                stored, load.ok,
                "{key} on {name}: every 200 must be an order row"
            );
        }
        let (one_note, three_note) = (one.batching_note().await, three.batching_note().await);
        one.drop().await;
        three.drop().await;
        let (one_name, three_name) = match key {
            "hot" => ("hot, one MariaDB server", "hot, 3-node Galera cluster"),
            _ => (
                "spread, one MariaDB server",
                "spread, 3-node Galera cluster",
            ),
        };
        rows.push((
            alone.row(one_name, true, one_note),
            galera.row(three_name, true, three_note),
        ));
    }
    let commit_alone_ms = (
        commit_alone(&server).await,
        commit_alone(&cluster.url(1).await).await,
    );
    let stalls = node_loss(bench, &cluster, &on_cluster).await;
    cluster.stop().await;
    Ok(Measured {
        rows,
        commit_alone_ms,
        cycle,
        stalls,
    })
}

/// Hot through Galera node 1 while node 3 is killed (and restarted afterwards), three
/// times: the longest answer of each run is the stall the loss caused.
async fn node_loss(bench: &Bench, cluster: &Cluster, on_cluster: &Bench) -> Vec<Duration> {
    let db = BenchDb::create(on_cluster, 1, 1, HUGE_STOCK).await;
    let running = Running::start(&db, Server::Kitara).await;
    let make: MakeRequest =
        Arc::new(|rng: &mut Rng, _: Option<&Bytes>| Some(lock_request(rng.below(USERS) + 1, 1)));
    let mut stalls = Vec::new();
    let mut ok = 0;
    for _ in 0..if bench.quick { 1 } else { 3 } {
        let addr = running.addr;
        let make = make.clone();
        let load = tokio::spawn(async move { drive(&[addr], Duration::from_secs(12), make).await });
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.run(&["kill", "3"]).await.expect("kill node 3");
        let load: Load = load.await.expect("the load");
        ok += load.ok;
        let longest = load.latencies_us.iter().copied().max().unwrap_or(0);
        stalls.push(Duration::from_micros(u64::from(longest)));
        cluster
            .run(&["restart", "3"])
            .await
            .expect("restart node 3");
        println!(
            "galera: node 3 killed 3 s into 12 s of hot; the longest answer took {:?}",
            Duration::from_micros(u64::from(longest))
        );
    }
    running.stop().await;
    let stored = db.check_invariants().await;
    assert_eq!(stored, ok, "node loss: every 200 must be an order row");
    db.drop().await;
    stalls
}

/// 2,000 one-row UPDATEs, each committed alone: what one commit costs on `url`.
async fn commit_alone(url: &str) -> f64 {
    let name = format!("kitara_bench_commit_{}", std::process::id());
    let admin = Database::connect(url).await.expect("connect");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create");
    let db: DatabaseConnection = Database::connect(format!("{url}/{name}"))
        .await
        .expect("connect");
    db.execute_unprepared("CREATE TABLE t (id INT PRIMARY KEY, v BIGINT NOT NULL)")
        .await
        .expect("table");
    db.execute_unprepared("INSERT INTO t VALUES (1, 0)")
        .await
        .expect("row");
    let started = Instant::now();
    const N: u32 = 2_000;
    for _ in 0..N {
        db.execute_unprepared("UPDATE t SET v = v + 1 WHERE id = 1")
            .await
            .expect("update");
    }
    let each = started.elapsed().as_secs_f64() * 1000.0 / f64::from(N);
    db.close().await.ok();
    admin
        .execute_unprepared(&format!("DROP DATABASE {name}"))
        .await
        .expect("drop");
    each
}

/// Mean BEGIN-to-COMMIT in ms, and orders per commit, between two reads of `/metrics`.
fn cycle_of(before: Option<(f64, f64, f64)>, after: Option<(f64, f64, f64)>) -> (f64, f64) {
    match before.zip(after) {
        Some((b, a)) if a.1 > b.1 => (
            (a.0 - b.0) * 1000.0 / (a.1 - b.1),
            (a.2 - b.2) / (a.1 - b.1),
        ),
        _ => (f64::NAN, f64::NAN),
    }
}

impl Measured {
    pub(crate) fn print(&self) {
        println!();
        println!(
            "Kitara on a 3-node MariaDB Galera cluster (one Kitara node, through Galera node 1) against one MariaDB server:"
        );
        for (one, three) in &self.rows {
            for row in [one, three] {
                println!(
                    "  {}: {:.0} orders/s (p50 {} ms, p99 {} ms) — {}",
                    row.name,
                    row.rate,
                    ms(row.p50),
                    ms(row.p99),
                    row.note
                );
            }
            println!(
                "ratio {} galera/one-server: {:.2}",
                one.name.split(',').next().unwrap_or(one.name),
                three.rate / one.rate
            );
        }
        let ((one_ms, one_orders), (three_ms, three_orders)) = self.cycle;
        println!(
            "  a commit of hot: {one_ms:.2} ms BEGIN to COMMIT, {one_orders:.1} orders each (one server); \
             {three_ms:.2} ms, {three_orders:.1} orders each (Galera)"
        );
        println!(
            "  a one-row UPDATE committed alone: {:.3} ms (one server), {:.3} ms (Galera): replication and certification add {:.3} ms per commit",
            self.commit_alone_ms.0,
            self.commit_alone_ms.1,
            self.commit_alone_ms.1 - self.commit_alone_ms.0
        );
        let mut stalls = self.stalls.clone();
        stalls.sort_unstable();
        if let (Some(median), Some(max)) = (stalls.get(stalls.len() / 2), stalls.last()) {
            println!(
                "  a Galera node killed under hot: orders stalled {median:?} (median of {}), {max:?} at most",
                stalls.len()
            );
        }
    }
}
