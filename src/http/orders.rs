//! The order endpoints: lock, get, confirm, cancel, and the `Idempotency-Key` header
//! of the three POSTs.
//!
//! The header is parsed here; what a key does (claimed while its request is in
//! progress, stored with what it committed, looked up when the fresh answer is not a
//! 200) is the application layer's (`app::Orders`, docs/idempotency.md). A replay comes
//! back as `Locked::Replayed` or `Ended::Replayed` and is answered here with
//! `Idempotent-Replayed: true`.
//!
//! A replay is rendered from the order the key names, as the database has it: the same
//! order id, lines, detail ids and expiry; a lock's replay says `locked`, as its first
//! answer did, and a confirm's or cancel's the status it ended in, which cannot change
//! again. Storing the rendered answer instead would add a quarter to the database's
//! work per keyed order (BENCHMARKS.md).

use std::ops::RangeInclusive;

use bytes::Bytes;

use hyper::Response;
use hyper::header::{HeaderValue, LINK};
use hyper::http::request::Parts;

use super::call::{Answer, Call};
use super::forward::{Forwarded, forward};
use super::openapi::{
    self, BodyRefusals, Buyer, CatalogueProductAnswer, EndRefusals, KeyHeader, LockAnswer,
    OrderAnswer, ProductsAnswer, Refusal,
};
use super::query::Query;
use super::request::{self, LockBody};
use super::response::{self, ApiError, Body};
use super::views;
use crate::app::AppState;
use crate::app::orders::{Ended, Locked};
use crate::cluster::Peer;
use crate::domain::{OrderId, ProductId, Resolution, StoreId};
use crate::metrics::LockOutcome;
use crate::store::{Failure, LockError, Placed, ResolveError};
use sea_orm::DbErr;

use super::request::idempotency_key;
use super::response::REPLAYED;

/// The parameters of `GET /api/v1/products`; the others are ignored.
const CATALOGUE_QUERY: [&str; 3] = ["store_id", "after_id", "limit"];

/// `limit` of `GET /api/v1/products`.
const CATALOGUE_LIMIT: RangeInclusive<i64> = 1..=1000;

/// Orderable products with their stock: every one, as the Go service listed them, or,
/// with any of the parameters, a page. Served from the catalog on a node that serves
/// every store: no database read, and never waiting for a store's orders.
#[utoipa::path(get, path = "/api/v1/products", tag = "orders",
    params(
        ("store_id" = Option<i64>, Query, minimum = 0, description = "Only this store's products"),
        ("after_id" = Option<i64>, Query, minimum = 0, description = "Only products with a larger id"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "At most this many; a full page links to the next"),
    ),
    responses(
        (status = 200, description = "Orderable products, ascending id", body = ProductsAnswer,
            headers(("link" = String, description = "With `limit`, when the page is full: `</api/v1/products?[store_id=S&]after_id=LAST&limit=N>; rel=\"next\"`"))),
        (status = 400, description = "A parameter breaks a rule", body = Refusal),
        (status = 404, description = "No such store", body = Refusal),
        (status = 503, description = "The database is unavailable", body = Refusal),
    ))]
pub async fn products(call: Call<'_>) -> Answer {
    let state = call.state;
    let orders = &state.orders;
    let query = Query::parse(call.request.uri().query(), &CATALOGUE_QUERY)?;
    if query.is_empty() {
        let catalog = orders
            .listing(orders.answer_by())
            .await
            .map_err(catalogue_unavailable)?;
        let capacity = catalog.len() * views::PRODUCT_BYTES;
        return Ok(response::json_rendered(capacity, |out| {
            views::write_products(out, catalog.products())
        }));
    }
    let store = query.integer("store_id", 0..=i64::MAX)?.map(StoreId);
    let after = ProductId(query.integer("after_id", 0..=i64::MAX)?.unwrap_or(0));
    let limit = query
        .integer("limit", CATALOGUE_LIMIT)?
        .and_then(|n| u32::try_from(n).ok());
    let answer_by = orders.answer_by();
    if let Some(store) = store
        && !state.admin.has_store(store, answer_by).await?
    {
        return Err(ApiError::StoreNotFound);
    }
    let page = orders
        .page(store, after, limit, answer_by)
        .await
        .map_err(catalogue_unavailable)?;
    let page = page.products(store, after, limit);
    let capacity = page.len() * views::PRODUCT_BYTES;
    let mut response = response::json_rendered(capacity, |out| {
        views::write_products(out, page.iter().copied())
    });
    if let (Some(limit), Some(last)) = (limit, page.last())
        && page.len() == limit as usize
    {
        let store = store.map(|s| format!("store_id={s}&")).unwrap_or_default();
        let next = format!(
            "</api/v1/products?{store}after_id={}&limit={limit}>; rel=\"next\"",
            last.id
        );
        if let Ok(next) = HeaderValue::from_str(&next) {
            response.headers_mut().insert(LINK, next);
        }
    }
    Ok(response)
}

