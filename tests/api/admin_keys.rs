//! `Idempotency-Key` on the admin writes (SPEC.md, release 3): each write stores its key
//! with its answer in its own transaction; a retry gets that answer again with
//! `Idempotent-Replayed: true` and changes nothing; another request with the key is a
//! 422, one while the first is in progress a 409; keys are one namespace with the
//! order endpoints'. A restock retried after a COMMIT cut is in `outcome`.

use std::sync::Arc;

use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, TestDb, spawn_app_with};

crate::on_both_backends!(
    every_admin_write_applies_once_and_replays_its_answer,
    concurrent_retries_of_a_keyed_restock_apply_once,
);

async fn admin_app(db: &TestDb) -> TestApp {
    spawn_app_with(db, |s| s.admin_token = Some(ADMIN_TOKEN.into())).await
}

/// Sends `first`, then `again` (the same request written otherwise) and `other` (another
/// request) with the same key: the first is answered `status`, the second the same with
/// `Idempotent-Replayed`, the third 422. Answers the first answer's data.
async fn once(
    app: &TestApp,
    method: Method,
    path: &str,
    key: &str,
    [first, again, other]: [Option<&str>; 3],
    status: StatusCode,
) -> Value {
    let (got, headers, answer) = app.admin_keyed(method.clone(), path, key, first).await;
    assert_eq!(got, status, "{method} {path}: {answer}");
    assert!(!headers.contains_key("idempotent-replayed"));
    let (got, headers, replay) = app.admin_keyed(method.clone(), path, key, again).await;
    assert_eq!(got, status, "{method} {path} again: {replay}");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(
        (&replay["message"], &replay["data"]),
        (&answer["message"], &answer["data"])
    );
    let (got, _, reused) = app.admin_keyed(method.clone(), path, key, other).await;
    assert_eq!(
        (got, reused["message"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("Idempotency-Key reused with a different request")
        ),
        "{method} {path} other"
    );
    answer["data"].clone()
}

async fn every_admin_write_applies_once_and_replays_its_answer(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = admin_app(&db).await;
    let count = |table: &'static str| db.count(table);

    let user = once(
        &app,
        Method::POST,
        "/api/v1/admin/users",
        "u-1",
        [
            Some(r#"{"name": "Zoë \"z\""}"#),
            Some(r#"{ "name":"Zoë \"z\"" }"#),
            Some(r#"{"name": "Zed"}"#),
        ],
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(user["name"], "Zoë \"z\"");
    assert_eq!(count("users").await, 4);

    let store = once(
        &app,
        Method::POST,
        "/api/v1/admin/stores",
        "s-1",
        [
            Some(r#"{"store_name": "kiosk", "user_id": 2}"#),
            Some(r#"{"user_id": 2, "store_name": "kiosk"}"#),
            Some(r#"{"store_name": "kiosk", "user_id": 3}"#),
        ],
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(count("stores").await, 3);

    let body = format!(
        r#"{{"product_name": "tea", "store_id": {}, "current_stock": 7}}"#,
        store["id"]
    );
    let product = once(
        &app,
        Method::POST,
        "/api/v1/admin/products",
        "p-1",
        [
            Some(&body),
            Some(&body),
            Some(r#"{"product_name": "tea", "store_id": 1, "current_stock": 7}"#),
        ],
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(count("products").await, 4);
    let id = product["id"].as_i64().unwrap();

    let stock = format!("/api/v1/admin/products/{id}/stock");
    let restocked = once(
        &app,
        Method::POST,
        &stock,
        "r-1",
        [
            Some(r#"{"delta": 5, "reason": "truck"}"#),
            Some(r#"{"reason": "truck", "delta": 5}"#),
            Some(r#"{"delta": 6, "reason": "truck"}"#),
        ],
        StatusCode::OK,
    )
    .await;
    assert_eq!(restocked["current_stock"], 12);
    // The same key on another product's stock is another request.
    let (status, _, _) = app
        .admin_keyed(
            Method::POST,
            "/api/v1/admin/products/1/stock",
            "r-1",
            Some(r#"{"delta": 5, "reason": "truck"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let movements = db
        .query_i64s(&format!(
            "SELECT COUNT(*) FROM stock_movements WHERE product_id = {id}"
        ))
        .await[0][0];
    assert_eq!(movements, 2, "created, then one restock");
    assert_eq!(db.stocks().await[&id], 12);

    let path = format!("/api/v1/admin/products/{id}");
    let edited = once(
        &app,
        Method::PATCH,
        &path,
        "e-1",
        [
            Some(r#"{"max_per_customer": 2}"#),
            Some(r#"{ "max_per_customer" : 2 }"#),
            Some(r#"{"max_per_customer": 3}"#),
        ],
        StatusCode::OK,
    )
    .await;
    assert_eq!(edited["max_per_customer"], 2);

    // A later change does not change what a replay of an earlier one answers.
    let again = app
        .admin_keyed(
            Method::POST,
            &stock,
            "r-1",
            Some(r#"{"delta": 5, "reason": "truck"}"#),
        )
        .await
        .2;
    assert_eq!(again["data"], restocked);

    // A deletion has no body: a retry is always the same request.
    let (status, headers, first) = app.admin_keyed(Method::DELETE, &path, "d-1", None).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert!(!headers.contains_key("idempotent-replayed"));
    let (status, headers, replay) = app.admin_keyed(Method::DELETE, &path, "d-1", None).await;
    assert_eq!(
        (status, &headers["idempotent-replayed"]),
        (StatusCode::OK, &"true".parse().unwrap())
    );
    assert_eq!(replay["data"], first["data"]);
    assert_eq!(first["data"]["current_stock"], 12);
    assert_eq!(
        db.query_i64s(&format!(
            "SELECT COUNT(*) FROM products WHERE id = {id} AND deleted_at IS NOT NULL"
        ))
        .await[0][0],
        1
    );

    // One namespace: a key an admin write stored is another request for an order.
    let (status, _, answer) = app
        .post(
            "/api/v1/order/lock",
            &crate::helpers::order(1, &[(1, 1)]),
            Some("u-1"),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(db.unbalanced().await.is_empty());
    app.stop().await;
    db.drop_database().await;
}

async fn concurrent_retries_of_a_keyed_restock_apply_once(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = Arc::new(admin_app(&db).await);
    let before = db.stocks().await[&1];
    let tries: Vec<_> = (0..20)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                app.admin_keyed(
                    Method::POST,
                    "/api/v1/admin/products/1/stock",
                    "same-truck",
                    Some(r#"{"delta": 4, "reason": "same truck"}"#),
                )
                .await
            })
        })
        .collect();
    let mut applied = Vec::new();
    for attempt in tries {
        let (status, headers, answer) = attempt.await.unwrap();
        match status {
            StatusCode::OK => applied.push((
                headers.contains_key("idempotent-replayed"),
                answer["data"].clone(),
            )),
            StatusCode::CONFLICT => assert_eq!(
                answer["message"],
                "a request with this Idempotency-Key is in progress"
            ),
            other => panic!("{other}: {answer}"),
        }
    }
    assert_eq!(
        applied.iter().filter(|(replayed, _)| !replayed).count(),
        1,
        "one fresh answer: {applied:?}"
    );
    for (_, data) in &applied {
        assert_eq!(data["current_stock"], before + 4);
    }
    let movements = db
        .query_i64s("SELECT COUNT(*) FROM stock_movements WHERE reason = 'same truck'")
        .await[0][0];
    assert_eq!((movements, db.stocks().await[&1]), (1, before + 4));
    TestApp::stop_shared(app).await;
    db.drop_database().await;
}
