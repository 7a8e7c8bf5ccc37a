//! The admin endpoints (`/api/v1/admin/`), their token, their bodies, and the owner's
//! page `/admin`.
//!
//! Every admin path checks the token first: 403 while the admin API is disabled, 401
//! with `WWW-Authenticate: Bearer` for a missing or wrong token. Bodies are judged as a
//! lock's are, field by field, each refusal naming its field.

use std::ops::RangeInclusive;

use bytes::Bytes;
use hyper::header::{AUTHORIZATION, CACHE_CONTROL, HeaderValue};
use hyper::http::request::Parts;
use hyper::{HeaderMap, StatusCode};
use serde_json::value::RawValue;

use super::call::{Answer, Call};
use super::forward::forward;
use super::openapi::{
    AdminGuard, AdminProductsAnswer, BodyRefusals, ClusterAnswer, EditProduct, KeyHeader,
    MovementsAnswer, NewProduct, NewStore, NewUser, OrdersAnswer, ProductAnswer, Refusal,
    StockDelta, StoreAnswer, StoresAnswer, UserAnswer,
};
use super::query::Query;
use super::request::{self, Fields, bad, integer, integer_from, required};
use super::response::{self, ApiError};
use super::views;
use crate::app::AppState;
use crate::app::admin::{AdminError, Admitted, Changed};
use crate::cluster::Peer;
use crate::db::load::OrderFilter;
use crate::domain::{
    Fingerprint, IdempotencyKey, MAX_QUANTITY, OrderStatus, ProductId, StoreId, UserId,
};
use crate::store::{ChangeError, ProductChange};

/// The owner's page: plain HTML, CSS and JavaScript, embedded; it works only through
/// the admin API, with the token the owner types.
const PAGE: &str = include_str!("admin.html");

/// Names and reasons: 1 to this many characters of UTF-8.
const MAX_NAME_CHARS: usize = 255;

/// `limit` of `GET /api/v1/admin/orders`.
const ORDERS_LIMIT: RangeInclusive<u32> = 1..=500;
const DEFAULT_ORDERS_LIMIT: u32 = 100;

/// What `GET /admin` shows while the admin API is disabled, with a 403 like every admin
/// path: the page would only ask for a token that cannot exist.
const DISABLED_PAGE: &str = "<!doctype html>\n<html lang=\"en\"><meta charset=\"utf-8\">\
<title>Kitara admin</title>\n<p>The admin API is disabled. Start Kitara with \
<code>KITARA_ADMIN_TOKEN</code> set (at least 16 characters) to use this page.</p>\n";

/// The store owner's page (a page that says so while the admin API is disabled).
#[utoipa::path(operation_id = "admin_page", get, path = "/admin", tag = "admin",
    responses(
        (status = 200, description = "The store owner's page", body = String, content_type = "text/html"),
        (status = 403, description = "The admin API is disabled: a page that says so", body = String, content_type = "text/html"),
    ))]
pub async fn page(call: Call<'_>) -> Answer {
    let (status, page) = match call.state.admin.token.as_ref() {
        Some(_) => (StatusCode::OK, PAGE),
        None => (StatusCode::FORBIDDEN, DISABLED_PAGE),
    };
    let mut response = response::raw(
        status,
        "text/html; charset=utf-8",
        Bytes::from_static(page.as_bytes()),
    );
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The page's own script and styles only, and requests to Kitara only: a name that
    // got into the markup anyway could neither load nor send anything.
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    Ok(response)
}

/// 403 while the admin API is disabled; 401 unless the request carries
/// `Authorization: Bearer <KITARA_ADMIN_TOKEN>`.
pub fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = state.admin.token.as_ref() else {
        return Err(ApiError::AdminDisabled);
    };
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let presented = match (values.next(), values.next()) {
        (Some(value), None) => bearer(value.as_bytes()),
        _ => None,
    };
    match presented {
        Some(presented) if token.accepts(presented) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

/// The credentials of `Bearer <credentials>`; the scheme is case-insensitive.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let credentials = rest.strip_prefix(b" ")?.trim_ascii();
    (!credentials.is_empty()).then_some(credentials)
}

