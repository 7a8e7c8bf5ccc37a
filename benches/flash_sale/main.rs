//! The flash-sale benchmark: Kitara against a plain row-lock service, over HTTP, in one
//! run on one machine, so that ratios — not absolute figures — carry the verdict.
//!
//! `cargo bench --bench flash_sale` (cargo's `--bench` argument is ignored). It uses
//! MariaDB/MySQL when `KITARA_BENCH_MYSQL_URL` is set (an account that may create and drop
//! databases), SQLite otherwise; `KITARA_BENCH_QUICK=1` shortens every workload.
//!
//! Every workload gets a fresh database and a fresh server started in-process on a random
//! port; an in-process load generator drives it over N keep-alive HTTP/1.1 connections,
//! each sending its next request when the previous answer arrives (closed loop). The
//! workloads that ratios compare run in alternating slices, so that a machine whose speed
//! drifts during the run favours none of them. After each workload the SPEC.md invariants
//! are checked against the database and the benchmark aborts loudly if they fail.

//!
//! # Layout
//!
//! - `main.rs`: the settings of a run, and its order.
//! - `workloads`: what each workload sends and checks.
//! - `load`: the load generator (closed-loop keep-alive connections) and what it counts.
//! - `servers`: Kitara and the row-lock baseline, started in-process.
//! - `db`: the databases the workloads run on, and the invariants checked after them.
//! - `cpu`: where the CPU went (from `/proc`), and the machine.
//! - `report`: the table and the ratio lines.
//! - `catalogue`: pages, lookups and the listing of 100,000 products.
//! - `few_clients`: hot at 16 connections, against durable Redis+Lua.
//! - `galera`: hot and spread on a three-node Galera cluster against one server, and
//!   the stall of a Galera node's loss.

mod catalogue;
mod cpu;
mod db;
mod few_clients;
mod followers;
mod galera;
mod load;
mod report;
mod servers;
mod workloads;

use std::time::Duration;

use kitara::config::Settings;

use cpu::{DATABASE_PID, find_database_process, machine};
use report::{Row, ms};
use workloads::{
    Interleaved, database_alone, expiry_wave, interleaved, lock_then_confirm, sell_out,
};

/// The allocator of the `kitara` binary (see `src/main.rs`): the benchmark measures
/// Kitara as shipped.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub(crate) const CONNECTIONS: usize = 256;
pub(crate) const USERS: i64 = 1_000;
pub(crate) const SELL_OUT_STOCK: i64 = 10_000;
pub(crate) const HUGE_STOCK: i64 = 1_000_000_000;

/// The workloads as the table lists them (and as `KITARA_BENCH_ONLY` names them).
pub(crate) const TABLE_ORDER: [&str; 20] = [
    "hot",
    "hot-c16",
    "hot-c256",
    "redis-c16",
    "redis-c256",
    "hot-no-metrics",
    "hot-no-events",
    "hot-followed",
    "hot-holds",
    "lock-confirm",
    "expiry-wave",
    "sell-out",
    "spread",
    "spread-no-events",
    "spread-3-nodes",
    "storm",
    "ceiling",
    "database-alone",
    "hot-row-lock",
    "spread-row-lock",
];

/// The load generator runs on this (main) runtime; every server runs on
/// `server_runtime`, so that load-generator tasks never share a worker's queue with the
/// server's, as if the client were another process.
fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("load-generator")
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run());
}

/// The name `kitara::startup::runtime` gives the server runtime's threads, by which
/// their CPU is told apart from the load generator's.
pub(crate) const SERVER_THREADS: &str = "kitara-worker";

/// The runtime `kitara serve` would build with the same environment
/// (`KITARA_WORKER_THREADS` included); the row-lock baseline runs on it too.
pub(crate) fn server_runtime() -> &'static tokio::runtime::Handle {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let settings = Settings::local("sqlite://unused");
            kitara::startup::runtime(settings.worker_threads).expect("server runtime")
        })
        .handle()
}

#[derive(Clone)]
pub(crate) struct Bench {
    pub(crate) mysql: Option<String>,
    pub(crate) quick: bool,
    /// `KITARA_BENCH_ONLY=hot,ceiling` runs only those workloads (for profiling).
    pub(crate) only: Option<Vec<String>>,
}

