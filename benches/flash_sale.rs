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

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kitara::config::Settings;
use kitara::http::response;
use kitara::startup::Application;
use sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement, TransactionTrait, Value,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The allocator of the `kitara` binary (see `src/main.rs`): the benchmark measures
/// Kitara as shipped.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONNECTIONS: usize = 256;
const USERS: i64 = 1_000;
const SELL_OUT_STOCK: i64 = 10_000;
const HUGE_STOCK: i64 = 1_000_000_000;

/// The workloads as the table lists them (and as `KITARA_BENCH_ONLY` names them).
const TABLE_ORDER: [&str; 8] = [
    "hot",
    "sell-out",
    "spread",
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

/// The runtime `kitara serve` would build with the same environment
/// (`KITARA_WORKER_THREADS` included); the row-lock baseline runs on it too.
fn server_runtime() -> &'static tokio::runtime::Handle {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let settings = Settings::local("sqlite://unused");
            kitara::startup::runtime(settings.worker_threads).expect("server runtime")
        })
        .handle()
}

#[derive(Clone)]
struct Bench {
    mysql: Option<String>,
    quick: bool,
    /// `KITARA_BENCH_ONLY=hot,ceiling` runs only those workloads (for profiling).
    only: Option<Vec<String>>,
}

impl Bench {
    /// Whether `KITARA_BENCH_ONLY` leaves the workload in.
    fn selected(&self, key: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == key))
    }

    /// Runs a workload of its own unless `KITARA_BENCH_ONLY` leaves it out.
    async fn run(
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
    fn duration(&self) -> Duration {
        if self.quick {
            Duration::from_millis(1500)
        } else {
            Duration::from_secs(10)
        }
    }

    /// Rounds of the interleaved workloads: each round gives every one of them a slice.
    fn rounds(&self) -> u32 {
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
    if let Some(row) = bench.run("database-alone", database_alone(&bench)).await {
        rows.insert("database-alone", row);
    }
    let table: Vec<&Row> = TABLE_ORDER.iter().filter_map(|key| rows.get(key)).collect();
    let rate = |key: &str| rows.get(key).map_or(f64::NAN, |row| row.rate);

    println!();
    println!(
        "| workload | answers | 200s | per second | p50 ms | p99 ms | p99.9 ms | CPU µs: bench process | CPU µs: database | idle | note |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for row in table {
        let (process, database, idle) = match row.cpu {
            Some(cpu) => (
                format!("{:.1}", cpu.process),
                cpu.database.map_or("n/a".into(), |d| format!("{d:.1}")),
                format!("{:.0} %", cpu.idle * 100.0),
            ),
            None => ("n/a".into(), "n/a".into(), "n/a".into()),
        };
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {process} | {database} | {idle} | {} |",
            row.name,
            row.answers,
            row.ok,
            row.rate,
            ms(row.p50),
            ms(row.p99),
            ms(row.p999),
            row.note
        );
    }
    println!();
    println!(
        "CPU µs are per counted answer (committed order, or answer where nothing commits): \
         the bench process is Kitara (or the baseline) and the load generator; the database \
         is the local mysqld/mariadbd process when one is visible; idle is the machine's."
    );
    println!();
    if let Some(rss) = rss {
        println!(
            "RSS of the benchmark process after the spread workload (and the other \
             interleaved ones, their servers still running): {rss:.0} MiB"
        );
    }
    println!(
        "ratio hot kitara/row-lock: {:.2}",
        rate("hot") / rate("hot-row-lock")
    );
    println!(
        "ratio spread kitara/row-lock: {:.2}",
        rate("spread") / rate("spread-row-lock")
    );
    println!(
        "ratio hot kitara/ceiling: {:.2}",
        rate("hot") / rate("ceiling")
    );
    println!(
        "ratio storm kitara/ceiling: {:.2}",
        rate("storm") / rate("ceiling")
    );
    println!(
        "for reference, the database alone (no HTTP) commits {:.2} of the ceiling",
        rate("database-alone") / rate("ceiling")
    );
}

