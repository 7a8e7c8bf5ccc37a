//! A request for a store another node owns goes to that node as it came, and its answer
//! comes back unchanged, its `Kitara-Node` naming the owner that decided it (SPEC.md,
//! "any node answers any request"). A forwarded request is never forwarded again: a
//! node that does not own the store any more answers 503 with `Retry-After`.

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::header::{self, HeaderName};
use hyper::http::request::Parts;
use hyper::{HeaderMap, Request, Response};
use tokio::time::Instant;

use super::response::Body;
use crate::app::AppState;
use crate::cluster::{Peer, PeerError};
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
    let mut request = Request::builder()
        .method(parts.method.clone())
        .uri(format!("{}{path}", peer.url));
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            request = request.header(name, value);
        }
    }
    let request = request
        .header(FORWARDED_BY, state.cluster.node.id.as_str())
        .body(Full::new(body))
        .map_err(|e| {
            tracing::error!(error = %e, "cannot build a forwarded request");
            Failure::OwnerUnreachable
        })?;
    let started = Instant::now();
    let answer = state.cluster.peers.send(request).await;
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
