//! MariaDB only: the connection dies while COMMIT is in flight. A proxy between Kitara
//! and the server cuts the connection at the COMMIT packet, either after passing it on
//! (the transaction commits, the reply is lost) or instead of passing it on (the
//! transaction rolls back). Kitara must not guess: it looks its transaction token up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::helpers::{Backend, TestApp, TestDb, assert_unavailable, order, series, spawn_app_with};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Pass everything.
    Never,
    /// Pass the next COMMIT to the server, then cut the client's connection.
    AfterCommit,
    /// Drop the next COMMIT and cut the connection: the server rolls back.
    InsteadOfCommit,
    /// Like `InsteadOfCommit`, and from then on the database is unreachable: every
    /// connection is cut and new ones are refused.
    InsteadOfCommitThenBlackout,
    /// Pass the COMMIT on (the transaction commits), then make the database unreachable
    /// before the reply gets back: Kitara cannot learn the outcome.
    AfterCommitThenBlackout,
    /// Cut the client's connection at the next COMMIT without passing it on, but keep
    /// the server's side open for `HELD_FOR`: the server's session stays in its
    /// transaction, holding its locks, then rolls back.
    HoldCommit,
    /// Hold the next COMMIT back for `LATE_BY`, then drop it and cut the connection: the
    /// writer learns, past its answer's deadline, that nothing committed.
    LateInsteadOfCommit,
    /// Hold the next COMMIT back for `LANDS_AFTER`, then pass it on: it commits after
    /// the writer gave up on its outcome.
    LateCommit,
}

const HELD_FOR: Duration = Duration::from_secs(3);

/// How long `Cut::LateInsteadOfCommit` holds a COMMIT before it cuts.
const LATE_BY: Duration = Duration::from_millis(2_500);

/// How long `Cut::LateCommit` holds a COMMIT: past the writer's answer and outcome
/// deadlines in `a_commit_that_lands_late`, and well within the second after which the
/// server ends a write transaction left idle (`idle_write_transaction_timeout`).
const LANDS_AFTER: Duration = Duration::from_millis(600);

/// Holds the first batch statement back until the test releases it (`release_hold`), so
/// that the orders sent meanwhile queue up for the next batch; turns that next batch into
/// a statement the server refuses; then makes the database unreachable.
const HOLD_THEN_REFUSE_THEN_BLACKOUT: usize = 2;

#[derive(Default)]
struct ProxyState {
    cut: Option<Cut>,
    /// Batch statements (`INSERT INTO orders`) left to hold back and then refuse; see
    /// `HOLD_THEN_REFUSE_THEN_BLACKOUT`.
    refuse_plan: usize,
    /// While set, every connection is cut and new ones are refused.
    blackout: bool,
    /// The task that accepts connections: aborting it closes the port, so that
    /// connecting fails with "connection refused", as when the server is down.
    accepting: Option<tokio::task::AbortHandle>,
    pipes: Vec<JoinHandle<()>>,
    /// A batch statement is held back (`HOLD_THEN_REFUSE_THEN_BLACKOUT`).
    holding: bool,
    /// Server sessions kept open by `Cut::HoldCommit` that have not closed yet.
    held_sessions: usize,
    /// A COMMIT is held back by `Cut::LateInsteadOfCommit`.
    holding_commit: bool,
}

