//! The catalogue at scale: `GET /api/v1/products` with `store_id`, `after_id` and
//! `limit`, its `Link` to the next page, and `GET /api/v1/products/{id}`, on both
//! databases. Unfiltered, the listing stays what Go clients read.

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{Api, Backend, TestDb, order, spawn_admin_app};

crate::on_both_backends!(
    pages_list_every_product_once_and_link_to_the_next,
    a_store_filter_pages_that_store_alone,
    malformed_parameters_are_refused_naming_them_and_change_nothing,
    one_product_is_shown_as_the_listing_shows_it,
    deleted_products_and_stores_are_gone_from_pages_and_lookups,
    an_answered_order_shows_at_once_in_pages_and_lookups,
);

/// Stores 3 (live) and 4 (deleted), and products 4 to 40 spread over stores 1 to 4, so
/// that consecutive ids belong to different stores.
async fn seeded(backend: Backend) -> TestDb {
    let db = TestDb::with_demo_data(backend).await;
    db.exec(
        "INSERT INTO stores (id, store_name, user_id) VALUES (3, 'toko tiga', 1), (4, 'tutup', 1)",
    )
    .await;
    db.exec("UPDATE stores SET deleted_at = CURRENT_TIMESTAMP WHERE id = 4")
        .await;
    let products: Vec<String> = (4..=40)
        .map(|id| format!("({id}, 'p{id}', {}, {})", 100 + id, 1 + id % 4))
        .collect();
    db.exec(&format!(
        "INSERT INTO products (id, product_name, current_stock, store_id) VALUES {}",
        products.join(", ")
    ))
    .await;
    db
}

/// The answer to `GET path`: status, `Link` (if any), body.
async fn get(api: &Api, path: &str) -> (StatusCode, Option<String>, Value) {
    let (status, headers, body) = api.request(Method::GET, path, None, Bytes::new()).await;
    let links: Vec<String> = headers
        .get_all("link")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(links.len() <= 1, "{path}: several Link headers {links:?}");
    (status, links.into_iter().next(), body)
}

fn ids(body: &Value) -> Vec<i64> {
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data array: {body}"))
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect()
}

