//! Every change as an event (SPEC.md, release 3): the outbox numbered by each store's
//! actor, gap-free under a burst with several writers, replayable into today's stock;
//! the stream's history, resume and live events; the purge and its 410; bad input.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_TOKEN, Api, Backend, TestApp, TestDb, manual_clock, order, spawn_app_at,
};

crate::on_both_backends!(
    a_burst_writes_one_event_per_change_numbered_without_gaps,
    a_stream_sends_history_then_live_events_and_resumes_after_its_last_id,
    a_purged_position_is_gone_and_names_the_first_kept,
    bad_input_on_the_stream_is_named_and_changes_nothing,
    a_client_that_stops_reading_is_disconnected_and_resumes_after_its_last_id,
);

crate::on_mysql! {
    what_was_held_behind_a_refused_write_is_settled_after_the_reload_mysql =>
        what_was_held_behind_a_refused_write_is_settled_after_the_reload().await;
}

/// A store's event stream as a client reads it.
struct Stream {
    response: Response<Incoming>,
    buffer: Vec<u8>,
}

/// One event of a stream: its `id`, `event` and parsed `data`.
#[derive(Debug, Clone)]
struct Sse {
    id: i64,
    kind: String,
    data: Value,
}

impl Stream {
    /// Opens `GET /api/v1/admin/stores/{store}/events` with `Last-Event-ID: last` if
    /// given and the query `query`; answers the status and, for a 200, the stream.
    async fn open(
        api: &Api,
        store: i64,
        last: Option<&str>,
        query: &str,
    ) -> Result<Self, (StatusCode, Value)> {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let mut request = Request::builder()
            .uri(format!(
                "http://{}/api/v1/admin/stores/{store}/events{query}",
                api.addr
            ))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"));
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        let response = client
            .request(request.body(Empty::new()).unwrap())
            .await
            .expect("the stream's request");
        if response.status() != StatusCode::OK {
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            return Err((status, serde_json::from_slice(&bytes).expect("JSON")));
        }
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Ok(Self {
            response,
            buffer: Vec::new(),
        })
    }

    /// The next event, or `None` if none comes `within` or the stream ended. Comment
    /// lines are skipped.
    async fn next(&mut self, within: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("UTF-8");
                let field = |name: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(str::to_owned)
                };
                let Some(id) = field("id: ") else {
                    assert!(
                        text.starts_with(':'),
                        "a block that is neither event nor comment: {text:?}"
                    );
                    continue;
                };
                return Some(Sse {
                    id: id.parse().expect("a numeric id"),
                    kind: field("event: ").expect("event"),
                    data: serde_json::from_str(&field("data: ").expect("data")).expect("JSON data"),
                });
            }
            let frame = tokio::time::timeout_at(deadline, self.response.body_mut().frame())
                .await
                .ok()??
                .expect("a frame");
            if let Ok(data) = frame.into_data() {
                self.buffer.extend_from_slice(&data);
            }
        }
    }

    /// The next `count` events, each within `within` of the one before.
    async fn take(&mut self, count: usize, within: Duration) -> Vec<Sse> {
        let mut events = Vec::with_capacity(count);
        while events.len() < count {
            match self.next(within).await {
                Some(event) => events.push(event),
                None => panic!("{} of {count} events came", events.len()),
            }
        }
        events
    }
}

/// Adds buyers up to `count` (the demo data has 3).
pub async fn add_users(db: &TestDb, count: i64) {
    let rows: Vec<String> = (4..=count)
        .map(|id| format!("({id}, 'buyer {id}')"))
        .collect();
    db.exec(&format!(
        "INSERT INTO users (id, name) VALUES {}",
        rows.join(", ")
    ))
    .await;
}

/// Every event of `store` in the outbox, read as the stream sends it from position 0.
async fn all_events(app: &TestApp, db: &TestDb, store: i64) -> Vec<Sse> {
    let stored = db
        .query_i64s(&format!(
            "SELECT COALESCE(MAX(last_seq), 0) FROM kitara_events WHERE store_id = {store}"
        ))
        .await[0][0] as usize;
    let mut stream = Stream::open(app, store, None, "").await.expect("a stream");
    let events = stream.take(stored, Duration::from_secs(10)).await;
    assert!(
        stream.next(Duration::from_millis(300)).await.is_none(),
        "more events than stored"
    );
    events
}