/// A latency in milliseconds, or a dash where nothing was timed.
fn ms(value: f64) -> String {
    if value.is_nan() {
        "–".into()
    } else {
        format!("{value:.2}")
    }
}

/// One line of the result table.
#[derive(Clone)]
struct Row {
    name: &'static str,
    answers: u64,
    ok: u64,
    /// Committed orders per second (200 answers), or answers per second for the
    /// workloads that commit nothing.
    rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    /// Where the CPU went, per counted answer (see `CpuUse`).
    cpu: Option<PerAnswer>,
    note: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Kitara,
    RowLock,
}

// ---------------------------------------------------------------------------------------
// Workloads

/// The workloads that the ratios compare, measured in alternating slices: every round
/// gives each of them a slice (hot, spread and the baselines two units, storm and
/// ceiling one). On a shared VM the machine's speed drifts by tens of percent within
/// minutes; measured one after the other, a ratio would partly compare two moments.
/// Every workload keeps its own database and server for the whole phase.
struct Interleaved {
    rows: BTreeMap<&'static str, Row>,
    /// RSS of the process while all their servers still run.
    rss: Option<f64>,
}

/// What a workload of the interleaved phase checks when it is over.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Every 200 is an order row (hot, spread, the baselines).
    Commits,
    /// Nothing sold, every answer a not-available 400 (storm).
    AllRefused,
    /// Nothing to check in the database (ceiling).
    Nothing,
}

struct Sliced {
    key: &'static str,
    name: &'static str,
    db: BenchDb,
    running: Running,
    make: MakeRequest,
    /// Slice length in units (see `Interleaved`).
    units: u32,
    expect: Expect,
    load: Load,
}