/// Create a user.
#[utoipa::path(operation_id = "admin_new_user", post, path = "/api/v1/admin/users", tag = "admin", security(("bearer" = [])),
    params(KeyHeader),
    request_body = NewUser,
    responses(
        (status = 201, description = "Created", body = UserAnswer),
        (status = 400, description = "A field breaks a rule", body = Refusal),
        AdminGuard,
        (status = 409, description = "A request with this Idempotency-Key is in progress", body = Refusal),
        BodyRefusals,
        (status = 422, description = "The Idempotency-Key was used for another request", body = Refusal),
        (status = 503, description = "The database is unavailable", body = Refusal),
    ))]
pub async fn new_user(call: Call<'_>) -> Answer {
    let state = call.state;
    let (parts, body) = call.json_body().await?;
    let object = object(&body, &["name"])?;
    let name = name(&object, "name")?;
    let key = admin_key("admin_users", None, &parts, &body)?;
    let admin = &state.admin;
    match admin
        .keyed(key, |key| admin.create_user(name.clone(), key))
        .await?
    {
        Admitted::Done(id) => Ok(response::created(views::UserView {
            id: id.0,
            name: &name,
        })),
        Admitted::Replayed { status, data } => replayed(status, &data, &["id", "name"]),
    }
}

/// Every live store.
#[utoipa::path(operation_id = "admin_stores", get, path = "/api/v1/admin/stores", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "Every live store", body = StoresAnswer),
        AdminGuard,
    ))]
pub async fn stores(call: Call<'_>) -> Answer {
    let stores = call.state.admin.stores().await?;
    let views: Vec<views::AdminStoreView<'_>> = stores.iter().map(Into::into).collect();
    Ok(response::json(StatusCode::OK, "OK", Some(views)))
}

/// Create a store; it takes orders at once.
#[utoipa::path(operation_id = "admin_new_store", post, path = "/api/v1/admin/stores", tag = "admin", security(("bearer" = [])),
    params(KeyHeader),
    request_body = NewStore,
    responses(
        (status = 201, description = "Created; it takes orders at once", body = StoreAnswer),
        (status = 400, description = "A field breaks a rule", body = Refusal),
        AdminGuard,
        (status = 409, description = "A request with this Idempotency-Key is in progress", body = Refusal),
        (status = 404, description = "No such user", body = Refusal),
        BodyRefusals,
        (status = 422, description = "The Idempotency-Key was used for another request", body = Refusal),
        (status = 503, description = "The database is unavailable", body = Refusal),
    ))]
pub async fn new_store(call: Call<'_>) -> Answer {
    let state = call.state;
    let (parts, body) = call.json_body().await?;
    let object = object(&body, &["store_name"])?;
    let store_name = name(&object, "store_name")?;
    let owner = UserId(id_field(&object, "user_id")?);
    let key = admin_key("admin_stores", None, &parts, &body)?;
    let admin = &state.admin;
    let created = admin.keyed(key, |key| admin.create_store(store_name, owner, key));
    match created.await? {
        Admitted::Done(store) => Ok(response::created(views::AdminStoreView::from(&store))),
        Admitted::Replayed { status, data } => {
            replayed(status, &data, &["id", "store_name", "user_id"])
        }
    }
}

/// Every orderable product, with its limit.
#[utoipa::path(operation_id = "admin_products", get, path = "/api/v1/admin/products", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "Every orderable product", body = AdminProductsAnswer),
        AdminGuard,
    ))]
pub async fn products(call: Call<'_>) -> Answer {
    let orders = &call.state.orders;
    let catalog = orders
        .listing(orders.answer_by())
        .await
        .map_err(AdminError::from)?;
    let views: Vec<views::AdminProductView<'_>> = catalog
        .products()
        .map(|p| views::AdminProductView::from(&**p))
        .collect();
    Ok(response::json(StatusCode::OK, "OK", Some(views)))
}

/// Create a product.
#[utoipa::path(operation_id = "admin_new_product", post, path = "/api/v1/admin/products", tag = "admin", security(("bearer" = [])),
    params(KeyHeader),
    request_body = NewProduct,
    responses(
        (status = 201, description = "Created; orderable and listed at once", body = ProductAnswer),
        (status = 400, description = "A field breaks a rule", body = Refusal),
        AdminGuard,
        (status = 409, description = "A request with this Idempotency-Key is in progress", body = Refusal),
        (status = 404, description = "No such store", body = Refusal),
        BodyRefusals,
        (status = 422, description = "The Idempotency-Key was used for another request", body = Refusal),
        (status = 503, description = "Busy or the database unavailable", body = Refusal),
    ))]