struct Proxy {
    port: u16,
    state: Arc<Mutex<ProxyState>>,
    /// Releases a held batch statement.
    release: Arc<tokio::sync::Notify>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ProxyState {
            cut: Some(Cut::Never),
            ..ProxyState::default()
        }));
        let shared = state.clone();
        let release = Arc::new(tokio::sync::Notify::new());
        let released = release.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if shared.lock().unwrap().blackout {
                    continue;
                }
                let pipe = tokio::spawn(pipe(
                    client,
                    upstream.clone(),
                    shared.clone(),
                    released.clone(),
                ));
                shared.lock().unwrap().pipes.push(pipe);
            }
        });
        state.lock().unwrap().accepting = Some(task.abort_handle());
        Proxy {
            port,
            state,
            release,
            task,
        }
    }

    /// Whether the COMMIT the proxy was told to cut came, and was cut.
    fn cut_done(&self) -> bool {
        self.state.lock().unwrap().cut == Some(Cut::Never)
    }

    /// Waits (ten seconds at most) until `done` holds of the proxy's state.
    async fn wait_for(&self, what: &str, done: impl Fn(&ProxyState) -> bool) {
        let started = std::time::Instant::now();
        while !done(&self.state.lock().unwrap()) {
            assert!(started.elapsed() < Duration::from_secs(10), "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn release_hold(&self) {
        self.release.notify_one();
    }

    fn cut_next_commit(&self, cut: Cut) {
        self.state.lock().unwrap().cut = Some(cut);
    }

    fn hold_then_refuse_then_blackout(&self) {
        self.state.lock().unwrap().refuse_plan = HOLD_THEN_REFUSE_THEN_BLACKOUT;
    }

    fn blackout(&self, on: bool) {
        let mut state = self.state.lock().unwrap();
        state.blackout = on;
        if on {
            for pipe in state.pipes.drain(..) {
                pipe.abort();
            }
        }
    }
}

impl Proxy {
    /// Closes the database's port for good: connecting is refused from now on.
    fn close_port(&self) {
        if let Some(accepting) = self.state.lock().unwrap().accepting.take() {
            accepting.abort();
        }
        self.blackout(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.blackout(true);
    }
}

/// Copies both ways; the client-to-server direction watches for a COMMIT command
/// (`COM_QUERY` = 0x03 followed by the text).
async fn pipe(
    client: TcpStream,
    upstream: String,
    state: Arc<Mutex<ProxyState>>,
    release: Arc<tokio::sync::Notify>,
) {
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Muted, the server's side says nothing more to the client (not even that it
    // closed) until the pipe is cut.
    let muted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let back = tokio::spawn({
        let muted = muted.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = server_read.read(&mut buf).await {
                if muted.load(std::sync::atomic::Ordering::SeqCst)
                    || client_write.write_all(&buf[..n]).await.is_err()
                {
                    break;
                }
            }
            if muted.load(std::sync::atomic::Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match client_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        if chunk.windows(18).any(|w| w == b"INSERT INTO orders") {
            let step = {
                let mut state = state.lock().unwrap();
                let step = state.refuse_plan;
                state.refuse_plan = step.saturating_sub(1);
                step
            };
            if step == 2 {
                state.lock().unwrap().holding = true;
                release.notified().await;
                state.lock().unwrap().holding = false;
            } else if step == 1 && chunk.len() > 5 {
                // Same packet length, other text: the server answers with an error.
                let text = b"SELECT * FROM kitara_no_such_table";
                let sql = &mut chunk[5..];
                sql.fill(b' ');
                let end = text.len().min(sql.len());
                sql[..end].copy_from_slice(&text[..end]);
                // The refusal still reaches Kitara; whatever any connection sends
                // after it is not passed on, and the port closes.
                if server_write.write_all(chunk).await.is_err() {
                    break;
                }
                let mut state = state.lock().unwrap();
                state.blackout = true;
                if let Some(accepting) = state.accepting.take() {
                    accepting.abort();
                }
                continue;
            }
        }
        if state.lock().unwrap().blackout {
            break;
        }
        let chunk = &buf[..n];
        let is_commit = chunk.windows(7).any(|w| w == b"\x03COMMIT");
        let cut = if is_commit {
            let mut state = state.lock().unwrap();
            let cut = state.cut.unwrap_or(Cut::Never);
            state.cut = Some(Cut::Never);
            cut
        } else {
            Cut::Never
        };
        match cut {
            Cut::Never => {
                if server_write.write_all(chunk).await.is_err() {
                    break;
                }
            }
            Cut::AfterCommit => {
                let _ = server_write.write_all(chunk).await;
                // The client loses the reply; give the server time to finish the commit
                // before its side closes too.
                back.abort();
                drop(client_read);
                tokio::time::sleep(Duration::from_millis(300)).await;
                return;
            }
            Cut::InsteadOfCommit => {
                back.abort();
                return;
            }
            Cut::LateInsteadOfCommit => {
                // The server ends a write transaction left idle for a second (Kitara
                // sets `idle_write_transaction_timeout`); the client must not hear of
                // it before the cut.
                muted.store(true, std::sync::atomic::Ordering::SeqCst);
                state.lock().unwrap().holding_commit = true;
                tokio::time::sleep(LATE_BY).await;
                back.abort();
                state.lock().unwrap().holding_commit = false;
                return;
            }
            Cut::LateCommit => {
                state.lock().unwrap().holding_commit = true;
                tokio::time::sleep(LANDS_AFTER).await;
                let passed = server_write.write_all(chunk).await.is_ok();
                state.lock().unwrap().holding_commit = false;
                if !passed {
                    break;
                }
            }
            Cut::HoldCommit => {
                back.abort();
                state.lock().unwrap().held_sessions += 1;
                let state = state.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(HELD_FOR).await;
                    drop(server_write);
                    state.lock().unwrap().held_sessions -= 1;
                });
                return;
            }
            Cut::AfterCommitThenBlackout => {
                back.abort();
                // No new connection gets through from now on, so the outcome cannot be
                // looked up; the COMMIT still reaches the server.
                state.lock().unwrap().blackout = true;
                let _ = server_write.write_all(chunk).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                for pipe in state.lock().unwrap().pipes.drain(..) {
                    pipe.abort();
                }
                return;
            }
            Cut::InsteadOfCommitThenBlackout => {
                back.abort();
                let mut state = state.lock().unwrap();
                state.blackout = true;
                for pipe in state.pipes.drain(..) {
                    pipe.abort();
                }
                return;
            }
        }
    }
    back.abort();
}

mod mysql {
    use super::*;

    crate::on_mysql! {
        a_commit_whose_reply_is_lost_is_found_by_its_token_mysql =>
            order_stored_once_despite(Cut::AfterCommit).await;
        a_commit_that_never_arrived_is_retried_once_mysql =>
            order_stored_once_despite(Cut::InsteadOfCommit).await;
        ends_and_restocks_whose_commit_was_cut_are_settled_by_the_token_mysql =>
            for cut in [Cut::AfterCommit, Cut::InsteadOfCommit] {
                for change in ["confirm", "cancel", "restock"] {
                    change_settled_despite(cut, change).await;
                }
            };
        a_keyed_restock_retried_after_a_cut_commit_applies_once_mysql =>
            for cut in [Cut::AfterCommit, Cut::InsteadOfCommit] {
                keyed_restock_once_despite(cut).await;
            };
        an_unreachable_database_answers_outcome_unknown_then_recovers_mysql =>
            outcome_unknown().await;
        a_lookup_that_waits_on_a_lock_ends_at_the_deadline_mysql =>
            lookup_bounded_by_deadline().await;
        orders_that_failed_while_unreachable_hold_no_stock_mysql =>
            failed_orders_hold_no_stock().await;
        a_refused_batch_does_not_wait_for_an_unreachable_database_order_by_order_mysql =>
            refused_batch_then_unreachable().await;
        a_commit_that_lands_after_its_outcome_deadline_is_in_the_reload_mysql =>
            a_commit_that_lands_late().await;
        a_confirm_waiting_behind_a_failed_one_is_decided_again_mysql =>
            waiter_decided_again().await;
        a_keyed_retry_after_a_lost_commit_books_once_mysql =>
            for cut in [
                Cut::AfterCommit,
                Cut::InsteadOfCommit,
                Cut::InsteadOfCommitThenBlackout,
                Cut::AfterCommitThenBlackout,
            ] {
                keyed_retry_books_once(cut).await;
            };
        readiness_follows_the_database_and_liveness_does_not_mysql =>
            readiness_follows_the_database().await;
        a_flood_of_503s_while_the_database_is_down_logs_a_bounded_number_of_lines_mysql =>
            quiet_logs_under_a_flood().await;
        a_store_that_cannot_reload_does_not_hold_up_shutdown_mysql =>
            shutdown_while_unreachable().await;
    }
}

/// Sends `body` until it is answered 200 (within five seconds) and returns that answer:
/// once the database is back, the store reloads and serves again.
async fn served_again(app: &TestApp, body: &serde_json::Value) -> serde_json::Value {
    for _ in 0..50 {
        let (status, answer) = app.lock(body).await;
        if status == StatusCode::OK {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Kitara does not serve again once the database is back");
}

/// The end of a fault test: memory lists what the database holds, the invariants hold,
/// and everything stops.
async fn ends_agreeing(db: TestDb, proxy: Proxy, app: TestApp, initial: &BTreeMap<i64, i64>) {
    db.assert_settled(initial, &app).await;
    events_agree(&db).await;
    app.stop().await;
    drop(proxy);
    db.drop_database().await;
}

/// The events and the changes agree, whatever the cut COMMITs came to: each store's
/// events number exactly its changes that exist (an order placed, an order ended, a
/// stock adjustment), so an event exists if and only if its change does (the numbers
/// have no gap: `events`).
async fn events_agree(db: &TestDb) {
    for store in [1, 2] {
        let changes = db
            .query_i64s(&format!(
                "SELECT (SELECT COUNT(*) FROM orders WHERE store_id = {store}) \
                 + (SELECT COUNT(*) FROM orders WHERE store_id = {store} AND status <> 'locked') \
                 + (SELECT COUNT(*) FROM stock_movements m JOIN products p ON p.id = m.product_id \
                    WHERE p.store_id = {store} AND m.reason NOT IN ('created', 'adopted'))"
            ))
            .await[0][0];
        let events = db
            .query_i64s(&format!(
                "SELECT COALESCE(MAX(last_seq), 0) FROM kitara_events WHERE store_id = {store}"
            ))
            .await[0][0];
        assert_eq!(events, changes, "store {store}: events against changes");
    }
}

async fn through_proxy(deadline_ms: u64) -> (TestDb, Proxy, TestApp) {
    through_proxy_after(deadline_ms, 300, "SELECT 1").await
}

/// Like `through_proxy`, with the pool's acquire timeout (which bounds every answer that
/// waits for the database) and `setup` run on the database before Kitara starts.
async fn through_proxy_after(
    deadline_ms: u64,
    acquire_ms: u64,
    setup: &str,
) -> (TestDb, Proxy, TestApp) {
    let db = TestDb::with_demo_data(Backend::Mysql).await;
    db.exec(setup).await;
    let (server, name) = db.url.rsplit_once('/').unwrap();
    let upstream = server.rsplit('@').next().unwrap().to_owned();
    let proxy = Proxy::start(upstream).await;
    let credentials = server.rsplit_once('@').unwrap().0;
    let url = format!("{credentials}@127.0.0.1:{}/{name}", proxy.port);
    let app = spawn_app_with(&db, |s| {
        s.database.database_url = url;
        s.outcome_deadline = Duration::from_millis(deadline_ms);
        s.database.acquire_timeout = Duration::from_millis(acquire_ms);
        s.admin_token = Some(crate::helpers::ADMIN_TOKEN.into());
        // A connection left open to the unreachable database must not hold up the
        // test's shutdown for long.
        s.shutdown_timeout = Duration::from_secs(2);
    })
    .await;
    (db, proxy, app)
}

/// Whether the COMMIT reached the server or not, the order is stored exactly once:
/// found by its token, or written again after the store reloaded.
async fn order_stored_once_despite(cut: Cut) {
    let (db, proxy, app) = through_proxy(5_000).await;
    let initial = db.stocks().await;
    proxy.cut_next_commit(cut);

    let (status, body) = app.lock(&order(2, &[(1, 2)])).await;

    assert!(
        proxy.cut_done(),
        "{cut:?}: the proxy never saw the COMMIT to cut"
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    db.assert_order_stored(&body, 2).await;
    assert_eq!(db.count("orders").await, 1);
    assert_eq!(db.stocks().await[&1], 8);
    ends_agreeing(db, proxy, app, &initial).await;
}

/// A confirm, a cancel or a restock whose COMMIT was cut: after passing it on (it
/// committed; the token says so, and the answer is 200) or instead of passing it on (it
/// did not; an end is judged once more and commits, a restock answers 503). Either way
/// the change is stored exactly once or not at all, as answered, and the ledger adds up.
async fn change_settled_despite(cut: Cut, change: &str) {
    let (db, proxy, app) = through_proxy(5_000).await;
    let (status, placed) = app.lock(&order(2, &[(1, 2)])).await;
    assert_eq!(status, StatusCode::OK, "{placed}");
    let id = placed["data"]["order_id"].as_i64().unwrap();
    let before = db.stocks().await;

    proxy.cut_next_commit(cut);
    let (status, answer) = match change {
        "restock" => {
            let body = serde_json::json!({"delta": 5, "reason": "cut at COMMIT"});
            let path = "/api/v1/admin/products/1/stock";
            app.admin(hyper::Method::POST, path, Some(&body)).await
        }
        action => app.end(id, action, 2).await,
    };
    assert!(proxy.cut_done(), "{cut:?} {change}: no COMMIT was cut");

    let restocks = db
        .query_i64s("SELECT COUNT(*) FROM stock_movements WHERE reason = 'cut at COMMIT'")
        .await[0][0];
    let stock = db.stocks().await[&1];
    match (change, status) {
        ("confirm", StatusCode::OK) => {
            assert_eq!(db.status(id).await, "confirmed");
            assert_eq!(stock, before[&1]);
        }
        ("cancel", StatusCode::OK) => {
            assert_eq!(db.status(id).await, "cancelled");
            assert_eq!(stock, before[&1] + 2);
        }
        ("restock", StatusCode::OK) => {
            assert_eq!((restocks, stock), (1, before[&1] + 5));
        }
        // The COMMIT never reached the server: nothing of the restock was stored.
        ("restock", StatusCode::SERVICE_UNAVAILABLE) if cut == Cut::InsteadOfCommit => {
            assert_eq!(answer["message"], "database unavailable");
            assert_eq!((restocks, stock), (0, before[&1]));
        }
        _ => panic!("{cut:?} {change}: answered {status}: {answer}"),
    }
    let unbalanced = db.unbalanced().await;
    assert!(unbalanced.is_empty(), "{cut:?} {change}: {unbalanced:?}");
    assert_eq!(app.listed_stocks().await, db.stocks().await);
    events_agree(&db).await;
    app.stop().await;
    drop(proxy);
    db.drop_database().await;
}

/// A restock with an `Idempotency-Key` whose COMMIT was cut, then retried with the
/// key, as a client does after a timeout or a 503: whether the first committed (its
/// token says so: 200, and the retry is a replay) or not (503, and the retry applies
/// it), the restock is applied exactly once.
async fn keyed_restock_once_despite(cut: Cut) {
    let (db, proxy, app) = through_proxy(5_000).await;
    let before = db.stocks().await[&1];
    let (path, body) = (
        "/api/v1/admin/products/1/stock",
        r#"{"delta": 5, "reason": "retried truck"}"#,
    );
    proxy.cut_next_commit(cut);
    let (first, _, answer) = app
        .admin_keyed(hyper::Method::POST, path, "truck-7", Some(body))
        .await;
    assert!(proxy.cut_done(), "{cut:?}: no COMMIT was cut");
    assert!(
        first == StatusCode::OK || first == StatusCode::SERVICE_UNAVAILABLE,
        "{cut:?}: {first} {answer}"
    );
    let (again, headers, retried) = app
        .admin_keyed(hyper::Method::POST, path, "truck-7", Some(body))
        .await;
    assert_eq!(again, StatusCode::OK, "{cut:?}: {retried}");
    assert_eq!(
        headers.contains_key("idempotent-replayed"),
        first == StatusCode::OK,
        "{cut:?}: a retry replays what committed, and applies what did not"
    );
    let restocks = db
        .query_i64s("SELECT COUNT(*) FROM stock_movements WHERE reason = 'retried truck'")
        .await[0][0];
    assert_eq!(
        (restocks, db.stocks().await[&1]),
        (1, before + 5),
        "{cut:?}"
    );
    assert!(db.unbalanced().await.is_empty());
    events_agree(&db).await;
    app.stop().await;
    drop(proxy);
    db.drop_database().await;
}

/// A second confirm of an order arrives while the first one's COMMIT is in flight, so it
/// waits in the store's actor. The first then fails past its deadline (its COMMIT never
/// reached the server): it is answered 503, and the second, which still has time, is
/// decided again, commits and is answered 200, not left waiting for an end that will
/// never come.
async fn waiter_decided_again() {
    let (db, proxy, app) = through_proxy_after(5_000, 2_000, "SELECT 1").await;
    let (status, placed) = app.lock(&order(2, &[(1, 2)])).await;
    assert_eq!(status, StatusCode::OK, "{placed}");
    let id = placed["data"]["order_id"].as_i64().unwrap();
    let app = Arc::new(app);

    proxy.cut_next_commit(Cut::LateInsteadOfCommit);
    let first = tokio::spawn({
        let app = app.clone();
        async move { app.end(id, "confirm", 2).await }
    });
    proxy
        .wait_for("the first confirm's COMMIT never came", |s| {
            s.holding_commit
        })
        .await;
    // Its deadline (2 s after it arrived) passes while its COMMIT is held (2.5 s); the
    // second's (2 s after it arrives, 1 s later) does not.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = tokio::time::timeout(Duration::from_secs(6), app.end(id, "confirm", 2))
        .await
        .expect("the second confirm was never answered: it waited for an end that failed");
    let (status, body) = first.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(second.0, StatusCode::OK, "{}", second.1);
    assert_eq!(db.status(id).await, "confirmed");
    let Ok(app) = Arc::try_unwrap(app) else {
        panic!("the confirms still hold the app")
    };
    let unbalanced = db.unbalanced().await;
    assert!(unbalanced.is_empty(), "{unbalanced:?}");
    app.stop().await;
    drop(proxy);
    db.drop_database().await;
}

async fn outcome_unknown() {
    let (db, proxy, app) = through_proxy(500).await;
    let initial = db.stocks().await;
    let before = db.snapshot().await;
    proxy.cut_next_commit(Cut::InsteadOfCommitThenBlackout);

    let (status, body) = app.lock(&order(2, &[(1, 2)])).await;
    assert!(proxy.cut_done(), "the proxy never saw the COMMIT to cut");

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["message"], "order outcome unknown");
    // The COMMIT never reached the server, so nothing was stored.
    assert_eq!(db.snapshot().await, before);
    // Memory cannot know that: until a reload tells, it keeps the order's units (it may
    // have committed), so they are not offered to anyone else.
    assert_eq!(app.listed_stocks().await[&1], initial[&1] - 2);

    // While the database is unreachable, orders are refused with 503.
    let (status, _) = app.lock(&order(2, &[(1, 1)])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // Once it is back, the store reloads and serves again from the truth.
    proxy.blackout(false);
    let body = served_again(&app, &order(2, &[(1, 1)])).await;
    db.assert_order_stored(&body, 2).await;
    assert_eq!(db.stocks().await[&1], 9);
    ends_agreeing(db, proxy, app, &initial).await;
}

/// A COMMIT that reaches the server only after the writer gave up on its outcome: the
/// order is answered "order outcome unknown" and the store reloads, while the
/// transaction is still open on the server. The reload must wait for it (it holds the
/// store's ownership row, through the fence), or memory misses the order the database
/// then holds: more units listed than stored, and an event number used twice.
async fn a_commit_that_lands_late() {
    // Answers within 300 ms, and the outcome looked for 100 ms more: both pass while
    // the COMMIT is held back.
    let (db, proxy, app) = through_proxy_after(100, 300, "SELECT 1").await;
    let initial = db.stocks().await;
    proxy.cut_next_commit(Cut::LateCommit);

    let answer = app.lock(&order(2, &[(1, 2)])).await;
    answered_unknown_then_passed_on(&proxy, &answer).await;
    let started = std::time::Instant::now();
    while db.count("orders").await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the COMMIT passed on late never committed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(db.stocks().await[&1], 8);

    // The store serves again, from memory that counts the order: the database refuses
    // nothing of what memory allows (a reload that missed the order would number the
    // next event as the order's, and the next write would be refused).
    served_again(&app, &order(3, &[(2, 1)])).await;
    let (_, metrics) = app.text("/metrics").await;
    let refused = r#"kitara_database_errors_total{kind="refused"} 0"#;
    assert!(metrics.contains(refused), "/metrics lacks {refused}");

    // A confirm whose COMMIT lands late is answered by its own outcome, unknown, even
    // though the reload then finds it confirmed: it is not decided again (a lock decided
    // again would be booked twice; an end is answered the same way).
    let held = db
        .query_i64s("SELECT id FROM orders WHERE buyer_id = 2")
        .await[0][0];
    proxy.cut_next_commit(Cut::LateCommit);
    let answer = app.end(held, "confirm", 2).await;
    answered_unknown_then_passed_on(&proxy, &answer).await;
    let started = std::time::Instant::now();
    while db.status(held).await != "confirmed" {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the confirm passed on late never committed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its retry learns the outcome.
    let (status, body) = app.end(held, "confirm", 2).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    ends_agreeing(db, proxy, app, &initial).await;
}

/// The answer to a request whose COMMIT `Cut::LateCommit` held back: "order outcome
/// unknown". Returns once the proxy passed the COMMIT on.
async fn answered_unknown_then_passed_on(proxy: &Proxy, answer: &(StatusCode, serde_json::Value)) {
    assert!(proxy.cut_done(), "the proxy never saw the COMMIT to hold");
    assert_unavailable(answer, "order outcome unknown");
    proxy
        .wait_for("the held COMMIT passed on", |s| !s.holding_commit)
        .await;
}

/// An order that failed because the database was unreachable committed nothing, so it
/// must not keep its units reserved while the store waits for the database: they stay
/// listed, and a larger order is answered 503 (database unavailable), not "not
/// available". A lock or a confirm that failed so is tried once more if its request
/// still has time, and then answered: not tried on and on until its deadline.
async fn failed_orders_hold_no_stock() {
    let (db, proxy, app) = through_proxy(500).await;
    let initial = db.stocks().await;
    let (status, held) = app.lock(&order(2, &[(2, 1)])).await;
    assert_eq!(status, StatusCode::OK, "{held}");
    let held = held["data"]["order_id"].as_i64().expect("order_id");
    let before = db.snapshot().await;
    let listed = app.listed_stocks().await;
    assert_eq!(listed[&1], 10);
    let unavailable = || async {
        let (_, metrics) = app.text("/metrics").await;
        series(
            &metrics,
            r#"kitara_database_errors_total{kind="unavailable"}"#,
        )
    };
    let tried_before = unavailable().await;
    proxy.blackout(true);

    // Tried, and once more while there is time: never on and on until the deadline.
    let (status, body) = app.lock(&order(2, &[(1, 2)])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["message"], "database unavailable");
    let tried = unavailable().await - tried_before;
    assert!((1.0..=2.0).contains(&tried), "tried {tried} times");
    let tried_before = unavailable().await;
    let (status, body) = app.end(held, "confirm", 2).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["message"], "database unavailable");
    let tried = unavailable().await - tried_before;
    assert!((1.0..=2.0).contains(&tried), "tried {tried} times");

    assert_eq!(
        app.listed_stocks().await,
        listed,
        "no units held by a failed order"
    );
    let (status, body) = app.lock(&order(2, &[(1, 9)])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    proxy.blackout(false);
    let body = served_again(&app, &order(2, &[(1, 9)])).await;
    db.assert_order_stored(&body, 2).await;
    assert_eq!(db.stocks().await[&1], 1);
    assert_ne!(db.snapshot().await, before);
    db.assert_invariants(&initial).await;
    app.stop().await;
    drop(proxy);
    db.drop_database().await;
}

/// A client that lost its answer (or got 503) retries with its key, over and over until
/// the database is back: whatever happened to the first COMMIT, one order is stored, and
/// every 200 carries it.
async fn keyed_retry_books_once(cut: Cut) {
    let (db, proxy, app) = through_proxy(500).await;
    let initial = db.stocks().await;
    proxy.cut_next_commit(cut);
    let body = order(2, &[(1, 2)]);
    let key = Some("pay-once");

    let (status, _, first) = app.post("/api/v1/order/lock", &body, key).await;
    assert!(
        proxy.cut_done(),
        "{cut:?}: the proxy never saw the COMMIT to cut"
    );
    match cut {
        Cut::AfterCommit | Cut::InsteadOfCommit => {
            assert_eq!(status, StatusCode::OK, "{cut:?}: {first}")
        }
        _ => {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{cut:?}: {first}");
            assert_eq!(first["message"], "order outcome unknown");
        }
    }
    proxy.blackout(false);
    let mut answers = Vec::new();
    for _ in 0..50 {
        let (status, headers, answer) = app.post("/api/v1/order/lock", &body, key).await;
        if status == StatusCode::OK {
            answers.push((headers.get("idempotent-replayed").is_some(), answer));
            if answers.len() == 3 {
                break;
            }
        } else {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{cut:?}: {answer}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    assert_eq!(answers.len(), 3, "{cut:?}: served again with the key");
    assert_eq!(db.count("orders").await, 1, "{cut:?}");
    assert_eq!(db.stocks().await[&1], 8, "{cut:?}");
    let committed_first = matches!(cut, Cut::AfterCommit | Cut::AfterCommitThenBlackout);
    for (replayed, answer) in &answers[1..] {
        assert!(replayed, "{cut:?}");
        assert_eq!(answer["data"], answers[0].1["data"], "{cut:?}");
    }
    // What committed first is what every retry gets back.
    assert_eq!(
        answers[0].0,
        committed_first || status == StatusCode::OK,
        "{cut:?}"
    );
    if status == StatusCode::OK {
        assert_eq!(answers[0].1["data"], first["data"], "{cut:?}");
    }
    db.assert_order_stored(&answers[0].1, 2).await;
    ends_agreeing(db, proxy, app, &initial).await;
}

/// A store whose stock is unknown (its reload failed) keeps retrying the reload while it
/// serves; shutting down must not wait for the database to come back.
async fn shutdown_while_unreachable() {
    let (db, proxy, app) = through_proxy(500).await;
    proxy.cut_next_commit(Cut::InsteadOfCommitThenBlackout);
    let (status, body) = app.lock(&order(2, &[(1, 2)])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    tokio::time::timeout(Duration::from_secs(5), app.stop())
        .await
        .expect("Kitara stops although the database is still unreachable");
    drop(proxy);
    db.drop_database().await;
}

/// A batch the database refuses is written again order by order, so that only the
/// refused orders fail. If the database is unreachable by then, every further order
/// would wait out the pool's timeout in turn: the first such failure must end the
/// attempt for the rest of the batch.
async fn refused_batch_then_unreachable() {
    const ORDERS: usize = 20;
    let (db, proxy, app) = through_proxy_after(
        500,
        1_000,
        "UPDATE products SET current_stock = 100 WHERE id IN (1, 2)",
    )
    .await;
    let initial = db.stocks().await;
    proxy.hold_then_refuse_then_blackout();
    let app = Arc::new(app);

    let started = std::time::Instant::now();
    let first = {
        let app = app.clone();
        tokio::spawn(async move { app.lock(&order(2, &[(1, 1)])).await })
    };
    proxy
        .wait_for("the first batch reaches the proxy", |s| s.holding)
        .await;
    let rest: Vec<_> = (0..ORDERS - 1)
        .map(|i| {
            let app = app.clone();
            let product = 1 + (i % 2) as i64;
            tokio::spawn(async move { app.lock(&order(2, &[(product, 1)])).await })
        })
        .collect();
    // Every other order is decided (its units are off the listing) while the first batch
    // is held: they go to the writer together, after it.
    let decided = [
        (1, initial[&1] - 11),
        (2, initial[&2] - 9),
        (3, initial[&3]),
    ]
    .into();
    let waited = std::time::Instant::now();
    while app.listed_stocks().await != decided {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "not all decided"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.release_hold();
    let (status, body) = first.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    for answer in rest {
        let (status, body) = answer.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }
    // With the pool's timeout at 1 s, waiting for it order by order takes over 19 s;
    // one wait for all of them takes about 1 s. The bound leaves a wide margin.
    let took = started.elapsed();
    assert!(took < Duration::from_millis(3_500), "took {took:?}");

    // Only the first order was stored, and the others hold no units.
    assert_eq!(db.count("orders").await, 1);
    let stored = db.stocks().await;
    assert_eq!(
        stored,
        [(1, initial[&1] - 1), (2, initial[&2]), (3, initial[&3])].into()
    );
    let Ok(app) = Arc::try_unwrap(app) else {
        panic!("requests still hold the app");
    };
    ends_agreeing(db, proxy, app, &initial).await;
}

/// The connection dies with the COMMIT unsent while the server's session lives on in its
/// transaction: looking the token up waits for that transaction's lock. The answer must
/// still come by the outcome deadline (503 `order outcome unknown`), and once the
/// session is gone the store serves again from what the database holds.
async fn lookup_bounded_by_deadline() {
    let (db, proxy, app) = through_proxy(500).await;
    let initial = db.stocks().await;
    let before = db.snapshot().await;
    proxy.cut_next_commit(Cut::HoldCommit);

    let started = std::time::Instant::now();
    let (status, body) = app.lock(&order(2, &[(1, 2)])).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["message"], "order outcome unknown");
    // Bounded by the acquire timeout plus the outcome deadline (0.8 s), far below the
    // 3 s the session is held: a wide margin for a loaded machine.
    assert!(
        took < HELD_FOR - Duration::from_millis(500),
        "took {took:?}"
    );

    // The held session rolls back when its connection closes.
    proxy
        .wait_for("the held session closes", |s| s.held_sessions == 0)
        .await;
    assert_eq!(db.snapshot().await, before);
    let body = served_again(&app, &order(2, &[(1, 1)])).await;
    db.assert_order_stored(&body, 2).await;
    assert_eq!(db.stocks().await[&1], 9);
    ends_agreeing(db, proxy, app, &initial).await;
}

/// `GET /readyz` until it answers `want` (within ten seconds); its last answer.
async fn readyz_turns(app: &TestApp, want: StatusCode) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        let (status, headers, body) = app
            .request(hyper::Method::GET, "/readyz", None, bytes::Bytes::new())
            .await;
        if status == want {
            if status == StatusCode::SERVICE_UNAVAILABLE {
                assert!(headers.contains_key("retry-after"));
            }
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/readyz never answered {want}; last: {last}");
}

async fn readiness_follows_the_database() {
    let (db, proxy, app) = through_proxy(2_000).await;
    let ready = readyz_turns(&app, StatusCode::OK).await;
    assert_eq!(ready["data"], "ready");

    // Connections cut and refused: not ready within a few seconds; alive all along.
    proxy.blackout(true);
    let down = readyz_turns(&app, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(
        down["message"].as_str().unwrap().contains("database"),
        "{down}"
    );
    let (status, _, _) = app
        .request(hyper::Method::GET, "/healthz", None, bytes::Bytes::new())
        .await;
    assert_eq!(status, StatusCode::OK);
    proxy.blackout(false);
    readyz_turns(&app, StatusCode::OK).await;

    // The port closed for good.
    proxy.close_port();
    readyz_turns(&app, StatusCode::SERVICE_UNAVAILABLE).await;
    let (status, _, _) = app
        .request(hyper::Method::GET, "/healthz", None, bytes::Bytes::new())
        .await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
    db.drop_database().await;
}

/// The real binary, its database's port closed, under four seconds of orders from 64
/// clients: thousands of 503s, a handful of log lines. (Each try of the database blocks
/// the writer up to the pool's acquire timeout, so how many 503s a second varies with the
/// machine's load: four seconds give a flood on a busy CI machine too.)
async fn quiet_logs_under_a_flood() {
    let db = TestDb::with_demo_data(Backend::Mysql).await;
    let (server, name) = db.url.rsplit_once('/').unwrap();
    let proxy = Proxy::start(server.rsplit('@').next().unwrap().to_owned()).await;
    let credentials = server.rsplit_once('@').unwrap().0;
    let url = format!("{credentials}@127.0.0.1:{}/{name}", proxy.port);
    let (mut child, api, mut logs) =
        crate::helpers::start_kitara(&url, &[("KITARA_DB_ACQUIRE_TIMEOUT_MS", "300")]).await;
    let api = Arc::new(api);
    let (status, _) = api.lock(&order(2, &[(1, 1)])).await;
    assert_eq!(status, StatusCode::OK);
    while logs.try_recv().is_ok() {}

    proxy.close_port();
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    let clients = (0..64).map(|_| {
        let api = api.clone();
        tokio::spawn(async move {
            let (mut unavailable, mut others) = (0u64, Vec::new());
            while tokio::time::Instant::now() < until {
                match api.try_lock(&order(2, &[(1, 1)])).await {
                    Some((StatusCode::SERVICE_UNAVAILABLE, _)) => unavailable += 1,
                    // Memory may refuse while units are held by orders in flight.
                    Some((StatusCode::BAD_REQUEST, body))
                        if body["message"] == "all product not available" => {}
                    other => others.push(format!("{other:?}")),
                }
            }
            (unavailable, others)
        })
    });
    let mut unavailable = 0;
    for client in clients.collect::<Vec<_>>() {
        let (count, others) = client.await.unwrap();
        assert!(others.is_empty(), "answers other than 503: {others:?}");
        unavailable += count;
    }
    // The summariser writes a line per kind each second while a burst lasts; once two
    // seconds pass without a line, the last summary is in.
    let mut lines = Vec::new();
    let quiet_since = std::time::Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(2), logs.recv()).await {
            Ok(Some(line)) => lines.push(line),
            Ok(None) | Err(_) => break,
        }
        assert!(
            quiet_since.elapsed() < Duration::from_secs(20),
            "the log never went quiet"
        );
    }
    child.kill().await.ok();
    let warnings: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(
        unavailable >= 1_000,
        "only {unavailable} answers 503: no flood"
    );
    // A full line and about one summary a second for each kind (503s, failed reloads,
    // failed BEGINs).
    assert!(
        warnings.len() <= 40,
        "{} lines for {unavailable} answers 503:\n{}",
        warnings.len(),
        lines.join("\n")
    );
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("answered 503 (database unavailable)")
                && l.contains("times in the last 1 s")),
        "no summary line:\n{}",
        lines.join("\n")
    );
    println!(
        "{unavailable} answers 503 in 3 s, {} warning lines:\n{}",
        warnings.len(),
        lines.join("\n")
    );
    db.drop_database().await;
}
