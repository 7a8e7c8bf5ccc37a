//! The store owner's admin API (SPEC.md, release 2): the token, users, stores and
//! products that serve at once, stock deltas decided by the store's actor with a ledger
//! row, limits, soft deletion, the orders page, `kitara check`, and start-up adoption.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use kitara::startup::Application;
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_TOKEN, Backend, TestApp, TestDb, order, settings, spawn_admin_app, spawn_app,
    spawn_app_with,
};

crate::on_both_backends!(
    the_token_guards_every_admin_path,
    new_users_stores_and_products_serve_at_once,
    stock_deltas_are_decided_with_the_orders_and_written_with_a_ledger_row,
    a_patch_renames_and_sets_a_limit_from_the_next_order_on,
    a_deleted_product_is_gone_but_its_holds_can_still_end,
    the_orders_page_filters_and_limits,
    bad_admin_input_is_named_and_changes_nothing,
    a_restock_during_a_flash_sale_loses_and_oversells_nothing,
    start_up_adopts_products_made_by_sql,
    kitara_check_finds_a_key_whose_order_is_missing,
);

/// Every admin path with a method it serves.
const ADMIN_PATHS: &[(&str, &str)] = &[
    ("POST", "/api/v1/admin/users"),
    ("GET", "/api/v1/admin/stores"),
    ("POST", "/api/v1/admin/stores"),
    ("GET", "/api/v1/admin/products"),
    ("POST", "/api/v1/admin/products"),
    ("PATCH", "/api/v1/admin/products/1"),
    ("DELETE", "/api/v1/admin/products/1"),
    ("POST", "/api/v1/admin/products/1/stock"),
    ("GET", "/api/v1/admin/products/1/movements"),
    ("GET", "/api/v1/admin/orders"),
];

fn method(name: &str) -> Method {
    Method::from_bytes(name.as_bytes()).expect("method")
}

