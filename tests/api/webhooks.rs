//! Webhooks (SPEC.md, release 3): every event POSTed in order per store, at least once,
//! signed, retried across an endpoint's outage; a hanging endpoint never holds orders
//! up; deliveries resume after a SIGKILL; bad settings are refused at start.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::Sha256;
use tokio::net::TcpListener;

use crate::events::add_users;
use crate::helpers::{ADMIN_TOKEN, Backend, TestDb, order, series, spawn_app_with, start_kitara};

crate::on_both_backends!(
    every_event_is_posted_in_order_signed_across_an_outage,
    a_hanging_endpoint_holds_no_order_up,
    deliveries_resume_after_a_sigkill_and_send_again_at_most_what_was_in_flight,
);

const SECRET: &str = "webhook-secret-0123456789";

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Accept,
    Refuse,
    Hang,
    /// Accepts after a pause: deliveries are in flight for a while.
    Slow(Duration),
}

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    body: Value,
    accepted: bool,
}

/// A webhook endpoint on a random port: it checks every signature and records every
/// POST.
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    got: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver {
            addr: listener.local_addr().unwrap(),
            mode: Arc::new(Mutex::new(mode)),
            got: Arc::default(),
        };
        let serving = receiver.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let serving = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| serving.clone().receive(request));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        receiver
    }

    fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    async fn receive(
        self,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let headers = request.headers().clone();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        // Verified as README tells a receiver to: HMAC-SHA256 of "<t>.<body>".
        let signature = headers["kitara-signature"].to_str().unwrap().to_owned();
        let (t, v1) = signature
            .strip_prefix("t=")
            .and_then(|rest| rest.split_once(",v1="))
            .expect("t=…,v1=…");
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(&body);
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(v1, expected, "a signature that does not verify");
        let age = chrono::Utc::now().timestamp() - t.parse::<i64>().unwrap();
        assert!(
            (0..=5).contains(&age),
            "signed {age} s ago: each attempt is signed afresh"
        );
        let mode = *self.mode.lock().unwrap();
        let accepted = match mode {
            Mode::Accept => true,
            Mode::Refuse => false,
            Mode::Hang => {
                std::future::pending::<()>().await;
                false
            }
            Mode::Slow(pause) => {
                tokio::time::sleep(pause).await;
                true
            }
        };
        self.got.lock().unwrap().push(Delivery {
            id: headers["kitara-event-id"].to_str().unwrap().to_owned(),
            body: serde_json::from_slice(&body).expect("a JSON event"),
            accepted,
        });
        let status = if accepted {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        Ok(response)
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until every event of `store` up to `last` was accepted.
    async fn wait_for(&self, store: i64, last: i64, within: Duration) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self.deliveries();
            let accepted = got
                .iter()
                .filter(|d| d.accepted && d.body["store_id"] == store)
                .filter_map(|d| d.body["seq"].as_i64())
                .max()
                .unwrap_or(0);
            if accepted >= last {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "store {store}'s events up to {last} not delivered in {within:?}; got up to {accepted}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Checks what a receiver got of `store`, whose events are 1..=`last`: each event's id
/// header names it; no event is POSTed before the one before it was accepted; every
/// one was accepted. Answers how many were sent again after being accepted.
fn check_order(got: &[Delivery], store: i64, last: i64) -> usize {
    let mut accepted_up_to = 0;
    let mut again = 0;
    for delivery in got.iter().filter(|d| d.body["store_id"] == store) {
        let seq = delivery.body["seq"].as_i64().unwrap();
        assert_eq!(delivery.id, format!("{store}:{seq}"));
        assert!(
            seq <= accepted_up_to + 1,
            "event {seq} POSTed before {} was accepted",
            accepted_up_to + 1
        );
        if seq <= accepted_up_to {
            again += 1;
        }
        if delivery.accepted && seq == accepted_up_to + 1 {
            accepted_up_to = seq;
        }
    }
    assert_eq!(
        accepted_up_to, last,
        "every event of store {store} accepted"
    );
    again
}

async fn every_event_is_posted_in_order_signed_across_an_outage(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    add_users(&db, 6).await;
    let receiver = Receiver::start(Mode::Refuse).await;
    let app = spawn_app_with(&db, |s| {
        s.admin_token = Some(ADMIN_TOKEN.into());
        s.webhook_url = Some(receiver.url());
        s.webhook_secret = Some(SECRET.into());
    })
    .await;
    // Orders in both stores while the endpoint refuses everything.
    for user in 1..=4 {
        assert_eq!(app.lock(&order(user, &[(1, 1)])).await.0, StatusCode::OK);
        assert_eq!(app.lock(&order(user, &[(3, 2)])).await.0, StatusCode::OK);
    }
    let mut waited = Duration::ZERO;
    while receiver.deliveries().len() < 4 {
        assert!(
            waited < Duration::from_secs(10),
            "no delivery tried during the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    let (_, metrics) = app.text("/metrics").await;
    assert!(series(&metrics, "kitara_webhook_failures_total{kind=\"status\"}") >= 2.0);
    assert!(
        series(&metrics, "kitara_webhook_lag_milliseconds") > 0.0,
        "{metrics}"
    );
    // The endpoint recovers; more orders come meanwhile.
    receiver.set(Mode::Accept);
    for user in 5..=6 {
        assert_eq!(app.lock(&order(user, &[(1, 1)])).await.0, StatusCode::OK);
    }
    let got = receiver.wait_for(1, 6, Duration::from_secs(30)).await;
    let got_2 = receiver.wait_for(2, 4, Duration::from_secs(30)).await;
    check_order(&got, 1, 6);
    check_order(&got_2, 2, 4);
    // The body is the event exactly as the stream sends it.
    let first = got
        .iter()
        .find(|d| d.accepted && d.body["seq"] == 1 && d.body["store_id"] == 1)
        .unwrap();
    assert_eq!(first.body["type"], "order.locked");
    assert_eq!(first.body["data"]["user_id"], 1);
    // Positions are stored as they are acknowledged.
    let mut waited = Duration::ZERO;
    while db
        .query_i64s("SELECT store_id, delivered FROM kitara_webhook_positions ORDER BY store_id")
        .await
        != vec![vec![1, 6], vec![2, 4]]
    {
        assert!(waited < Duration::from_secs(10), "positions not stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    let (_, metrics) = app.text("/metrics").await;
    assert_eq!(series(&metrics, "kitara_webhook_deliveries_total"), 10.0);
    assert_eq!(series(&metrics, "kitara_webhook_lag_milliseconds"), 0.0);
    app.stop().await;
    db.drop_database().await;
}

async fn a_hanging_endpoint_holds_no_order_up(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    db.exec("UPDATE products SET current_stock = 1000 WHERE id = 1")
        .await;
    add_users(&db, 10).await;
    let receiver = Receiver::start(Mode::Hang).await;
    let app = spawn_app_with(&db, |s| {
        s.webhook_url = Some(receiver.url());
        s.webhook_secret = Some(SECRET.into());
        s.webhook_timeout = Duration::from_millis(300);
    })
    .await;
    // Every order is answered while every delivery hangs; each within a bound far
    // above a lock's time on an idle machine (a few ms) and far below the hang.
    for i in 0..100 {
        let started = tokio::time::Instant::now();
        let (status, body) = app.lock(&order(i % 10 + 1, &[(1, 1)])).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a lock waited for the endpoint"
        );
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, metrics) = app.text("/metrics").await;
    assert!(
        series(&metrics, "kitara_webhook_failures_total{kind=\"timeout\"}") >= 1.0,
        "{metrics}"
    );
    assert_eq!(series(&metrics, "kitara_webhook_deliveries_total"), 0.0);
    // Only the first event was tried: nothing is POSTed before it is accepted.
    receiver.set(Mode::Accept);
    let got = receiver.wait_for(1, 100, Duration::from_secs(30)).await;
    check_order(&got, 1, 100);
    app.stop().await;
    db.drop_database().await;
}

async fn deliveries_resume_after_a_sigkill_and_send_again_at_most_what_was_in_flight(
    backend: Backend,
) {
    let db = TestDb::with_demo_data(backend).await;
    db.exec("UPDATE products SET current_stock = 1000 WHERE id = 1")
        .await;
    add_users(&db, 10).await;
    // Each delivery takes 20 ms: the kill finds one in flight.
    let receiver = Receiver::start(Mode::Slow(Duration::from_millis(20))).await;
    let url = receiver.url();
    let envs = [
        ("KITARA_WEBHOOK_URL", url.as_str()),
        ("KITARA_WEBHOOK_SECRET", SECRET),
    ];
    let (mut child, api, _logs) = start_kitara(&db.url, &envs).await;
    for i in 0..60 {
        assert_eq!(
            api.lock(&order(i % 10 + 1, &[(1, 1)])).await.0,
            StatusCode::OK
        );
    }
    // Killed once some events were delivered, with others still to go.
    let mut waited = Duration::ZERO;
    while receiver.deliveries().len() < 10 {
        assert!(
            waited < Duration::from_secs(20),
            "no delivery before the kill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
    }
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
    let before = receiver.deliveries().len();
    assert!(
        before < 60,
        "everything was delivered before the kill: it shows nothing"
    );
    let (mut child, api, _logs) = start_kitara(&db.url, &envs).await;
    let got = receiver.wait_for(1, 60, Duration::from_secs(30)).await;
    let again = check_order(&got, 1, 60);
    // What was acknowledged but whose position had not landed, and what was in flight:
    // a few, never the whole history.
    assert!(again <= 3, "{again} events sent again after the restart");
    assert_eq!(api.lock(&order(1, &[(1, 1)])).await.0, StatusCode::OK);
    receiver.wait_for(1, 61, Duration::from_secs(10)).await;
    child.start_kill().ok();
    let _ = child.wait().await;
    db.drop_database().await;
}

/// `serve` refuses bad webhook settings before it listens, naming the variable.
#[tokio::test]
async fn bad_webhook_settings_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("k.db").display());
    for (envs, message) in [
        (
            vec![
                ("KITARA_WEBHOOK_URL", "ftp://shop.example/hooks"),
                ("KITARA_WEBHOOK_SECRET", SECRET),
            ],
            "KITARA_WEBHOOK_URL must be an http:// or https:// URL",
        ),
        (
            vec![("KITARA_WEBHOOK_URL", "http://shop.example/hooks")],
            "KITARA_WEBHOOK_URL needs KITARA_WEBHOOK_SECRET",
        ),
        (
            vec![
                ("KITARA_WEBHOOK_URL", "https://shop.example/hooks"),
                ("KITARA_WEBHOOK_SECRET", "fifteen-chars-x"),
            ],
            "KITARA_WEBHOOK_SECRET must be at least 16 characters",
        ),
        (
            vec![
                ("KITARA_WEBHOOK_URL", "https://shop.example/hooks"),
                ("KITARA_WEBHOOK_SECRET", SECRET),
                ("KITARA_EVENTS", "false"),
            ],
            "KITARA_WEBHOOK_URL needs events",
        ),
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kitara"))
            .arg("serve")
            .env("DATABASE_URL", &url)
            .env("KITARA_PORT", "0")
            .envs(envs.iter().copied())
            .output()
            .await
            .expect("run kitara serve");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert_ne!(output.status.code(), Some(0), "{envs:?}: {text}");
        assert!(text.contains(message), "{envs:?}: {text}");
        assert!(!text.contains("listening"), "{envs:?}: {text}");
    }
}