/// One orderable product, as the listing shows it.
#[utoipa::path(operation_id = "get_product", get, path = "/api/v1/products/{id}", tag = "orders",
    params(("id" = i64, Path, minimum = 1)),
    responses(
        (status = 200, description = "The product and its stock", body = CatalogueProductAnswer),
        (status = 404, description = "No such product, or it or its store was deleted", body = Refusal),
        (status = 503, description = "The database is unavailable", body = Refusal),
    ))]
pub async fn product(call: Call<'_>) -> Answer {
    let orders = &call.state.orders;
    let id = call.id.map(ProductId).ok_or(ApiError::ProductNotFound)?;
    match orders.product(id, orders.answer_by()).await {
        Ok(Some(product)) => Ok(response::json_rendered(views::PRODUCT_BYTES, |out| {
            views::write_product(out, &product)
        })),
        Ok(None) => Err(ApiError::ProductNotFound),
        Err(e) => Err(catalogue_unavailable(e)),
    }
}

fn catalogue_unavailable(e: DbErr) -> ApiError {
    crate::warn_summarised!("the catalogue's read failed", error = %e, "the catalogue's read failed");
    ApiError::Lock(LockError::Failed(Failure::Unavailable))
}

/// Lock an order's products, all or nothing, as a hold.
#[utoipa::path(post, path = "/api/v1/order/lock", tag = "orders",
    params(KeyHeader),
    request_body = openapi::LockBody,
    responses(
        (status = 200, description = "Locked: a hold on every line", body = LockAnswer),
        (status = 400, description = "A field breaks a rule, the user is unknown, the products are in several stores, a limit is exceeded, or the stock is short", body = Refusal),
        (status = 409, description = "A request with this Idempotency-Key is in progress", body = Refusal),
        BodyRefusals,
        (status = 422, description = "The Idempotency-Key was used for another request", body = Refusal),
        (status = 503, description = "Busy, the database unavailable, or the outcome unknown: retry with the same key", body = Refusal),
    ))]
pub async fn lock(call: Call<'_>) -> Answer {
    let state = call.state;
    let result = judge_lock(call).await;
    state.metrics.lock_outcome(lock_outcome(&result));
    result
}

async fn judge_lock(call: Call<'_>) -> Answer {
    let state = call.state;
    let (parts, body) = call.json_body().await?;
    // The body's rules (1 to 3, `hold_seconds` among the fields) come first, then the
    // key: a header Kitara only needs once the request is known to be one.
    let LockBody {
        order,
        hold_seconds,
    } = request::parse_lock_order(&body)?;
    let key = idempotency_key(&parts.headers)?;
    match state.orders.lock(order, hold_seconds, key).await? {
        Locked::Here(placed) => Ok(lock_answer(state, &placed)),
        Locked::There(peer, _claim) => forward_lock(state, &peer, &parts, body).await,
        Locked::Replayed(order) => Ok(response::replayed(
            hyper::StatusCode::OK,
            &views::locked(&order),
        )),
    }
}

async fn forward_lock(state: &AppState, peer: &Peer, parts: &Parts, body: Bytes) -> Answer {
    forward(state, peer, parts, body)
        .await
        .map_err(|f| ApiError::Lock(LockError::Failed(f)))
}

fn lock_answer(state: &AppState, placed: &Placed) -> Response<Body> {
    response::json_data(&views::placed(&state.catalog.snapshot(), placed))
}