/// The ledger of a product as the API shows it: (delta, reason) in order.
async fn ledger(app: &TestApp, product: i64) -> Vec<(i64, String)> {
    let body = app
        .admin_expect(
            Method::GET,
            &format!("/api/v1/admin/products/{product}/movements"),
            None,
            StatusCode::OK,
        )
        .await;
    body["data"]
        .as_array()
        .expect("movements")
        .iter()
        .map(|m| {
            assert!(m["id"].is_i64() && m["created_at"].is_string(), "{m}");
            (
                m["delta"].as_i64().unwrap(),
                m["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn product_id(body: &Value) -> i64 {
    body["data"]["id"].as_i64().expect("id")
}

async fn the_token_guards_every_admin_path(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;

    // No token: the admin API is disabled, whatever the request carries.
    let app = spawn_app(&db).await;
    for &(m, path) in ADMIN_PATHS {
        let (status, _, body) = app
            .admin_raw(method(m), path, Some(ADMIN_TOKEN), None)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{m} {path}");
        assert_eq!(body["message"], "admin API is disabled");
    }
    // The page says so, with the same 403: it would ask for a token that cannot exist.
    let (status, disabled) = page(&app).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(disabled.contains("admin API is disabled"), "{disabled}");
    assert!(!disabled.contains("sessionStorage"));
    app.stop().await;

    // A token under 16 characters stops Kitara from starting.
    let mut short = settings(&db.url);
    short.admin_token = Some("fifteen-chars-x".into());
    let error = Application::build(short).await.err().expect("refused");
    assert!(error.to_string().contains("at least 16"), "{error}");

    let app = spawn_admin_app(&db).await;
    // With a token, the page asks for it.
    let (status, page) = page(&app).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("sessionStorage"));
    let before = db.snapshot().await;
    for &(m, path) in ADMIN_PATHS {
        for token in [None, Some("wrong-token-0123456789"), Some("")] {
            let body = Some(Bytes::from_static(br#"{"delta": 5, "reason": "x"}"#));
            let (status, headers, answer) = app.admin_raw(method(m), path, token, body).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{m} {path} {token:?}");
            assert_eq!(answer["message"], "missing or wrong admin token");
            let challenge = headers["www-authenticate"].to_str().unwrap();
            assert!(challenge.starts_with("Bearer"), "{challenge}");
        }
    }
    // Another scheme, or the token in another case, is no bearer of it.
    for header in [
        format!("Basic {ADMIN_TOKEN}"),
        format!("Bearer {}", ADMIN_TOKEN.to_uppercase()),
    ] {
        let (status, _) = raw_with_authorization(&app, &header).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{header}");
    }
    let (status, _) = raw_with_authorization(&app, &format!("bearer {ADMIN_TOKEN}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(db.snapshot().await, before);
    let (status, body) = app.admin(Method::GET, "/api/v1/admin/products", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["data"][0],
        json!({"id": 1, "product_name": "masker", "current_stock": 10, "store_id": 1, "max_per_customer": null})
    );
    app.stop().await;
    db.drop_database().await;
}

async fn raw_with_authorization(app: &TestApp, header: &str) -> (StatusCode, String) {
    let request = format!(
        "GET /api/v1/admin/stores HTTP/1.1\r\nHost: kitara\r\nAuthorization: {header}\r\nConnection: close\r\n\r\n"
    );
    let answer = app.raw(request.as_bytes()).await;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    (status, answer)
}

async fn page(app: &TestApp) -> (StatusCode, String) {
    let request = "GET /admin HTTP/1.1\r\nHost: kitara\r\nConnection: close\r\n\r\n";
    let answer = app.raw(request.as_bytes()).await;
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:.300}"));
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: text/html; charset=utf-8"),
        "{answer:.300}"
    );
    (status, answer)
}

async fn new_users_stores_and_products_serve_at_once(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_admin_app(&db).await;

    let user = app
        .admin_expect(
            Method::POST,
            "/api/v1/admin/users",
            Some(&json!({"name": "budi 🛒"})),
            StatusCode::CREATED,
        )
        .await;
    assert_eq!(user["code"], 201);
    assert_eq!(user["data"]["name"], "budi 🛒");
    let buyer = user["data"]["id"].as_i64().unwrap();

    let store = app
        .admin_expect(
            Method::POST,
            "/api/v1/admin/stores",
            Some(&json!({"store_name": "toko budi", "user_id": buyer})),
            StatusCode::CREATED,
        )
        .await;
    let store_id = store["data"]["id"].as_i64().unwrap();
    assert_eq!(
        store["data"],
        json!({"id": store_id, "store_name": "toko budi", "user_id": buyer})
    );
    let (_, stores) = app.admin(Method::GET, "/api/v1/admin/stores", None).await;
    assert_eq!(stores["data"].as_array().unwrap().len(), 3, "{stores}");

    let name = "<img src=x onerror=alert(1)> & \"kopi\" 😷";
    let product = app
        .admin_expect(
            Method::POST,
            "/api/v1/admin/products",
            Some(&json!({"product_name": name, "store_id": store_id, "current_stock": 4, "max_per_customer": 2})),
            StatusCode::CREATED,
        )
        .await;
    let id = product_id(&product);
    assert_eq!(
        product["data"],
        json!({"id": id, "product_name": name, "current_stock": 4, "store_id": store_id, "max_per_customer": 2})
    );
    // Listed and orderable at once, with its limit, by the user just created.
    assert_eq!(app.listed_stocks().await.get(&id), Some(&4));
    let (status, placed) = app.lock(&order(buyer, &[(id, 2)])).await;
    assert_eq!(status, StatusCode::OK, "{placed}");
    assert_eq!(placed["data"]["order_details"][0]["product_name"], name);
    let (status, refused) = app.lock(&order(buyer, &[(id, 1)])).await;
    assert_eq!(refused["message"], "purchase limit per customer exceeded");
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The one-store rule knows the new store.
    let (_, mixed) = app.lock(&order(buyer, &[(id, 1), (1, 1)])).await;
    assert_eq!(mixed["message"], "product must in same store");

    let stored = db
        .query_i64s(&format!(
            "SELECT current_stock, store_id, max_per_customer FROM products WHERE id = {id}"
        ))
        .await;
    assert_eq!(stored, [[2, store_id, 2]]);
    assert_eq!(ledger(&app, id).await, [(4, "created".to_owned())]);
    assert!(db.unbalanced().await.is_empty());
    app.stop().await;

    // A restart finds them all, names exactly as typed.
    let app = spawn_admin_app(&db).await;
    let (_, products) = app.admin(Method::GET, "/api/v1/admin/products", None).await;
    let listed = products["data"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|p| p["id"] == id && p["product_name"] == name)
    );
    let (status, _) = app.lock(&order(buyer, &[(id, 1)])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the limit counts the hold");
    app.stop().await;
    db.drop_database().await;
}

async fn stock_deltas_are_decided_with_the_orders_and_written_with_a_ledger_row(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_admin_app(&db).await;
    let restock = |delta: i64, reason: &str| json!({"delta": delta, "reason": reason});
    let stock_path = "/api/v1/admin/products/1/stock";

    let body = app
        .admin_expect(
            Method::POST,
            stock_path,
            Some(&restock(5, "truck arrived")),
            StatusCode::OK,
        )
        .await;
    assert_eq!(body["data"]["current_stock"], 15);
    assert_eq!(app.listed_stocks().await[&1], 15);
    assert_eq!(db.stocks().await[&1], 15);

    // Held units cannot be taken back: 15 in stock, 8 held, 7 unheld.
    let (status, _) = app.lock(&order(2, &[(1, 8)])).await;
    assert_eq!(status, StatusCode::OK);
    let before = db.snapshot().await;
    let (status, body) = app
        .admin(Method::POST, stock_path, Some(&restock(-8, "broken")))
        .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (StatusCode::CONFLICT, Some("not enough unheld stock"))
    );
    assert_eq!(db.snapshot().await, before);
    let body = app
        .admin_expect(
            Method::POST,
            stock_path,
            Some(&restock(-7, "broken")),
            StatusCode::OK,
        )
        .await;
    assert_eq!(body["data"]["current_stock"], 0);
    let (_, body) = app.lock(&order(3, &[(1, 1)])).await;
    assert_eq!(body["message"], "all product not available");

    assert_eq!(
        ledger(&app, 1).await,
        [
            (10, "created".to_owned()),
            (5, "truck arrived".to_owned()),
            (-7, "broken".to_owned())
        ]
    );
    assert!(db.unbalanced().await.is_empty());
    let (status, body) = app
        .admin(Method::GET, "/api/v1/admin/products/99/movements", None)
        .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (StatusCode::NOT_FOUND, Some("product 99 not found"))
    );
    app.stop().await;
    db.drop_database().await;
}

async fn a_patch_renames_and_sets_a_limit_from_the_next_order_on(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_admin_app(&db).await;
    let (status, held) = app.lock(&order(2, &[(1, 3)])).await;
    assert_eq!(status, StatusCode::OK);
    let held = held["data"]["order_id"].as_i64().unwrap();

    // The limit counts what the buyer already holds, though nothing counted it before.
    let body = app
        .admin_expect(
            Method::PATCH,
            "/api/v1/admin/products/1",
            Some(&json!({"max_per_customer": 4})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(body["data"]["max_per_customer"], 4);
    let (status, body) = app.lock(&order(2, &[(1, 2)])).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("purchase limit per customer exceeded")
        )
    );
    let (status, _) = app.lock(&order(2, &[(1, 1)])).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.lock(&order(3, &[(1, 4)])).await;
    assert_eq!(status, StatusCode::OK);

    // A new name shows everywhere; null clears the limit.
    let body = app
        .admin_expect(
            Method::PATCH,
            "/api/v1/admin/products/1",
            Some(&json!({"product_name": "masker N95", "max_per_customer": null})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(
        body["data"],
        json!({"id": 1, "product_name": "masker N95", "current_stock": 2, "store_id": 1, "max_per_customer": null})
    );
    let (status, _) = app.lock(&order(2, &[(1, 2)])).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, listing) = app
        .request(Method::GET, "/api/v1/products", None, Bytes::new())
        .await;
    assert_eq!(listing["data"][0]["product_name"], "masker N95");
    let (_, got) = app.get_order(held).await;
    assert_eq!(
        got["data"]["order_details"][0]["product_name"],
        "masker N95"
    );
    let stored = db
        .query_i64s("SELECT COUNT(*) FROM products WHERE id = 1 AND max_per_customer IS NULL")
        .await;
    assert_eq!(stored, [[1]]);
    app.stop().await;
    db.drop_database().await;
}

async fn a_deleted_product_is_gone_but_its_holds_can_still_end(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_admin_app(&db).await;
    let (_, held) = app.lock(&order(2, &[(2, 2)])).await;
    let held = held["data"]["order_id"].as_i64().unwrap();

    let body = app
        .admin_expect(
            Method::DELETE,
            "/api/v1/admin/products/2",
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(body["data"]["id"], 2);
    assert!(!app.listed_stocks().await.contains_key(&2));
    let (_, admin_listing) = app.admin(Method::GET, "/api/v1/admin/products", None).await;
    assert!(
        admin_listing["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["id"] != 2)
    );
    let (status, body) = app.lock(&order(3, &[(2, 1)])).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (StatusCode::BAD_REQUEST, Some("all product not available"))
    );
    for (m, path, body) in [
        ("DELETE", "/api/v1/admin/products/2", None),
        (
            "PATCH",
            "/api/v1/admin/products/2",
            Some(json!({"product_name": "x"})),
        ),
        (
            "POST",
            "/api/v1/admin/products/2/stock",
            Some(json!({"delta": 1, "reason": "x"})),
        ),
    ] {
        let (status, answer) = app.admin(method(m), path, body.as_ref()).await;
        assert_eq!(
            (status, answer["message"].as_str()),
            (StatusCode::NOT_FOUND, Some("product 2 not found")),
            "{m} {path}"
        );
    }
    // Its hold can still be cancelled: the units go back to the deleted row.
    let (status, body) = app.end(held, "cancel", 2).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(db.stocks().await[&2], 5);
    assert_eq!(ledger(&app, 2).await, [(5, "created".to_owned())]);
    assert!(db.unbalanced().await.is_empty());
    app.stop().await;
    db.drop_database().await;
}

async fn the_orders_page_filters_and_limits(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_admin_app(&db).await;
    let mut ids = Vec::new();
    for lines in [&[(1, 1)][..], &[(3, 2)], &[(1, 1), (2, 1)], &[(3, 1)]] {
        let (status, body) = app.lock(&order(2, lines)).await;
        assert_eq!(status, StatusCode::OK);
        ids.push(body["data"]["order_id"].as_i64().unwrap());
    }
    let (status, _) = app.end(ids[2], "confirm", 2).await;
    assert_eq!(status, StatusCode::OK);

    let page = |query: &'static str| {
        let app = &app;
        async move {
            let (status, body) = app
                .admin(Method::GET, &format!("/api/v1/admin/orders{query}"), None)
                .await;
            (status, body)
        }
    };
    let listed = |body: &Value| -> Vec<i64> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["order_id"].as_i64().unwrap())
            .collect()
    };
    let (status, all) = page("").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed(&all), ids);
    // The shape of GET /api/v1/order/{id}.
    let (_, one) = app.get_order(ids[2]).await;
    assert_eq!(all["data"][2], one["data"]);
    assert_eq!(one["data"]["status"], "confirmed");

    let (_, body) = page("?limit=2").await;
    assert_eq!(listed(&body), &ids[..2]);
    let after = format!("?after_id={}&limit=2", ids[1]);
    let (_, body) = app
        .admin(Method::GET, &format!("/api/v1/admin/orders{after}"), None)
        .await;
    assert_eq!(listed(&body), &ids[2..]);
    // The newest page, still ascending.
    let (_, body) = page("?before_id=9223372036854775807&limit=2").await;
    assert_eq!(listed(&body), &ids[2..]);
    let before = format!("?before_id={}&limit=2", ids[3]);
    let (_, body) = app
        .admin(Method::GET, &format!("/api/v1/admin/orders{before}"), None)
        .await;
    assert_eq!(listed(&body), &ids[1..3]);
    let (_, body) = page("?store_id=2").await;
    assert_eq!(listed(&body), [ids[1], ids[3]]);
    let (_, body) = page("?status=confirmed").await;
    assert_eq!(listed(&body), [ids[2]]);
    let (_, body) = page("?store_id=1&status=locked").await;
    assert_eq!(listed(&body), [ids[0]]);

    for (query, status, field) in [
        ("?limit=0", StatusCode::BAD_REQUEST, "limit"),
        ("?limit=501", StatusCode::BAD_REQUEST, "limit"),
        ("?limit=ten", StatusCode::BAD_REQUEST, "limit"),
        ("?after_id=-1", StatusCode::BAD_REQUEST, "after_id"),
        ("?status=paid", StatusCode::BAD_REQUEST, "status"),
        ("?store_id=x", StatusCode::BAD_REQUEST, "store_id"),
        ("?store_id=99", StatusCode::NOT_FOUND, "store 99"),
    ] {
        let (got, body) = page(query).await;
        assert_eq!(got, status, "{query}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(field),
            "{query}: {body}"
        );
    }
    app.stop().await;
    db.drop_database().await;
}

async fn bad_admin_input_is_named_and_changes_nothing(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_admin_app(&db).await;
    let long = "x".repeat(256);
    let product = |fields: Value| {
        let mut body = json!({"product_name": "ok", "store_id": 1, "current_stock": 1});
        for (k, v) in fields.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let cases: Vec<(&str, &str, Bytes, StatusCode, &str)> = vec![
        (
            "POST",
            "/api/v1/admin/users",
            json!({}).to_string().into(),
            StatusCode::BAD_REQUEST,
            "name is required",
        ),
        (
            "POST",
            "/api/v1/admin/users",
            json!({"name": null}).to_string().into(),
            StatusCode::BAD_REQUEST,
            "name is required",
        ),
        (
            "POST",
            "/api/v1/admin/users",
            json!({"name": ""}).to_string().into(),
            StatusCode::BAD_REQUEST,
            "name must be",
        ),
        (
            "POST",
            "/api/v1/admin/users",
            json!({"name": long}).to_string().into(),
            StatusCode::BAD_REQUEST,
            "name must be",
        ),
        (
            "POST",
            "/api/v1/admin/users",
            json!({"name": 7}).to_string().into(),
            StatusCode::BAD_REQUEST,
            "name must be",
        ),
        (
            "POST",
            "/api/v1/admin/users",
            Bytes::from_static(b"{\"name\": \"\xff\xfe\"}"),
            StatusCode::BAD_REQUEST,
            "name must be valid UTF-8",
        ),
        (
            "POST",
            "/api/v1/admin/users",
            Bytes::from_static(br#"{"name": "\ud800"}"#),
            StatusCode::BAD_REQUEST,
            "name must be valid UTF-8",
        ),
        (
            "POST",
            "/api/v1/admin/users",
            Bytes::from_static(b"[1]"),
            StatusCode::BAD_REQUEST,
            "JSON object",
        ),
        (
            "POST",
            "/api/v1/admin/stores",
            json!({"store_name": "s"}).to_string().into(),
            StatusCode::BAD_REQUEST,
            "user_id is required",
        ),
        (
            "POST",
            "/api/v1/admin/stores",
            json!({"store_name": "s", "user_id": "1"})
                .to_string()
                .into(),
            StatusCode::BAD_REQUEST,
            "user_id must be",
        ),
        (
            "POST",
            "/api/v1/admin/stores",
            json!({"store_name": "s", "user_id": 99}).to_string().into(),
            StatusCode::NOT_FOUND,
            "user 99 not found",
        ),
        (
            "POST",
            "/api/v1/admin/stores",
            json!({"user_id": 1}).to_string().into(),
            StatusCode::BAD_REQUEST,
            "store_name is required",
        ),
        (
            "POST",
            "/api/v1/admin/products",
            product(json!({"product_name": null})).to_string().into(),
            StatusCode::BAD_REQUEST,
            "product_name is required",
        ),
        (
            "POST",
            "/api/v1/admin/products",
            product(json!({"product_name": long})).to_string().into(),
            StatusCode::BAD_REQUEST,
            "product_name must be",
        ),
        (
            "POST",
            "/api/v1/admin/products",
            product(json!({"current_stock": -1})).to_string().into(),
            StatusCode::BAD_REQUEST,
            "current_stock must be",
        ),
        (
            "POST",
            "/api/v1/admin/products",
            product(json!({"current_stock": "5"})).to_string().into(),
            StatusCode::BAD_REQUEST,
            "current_stock must be",
        ),
        (
            "POST",
            "/api/v1/admin/products",
            product(json!({"current_stock": 1.5})).to_string().into(),
            StatusCode::BAD_REQUEST,
            "current_stock must be",
        ),
        (
            "POST",
            "/api/v1/admin/products",
            product(json!({"current_stock": null})).to_string().into(),
            StatusCode::BAD_REQUEST,
            "current_stock is required",
        ),
        (
            "POST",
            "/api/v1/admin/products",
            product(json!({"max_per_customer": 0})).to_string().into(),
            StatusCode::BAD_REQUEST,
            "max_per_customer must be",
        ),
        (
            "POST",
            "/api/v1/admin/products",
            product(json!({"store_id": 99})).to_string().into(),
            StatusCode::NOT_FOUND,
            "store 99 not found",
        ),
        (
            "PATCH",
            "/api/v1/admin/products/1",
            json!({}).to_string().into(),
            StatusCode::BAD_REQUEST,
            "product_name or max_per_customer",
        ),
        (
            "PATCH",
            "/api/v1/admin/products/1",
            json!({"product_name": null}).to_string().into(),
            StatusCode::BAD_REQUEST,
            "product_name is required",
        ),
        (
            "PATCH",
            "/api/v1/admin/products/1",
            json!({"max_per_customer": -2}).to_string().into(),
            StatusCode::BAD_REQUEST,
            "max_per_customer must be",
        ),
        (
            "PATCH",
            "/api/v1/admin/products/99",
            json!({"product_name": "x"}).to_string().into(),
            StatusCode::NOT_FOUND,
            "product 99 not found",
        ),
        (
            "PATCH",
            "/api/v1/admin/products/abc",
            json!({"product_name": "x"}).to_string().into(),
            StatusCode::NOT_FOUND,
            "product not found",
        ),
        (
            "POST",
            "/api/v1/admin/products/1/stock",
            json!({"delta": 0, "reason": "x"}).to_string().into(),
            StatusCode::BAD_REQUEST,
            "delta must be",
        ),
        (
            "POST",
            "/api/v1/admin/products/1/stock",
            json!({"delta": 2_147_483_648_i64, "reason": "x"})
                .to_string()
                .into(),
            StatusCode::BAD_REQUEST,
            "delta must be",
        ),
        (
            "POST",
            "/api/v1/admin/products/1/stock",
            json!({"delta": "5", "reason": "x"}).to_string().into(),
            StatusCode::BAD_REQUEST,
            "delta must be",
        ),
        (
            "POST",
            "/api/v1/admin/products/1/stock",
            json!({"reason": "x"}).to_string().into(),
            StatusCode::BAD_REQUEST,
            "delta is required",
        ),
        (
            "POST",
            "/api/v1/admin/products/1/stock",
            json!({"delta": 5}).to_string().into(),
            StatusCode::BAD_REQUEST,
            "reason is required",
        ),
        (
            "POST",
            "/api/v1/admin/products/1/stock",
            json!({"delta": 5, "reason": ""}).to_string().into(),
            StatusCode::BAD_REQUEST,
            "reason must be",
        ),
        (
            "POST",
            "/api/v1/admin/products/1/stock",
            json!({"delta": -11, "reason": "x"}).to_string().into(),
            StatusCode::CONFLICT,
            "not enough unheld stock",
        ),
        (
            "POST",
            "/api/v1/admin/products/1/stock",
            Bytes::from(format!(
                r#"{{"delta": 1, "reason": "{}"}}"#,
                "x".repeat(70_000)
            )),
            StatusCode::PAYLOAD_TOO_LARGE,
            "must not exceed",
        ),
        (
            "POST",
            "/api/v1/admin/products/1/stock",
            Bytes::from_static(b"{\"delta\": 1"),
            StatusCode::BAD_REQUEST,
            "JSON object",
        ),
        (
            "PUT",
            "/api/v1/admin/products/1",
            Bytes::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            "PATCH, DELETE",
        ),
        (
            "GET",
            "/api/v1/admin/nothing",
            Bytes::new(),
            StatusCode::NOT_FOUND,
            "Route not found",
        ),
    ];
    let before = (
        db.snapshot().await,
        db.count("users").await,
        db.count("stores").await,
        db.count("stock_movements").await,
        db.query_i64s("SELECT COUNT(*) FROM products WHERE deleted_at IS NULL OR max_per_customer IS NOT NULL").await,
    );
    for (m, path, body, status, message) in cases {
        let (got, _, answer) = app
            .admin_raw(method(m), path, Some(ADMIN_TOKEN), Some(body))
            .await;
        assert_eq!(got, status, "{m} {path}: {answer}");
        let text = answer["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{m} {path}: {text:?}");
        assert!(answer["data"].is_null());
    }
    // A body that is not JSON by its content type.
    let body = r#"{"name":"x"}"#;
    let request = format!(
        "POST /api/v1/admin/users HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert!(
        app.raw(request.as_bytes())
            .await
            .starts_with("HTTP/1.1 415")
    );
    let after = (
        db.snapshot().await,
        db.count("users").await,
        db.count("stores").await,
        db.count("stock_movements").await,
        db.query_i64s("SELECT COUNT(*) FROM products WHERE deleted_at IS NULL OR max_per_customer IS NOT NULL").await,
    );
    assert_eq!(after, before);
    assert_eq!(app.listed_stocks().await[&1], 10);
    let (status, _) = app.lock(&order(2, &[(1, 1)])).await;
    assert_eq!(status, StatusCode::OK, "the server keeps answering");
    app.stop().await;
    db.drop_database().await;
}

/// A transaction the database kept in part (as a Galera node did with a
/// multi-statement request aborted half-way): its key stayed, its order did not.
/// `kitara check` names the order.
async fn kitara_check_finds_a_key_whose_order_is_missing(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    let app = spawn_app(&db).await;
    let (status, _, body) = app
        .try_lock_keyed(&order(2, &[(1, 1)]), Some("kept"), Duration::from_secs(10))
        .await
        .expect("an answer");
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["data"]["order_id"].as_i64().unwrap();
    app.stop().await;
    let (code, text) = kitara_check(&db).await;
    assert_eq!(code, 0, "{text}");
    // The order and its lines go, with the units they held: stock and ledger still
    // balance, but the key names an order that is not there.
    db.exec("UPDATE products SET current_stock = current_stock + 1 WHERE id = 1")
        .await;
    db.exec(&format!("DELETE FROM order_details WHERE order_id = {id}"))
        .await;
    db.exec(&format!("DELETE FROM orders WHERE id = {id}"))
        .await;
    let (code, text) = kitara_check(&db).await;
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("1 idempotency key(s) name an order that does not exist")
            && text.contains(&format!("orders [{id}]")),
        "{text}"
    );
    assert!(!text.contains("do not add up"), "{text}");
    db.drop_database().await;
}

/// Runs `kitara check` on the test's database: its exit code and output.
async fn kitara_check(db: &TestDb) -> (i32, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kitara"))
        .arg("check")
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .expect("run kitara check");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

async fn a_restock_during_a_flash_sale_loses_and_oversells_nothing(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    // On MariaDB, two writers: their transactions overlap, and must not deadlock on the
    // products' rows.
    let app = Arc::new(
        spawn_app_with(&db, |s| {
            s.admin_token = Some(ADMIN_TOKEN.into());
            if backend == Backend::Mysql {
                s.writers = 2;
            }
        })
        .await,
    );
    let (status, created) = app
        .admin(
            Method::POST,
            "/api/v1/admin/products",
            Some(&json!({"product_name": "flash", "store_id": 1, "current_stock": 100})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = product_id(&created);

    let orders = (0..400).map(|i| {
        let app = app.clone();
        tokio::spawn(async move { app.lock(&order(2 + i % 2, &[(id, 1)])).await.0 })
    });
    let restocks = (0..10).map(|i| {
        let app = app.clone();
        tokio::spawn(async move {
            let body = json!({"delta": 10, "reason": format!("restock {i}")});
            let path = format!("/api/v1/admin/products/{id}/stock");
            app.admin(Method::POST, &path, Some(&body)).await.0
        })
    });
    let restocks: Vec<_> = restocks.collect();
    // Renames of another product of the store, meanwhile: an edit goes alone, so some
    // are told another change is in progress.
    let renames: Vec<_> = (0..10)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                let body = json!({"product_name": format!("masker {i}")});
                let (status, answer) = app
                    .admin(Method::PATCH, "/api/v1/admin/products/1", Some(&body))
                    .await;
                if status == StatusCode::CONFLICT {
                    assert_eq!(
                        answer["message"],
                        "another change of this product is in progress"
                    );
                }
                status
            })
        })
        .collect();
    let mut sold = 0;
    for task in orders.collect::<Vec<_>>() {
        match task.await.unwrap() {
            StatusCode::OK => sold += 1,
            StatusCode::BAD_REQUEST => {}
            other => panic!("an order answered {other}"),
        }
    }
    for task in restocks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    let mut renamed = 0;
    for task in renames {
        match task.await.unwrap() {
            StatusCode::OK => renamed += 1,
            StatusCode::CONFLICT => {}
            other => panic!("a rename answered {other}"),
        }
    }
    assert!(renamed >= 1);
    let (_, listing) = app.admin(Method::GET, "/api/v1/admin/products", None).await;
    let name = listing["data"][0]["product_name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(name.starts_with("masker "), "{name}");
    let stored: Vec<Vec<i64>> = db
        .query_i64s(&format!(
            "SELECT COUNT(*) FROM products WHERE id = 1 AND product_name = '{name}'"
        ))
        .await;
    assert_eq!(stored, [[1]], "the database has the name the listing shows");
    let stock = db.stocks().await[&id];
    assert!((100..=200).contains(&sold), "sold {sold}");
    assert_eq!(stock, 200 - sold, "stock {stock}, sold {sold}");
    assert_eq!(db.held_or_sold().await[&id], sold);
    assert_eq!(app.listed_stocks().await[&id], stock);
    assert_eq!(ledger(&app, id).await.len(), 11);
    TestApp::stop_shared(app).await;

    let (code, text) = kitara_check(&db).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("add up"), "{text}");
    // Stock changed behind Kitara's back: the check names the product.
    db.exec(&format!(
        "UPDATE products SET current_stock = current_stock + 3 WHERE id = {id}"
    ))
    .await;
    let (code, text) = kitara_check(&db).await;
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!("product {id} \"flash\"")) && text.contains("off by +3"),
        "{text}"
    );
    db.drop_database().await;
}

async fn start_up_adopts_products_made_by_sql(backend: Backend) {
    let db = TestDb::with_demo_data(backend).await;
    db.exec("INSERT INTO products (id, product_name, current_stock, store_id) VALUES (9, 'by sql', 5, 1)")
        .await;
    db.exec("INSERT INTO orders (id, buyer_id, quantity, store_id) VALUES (50, 2, 2, 1)")
        .await;
    db.exec("INSERT INTO order_details (id, order_id, product_id, quantity) VALUES (50, 50, 9, 2)")
        .await;
    assert_eq!(db.unbalanced().await.len(), 1);

    let app = spawn_admin_app(&db).await;
    // 5 in stock and 2 held by an order: it came with 7.
    assert_eq!(ledger(&app, 9).await, [(7, "adopted".to_owned())]);
    assert!(db.unbalanced().await.is_empty());
    app.stop().await;
    let app = spawn_app(&db).await;
    app.stop().await;
    assert_eq!(
        db.query_i64s("SELECT COUNT(*) FROM stock_movements WHERE product_id = 9")
            .await,
        [[1]],
        "adopted once"
    );
    let (code, text) = kitara_check(&db).await;
    assert_eq!(code, 0, "{text}");
    db.drop_database().await;
}