pub async fn new_product(call: Call<'_>) -> Answer {
    let state = call.state;
    let (parts, body) = call.json_body().await?;
    let object = object(&body, &["product_name"])?;
    let product_name = name(&object, "product_name")?;
    let store = StoreId(id_field(&object, "store_id")?);
    let stock = integer_from(required(&object, "current_stock")?, "current_stock", 0)?;
    let limit = limit(&object)?.flatten();
    let key = admin_key("admin_products", None, &parts, &body)?;
    let admin = &state.admin;
    let changed = admin.keyed(key, |key| {
        admin.create_product(store, product_name, stock, limit, key)
    });
    match changed.await? {
        Admitted::Done(Changed::Here(product)) => {
            Ok(response::created(views::AdminProductView::from(&product)))
        }
        Admitted::Done(Changed::There(peer)) => forward_change(state, &peer, &parts, body).await,
        Admitted::Replayed { status, data } => replayed(status, &data, PRODUCT_FIELDS),
    }
}

/// Rename a product, or set or clear its per-customer limit.
#[utoipa::path(operation_id = "admin_edit_product", patch, path = "/api/v1/admin/products/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path, minimum = 1), KeyHeader),
    request_body = EditProduct,
    responses(
        (status = 200, description = "The product as changed", body = ProductAnswer),
        (status = 400, description = "A field breaks a rule, or nothing to change", body = Refusal),
        AdminGuard,
        (status = 404, description = "No such product", body = Refusal),
        (status = 409, description = "Another change of this product, or a request with this Idempotency-Key, is in progress", body = Refusal),
        BodyRefusals,
        (status = 422, description = "The Idempotency-Key was used for another request", body = Refusal),
        (status = 503, description = "Busy or the database unavailable", body = Refusal),
    ))]
pub async fn edit_product(call: Call<'_>) -> Answer {
    let (state, product) = (call.state, product(call.id)?);
    let (parts, body) = call.json_body().await?;
    let object = object(&body, &["product_name"])?;
    let name = match object.get("product_name") {
        Some(_) => Some(name(&object, "product_name")?),
        None => None,
    };
    let limit = limit(&object)?;
    if name.is_none() && limit.is_none() {
        return Err(bad("send product_name or max_per_customer (or both)"));
    }
    let edit = ProductChange::Edit {
        product,
        name,
        limit,
    };
    change(state, "admin_product PATCH", edit, &parts, body).await
}

/// Delete a product (softly); its holds still end normally.
#[utoipa::path(operation_id = "admin_delete_product", delete, path = "/api/v1/admin/products/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path, minimum = 1), KeyHeader),
    responses(
        (status = 200, description = "Deleted (softly): the product as it was", body = ProductAnswer),
        (status = 400, description = "The Idempotency-Key breaks its rule", body = Refusal),
        AdminGuard,
        (status = 404, description = "No such product", body = Refusal),
        (status = 409, description = "Another change of this product, or a request with this Idempotency-Key, is in progress", body = Refusal),
        (status = 422, description = "The Idempotency-Key was used for another request", body = Refusal),
        (status = 503, description = "Busy or the database unavailable", body = Refusal),
    ))]
pub async fn delete_product(call: Call<'_>) -> Answer {
    let product = product(call.id)?;
    let (parts, _) = call.request.into_parts();
    let delete = ProductChange::Delete { product };
    change(
        call.state,
        "admin_product DELETE",
        delete,
        &parts,
        Bytes::new(),
    )
    .await
}

/// Restock a product, or take back unheld units, with a reason in its ledger.
#[utoipa::path(operation_id = "admin_stock", post, path = "/api/v1/admin/products/{id}/stock", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path, minimum = 1), KeyHeader),
    request_body = StockDelta,
    responses(
        (status = 200, description = "The product with its new stock", body = ProductAnswer),
        (status = 400, description = "A field breaks a rule", body = Refusal),
        AdminGuard,
        (status = 404, description = "No such product", body = Refusal),
        (status = 409, description = "Not enough unheld stock, an edit of the product in progress, or a request with this Idempotency-Key in progress", body = Refusal),
        BodyRefusals,
        (status = 422, description = "The Idempotency-Key was used for another request", body = Refusal),
        (status = 503, description = "Busy or the database unavailable", body = Refusal),
    ))]