async fn interleaved(bench: &Bench) -> Interleaved {
    let mut workloads = Vec::new();
    for (key, name, server, (stores, products, stock), expect) in [
        (
            "hot",
            "hot (kitara)",
            Server::Kitara,
            (1, 1, HUGE_STOCK),
            Expect::Commits,
        ),
        (
            "spread",
            "spread 1,000×10 (kitara)",
            Server::Kitara,
            (1_000, 10, HUGE_STOCK),
            Expect::Commits,
        ),
        (
            "storm",
            "sold-out storm (kitara)",
            Server::Kitara,
            (1, 1, 0),
            Expect::AllRefused,
        ),
        (
            "ceiling",
            "ceiling GET /healthz",
            Server::Kitara,
            (1, 1, 0),
            Expect::Nothing,
        ),
        (
            "hot-row-lock",
            "hot (row-lock)",
            Server::RowLock,
            (1, 1, HUGE_STOCK),
            Expect::Commits,
        ),
        (
            "spread-row-lock",
            "spread 1,000×10 (row-lock)",
            Server::RowLock,
            (1_000, 10, HUGE_STOCK),
            Expect::Commits,
        ),
    ] {
        if !bench.selected(key) {
            continue;
        }
        let db = BenchDb::create(bench, stores, products, stock).await;
        let running = Running::start(&db, server).await;
        let catalog = stores * products;
        let make: MakeRequest = if expect == Expect::Nothing {
            Arc::new(|_: &mut Rng| {
                Some(
                    Request::get("/healthz")
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
            })
        } else {
            Arc::new(move |rng: &mut Rng| {
                Some(lock_request(rng.below(USERS) + 1, rng.below(catalog) + 1))
            })
        };
        workloads.push(Sliced {
            key,
            name,
            db,
            running,
            make,
            // Workloads that commit get twice the time of storm and ceiling.
            units: if expect == Expect::Commits { 2 } else { 1 },
            expect,
            load: Load::default(),
        });
    }

    let unit = bench.duration() / (2 * bench.rounds());
    for _ in 0..bench.rounds() {
        for workload in &mut workloads {
            let slice = drive(
                workload.running.addr,
                unit * workload.units,
                workload.make.clone(),
            )
            .await;
            workload.load.then(slice);
        }
    }
    let rss = rss_mib();

    let mut rows = BTreeMap::new();
    for Sliced {
        key,
        name,
        db,
        running,
        expect,
        load,
        ..
    } in workloads
    {
        running.stop().await;
        let note = match expect {
            Expect::Commits => {
                let stored = db.check_invariants().await;
                assert_eq!(stored, load.ok, "{name}: every 200 must be an order row");
                db.batching_note().await
            }
            Expect::AllRefused => {
                let stored = db.check_invariants().await;
                assert_eq!((stored, load.ok), (0, 0), "{name}: nothing may be sold");
                assert_eq!(load.other, 0, "{name}: every answer a not-available 400");
                "answers/s, all 400".into()
            }
            Expect::Nothing => "answers/s".into(),
        };
        db.drop().await;
        rows.insert(key, load.row(name, expect == Expect::Commits, note));
    }
    Interleaved { rows, rss }
}

/// One product with 10,000 units: time until they are gone, and exactly 10,000 sold.
async fn sell_out(bench: &Bench) -> Row {
    let db = BenchDb::create(bench, 1, 1, SELL_OUT_STOCK).await;
    let running = Running::start(&db, Server::Kitara).await;
    let load = drive_until_refused(
        running.addr,
        Arc::new(|rng: &mut Rng| Some(lock_request(rng.below(USERS) + 1, 1))),
    )
    .await;
    // After the sell-out every answer must be a not-available 400.
    let later = drive_count(
        running.addr,
        CONNECTIONS,
        Arc::new(|rng: &mut Rng| Some(lock_request(rng.below(USERS) + 1, 1))),
    )
    .await;
    running.stop().await;
    let stored = db.check_invariants().await;
    let stock = db.stock_of(1).await;
    assert_eq!(
        load.ok, SELL_OUT_STOCK as u64,
        "sell-out: exactly {SELL_OUT_STOCK} answers of 200"
    );
    assert_eq!(
        stored, SELL_OUT_STOCK as u64,
        "sell-out: {SELL_OUT_STOCK} order rows"
    );
    assert_eq!(stock, 0, "sell-out: stock 0");
    assert_eq!(load.other, 0, "sell-out: only 200s and not-available 400s");
    assert_eq!(
        (later.ok, later.refused),
        (0, CONNECTIONS as u64),
        "sell-out: every later answer is a not-available 400"
    );
    db.drop().await;
    let sold_out_in = load.last_ok.as_secs_f64();
    let mut row = load.row("sell-out 10,000 (kitara)", true, String::new());
    row.rate = SELL_OUT_STOCK as f64 / sold_out_in;
    row.note = format!(
        "sold out in {:.3} s; 10,000 × 200, then only 400s",
        sold_out_in
    );
    row
}

/// Batches shaped like the writer's under the hot workload, written back to back by
/// Kitara's own batch statement on one connection, with no HTTP and no actor: what the
/// database alone costs per order, and how fast it goes with the machine to itself.
async fn database_alone(bench: &Bench) -> Row {
    use kitara::db::persist::{Batch, NewOrder, Token, write_batch};
    use kitara::domain::{OrderLine, ProductId};

    const BATCH: i64 = 128;
    let db = BenchDb::create(bench, 1, 1, HUGE_STOCK).await;
    let line = [OrderLine {
        product: ProductId(1),
        quantity: 1,
    }];
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut written = 0i64;
    let clock = CpuClock::now();
    let start = Instant::now();
    while start.elapsed() < bench.duration() {
        let orders: Vec<NewOrder<'_>> = (written + 1..=written + BATCH)
            .map(|id| NewOrder {
                id,
                buyer: rng.below(USERS) + 1,
                store: 1,
                total: 1,
                first_detail_id: id,
                lines: &line,
                expires_at: None,
            })
            .collect();
        let batch = Batch {
            orders,
            ..Batch::default()
        };
        let txn = db
            .conn
            .begin_with_options(kitara::db::write_transaction_options())
            .await
            .expect("begin");
        write_batch(&txn, &batch, &Token::new(&[0, written as u128]))
            .await
            .expect("write a batch");
        txn.commit().await.expect("commit");
        written += BATCH;
    }
    let load = Load {
        elapsed: start.elapsed(),
        ok: written as u64,
        cpu: clock.and_then(|clock| clock.used()),
        ..Load::default()
    };
    let stored = db.check_invariants().await;
    assert_eq!(stored, written as u64, "database alone: every batch stored");
    db.drop().await;
    load.row(
        "database alone (no HTTP)",
        true,
        format!("batches of {BATCH} by Kitara's batch statement, one connection"),
    )
}

fn lock_request(user: i64, product: i64) -> Request<Full<Bytes>> {
    let body =
        format!(r#"{{"user_id":{user},"products":[{{"product_id":{product},"quantity":1}}]}}"#);
    Request::post("/api/v1/order/lock")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Load generator

/// A small xorshift generator: the load generator needs speed, not quality.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: i64) -> i64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as i64
    }
}

type MakeRequest = Arc<dyn Fn(&mut Rng) -> Option<Request<Full<Bytes>>> + Send + Sync>;

#[derive(Default)]
struct Load {
    elapsed: Duration,
    ok: u64,
    /// Not-available 400s.
    refused: u64,
    other: u64,
    /// When the last 200 arrived, from the start.
    last_ok: Duration,
    latencies_us: Vec<u32>,
    /// CPU time spent while the connections ran.
    cpu: Option<CpuUse>,
}

impl Load {
    /// Adds the answers of connections that ran at the same time.
    fn merge(&mut self, other: Load) {
        self.ok += other.ok;
        self.refused += other.refused;
        self.other += other.other;
        self.last_ok = self.last_ok.max(other.last_ok);
        self.latencies_us.extend(other.latencies_us);
    }

    /// Appends a later slice of the same workload: times and CPU add up.
    fn then(&mut self, next: Load) {
        let before = self.elapsed;
        self.elapsed += next.elapsed;
        self.cpu = match (self.cpu.take(), next.cpu) {
            (Some(a), Some(b)) => Some(a.add(b)),
            (a, b) if before.is_zero() => b.or(a),
            _ => None,
        };
        self.merge(Load {
            last_ok: before + next.last_ok,
            ..next
        });
    }

    fn row(mut self, name: &'static str, commits: bool, note: String) -> Row {
        self.latencies_us.sort_unstable();
        let pick = |q: f64| {
            if self.latencies_us.is_empty() {
                return f64::NAN;
            }
            let i =
                ((self.latencies_us.len() as f64 * q) as usize).min(self.latencies_us.len() - 1);
            self.latencies_us[i] as f64 / 1000.0
        };
        let answers = self.ok + self.refused + self.other;
        let counted = if commits { self.ok } else { answers };
        let cpu = self.cpu.map(|cpu| cpu.per(counted));
        Row {
            name,
            answers,
            ok: self.ok,
            cpu,
            rate: counted as f64 / self.elapsed.as_secs_f64(),
            p50: pick(0.50),
            p99: pick(0.99),
            p999: pick(0.999),
            note,
        }
    }
}

/// Runs `CONNECTIONS` closed-loop connections for `duration`.
async fn drive(addr: SocketAddr, duration: Duration, make: MakeRequest) -> Load {
    let clock = CpuClock::now();
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let make = make.clone();
            tokio::spawn(connection(addr, start, c as u64, make, move |_, sent| {
                sent < deadline
            }))
        })
        .collect();
    collect(tasks, start, clock).await
}

