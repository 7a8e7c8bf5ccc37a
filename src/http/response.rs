//! The JSON envelope every answer uses, and the one place where errors become HTTP
//! statuses.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use http_body_util::{Either, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::app::admin::AdminError;
use crate::app::events::StreamError;
use crate::app::keys::{KeyError, Keyed};
use crate::domain::OrderStatus;
use crate::store::{ChangeError, Failure, LockError, ResolveError};

/// The header of an answer given again for a request's `Idempotency-Key`.
pub const REPLAYED: &str = "idempotent-replayed";

/// An answer's body: whole (every answer but one), or sent as it is made (an event
/// stream).
pub type Body = Either<Full<Bytes>, Streamed>;

/// A body sent frame by frame as it is made.
pub type Streamed = StreamBody<BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    server_time: String,
    code: u16,
    message: &'a str,
    data: Option<T>,
}

/// An answer: status, message and `data`.
pub fn json<T: Serialize>(status: StatusCode, message: &str, data: Option<T>) -> Response<Body> {
    let envelope = Envelope {
        server_time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        code: status.as_u16(),
        message,
        data,
    };
    match serde_json::to_vec(&envelope) {
        Ok(body) => with_body(status, body),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise an answer");
            with_body(
                StatusCode::INTERNAL_SERVER_ERROR,
                br#"{"server_time":"1970-01-01T00:00:00Z","code":500,"message":"internal error","data":null}"#.to_vec(),
            )
        }
    }
}

/// An answer 200 whose `data` is JSON rendered already (see `views`).
pub fn json_data(data: &[u8]) -> Response<Body> {
    json_data_with(StatusCode::OK, data)
}

