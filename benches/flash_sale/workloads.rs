//! The workloads: what each one sends, how long, and what it checks when it is over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use sea_orm::TransactionTrait;

use crate::cpu::{CpuClock, live_rss_mib, rss_mib};
use crate::db::BenchDb;
use crate::load::{Load, MakeRequest, Rng, drive, drive_count, drive_until_refused, percentile};
use crate::report::{Row, WAVE, Wave};
use crate::servers::{Running, Server};
use crate::{Bench, CONNECTIONS, HUGE_STOCK, SELL_OUT_STOCK, USERS};

/// The workloads that the ratios compare, measured in alternating slices: every round
/// gives each of them a slice (hot, spread and the baselines two units, storm and
/// ceiling one). On a shared VM the machine's speed drifts by tens of percent within
/// minutes; measured one after the other, a ratio would partly compare two moments.
/// Every workload keeps its own database and server for the whole phase (of its group,
/// `GROUPS`).
pub(crate) struct Interleaved {
    pub(crate) rows: BTreeMap<&'static str, Row>,
    /// RSS of the process while all their servers still run.
    pub(crate) rss: Option<f64>,
}

/// What a workload sends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Traffic {
    /// `GET /healthz`.
    Healthz,
    /// Locks of one unit of a random product, by a random user.
    Lock,
    /// The same, each with `hold_seconds` 900 and an `Idempotency-Key` of its own.
    HeldKeyedLock,
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

/// The interleaved workloads, in two groups that each run as a phase of their own: the
/// ratios compare workloads of one group, and every server of a group keeps its pool for
/// the whole phase, so the groups are sized to fit a database's default 151 connections
/// (all of them at once did not: the last pools to grow were refused connections).
const GROUPS: [&[&str]; 2] = [
    &[
        "hot",
        "hot-no-metrics",
        "hot-no-events",
        "hot-followed",
        "hot-holds",
        "storm",
        "ceiling",
        "hot-row-lock",
    ],
    &[
        "spread",
        "spread-no-events",
        "spread-3-nodes",
        "spread-row-lock",
    ],
];

/// How long the webhook of `hot-followed` may take to deliver what it is behind by at the
/// end of a slice.
const DRAIN_WITHIN: Duration = Duration::from_secs(60);

pub(crate) async fn interleaved(bench: &Bench) -> Interleaved {
    let mut rows = BTreeMap::new();
    let mut rss = None;
    for group in GROUPS {
        let phase = interleaved_group(bench, group).await;
        rows.extend(phase.rows);
        rss = phase.rss.or(rss);
    }
    Interleaved { rows, rss }
}

