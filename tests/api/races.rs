//! Concurrency of release 2: confirms, cancels and expiry racing on the same holds, one
//! key retried fifty times at once, and a burst of holds on scarce stock that all come
//! back once they expire. Real concurrent requests against a real server; the
//! invariants of SPEC.md are checked in SQL afterwards.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::json;

use crate::helpers::{
    Api, Backend, TestDb, manual_clock, order, spawn_app, spawn_app_at, start_kitara,
};

crate::on_both_backends!(
    confirm_cancel_and_expiry_racing_on_a_hold_end_it_once,
    fifty_concurrent_requests_with_one_key_place_one_order,
    fifty_concurrent_requests_with_one_key_place_one_order_in_the_binary,
    confirm_and_cancel_racing_end_each_hold_once_in_the_binary,
    a_burst_of_holds_on_scarce_stock_all_comes_back_when_they_expire,
);

const HOLDS: i64 = 60;

async fn confirm_cancel_and_expiry_racing_on_a_hold_end_it_once(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    db.exec("UPDATE products SET current_stock = 1000 WHERE id IN (1, 2)")
        .await;
    let initial = db.stocks().await;
    let app = Arc::new(spawn_app_at(&db, manual_clock(), |_| {}).await);
    let mut ids = Vec::new();
    for i in 0..HOLDS {
        let mut body = order(2, &[(1 + i % 2, 1 + i % 3)]);
        body["hold_seconds"] = json!(10);
        let (status, answer) = app.lock(&body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        ids.push(answer["data"]["order_id"].as_i64().unwrap());
    }

    // Every hold gets a confirm and a cancel at once. The first third races before the
    // deadline, the middle third while the clock passes it, the last third after it.
    let race = |id: i64, action: &'static str| {
        let app = app.clone();
        tokio::spawn(async move { (id, action, app.end(id, action, 2).await) })
    };
    let thirds: Vec<&[i64]> = ids.chunks(ids.len() / 3).collect();
    let mut races = Vec::new();
    for (third, holds) in thirds.iter().enumerate() {
        let started: Vec<_> = holds
            .iter()
            .flat_map(|&id| [race(id, "confirm"), race(id, "cancel")])
            .collect();
        if third == 1 {
            let clock = app.state.clock.clone();
            tokio::spawn(async move { clock.advance(Duration::from_secs(10)) })
                .await
                .unwrap();
        }
        for started in started {
            races.push(started.await.unwrap());
        }
    }
    let mut answers: std::collections::BTreeMap<i64, Vec<(&str, StatusCode, String)>> =
        Default::default();
    for (id, action, (status, body)) in races {
        let message = body["message"].as_str().unwrap().to_owned();
        answers
            .entry(id)
            .or_default()
            .push((action, status, message));
    }
    app.state.settle_due().await;

    let mut endings = BTreeSet::new();
    for (id, answers) in &answers {
        let status = db.status(*id).await;
        endings.insert(status.clone());
        let winners: Vec<_> = answers.iter().filter(|a| a.1 == StatusCode::OK).collect();
        match status.as_str() {
            // The winner got 200, the loser 409 naming where the winner took it.
            "confirmed" | "cancelled" => {
                let action = if status == "confirmed" {
                    "confirm"
                } else {
                    "cancel"
                };
                assert_eq!(winners.len(), 1, "order {id}: {answers:?}");
                assert_eq!(winners[0].0, action, "order {id}: {answers:?}");
                let loser = answers.iter().find(|a| a.0 != action).unwrap();
                assert_eq!(
                    (loser.1, loser.2.as_str()),
                    (StatusCode::CONFLICT, format!("order is {status}").as_str()),
                    "order {id}"
                );
            }
            "expired" => {
                for answer in answers {
                    assert_eq!(
                        (answer.1, answer.2.as_str()),
                        (StatusCode::CONFLICT, "order is expired"),
                        "order {id}"
                    );
                }
            }
            other => panic!("order {id} ended {other}: {answers:?}"),
        }
    }
    // Holds raced before the deadline and after it: both kinds of ending happened.
    assert!(endings.contains("expired"), "{endings:?}");
    assert!(endings.len() >= 2, "{endings:?}");
    assert_eq!(answers.len(), ids.len());
    db.assert_settled(&initial, &app).await;
    crate::helpers::TestApp::stop_shared(app).await;
    db.drop_database().await;
}

async fn fifty_concurrent_requests_with_one_key_place_one_order(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_app(&db).await;
    fifty_requests_with_one_key(&Api::new(app.addr), &db).await;
    app.stop().await;
    db.drop_database().await;
}

