//! The workloads: what each one sends, how long, and what it checks when it is over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use sea_orm::TransactionTrait;

use crate::cpu::{CpuClock, rss_mib};
use crate::db::BenchDb;
use crate::load::{Load, MakeRequest, Rng, drive, drive_count, drive_until_refused};
use crate::report::Row;
use crate::servers::Running;
use crate::{Bench, CONNECTIONS, HUGE_STOCK, SELL_OUT_STOCK, USERS};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Server {
    Kitara,
    RowLock,
}

/// The workloads that the ratios compare, measured in alternating slices: every round
/// gives each of them a slice (hot, spread and the baselines two units, storm and
/// ceiling one). On a shared VM the machine's speed drifts by tens of percent within
/// minutes; measured one after the other, a ratio would partly compare two moments.
/// Every workload keeps its own database and server for the whole phase.
pub(crate) struct Interleaved {
    pub(crate) rows: BTreeMap<&'static str, Row>,
    /// RSS of the process while all their servers still run.
    pub(crate) rss: Option<f64>,
}

/// What a workload of the interleaved phase checks when it is over.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    /// Every 200 is an order row (hot, spread, the baselines).
    Commits,
    /// Nothing sold, every answer a not-available 400 (storm).
    AllRefused,
    /// Nothing to check in the database (ceiling).
    Nothing,
}

pub(crate) struct Sliced {
    pub(crate) key: &'static str,
    pub(crate) name: &'static str,
    pub(crate) db: BenchDb,
    pub(crate) running: Running,
    pub(crate) make: MakeRequest,
    /// Slice length in units (see `Interleaved`).
    pub(crate) units: u32,
    pub(crate) expect: Expect,
    pub(crate) load: Load,
}

pub(crate) async fn interleaved(bench: &Bench) -> Interleaved {
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
pub(crate) async fn sell_out(bench: &Bench) -> Row {
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
pub(crate) async fn database_alone(bench: &Bench) -> Row {
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

pub(crate) fn lock_request(user: i64, product: i64) -> Request<Full<Bytes>> {
    let body =
        format!(r#"{{"user_id":{user},"products":[{{"product_id":{product},"quantity":1}}]}}"#);
    Request::post("/api/v1/order/lock")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}