/// Runs until each connection has seen three not-available refusals in a row.
async fn drive_until_refused(addr: SocketAddr, make: MakeRequest) -> Load {
    let clock = CpuClock::now();
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let make = make.clone();
            tokio::spawn(connection(
                addr,
                start,
                c as u64,
                make,
                move |load: &Load, _| {
                    load.refused < 3 && start.elapsed() < Duration::from_secs(120)
                },
            ))
        })
        .collect();
    collect(tasks, start, clock).await
}

/// One request on each of `n` connections.
async fn drive_count(addr: SocketAddr, n: usize, make: MakeRequest) -> Load {
    let clock = CpuClock::now();
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|c| {
            let make = make.clone();
            tokio::spawn(connection(addr, start, c as u64, make, |load: &Load, _| {
                load.ok + load.refused + load.other == 0
            }))
        })
        .collect();
    collect(tasks, start, clock).await
}

async fn collect(
    tasks: Vec<tokio::task::JoinHandle<Load>>,
    start: Instant,
    clock: Option<CpuClock>,
) -> Load {
    let mut total = Load::default();
    for task in tasks {
        total.merge(task.await.expect("connection task"));
    }
    total.elapsed = start.elapsed();
    total.cpu = clock.and_then(|clock| clock.used());
    total
}

