//! The endpoints that operate Kitara rather than sell: liveness, readiness and metrics.
//! (The OpenAPI document is served by `routes`, which it is derived from.)

use bytes::Bytes;
use hyper::StatusCode;

use super::call::{Answer, Call};
use super::openapi::{Refusal, TextAnswer};
use super::response::{self, ApiError};

/// Liveness: the process is alive; never touches the database.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is alive", body = TextAnswer)))]
pub async fn healthz(_: Call<'_>) -> Answer {
    Ok(response::json(StatusCode::OK, "OK", Some("healthy")))
}

/// Readiness: the stores are loaded and the database answered lately.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Stores loaded and the database answered lately", body = TextAnswer),
        (status = 503, description = "The database has not answered for a few seconds, or its Galera node cannot take writes", body = Refusal),
    ))]
pub async fn readyz(call: Call<'_>) -> Answer {
    if call.state.readiness.refusing() {
        return Err(ApiError::NotSynced);
    }
    match call.state.readiness.ready() && call.state.cluster.loaded() {
        true => Ok(response::json(StatusCode::OK, "OK", Some("ready"))),
        false => Err(ApiError::NotReady),
    }
}

/// Prometheus metrics, with the queue depths read now.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus metrics", body = String, content_type = "application/openmetrics-text"),
        (status = 404, description = "Metrics are turned off (KITARA_METRICS=false)", body = Refusal),
    ))]
pub async fn metrics(call: Call<'_>) -> Answer {
    let state = call.state;
    if !state.metrics.enabled {
        return Err(ApiError::NotFound);
    }
    if let Some(webhooks) = &state.webhooks {
        let lag = i64::try_from(webhooks.lag().as_millis()).unwrap_or(i64::MAX);
        state.metrics.webhook_lag_ms.set(lag);
    }
    let deepest = state.cluster.deepest_mailbox();
    state.metrics.mailbox_depth.set(deepest as i64);
    state
        .metrics
        .writer_queue
        .set(state.cluster.writer_depth() as i64);
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