pub async fn stock(call: Call<'_>) -> Answer {
    let (state, product) = (call.state, product(call.id)?);
    let (parts, body) = call.json_body().await?;
    let object = object(&body, &["reason"])?;
    let delta = delta(required(&object, "delta")?)?;
    let reason = name(&object, "reason")?;
    let restock = ProductChange::Restock {
        product,
        delta,
        reason,
    };
    change(state, "admin_stock", restock, &parts, body).await
}

/// A product's ledger.
#[utoipa::path(operation_id = "admin_movements", get, path = "/api/v1/admin/products/{id}/movements", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path, minimum = 1)),
    responses(
        (status = 200, description = "The product's ledger, ascending id", body = MovementsAnswer),
        AdminGuard,
        (status = 404, description = "No such product", body = Refusal),
        (status = 503, description = "The database is unavailable", body = Refusal),
    ))]
pub async fn movements(call: Call<'_>) -> Answer {
    let movements = call.state.admin.movements(product(call.id)?).await?;
    let views: Vec<views::MovementView<'_>> = movements.iter().map(Into::into).collect();
    Ok(response::json(StatusCode::OK, "OK", Some(views)))
}

/// Orders of every store or one, filtered by status, in pages.
#[utoipa::path(operation_id = "admin_orders", get, path = "/api/v1/admin/orders", tag = "admin", security(("bearer" = [])),
    params(
        ("store_id" = Option<i64>, Query, minimum = 1),
        ("status" = Option<views::Status>, Query),
        ("after_id" = Option<i64>, Query, minimum = 0, description = "Only orders with a larger id"),
        ("before_id" = Option<i64>, Query, minimum = 1, description = "The newest `limit` orders below it, still ascending"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "Default 100"),
    ),
    responses(
        (status = 200, description = "Orders in ascending id, each as GET /api/v1/order/{id} shows it", body = OrdersAnswer),
        (status = 400, description = "A parameter breaks a rule", body = Refusal),
        AdminGuard,
        (status = 404, description = "No such store", body = Refusal),
        (status = 503, description = "The database is unavailable", body = Refusal),
    ))]
pub async fn orders(call: Call<'_>) -> Answer {
    let admin = &call.state.admin;
    let filter = order_filter(call.request.uri().query())?;
    let orders = admin.orders(filter).await?;
    Ok(response::json_data(&views::orders(&orders)))
}

/// The nodes of the cluster, and who owns which store.
#[utoipa::path(operation_id = "admin_cluster", get, path = "/api/v1/admin/cluster", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "Every node (live or not) and every live store's owner, epoch and lease", body = ClusterAnswer),
        AdminGuard,
        (status = 503, description = "The database is unavailable", body = Refusal),
    ))]
pub async fn cluster(call: Call<'_>) -> Answer {
    let (nodes, stores) = call.state.admin.cluster().await?;
    Ok(response::json(
        StatusCode::OK,
        "OK",
        Some(views::ClusterView::new(&nodes, &stores)),
    ))
}

/// The product a path names; a malformed id names none.
fn product(id: Option<i64>) -> Result<ProductId, ApiError> {
    Ok(id.map(ProductId).ok_or(AdminError::UnknownProduct)?)
}

/// Makes a change of an existing product, here or on the node that owns its store;
/// answers with the product it left.
async fn change(
    state: &AppState,
    endpoint: &str,
    change: ProductChange,
    parts: &Parts,
    body: Bytes,
) -> Answer {
    let product = change.product().ok_or(AdminError::UnknownProduct)?;
    let key = admin_key(endpoint, Some(product.0), parts, &body)?;
    let admin = &state.admin;
    let changed = admin.keyed(key, |key| admin.change_product(product, change, key));
    match changed.await? {
        Admitted::Done(Changed::Here(changed)) => Ok(response::json(
            StatusCode::OK,
            "OK",
            Some(views::AdminProductView::from(&changed)),
        )),
        Admitted::Done(Changed::There(peer)) => forward_change(state, &peer, parts, body).await,
        Admitted::Replayed { status, data } => replayed(status, &data, PRODUCT_FIELDS),
    }
}