async fn connection(
    addr: SocketAddr,
    start: Instant,
    seed: u64,
    make: MakeRequest,
    go_on: impl Fn(&Load, Instant) -> bool,
) -> Load {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).ok();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (seed + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut load = Load::default();
    loop {
        let sent = Instant::now();
        if !go_on(&load, sent) {
            break;
        }
        let Some(mut request) = make(&mut rng) else {
            break;
        };
        request
            .headers_mut()
            .insert("host", hyper::header::HeaderValue::from_static("kitara"));
        if sender.ready().await.is_err() {
            load.other += 1;
            break;
        }
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(_) => {
                load.other += 1;
                break;
            }
        };
        let status = response.status();
        let body = response.into_body().collect().await.map(|b| b.to_bytes());
        let now = Instant::now();
        load.latencies_us.push((now - sent).as_micros() as u32);
        match (status, body) {
            (StatusCode::OK, Ok(_)) => {
                load.ok += 1;
                load.last_ok = now - start;
            }
            (StatusCode::BAD_REQUEST, Ok(body))
                if body.windows(13).any(|w| w == b"not available") =>
            {
                load.refused += 1
            }
            _ => load.other += 1,
        }
    }
    load
}

// ---------------------------------------------------------------------------------------
// Servers

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Builds and starts the server on the server runtime, so that its listener, pool
    /// and tasks all belong to that runtime.
    async fn start(db: &BenchDb, server: Server) -> Self {
        let settings = Settings::local(&db.url);
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let (addr, task) = server_runtime()
            .spawn(async move {
                match server {
                    Server::Kitara => {
                        let app = Application::build(settings).await.expect("build Kitara");
                        let addr = app.addr();
                        (addr, tokio::spawn(app.run_until(stopped)))
                    }
                    Server::RowLock => {
                        let pool = kitara::db::connect(&settings.database)
                            .await
                            .expect("connect");
                        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                        let addr = listener.local_addr().expect("address");
                        (addr, tokio::spawn(row_lock_server(listener, pool, stopped)))
                    }
                }
            })
            .await
            .expect("start the server");
        Running { addr, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The baseline: what a careful conventional service does. One transaction per order
/// that locks the order's product rows (`SELECT … FOR UPDATE`), checks the stock, then
/// decrements and inserts; no actor, no batching. Same pool and connection settings as
/// Kitara, served by the same kind of hyper server.
async fn row_lock_server(
    listener: TcpListener,
    pool: DatabaseConnection,
    stop: impl std::future::Future<Output = ()>,
) {
    let pool = Arc::new(pool);
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
            () = &mut stop => break,
        };
        stream.set_nodelay(true).ok();
        let pool = pool.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let pool = pool.clone();
            async move { Ok::<_, Infallible>(row_lock_order(&pool, request).await) }
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service),
        );
    }
}