async fn interleaved_group(bench: &Bench, group: &[&str]) -> Interleaved {
    let mut workloads = Vec::new();
    use Traffic::*;
    for (key, name, server, (stores, products, stock), traffic, expect) in [
        (
            "hot",
            "hot (kitara)",
            Server::Kitara,
            (1, 1, HUGE_STOCK),
            Lock,
            Expect::Commits,
        ),
        (
            "hot-no-metrics",
            "hot without metrics (kitara)",
            Server::KitaraWithoutMetrics,
            (1, 1, HUGE_STOCK),
            Lock,
            Expect::Commits,
        ),
        (
            "hot-no-events",
            "hot without events (kitara)",
            Server::KitaraWithoutEvents,
            (1, 1, HUGE_STOCK),
            Lock,
            Expect::Commits,
        ),
        (
            "hot-followed",
            "hot, 100 stream followers and a webhook attached (kitara)",
            Server::KitaraFollowed,
            (1, 1, HUGE_STOCK),
            Lock,
            Expect::Commits,
        ),
        (
            "hot-holds",
            "hot with holds and keys (kitara)",
            Server::Kitara,
            (1, 1, HUGE_STOCK),
            HeldKeyedLock,
            Expect::Commits,
        ),
        (
            "spread",
            "spread 1,000×10 (kitara)",
            Server::Kitara,
            (1_000, 10, HUGE_STOCK),
            Lock,
            Expect::Commits,
        ),
        (
            "spread-no-events",
            "spread 1,000×10 without events (kitara)",
            Server::KitaraWithoutEvents,
            (1_000, 10, HUGE_STOCK),
            Lock,
            Expect::Commits,
        ),
        (
            "spread-3-nodes",
            "spread 1,000×10 through 3 nodes (kitara)",
            Server::KitaraThreeNodes,
            (1_000, 10, HUGE_STOCK),
            Lock,
            Expect::Commits,
        ),
        (
            "storm",
            "sold-out storm (kitara)",
            Server::Kitara,
            (1, 1, 0),
            Lock,
            Expect::AllRefused,
        ),
        (
            "ceiling",
            "ceiling GET /healthz",
            Server::Kitara,
            (1, 1, 0),
            Healthz,
            Expect::Nothing,
        ),
        (
            "hot-row-lock",
            "hot (row-lock)",
            Server::RowLock,
            (1, 1, HUGE_STOCK),
            Lock,
            Expect::Commits,
        ),
        (
            "spread-row-lock",
            "spread 1,000×10 (row-lock)",
            Server::RowLock,
            (1_000, 10, HUGE_STOCK),
            Lock,
            Expect::Commits,
        ),
    ] {
        // Several nodes share a database only on MySQL.
        if !group.contains(&key)
            || !bench.selected(key)
            || (server == Server::KitaraThreeNodes && bench.mysql.is_none())
        {
            continue;
        }
        let db = BenchDb::create(bench, stores, products, stock).await;
        let running = Running::start(&db, server).await;
        let catalog = stores * products;
        let make: MakeRequest = match traffic {
            Healthz => Arc::new(|_: &mut Rng, _: Option<&Bytes>| {
                Some(
                    Request::get("/healthz")
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
            }),
            Lock => Arc::new(move |rng: &mut Rng, _: Option<&Bytes>| {
                Some(lock_request(rng.below(USERS) + 1, rng.below(catalog) + 1))
            }),
            HeldKeyedLock => Arc::new(move |rng: &mut Rng, _: Option<&Bytes>| {
                let product = rng.below(catalog) + 1;
                Some(held_keyed_lock_request(rng, product))
            }),
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
                &workload.running.addrs(),
                unit * workload.units,
                workload.make.clone(),
            )
            .await;
            workload.load.then(slice);
            // The webhook of `hot-followed` is behind at the end of its slice (one POST
            // at a time cannot keep up with hot); it delivers the rest here, between
            // slices, so that no other workload's slice pays for it.
            if let Some(attached) = &workload.running.attached {
                let drained = attached.drained(workload.load.ok, DRAIN_WITHIN).await;
                assert!(drained, "{}: the webhook did not catch up", workload.key);
            }
        }
    }
    let rss = (!workloads.is_empty()).then(rss_mib).flatten();

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
        let attached = running.attached.as_ref().map(|a| a.seen.clone());
        let forwarding = forwarding_note(&running.addrs()).await;
        running.stop().await;
        let note = match expect {
            Expect::Commits => {
                let stored = db.check_invariants().await;
                assert_eq!(stored, load.ok, "{name}: every 200 must be an order row");
                if key == "hot-holds" {
                    let keys = db.count("idempotency_keys").await;
                    assert_eq!(keys, load.ok, "{name}: every 200 stored its key");
                }
                let mut batching = db.batching_note().await;
                // Every order of these workloads has stock to take: anything but a 200
                // (a refused connection, a 503) is a fault of the run, said in its row.
                let failed = load.refused + load.other;
                if failed > 0 {
                    batching = format!("{failed} answers not 200; {batching}");
                }
                if let Some(forwarding) = forwarding {
                    batching = format!("{batching}; {forwarding}");
                }
                match attached {
                    Some(seen) => format!("{batching}; {}", followed_note(&seen, load.ok)),
                    None => batching,
                }
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
        Arc::new(|rng: &mut Rng, _: Option<&Bytes>| Some(lock_request(rng.below(USERS) + 1, 1))),
    )
    .await;
    // After the sell-out every answer must be a not-available 400.
    let later = drive_count(
        running.addr,
        CONNECTIONS,
        Arc::new(|rng: &mut Rng, _: Option<&Bytes>| Some(lock_request(rng.below(USERS) + 1, 1))),
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
    use kitara::db::persist::{Batch, NewOrder, Plan, Token, write_plan};
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
        let plan = Plan::new(&batch, &Token::new(&[0, written as u128]), true);
        write_plan(&txn, &plan).await.expect("write a batch");
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

/// Keys unique across the run, shaped like the random keys clients send.
static KEYS_SENT: AtomicU64 = AtomicU64::new(0);

/// A lock of one unit held for 900 s, with an `Idempotency-Key` of its own.
pub(crate) fn held_keyed_lock_request(rng: &mut Rng, product: i64) -> Request<Full<Bytes>> {
    let user = rng.below(USERS) + 1;
    let key = format!(
        "{:016x}{:016x}",
        rng.next(),
        KEYS_SENT.fetch_add(1, Ordering::Relaxed)
    );
    let body = format!(
        r#"{{"user_id":{user},"hold_seconds":900,"products":[{{"product_id":{product},"quantity":1}}]}}"#
    );
    Request::post("/api/v1/order/lock")
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// Each connection locks one unit of the hot product, then confirms the order it got,
/// then locks again. Its rate is completed pairs per second: confirmed orders, counted
/// in the database.
pub(crate) async fn lock_then_confirm(bench: &Bench) -> Row {
    let db = BenchDb::create(bench, 1, 1, HUGE_STOCK).await;
    let running = Running::start(&db, Server::Kitara).await;
    let make: MakeRequest = Arc::new(|_: &mut Rng, previous: Option<&Bytes>| {
        let locked = previous
            .and_then(|body| serde_json::from_slice::<serde_json::Value>(body).ok())
            .filter(|answer| answer["data"]["status"] == "locked")
            .and_then(|answer| answer["data"]["order_id"].as_i64());
        Some(match locked {
            Some(order) => confirm_request(order),
            None => lock_request(1, 1),
        })
    });
    let load = drive(&[running.addr], bench.duration(), make).await;
    running.stop().await;
    let confirmed = db.count_where("orders", "status = 'confirmed'").await;
    let stored = db.check_invariants().await;
    assert_eq!(
        stored,
        db.count("orders").await,
        "lock then confirm: invariants"
    );
    assert_eq!(load.other, 0, "lock then confirm: every answer a 200");
    db.drop().await;
    let elapsed = load.elapsed.as_secs_f64();
    let mut row = load.row("lock then confirm (kitara)", true, String::new());
    row.rate = confirmed as f64 / elapsed;
    row.note =
        format!("pairs/s: {confirmed} orders locked then confirmed; latencies are per request");
    row
}

/// A confirm by user 1, who placed every order of `lock_then_confirm`.
fn confirm_request(order: i64) -> Request<Full<Bytes>> {
    Request::post(format!("/api/v1/order/{order}/confirm"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"user_id":1}"#)))
        .unwrap()
}

/// 100,000 holds on product 2 expire within the same second while hot traffic runs on
/// product 1 of the same store (one actor, one writer). The holds are written by SQL
/// before Kitara starts, so start-up loads and re-arms them.
pub(crate) async fn expiry_wave(bench: &Bench) -> (Row, Wave) {
    // The memory of a server with no holds, measured the same way, for comparison.
    let empty = BenchDb::create(bench, 1, 2, HUGE_STOCK).await;
    let before = live_rss_mib();
    let running = Running::start(&empty, Server::Kitara).await;
    let rss_empty = live_rss_mib()
        .zip(before)
        .map(|(after, before)| after - before);
    running.stop().await;
    empty.drop().await;

    let db = BenchDb::create(bench, 1, 2, HUGE_STOCK).await;
    let lead = if bench.quick { 4 } else { 6 };
    let deadline = chrono::Utc::now().timestamp() + lead;
    db.insert_holds(2, WAVE, deadline).await;
    let before = live_rss_mib();
    let running = Running::start(&db, Server::Kitara).await;
    let rss_per_wave = live_rss_mib()
        .zip(before)
        .map(|(after, before)| after - before);
    let start = Instant::now();
    let deadline_at = start
        + Duration::from_micros(
            (deadline * 1_000_000 - chrono::Utc::now().timestamp_micros()).max(0) as u64,
        );

    // Watch the listing for the wave's units.
    let addr = running.addr;
    let watcher = tokio::spawn(async move {
        loop {
            if listed_stock(addr, 2).await == Some(HUGE_STOCK) {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let hot: MakeRequest =
        Arc::new(|rng: &mut Rng, _: Option<&Bytes>| Some(lock_request(rng.below(USERS) + 1, 1)));
    let run_for = deadline_at - start + Duration::from_secs(if bench.quick { 3 } else { 5 });
    let mut load = drive(&[addr], run_for, hot).await;
    let back_at = tokio::time::timeout(Duration::from_secs(30), watcher)
        .await
        .ok()
        .and_then(|t| t.ok());
    running.stop().await;

    let expired = db.count_where("orders", "status = 'expired'").await;
    assert_eq!(expired, WAVE as u64, "expiry wave: every hold expired");
    assert_eq!(
        db.stock_of(2).await,
        HUGE_STOCK,
        "expiry wave: every unit back"
    );
    let placed = db.count_where("orders", "status = 'locked'").await;
    assert_eq!(
        placed, load.ok,
        "expiry wave: every 200 of hot is an order row"
    );
    db.check_invariants().await;
    db.drop().await;

    // Hot's latencies during the wave, and outside it.
    let wave_from = (deadline_at - start).as_millis() as u32;
    let wave_to = wave_from + 2_000;
    let (mut during, mut outside) = (Vec::new(), Vec::new());
    for (&sent, &latency) in load.sent_ms.iter().zip(&load.latencies_us) {
        if (wave_from..wave_to).contains(&sent) {
            during.push(latency);
        } else {
            outside.push(latency);
        }
    }
    let wave = Wave {
        back_after: back_at.map(|at| at.saturating_duration_since(deadline_at)),
        p99_during: percentile(&mut during, 0.99),
        p99_outside: percentile(&mut outside, 0.99),
        rss_per_wave,
        rss_empty,
    };
    load.sent_ms.clear();
    let row = load.row(
        "hot during an expiry wave (kitara)",
        true,
        format!("{WAVE} holds expiring in one second, same store"),
    );
    (row, wave)
}

/// The body of `GET /api/v1/products`, on a connection of its own.
pub(crate) async fn listing(addr: std::net::SocketAddr) -> Option<Bytes> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let request = Request::get("/api/v1/products")
        .header("host", "kitara")
        .body(Full::new(Bytes::new()))
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .ok()?;
    Some(body.to_bytes())
}

/// The stock `GET /api/v1/products` lists for a product.
async fn listed_stock(addr: std::net::SocketAddr, product: i64) -> Option<i64> {
    let body = listing(addr).await?;
    let listing: serde_json::Value = serde_json::from_slice(&body).ok()?;
    listing["data"]
        .as_array()?
        .iter()
        .find(|p| p["id"] == product)?["current_stock"]
        .as_i64()
}

/// What the followers and the webhook receiver of `hot-followed` saw of its `events`
/// (one per order).
/// Requests forwarded per batch, over the nodes of a cluster (`None` for one server, which
/// forwards nothing).
async fn forwarding_note(addrs: &[std::net::SocketAddr]) -> Option<String> {
    let (mut forwarded, mut batches) = (0.0, 0.0);
    for addr in addrs {
        let text = crate::few_clients::metrics_text(*addr).await?;
        let series = |name| crate::few_clients::series(&text, name).unwrap_or(0.0);
        forwarded += series("kitara_forwarded_request_duration_seconds_count");
        batches += series(r#"kitara_http_requests_total{route="cluster_forward",status="200"}"#);
    }
    (batches > 0.0).then(|| format!("{:.1} requests per forwarded batch", forwarded / batches))
}

fn followed_note(seen: &crate::followers::Seen, events: u64) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let followed = seen.followed.load(Relaxed);
    let delivered = seen.last_delivered.load(Relaxed);
    let mut lags = seen.lags_ms.lock().map(|l| l.clone()).unwrap_or_default();
    lags.sort_unstable();
    let pick = |q: f64| {
        lags.get(((lags.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    format!(
        "followers got {:.0} % of the events ({} reconnects), {:.0} bytes an event; the webhook acknowledged {} of {} events (lag p50 {} ms, p99 {} ms)",
        100.0 * followed as f64 / (events as f64 * crate::followers::FOLLOWERS as f64).max(1.0),
        seen.reconnects.load(Relaxed),
        seen.bytes.load(Relaxed) as f64 / followed.max(1) as f64,
        delivered,
        events,
        pick(0.5),
        pick(0.99),
    )
}
