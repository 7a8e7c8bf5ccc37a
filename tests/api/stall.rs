//! MariaDB only, on a private server: the database stalls (SIGSTOP) under lock, read
//! and confirm traffic from 32 clients, for 3 s several times and once for 12 s, then
//! resumes (SIGCONT). A stalled database may make Kitara slow to say no; it must never
//! make it answer wrongly:
//! - no 404 for an order that exists, and no read that disagrees with an answer given;
//! - no "guard tripped" and no `refused` count while stock is ample;
//! - every answer within its bound: the pool's acquire timeout, plus the outcome
//!   deadline for a write whose COMMIT was in flight;
//! - afterwards every order answered 200 is stored as answered, every confirm and
//!   cancel answered 200 is stored, and `kitara check` passes;
//! - a stock adjustment that failed in a stall takes nothing away, in memory either.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{ADMIN_TOKEN, Api, Backend, Started, TestDb, order, start_kitara};
use crate::mariadb::PrivateMariadb;

const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(1000);
const OUTCOME_DEADLINE: Duration = Duration::from_millis(2000);
/// What a loaded two-core machine may add to a bound: scheduling, the client's own
/// queueing. Wide, so that only a missing bound (an answer that waits out the stall)
/// fails the test.
const SLACK: Duration = Duration::from_millis(1500);
/// A request that takes this long hangs: the test fails instead of waiting.
const HANG: Duration = Duration::from_secs(30);

const CLIENTS: i64 = 32;
/// The stalls, in seconds, with traffic before, between and after them.
const STALLS: &[u64] = &[3, 3, 3, 12];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Lock,
    Get,
    Confirm,
    Cancel,
}

impl Kind {
    /// How long an answer may take: reads wait at most for the pool; writes may also
    /// wait out the outcome deadline of a COMMIT in flight.
    fn bound(self) -> Duration {
        match self {
            Kind::Get => ACQUIRE_TIMEOUT + SLACK,
            _ => ACQUIRE_TIMEOUT + OUTCOME_DEADLINE + SLACK,
        }
    }
}