/// Applies events to stock the way a consumer would: locks take their lines,
/// cancellations and expiries give them back, adjustments add their delta, creations
/// start a product.
fn replay(initial: &BTreeMap<i64, i64>, events: &[Sse]) -> BTreeMap<i64, i64> {
    let mut stock = initial.clone();
    for event in events {
        let data = &event.data["data"];
        let sign = match event.kind.as_str() {
            "order.locked" => -1,
            "order.cancelled" | "order.expired" => 1,
            "order.confirmed" => 0,
            "stock.adjusted" => {
                let product = stock.entry(data["id"].as_i64().unwrap()).or_default();
                *product += data["delta"].as_i64().unwrap();
                // An adjustment shows the stock it left, too.
                assert_eq!(
                    *product,
                    data["current_stock"].as_i64().unwrap(),
                    "the stock event {} shows",
                    event.id
                );
                continue;
            }
            "product.created" => {
                stock.insert(
                    data["id"].as_i64().unwrap(),
                    data["current_stock"].as_i64().unwrap(),
                );
                continue;
            }
            _ => continue,
        };
        for detail in data["order_details"].as_array().expect("details") {
            *stock
                .entry(detail["product_id"].as_i64().unwrap())
                .or_default() += sign * detail["quantity"].as_i64().unwrap();
        }
        // Each order event shows its products' stock as its change left it.
        for (product, left) in data["stock"].as_object().expect("stock") {
            assert_eq!(
                stock[&product.parse::<i64>().unwrap()],
                left.as_i64().unwrap(),
                "the stock event {} shows",
                event.id
            );
        }
    }
    stock
}