async fn row_lock_order(
    pool: &DatabaseConnection,
    request: Request<Incoming>,
) -> Response<response::Body> {
    let refuse = |status, message: &str| response::json::<()>(status, message, None);
    let Ok(body) = request.into_body().collect().await else {
        return refuse(StatusCode::BAD_REQUEST, "unreadable body");
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body.to_bytes()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "request body must be one JSON object",
        );
    };
    let buyer = value["user_id"].as_i64().unwrap_or(0);
    let mut lines: BTreeMap<i64, i64> = BTreeMap::new();
    for line in value["products"].as_array().into_iter().flatten() {
        *lines
            .entry(line["product_id"].as_i64().unwrap_or(0))
            .or_insert(0) += line["quantity"].as_i64().unwrap_or(0);
    }
    match row_lock_transaction(pool, buyer, &lines).await {
        Ok(Some((order_id, store))) => response::json(
            StatusCode::OK,
            "OK",
            Some(serde_json::json!({"order_id": order_id, "store_id": store})),
        ),
        Ok(None) => refuse(StatusCode::BAD_REQUEST, "all product not available"),
        Err(_) => refuse(StatusCode::SERVICE_UNAVAILABLE, "database unavailable"),
    }
}

async fn row_lock_transaction(
    pool: &DatabaseConnection,
    buyer: i64,
    lines: &BTreeMap<i64, i64>,
) -> Result<Option<(i64, i64)>, sea_orm::DbErr> {
    let backend = pool.get_database_backend();
    let txn = pool
        .begin_with_options(kitara::db::write_transaction_options())
        .await?;
    let mut store = 0;
    for (&product, &quantity) in lines {
        let sql = match backend {
            DbBackend::MySql => {
                "SELECT current_stock, store_id FROM products WHERE id = ? FOR UPDATE"
            }
            _ => "SELECT current_stock, store_id FROM products WHERE id = ?",
        };
        let row = txn
            .query_one_raw(Statement::from_sql_and_values(
                backend,
                sql,
                [Value::from(product)],
            ))
            .await?;
        let Some(row) = row else { return Ok(None) };
        let stock: i64 = row.try_get_by_index(0)?;
        store = row.try_get_by_index(1)?;
        if stock < quantity {
            return Ok(None);
        }
    }
    let now = chrono::Utc::now().naive_utc();
    for (&product, &quantity) in lines {
        txn.execute_raw(Statement::from_sql_and_values(
            backend,
            "UPDATE products SET current_stock = current_stock - ?, updated_at = ? WHERE id = ?",
            [quantity.into(), now.into(), product.into()],
        ))
        .await?;
    }
    let total: i64 = lines.values().sum();
    let order = txn
        .execute_raw(Statement::from_sql_and_values(
            backend,
            "INSERT INTO orders (buyer_id, quantity, store_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            [buyer.into(), total.into(), store.into(), now.into(), now.into()],
        ))
        .await?;
    let order_id = order.last_insert_id() as i64;
    for (&product, &quantity) in lines {
        txn.execute_raw(Statement::from_sql_and_values(
            backend,
            "INSERT INTO order_details (order_id, product_id, quantity, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            [order_id.into(), product.into(), quantity.into(), now.into(), now.into()],
        ))
        .await?;
    }
    txn.commit().await?;
    Ok(Some((order_id, store)))
}

// ---------------------------------------------------------------------------------------
// Databases

struct BenchDb {
    url: String,
    name: String,
    mysql: bool,
    conn: DatabaseConnection,
    initial: BTreeMap<i64, i64>,
    _dir: Option<tempfile::TempDir>,
}