/// An answer 200 whose `data` is JSON Kitara renders itself (`views::write_products`),
/// written by `write_data` straight into the envelope: the listing of a catalogue of
/// 100,000 products is some 13 MB, neither built twice nor parsed again. `capacity`:
/// about how long `data` will be.
pub fn json_rendered(capacity: usize, write_data: impl FnOnce(&mut Vec<u8>)) -> Response<Body> {
    let server_time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut body = Vec::with_capacity(capacity.saturating_add(96));
    body.extend_from_slice(br#"{"server_time":""#);
    body.extend_from_slice(server_time.as_bytes());
    body.extend_from_slice(br#"","code":200,"message":"OK","data":"#);
    write_data(&mut body);
    body.push(b'}');
    with_body(StatusCode::OK, body)
}

/// An answer 201 to a request that created something.
pub fn created<T: Serialize>(data: T) -> Response<Body> {
    json(StatusCode::CREATED, "Created", Some(data))
}

/// A stored answer given again for its `Idempotency-Key`: its status and `data`, marked
/// `Idempotent-Replayed: true`.
pub fn replayed(status: StatusCode, data: &[u8]) -> Response<Body> {
    let mut response = json_data_with(status, data);
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

/// An answer with `status` whose `data` is JSON rendered already.
pub fn json_data_with(status: StatusCode, data: &[u8]) -> Response<Body> {
    let message = status.canonical_reason().unwrap_or("OK");
    match serde_json::from_slice::<&RawValue>(data) {
        Ok(data) => json(status, message, Some(data)),
        Err(e) => {
            tracing::error!(error = %e, "an answer's data is not JSON");
            ApiError::Internal.into_response()
        }
    }
}

fn with_body(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    raw(status, "application/json", Bytes::from(body))
}

/// An answer outside the envelope (`/metrics`, `/admin`, the OpenAPI document).
pub fn raw(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Every way a request can fail, mapped to a status and message in `into_response`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Route not found")]
    NotFound,
    #[error("method not allowed; use {}", allow.to_str().unwrap_or_default())]
    MethodNotAllowed { allow: HeaderValue },
    /// The media type the endpoint takes.
    #[error("Content-Type must be {0}")]
    UnsupportedMediaType(&'static str),
    #[error("request body must not exceed {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("request body was not received in time")]
    Timeout,
    /// A request that breaks a rule of the judging order; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("order not found")]
    OrderNotFound,
    #[error("product not found")]
    ProductNotFound,
    #[error("store not found")]
    StoreNotFound,
    #[error("order is {0}")]
    OrderEnded(OrderStatus),
    #[error("a request with this Idempotency-Key is in progress")]
    KeyInProgress,
    #[error("Idempotency-Key reused with a different request")]
    KeyReused,
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// `KITARA_ADMIN_TOKEN` is unset: every admin path is refused.
    #[error("admin API is disabled")]
    AdminDisabled,
    /// No bearer token, or not the admin token.
    #[error("missing or wrong admin token")]
    Unauthorized,
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// A store's events from a position older than what is kept.
    #[error("{0}")]
    Purged(StreamError),
    /// `GET /readyz` while the database has not answered lately.
    #[error("not ready: the database has not answered for {} s", crate::health::READY_WITHIN.as_secs())]
    NotReady,
    /// `GET /readyz` while the database's Galera node cannot take writes.
    #[error("not ready: the database's Galera node is outside the primary component or not synced")]
    NotSynced,
    /// A bug; the cause was logged.
    #[error("internal error")]
    Internal,
}

impl From<StreamError> for ApiError {
    fn from(error: StreamError) -> Self {
        match error {
            StreamError::StoreNotFound => ApiError::StoreNotFound,
            StreamError::Admin(error) => ApiError::Admin(error),
            purged @ StreamError::Purged { .. } => ApiError::Purged(purged),
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(error: KeyError) -> Self {
        match error {
            KeyError::InProgress => ApiError::KeyInProgress,
            KeyError::Reused => ApiError::KeyReused,
            // Logged where it was found.
            KeyError::Orphan(_) => ApiError::Internal,
            KeyError::Unavailable => ApiError::Lock(LockError::Failed(Failure::Unavailable)),
        }
    }
}

impl<E> From<Keyed<E>> for ApiError
where
    ApiError: From<E>,
{
    fn from(error: Keyed<E>) -> Self {
        match error {
            Keyed::Failed(error) => error.into(),
            Keyed::Key(error) => error.into(),
        }
    }
}

/// How long a client should wait before retrying a 503.
const RETRY_AFTER_SECONDS: &str = "1";

impl ApiError {
    /// The failure of an actor's answer, of whichever kind of request.
    fn failure(&self) -> Option<Failure> {
        match self {
            ApiError::Lock(LockError::Failed(f))
            | ApiError::Resolve(ResolveError::Failed(f))
            | ApiError::Admin(AdminError::Change(ChangeError::Failed(f))) => Some(*f),
            ApiError::Admin(AdminError::Unavailable) => Some(Failure::Unavailable),
            ApiError::Admin(AdminError::ShuttingDown) => Some(Failure::ShuttingDown),
            _ => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        if self.failure().is_some() {
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        match self {
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::BadRequest(_) | ApiError::Lock(_) => StatusCode::BAD_REQUEST,
            ApiError::OrderNotFound | ApiError::ProductNotFound | ApiError::StoreNotFound => {
                StatusCode::NOT_FOUND
            }
            ApiError::OrderEnded(_)
            | ApiError::KeyInProgress
            | ApiError::Resolve(ResolveError::NotHeld) => StatusCode::CONFLICT,
            ApiError::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Purged(_) => StatusCode::GONE,
            ApiError::AdminDisabled => StatusCode::FORBIDDEN,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Admin(
                AdminError::UserNotFound(_)
                | AdminError::StoreNotFound(_)
                | AdminError::ProductNotFound(_)
                | AdminError::UnknownProduct
                | AdminError::Change(ChangeError::NotFound),
            ) => StatusCode::NOT_FOUND,
            ApiError::Admin(AdminError::Change(
                ChangeError::NotEnoughStock | ChangeError::InProgress,
            )) => StatusCode::CONFLICT,
            ApiError::NotReady | ApiError::NotSynced => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal
            | ApiError::Resolve(ResolveError::Failed(_))
            | ApiError::Admin(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Logs a server error, summarised per kind under a flood (`logs`); a refusal, and
    /// a `/readyz` that is not ready, are not worth a line.
    pub fn log(&self) {
        use crate::warn_summarised;
        if !self.status().is_server_error()
            || matches!(self, ApiError::NotReady | ApiError::NotSynced)
        {
            return;
        }
        let error = self;
        match self.failure() {
            Some(Failure::Unavailable) => {
                warn_summarised!("answered 503 (database unavailable)", %error, "answering with a server error")
            }
            Some(Failure::Busy) => {
                warn_summarised!("answered 503 (store is busy)", %error, "answering with a server error")
            }
            Some(Failure::OutcomeUnknown) => {
                warn_summarised!("answered 503 (outcome unknown)", %error, "answering with a server error")
            }
            _ => {
                warn_summarised!("answered a server error", %error, "answering with a server error")
            }
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let message = match self {
            // A hold written behind Kitara's back after start-up is not in any actor.
            ApiError::Resolve(ResolveError::NotHeld) => {
                "order was locked outside Kitara; it is adopted at the next start".to_owned()
            }
            ref other => other.to_string(),
        };
        let mut response = json::<()>(status, &message, None);
        let headers = response.headers_mut();
        if let ApiError::MethodNotAllowed { allow } = self {
            headers.insert(ALLOW, allow);
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="kitara-admin""#),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        }
        response
    }
}
