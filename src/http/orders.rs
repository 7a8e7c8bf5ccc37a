//! The order endpoints: lock, get, confirm, cancel, and the `Idempotency-Key` of the
//! three POSTs.
//!
//! A keyed request claims its key for as long as it is in progress (a second request
//! with it gets 409), then is judged as any other. Its key is stored by the writer with
//! what it committed, so the fresh path costs no extra read. Only when the answer is not
//! a fresh 200 (the order was refused, or the database found the key taken) is the key
//! looked up: a stored key with the same fingerprint is replayed with
//! `Idempotent-Replayed: true`, one with another fingerprint is a 422.
//!
//! A replay is rendered from the order the key names, as the database has it: the same
//! order id, lines, detail ids and expiry; a lock's replay says `locked`, as its first
//! answer did, and a confirm's or cancel's the status it ended in, which cannot change
//! again. Storing the rendered answer instead would add a quarter to the database's
//! work per keyed order (BENCHMARKS.md).

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Request, Response};
use tokio::time::Instant;

use super::request::{self, LockBody};
use super::response::{self, ApiError, Body};
use super::{read_json_body, views};
use crate::app::{AppState, Ended};
use crate::domain::{Fingerprint, IdempotencyKey, OrderId, Resolution};
use crate::store::{LockError, LockRequest, Placed, ResolveError};
use crate::writer::KeyRecord;

const IDEMPOTENCY_KEY: &str = "idempotency-key";
const REPLAYED: &str = "idempotent-replayed";

/// `POST /api/v1/order/lock`
pub async fn lock(
    state: &Arc<AppState>,
    request: Request<Incoming>,
    timeout: Duration,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = request.into_parts();
    let body = read_json_body(&parts.headers, body, timeout).await?;
    // The body's rules (1 to 3, `hold_seconds` among the fields) come first, then the
    // key: a header Kitara only needs once the request is known to be one.
    let LockBody {
        order,
        hold_seconds,
    } = request::parse_lock_order(&body)?;
    let key = idempotency_key(&parts.headers)?;
    let expires_at = state.deadline_for(hold_seconds);
    let Some(key) = key else {
        let placed = state
            .lock_order(LockRequest {
                order,
                expires_at,
                key: None,
                answer_by: state.answer_by(),
            })
            .await?;
        return Ok(lock_answer(state, &placed));
    };

    let fingerprint = Fingerprint::of_lock(&order, hold_seconds);
    let _claim = state.keys.claim(&key).ok_or(ApiError::KeyInProgress)?;
    let record = Arc::new(KeyRecord {
        key: key.clone(),
        fingerprint,
    });
    let answer_by = state.answer_by();
    let result = state
        .lock_order(LockRequest {
            order,
            expires_at,
            key: Some(record),
            answer_by,
        })
        .await;
    match result {
        Ok(placed) => Ok(lock_answer(state, &placed)),
        Err(error) => {
            let error = ApiError::from(error);
            if error.is_refusal() {
                replay_or(state, &key, fingerprint, Endpoint::Lock, error, answer_by).await
            } else {
                Err(error)
            }
        }
    }
}

fn lock_answer(state: &AppState, placed: &Placed) -> Response<Body> {
    response::json_data(&views::placed(&state.catalog.snapshot(), placed))
}

/// Which answer a replay renders.
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Lock,
    End,
}

/// `GET /api/v1/order/{id}`
pub async fn get(state: &AppState, id: Option<OrderId>) -> Result<Response<Body>, ApiError> {
    let id = id.ok_or(ApiError::OrderNotFound)?;
    match state.order(id, state.answer_by()).await {
        Ok(Some(order)) => Ok(response::json_data(&views::order(&order))),
        Ok(None) => Err(ApiError::OrderNotFound),
        Err(e) => {
            crate::warn_summarised!("order lookup failed", error = %e, "order lookup failed");
            Err(ApiError::Lock(LockError::Unavailable))
        }
    }
}

