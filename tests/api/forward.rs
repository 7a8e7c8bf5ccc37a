//! The endpoint nodes forward through (`POST /api/v1/cluster/forward`), sent batches by
//! hand: each request inside is answered as the same request sent alone, only writes
//! are taken, and a batch that is malformed, of the wrong type or too large is refused
//! whole and changes nothing. The cluster tests send it batches through real nodes.

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kitara::cluster::wire;
use serde_json::Value;

use crate::helpers::{Backend, TEST_NODE, TestApp, TestDb, order, spawn_app};

crate::on_both_backends!(
    a_batch_is_answered_request_by_request,
    a_malformed_batch_is_refused_whole_and_changes_nothing,
);

/// A request of a batch: method, path, headers, JSON body.
fn put(batch: &mut BytesMut, method: Method, path: &str, headers: &[(&str, &str)], body: &str) {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (parts, ()) = request.body(()).expect("a request").into_parts();
    wire::put_request(batch, &parts, body.as_bytes()).expect("encodes");
}

const JSON: (&str, &str) = ("content-type", "application/json");

/// Sends `body` to the endpoint as `content_type`: the status, and the answer's bytes.
async fn send(app: &TestApp, content_type: &str, body: Bytes) -> (StatusCode, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("http://{}{}", app.addr, wire::PATH))
        .header("content-type", content_type)
        .body(Full::new(body))
        .expect("a request");
    let response = client.request(request).await.expect("answered");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("read")
        .to_bytes();
    (status, bytes)
}

async fn a_batch_is_answered_request_by_request(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_app(&db).await;
    let initial = db.stocks().await;
    let lock = "/api/v1/order/lock";
    let malformed = r#"{"user_id":"2","products":[{"product_id":1,"quantity":1}]}"#;
    let mut batch = BytesMut::new();
    let ordered = order(2, &[(1, 1)]).to_string();
    put(
        &mut batch,
        Method::POST,
        lock,
        &[JSON, ("x-request-id", "batch-0")],
        &ordered,
    );
    put(&mut batch, Method::POST, lock, &[JSON], malformed);
    put(&mut batch, Method::GET, "/healthz", &[], "");
    put(
        &mut batch,
        Method::POST,
        wire::PATH,
        &[("content-type", wire::MEDIA_TYPE)],
        "",
    );
    put(&mut batch, Method::POST, lock, &[], &ordered);
    put(
        &mut batch,
        Method::POST,
        lock,
        &[JSON],
        &order(999, &[(1, 1)]).to_string(),
    );

    let (status, answers) = send(&app, wire::MEDIA_TYPE, batch.freeze()).await;
    assert_eq!(status, StatusCode::OK);
    let mut answers = BytesMut::from(&answers[..]);
    let mut got: Vec<Option<(StatusCode, hyper::HeaderMap, Value)>> = vec![None; 6];
    while let Some((index, answer)) = wire::next_answer(&mut answers).expect("well formed") {
        let slot = &mut got[index as usize];
        assert!(slot.is_none(), "request {index} answered twice");
        let body = serde_json::from_slice(answer.body()).expect("JSON");
        *slot = Some((answer.status(), answer.headers().clone(), body));
    }
    assert!(answers.is_empty(), "a partial answer at the end");
    let got: Vec<_> = got
        .into_iter()
        .map(|a| a.expect("every request is answered"))
        .collect();

    let (status, headers, body) = &got[0];
    assert_eq!(*status, StatusCode::OK, "{body}");
    assert_eq!(headers["kitara-node"], TEST_NODE);
    assert_eq!(headers["x-request-id"], "batch-0");
    db.assert_order_stored(body, 2).await;
    // Each refusal is the one the same request gets alone.
    let (alone, _, alone_body) = app
        .request(Method::POST, lock, Some("application/json"), malformed)
        .await;
    assert_eq!(
        (got[1].0, &got[1].2["message"]),
        (alone, &alone_body["message"])
    );
    for read in [&got[2], &got[3]] {
        assert_eq!(read.0, StatusCode::BAD_REQUEST);
        assert_eq!(read.2["message"], "only writes are forwarded");
    }
    assert_eq!(got[4].0, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", got[4].2);
    assert_eq!(
        (got[5].0, got[5].2["message"].as_str()),
        (StatusCode::BAD_REQUEST, Some("user not found"))
    );

    assert_eq!(db.count("orders").await, 1);
    let mut expected = initial;
    *expected.get_mut(&1).expect("product 1") -= 1;
    assert_eq!(db.stocks().await, expected);
    app.stop().await;
    db.drop_database().await;
}

async fn a_malformed_batch_is_refused_whole_and_changes_nothing(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_app(&db).await;
    let snapshot = db.snapshot().await;
    let mut whole = BytesMut::new();
    put(
        &mut whole,
        Method::POST,
        "/api/v1/order/lock",
        &[JSON],
        &order(2, &[(1, 1)]).to_string(),
    );
    let whole = whole.freeze();

    let (status, body) = send(&app, "application/json", whole.clone()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(
        body["message"],
        format!("Content-Type must be {}", wire::MEDIA_TYPE)
    );
    let refused = [
        // Every cut of a valid batch, short of its end.
        (1..whole.len())
            .map(|cut| whole.slice(..cut))
            .collect::<Vec<_>>(),
        vec![
            Bytes::from_static(b"\xff\xff\xff\xff garbage"),
            Bytes::from_static(b"\x00\x05PO ST\x00\x01/\x00\x00\x00\x00\x00\x00"),
            Bytes::from(vec![0u8; 8 * 1024 * 1024 + 1024]),
        ],
    ]
    .concat();
    for batch in refused {
        let len = batch.len();
        let (status, body) = send(&app, wire::MEDIA_TYPE, batch).await;
        let body: Value = serde_json::from_slice(&body).expect("JSON");
        let expected = match len > 8 * 1024 * 1024 {
            true => StatusCode::PAYLOAD_TOO_LARGE,
            false => StatusCode::BAD_REQUEST,
        };
        assert_eq!(status, expected, "a batch of {len} bytes: {body}");
    }
    // More requests than a batch may hold, each a valid order: none is decided.
    let mut crowded = BytesMut::new();
    let ordered = order(2, &[(1, 1)]).to_string();
    for _ in 0..=4096 {
        put(
            &mut crowded,
            Method::POST,
            "/api/v1/order/lock",
            &[JSON],
            &ordered,
        );
    }
    let (status, body) = send(&app, wire::MEDIA_TYPE, crowded.freeze()).await;
    let body: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["message"],
        "malformed forwarded batch: too many requests"
    );
    assert_eq!(
        db.snapshot().await,
        snapshot,
        "a refused batch changed something"
    );
    let (status, body) = app.lock(&order(2, &[(1, 1)])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.stop().await;
    db.drop_database().await;
}