async fn a_burst_writes_one_event_per_change_numbered_without_gaps(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    db.exec("UPDATE products SET current_stock = 60 WHERE id IN (1, 2)")
        .await;
    add_users(&db, 20).await;
    let initial: BTreeMap<i64, i64> = [(1, 60), (2, 60), (3, 20)].into();
    let clock = manual_clock();
    let app = Arc::new(
        spawn_app_at(&db, clock, |s| {
            s.admin_token = Some(ADMIN_TOKEN.into());
            s.writers = 4;
            s.database.db_pool_size = 16;
            s.batch_size = 8;
        })
        .await,
    );

    // Units taken away first (never refused: nothing is sold yet). The actor withholds
    // them in memory before they commit; the event must not count them twice.
    app.admin_expect(
        hyper::Method::POST,
        "/api/v1/admin/products/1/stock",
        Some(&json!({"delta": -3, "reason": "damaged"})),
        StatusCode::OK,
    )
    .await;
    // 200 locks at once from 20 customers, some of them sold out (refused: no event),
    // with a restock racing them.
    let locks: Vec<_> = (0..200)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                let user = i % 20 + 1;
                let mut body = order(user, &[(1 + i % 2, 1 + i % 3)]);
                if i % 4 == 0 {
                    body["hold_seconds"] = json!(30);
                }
                (user, app.lock(&body).await)
            })
        })
        .collect();
    app.admin_expect(
        hyper::Method::POST,
        "/api/v1/admin/products/2/stock",
        Some(&json!({"delta": 7, "reason": "found in the back"})),
        StatusCode::OK,
    )
    .await;
    let mut placed = Vec::new();
    let mut refused = 0;
    for lock in locks {
        let (user, (status, body)) = lock.await.unwrap();
        match status {
            StatusCode::OK => placed.push((body["data"]["order_id"].as_i64().unwrap(), user)),
            StatusCode::BAD_REQUEST => {
                let message = body["message"].as_str().unwrap_or_default();
                assert!(message.ends_with("not available"), "{body}");
                refused += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(
        refused > 0,
        "the burst sold out nothing: it shows no refusal"
    );

    // Half of them confirmed or cancelled at once, each twice (a repeat is answered 200
    // and records nothing).
    let ends: Vec<_> = placed
        .iter()
        .enumerate()
        .take(placed.len() / 2)
        .map(|(i, &(id, user))| {
            let app = app.clone();
            let action = if i % 2 == 0 { "confirm" } else { "cancel" };
            tokio::spawn(async move {
                let answers = [
                    app.end(id, action, user).await,
                    app.end(id, action, user).await,
                ];
                (action, answers)
            })
        })
        .collect();
    let mut ended: BTreeMap<&str, usize> = BTreeMap::new();
    for end in ends {
        let (action, answers) = end.await.unwrap();
        for (status, body) in answers {
            assert!(
                status == StatusCode::OK || status == StatusCode::NOT_FOUND,
                "{status}: {body}"
            );
        }
        *ended.entry(action).or_default() += 1;
    }
    // Then the clock passes every deadline: the holds of 30 s left expire.
    app.advance(Duration::from_secs(31)).await;

    let events = all_events(&app, &db, 1).await;
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "numbered 1..n, no gap"
    );
    for event in &events {
        assert_eq!(event.data["seq"], event.id);
        assert_eq!(event.data["type"], event.kind.as_str());
        assert_eq!(event.data["store_id"], 1);
    }
    let count = |kind: &str| events.iter().filter(|e| e.kind == kind).count();
    let statuses = db.statuses().await;
    let with = |status: &str| statuses.values().filter(|s| *s == status).count();
    assert_eq!(count("order.locked"), placed.len(), "one per order placed");
    assert_eq!(count("order.confirmed"), with("confirmed"));
    assert_eq!(count("order.cancelled"), with("cancelled"));
    assert_eq!(count("order.expired"), with("expired"));
    assert!(with("expired") > 0 && with("cancelled") > 0 && with("confirmed") > 0);
    assert_eq!(count("stock.adjusted"), 2);
    assert_eq!(
        events.len(),
        placed.len() + with("confirmed") + with("cancelled") + with("expired") + 2
    );
    let locked: Vec<i64> = events
        .iter()
        .filter(|e| e.kind == "order.locked")
        .map(|e| e.data["data"]["order_id"].as_i64().unwrap())
        .collect();
    let mut sorted_placed: Vec<i64> = placed.iter().map(|(id, _)| *id).collect();
    sorted_placed.sort_unstable();
    let mut sorted_locked = locked.clone();
    sorted_locked.sort_unstable();
    assert_eq!(
        sorted_locked, sorted_placed,
        "an event for every order placed, and no other"
    );

    // Replayed from the initial stock, the events give today's stock.
    let mut initial_1 = initial.clone();
    initial_1.remove(&3);
    let mut today = db.stocks().await;
    today.remove(&3);
    assert_eq!(replay(&initial_1, &events), today);
    // Store 2 changed nothing: no event.
    assert_eq!(
        db.query_i64s("SELECT DISTINCT store_id FROM kitara_events")
            .await,
        vec![vec![1]]
    );
    TestApp::stop_shared(app).await;
    db.drop_database().await;
}

async fn a_stream_sends_history_then_live_events_and_resumes_after_its_last_id(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_app_at(&db, manual_clock(), |s| {
        s.admin_token = Some(ADMIN_TOKEN.into())
    })
    .await;
    let mut held = Vec::new();
    for user in 1..=3 {
        let (status, body) = app.lock(&order(user, &[(1, 1)])).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        held.push(body["data"]["order_id"].as_i64().unwrap());
    }
    let mut stream = Stream::open(&app, 1, None, "").await.expect("a stream");
    // Where a client that reads the store's state now follows from.
    assert_eq!(stream.response.headers()["kitara-last-event-id"], "3");
    let history = stream.take(3, Duration::from_secs(5)).await;
    assert_eq!(history.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(history[2].data["data"]["order_id"], held[2]);
    assert_eq!(history[2].data["data"]["stock"], json!({"1": 7}));

    // Live: a confirm appears on the open stream within a second of its answer.
    let (status, _) = app.end(held[0], "confirm", 1).await;
    assert_eq!(status, StatusCode::OK);
    let live = stream
        .next(Duration::from_secs(1))
        .await
        .expect("a live event within 1 s");
    assert_eq!((live.id, live.kind.as_str()), (4, "order.confirmed"));
    assert_eq!(live.data["data"]["status"], "confirmed");
    assert_eq!(
        live.data["data"]["order_details"],
        history[0].data["data"]["order_details"]
    );
    drop(stream);

    // Missed while away: a client that reconnects with its last id gets what came
    // after, nothing twice; the header wins over `after`.
    app.end(held[1], "cancel", 2).await;
    let mut resumed = Stream::open(&app, 1, Some("3"), "?after=1")
        .await
        .expect("a stream");
    let got = resumed.take(2, Duration::from_secs(5)).await;
    assert_eq!(
        got.iter()
            .map(|e| (e.id, e.kind.as_str()))
            .collect::<Vec<_>>(),
        [(4, "order.confirmed"), (5, "order.cancelled")]
    );
    assert_eq!(got[1].data["data"]["stock"], json!({"1": 8}));
    let mut by_query = Stream::open(&app, 1, None, "?after=4")
        .await
        .expect("a stream");
    assert_eq!(by_query.take(1, Duration::from_secs(5)).await[0].id, 5);
    // A store with no event yet streams nothing, and stays open.
    let mut quiet = Stream::open(&app, 2, None, "").await.expect("a stream");
    assert!(quiet.next(Duration::from_millis(300)).await.is_none());

    // Shutting down ends every stream: the server does not wait for them.
    let stopping = tokio::time::Instant::now();
    app.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "shutdown waited for the streams"
    );
    assert!(resumed.next(Duration::from_secs(1)).await.is_none());
    db.drop_database().await;
}

async fn a_purged_position_is_gone_and_names_the_first_kept(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_app_at(&db, manual_clock(), |s| {
        s.admin_token = Some(ADMIN_TOKEN.into())
    })
    .await;
    for user in 1..=3 {
        assert_eq!(app.lock(&order(user, &[(1, 1)])).await.0, StatusCode::OK);
    }
    app.stop().await;
    // Kept 0 days: a start purges everything but each store's last event.
    let app = spawn_app_at(&db, manual_clock(), |s| {
        s.admin_token = Some(ADMIN_TOKEN.into());
        s.events_days = 0;
    })
    .await;
    let mut waited = Duration::ZERO;
    while db.count("kitara_events").await > 1 {
        assert!(waited < Duration::from_secs(10), "the purge did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    let (status, body) = Stream::open(&app, 1, None, "").await.err().expect("a 410");
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert_eq!(
        body["message"],
        "events after position 0 are purged; the first event kept is 3"
    );
    assert_eq!(
        Stream::open(&app, 1, Some("1"), "")
            .await
            .err()
            .expect("a 410")
            .0,
        StatusCode::GONE
    );
    // A HEAD (what the owner's page asks before it reads the state) names the last event
    // whatever was purged, and follows nothing.
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let head = Request::head(format!("http://{}/api/v1/admin/stores/1/events", app.addr))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Empty::new())
        .unwrap();
    let head = client.request(head).await.expect("a HEAD");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["kitara-last-event-id"], "3");
    // From just before the first kept, nothing is missing.
    let mut stream = Stream::open(&app, 1, Some("2"), "")
        .await
        .expect("a stream");
    assert_eq!(stream.take(1, Duration::from_secs(5)).await[0].id, 3);
    // The numbers go on after the last kept, across the restart and the purge.
    assert_eq!(app.lock(&order(1, &[(1, 1)])).await.0, StatusCode::OK);
    assert_eq!(stream.take(1, Duration::from_secs(5)).await[0].id, 4);
    app.stop().await;
    db.drop_database().await;
}

async fn bad_input_on_the_stream_is_named_and_changes_nothing(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_app_at(&db, manual_clock(), |s| {
        s.admin_token = Some(ADMIN_TOKEN.into())
    })
    .await;
    for (last, query, status, message) in [
        (
            None,
            "?after=x",
            StatusCode::BAD_REQUEST,
            "after must be an integer between 0 and 9223372036854775807",
        ),
        (
            None,
            "?after=-1",
            StatusCode::BAD_REQUEST,
            "after must be an integer between 0 and 9223372036854775807",
        ),
        (
            Some("abc"),
            "",
            StatusCode::BAD_REQUEST,
            "Last-Event-ID must be an integer between 0 and 9223372036854775807",
        ),
        (
            Some("1.5"),
            "?after=1",
            StatusCode::BAD_REQUEST,
            "Last-Event-ID must be an integer between 0 and 9223372036854775807",
        ),
    ] {
        let (got, body) = Stream::open(&app, 1, last, query)
            .await
            .err()
            .expect("a refusal");
        assert_eq!(
            (got, body["message"].as_str()),
            (status, Some(message)),
            "{last:?} {query}"
        );
    }
    for store in ["99", "0", "x", "-1"] {
        let path = format!("/api/v1/admin/stores/{store}/events");
        let (status, _, body) = app
            .admin_raw(hyper::Method::GET, &path, Some(ADMIN_TOKEN), None)
            .await;
        assert_eq!(
            (status, body["message"].as_str()),
            (StatusCode::NOT_FOUND, Some("store not found")),
            "{store}"
        );
    }
    // Without the token: refused like every admin path.
    let (status, _, _) = app
        .request(
            hyper::Method::GET,
            "/api/v1/admin/stores/1/events",
            None,
            Bytes::new(),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(db.count("kitara_events").await, 0);
    app.stop().await;
    db.drop_database().await;
}

/// The ids in a raw answer's bytes, in order.
fn ids_in(bytes: &[u8]) -> Vec<i64> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|l| l.strip_prefix("id: ")?.trim().parse().ok())
        .collect()
}