/// What a lock request ended as.
fn lock_outcome(result: &Answer) -> LockOutcome {
    match result {
        Ok(response) if response.headers().contains_key(REPLAYED) => LockOutcome::Replayed,
        // Counted by the node that decided it.
        Ok(response) if response.extensions().get::<Forwarded>().is_some() => {
            LockOutcome::Forwarded
        }
        Ok(_) => LockOutcome::Placed,
        Err(ApiError::Lock(e)) => match e {
            LockError::UserNotFound => LockOutcome::UserNotFound,
            LockError::MixedStores => LockOutcome::MixedStores,
            LockError::LimitExceeded => LockOutcome::LimitExceeded,
            LockError::NoneAvailable => LockOutcome::NoneAvailable,
            LockError::SomeAvailable => LockOutcome::SomeAvailable,
            LockError::Failed(Failure::Busy) => LockOutcome::Busy,
            LockError::Failed(Failure::Unavailable) | LockError::Failed(Failure::KeyTaken) => {
                LockOutcome::Unavailable
            }
            LockError::Failed(Failure::Conflict) => LockOutcome::Conflict,
            LockError::Failed(Failure::OutcomeUnknown) => LockOutcome::OutcomeUnknown,
            LockError::Failed(Failure::ShuttingDown) => LockOutcome::ShuttingDown,
            LockError::Failed(Failure::Moved | Failure::Unowned | Failure::OwnerUnreachable) => {
                LockOutcome::Moved
            }
        },
        Err(ApiError::KeyInProgress) => LockOutcome::KeyInProgress,
        Err(ApiError::KeyReused) => LockOutcome::KeyReused,
        Err(_) => LockOutcome::Invalid,
    }
}

/// An order as stored.
#[utoipa::path(operation_id = "get_order", get, path = "/api/v1/order/{id}", tag = "orders",
    params(("id" = i64, Path, minimum = 1)),
    responses(
        (status = 200, description = "The order as stored", body = OrderAnswer),
        (status = 404, description = "No such order", body = Refusal),
        (status = 503, description = "The database is unavailable", body = Refusal),
    ))]
pub async fn get(call: Call<'_>) -> Answer {
    let orders = &call.state.orders;
    let id = call.id.map(OrderId).ok_or(ApiError::OrderNotFound)?;
    match orders.order(id, orders.answer_by()).await {
        Ok(Some(order)) => Ok(response::json_data(&views::order(&order))),
        Ok(None) => Err(ApiError::OrderNotFound),
        Err(e) => {
            crate::warn_summarised!("order lookup failed", error = %e, "order lookup failed");
            Err(ApiError::Lock(LockError::Failed(Failure::Unavailable)))
        }
    }
}

/// Confirm a hold: its units are sold.
#[utoipa::path(post, path = "/api/v1/order/{id}/confirm", tag = "orders",
    params(("id" = i64, Path, minimum = 1), KeyHeader),
    request_body = Buyer,
    responses(
        (status = 200, description = "Confirmed (or already confirmed)", body = OrderAnswer),
        EndRefusals,
        BodyRefusals,
    ))]
pub async fn confirm(call: Call<'_>) -> Answer {
    end(call, Resolution::Confirm).await
}

/// Cancel a hold: its units go back to stock.
#[utoipa::path(post, path = "/api/v1/order/{id}/cancel", tag = "orders",
    params(("id" = i64, Path, minimum = 1), KeyHeader),
    request_body = Buyer,
    responses(
        (status = 200, description = "Cancelled (or already cancelled): the units are back", body = OrderAnswer),
        EndRefusals,
        BodyRefusals,
    ))]
pub async fn cancel(call: Call<'_>) -> Answer {
    end(call, Resolution::Cancel).await
}

async fn end(call: Call<'_>, resolution: Resolution) -> Answer {
    let state = call.state;
    let orders = &state.orders;
    let id = call.id;
    let (parts, body) = call.json_body().await?;
    let buyer = request::parse_buyer(&body)?;
    let key = idempotency_key(&parts.headers)?;
    let id = id.map(OrderId).ok_or(ApiError::OrderNotFound)?;
    match orders.end(id, buyer, resolution, key).await? {
        Ended::Order(order) => Ok(response::json_data(&views::order(&order))),
        Ended::Replayed(order) => Ok(response::replayed(
            hyper::StatusCode::OK,
            &views::order(&order),
        )),
        Ended::There(peer, _claim) => forward(state, &peer, &parts, body)
            .await
            .map_err(|f| ApiError::Resolve(ResolveError::Failed(f))),
        Ended::Conflict(status) => Err(ApiError::OrderEnded(status)),
        Ended::NotFound => Err(ApiError::OrderNotFound),
    }
}