/// The fields of a product as every admin answer shows it, in order.
const PRODUCT_FIELDS: &[&str] = &[
    "id",
    "product_name",
    "current_stock",
    "store_id",
    "max_per_customer",
];

/// The request's `Idempotency-Key`, bound to the endpoint, the id its path names and
/// its body written canonically (so key order and spacing do not change it).
fn admin_key(
    endpoint: &str,
    id: Option<i64>,
    parts: &Parts,
    body: &[u8],
) -> Result<Option<(IdempotencyKey, Fingerprint)>, ApiError> {
    let Some(key) = request::idempotency_key(&parts.headers)? else {
        return Ok(None);
    };
    // A body that got this far is one JSON object (or none, for a deletion).
    let canonical = serde_json::from_slice::<serde_json::Value>(body)
        .map(|value| value.to_string())
        .unwrap_or_default();
    Ok(Some((key, Fingerprint::of_admin(endpoint, id, &canonical))))
}

/// The answer an earlier request with the same key got, again: its status, and its
/// `data` as the database had it when that request's change committed, written as the
/// fresh answer writes it (`fields` in order).
fn replayed(status: u16, data: &str, fields: &[&str]) -> Answer {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(data).map_err(|e| {
            tracing::error!(error = %e, "a stored admin answer is not a JSON object");
            ApiError::Internal
        })?;
    let mut rendered = String::from("{");
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            rendered.push(',');
        }
        let value = object.get(*field).unwrap_or(&serde_json::Value::Null);
        rendered.push_str(&serde_json::to_string(field).unwrap_or_default());
        rendered.push(':');
        rendered.push_str(&value.to_string());
    }
    rendered.push('}');
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    Ok(response::replayed(status, rendered.as_bytes()))
}

async fn forward_change(state: &AppState, peer: &Peer, parts: &Parts, body: Bytes) -> Answer {
    forward(state, peer, parts, body)
        .await
        .map_err(|f| AdminError::Change(ChangeError::Failed(f)).into())
}

/// The body as one JSON object. A body that is not UTF-8 is refused naming the text
/// field that holds the bad bytes, if one of `texts` does.
fn object<'a>(body: &'a [u8], texts: &[&str]) -> Result<Fields<'a>, ApiError> {
    if std::str::from_utf8(body).is_err() {
        let lossy = String::from_utf8_lossy(body);
        if let Ok(fields) = serde_json::from_str::<Fields<'_>>(&lossy)
            && let Some(field) = texts.iter().find(|f| {
                fields
                    .get(**f)
                    .is_some_and(|v| v.get().contains(char::REPLACEMENT_CHARACTER))
            })
        {
            return Err(bad(&format!("{field} must be valid UTF-8")));
        }
    }
    request::object(body)
}

/// A name or reason: a string of 1 to 255 characters, kept exactly as sent.
fn name(object: &Fields<'_>, field: &str) -> Result<String, ApiError> {
    let refusal = || {
        bad(&format!(
            "{field} must be a string of 1 to {MAX_NAME_CHARS} characters"
        ))
    };
    let value = required(object, field).map_err(|_| bad(&format!("{field} is required")))?;
    if !value.get().starts_with('"') {
        return Err(refusal());
    }
    // A lone surrogate escape (`"\ud800"`) is no UTF-8 text.
    let text: String = serde_json::from_str(value.get())
        .map_err(|_| bad(&format!("{field} must be valid UTF-8")))?;
    let chars = text.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(refusal());
    }
    Ok(text)
}

/// An id: an integer in `1..=MAX_QUANTITY`, as a lock's ids.
fn id_field(object: &Fields<'_>, field: &str) -> Result<i64, ApiError> {
    integer(required(object, field)?, field)
}

/// `max_per_customer`: absent (`None`), null (`Some(None)`: no limit), or a count.
fn limit(object: &Fields<'_>) -> Result<Option<Option<i64>>, ApiError> {
    const FIELD: &str = "max_per_customer";
    match object.get(FIELD) {
        None => Ok(None),
        Some(value) if value.get() == "null" => Ok(Some(None)),
        Some(value) => integer_from(value, FIELD, 1)
            .map(|n| Some(Some(n)))
            .map_err(|_| {
                bad(&format!(
                    "{FIELD} must be null or an integer between 1 and {MAX_QUANTITY}"
                ))
            }),
    }
}

