//! Orders are holds (SPEC.md, release 2): `hold_seconds`, `GET /api/v1/order/{id}`,
//! confirm, cancel and expiry, their codes and messages, the buyer check, holds across
//! a restart, the second migration on a release-1 database, and bad input on every new
//! field and path. Time is a manual clock: a hold expires when the test moves it.

use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use kitara::clock::{Clock, rfc3339};
use migration::{Migrator, MigratorTrait};
use serde_json::{Value, json};

use crate::helpers::{
    Backend, TestDb, manual_clock, order, spawn_app, spawn_app_at, spawn_app_with, start_kitara,
};

crate::on_both_backends!(
    a_hold_expires_at_its_deadline_and_gives_its_units_back,
    the_server_default_hold_applies_unless_the_body_names_one,
    confirm_and_cancel_resolve_a_hold_once,
    only_the_buyer_may_end_an_order,
    holds_past_due_at_start_up_expire_before_the_store_serves,
    bad_input_on_holds_is_named_and_changes_nothing,
    a_release_1_database_keeps_its_orders_as_holds,
    ending_a_live_hold_reads_no_order_and_answers_as_the_database_has_it,
    a_store_notices_its_clock_move_without_being_asked,
    a_store_whose_holds_ended_sleeps,
);

fn lock_with_hold(user: i64, lines: &[(i64, i64)], hold_seconds: i64) -> Value {
    let mut body = order(user, lines);
    body["hold_seconds"] = json!(hold_seconds);
    body
}

/// The deadline Kitara gives a hold of `seconds` asked for at the clock's now.
fn expected_deadline(clock: &Clock, seconds: u32) -> String {
    rfc3339(clock.deadline_after(seconds))
}

fn order_id(body: &Value) -> i64 {
    body["data"]["order_id"].as_i64().expect("order_id")
}

async fn a_hold_expires_at_its_deadline_and_gives_its_units_back(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let clock = manual_clock();
    let app = spawn_app_at(&db, clock.clone(), |_| {}).await;
    let deadline = expected_deadline(&clock, 60);

    let (status, body) = app.lock(&lock_with_hold(2, &[(1, 2)], 60)).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "locked");
    assert_eq!(body["data"]["expires_at"], deadline);
    assert_eq!(body["data"]["order_details"][0]["quantity"], 2);
    let id = order_id(&body);
    db.assert_order_stored(&body, 2).await;
    let (status, got) = app.get_order(id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        got["data"],
        json!({
            "order_id": id, "user_id": 2, "store_id": 1, "status": "locked",
            "expires_at": deadline,
            "order_details": body["data"]["order_details"],
        })
    );
    assert_eq!(app.listed_stocks().await[&1], 8);

    // Just before its deadline it still holds.
    app.advance(Duration::from_secs(59)).await;
    assert_eq!(app.get_order(id).await.1["data"]["status"], "locked");
    assert_eq!(db.stocks().await[&1], 8);

    // At its deadline it expires, without any traffic: status and units, in memory,
    // in the listing and in the database.
    app.advance(Duration::from_secs(1)).await;
    assert_eq!(app.get_order(id).await.1["data"]["status"], "expired");
    assert_eq!(db.status(id).await, "expired");
    assert_eq!(db.stocks().await[&1], 10);
    assert_eq!(app.listed_stocks().await, db.stocks().await);
    db.assert_invariants(&[(1, 10), (2, 5), (3, 20)].into())
        .await;
    app.stop().await;
    db.drop_database().await;
}

async fn the_server_default_hold_applies_unless_the_body_names_one(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let clock = manual_clock();
    let app = spawn_app_at(&db, clock.clone(), |s| s.hold_seconds = 30).await;

    let (_, default) = app.lock(&order(2, &[(1, 1)])).await;
    assert_eq!(default["data"]["expires_at"], expected_deadline(&clock, 30));
    let mut null_hold = order(2, &[(1, 1)]);
    null_hold["hold_seconds"] = Value::Null;
    let (_, null) = app.lock(&null_hold).await;
    assert_eq!(null["data"]["expires_at"], expected_deadline(&clock, 30));
    let (_, named) = app.lock(&lock_with_hold(2, &[(1, 1)], 5)).await;
    assert_eq!(named["data"]["expires_at"], expected_deadline(&clock, 5));

    app.advance(Duration::from_secs(5)).await;
    assert_eq!(db.status(order_id(&named)).await, "expired");
    assert_eq!(db.status(order_id(&default)).await, "locked");
    app.advance(Duration::from_secs(25)).await;
    assert_eq!(db.status(order_id(&default)).await, "expired");
    assert_eq!(db.status(order_id(&null)).await, "expired");
    app.stop().await;

    // With no default (0, the Go behaviour), a hold lasts until it is ended.
    let app = spawn_app_at(&db, clock.clone(), |_| {}).await;
    let (_, forever) = app.lock(&order(2, &[(1, 1)])).await;
    assert_eq!(forever["data"]["status"], "locked");
    assert!(forever["data"]["expires_at"].is_null());
    app.advance(Duration::from_secs(30 * 24 * 3600)).await;
    assert_eq!(db.status(order_id(&forever)).await, "locked");
    app.stop().await;
    db.drop_database().await;
}

