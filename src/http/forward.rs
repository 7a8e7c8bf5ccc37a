//! A request for a store another node owns goes to that node as it came, and its answer
//! comes back unchanged, its `Kitara-Node` naming the owner that decided it (SPEC.md,
//! "any node answers any request"). A forwarded request is never forwarded again: a
//! node that does not own the store any more answers 503 with `Retry-After`.

use std::sync::Arc;
use std::time::Duration;

use std::task::Poll;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited, StreamBody};
use hyper::body::Frame;
use hyper::header::{self, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{HeaderMap, Method, Request, Response};
use tokio::time::Instant;

use super::call::{Answer, Call};
use super::openapi::Refusal;
use super::request::{bad, drain};
use super::response::{ApiError, Body};
use crate::app::AppState;
use crate::cluster::{Peer, PeerError, wire};
use crate::store::Failure;

/// Set on a request one node sends another, with the sender's id.
pub const FORWARDED_BY: &str = "kitara-forwarded-by";

/// Marks an answer another node gave (in the answer's extensions).
#[derive(Debug, Clone, Copy)]
pub struct Forwarded;

/// Whether another node sent this request.
pub fn was_forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED_BY)
}

/// Headers of one connection, not of the request: never passed on.
fn hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name == header::HOST
        || name == header::PROXY_AUTHORIZATION
        || name == header::PROXY_AUTHENTICATE
        || name.as_str() == "keep-alive"
}

/// Sends the request (its head and the body already read) to `peer`, and answers with
/// what it answered. The failure says what the client should hear when that fails:
/// `OwnerUnreachable` if nothing was sent, `OutcomeUnknown` if the request was sent
/// and no whole answer came back, `Moved` for a request another node forwarded here.
pub async fn forward(
    state: &AppState,
    peer: &Peer,
    parts: &Parts,
    body: Bytes,
) -> Result<Response<Body>, Failure> {
    if was_forwarded(&parts.headers) {
        return Err(Failure::Moved);
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = Request::builder().method(parts.method.clone()).uri(path);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            request = request.header(name, value);
        }
    }
    let (request, ()) = request
        .header(FORWARDED_BY, state.cluster.node.id.as_str())
        .body(())
        .map_err(|e| {
            tracing::error!(error = %e, "cannot build a forwarded request");
            Failure::OwnerUnreachable
        })?
        .into_parts();
    let started = Instant::now();
    let answer = state.cluster.peers.send(peer, &request, &body).await;
    state.metrics.forwarded(started.elapsed());
    match answer {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            parts.extensions.insert(Forwarded);
            Ok(Response::from_parts(parts, Either::Left(Full::new(body))))
        }
        Err(error) => {
            crate::warn_summarised!("a forwarded request failed", node = %peer.node, %error, "a forwarded request failed");
            Err(match error {
                PeerError::Unreachable => Failure::OwnerUnreachable,
                PeerError::Lost => Failure::OutcomeUnknown,
            })
        }
    }
}

/// Drops the headers of the connection the answer came on.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers.keys().filter(|n| hop_by_hop(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// The largest batch a node takes: `MAX_BATCH_REQUESTS` requests of a few hundred bytes
/// each, with room to spare. A request inside keeps its own limit (rule 1).
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// The most requests in one batch (a node sends at most 512).
const MAX_BATCH_REQUESTS: usize = 4096;

/// Requests another node forwarded together (`cluster::wire`). Each is answered as if it
/// had come alone, as forwarded (never forwarded again), and its answer streams back as
/// soon as it is given: a request waits for no other. A batch that does not decode is
/// refused whole, before any of it is decided.
#[utoipa::path(post, path = "/api/v1/cluster/forward", tag = "cluster",
    request_body(content = Vec<u8>, content_type = "application/vnd.kitara.forward",
        description = "Requests, each its method, path, headers and body (src/cluster/wire.rs)"),
    responses(
        (status = 200, description = "Each request's answer, as it is given", body = Vec<u8>, content_type = "application/vnd.kitara.forward"),
        (status = 400, description = "The batch does not decode, or holds too many requests", body = Refusal),
        (status = 408, description = "The batch was not received in time", body = Refusal),
        (status = 413, description = "The batch is larger than 8 MiB", body = Refusal),
        (status = 415, description = "Content-Type is not application/vnd.kitara.forward", body = Refusal),
    ))]
