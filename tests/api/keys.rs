//! Safe retries (SPEC.md, release 2): the `Idempotency-Key` of the three POST
//! endpoints. A replay carries the original answer with `Idempotent-Replayed: true`; a
//! key reused with another request is a 422; a key whose request is in progress is a
//! 409; only answers 200 are stored; old keys are purged.

use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, TestDb, order, spawn_app, spawn_app_with};

crate::on_both_backends!(
    a_keyed_lock_is_booked_once_and_replayed,
    a_replay_does_not_depend_on_what_changed_since,
    a_replay_the_database_refused_is_no_database_error,
    a_refusal_stores_nothing_and_a_retry_is_judged_afresh,
    keyed_confirms_and_cancels_are_replayed_too,
    a_key_in_progress_is_refused_with_409,
    keys_past_their_time_are_purged,
);

const LOCK: &str = "/api/v1/order/lock";

fn replayed(headers: &hyper::HeaderMap) -> bool {
    headers
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true")
}

/// A retry with `key` of the request to `path` first answered `first`: it must be
/// answered 200 with the same data, marked as replayed. The answer, for the test's
/// own checks.
async fn replay(app: &TestApp, path: &str, body: &Value, key: &str, first: &Value) -> Value {
    let (status, headers, again) = app.post(path, body, Some(key)).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert!(replayed(&headers), "{headers:?}");
    assert_eq!(again["data"], first["data"]);
    again
}