async fn confirm_and_cancel_resolve_a_hold_once(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_app_at(&db, manual_clock(), |_| {}).await;
    let (_, confirmed) = app.lock(&order(2, &[(1, 2), (2, 1)])).await;
    let (_, cancelled) = app.lock(&order(2, &[(1, 3)])).await;
    let (_, expired) = app.lock(&lock_with_hold(2, &[(2, 2)], 10)).await;
    let (confirmed, cancelled, expired) = (
        order_id(&confirmed),
        order_id(&cancelled),
        order_id(&expired),
    );
    assert_eq!(db.stocks().await, [(1, 5), (2, 2), (3, 20)].into());

    // Confirm: the units are sold; the answer is the order as GET shows it.
    let (status, body) = app.end(confirmed, "confirm", 2).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["message"], "OK");
    assert_eq!(body["data"]["status"], "confirmed");
    assert_eq!(body["data"], app.get_order(confirmed).await.1["data"]);
    // A repeat is harmless; the other end is refused.
    let (status, again) = app.end(confirmed, "confirm", 2).await;
    assert_eq!((status, &again["data"]), (StatusCode::OK, &body["data"]));
    let (status, body) = app.end(confirmed, "cancel", 2).await;
    assert_refusal(status, &body, StatusCode::CONFLICT, "order is confirmed");

    // Cancel: the units go back.
    let (status, body) = app.end(cancelled, "cancel", 2).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "cancelled");
    assert_eq!(db.stocks().await[&1], 8);
    assert_eq!(app.listed_stocks().await[&1], 8);
    let (status, _) = app.end(cancelled, "cancel", 2).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app.end(cancelled, "confirm", 2).await;
    assert_refusal(status, &body, StatusCode::CONFLICT, "order is cancelled");

    // Expiry: a confirm after the deadline finds it expired, even before the store's
    // timer has run.
    app.state.clock.advance(Duration::from_secs(11));
    let (status, body) = app.end(expired, "confirm", 2).await;
    assert_refusal(status, &body, StatusCode::CONFLICT, "order is expired");
    let (status, body) = app.end(expired, "cancel", 2).await;
    assert_refusal(status, &body, StatusCode::CONFLICT, "order is expired");
    assert_eq!(db.stocks().await, [(1, 8), (2, 4), (3, 20)].into());
    assert_eq!(app.listed_stocks().await, db.stocks().await);

    let statuses = [
        db.status(confirmed).await,
        db.status(cancelled).await,
        db.status(expired).await,
    ];
    assert_eq!(statuses, ["confirmed", "cancelled", "expired"]);
    db.assert_invariants(&[(1, 10), (2, 5), (3, 20)].into())
        .await;
    app.stop().await;
    db.drop_database().await;
}

fn assert_refusal(status: StatusCode, body: &Value, expected: StatusCode, message: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["code"], expected.as_u16(), "{body}");
    assert_eq!(body["message"], message, "{body}");
    assert!(body["data"].is_null(), "{body}");
}

async fn only_the_buyer_may_end_an_order(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_app(&db).await;
    let (_, body) = app.lock(&order(2, &[(1, 1)])).await;
    let id = order_id(&body);
    let before = db.snapshot().await;

    // Not its buyer, or no such order: the same 404, no hint which.
    for (id, user) in [(id, 3), (id, 42), (id + 1, 2), (9_999_999, 2)] {
        for action in ["confirm", "cancel"] {
            let (status, body) = app.end(id, action, user).await;
            assert_refusal(status, &body, StatusCode::NOT_FOUND, "order not found");
        }
    }
    let (status, body) = app.get_order(id + 1).await;
    assert_refusal(status, &body, StatusCode::NOT_FOUND, "order not found");
    assert_eq!(db.snapshot().await, before);
    assert_eq!(db.status(id).await, "locked");
    let (status, _) = app.end(id, "cancel", 2).await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
    db.drop_database().await;
}

