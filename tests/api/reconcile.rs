//! Stock changed behind Kitara's back, and database connections killed mid-burst: no
//! 500, no oversell, every 200 stored, and memory equal to the database afterwards.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::StatusCode;

use crate::helpers::{
    Backend, TestApp, TestDb, assert_unavailable, customers, order, series, spawn_app,
    spawn_app_with,
};

crate::on_both_backends!(
    stock_lowered_behind_kitaras_back_is_reconciled,
    stock_taken_behind_kitaras_back_mid_burst_never_oversells,
    id_blocks_are_reserved_while_another_writer_commits,
    an_order_ended_behind_kitaras_back_is_judged_again,
    a_write_the_database_always_refuses_is_tried_twice,
    a_refusal_the_store_cannot_reload_after_is_taken_back,
    a_reload_that_fails_at_first_is_tried_again,
);

async fn stock_lowered_behind_kitaras_back_is_reconciled(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_app(&db).await;
    db.exec("UPDATE products SET current_stock = 1 WHERE id = 1")
        .await;

    // Memory still believes 10: the guard trips, the store reloads, and the order is
    // judged again against the truth.
    let (status, body) = app.lock(&order(2, &[(1, 3)])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["message"], "all product not available");
    assert_eq!(db.count("orders").await, 0);
    assert_eq!(app.listed_stocks().await, db.stocks().await);

    db.exec("UPDATE products SET current_stock = 0 WHERE id = 2")
        .await;
    let (status, body) = app.lock(&order(2, &[(1, 1), (2, 1)])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["message"], "some product not available");

    let (status, body) = app.lock(&order(2, &[(1, 1)])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    db.assert_order_stored(&body, 2).await;
    let stocks = db.stocks().await;
    assert_eq!((stocks[&1], stocks[&2]), (0, 0));
    assert_eq!(app.listed_stocks().await, stocks);

    app.stop().await;
    db.drop_database().await;
}

/// A hold a tool cancelled in the database, behind Kitara's back: a confirm of it trips
/// its write's guard, the store reloads and judges the confirm once more against the
/// truth, and answers as it answers a confirm of an order it cancelled itself, not 503.
async fn an_order_ended_behind_kitaras_back_is_judged_again(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_app(&db).await;
    let id = |body: &serde_json::Value| body["data"]["order_id"].as_i64().expect("order_id");
    let (status, held) = app.lock(&order(2, &[(1, 2)])).await;
    assert_eq!(status, StatusCode::OK, "{held}");
    let (status, cancelled) = app.lock(&order(2, &[(1, 1)])).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    let (status, body) = app.end(id(&cancelled), "cancel", 2).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (want, expected) = app.end(id(&cancelled), "confirm", 2).await;
    assert!(want.is_client_error(), "{want} {expected}");

    db.exec(&format!(
        "UPDATE orders SET status = 'cancelled' WHERE id = {}",
        id(&held)
    ))
    .await;
    db.exec("UPDATE products SET current_stock = current_stock + 2 WHERE id = 1")
        .await;
    let (status, body) = app.end(id(&held), "confirm", 2).await;
    assert_eq!(
        (status, &body["message"]),
        (want, &expected["message"]),
        "{body}"
    );
    assert_eq!(db.status(id(&held)).await, "cancelled");
    assert_eq!(app.listed_stocks().await, db.stocks().await);
    app.stop().await;
    db.drop_database().await;
}

/// Triggers added behind Kitara's back, which a store's reload cannot see: the database
/// refuses every order of user 3, and every confirm.
fn refusing_triggers(backend: Backend) -> [&'static str; 2] {
    match backend {
        Backend::Sqlite => [
            "CREATE TRIGGER refuse_user_3 BEFORE INSERT ON orders WHEN NEW.buyer_id = 3 \
             BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END",
            "CREATE TRIGGER refuse_confirms BEFORE UPDATE ON orders \
             WHEN NEW.status = 'confirmed' \
             BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END",
        ],
        Backend::Mysql => [
            "CREATE TRIGGER refuse_user_3 BEFORE INSERT ON orders FOR EACH ROW \
             IF NEW.buyer_id = 3 THEN \
             SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by a trigger'; END IF",
            "CREATE TRIGGER refuse_confirms BEFORE UPDATE ON orders FOR EACH ROW \
             IF NEW.status = 'confirmed' THEN \
             SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by a trigger'; END IF",
        ],
    }
}

/// A write the database refuses whatever memory holds: the store reloads, decides it
/// once more, and when the database refuses it again, answers it. Twice, not on and on
/// until the request's deadline, and nothing of it is stored or kept in memory.
async fn a_write_the_database_always_refuses_is_tried_twice(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let initial = db.stocks().await;
    let app = spawn_app(&db).await;
    let id = |body: &serde_json::Value| body["data"]["order_id"].as_i64().expect("order_id");
    let (status, held) = app.lock(&order(2, &[(1, 2)])).await;
    assert_eq!(status, StatusCode::OK, "{held}");
    for trigger in refusing_triggers(backend) {
        db.exec(trigger).await;
    }
    let refused = || database_errors(&app, "refused");

    // Refused, reloaded, decided again, refused again: final.
    assert_unavailable(
        &app.lock(&order(3, &[(1, 3)])).await,
        "stock changed concurrently",
    );
    assert_eq!(refused().await, 2.0, "one try, and one after the reload");
    // A confirm refused again is not a conflict of stock: the database is at fault.
    assert_unavailable(
        &app.end(id(&held), "confirm", 2).await,
        "database unavailable",
    );
    assert_eq!(refused().await, 4.0, "one try, and one after the reload");

    assert_eq!(db.count("orders").await, 1);
    assert_eq!(db.status(id(&held)).await, "locked");
    assert_eq!(app.listed_stocks().await, db.stocks().await);
    // The store still serves what the database accepts, from the truth.
    let (status, body) = app.lock(&order(1, &[(1, 8)])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.end(id(&held), "cancel", 2).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.listed_stocks().await, db.stocks().await);
    assert_eq!(db.stocks().await[&1], 2);
    db.assert_invariants(&initial).await;
    app.stop().await;
    db.drop_database().await;
}

/// How many times the database failed Kitara, of one `kind` (`/metrics`).
async fn database_errors(app: &TestApp, kind: &str) -> f64 {
    let (_, metrics) = app.text("/metrics").await;
    series(
        &metrics,
        &format!(r#"kitara_database_errors_total{{kind="{kind}"}}"#),
    )
}

/// Renames a table behind Kitara's back: while `stores` is away, a store's reload (which
/// reads it) fails, and an order's write (which does not) goes on.
fn rename(backend: Backend, from: &str, to: &str) -> String {
    match backend {
        Backend::Sqlite => format!("ALTER TABLE {from} RENAME TO {to}"),
        Backend::Mysql => format!("RENAME TABLE {from} TO {to}"),
    }
}

/// A write the database refused, in a store that then cannot reload (a table the reload
/// reads is away): memory takes the decision back, so its units are listed again, and
/// the request is answered 503 "database unavailable", since it was never judged
/// against the truth. Once the table is back, the store reloads and serves again.
async fn a_refusal_the_store_cannot_reload_after_is_taken_back(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let initial = db.stocks().await;
    // The reload is tried until the request's deadline: a short one keeps the test short.
    let app = spawn_app_with(&db, |s| {
        s.database.acquire_timeout = Duration::from_millis(1_000);
    })
    .await;
    let [refuse_user_3, _] = refusing_triggers(backend);
    db.exec(refuse_user_3).await;
    db.exec(&rename(backend, "stores", "stores_away")).await;

    assert_unavailable(
        &app.lock(&order(3, &[(1, 3)])).await,
        "database unavailable",
    );
    assert_eq!(database_errors(&app, "refused").await, 1.0);
    assert!(database_errors(&app, "reload_failed").await >= 1.0);
    assert_eq!(
        app.listed_stocks().await,
        initial,
        "the refused order's units are listed again"
    );

    // A store that could not reload tries again once an interval (200 ms), not at every
    // request: ten requests, one after the other, each answered at once, make it try at
    // most once or twice. (For more than five tries, five of the gaps between them
    // would each have to outlast the interval; trying at every request makes ten, each
    // waiting out the request's deadline.)
    let tries = database_errors(&app, "reload_failed").await;
    for _ in 0..10 {
        assert_unavailable(
            &app.lock(&order(2, &[(1, 1)])).await,
            "database unavailable",
        );
    }
    let tries = database_errors(&app, "reload_failed").await - tries;
    assert!(tries <= 5.0, "{tries} reloads tried for ten requests");

    db.exec(&rename(backend, "stores_away", "stores")).await;
    let mut served = None;
    for _ in 0..100 {
        let (status, body) = app.lock(&order(2, &[(1, 3)])).await;
        if status == StatusCode::OK {
            served = Some(body);
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = served.expect("the store serves again once the table is back");
    db.assert_order_stored(&body, 2).await;
    assert_eq!(app.listed_stocks().await, db.stocks().await);
    db.assert_invariants(&initial).await;
    app.stop().await;
    db.drop_database().await;
}

/// A write the database refused, in a store whose reload fails at first (a table it
/// reads is away for a moment): the reload is tried again until the request's deadline,
/// and once it reads the truth the request is decided once more (and, refused again,
/// answered as final).
async fn a_reload_that_fails_at_first_is_tried_again(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let initial = db.stocks().await;
    // The table comes back within milliseconds of the refusal; the deadline, ten
    // seconds, is the margin.
    let app = Arc::new(
        spawn_app_with(&db, |s| {
            s.database.acquire_timeout = Duration::from_secs(10);
        })
        .await,
    );
    let [refuse_user_3, _] = refusing_triggers(backend);
    db.exec(refuse_user_3).await;
    db.exec(&rename(backend, "stores", "stores_away")).await;

    let answer = {
        let app = app.clone();
        tokio::spawn(async move { app.lock(&order(3, &[(1, 3)])).await })
    };
    // The database refused the order: the store now reloads, and fails while the table
    // is away. Put it back.
    let waited = std::time::Instant::now();
    while database_errors(&app, "refused").await < 1.0 {
        assert!(waited.elapsed() < Duration::from_secs(10), "never refused");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    db.exec(&rename(backend, "stores_away", "stores")).await;
    assert_unavailable(
        &answer.await.expect("the request's task"),
        "stock changed concurrently",
    );
    assert_eq!(database_errors(&app, "refused").await, 2.0);
    assert_eq!(database_errors(&app, "reload_failed").await, 0.0);
    assert_eq!(app.listed_stocks().await, db.stocks().await);
    assert_eq!(db.stocks().await, initial);
    let Ok(app) = Arc::try_unwrap(app) else {
        panic!("a request still holds the app");
    };
    app.stop().await;
    db.drop_database().await;
}

async fn stock_taken_behind_kitaras_back_mid_burst_never_oversells(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    db.exec("UPDATE products SET current_stock = 300 WHERE id IN (1, 2)")
        .await;
    let initial = db.stocks().await;
    let app = Arc::new(spawn_app(&db).await);

    // A tool sells stock directly, with its own guard, while customers order.
    let done = Arc::new(AtomicBool::new(false));
    let tool = {
        let done = done.clone();
        let url = db.url.clone();
        tokio::spawn(async move {
            let conn = kitara::db::connect(&crate::helpers::database_args(&url))
                .await
                .unwrap();
            let mut taken = BTreeMap::new();
            use sea_orm::ConnectionTrait;
            for round in 0..40 {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let product = 1 + (round % 2);
                let sql = format!(
                    "UPDATE products SET current_stock = current_stock - 7 \
                     WHERE id = {product} AND current_stock >= 7"
                );
                let r = conn
                    .execute_unprepared(&sql)
                    .await
                    .unwrap_or_else(|e| panic!("the tool failed: {e}"));
                *taken.entry(product).or_insert(0) += 7 * r.rows_affected() as i64;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            conn.close().await.ok();
            taken
        })
    };
    let answers = customers(&app, 16, 25, |c, i| {
        order(2, &[(1 + (c + i) % 2, 1 + (i % 5)), (2, 1)])
    })
    .await;
    let mut served = Vec::new();
    for (status, body) in answers {
        match status {
            StatusCode::OK => served.push(body),
            StatusCode::BAD_REQUEST => {
                assert!(body["message"].as_str().unwrap().ends_with("not available"))
            }
            // A second trip in a row is answered 503; never a 500, nor a 503 of any
            // other cause.
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["message"], "stock changed concurrently", "{body}")
            }
            other => panic!("status {other}: {body}"),
        }
    }
    done.store(true, Ordering::Relaxed);
    let taken = tool.await.unwrap();
    assert!(
        taken.values().any(|&units| units > 0),
        "the tool took nothing: the burst did not meet it"
    );
    // The tool may have sold after the last order: memory learns of that only when a
    // guard trips. Asking for everything memory believes is left makes it trip if
    // memory is behind; either way memory must equal the database afterwards.
    for product in [1, 2] {
        let believed = app.listed_stocks().await[&product];
        if believed > 0 {
            let (status, body) = app.lock(&order(2, &[(product, believed)])).await;
            match status {
                StatusCode::OK => served.push(body),
                StatusCode::BAD_REQUEST => {}
                other => panic!("status {other}: {body}"),
            }
        }
    }

    assert!(!served.is_empty());
    assert_eq!(db.count("orders").await, served.len() as i64);
    for body in &served {
        db.assert_order_stored(body, 2).await;
    }
    // What the tool took counts like an order line.
    let mut adjusted = initial.clone();
    for (product, quantity) in taken {
        *adjusted.get_mut(&product).unwrap() -= quantity;
    }
    db.assert_settled(&adjusted, &app).await;

    crate::helpers::TestApp::stop_shared(app).await;
    db.drop_database().await;
}

/// MariaDB only: SQLite has no connections to kill.
mod mysql_connections {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn killed_mid_burst_lose_no_answered_order_mysql() {
        if Backend::Mysql.available() {
            database_connections_killed_mid_burst(Backend::Mysql).await;
        }
    }
}

async fn database_connections_killed_mid_burst(backend: Backend) {
    use sea_orm::{ConnectionTrait, Database};

    let mut db = TestDb::with_demo_data(backend).await;
    db.exec("UPDATE products SET current_stock = 2000").await;
    let initial = db.stocks().await;
    let app = Arc::new(spawn_app(&db).await);
    let database = db.url.rsplit('/').next().unwrap().to_owned();

    // Another session kills every connection to Kitara's database, again and again.
    let done = Arc::new(AtomicBool::new(false));
    let killer = {
        let done = done.clone();
        let base = std::env::var("KITARA_TEST_MYSQL_URL").unwrap();
        tokio::spawn(async move {
            let admin = Database::connect(base.trim_end_matches('/')).await.unwrap();
            // A storm of kills for a while, then the database is left alone, so that
            // Kitara can be seen to recover.
            let storm = std::time::Instant::now();
            let mut killed = 0;
            while !done.load(Ordering::Relaxed)
                && killed < 200
                && storm.elapsed() < Duration::from_millis(400)
            {
                let rows = admin
                    .query_all_raw(sea_orm::Statement::from_string(
                        admin.get_database_backend(),
                        format!(
                            "SELECT id FROM information_schema.processlist \
                             WHERE db = '{database}' AND id <> CONNECTION_ID()"
                        ),
                    ))
                    .await
                    .unwrap_or_default();
                for row in rows {
                    let id: i64 = row.try_get_by_index(0).unwrap();
                    if admin
                        .execute_unprepared(&format!("KILL {id}"))
                        .await
                        .is_ok()
                    {
                        killed += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            admin.close().await.ok();
            killed
        })
    };
    let answers = customers(&app, 16, 30, |c, i| {
        let lines: Vec<(i64, i64)> = if c % 4 == 0 {
            vec![(3, 1 + i % 2)]
        } else {
            vec![(1, 1), (2, 1 + (c + i) % 3)]
        };
        order(1 + c % 3, &lines)
    })
    .await;
    let mut served = Vec::new();
    let mut unknown = 0;
    for (status, body) in answers {
        match status {
            StatusCode::OK => served.push(body),
            StatusCode::BAD_REQUEST => panic!("nothing should run out: {body}"),
            StatusCode::SERVICE_UNAVAILABLE => {
                if body["message"] == "order outcome unknown" {
                    unknown += 1;
                }
            }
            other => panic!("status {other}: {body}"),
        }
    }
    done.store(true, Ordering::Relaxed);
    let killed = killer.await.unwrap();
    assert!(killed > 0, "the test must have killed connections");
    // The test's own connections to the database were killed too.
    db.reconnect().await;

    // Kitara recovers within moments: new orders are served, and memory matches the
    // database.
    for product in [1, 3] {
        let mut attempts = 0;
        loop {
            let (status, body) = app.lock(&order(2, &[(product, 1)])).await;
            if status == StatusCode::OK {
                served.push(body);
                break;
            }
            attempts += 1;
            assert!(attempts < 30, "not recovered after the kills: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let stored = db.count("orders").await;
    assert!(
        stored >= served.len() as i64 && stored <= (served.len() + unknown) as i64,
        "{stored} order rows for {} answers of 200 and {unknown} unknown outcomes",
        served.len()
    );
    for body in &served {
        let order_id = body["data"]["order_id"].as_i64().unwrap();
        let rows = db
            .query_i64s(&format!(
                "SELECT COUNT(*) FROM orders WHERE id = {order_id}"
            ))
            .await;
        assert_eq!(
            rows,
            vec![vec![1]],
            "order {order_id} answered 200 is stored"
        );
    }
    db.assert_settled(&initial, &app).await;

    crate::helpers::TestApp::stop_shared(app).await;
    db.drop_database().await;
}

/// Reserving a block of ids reads the sequence, then writes it, in one transaction. On
/// SQLite a transaction that began as a reader cannot become a writer once another
/// connection has committed since (`SQLITE_BUSY` at once, no waiting): the reservation
/// must hold the write lock from its BEGIN, or a tool writing to the database makes
/// Kitara's orders fail as "database unavailable".
async fn id_blocks_are_reserved_while_another_writer_commits(backend: Backend) {
    use kitara::db::ids::{self, Sequence};
    use sea_orm::ConnectionTrait;

    let db = TestDb::with_demo_data(backend).await;
    let args = crate::helpers::database_args(&db.url);
    let kitara = kitara::db::connect(&args).await.unwrap();
    let tool = kitara::db::connect(&args).await.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let writing = tokio::spawn({
        let done = done.clone();
        async move {
            let mut commits = 0;
            while !done.load(Ordering::Relaxed) {
                tool.execute_unprepared(
                    "UPDATE products SET current_stock = current_stock + 1 WHERE id = 3",
                )
                .await
                .unwrap_or_else(|e| panic!("the tool failed: {e}"));
                commits += 1;
                tokio::task::yield_now().await;
            }
            tool.close().await.ok();
            commits
        }
    });
    let mut firsts = Vec::new();
    for _ in 0..200 {
        let first = ids::reserve(&kitara, Sequence::Orders, 10)
            .await
            .unwrap_or_else(|e| panic!("a block was refused while another writer wrote: {e}"));
        firsts.push(first);
    }
    done.store(true, Ordering::Relaxed);
    let commits = writing.await.unwrap();
    assert!(commits > 0, "the tool never wrote");
    // Every block is new: each starts where the one before it ended.
    assert!(firsts.windows(2).all(|w| w[1] == w[0] + 10), "{firsts:?}");
    kitara.close().await.ok();
    db.drop_database().await;
}