pub async fn batch(call: Call<'_>) -> Answer {
    let state = call.state.clone();
    let timeout = call.timeout;
    let (parts, mut body) = call.request.into_parts();
    let media = parts.headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes);
    if media != Some(wire::MEDIA_TYPE.as_bytes()) {
        return Err(ApiError::UnsupportedMediaType(wire::MEDIA_TYPE));
    }
    let read = Limited::new(&mut body, MAX_BATCH_BYTES).collect();
    let batch = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(batch)) => batch.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            // Read a modest rest before refusing, as rule 1 does: closing a connection
            // with unread data resets it, and the answer could be lost.
            let _ = tokio::time::timeout(timeout, drain(&mut body)).await;
            return Err(ApiError::PayloadTooLarge {
                limit: MAX_BATCH_BYTES,
            });
        }
        Ok(Err(_)) => return Err(bad("request body could not be read")),
        Err(_) => return Err(ApiError::Timeout),
    };
    let requests = wire::requests(batch, MAX_BATCH_REQUESTS).map_err(|e| bad(&e.to_string()))?;
    let node = super::node_header(&state);
    let mut deciding: FuturesUnordered<_> = (0u32..)
        .zip(requests)
        .map(|(index, request)| {
            let (state, node) = (state.clone(), node.clone());
            async move {
                let answer = answer_forwarded(&state, request, timeout, node).await;
                let (parts, body) = answer.into_parts();
                let body = match body {
                    Either::Left(whole) => whole.collect().await.map(|b| b.to_bytes()),
                    Either::Right(_) => Ok(Bytes::new()),
                };
                let body = body.unwrap_or_else(|never| match never {});
                wire::answer(index, parts.status, &parts.headers, &body)
            }
        })
        .collect();
    // The requests are decided inside the answer's stream, on its connection's task:
    // the answers a commit gives at once leave in one frame, one write.
    let frames = futures_util::stream::poll_fn(move |cx| {
        let mut ready: Option<BytesMut> = None;
        loop {
            match deciding.poll_next_unpin(cx) {
                Poll::Ready(Some(answer)) => {
                    ready
                        .get_or_insert_with(BytesMut::new)
                        .extend_from_slice(&answer);
                }
                Poll::Ready(None) if ready.is_none() => return Poll::Ready(None),
                _ => {
                    return match ready {
                        Some(answers) => Poll::Ready(Some(Ok(Frame::data(answers.freeze())))),
                        None => Poll::Pending,
                    };
                }
            }
        }
    });
    let mut response = Response::new(Either::Right(StreamBody::new(frames.boxed())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(wire::MEDIA_TYPE));
    Ok(response)
}

/// One request of a batch. It counts as forwarded whatever its headers say, so that it
/// is never forwarded again. Only writes are forwarded: a read (an event stream would
/// never end) or a batch inside a batch is refused.
async fn answer_forwarded(
    state: &Arc<AppState>,
    mut request: Request<Bytes>,
    timeout: Duration,
    node: HeaderValue,
) -> Response<Body> {
    if matches!(*request.method(), Method::GET | Method::HEAD) || request.uri().path() == wire::PATH
    {
        return bad("only writes are forwarded").into_response();
    }
    if !was_forwarded(request.headers()) {
        request
            .headers_mut()
            .insert(FORWARDED_BY, HeaderValue::from_static("unknown"));
    }
    let request = request.map(|body| Either::Right(Full::new(body)));
    super::answer(state, request, timeout, node).await
}
