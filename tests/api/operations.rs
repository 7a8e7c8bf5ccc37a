//! Operations (SPEC.md, release 2): request ids in every answer and on the log lines of
//! their request; readiness (the database going away is in `outcome`, on MariaDB).

use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};

use crate::helpers::{Api, Backend, TestDb, order, series, spawn_admin_app, start_kitara};

async fn request_id(api: &Api, raw_header: &str) -> String {
    let request =
        format!("GET /healthz HTTP/1.1\r\nHost: kitara\r\n{raw_header}Connection: close\r\n\r\n");
    let answer = api.raw(request.as_bytes()).await;
    answer
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("no x-request-id in {answer:?}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id() {
    let db = TestDb::with_demo_data(Backend::Sqlite).await;
    let app = spawn_admin_app(&db).await;

    assert_eq!(
        request_id(&app, "X-Request-Id: order-7f3a\r\n").await,
        "order-7f3a"
    );
    let longest = "x".repeat(128);
    assert_eq!(
        request_id(&app, &format!("X-Request-Id: {longest}\r\n")).await,
        longest
    );
    let made: Vec<String> = [
        "",
        &format!("X-Request-Id: {}\r\n", "x".repeat(129)),
        "X-Request-Id: caf\u{e9}\r\n",
        "X-Request-Id: a b\r\n",
        "X-Request-Id: one\r\nX-Request-Id: two\r\n",
    ]
    .iter()
    .map(|header| request_id(&app, header))
    .collect::<futures_util::future::JoinAll<_>>()
    .await;
    for id in &made {
        assert_eq!(id.len(), 25, "{id:?}: replaced by one Kitara made");
        assert!(
            id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
            "{id}"
        );
    }
    let distinct: std::collections::BTreeSet<&String> = made.iter().collect();
    assert_eq!(distinct.len(), made.len());

    // Ready: the stores are loaded and the database answers.
    let (status, _, body) = app
        .request(Method::GET, "/readyz", None, Bytes::new())
        .await;
    assert_eq!(
        (status, &body["data"]),
        (StatusCode::OK, &serde_json::json!("ready"))
    );

    // Refusals and errors carry one too.
    let (status, headers, _) = app
        .request(Method::GET, "/nowhere", None, Bytes::new())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(headers.contains_key("x-request-id"));
    let (status, headers, _) = app
        .request(
            Method::POST,
            "/api/v1/order/lock",
            Some("application/json"),
            "{",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(headers.contains_key("x-request-id"));
    let (status, headers, _) = app
        .admin_raw(Method::GET, "/api/v1/admin/orders", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.contains_key("x-request-id"));
    app.stop().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_on_the_log_lines_of_their_request() {
    let db = TestDb::with_demo_data(Backend::Sqlite).await;
    for format in ["text", "json"] {
        let (mut child, api, mut logs) = start_kitara(
            &db.url,
            &[
                ("KITARA_LOG", "info,kitara::http=debug"),
                ("KITARA_LOG_FORMAT", format),
            ],
        )
        .await;
        let id = format!("trace-me-{format}");
        let request = format!(
            "POST /api/v1/order/lock HTTP/1.1\r\nHost: kitara\r\nX-Request-Id: {id}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            order(2, &[(1, 1)]).to_string().len(),
            order(2, &[(1, 1)])
        );
        let answer = api.raw(request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let line = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(line) = logs.recv().await {
                if line.contains("answered") && line.contains(&id) {
                    return line;
                }
            }
            panic!("kitara exited");
        })
        .await
        .unwrap_or_else(|_| panic!("no {format} log line with the request id {id}"));
        if format == "json" {
            let value: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
            assert_eq!(value["span"]["request_id"], id.as_str(), "{line}");
        } else {
            assert!(line.contains(&format!("request_id={id}")), "{line}");
        }
        child.kill().await.ok();
    }
    db.drop_database().await;
}

async fn metrics_text(app: &crate::helpers::TestApp) -> String {
    let request = "GET /metrics HTTP/1.1\r\nHost: kitara\r\nConnection: close\r\n\r\n";
    let answer = app.raw(request.as_bytes()).await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("an answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    body.to_owned()
}

async fn metrics_count_a_flash_sale(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = std::sync::Arc::new(
        crate::helpers::spawn_app_at(&db, crate::helpers::manual_clock(), |_| {}).await,
    );
    // 30 concurrent orders of one unit on masker (stock 10), held for 5 s.
    let mut held = order(2, &[(1, 1)]);
    held["hold_seconds"] = serde_json::json!(5);
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let app = app.clone();
            let held = held.clone();
            tokio::spawn(async move { app.lock(&held).await })
        })
        .collect();
    let mut placed = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        if status == StatusCode::OK {
            placed.push(body["data"]["order_id"].as_i64().expect("order_id"));
        }
    }
    assert_eq!(placed.len(), 10);
    let (status, _) = app.lock(&order(99, &[(1, 1)])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let text = metrics_text(&app).await;
    assert_eq!(
        series(&text, r#"kitara_lock_outcomes_total{result="placed"}"#),
        10.0
    );
    let refused = series(
        &text,
        r#"kitara_lock_outcomes_total{result="none_available"}"#,
    ) + series(
        &text,
        r#"kitara_lock_outcomes_total{result="some_available"}"#,
    );
    assert_eq!(refused, 20.0);
    assert_eq!(
        series(
            &text,
            r#"kitara_lock_outcomes_total{result="user_not_found"}"#
        ),
        1.0
    );
    assert_eq!(
        series(
            &text,
            r#"kitara_http_requests_total{route="lock",status="200"}"#
        ),
        10.0
    );
    assert_eq!(
        series(
            &text,
            r#"kitara_http_requests_total{route="lock",status="400"}"#
        ),
        21.0
    );
    assert_eq!(
        series(
            &text,
            r#"kitara_http_request_duration_seconds_count{route="lock"}"#
        ),
        31.0
    );
    let orders = series(&text, "kitara_orders_per_commit_sum");
    assert_eq!(orders, 10.0);
    assert!(series(&text, "kitara_commit_duration_seconds_count") >= 1.0);
    assert_eq!(series(&text, "kitara_holds_active"), 10.0);
    assert_eq!(series(&text, "kitara_expiries_total"), 0.0);
    assert_eq!(series(&text, "kitara_mailbox_depth_max"), 0.0);
    assert_eq!(series(&text, "kitara_writer_queue_depth"), 0.0);
    assert!(text.contains(r#"kitara_database_errors_total{kind="refused"} 0"#));
    assert!(text.trim_end().ends_with("# EOF"), "{text}");

    // One hold is confirmed and one cancelled, the others expire: only those count as
    // expiries, and none is active any more.
    for (id, action) in placed.iter().zip(["confirm", "cancel"]) {
        let (status, body) = app.end(*id, action, 2).await;
        assert_eq!(status, StatusCode::OK, "{action}: {body}");
    }
    app.advance(Duration::from_secs(6)).await;
    let text = metrics_text(&app).await;
    assert_eq!(series(&text, "kitara_expiries_total"), 8.0);
    assert_eq!(series(&text, "kitara_holds_active"), 0.0);
    // /metrics counts itself too.
    assert!(text.contains(r#"kitara_http_requests_total{route="metrics",status="200"} 1"#));
    crate::helpers::TestApp::stop_shared(app).await;
    db.drop_database().await;
}

crate::on_both_backends!(metrics_count_a_flash_sale);
