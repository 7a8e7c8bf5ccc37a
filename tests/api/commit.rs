//! MariaDB only, on a private server (its status counters are the test's alone): what
//! one write transaction costs in round trips.

use hyper::StatusCode;

use crate::helpers::{TestDb, order, start_kitara};
use crate::mariadb::PrivateMariadb;

/// Orders placed one after the other: each waits for the last to commit, so each is a
/// transaction of its own.
const ORDERS: i64 = 40;

async fn private_server() -> Option<(PrivateMariadb, TestDb)> {
    let (server, db) = PrivateMariadb::with_demo_data().await?;
    // Stock for every order of the tests (the demo has 10 and 5).
    db.exec("UPDATE products SET current_stock = current_stock + 1000 WHERE id IN (1, 2)")
        .await;
    db.exec("INSERT INTO stock_movements (product_id, delta, reason) VALUES (1, 1000, 'test'), (2, 1000, 'test')")
        .await;
    Some((server, db))
}

/// One of the server's status counters (`Com_begin`, ...).
async fn counter(db: &TestDb, name: &str) -> i64 {
    let sql = format!(
        "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = '{name}'"
    );
    db.query_strings(&sql).await[0]
        .parse()
        .expect("a counter is a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_transaction_costs_its_plan_and_its_commit_mysql() {
    let Some((_server, db)) = private_server().await else {
        return;
    };
    let initial = db.stocks().await;
    let (mut kitara, api, _logs) = start_kitara(&db.url, &[]).await;
    // The first order begins the writer's first transaction.
    let (status, _) = api.lock(&order(1, &[(1, 1)])).await;
    assert_eq!(status, StatusCode::OK);

    let (begun, committed, executed) = (
        counter(&db, "COM_BEGIN").await,
        counter(&db, "COM_COMMIT").await,
        counter(&db, "COM_STMT_EXECUTE").await,
    );
    for i in 0..ORDERS {
        let (status, body) = api.lock(&order(1 + i % 3, &[(1 + i % 2, 1)])).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let begun = counter(&db, "COM_BEGIN").await - begun;
    let committed = counter(&db, "COM_COMMIT").await - committed;
    let executed = counter(&db, "COM_STMT_EXECUTE").await - executed;

    assert!(
        committed >= ORDERS,
        "{committed} commits for {ORDERS} orders"
    );
    // Each COMMIT AND CHAIN opened the next transaction: no BEGIN per transaction (the
    // few counted are the background's: heartbeats, leases).
    assert!(
        begun < ORDERS / 4,
        "{begun} BEGINs for {committed} commits: a transaction began on its own"
    );
    // The writer's connection stayed with it: no release check (a prepared `SELECT ?`)
    // per transaction. The background's reads are prepared statements too, a few.
    assert!(
        executed < ORDERS / 2,
        "{executed} prepared statements run for {committed} commits: the writer's \
         connection went back to the pool (and its check) per transaction"
    );
    db.assert_invariants(&initial).await;
    kitara.start_kill().ok();
    kitara.wait().await.ok();
    db.drop_database().await;
}
