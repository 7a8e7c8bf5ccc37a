//! Crash durability: the real binary is SIGKILLed in the middle of a burst and started
//! again on the same database; every order answered 200 is there, as answered.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::StatusCode;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::{Api, Backend, TestDb, order};

crate::on_both_backends!(orders_answered_200_survive_a_sigkill);

/// Starts `kitara serve` on a free port and waits until it listens.
async fn start_kitara(db: &TestDb) -> (Child, Api) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kitara"))
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .env("DATABASE_URL", &db.url)
        .env("KITARA_LOG", "info")
        .env("KITARA_LOG_FORMAT", "text")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start kitara");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some((_, addr)) = line.split_once("listening address=") {
                return addr.trim().parse().expect("address");
            }
        }
        panic!("kitara exited before listening");
    })
    .await
    .expect("kitara listens within a minute");
    // Keep draining its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, Api::new(addr))
}

async fn orders_answered_200_survive_a_sigkill(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    db.exec("UPDATE products SET current_stock = 100000 WHERE id IN (1, 2)")
        .await;
    let initial = db.stocks().await;
    let (mut child, api) = start_kitara(&db).await;
    let api = Arc::new(api);

    let served = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let api = api.clone();
            let served = served.clone();
            tokio::spawn(async move {
                let mut answered = Vec::new();
                for i in 0..10_000 {
                    let body = order(1 + (c % 3), &[(1, 1 + (i % 3)), (2, 1)]);
                    match api.try_lock(&body).await {
                        Some((StatusCode::OK, answer)) => {
                            served.fetch_add(1, Ordering::Relaxed);
                            answered.push((1 + (c % 3), answer));
                        }
                        Some((status, answer)) => panic!("status {status}: {answer}"),
                        None => break,
                    }
                }
                answered
            })
        })
        .collect();
    while served.load(Ordering::Relaxed) < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.start_kill().expect("SIGKILL");
    child.wait().await.unwrap();
    let mut answered = Vec::new();
    for client in clients {
        answered.extend(client.await.unwrap());
    }
    assert!(answered.len() >= 300);

    let (mut child, api) = start_kitara(&db).await;
    for (buyer, answer) in &answered {
        db.assert_order_stored(answer, *buyer).await;
    }
    db.assert_invariants(&initial).await;
    assert_eq!(api.listed_stocks().await, db.stocks().await);
    let (status, body) = api.lock(&order(2, &[(1, 1)])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    db.assert_order_stored(&body, 2).await;

    child.start_kill().ok();
    child.wait().await.ok();
    db.drop_database().await;
}