async fn a_keyed_lock_is_booked_once_and_replayed(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_app(&db).await;
    let body = json!({"user_id": 2, "hold_seconds": 600,
        "products": [{"product_id": 2, "quantity": 1}, {"product_id": 1, "quantity": 2}]});

    let (status, headers, first) = app.post(LOCK, &body, Some("order-7f3a")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert!(!replayed(&headers));

    // The same request again, and written differently: key order, spacing, line order
    // and split duplicate lines do not change what it is.
    let same = json!({"products": [{"quantity": 1, "product_id": 1}, {"product_id": 2, "quantity": 1},
        {"product_id": 1, "quantity": 1}], "hold_seconds": 600, "user_id": 2});
    for (body, key) in [(&body, "order-7f3a"), (&same, "\"order-7f3a\"")] {
        let again = replay(&app, LOCK, body, key, &first).await;
        assert_eq!(again["message"], "OK");
    }
    assert_eq!(db.count("orders").await, 1);
    assert_eq!(db.stocks().await, [(1, 8), (2, 4), (3, 20)].into());
    assert_eq!(app.listed_stocks().await, db.stocks().await);

    // The same key with another request: 422, and nothing changes.
    let before = db.snapshot().await;
    for other in [
        json!({"user_id": 2, "hold_seconds": 600, "products": [{"product_id": 1, "quantity": 3}]}),
        json!({"user_id": 3, "hold_seconds": 600, "products": [{"product_id": 2, "quantity": 1}, {"product_id": 1, "quantity": 2}]}),
        json!({"user_id": 2, "products": [{"product_id": 2, "quantity": 1}, {"product_id": 1, "quantity": 2}]}),
    ] {
        let (status, headers, answer) = app.post(LOCK, &other, Some("order-7f3a")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert_eq!(
            answer["message"],
            "Idempotency-Key reused with a different request"
        );
        assert!(answer["data"].is_null());
        assert!(!replayed(&headers));
    }
    // Keys are compared byte for byte.
    let (status, headers, _) = app.post(LOCK, &body, Some("ORDER-7F3A")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!replayed(&headers));
    assert_eq!(db.snapshot().await.orders, before.orders + 1);
    assert_eq!(db.count("idempotency_keys").await, 2);
    app.stop().await;
    db.drop_database().await;
}

async fn a_replay_does_not_depend_on_what_changed_since(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_app(&db).await;
    let all = order(2, &[(1, 10)]);
    let (status, _, first) = app.post(LOCK, &all, Some("take-all")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let id = first["data"]["order_id"].as_i64().unwrap();
    let (status, _) = app.end(id, "confirm", 2).await;
    assert_eq!(status, StatusCode::OK);

    // Sold out, and the order confirmed since: the replay is still the original answer.
    let again = replay(&app, LOCK, &all, "take-all", &first).await;
    assert_eq!(again["data"]["status"], "locked");
    app.stop().await;

    // And after a restart, from the database alone.
    let app = spawn_app(&db).await;
    replays_the_one_order(&app, &db, &all, "take-all", &first).await;
    app.stop().await;
    db.drop_database().await;
}

/// A retry with `key` is answered as `first` was, replayed, and no second order exists.
async fn replays_the_one_order(app: &TestApp, db: &TestDb, body: &Value, key: &str, first: &Value) {
    replay(app, LOCK, body, key, first).await;
    assert_eq!(db.count("orders").await, 1);
}

/// After a restart no request holds the key in memory, so a retry with stock to spare is
/// judged afresh and reaches the writer, whose batch the key's primary key refuses: the
/// retry is replayed, and that refusal is not counted as the database refusing what
/// memory allowed (the series an operator alerts on).
async fn a_replay_the_database_refused_is_no_database_error(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_app(&db).await;
    let one = order(2, &[(1, 1)]);
    let (status, _, first) = app.post(LOCK, &one, Some("after-restart")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    app.stop().await;

    let app = spawn_app(&db).await;
    replays_the_one_order(&app, &db, &one, "after-restart", &first).await;
    let (_, metrics) = app.text("/metrics").await;
    assert!(
        metrics.contains(r#"kitara_database_errors_total{kind="refused"} 0"#),
        "{metrics}"
    );
    // A genuine refusal still counts: stock taken behind Kitara's back.
    db.exec("UPDATE products SET current_stock = 0 WHERE id = 1")
        .await;
    let (status, _) = app.lock(&one).await;
    assert_ne!(status, StatusCode::OK);
    let (_, metrics) = app.text("/metrics").await;
    assert!(
        !metrics.contains(r#"kitara_database_errors_total{kind="refused"} 0"#),
        "{metrics}"
    );
    app.stop().await;
    db.drop_database().await;
}

async fn a_refusal_stores_nothing_and_a_retry_is_judged_afresh(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_app(&db).await;
    let body = order(42, &[(1, 1)]);

    let (status, _, answer) = app.post(LOCK, &body, Some("k-42")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["message"], "user not found");
    assert_eq!(db.count("idempotency_keys").await, 0);

    // The user exists now: the retry with the same key is placed.
    db.exec("INSERT INTO users (id, name) VALUES (42, 'late')")
        .await;
    let (status, headers, answer) = app.post(LOCK, &body, Some("k-42")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(!replayed(&headers));
    db.assert_order_stored(&answer, 42).await;

    // Edge refusals store nothing either.
    let (status, _, _) = app.post(LOCK, &order(2, &[(1, 0)]), Some("k-bad")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, answer) = app.post(LOCK, &order(2, &[(1, 1)]), Some("k-bad")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(db.count("idempotency_keys").await, 2);
    app.stop().await;
    db.drop_database().await;
}

async fn keyed_confirms_and_cancels_are_replayed_too(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_app(&db).await;
    let (_, a) = app.lock(&order(2, &[(1, 1)])).await;
    let (_, b) = app.lock(&order(2, &[(1, 1)])).await;
    let (a, b) = (
        a["data"]["order_id"].as_i64().unwrap(),
        b["data"]["order_id"].as_i64().unwrap(),
    );
    let confirm = format!("/api/v1/order/{a}/confirm");
    let buyer = json!({"user_id": 2});

    let (status, headers, first) = app.post(&confirm, &buyer, Some("pay-a")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert!(!replayed(&headers));
    assert_eq!(first["data"]["status"], "confirmed");
    replay(&app, &confirm, &buyer, "pay-a", &first).await;

    // The key belongs to that confirm: on another endpoint, order or buyer it is a 422.
    for (path, body) in [
        (format!("/api/v1/order/{a}/cancel"), buyer.clone()),
        (format!("/api/v1/order/{b}/confirm"), buyer.clone()),
        (confirm.clone(), json!({"user_id": 3})),
        (LOCK.to_owned(), order(2, &[(1, 1)])),
    ] {
        let (status, _, answer) = app.post(&path, &body, Some("pay-a")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {answer}");
    }
    assert_eq!(db.status(b).await, "locked");

    // A keyed cancel, replayed after the order changed no more.
    let cancel = format!("/api/v1/order/{b}/cancel");
    let (status, _, first) = app.post(&cancel, &buyer, Some("drop-b")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    replay(&app, &cancel, &buyer, "drop-b", &first).await;
    assert_eq!(db.stocks().await[&1], 9);
    app.stop().await;
    db.drop_database().await;
}

/// While a request with a key is in progress, another with the same key is told so.
async fn a_key_in_progress_is_refused_with_409(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_app(&db).await;
    let key = kitara::domain::IdempotencyKey::parse(b"busy-key").unwrap();
    let claim = app.state.orders.keys.claim(&key).expect("free");
    let before = db.snapshot().await;

    for path in [LOCK.to_owned(), "/api/v1/order/1/confirm".to_owned()] {
        let (status, _, answer) = app
            .post(&path, &order(2, &[(1, 1)]), Some("busy-key"))
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{answer}");
        assert_eq!(
            answer["message"],
            "a request with this Idempotency-Key is in progress"
        );
    }
    assert_eq!(db.snapshot().await, before);
    drop(claim);
    let (status, _, answer) = app.post(LOCK, &order(2, &[(1, 1)]), Some("busy-key")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    app.stop().await;
    db.drop_database().await;
}

async fn keys_past_their_time_are_purged(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let old = match backend {
        Backend::Sqlite => "datetime('now', '-3 hours')",
        Backend::Mysql => "UTC_TIMESTAMP() - INTERVAL 3 HOUR",
    };
    // More old keys than one step of the purge's sweep looks at.
    let rows: Vec<String> = (0..2_500)
        .map(|i| format!("(X'{:08x}', X'{}', 1, {old})", i * 7_919, "00".repeat(16)))
        .collect();
    db.exec(&format!(
        "INSERT INTO idempotency_keys (idempotency_key, fingerprint, order_id, created_at) VALUES {}",
        rows.join(", ")
    ))
    .await;
    let app = spawn_app_with(&db, |s| s.idempotency_hours = 2).await;
    let (status, _, _) = app.post(LOCK, &order(2, &[(1, 1)]), Some("new")).await;
    assert_eq!(status, StatusCode::OK);

    let mut left: Value = Value::Null;
    for _ in 0..200 {
        left = json!(db.count("idempotency_keys").await);
        if left == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 1, "the old keys are purged, the new one kept");
    let (status, headers, _) = app.post(LOCK, &order(2, &[(1, 1)]), Some("new")).await;
    assert_eq!((status, replayed(&headers)), (StatusCode::OK, true));
    app.stop().await;
    db.drop_database().await;
}
