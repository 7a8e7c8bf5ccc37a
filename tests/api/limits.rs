//! Flash-sale limits per customer (SPEC.md, release 2): `products.max_per_customer`,
//! judged by the store's actor over the buyer's locked and confirmed orders, after the
//! one-store rule and before availability; a buyer firing many requests at once cannot
//! pass it.

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;

use crate::helpers::{Backend, TestDb, manual_clock, order, spawn_app, spawn_app_at};

crate::on_both_backends!(
    a_buyer_stays_within_the_limit_over_locked_and_confirmed_orders,
    the_limit_is_judged_after_the_store_and_before_availability,
    a_buyer_firing_forty_orders_at_a_limit_of_three_gets_three,
);

const LIMITED: &str = "purchase limit per customer exceeded";

async fn a_buyer_stays_within_the_limit_over_locked_and_confirmed_orders(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    db.exec("UPDATE products SET max_per_customer = 3 WHERE id = 1")
        .await;
    let app = spawn_app_at(&db, manual_clock(), |_| {}).await;

    let (status, first) = app.lock(&order(2, &[(1, 2)])).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let first = first["data"]["order_id"].as_i64().unwrap();
    let before = db.snapshot().await;
    let (status, body) = app.lock(&order(2, &[(1, 2)])).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (StatusCode::BAD_REQUEST, Some(LIMITED))
    );
    assert!(body["data"].is_null());
    // The whole order is refused, its other lines too.
    let (status, body) = app.lock(&order(2, &[(1, 2), (2, 1)])).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (StatusCode::BAD_REQUEST, Some(LIMITED))
    );
    assert_eq!(db.snapshot().await, before);
    // Up to the limit, and others on their own.
    let (status, _) = app.lock(&order(2, &[(1, 1), (2, 5)])).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.lock(&order(3, &[(1, 3)])).await;
    assert_eq!(status, StatusCode::OK);

    // A confirmed order still counts; a cancelled or expired one frees its units.
    let (status, _) = app.end(first, "confirm", 2).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app.lock(&order(2, &[(1, 1)])).await;
    assert_eq!(body["message"], LIMITED, "{status}");
    let (status, _) = app.end(first + 1, "cancel", 2).await;
    assert_eq!(status, StatusCode::OK);
    let mut held = order(2, &[(1, 1)]);
    held["hold_seconds"] = serde_json::json!(5);
    let (status, _) = app.lock(&held).await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = app.lock(&order(2, &[(1, 1)])).await;
    assert_eq!(body["message"], LIMITED);
    app.advance(Duration::from_secs(5)).await;
    let (status, body) = app.lock(&order(2, &[(1, 1)])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.stop().await;

    // After a restart the limit counts what the database holds.
    let app = spawn_app(&db).await;
    let (_, body) = app.lock(&order(2, &[(1, 1)])).await;
    assert_eq!(body["message"], LIMITED);
    let (_, body) = app.lock(&order(3, &[(1, 1)])).await;
    assert_eq!(body["message"], LIMITED);
    app.stop().await;
    db.drop_database().await;
}

async fn the_limit_is_judged_after_the_store_and_before_availability(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    db.exec("UPDATE products SET max_per_customer = 2 WHERE id = 1")
        .await;
    db.exec("UPDATE products SET current_stock = 0 WHERE id = 1")
        .await;
    let app = spawn_app(&db).await;
    let before = db.snapshot().await;

    // Rule 4 and 5 first.
    let (_, body) = app.lock(&order(42, &[(1, 5)])).await;
    assert_eq!(body["message"], "user not found");
    let (_, body) = app.lock(&order(2, &[(1, 5), (3, 1)])).await;
    assert_eq!(body["message"], "product must in same store");
    // Then the limit, although nothing is left (the sold-out fast path does not apply).
    let (status, body) = app.lock(&order(2, &[(1, 5)])).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (StatusCode::BAD_REQUEST, Some(LIMITED))
    );
    // Within the limit, availability answers.
    let (_, body) = app.lock(&order(2, &[(1, 2)])).await;
    assert_eq!(body["message"], "all product not available");
    let (_, body) = app.lock(&order(2, &[(1, 2), (2, 1)])).await;
    assert_eq!(body["message"], "some product not available");
    assert_eq!(db.snapshot().await, before);
    app.stop().await;
    db.drop_database().await;
}

async fn a_buyer_firing_forty_orders_at_a_limit_of_three_gets_three(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    db.exec("UPDATE products SET max_per_customer = 3, current_stock = 100 WHERE id = 1")
        .await;
    let app = Arc::new(spawn_app(&db).await);

    let answers: Vec<_> = (0..40)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.lock(&order(2, &[(1, 1)])).await })
        })
        .collect();
    let placed = crate::helpers::count_placed(answers, LIMITED).await;

    assert_eq!(placed, 3);
    assert_eq!(db.count("orders").await, 3);
    assert_eq!(db.stocks().await[&1], 97);
    assert_eq!(app.listed_stocks().await[&1], 97);
    crate::helpers::TestApp::stop_shared(app).await;
    db.drop_database().await;
}