/// `POST /api/v1/order/{id}/confirm` and `/cancel`
pub async fn end(
    state: &AppState,
    request: Request<Incoming>,
    id: Option<OrderId>,
    resolution: Resolution,
    timeout: Duration,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = request.into_parts();
    let body = read_json_body(&parts.headers, body, timeout).await?;
    let buyer = request::parse_buyer(&body)?;
    let key = idempotency_key(&parts.headers)?;
    let id = id.ok_or(ApiError::OrderNotFound)?;
    let fingerprint = Fingerprint::of_resolution(resolution, id, buyer);
    let answer_by = state.answer_by();

    let _claim = match &key {
        Some(key) => Some(state.keys.claim(key).ok_or(ApiError::KeyInProgress)?),
        None => None,
    };
    // Not the hot path: a keyed confirm looks its key up first, so that a retry of one
    // that committed is replayed rather than answered as a repeat.
    if let Some(key) = &key
        && let Some(response) = replay(state, key, fingerprint, Endpoint::End, answer_by).await?
    {
        return Ok(response);
    }
    let record = key
        .clone()
        .map(|key| Arc::new(KeyRecord { key, fingerprint }));
    match state
        .end_order(id, buyer, resolution, record, answer_by)
        .await
    {
        Ok(Ended::Order(order)) => Ok(response::json_data(&views::order(&order))),
        Ok(Ended::Conflict(status)) => Err(ApiError::OrderEnded(status)),
        Ok(Ended::NotFound) => Err(ApiError::OrderNotFound),
        Err(ResolveError::KeyTaken) => match &key {
            Some(key) => {
                let taken = ApiError::Resolve(ResolveError::KeyTaken);
                replay_or(state, key, fingerprint, Endpoint::End, taken, answer_by).await
            }
            None => Err(ApiError::Resolve(ResolveError::Unavailable)),
        },
        Err(e) => Err(e.into()),
    }
}

/// The `Idempotency-Key` header, if the request has one.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let (first, second) = (values.next(), values.next());
    match (first, second) {
        (None, _) => Ok(None),
        (Some(value), None) => IdempotencyKey::parse(value.as_bytes())
            .map(Some)
            .map_err(|e| ApiError::BadRequest(e.to_string())),
        (Some(_), Some(_)) => Err(ApiError::BadRequest(
            "send one Idempotency-Key header, not several".into(),
        )),
    }
}

/// The answer `key` got, replayed, if it was stored for this very request; 422 if for
/// another.
async fn replay(
    state: &AppState,
    key: &IdempotencyKey,
    fingerprint: Fingerprint,
    endpoint: Endpoint,
    answer_by: Instant,
) -> Result<Option<Response<Body>>, ApiError> {
    let unavailable = |e: sea_orm::DbErr| {
        crate::warn_summarised!(
            "idempotency key lookup failed",
            error = %e,
            "idempotency key lookup failed"
        );
        ApiError::Lock(LockError::Unavailable)
    };
    let Some(stored) = state
        .stored_key(key, answer_by)
        .await
        .map_err(unavailable)?
    else {
        return Ok(None);
    };
    if stored.fingerprint != fingerprint {
        return Err(ApiError::KeyReused);
    }
    let Some(order) = state
        .order(stored.order_id, answer_by)
        .await
        .map_err(unavailable)?
    else {
        tracing::error!(order = %stored.order_id, "a stored key names an order that is gone");
        return Err(ApiError::Internal);
    };
    let data = match endpoint {
        Endpoint::Lock => views::locked(&order),
        Endpoint::End => views::order(&order),
    };
    let mut response = response::json_data(&data);
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    Ok(Some(response))
}

/// After a refusal of a keyed request: the stored answer if there is one, else the
/// refusal. A key the database found taken but that is gone now (purged meanwhile) is a
/// 503: the retry is judged afresh.
async fn replay_or(
    state: &AppState,
    key: &IdempotencyKey,
    fingerprint: Fingerprint,
    endpoint: Endpoint,
    refusal: ApiError,
    answer_by: Instant,
) -> Result<Response<Body>, ApiError> {
    match replay(state, key, fingerprint, endpoint, answer_by).await? {
        Some(response) => Ok(response),
        None => Err(match refusal {
            ApiError::Lock(LockError::KeyTaken) | ApiError::Resolve(ResolveError::KeyTaken) => {
                ApiError::Lock(LockError::Unavailable)
            }
            other => other,
        }),
    }
}