impl Bench {
    /// Whether `KITARA_BENCH_ONLY` leaves the workload in.
    pub(crate) fn selected(&self, key: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == key))
    }

    /// Runs a workload of its own unless `KITARA_BENCH_ONLY` leaves it out.
    pub(crate) async fn run(
        &self,
        key: &str,
        workload: impl std::future::Future<Output = Row>,
    ) -> Option<Row> {
        if !self.selected(key) {
            return None;
        }
        let row = workload.await;
        println!("{}: {:.0}/s (p99 {} ms)", row.name, row.rate, ms(row.p99));
        Some(row)
    }

    /// How long the main workloads run in all: hot, spread and the baselines this long,
    /// storm and ceiling half of it.
    pub(crate) fn duration(&self) -> Duration {
        if self.quick {
            Duration::from_millis(1500)
        } else {
            Duration::from_secs(10)
        }
    }

    /// Rounds of the interleaved workloads: each round gives every one of them a slice.
    pub(crate) fn rounds(&self) -> u32 {
        if self.quick { 3 } else { 5 }
    }
}
async fn run() {
    let bench = Bench {
        mysql: std::env::var("KITARA_BENCH_MYSQL_URL").ok(),
        quick: std::env::var("KITARA_BENCH_QUICK").is_ok_and(|v| v != "0" && !v.is_empty()),
        only: std::env::var("KITARA_BENCH_ONLY")
            .ok()
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect()),
    };
    println!("flash_sale benchmark");
    println!("machine: {}", machine());
    println!(
        "database: {}",
        match &bench.mysql {
            Some(_) => "MySQL/MariaDB (KITARA_BENCH_MYSQL_URL)".to_owned(),
            None => "SQLite (set KITARA_BENCH_MYSQL_URL for MySQL)".to_owned(),
        }
    );
    let database = bench.mysql.as_ref().and_then(|_| find_database_process());
    match &database {
        Some((pid, name)) => println!("database CPU: the local {name} process (pid {pid})"),
        None => println!("database CPU: not measured (no local MariaDB/MySQL process in use)"),
    }
    let _ = DATABASE_PID.set(database.map(|(pid, _)| pid));
    println!(
        "mode: {}; {CONNECTIONS} closed-loop keep-alive connections; load generator in the same process, on its own runtime",
        if bench.quick { "quick" } else { "full" }
    );
    println!();

    let Interleaved { mut rows, rss } = interleaved(&bench).await;
    for row in TABLE_ORDER.iter().filter_map(|key| rows.get(key)) {
        println!("{}: {:.0}/s (p99 {} ms)", row.name, row.rate, ms(row.p99));
    }
    if let Some(row) = bench.run("sell-out", sell_out(&bench)).await {
        rows.insert("sell-out", row);
    }
    if let Some(row) = bench.run("lock-confirm", lock_then_confirm(&bench)).await {
        rows.insert("lock-confirm", row);
    }
    let mut wave = None;
    if bench.selected("expiry-wave") {
        let (row, measured) = expiry_wave(&bench).await;
        println!("{}: {:.0}/s (p99 {} ms)", row.name, row.rate, ms(row.p99));
        rows.insert("expiry-wave", row);
        wave = Some(measured);
    }
    if let Some(row) = bench.run("database-alone", database_alone(&bench)).await {
        rows.insert("database-alone", row);
    }
    let mut few = None;
    if bench.selected("few-clients") {
        let measured = few_clients::few_clients(&bench).await;
        for (key, row) in &measured.rows {
            println!("{}: {:.0}/s (p99 {} ms)", row.name, row.rate, ms(row.p99));
            rows.insert(key, row.clone());
        }
        few = Some(measured);
    }
    report::print(&rows, rss, wave.as_ref());
    if let Some(few) = few {
        if let Some(why) = few.redis {
            println!("{why}");
        }
        if let Some(cycle) = few.cycle {
            cycle.print();
        }
    }
    if bench.selected("catalogue") {
        catalogue::catalogue(&bench).await.print();
    }
    if bench.selected("galera") {
        match galera::galera(&bench).await {
            Ok(measured) => measured.print(),
            Err(why) => println!("{why}"),
        }
    }
}