async fn a_client_that_stops_reading_is_disconnected_and_resumes_after_its_last_id(
    backend: Backend,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::with_demo_data(backend).await;
    // Long names make long events: the sockets' buffers fill sooner.
    let long = "n".repeat(255);
    db.exec(&format!(
        "UPDATE products SET current_stock = 100000, product_name = '{long}' WHERE id = 1"
    ))
    .await;
    add_users(&db, 10).await;
    let app = Arc::new(
        spawn_app_at(&db, manual_clock(), |s| {
            s.admin_token = Some(ADMIN_TOKEN.into())
        })
        .await,
    );
    // A client with a small receive window that reads nothing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(app.addr).await.unwrap();
    let request = format!(
        "GET /api/v1/admin/stores/1/events HTTP/1.1\r\nHost: kitara\r\n\
         Authorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    let events = 20_000;
    let answers =
        crate::helpers::customers(&app, 10, events / 10, |c, _| order(c + 1, &[(1, 1)])).await;
    assert!(answers.iter().all(|(status, _)| *status == StatusCode::OK));
    // It falls more than the store's feed behind while it reads nothing: when it reads
    // again, what was already on its way is there, then the end of its stream (a client
    // that stays silent with its queue full is dropped after 5 s, sooner).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let mut got = Vec::new();
    let mut buffer = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let n = stalled.read(&mut buffer).await.unwrap_or(0);
            got.extend_from_slice(&buffer[..n]);
            if n == 0 || got.ends_with(b"\r\n0\r\n\r\n") {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stalled client's stream never ended");
    let ids = ids_in(&got);
    let last = *ids.last().expect("some events before it stalled");
    assert_eq!(
        ids,
        (1..=last).collect::<Vec<_>>(),
        "in order, none missing"
    );
    assert!(
        last < events,
        "it got everything: it never stalled the server"
    );
    // Reconnecting with its last id, it gets the rest, nothing twice.
    let mut resumed = Stream::open(&app, 1, Some(&last.to_string()), "")
        .await
        .expect("a stream");
    let rest = resumed
        .take((events - last) as usize, Duration::from_secs(10))
        .await;
    assert_eq!(rest.first().map(|e| e.id), Some(last + 1));
    assert_eq!(rest.last().map(|e| e.id), Some(events));
    TestApp::stop_shared(app).await;
    db.drop_database().await;
}

/// While events are on, a store has one submission at the writer and holds what it
/// decides meanwhile. When that submission is refused (memory and database disagree),
/// the store reloads, and what it held was never written: a held product change must
/// leave the product free to change again, and a held expiry must leave the expiry
/// timer running, so that the hold, re-armed by the reload, expires.
async fn what_was_held_behind_a_refused_write_is_settled_after_the_reload() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let db = TestDb::with_demo_data(Backend::Mysql).await;
    let app = Arc::new(
        spawn_app_at(&db, manual_clock(), |s| {
            s.admin_token = Some(ADMIN_TOKEN.into())
        })
        .await,
    );
    let mut hold = order(3, &[(2, 1)]);
    hold["hold_seconds"] = json!(60);
    let (status, held) = app.lock(&hold).await;
    assert_eq!(status, StatusCode::OK, "{held}");
    let hold = held["data"]["order_id"].as_i64().expect("order_id");

    // Someone else takes product 1's stock behind Kitara's back and keeps the row
    // locked: the next lock of it waits at the writer, and its guard will trip.
    // On a connection of its own: Kitara's sessions end a write transaction idle for
    // a second, and this one must wait for the test.
    let mut options = sea_orm::ConnectOptions::new(db.url.clone());
    options.max_connections(1);
    let other = sea_orm::Database::connect(options).await.expect("connect");
    let behind = other.begin().await.expect("begin");
    behind
        .execute_unprepared("UPDATE products SET current_stock = 0 WHERE id = 1")
        .await
        .expect("take the stock");
    let lock = tokio::spawn({
        let app = app.clone();
        async move { app.lock(&order(2, &[(1, 1)])).await }
    });
    // Kitara's guarded decrement shows in the process list until the row is free.
    let waiting = "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
        WHERE DB = DATABASE() AND COMMAND = 'Query' AND INFO LIKE 'UPDATE products%'";
    let mut waited = Duration::ZERO;
    while db.query_i64s(waiting).await[0][0] == 0 {
        assert!(
            waited < Duration::from_secs(20),
            "the lock never reached the row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }

    // Decided while that submission is at the writer, so held: a restock of product 2,
    // and the expiry of the hold (the clock passes its end).
    let restock = tokio::spawn({
        let app = app.clone();
        async move {
            app.admin(
                hyper::Method::POST,
                "/api/v1/admin/products/2/stock",
                Some(&json!({"delta": 5, "reason": "truck arrived"})),
            )
            .await
        }
    });
    app.state.clock.advance(Duration::from_secs(61));
    // Nothing shows that both reached the actor; half a second is ample for two
    // messages to an idle actor. Were it not, the test would pass without taking the
    // path it is for, never fail wrongly.
    tokio::time::sleep(Duration::from_millis(500)).await;
    behind.commit().await.expect("commit");
    other.close().await.ok();

    let (status, body) = lock.await.expect("the lock's task");
    assert_eq!(
        (status, body["message"].as_str()),
        (StatusCode::BAD_REQUEST, Some("all product not available")),
        "decided again against the stock reloaded: {body}"
    );
    let (status, body) = restock.await.expect("the restock's task");
    assert!(
        status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
        "{status} {body}"
    );
    // The held change is no longer in progress: the product can change again.
    let body = app
        .admin_expect(
            hyper::Method::PATCH,
            "/api/v1/admin/products/2",
            Some(&json!({"product_name": "sikat gigi lembut"})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(body["data"]["product_name"], "sikat gigi lembut");
    // The held expiry was dropped with the reload; the timer runs again and ends it.
    let mut waited = Duration::ZERO;
    while db.status(hold).await != "expired" {
        assert!(
            waited < Duration::from_secs(10),
            "the hold past its end was never expired: {}",
            db.status(hold).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    let restocked = if status == StatusCode::OK { 5 } else { 0 };
    assert_eq!(
        db.stocks().await,
        [(1, 0), (2, 5 + restocked), (3, 20)].into()
    );
    TestApp::stop_shared(app).await;
    db.drop_database().await;
}