impl BenchDb {
    /// A fresh database with `stores` stores of `products` products each (`stock` units
    /// apiece) and `USERS` users.
    async fn create(bench: &Bench, stores: i64, products: i64, stock: i64) -> Self {
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
            _dir: dir,
        }
    }

    async fn query_pairs(&self, sql: &str) -> Vec<(i64, i64)> {
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

    async fn stock_of(&self, product: i64) -> i64 {
        self.query_pairs(&format!(
            "SELECT id, current_stock FROM products WHERE id = {product}"
        ))
        .await[0]
            .1
    }

    /// Checks SPEC.md's invariants and returns the number of order rows.
    async fn check_invariants(&self) -> u64 {
        let stocks: BTreeMap<i64, i64> = self
            .query_pairs("SELECT id, current_stock FROM products")
            .await
            .into_iter()
            .collect();
        let sold: BTreeMap<i64, i64> = self
            .query_pairs(
                "SELECT product_id, CAST(SUM(quantity) AS SIGNED) FROM order_details GROUP BY product_id",
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

    /// Orders per transaction, from the transaction tokens Kitara stores.
    async fn batching_note(&self) -> String {
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

    async fn drop(self) {
        if self.mysql {
            self.conn
                .execute_unprepared(&format!("DROP DATABASE `{}`", self.name))
                .await
                .ok();
        }
        self.conn.close().await.ok();
    }
}

// ---------------------------------------------------------------------------------------
// Where the CPU goes

/// CPU seconds used so far, read from /proc (Linux; `None` elsewhere).
#[derive(Clone, Copy)]
struct CpuClock {
    at: Instant,
    /// This process: Kitara or the baseline, and the load generator.
    process: f64,
    /// The database server, when it runs on this machine.
    database: Option<f64>,
    /// Idle and I/O-wait time of all cores together.
    idle: f64,
}

/// CPU used between two readings, in seconds; `per` turns it into microseconds per
/// answer.
#[derive(Clone, Copy)]
struct CpuUse {
    process: f64,
    database: Option<f64>,
    /// Idle core-seconds, and the core-seconds the machine had in all.
    idle: f64,
    capacity: f64,
}

/// CPU per counted answer, as the table shows it.
#[derive(Clone, Copy)]
struct PerAnswer {
    process: f64,
    database: Option<f64>,
    /// Fraction of the machine's cores that sat idle.
    idle: f64,
}

/// Linux reports process and system times in USER_HZ ticks, 100 per second.
const TICKS_PER_SECOND: f64 = 100.0;

impl CpuClock {
    fn now() -> Option<CpuClock> {
        Some(CpuClock {
            at: Instant::now(),
            process: process_cpu_seconds("self")?,
            database: database_pid().and_then(|pid| process_cpu_seconds(&pid.to_string())),
            idle: idle_seconds()?,
        })
    }

    fn used(self) -> Option<CpuUse> {
        let now = CpuClock::now()?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        Some(CpuUse {
            process: now.process - self.process,
            database: now.database.zip(self.database).map(|(b, a)| b - a),
            idle: now.idle - self.idle,
            capacity: (now.at - self.at).as_secs_f64() * cores,
        })
    }
}

impl CpuUse {
    fn add(self, other: CpuUse) -> CpuUse {
        CpuUse {
            process: self.process + other.process,
            database: self.database.zip(other.database).map(|(a, b)| a + b),
            idle: self.idle + other.idle,
            capacity: self.capacity + other.capacity,
        }
    }

    fn per(self, answers: u64) -> PerAnswer {
        let per = |seconds: f64| seconds * 1e6 / answers.max(1) as f64;
        PerAnswer {
            process: per(self.process),
            database: self.database.map(per),
            idle: (self.idle / self.capacity).clamp(0.0, 1.0),
        }
    }
}

/// utime + stime of `/proc/<pid>/stat`, in seconds.
fn process_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are space-separated.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// Idle + iowait of all cores, from the first line of `/proc/stat`.
fn idle_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    Some((fields.get(3)? + fields.get(4)?) / TICKS_PER_SECOND)
}

/// The database server process whose CPU is reported; set once at the start.
static DATABASE_PID: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();

fn database_pid() -> Option<u32> {
    DATABASE_PID.get().copied().flatten()
}

/// A MariaDB/MySQL server process on this machine (the benchmark cannot tell whether it
/// is the one `KITARA_BENCH_MYSQL_URL` names; it says which one it found).
fn find_database_process() -> Option<(u32, String)> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            let comm = comm.trim();
            matches!(comm, "mariadbd" | "mysqld").then(|| (pid, comm.to_owned()))
        })
}

// ---------------------------------------------------------------------------------------
// The machine

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or_else(String::new, |kb| {
            format!(", {:.0} GiB", kb / 1024.0 / 1024.0)
        });
    format!("{cpus} cores ({model}){memory}")
}

fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}
