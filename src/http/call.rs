//! What a handler gets and gives, so that the route table and the handlers need not
//! know each other's files.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::{Request, Response};

use super::request::{RequestBody, read_json_body};
use super::response::{ApiError, Body};
use crate::app::AppState;

/// What a handler gets.
pub struct Call<'a> {
    pub state: &'a Arc<AppState>,
    pub request: Request<RequestBody>,
    /// The path's `{id}`, if it has one that is well formed (`request::parse_id`).
    pub id: Option<i64>,
    /// How long the client may take to send its body.
    pub timeout: Duration,
}

pub type Answer = Result<Response<Body>, ApiError>;

/// A handler as the table holds it: an async fn of a `Call`, its future boxed so that
/// every handler has the same type.
pub type Handler = for<'a> fn(Call<'a>) -> Pin<Box<dyn Future<Output = Answer> + Send + 'a>>;

impl Call<'_> {
    /// The request's head, and its body as rule 1 of the judging order reads it: JSON,
    /// at most 64 KiB, received in time.
    pub async fn json_body(self) -> Result<(Parts, Bytes), ApiError> {
        let (parts, body) = self.request.into_parts();
        let body = read_json_body(&parts.headers, body, self.timeout).await?;
        Ok((parts, body))
    }
}
