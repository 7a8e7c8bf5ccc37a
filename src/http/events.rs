//! `GET /api/v1/admin/stores/{id}/events`: a store's events as `text/event-stream`.

use futures_util::StreamExt;
use http_body_util::{Either, StreamBody};
use hyper::body::Frame;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Response, StatusCode};

use super::call::{Answer, Call};
use super::openapi::{AdminGuard, Refusal};
use super::query::Query;
use super::response::ApiError;
use crate::domain::StoreId;

/// The header a reconnecting `EventSource` sends with the last id it received.
const LAST_EVENT_ID: &str = "last-event-id";

/// The number of the store's last event when the stream started: a client that reads
/// the store's state (a `HEAD` of the stream, then the admin reads) follows from there.
const LAST_EVENT: &str = "kitara-last-event-id";

/// A store's events: history after a position, then live ones as they commit.
#[utoipa::path(operation_id = "admin_store_events", get, path = "/api/v1/admin/stores/{id}/events", tag = "admin", security(("bearer" = [])),
    params(
        ("id" = i64, Path, description = "The store"),
        ("after" = Option<i64>, Query, minimum = 0, description = "Send the events after this position (0 or absent: from the first); the Last-Event-ID header wins"),
        ("Last-Event-ID" = Option<i64>, Header, description = "The last event received; a reconnecting client sends it"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: each event as `id: <seq>`, `event: <type>`, `data: <event JSON>`, a comment line at least every 15 s", content_type = "text/event-stream", body = String,
            headers(("Kitara-Last-Event-Id" = i64, description = "The store's last event when the stream started"))),
        (status = 400, description = "`after` or `Last-Event-ID` is not an integer", body = Refusal),
        AdminGuard,
        (status = 404, description = "No such store", body = Refusal),
        (status = 410, description = "The position is older than the events kept; the message names the first kept", body = Refusal),
        (status = 503, description = "The database is unavailable", body = Refusal),
    ))]
pub async fn stream(call: Call<'_>) -> Answer {
    let store = StoreId(call.id.ok_or(ApiError::StoreNotFound)?);
    let query = Query::parse(call.request.uri().query(), &["after"])?;
    let from_query = query.integer("after", 0..=i64::MAX)?;
    let after = match call.request.headers().get(LAST_EVENT_ID) {
        Some(value) => last_event_id(value)?,
        None => from_query.unwrap_or(0),
    };
    let state = call.state;
    // A `HEAD` (the owner's page asks it before reading a store's state) only needs the
    // last event's number: no follower, no history, and no 410 for purged events.
    let (body, last) = if call.request.method() == Method::HEAD {
        let last = state.events.last(&state.admin, store).await?;
        (futures_util::stream::empty().boxed(), last)
    } else {
        let (frames, last) = state.events.follow(&state.admin, store, after).await?;
        // A write's frames are ready at once, so the connection sends them together.
        let body = futures_util::stream::unfold(frames, |mut frames| async move {
            let write = frames.recv().await?;
            let write = futures_util::stream::iter(write.into_iter().map(|b| Ok(Frame::data(b))));
            Some((write, frames))
        })
        .flatten();
        (body.boxed(), last)
    };
    let mut response = Response::new(Either::Right(StreamBody::new(body)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies that buffer answers would hold events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    headers.insert(LAST_EVENT, HeaderValue::from(last));
    Ok(response)
}

/// `Last-Event-ID` as a position: ASCII digits alone.
fn last_event_id(value: &HeaderValue) -> Result<i64, ApiError> {
    let text = value.to_str().unwrap_or_default().trim();
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    digits
        .then(|| text.parse::<i64>().ok())
        .flatten()
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Last-Event-ID must be an integer between 0 and {}",
                i64::MAX
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_last_event_id_is_a_position_in_digits() {
        let id = |text: &str| last_event_id(&HeaderValue::from_str(text).unwrap());
        assert_eq!(id("42").unwrap(), 42);
        assert_eq!(id(" 7 ").unwrap(), 7);
        for bad in ["", "-1", "4.2", "x", "99999999999999999999"] {
            let Err(ApiError::BadRequest(message)) = id(bad) else {
                panic!("{bad:?} was accepted");
            };
            assert!(message.starts_with("Last-Event-ID"), "{message}");
        }
    }
}
