//! A request for a store another node owns goes to that node as it came, and its answer
//! comes back unchanged, its `Kitara-Node` naming the owner that decided it (SPEC.md,
//! "any node answers any request"). A forwarded request is never forwarded again: a
//! node that does not own the store any more answers 503 with `Retry-After`.

use std::sync::Arc;
use std::time::Duration;

use std::task::Poll;

use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt};
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

/// How many times a batch's answers wait for one more pass of the runtime's queue before
/// they leave (`gather`). A commit answers its orders through their stores' actors, one
/// actor task after another, so the first answer of a commit reaches the batch before the
/// rest: sent at once, each would be a frame and a write of its own, and a read and a
/// wake-up at the forwarder (measured: about one frame per request). Letting the tasks
/// already queued run first gathers them; answers stop waiting as soon as a pass brings
/// no new one, so an answer waits for no request still being decided, only for the
/// ones already given.
const GATHER_PASSES: u32 = 3;

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
    let deciding: FuturesUnordered<_> = (0u32..)
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
    // The requests are decided inside the answer's stream, on its connection's task.
    let frames = gather(deciding).map(|answers| Ok(Frame::data(answers)));
    let mut response = Response::new(Either::Right(StreamBody::new(frames.boxed())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(wire::MEDIA_TYPE));
    Ok(response)
}

/// The answers of `deciding` as they are given, those given together in one piece (one
/// frame, one write): each piece waits up to `GATHER_PASSES` passes of the runtime's
/// queue, and only while a pass brings another answer.
fn gather(mut deciding: impl Stream<Item = Bytes> + Unpin) -> impl Stream<Item = Bytes> {
    let mut gathered: Option<BytesMut> = None;
    let mut passes = 0;
    futures_util::stream::poll_fn(move |cx| {
        let mut fresh = false;
        loop {
            match deciding.poll_next_unpin(cx) {
                Poll::Ready(Some(answer)) => {
                    fresh = true;
                    gathered
                        .get_or_insert_with(BytesMut::new)
                        .extend_from_slice(&answer);
                }
                Poll::Ready(None) if gathered.is_none() => return Poll::Ready(None),
                Poll::Pending if gathered.is_some() && fresh && passes < GATHER_PASSES => {
                    passes += 1;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                _ => {
                    passes = 0;
                    return match gathered.take() {
                        Some(answers) => Poll::Ready(Some(answers.freeze())),
                        None => Poll::Pending,
                    };
                }
            }
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::{broadcast, oneshot};

    /// Answers as a commit gives them: every store's actor wakes at the commit, and each
    /// answers after its own share of work (`steps` other tasks' turns), one after the
    /// other, not all in the turn the first one answers in.
    fn answered_after_a_commit(
        steps: &[u32],
    ) -> (broadcast::Sender<()>, Vec<oneshot::Receiver<Bytes>>) {
        let (commit, _) = broadcast::channel(1);
        let answers = steps
            .iter()
            .enumerate()
            .map(|(i, &steps)| {
                let (answer, answered) = oneshot::channel();
                let mut committed = commit.subscribe();
                tokio::spawn(async move {
                    let _ = committed.recv().await;
                    for _ in 0..steps {
                        tokio::task::yield_now().await;
                    }
                    let _ = answer.send(Bytes::from(vec![i as u8]));
                });
                answered
            })
            .collect();
        (commit, answers)
    }

    fn deciding(
        answers: Vec<oneshot::Receiver<Bytes>>,
    ) -> FuturesUnordered<impl Future<Output = Bytes>> {
        answers
            .into_iter()
            .map(|answered| async move { answered.await.unwrap_or_default() })
            .collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_answers_of_one_commit_leave_in_one_piece() {
        let (commit, answers) = answered_after_a_commit(&[0, 1, 1, 2, 2, 2]);
        let mut pieces = Box::pin(gather(deciding(answers)));
        tokio::task::yield_now().await;
        commit.send(()).unwrap();
        let mut seen: Vec<Vec<u8>> = Vec::new();
        while let Some(piece) = pieces.next().await {
            seen.push(piece.to_vec());
        }
        assert_eq!(seen.len(), 1, "one piece, not one per answer: {seen:?}");
        let mut all = seen.concat();
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3, 4, 5], "every answer, once");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_waits_for_no_request_still_being_decided() {
        let (commit, mut answers) = answered_after_a_commit(&[0]);
        // A request whose answer never comes (its store is being loaded, say).
        let (_never, undecided) = oneshot::channel();
        answers.push(undecided);
        let mut pieces = Box::pin(gather(deciding(answers)));
        commit.send(()).unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), pieces.next())
            .await
            .expect("the answer given leaves without the one still being decided");
        assert_eq!(first.as_deref(), Some(&[0u8][..]));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn answers_far_apart_leave_apart() {
        // The second answer comes after more passes than an answer waits for.
        let late = GATHER_PASSES + 3;
        let (commit, answers) = answered_after_a_commit(&[0, late]);
        let mut pieces = Box::pin(gather(deciding(answers)));
        commit.send(()).unwrap();
        let mut seen = Vec::new();
        while let Some(piece) = pieces.next().await {
            seen.push(piece.to_vec());
        }
        assert_eq!(
            seen,
            vec![vec![0], vec![1]],
            "the first did not wait for the late one"
        );
    }
}