/// One answer a client got.
#[derive(Debug)]
struct Seen {
    kind: Kind,
    buyer: i64,
    order: Option<i64>,
    status: StatusCode,
    took: Duration,
    body: Value,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_database_never_gets_an_answer_wrong_mysql() {
    let Some((server, db)) = PrivateMariadb::with_demo_data().await else {
        return;
    };
    db.exec("UPDATE products SET current_stock = 1000000 WHERE id IN (1, 2)")
        .await;
    db.exec("INSERT INTO stock_movements (product_id, delta, reason) VALUES (1, 999990, 'test'), (2, 999995, 'test')")
        .await;
    let initial = db.stocks().await;
    let (child, api, mut logs) = start_with_short_bounds(&db).await;
    let api = Arc::new(api);

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(client(api.clone(), c, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for &seconds in STALLS {
        server.pause();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        server.resume();
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for client in clients {
        seen.extend(client.await.expect("a client panicked"));
    }

    // What every answer said, judged on its own.
    let count = |kind: Kind, status: StatusCode| {
        seen.iter()
            .filter(|s| s.kind == kind && s.status == status)
            .count()
    };
    for kind in [Kind::Lock, Kind::Get, Kind::Confirm, Kind::Cancel] {
        println!(
            "{kind:?}: {} answered 200, {} answered 503, slowest {:?} (bound {:?})",
            count(kind, StatusCode::OK),
            count(kind, StatusCode::SERVICE_UNAVAILABLE),
            seen.iter()
                .filter(|s| s.kind == kind)
                .map(|s| s.took)
                .max()
                .unwrap_or_default(),
            kind.bound(),
        );
    }
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for s in seen.iter().filter(|s| s.status != StatusCode::OK) {
        *reasons
            .entry(format!("{:?} {} {}", s.kind, s.status, s.body["message"]))
            .or_default() += 1;
    }
    println!("refusals: {reasons:#?}");
    // Every problem is gathered first, so that a failure shows all of them.
    let mut problems = Vec::new();
    for s in &seen {
        if !matches!(s.status, StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE) {
            problems.push(format!("answered {}: {s:?}", s.status));
        } else if s.took > s.kind.bound() {
            problems.push(format!("past its bound: {s:?}"));
        } else if s.status == StatusCode::SERVICE_UNAVAILABLE && !s.body["message"].is_string() {
            problems.push(format!("a 503 without a message: {s:?}"));
        } else if s.body["message"] == "shutting down" {
            // What a request hears when its store's actor drops it unanswered.
            problems.push(format!("a 503 that says shutting down: {s:?}"));
        }
    }
    if count(Kind::Lock, StatusCode::OK) < 100 || count(Kind::Confirm, StatusCode::OK) < 10 {
        problems.push("too little traffic to judge".into());
    }

    // The log and the metrics: no guard tripped with ample stock, no connection caught
    // out of step.
    let (status, metrics) = api.text("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let mut lines = Vec::new();
    while let Ok(line) = logs.try_recv() {
        lines.push(line);
    }
    problems.extend(
        lines
            .iter()
            .filter(|l| l.contains("guard tripped") || l.contains("refused writes"))
            .map(|l| format!("the database refused nothing, yet: {l}")),
    );
    for series in [
        r#"kitara_database_errors_total{kind="refused"} 0"#,
        r#"kitara_database_errors_total{kind="out_of_step"} 0"#,
    ] {
        if !metrics.contains(series) {
            problems.push(format!("/metrics lacks {series}"));
        }
    }
    if !problems.is_empty() {
        // What Kitara warned of, to tell how it came to that.
        for line in lines
            .iter()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(300)
        {
            println!("{line}");
        }
    }
    let shown: Vec<&String> = problems.iter().take(40).collect();
    assert!(
        problems.is_empty(),
        "{} problems, the first ones: {shown:#?}",
        problems.len()
    );

    // Everything answered 200 is stored as answered.
    let placed: Vec<(i64, &Value)> = seen
        .iter()
        .filter(|s| s.kind == Kind::Lock && s.status == StatusCode::OK)
        .map(|s| (s.buyer, &s.body))
        .collect();
    db.assert_orders_stored(&placed).await;
    let statuses = db.statuses().await;
    for s in seen.iter().filter(|s| s.status == StatusCode::OK) {
        let want = match s.kind {
            Kind::Confirm => "confirmed",
            Kind::Cancel => "cancelled",
            Kind::Lock | Kind::Get => continue,
        };
        let id = s.order.expect("an order id");
        assert_eq!(statuses.get(&id).map(String::as_str), Some(want), "{s:?}");
    }
    db.assert_invariants(&initial).await;
    let unbalanced = db.unbalanced().await;
    assert!(unbalanced.is_empty(), "kitara check fails: {unbalanced:?}");
    // Kitara serves again, from memory that agrees with the database. The 12 s stall
    // outlasts the lease, so the node gave its stores up by its own clock; it takes
    // them back at its first look after a heartbeat gets through (503 until then).
    let back = Instant::now();
    let (status, body) = loop {
        let (status, body) = api.lock(&order(2, &[(1, 1)])).await;
        if status != StatusCode::SERVICE_UNAVAILABLE || back.elapsed() > Duration::from_secs(3) {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, StatusCode::OK, "{body}");
    println!("served again {:?} after the checks began", back.elapsed());
    let listed = api.listed_stocks().await;
    assert_eq!(listed, db.stocks().await);

    kill_and_drop(child, db).await;
}

/// Two confirms of one order while the database is stopped: the first is given up at
/// its deadline, the second (whose read of the order stalls too) is answered within its
/// own bound, and once the database is back the order is confirmed, once. (The second
/// never waits in the actor behind the first: its read of the order fails first. The
/// outcome tests hold only the first's COMMIT, so that the second waits behind it:
/// `a_confirm_waiting_behind_a_failed_one_is_decided_again_mysql`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_confirms_during_a_stall_are_answered_in_time_mysql() {
    let Some((server, db)) = PrivateMariadb::with_demo_data().await else {
        return;
    };
    let (child, api, _logs) = start_with_short_bounds(&db).await;
    let api = Arc::new(api);
    let body = serde_json::json!({"user_id": 2, "hold_seconds": 600, "products": [{"product_id": 1, "quantity": 1}]});
    let (status, locked) = api.lock(&body).await;
    assert_eq!(status, StatusCode::OK, "{locked}");
    let id = locked["data"]["order_id"].as_i64().unwrap();

    server.pause();
    let first = tokio::spawn({
        let api = api.clone();
        async move { api.end(id, "confirm", 2).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = tokio::spawn({
        let api = api.clone();
        async move {
            let started = Instant::now();
            let answer =
                tokio::time::timeout(Kind::Confirm.bound() * 2, api.end(id, "confirm", 2)).await;
            (answer, started.elapsed())
        }
    });
    let (status, answer) = first.await.expect("the first confirm");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    // Still stopped: the second must be answered by its own deadline.
    let (answer, took) = second.await.expect("the second confirm");
    server.resume();
    let (status, answer) =
        answer.unwrap_or_else(|_| panic!("the second confirm was never answered"));
    println!(
        "the second confirm answered {status} after {took:?}: {}",
        answer["message"]
    );
    assert!(
        matches!(status, StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE),
        "{status}: {answer}"
    );
    assert!(
        took <= Kind::Confirm.bound(),
        "answered only after {took:?}"
    );
    // Whatever it answered, the order is confirmed now (a repeat confirm answers 200),
    // once Kitara has seen the database answer again (503 until then).
    let back = Instant::now();
    let (status, answer) = loop {
        let (status, answer) = api.end(id, "confirm", 2).await;
        if status != StatusCode::SERVICE_UNAVAILABLE || back.elapsed() > Duration::from_secs(3) {
            break (status, answer);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        db.statuses().await.get(&id).map(String::as_str),
        Some("confirmed")
    );

    kill_and_drop(child, db).await;
}

/// The real binary on `db`, with the acquire timeout and outcome deadline of these
/// tests, so that a stall is answered within seconds, and the admin API on.
async fn start_with_short_bounds(db: &TestDb) -> Started {
    let acquire = ACQUIRE_TIMEOUT.as_millis().to_string();
    let outcome = OUTCOME_DEADLINE.as_millis().to_string();
    start_kitara(
        &db.url,
        &[
            ("KITARA_DB_ACQUIRE_TIMEOUT_MS", &acquire),
            ("KITARA_OUTCOME_DEADLINE_MS", &outcome),
            ("KITARA_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
    .await
}

/// The end of a test: Kitara killed, its database dropped.
async fn kill_and_drop(mut kitara: tokio::process::Child, db: TestDb) {
    kitara.start_kill().ok();
    kitara.wait().await.ok();
    db.drop_database().await;
}

/// Locks, reads the order back, then confirms or cancels it, until told to stop. A 503
/// is taken as it comes; anything else is judged by the test.
async fn client(api: Arc<Api>, c: i64, stop: Arc<AtomicBool>) -> Vec<Seen> {
    let buyer = 1 + c % 3;
    let mut seen = Vec::new();
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let lock = timed(Kind::Lock, buyer, None, async {
            let (status, body) = api.lock(&order(buyer, &[(1 + round % 2, 1)])).await;
            (status, body)
        })
        .await;
        let id = lock.body["data"]["order_id"].as_i64();
        let placed = lock.status == StatusCode::OK;
        seen.push(Seen { order: id, ..lock });
        let (Some(id), true) = (id, placed) else {
            continue;
        };
        let get = timed(Kind::Get, buyer, Some(id), api.get_order(id)).await;
        if get.status == StatusCode::OK {
            assert_eq!(get.body["data"]["status"], "locked", "order {id}: {get:?}");
        }
        seen.push(get);
        let (kind, action, status) = if round % 3 == 0 {
            (Kind::Cancel, "cancel", "cancelled")
        } else {
            (Kind::Confirm, "confirm", "confirmed")
        };
        let end = timed(kind, buyer, Some(id), api.end(id, action, buyer)).await;
        let ended = end.status == StatusCode::OK;
        if ended {
            assert_eq!(end.body["data"]["status"], status, "order {id}: {end:?}");
        }
        seen.push(end);
        if ended {
            // Read your writes: the change answered is the one read.
            let get = timed(Kind::Get, buyer, Some(id), api.get_order(id)).await;
            if get.status == StatusCode::OK {
                assert_eq!(get.body["data"]["status"], status, "order {id}: {get:?}");
            }
            seen.push(get);
        }
    }
    seen
}

async fn timed(
    kind: Kind,
    buyer: i64,
    order: Option<i64>,
    request: impl std::future::Future<Output = (StatusCode, Value)>,
) -> Seen {
    let started = Instant::now();
    let (status, body) = tokio::time::timeout(HANG, request)
        .await
        .unwrap_or_else(|_| panic!("a {kind:?} of order {order:?} hung for {HANG:?}"));
    Seen {
        kind,
        buyer,
        order,
        status,
        took: started.elapsed(),
        body,
    }
}

/// A TCP proxy to the database whose answers can be held back, as a stalled server
/// holds them: what the client sends goes through, what the server answers waits.
struct StallingProxy {
    port: u16,
    paused: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl StallingProxy {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (paused, watch) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match server_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if watch.wait_for(|paused| !paused).await.is_err()
                            || client_write.write_all(&buf[..n]).await.is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        Self { port, paused, task }
    }

    fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A ping cut off by a timeout while the proxy holds its answer back.
async fn cut_off_ping(proxy: &StallingProxy, pool: &sea_orm::DatabaseConnection) {
    // Once the pool's connections are idle: a connection given back is tested first,
    // and that test must not be what the proxy holds back.
    let sqlx = pool.get_mysql_connection_pool();
    while sqlx.num_idle() < sqlx.size() as usize {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.pause(true);
    let cut = tokio::time::timeout(Duration::from_millis(200), pool.ping()).await;
    assert!(cut.is_err(), "the ping was answered through a paused proxy");
    proxy.pause(false);
}

/// `SELECT n` on the pool: what a caller gets back when it asks for `n`.
async fn echo(db: &sea_orm::DatabaseConnection, n: i64) -> Option<i64> {
    use sea_orm::{ConnectionTrait, Statement};
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT {n}"),
        ))
        .await
        .ok()??;
    row.try_get_by_index::<i64>(0).ok()
}

/// A call cut off while the server's answer is on its way (a ping under a timeout) leaves
/// its connection one answer behind. On a plain pool the next caller then reads the
/// stale answer as its own; Kitara's pool finds the connection out of step when it is
/// given back, closes it and counts it, and every later answer is right. A call run
/// through `db::call::within` is never cut off: it ends in step, and nothing is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cut_off_mid_flight_never_hands_its_answer_to_the_next_caller_mysql() {
    use std::sync::atomic::AtomicUsize;

    if !Backend::Mysql.available() {
        return;
    }
    let db = TestDb::new(Backend::Mysql).await;
    let (server, name) = db.url.rsplit_once('/').unwrap();
    let proxy = StallingProxy::start(server.rsplit('@').next().unwrap().to_owned()).await;
    let credentials = server.rsplit_once('@').unwrap().0;
    let url = format!("{credentials}@127.0.0.1:{}/{name}", proxy.port);

    // The hazard, on a plain pool of one connection that, like Kitara's, does not ping a
    // connection that was busy a moment ago before handing it out.
    let mut options = sea_orm::ConnectOptions::new(url.clone());
    options
        .max_connections(1)
        .test_before_acquire(false)
        .sqlx_logging(false);
    let plain = sea_orm::Database::connect(options).await.expect("connect");
    assert_eq!(echo(&plain, 1).await, Some(1));
    cut_off_ping(&proxy, &plain).await;
    let mut answers = Vec::new();
    for n in 2..6 {
        answers.push((n, echo(&plain, n).await));
    }
    println!("a plain pool after a cut-off ping: {answers:?}");
    assert!(
        answers.iter().any(|&(n, answer)| answer != Some(n)),
        "the plain pool answered every question right: the hazard did not show"
    );
    plain.close().await.ok();

    // Kitara's pool: the connection is closed when it is given back, and counted.
    let closed = Arc::new(AtomicUsize::new(0));
    let counted = closed.clone();
    let kitara = kitara::db::connect_watched(
        &crate::helpers::database_args(&url),
        Arc::new(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        }),
    )
    .await
    .expect("connect");
    assert_eq!(echo(&kitara, 1).await, Some(1));
    cut_off_ping(&proxy, &kitara).await;
    let waited = Instant::now();
    while closed.load(Ordering::Relaxed) == 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the connection out of step was not found"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for n in 2..40 {
        assert_eq!(echo(&kitara, n).await, Some(n), "asked for {n}");
    }
    assert_eq!(closed.load(Ordering::Relaxed), 1);

    // Through `within`, a call whose caller stops waiting still ends in step.
    proxy.pause(true);
    let pool = kitara.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
    let gave_up =
        kitara::db::call::within(deadline, async move { Ok(echo(&pool, 77).await) }).await;
    assert!(gave_up.is_err(), "answered through a paused proxy");
    proxy.pause(false);
    for n in 100..140 {
        assert_eq!(echo(&kitara, n).await, Some(n), "asked for {n}");
    }
    assert_eq!(closed.load(Ordering::Relaxed), 1, "a connection was closed");
    kitara.close().await.ok();
    drop(proxy);
    db.drop_database().await;
}

/// A stock adjustment that takes units away and fails while the database is stopped
/// gives them back in memory: afterwards the listing shows what the database holds, and
/// every unit still sells. Memory that kept them would under-sell for good: no guard
/// trips on units memory withholds, so nothing would reload the store (a mutant of
/// `take_back` that did so survived every other test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_adjustment_that_failed_in_a_stall_takes_nothing_away_mysql() {
    let Some((server, db)) = PrivateMariadb::with_demo_data().await else {
        return;
    };
    let (child, api, _logs) = start_with_short_bounds(&db).await;
    let before = db.stocks().await;
    assert_eq!(api.listed_stocks().await, before);

    server.pause();
    let restock = serde_json::json!({"delta": -3, "reason": "damaged in the stall"});
    let (status, answer) = api
        .admin(
            Method::POST,
            "/api/v1/admin/products/1/stock",
            Some(&restock),
        )
        .await;
    server.resume();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_ne!(answer["message"], "order outcome unknown", "{answer}");

    // Nothing was stored, and memory says so too.
    assert_eq!(db.stocks().await, before);
    assert_eq!(api.listed_stocks().await, before);
    // Every unit of the product sells, once Kitara has seen the database again.
    let all = order(2, &[(1, before[&1])]);
    let back = Instant::now();
    let (status, answer) = loop {
        let (status, answer) = api.lock(&all).await;
        if status != StatusCode::SERVICE_UNAVAILABLE || back.elapsed() > Duration::from_secs(5) {
            break (status, answer);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(db.stocks().await[&1], 0);

    kill_and_drop(child, db).await;
}
