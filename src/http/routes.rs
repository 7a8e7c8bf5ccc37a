//! The one route table. Every path Kitara serves is one row: its path, its label in the
//! metrics, whether it needs the admin token, and for each method it answers, the
//! handler (which carries its own `#[utoipa::path]`). The router, the `Allow` header of a
//! 405, the metric labels and the OpenAPI document are all derived from this table, so
//! adding an endpoint is a handler in the file of its kind and one row here. The
//! document's own endpoint lives here too: it is the table, described.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use utoipa::OpenApi;

use super::call::{Answer, Call, Handler};
use super::{admin, events, forward, openapi, operations, orders, response};

/// One method of a route, and who answers it.
pub struct Operation {
    pub method: Method,
    pub handler: Handler,
}

pub struct Route {
    pub path: &'static str,
    /// Its label in `kitara_http_requests_total{route}` and the latency histogram.
    pub label: &'static str,
    /// Whether it checks the admin token first (403 while the admin API is disabled,
    /// 401 without the token), before its method.
    pub admin: bool,
    /// `HEAD` is answered as `GET`, without the body.
    pub operations: &'static [Operation],
}

/// `handler!(orders::lock)`: the async fn `orders::lock`, boxed as a `Handler`.
macro_rules! handler {
    ($f:path) => {{
        fn boxed(call: Call<'_>) -> Pin<Box<dyn Future<Output = Answer> + Send + '_>> {
            Box::pin($f(call))
        }
        boxed as Handler
    }};
}

/// Declares the table: `ROUTES`, and `Documented`, the OpenAPI operations of its
/// methods (each handler carries its own `#[utoipa::path]`).
macro_rules! routes {
    ($(
        $path:literal, $label:literal, admin: $admin:literal,
        [$($method:ident => $handler:path);+ $(;)?]
    ),* $(,)?) => {
        /// Every route. A fixed segment wins over a parameter, so `/api/v1/order/lock` is
        /// the lock endpoint, never the order `lock`.
        pub static ROUTES: &[Route] = &[$(
            Route {
                path: $path,
                label: $label,
                admin: $admin,
                operations: &[$(Operation {
                    method: Method::$method,
                    handler: handler!($handler),
                }),+],
            }
        ),*];

        /// The document's paths: the operation of every method of every route.
        #[derive(utoipa::OpenApi)]
        #[openapi(paths($($($handler),+),*))]
        pub struct Documented;
    };
}

routes![
    "/healthz", "healthz", admin: false, [GET => operations::healthz],
    "/readyz", "readyz", admin: false, [GET => operations::readyz],
    "/metrics", "metrics", admin: false, [GET => operations::metrics],
    "/api/v1/openapi.json", "openapi", admin: false, [GET => openapi_json],
    "/api/v1/products", "products", admin: false, [GET => orders::products],
    "/api/v1/products/{id}", "product", admin: false, [GET => orders::product],
    "/api/v1/order/lock", "lock", admin: false, [POST => orders::lock],
    "/api/v1/order/{id}", "order", admin: false, [GET => orders::get],
    "/api/v1/order/{id}/confirm", "confirm", admin: false, [POST => orders::confirm],
    "/api/v1/order/{id}/cancel", "cancel", admin: false, [POST => orders::cancel],
    "/admin", "admin_page", admin: false, [GET => admin::page],
    "/api/v1/admin/users", "admin_users", admin: true,
        [POST => admin::new_user],
    "/api/v1/admin/stores", "admin_stores", admin: true,
        [GET => admin::stores; POST => admin::new_store],
    "/api/v1/admin/products", "admin_products", admin: true,
        [GET => admin::products; POST => admin::new_product],
    "/api/v1/admin/products/{id}", "admin_product", admin: true,
        [PATCH => admin::edit_product;
         DELETE => admin::delete_product],
    "/api/v1/admin/products/{id}/stock", "admin_stock", admin: true,
        [POST => admin::stock],
    "/api/v1/admin/products/{id}/movements", "admin_movements", admin: true,
        [GET => admin::movements],
    "/api/v1/admin/orders", "admin_orders", admin: true, [GET => admin::orders],
    "/api/v1/admin/stores/{id}/events", "admin_events", admin: true, [GET => events::stream],
    "/api/v1/admin/cluster", "admin_cluster", admin: true, [GET => admin::cluster],
    "/api/v1/cluster/forward", "cluster_forward", admin: false, [POST => forward::batch],
];

/// The OpenAPI document of this table, rendered once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| openapi::render(Documented::openapi()))
}

/// This document, not in an envelope.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", body = Object)))]
async fn openapi_json(_: Call<'_>) -> Answer {
    Ok(response::raw(
        StatusCode::OK,
        "application/json",
        Bytes::from_static(document().as_bytes()),
    ))
}

/// The label of a request whose path names no route.
pub const UNMATCHED: &str = "unmatched";

/// The labels requests are counted by: every route's, in the table's order, then
/// `UNMATCHED`.
pub fn labels() -> Vec<&'static str> {
    ROUTES.iter().map(|r| r.label).chain([UNMATCHED]).collect()
}

/// Finds a path's route: its index in `ROUTES` (its metric label's too), and the raw
/// `{id}` of the path, if it has one.
pub fn find(path: &str) -> Option<(usize, Option<&str>)> {
    static ROUTER: OnceLock<matchit::Router<usize>> = OnceLock::new();
    let router = ROUTER.get_or_init(|| {
        let mut router = matchit::Router::new();
        for (i, route) in ROUTES.iter().enumerate() {
            if let Err(e) = router.insert(route.path, i) {
                unreachable!("Kitara's routes do not conflict: {e}");
            }
        }
        router
    });
    router
        .at(path)
        .ok()
        .map(|matched| (*matched.value, matched.params.get("id")))
}

impl Route {
    /// The operation that answers `method` (`HEAD` as `GET`).
    pub fn operation(&self, method: &Method) -> Option<&Operation> {
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        self.operations.iter().find(|o| o.method == *method)
    }

    /// The `Allow` header of a 405 on this route.
    pub fn allow(&self) -> HeaderValue {
        let mut methods: Vec<&str> = Vec::new();
        for operation in self.operations {
            methods.push(operation.method.as_str());
            if operation.method == Method::GET {
                methods.push("HEAD");
            }
        }
        HeaderValue::from_str(&methods.join(", ")).unwrap_or(HeaderValue::from_static("GET"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the table says is what the document says: the same paths, each with the
    /// methods the table routes.
    #[test]
    fn the_document_has_every_route_and_method_of_the_table() {
        let document: serde_json::Value = serde_json::from_str(document()).unwrap();
        assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
        assert!(document["components"]["schemas"]["OrderView"].is_object());
        let paths = document["paths"].as_object().unwrap();
        assert_eq!(paths.len(), ROUTES.len());
        for route in ROUTES {
            let item = paths[route.path].as_object().unwrap_or_else(|| {
                panic!("{} is not in the document", route.path);
            });
            let mut documented: Vec<String> = item.keys().map(|m| m.to_uppercase()).collect();
            let mut routed: Vec<String> = route
                .operations
                .iter()
                .map(|o| o.method.to_string())
                .collect();
            documented.sort();
            routed.sort();
            assert_eq!(documented, routed, "{}", route.path);
        }
    }

    #[test]
    fn every_label_is_unique() {
        let mut labels = labels();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), ROUTES.len() + 1);
    }
}