/// A store expires every hold that fell due while Kitara was down before it serves,
/// in chunks of four batches (`KITARA_BATCH_SIZE=1` here: six holds are two chunks).
async fn holds_past_due_at_start_up_expire_before_the_store_serves(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let clock = manual_clock();
    let app = spawn_app_at(&db, clock.clone(), |_| {}).await;
    let mut soon = Vec::new();
    for user in [2, 3, 2, 3, 2, 3] {
        let (status, body) = app.lock(&lock_with_hold(user, &[(1, 1)], 10)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        soon.push(order_id(&body));
    }
    let (_, later) = app.lock(&lock_with_hold(3, &[(1, 3)], 100)).await;
    let later = order_id(&later);
    app.stop().await;

    // Kitara is down while the first holds fall due.
    clock.advance(Duration::from_secs(50));
    let app = spawn_app_at(&db, clock.clone(), |s| s.batch_size = 1).await;

    // The first answer after start-up already sees them expired; the other keeps its
    // deadline.
    assert_eq!(app.listed_stocks().await[&1], 7);
    for id in soon {
        assert_eq!(app.get_order(id).await.1["data"]["status"], "expired");
    }
    assert_eq!(db.stocks().await[&1], 7);
    assert_eq!(db.status(later).await, "locked");
    app.advance(Duration::from_secs(49)).await;
    assert_eq!(db.status(later).await, "locked");
    app.advance(Duration::from_secs(1)).await;
    assert_eq!(db.status(later).await, "expired");
    assert_eq!(app.listed_stocks().await[&1], 10);
    db.assert_invariants(&[(1, 10), (2, 5), (3, 20)].into())
        .await;
    app.stop().await;
    db.drop_database().await;
}

async fn bad_input_on_holds_is_named_and_changes_nothing(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_app(&db).await;
    let (_, body) = app.lock(&order(2, &[(1, 1)])).await;
    let id = order_id(&body);
    let before = db.snapshot().await;

    for hold in [
        json!(0),
        json!(-1),
        json!(604_801),
        json!(1.5),
        json!("5"),
        json!(true),
    ] {
        let mut body = order(2, &[(1, 1)]);
        body["hold_seconds"] = hold.clone();
        let (status, answer) = app.lock(&body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{hold}: {answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains("hold_seconds"), "{hold}: {message}");
    }

    let long_key = "k".repeat(256);
    for key in [long_key.as_str(), "ключ", "with space", "\"\""] {
        for path in [
            "/api/v1/order/lock".to_owned(),
            format!("/api/v1/order/{id}/cancel"),
        ] {
            let (status, _, answer) = app.post(&path, &order(2, &[(1, 1)]), Some(key)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{key}: {answer}");
            let message = answer["message"].as_str().unwrap();
            assert!(message.contains("Idempotency-Key"), "{message}");
        }
    }

    let huge = "9".repeat(30);
    for bad in ["abc", "0", "-1", "007", "1.5", huge.as_str()] {
        let (status, answer) = app.get_order(bad).await;
        assert_refusal(status, &answer, StatusCode::NOT_FOUND, "order not found");
        for action in ["confirm", "cancel"] {
            let (status, _, answer) = app
                .post(
                    &format!("/api/v1/order/{bad}/{action}"),
                    &json!({"user_id": 2}),
                    None,
                )
                .await;
            assert_refusal(status, &answer, StatusCode::NOT_FOUND, "order not found");
        }
    }

    for body in [
        json!({}),
        json!({"user_id": null}),
        json!({"user_id": "2"}),
        json!({"user_id": 0}),
    ] {
        for action in ["confirm", "cancel"] {
            let (status, _, answer) = app
                .post(&format!("/api/v1/order/{id}/{action}"), &body, None)
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
            assert!(answer["message"].as_str().unwrap().contains("user_id"));
        }
    }
    let (status, _, answer) = app
        .request(
            Method::POST,
            &format!("/api/v1/order/{id}/confirm"),
            Some("text/plain"),
            r#"{"user_id":2}"#,
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{answer}");
    let (status, _, answer) = app
        .request(
            Method::POST,
            &format!("/api/v1/order/{id}/cancel"),
            Some("application/json"),
            "[2]",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    for (method, path, allow) in [
        (Method::POST, format!("/api/v1/order/{id}"), "GET, HEAD"),
        (Method::DELETE, format!("/api/v1/order/{id}"), "GET, HEAD"),
        (Method::GET, format!("/api/v1/order/{id}/confirm"), "POST"),
        (Method::GET, format!("/api/v1/order/{id}/cancel"), "POST"),
        (Method::GET, "/api/v1/order/lock".to_owned(), "POST"),
    ] {
        let (status, headers, answer) = app
            .request(
                method.clone(),
                &path,
                Some("application/json"),
                Bytes::new(),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {answer}"
        );
        assert_eq!(headers["allow"], allow, "{method} {path}");
    }
    for path in [
        format!("/api/v1/order/{id}/"),
        format!("/api/v1/order/{id}/pay"),
    ] {
        let (status, _, answer) = app.request(Method::GET, &path, None, Bytes::new()).await;
        assert_refusal(status, &answer, StatusCode::NOT_FOUND, "Route not found");
    }

    assert_eq!(db.snapshot().await, before);
    assert_eq!(db.status(id).await, "locked");
    let (status, body) = app.end(id, "confirm", 2).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.stop().await;
    db.drop_database().await;
}

/// The migrations since release 1 (holds, the ledger, store ownership) on a database
/// release 1 wrote: every row is kept, its orders are holds with no expiry, and `serve`
/// refuses a MySQL schema that is behind.
async fn a_release_1_database_keeps_its_orders_as_holds(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    // Every migration after the first one.
    let later = Migrator::migrations().len() as u32 - 1;
    Migrator::down(&db.conn, Some(later))
        .await
        .expect("back to release 1");
    db.exec("INSERT INTO orders (id, buyer_id, quantity, store_id) VALUES (1, 2, 3, 1)")
        .await;
    db.exec(
        "INSERT INTO order_details (id, order_id, product_id, quantity) VALUES (1, 1, 1, 2), (2, 1, 2, 1)",
    )
    .await;
    db.exec("UPDATE products SET current_stock = current_stock - 2 WHERE id = 1")
        .await;
    db.exec("UPDATE products SET current_stock = current_stock - 1 WHERE id = 2")
        .await;
    if backend == Backend::Mysql {
        let Err(error) =
            kitara::startup::Application::build(crate::helpers::settings(&db.url)).await
        else {
            panic!("serve must refuse a schema that is behind");
        };
        assert!(error.to_string().contains("kitara migrate"), "{error}");
    }

    kitara::db::migrate_and_seed(&db.conn, true)
        .await
        .expect("migrate");

    assert_eq!(db.count("orders").await, 1);
    assert_eq!(db.count("order_details").await, 2);
    assert_eq!(db.count("users").await, 3);
    assert_eq!(db.status(1).await, "locked");
    let app = spawn_app_with(&db, |_| {}).await;
    let (status, body) = app.get_order(1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["data"]["expires_at"].is_null());
    assert_eq!(
        body["data"]["order_details"][1]["product_name"],
        "sikat gigi"
    );
    let (status, body) = app.end(1, "cancel", 2).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(db.stocks().await, [(1, 10), (2, 5), (3, 20)].into());
    // A new order numbers on from release 1's.
    let (_, body) = app.lock(&order(3, &[(1, 1)])).await;
    assert_eq!(order_id(&body), 2);
    app.stop().await;
    db.drop_database().await;
}

/// A confirm or cancel of a live hold goes to its store's actor without reading the
/// order from the database (the order-reads counter stays put), and answers exactly as
/// the stored order reads. A repeat, another buyer's request, or a product deleted
/// since the lock takes the database's word.
async fn ending_a_live_hold_reads_no_order_and_answers_as_the_database_has_it(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_app_with(&db, |s| {
        s.admin_token = Some(crate::helpers::ADMIN_TOKEN.into())
    })
    .await;
    let reads = || async {
        let (_, text) = app.text("/metrics").await;
        crate::helpers::series(&text, "kitara_order_reads_total")
    };
    let (_, first) = app.lock(&order(2, &[(2, 1), (1, 2)])).await;
    let (_, second) = app.lock(&lock_with_hold(3, &[(3, 1)], 600)).await;
    let (first, second) = (order_id(&first), order_id(&second));
    let before = reads().await;

    let (status, confirmed) = app.end(first, "confirm", 2).await;
    assert_eq!(status, StatusCode::OK, "{confirmed}");
    let (status, cancelled) = app.end(second, "cancel", 3).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(reads().await, before, "ending live holds read no order");
    for (id, answer) in [(first, &confirmed), (second, &cancelled)] {
        let (status, stored) = app.get_order(id).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["data"], stored["data"], "order {id}");
    }
    assert_eq!(confirmed["data"]["status"], "confirmed");
    assert_eq!(cancelled["data"]["status"], "cancelled");
    assert_eq!(reads().await, before + 2.0);

    // Ended already: the database says so.
    let (status, again) = app.end(first, "confirm", 2).await;
    assert_eq!(
        (status, &again["data"]),
        (StatusCode::OK, &confirmed["data"])
    );
    let (status, _) = app.end(second, "confirm", 3).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(reads().await, before + 4.0);

    // Another buyer: the actor does not end it, and the database says it is not theirs.
    let (_, third) = app.lock(&order(2, &[(1, 1)])).await;
    let third = order_id(&third);
    let (status, _) = app.end(third, "cancel", 3).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(reads().await, before + 5.0);
    assert_eq!(db.status(third).await, "locked");

    // A product deleted since the lock: its name comes from the database.
    let (status, _) = app
        .admin(Method::DELETE, "/api/v1/admin/products/1", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, ended) = app.end(third, "cancel", 2).await;
    assert_eq!(status, StatusCode::OK, "{ended}");
    assert_eq!(ended["data"]["order_details"][0]["product_name"], "masker");
    assert_eq!(ended["data"]["status"], "cancelled");

    app.stop().await;
    db.drop_database().await;
}

/// A clock that jumps past a hold's deadline expires it at once, without anybody asking
/// the stores to settle: each actor watches the clock and re-arms its timer, which was
/// set for the hold's ten minutes of real time.
async fn a_store_notices_its_clock_move_without_being_asked(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let clock = manual_clock();
    let app = spawn_app_at(&db, clock.clone(), |_| {}).await;
    let (status, body) = app.lock(&lock_with_hold(2, &[(1, 2)], 600)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = order_id(&body);

    clock.advance(Duration::from_secs(601));
    until_expired(
        &db,
        id,
        Duration::from_secs(5),
        "the hold did not expire when the clock passed its deadline",
    )
    .await;
    assert_eq!(app.listed_stocks().await[&1], 10);
    app.stop().await;
    db.drop_database().await;
}

/// Waits until the database shows order `id` expired; fails with `why` after `within`.
async fn until_expired(db: &TestDb, id: i64, within: Duration, why: &str) {
    let started = std::time::Instant::now();
    while db.status(id).await != "expired" {
        assert!(started.elapsed() < within, "{why}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// CPU time a process has used, from `/proc` (in USER_HZ, a hundredth of a second on
/// Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process's stat");
    // The fields after the command name, which is in parentheses: state is the first,
    // utime and stime the twelfth and thirteenth.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("a stat line") + 2..]
        .split(' ')
        .collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// A store's actor waits for its next hold's deadline, or for its next command when it
/// holds nothing, without spinning: its expiry timer must be set for the deadline, not
/// before it, and must not fire again once nothing is armed. Measured on the real
/// binary, whose CPU is its own: two idle seconds cost a few ticks (an actor that spins
/// uses a core, some 200).
async fn a_store_whose_holds_ended_sleeps(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let (mut child, api, _logs) = start_kitara(&db.url, &[]).await;
    let pid = child.id().expect("kitara runs");
    let idle_ticks = || async move {
        let before = cpu_ticks(pid);
        tokio::time::sleep(Duration::from_secs(2)).await;
        cpu_ticks(pid) - before
    };
    let expired =
        |id: i64| until_expired(&db, id, Duration::from_secs(10), "the hold did not expire");
    let hold = |seconds| {
        let api = &api;
        async move {
            let (status, body) = api.lock(&lock_with_hold(2, &[(1, 1)], seconds)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            order_id(&body)
        }
    };

    // One hold expired, the next is ten minutes away.
    let later = hold(600).await;
    expired(hold(1).await).await;
    let used = idle_ticks().await;
    assert!(
        used < 50,
        "waiting for a hold's deadline took {used} ticks of CPU in 2 s"
    );

    // Nothing is held any more, and the timer has fired.
    let (status, body) = api.end(later, "cancel", 2).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    expired(hold(1).await).await;
    let used = idle_ticks().await;
    assert!(
        used < 50,
        "a store that holds nothing took {used} ticks of CPU in 2 s"
    );

    assert_eq!(api.listed_stocks().await[&1], 10);
    child.kill().await.expect("kill kitara");
    db.drop_database().await;
}
