//! The endpoints that operate Kitara rather than sell: liveness, readiness, metrics and
//! the OpenAPI document.

use bytes::Bytes;
use hyper::StatusCode;

use super::call::{Answer, Call};
use super::openapi;
use super::response::{self, ApiError};

/// `GET /healthz`: the process is alive; never touches the database.
pub async fn healthz(_: Call<'_>) -> Answer {
    Ok(response::json(StatusCode::OK, "OK", Some("healthy")))
}

/// `GET /readyz`: the stores are loaded and the database answered lately.
pub async fn readyz(call: Call<'_>) -> Answer {
    match call.state.readiness.ready() {
        true => Ok(response::json(StatusCode::OK, "OK", Some("ready"))),
        false => Err(ApiError::NotReady),
    }
}

/// `GET /metrics`: the Prometheus text format, with the depths read now.
pub async fn metrics(call: Call<'_>) -> Answer {
    let state = call.state;
    if !state.metrics.enabled {
        return Err(ApiError::NotFound);
    }
    let deepest = state.orders.stores.deepest_mailbox();
    state.metrics.mailbox_depth.set(deepest as i64);
    state
        .metrics
        .writer_queue
        .set(state.admin.writer_depth() as i64);
    let text = state.metrics.render().map_err(|e| {
        tracing::error!(error = %e, "cannot render the metrics");
        ApiError::Internal
    })?;
    Ok(response::raw(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        Bytes::from(text),
    ))
}

/// `GET /api/v1/openapi.json`: the document itself, not in an envelope.
pub async fn openapi(_: Call<'_>) -> Answer {
    Ok(response::raw(
        StatusCode::OK,
        "application/json",
        Bytes::from_static(openapi::document().as_bytes()),
    ))
}