/// The path a `Link: <path>; rel="next"` names.
fn next_path(link: &str) -> String {
    let (target, rel) = link.split_once(';').expect("a Link with a relation");
    assert_eq!(rel.trim(), r#"rel="next""#, "{link}");
    let path = target
        .trim()
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'));
    path.unwrap_or_else(|| panic!("not <path>: {link}"))
        .to_owned()
}

/// Follows the `Link`s from `first` to the end; every page but the last is full, the
/// last is not full unless it is empty, and only full pages link on.
async fn walk(api: &Api, first: &str, limit: usize) -> (Vec<i64>, Vec<String>) {
    let (mut all, mut paths) = (Vec::new(), vec![first.to_owned()]);
    loop {
        let path = paths.last().unwrap().clone();
        let (status, link, body) = get(api, &path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let page = ids(&body);
        assert!(page.len() <= limit, "{path}: {} products", page.len());
        match link {
            Some(link) => {
                assert_eq!(page.len(), limit, "{path}: only a full page links on");
                paths.push(next_path(&link));
            }
            None => {
                assert!(page.len() < limit, "{path}: a full page must link on");
                all.extend(page);
                return (all, paths);
            }
        }
        all.extend(page);
        assert!(paths.len() < 100, "the links never end: {paths:?}");
    }
}

async fn pages_list_every_product_once_and_link_to_the_next(backend: Backend) {
    let db = seeded(backend).await;
    let app = spawn_admin_app(&db).await;
    let (status, link, listing) = get(&app, "/api/v1/products").await;
    assert_eq!((status, link), (StatusCode::OK, None));
    let every = ids(&listing);
    // Store 4 is deleted: its products are not orderable.
    let live: Vec<i64> = (1..=40).filter(|id| *id <= 3 || id % 4 != 3).collect();
    assert_eq!(every, live);

    // Pages of 7 end on a short page; pages as long as the catalogue end on a full
    // one, whose link leads to an empty last page.
    for limit in [7, every.len(), 1000] {
        let (walked, paths) = walk(&app, &format!("/api/v1/products?limit={limit}"), limit).await;
        assert_eq!(
            walked, every,
            "limit {limit}: every product once, ascending"
        );
        for path in &paths[1..] {
            assert!(
                path.starts_with("/api/v1/products?after_id=")
                    && path.ends_with(&format!("&limit={limit}")),
                "{path}"
            );
        }
        let pages = if limit == every.len() {
            2
        } else {
            every.len().div_ceil(limit)
        };
        assert_eq!(paths.len(), pages, "limit {limit}: {paths:?}");
    }

    // Unknown parameters are ignored, and not carried into the link.
    let (status, link, body) = get(&app, "/api/v1/products?color=red&limit=3&page=9").await;
    assert_eq!((status, ids(&body)), (StatusCode::OK, vec![1, 2, 3]));
    assert_eq!(
        link.as_deref(),
        Some(r#"</api/v1/products?after_id=3&limit=3>; rel="next""#)
    );
    // Only unknown parameters: the listing of every product.
    let (_, link, body) = get(&app, "/api/v1/products?color=red").await;
    assert_eq!((ids(&body), link), (every.clone(), None));
    // `after_id` without `limit`: the rest, without a link.
    let (_, link, body) = get(&app, "/api/v1/products?after_id=36").await;
    assert_eq!((ids(&body), link), (vec![37, 38, 40], None));
    let (_, link, body) = get(
        &app,
        &format!("/api/v1/products?after_id={}&limit=5", i64::MAX),
    )
    .await;
    assert_eq!((ids(&body), link), (vec![], None));

    app.stop().await;
    db.drop_database().await;
}

async fn a_store_filter_pages_that_store_alone(backend: Backend) {
    let db = seeded(backend).await;
    let app = spawn_admin_app(&db).await;
    let (_, _, listing) = get(&app, "/api/v1/products").await;
    for store in [1, 2, 3] {
        let of_store: Vec<i64> = listing["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["store_id"] == store)
            .map(|p| p["id"].as_i64().unwrap())
            .collect();
        let first = format!("/api/v1/products?limit=3&store_id={store}");
        let (walked, paths) = walk(&app, &first, 3).await;
        assert_eq!(walked, of_store, "store {store}");
        for path in &paths[1..] {
            assert!(
                path.starts_with(&format!("/api/v1/products?store_id={store}&after_id=")),
                "{path}"
            );
        }
        let (_, link, body) = get(&app, &format!("/api/v1/products?store_id={store}")).await;
        assert_eq!((ids(&body), link), (of_store.clone(), None));
        let (_, _, body) = get(
            &app,
            &format!("/api/v1/products?store_id={store}&after_id=20"),
        )
        .await;
        let later: Vec<i64> = of_store.iter().copied().filter(|id| *id > 20).collect();
        assert_eq!(ids(&body), later);
    }
    // A store with no products is found, and lists nothing.
    let body = app
        .admin_expect(
            Method::POST,
            "/api/v1/admin/stores",
            Some(&serde_json::json!({"store_name": "empty", "user_id": 1})),
            StatusCode::CREATED,
        )
        .await;
    let empty = body["data"]["id"].as_i64().unwrap();
    let (status, link, body) =
        get(&app, &format!("/api/v1/products?store_id={empty}&limit=5")).await;
    assert_eq!((status, ids(&body), link), (StatusCode::OK, vec![], None));
    // Well formed, but no live store: 404. Store 4 is deleted.
    for store in ["0", "4", "999", &i64::MAX.to_string()] {
        let (status, link, body) =
            get(&app, &format!("/api/v1/products?store_id={store}&limit=5")).await;
        assert_eq!(
            (status, link),
            (StatusCode::NOT_FOUND, None),
            "{store}: {body}"
        );
        assert_eq!(body["message"], "store not found");
    }
    app.stop().await;
    db.drop_database().await;
}

async fn malformed_parameters_are_refused_naming_them_and_change_nothing(backend: Backend) {
    let db = seeded(backend).await;
    let app = spawn_admin_app(&db).await;
    let before = db.snapshot().await;
    let (_, _, listing) = get(&app, "/api/v1/products").await;
    let too_big = "9223372036854775808";
    for (query, name) in [
        ("store_id=", "store_id"),
        ("store_id", "store_id"),
        ("store_id=-1", "store_id"),
        ("store_id=+1", "store_id"),
        ("store_id=1.0", "store_id"),
        ("store_id=%201", "store_id"),
        ("store_id=abc", "store_id"),
        (&format!("store_id={too_big}"), "store_id"),
        ("store_id=1&store_id=1", "store_id"),
        ("after_id=", "after_id"),
        ("after_id=-0", "after_id"),
        ("after_id=1e3", "after_id"),
        (&format!("after_id={too_big}"), "after_id"),
        ("after_id=1&after_id=2", "after_id"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=", "limit"),
        ("limit=-5", "limit"),
        ("limit=0x10", "limit"),
        ("limit=10&limit=10", "limit"),
        ("limit=٣", "limit"),
        // A bad parameter is refused even when another is fine.
        ("store_id=1&limit=0", "limit"),
    ] {
        let (status, link, body) = get(&app, &format!("/api/v1/products?{query}")).await;
        assert_eq!(
            (status, link),
            (StatusCode::BAD_REQUEST, None),
            "{query}: {body}"
        );
        let message = body["message"].as_str().unwrap();
        assert!(message.starts_with(name), "{query}: {message}");
        assert_eq!(body["data"], Value::Null);
    }
    for id in ["0", "01", "-1", "abc", "1.0", too_big, "%31"] {
        let (status, _, body) = get(&app, &format!("/api/v1/products/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {body}");
        assert_eq!(body["message"], "product not found", "{id}");
    }
    assert_eq!(db.snapshot().await, before);
    let (status, _, after) = get(&app, "/api/v1/products").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(after["data"], listing["data"]);
    app.stop().await;
    db.drop_database().await;
}

async fn one_product_is_shown_as_the_listing_shows_it(backend: Backend) {
    let db = seeded(backend).await;
    let app = spawn_admin_app(&db).await;
    let (_, _, listing) = get(&app, "/api/v1/products").await;
    for product in listing["data"].as_array().unwrap() {
        let id = product["id"].as_i64().unwrap();
        let (status, link, body) = get(&app, &format!("/api/v1/products/{id}")).await;
        assert_eq!((status, link), (StatusCode::OK, None), "{body}");
        assert_eq!(&body["data"], product);
    }
    for id in [41, 999_999] {
        let (status, _, body) = get(&app, &format!("/api/v1/products/{id}")).await;
        assert_eq!(
            (status, body["message"].as_str()),
            (StatusCode::NOT_FOUND, Some("product not found"))
        );
    }
    app.stop().await;
    db.drop_database().await;
}

async fn deleted_products_and_stores_are_gone_from_pages_and_lookups(backend: Backend) {
    let db = seeded(backend).await;
    let app = spawn_admin_app(&db).await;
    // Store 4 was deleted before the start: its products are gone.
    for id in [7, 11, 39] {
        let (status, _, body) = get(&app, &format!("/api/v1/products/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {body}");
    }
    app.admin_expect(
        Method::DELETE,
        "/api/v1/admin/products/6",
        None,
        StatusCode::OK,
    )
    .await;
    let (status, _, body) = get(&app, "/api/v1/products/6").await;
    assert_eq!(
        (status, body["message"].as_str()),
        (StatusCode::NOT_FOUND, Some("product not found"))
    );
    let (walked, _) = walk(&app, "/api/v1/products?limit=4", 4).await;
    assert!(!walked.contains(&6), "{walked:?}");
    let (walked, _) = walk(&app, "/api/v1/products?store_id=3&limit=2", 2).await;
    assert!(!walked.contains(&6), "{walked:?}");
    // The ids either side of it page on as before.
    let (_, _, body) = get(&app, "/api/v1/products?after_id=5&limit=2").await;
    assert_eq!(ids(&body), vec![8, 9]);
    app.stop().await;
    db.drop_database().await;
}

async fn an_answered_order_shows_at_once_in_pages_and_lookups(backend: Backend) {
    let db = seeded(backend).await;
    let app = spawn_admin_app(&db).await;
    let stock = |body: &Value, id: i64| {
        let products: Vec<&Value> = match &body["data"] {
            Value::Array(all) => all.iter().collect(),
            one => vec![one],
        };
        products
            .iter()
            .find(|p| p["id"] == id)
            .map(|p| p["current_stock"].as_i64().unwrap())
    };
    for (product, units) in [(9, 4), (9, 1), (10, 7)] {
        let (status, body) = app.lock(&order(2, &[(product, units)])).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let left = db.stocks().await[&product];
        let (_, _, one) = get(&app, &format!("/api/v1/products/{product}")).await;
        assert_eq!(stock(&one, product), Some(left));
        let (_, _, page) = get(
            &app,
            &format!("/api/v1/products?after_id={}&limit=1", product - 1),
        )
        .await;
        assert_eq!(stock(&page, product), Some(left));
        let store = 1 + product % 4;
        let (_, _, page) = get(&app, &format!("/api/v1/products?store_id={store}")).await;
        assert_eq!(stock(&page, product), Some(left));
    }
    assert_eq!(db.stocks().await[&9], 109 - 5);
    app.stop().await;
    db.drop_database().await;
}

crate::on_mysql! {
    every_node_pages_the_catalogue_as_the_database_has_it_mysql =>
        every_node_pages_the_catalogue().await;
}

/// Two nodes, six stores over them: whichever node answered an order or made a product,
/// every node's pages and lookups show it, and a walk through the pages of either node
/// lists every product once.
async fn every_node_pages_the_catalogue() {
    use crate::cluster::{lock_when_served, nodes_with_stores};

    let db = TestDb::new(Backend::Mysql).await;
    db.exec("INSERT INTO users (id, name) VALUES (1, 'owner'), (2, 'buyer')")
        .await;
    let (nodes, products) = nodes_with_stores::<2>(&db, 6, 50, None).await;
    for (i, (&store, &product)) in products.iter().enumerate() {
        let via = &nodes[i % 2].api;
        let (status, body) = lock_when_served(via, &order(2, &[(product, 1 + i as i64)])).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let left = db.stocks().await[&product];
        assert_eq!(left, 50 - 1 - i as i64);
        for node in &nodes {
            let (status, _, one) = get(&node.api, &format!("/api/v1/products/{product}")).await;
            assert_eq!(status, StatusCode::OK, "{}: {one}", node.id);
            assert_eq!(one["data"]["current_stock"], left, "{}", node.id);
            assert_eq!(one["data"]["store_id"], store, "{}", node.id);
            let (_, link, page) = get(
                &node.api,
                &format!("/api/v1/products?store_id={store}&limit=1"),
            )
            .await;
            assert_eq!(ids(&page), vec![product], "{}", node.id);
            assert!(link.is_some(), "{}: a full page links on", node.id);
            assert_eq!(page["data"][0]["current_stock"], left, "{}", node.id);
        }
    }
    let every: Vec<i64> = products.values().copied().collect();
    for node in &nodes {
        let (walked, _) = walk(&node.api, "/api/v1/products?limit=4", 4).await;
        assert_eq!(walked, every, "{}", node.id);
        let (status, _, body) = get(&node.api, "/api/v1/products?store_id=999&limit=4").await;
        assert_eq!(
            (status, body["message"].as_str()),
            (StatusCode::NOT_FOUND, Some("store not found"))
        );
    }
    for mut node in nodes {
        node.stop().await;
    }
    db.drop_database().await;
}