/// A stock delta: a non-zero integer that fits in 32 bits.
fn delta(value: &RawValue) -> Result<i64, ApiError> {
    match serde_json::from_str::<i32>(value.get()) {
        Ok(n) if n != 0 => Ok(i64::from(n)),
        _ => Err(bad(&format!(
            "delta must be a non-zero integer between {} and {}",
            i32::MIN,
            i32::MAX
        ))),
    }
}

/// The query of `GET /api/v1/admin/orders`: `store_id`, `status`, `after_id`, `limit`,
/// and `before_id` (the newest `limit` orders below it, still in ascending id: what the
/// page polls); other parameters are ignored, a repeated one is refused.
fn order_filter(query: Option<&str>) -> Result<OrderFilter, ApiError> {
    let query = Query::parse(
        query,
        &["store_id", "status", "after_id", "before_id", "limit"],
    )?;
    let limit = i64::from(*ORDERS_LIMIT.start())..=i64::from(*ORDERS_LIMIT.end());
    let status =
        match query.get("status") {
            None => None,
            Some(status) => Some(OrderStatus::parse(status).ok_or_else(|| {
                bad("status must be one of locked, confirmed, cancelled, expired")
            })?),
        };
    Ok(OrderFilter {
        store: query.integer("store_id", 1..=i64::MAX)?.map(StoreId),
        status,
        after: query.integer("after_id", 0..=i64::MAX)?.unwrap_or(0),
        before: query.integer("before_id", 1..=i64::MAX)?,
        limit: query
            .integer("limit", limit)?
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(DEFAULT_ORDERS_LIMIT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::query::refusal;

    #[test]
    fn a_bearer_token_follows_its_scheme() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        for bad in [&b"Basic abc"[..], b"Bearer", b"Bearer ", b"Bearerabc", b""] {
            assert_eq!(bearer(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn names_are_one_to_255_characters_of_utf8() {
        let parse = |body: &[u8]| object(body, &["name"]).and_then(|o| name(&o, "name"));
        assert_eq!(
            parse(r#"{"name":"masker 😷"}"#.as_bytes()).unwrap(),
            "masker 😷"
        );
        let long = format!(r#"{{"name":"{}"}}"#, "é".repeat(255));
        assert_eq!(parse(long.as_bytes()).unwrap().chars().count(), 255);
        let too_long = format!(r#"{{"name":"{}"}}"#, "a".repeat(256));
        for body in [
            too_long.as_bytes(),
            br#"{"name":""}"#,
            br#"{"name":5}"#,
            br#"{"name":null}"#,
            br#"{}"#,
            br#"{"name":"\ud800"}"#,
            b"{\"name\":\"\xff\"}",
        ] {
            let message = refusal(parse(body));
            assert!(message.contains("name"), "{message}");
        }
    }

    #[test]
    fn a_delta_is_a_non_zero_32_bit_integer() {
        let parse = |text: &str| delta(&serde_json::from_str::<Box<RawValue>>(text).unwrap());
        assert_eq!(parse("-5").unwrap(), -5);
        assert_eq!(parse("2147483647").unwrap(), 2_147_483_647);
        for bad in [
            "0",
            "2147483648",
            "-2147483649",
            "\"5\"",
            "1.5",
            "1e2",
            "true",
        ] {
            assert!(refusal(parse(bad)).contains("delta"), "{bad}");
        }
    }

    #[test]
    fn the_orders_query_names_what_it_refuses() {
        let filter =
            order_filter(Some("store_id=2&status=locked&after_id=10&limit=500&x=1")).unwrap();
        assert_eq!(filter.store, Some(StoreId(2)));
        assert_eq!(filter.status, Some(OrderStatus::Locked));
        assert_eq!((filter.after, filter.limit), (10, 500));
        assert_eq!(order_filter(None).unwrap().limit, DEFAULT_ORDERS_LIMIT);
        for (query, field) in [
            ("limit=0", "limit"),
            ("limit=501", "limit"),
            ("limit=abc", "limit"),
            ("after_id=-1", "after_id"),
            ("before_id=0", "before_id"),
            ("store_id=0", "store_id"),
            ("status=paid", "status"),
            ("limit=1&limit=2", "limit"),
        ] {
            assert!(
                refusal(order_filter(Some(query))).contains(field),
                "{query}"
            );
        }
    }
}