/// The same against the real binary, scheduled as users run it.
async fn fifty_concurrent_requests_with_one_key_place_one_order_in_the_binary(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let (mut child, api, _logs) = start_kitara(&db.url, &[]).await;
    fifty_requests_with_one_key(&api, &db).await;
    child.start_kill().ok();
    child.wait().await.ok();
    db.drop_database().await;
}

async fn fifty_requests_with_one_key(api: &Api, db: &TestDb) {
    let initial = db.stocks().await;
    let body = order(2, &[(1, 1), (2, 1)]);
    let requests = (0..50).map(|_| api.post("/api/v1/order/lock", &body, Some("one-click")));
    let mut orders = BTreeSet::new();
    let mut in_progress = 0;
    for (status, _, body) in futures_util::future::join_all(requests).await {
        match status {
            StatusCode::OK => {
                orders.insert(body["data"].to_string());
            }
            StatusCode::CONFLICT => {
                assert_eq!(
                    body["message"],
                    "a request with this Idempotency-Key is in progress"
                );
                in_progress += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }

    assert_eq!(orders.len(), 1, "every 200 is the same order: {orders:?}");
    assert!(in_progress < 50);
    assert_eq!(db.count("orders").await, 1);
    assert_eq!(db.stocks().await, [(1, 9), (2, 4), (3, 20)].into());
    db.assert_invariants(&initial).await;
}

/// Against the real binary: a confirm and a cancel at once on each of many holds. Each
/// hold ends once: one 200, one 409 naming where the winner took it, and the stored
/// status and stock agree.
async fn confirm_and_cancel_racing_end_each_hold_once_in_the_binary(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    db.exec("UPDATE products SET current_stock = 1000 WHERE id IN (1, 2)")
        .await;
    let initial = db.stocks().await;
    let (mut child, api, _logs) = start_kitara(&db.url, &[]).await;
    let mut ids = Vec::new();
    for i in 0..HOLDS {
        let (status, answer) = api.lock(&order(2, &[(1 + i % 2, 1 + i % 3)])).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        ids.push(answer["data"]["order_id"].as_i64().unwrap());
    }
    let api = &api;
    let races = ids.iter().map(|&id| async move {
        let (confirm, cancel) = tokio::join!(api.end(id, "confirm", 2), api.end(id, "cancel", 2));
        (id, confirm, cancel)
    });
    for (id, (confirm, confirmed), (cancel, cancelled)) in
        futures_util::future::join_all(races).await
    {
        let stored = db.status(id).await;
        let (winner, loser) = match stored.as_str() {
            "confirmed" => ((confirm, &confirmed), (cancel, &cancelled)),
            "cancelled" => ((cancel, &cancelled), (confirm, &confirmed)),
            other => panic!("order {id} ended {other}"),
        };
        assert_eq!(winner.0, StatusCode::OK, "order {id}: {}", winner.1);
        assert_eq!(winner.1["data"]["status"], stored.as_str());
        assert_eq!(loser.0, StatusCode::CONFLICT, "order {id}: {}", loser.1);
        assert_eq!(loser.1["message"], format!("order is {stored}"));
    }
    db.assert_settled(&initial, api).await;
    child.start_kill().ok();
    child.wait().await.ok();
    db.drop_database().await;
}

async fn a_burst_of_holds_on_scarce_stock_all_comes_back_when_they_expire(backend: Backend) {
    const STOCK: i64 = 50;
    const BURST: usize = 300;
    let db = TestDb::with_demo_data(backend).await;
    db.exec(&format!(
        "UPDATE products SET current_stock = {STOCK} WHERE id = 1"
    ))
    .await;
    let initial = db.stocks().await;
    let app = Arc::new(spawn_app_at(&db, manual_clock(), |_| {}).await);

    let answers: Vec<_> = (0..BURST)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut body = order(1 + (i as i64 % 3), &[(1, 1)]);
                body["hold_seconds"] = json!(60 + (i as i64 % 5));
                app.lock(&body).await
            })
        })
        .collect();
    let placed = crate::helpers::count_placed(answers, "all product not available").await;
    assert_eq!(placed as i64, STOCK);
    assert_eq!(db.stocks().await[&1], 0);
    assert_eq!(app.listed_stocks().await[&1], 0);
    db.assert_invariants(&initial).await;

    app.advance(Duration::from_secs(65)).await;

    assert_eq!(db.stocks().await[&1], STOCK);
    assert_eq!(app.listed_stocks().await[&1], STOCK);
    let expired = db
        .query_i64s("SELECT COUNT(*) FROM orders WHERE status = 'expired'")
        .await;
    assert_eq!(expired[0][0], STOCK);
    db.assert_invariants(&initial).await;
    // And the units sell again.
    let (status, body) = app.lock(&order(2, &[(1, STOCK)])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    crate::helpers::TestApp::stop_shared(app).await;
    db.drop_database().await;
}
