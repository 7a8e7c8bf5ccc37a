//! The other nodes, over HTTP: requests forwarded to the node that owns their store go
//! there together (`wire`), one exchange at a time per node; and a keep-alive client
//! asks a node whether it is alive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::header::CONTENT_TYPE;
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::wire;
use crate::domain::NodeId;

/// The header every answer carries: the node that decided it (SPEC.md).
pub const NODE_HEADER: &str = "kitara-node";

/// Another node that owns stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node: NodeId,
    /// `http://host:port`, as it advertised itself, without a trailing `/`.
    pub url: Arc<str>,
}

impl Peer {
    /// A node as the table records it; `None` for an id that is not a node id (a row
    /// written by hand).
    pub fn parse(node: &str, advertise_url: &str) -> Option<Self> {
        Some(Peer {
            node: NodeId::parse(node).ok()?,
            url: advertise_url.trim_end_matches('/').into(),
        })
    }
}

/// Why a forwarded request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The node could not be reached: nothing was sent.
    #[error("the node cannot be reached")]
    Unreachable,
    /// The request was sent, and no whole answer came back in time: it may have been
    /// decided.
    #[error("the node did not answer")]
    Lost,
}

/// Batches out to one node at a time. While they are out, the requests to forward
/// gather into the next batch, as orders gather in the writer while it commits. Two, so
/// that the link is not idle while a batch's answers travel back.
const BATCHES_IN_FLIGHT: usize = 2;

/// A batch counts as out until all its answers arrive, or for this long, whichever comes
/// first: answers the owner gives late (a store it is loading, a database that
/// stalls) never hold back the next batch longer than this. Under load a batch is
/// answered within a commit or two, well inside it.
const OUT_AT_MOST: Duration = Duration::from_millis(50);

/// The most requests in one batch.
const MAX_BATCH: usize = 512;

/// A request waiting to be forwarded, and who waits for its answer.
struct Pending {
    /// The request, as `wire` writes it.
    request: Bytes,
    since: Instant,
    answer: oneshot::Sender<Result<Response<Bytes>, PeerError>>,
}

type Relays = HashMap<Arc<str>, mpsc::UnboundedSender<Pending>>;

/// The client every forward goes through.
#[derive(Clone)]
pub struct Peers {
    client: Client<HttpConnector, Full<Bytes>>,
    /// The longest a forwarded request waits for its answer: the owner answers within
    /// its own bound, so this only cuts a node that died or stalls.
    timeout: Duration,
    /// The task that sends each node its batches, by the node's URL; started at the
    /// first request for that node.
    relays: Arc<Mutex<Relays>>,
    /// How long a relay waits for a request before it leaves.
    idle: Duration,
}

/// How long a relay with nothing to send stays.
const RELAY_IDLE: Duration = Duration::from_secs(60);

impl Peers {
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self {
            client,
            timeout,
            relays: Arc::default(),
            idle: RELAY_IDLE,
        }
    }

    /// Sends a request (its head, whose URI is the path and query, and its body) to
    /// `peer` with the others going there, and waits for its answer, within the timeout.
    pub async fn send(
        &self,
        peer: &Peer,
        parts: &Parts,
        body: &[u8],
    ) -> Result<Response<Bytes>, PeerError> {
        let mut request = BytesMut::new();
        wire::put_request(&mut request, parts, body).map_err(|e| {
            tracing::error!(error = %e, "cannot write a forwarded request");
            PeerError::Unreachable
        })?;
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            request: request.freeze(),
            since: Instant::now(),
            answer,
        };
        self.enqueue(&peer.url, pending)?;
        match tokio::time::timeout(self.timeout, answered).await {
            Ok(Ok(answer)) => answer,
            // Not answered in time, or the exchange ended without a word about it.
            _ => Err(PeerError::Lost),
        }
    }

    /// Queues a request for the node at `url`, starting its relay if it has none. Under
    /// the map's lock, so that a relay that leaves for being idle never leaves a request
    /// behind.
    fn enqueue(&self, url: &Arc<str>, pending: Pending) -> Result<(), PeerError> {
        let mut relays = self.relays.lock().unwrap_or_else(PoisonError::into_inner);
        relays
            .entry(url.clone())
            .or_insert_with(|| {
                let (queue, waiting) = mpsc::unbounded_channel();
                tokio::spawn(relay(self.clone(), url.clone(), waiting));
                queue
            })
            .send(pending)
            .map_err(|_| PeerError::Unreachable)
    }

    /// Whether the node at `url` answers `/readyz` with 200 (everything it owns is
    /// loaded), within a second.
    pub async fn is_ready(&self, url: &str) -> bool {
        let Ok(request) = Request::get(format!("{url}/readyz")).body(Full::new(Bytes::new()))
        else {
            return false;
        };
        let probe = self.client.request(request);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), probe).await,
            Ok(Ok(response)) if response.status() == hyper::StatusCode::OK
        )
    }

    /// Whether the node at `url` answers `/healthz` as `node`, within a second: how a
    /// starting node tells a live holder of its id from one that died.
    pub async fn answers_as(&self, url: &str, node: &NodeId) -> bool {
        let Ok(request) = Request::get(format!("{url}/healthz")).body(Full::new(Bytes::new()))
        else {
            return false;
        };
        let probe = self.client.request(request);
        match tokio::time::timeout(Duration::from_secs(1), probe).await {
            Ok(Ok(response)) => response
                .headers()
                .get(NODE_HEADER)
                .is_some_and(|v| v.as_bytes() == node.as_str().as_bytes()),
            _ => false,
        }
    }
}

/// Sends the node at `url` what waits for it: at once when nothing is in flight (a lone
/// request never waits), else everything that gathered meanwhile, in one batch.
async fn relay(peers: Peers, url: Arc<str>, mut waiting: mpsc::UnboundedReceiver<Pending>) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let target: Arc<str> = format!("{url}{}", wire::PATH).into();
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let first = match tokio::time::timeout(peers.idle, waiting.recv()).await {
            Ok(Some(first)) => first,
            Ok(None) => return,
            Err(_) => {
                // Nothing for a while: the node may be gone for good (a new address
                // after a restart), so the relay leaves rather than wait forever.
                let mut relays = peers.relays.lock().unwrap_or_else(PoisonError::into_inner);
                if waiting.is_empty() {
                    relays.remove(&url);
                    return;
                }
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        // A request whose client left, or that timed out waiting, is not sent: nobody
        // would hear its answer.
        batch.retain(|pending| !pending.answer.is_closed());
        if batch.is_empty() {
            continue;
        }
        tokio::spawn(exchange(peers.clone(), target.clone(), batch, permit));
    }
}

/// One batch and its answers. Each request hears its own answer as it arrives. Those
/// without one hear why: `Unreachable` if the batch was never taken (nothing was
/// decided), `Lost` if it was, and the exchange broke or ran out of time first.
async fn exchange(
    peers: Peers,
    target: Arc<str>,
    batch: Vec<Pending>,
    permit: OwnedSemaphorePermit,
) {
    let deadline = batch
        .iter()
        .map(|p| p.since)
        .min()
        .unwrap_or_else(Instant::now)
        + peers.timeout;
    let mut body = BytesMut::with_capacity(batch.iter().map(|p| p.request.len()).sum());
    let mut waiting: Vec<_> = batch
        .into_iter()
        .map(|pending| {
            body.extend_from_slice(&pending.request);
            Some(pending.answer)
        })
        .collect();
    let request = Request::post(target.as_ref())
        .header(CONTENT_TYPE, wire::MEDIA_TYPE)
        .body(Full::new(body.freeze()));
    let answers = async {
        let request = request.map_err(|e| {
            tracing::error!(error = %e, "cannot build a forwarded batch");
            PeerError::Unreachable
        })?;
        let response = peers.client.request(request).await.map_err(|e| {
            if e.is_connect() {
                PeerError::Unreachable
            } else {
                PeerError::Lost
            }
        })?;
        if response.status() != StatusCode::OK {
            // The batch was refused whole, before any of it was decided.
            tracing::error!(status = %response.status(), "a node refused a forwarded batch");
            return Err(PeerError::Unreachable);
        }
        let mut body = response.into_body();
        let mut buffer = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| PeerError::Lost)?;
            if let Ok(data) = frame.into_data() {
                buffer.extend_from_slice(&data);
            }
            while let Some((index, answer)) = wire::next_answer(&mut buffer).map_err(|e| {
                tracing::error!(error = %e, "a node answered a forwarded batch in a form Kitara cannot read");
                PeerError::Lost
            })? {
                let waiter = usize::try_from(index).ok().and_then(|i| waiting.get_mut(i));
                if let Some(answer_to) = waiter.and_then(Option::take) {
                    // Its request may have timed out meanwhile: nobody to tell.
                    let _ = answer_to.send(Ok(answer));
                }
            }
        }
        Ok(())
    };
    let answered = {
        let mut answers = std::pin::pin!(tokio::time::timeout_at(deadline, answers));
        let mut out = Some(permit);
        let sent = Instant::now();
        loop {
            tokio::select! {
                answered = &mut answers => break answered,
                () = tokio::time::sleep_until(sent + OUT_AT_MOST), if out.is_some() => out = None,
            }
        }
    };
    let failure = match answered {
        // The owner took the batch and ended its answer without some of them.
        Ok(Ok(())) => PeerError::Lost,
        Ok(Err(failure)) => failure,
        Err(_) => PeerError::Lost,
    };
    for answer_to in waiting.into_iter().flatten() {
        let _ = answer_to.send(Err(failure));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::HeaderMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A node that reads one batch and does to it what `then` says.
    async fn owner<F, Fut>(then: F) -> Peer
    where
        F: FnOnce(TcpStream, Vec<Request<Bytes>>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let batch = read_batch(&mut stream).await;
            then(stream, batch).await;
        });
        Peer::parse("n2", &url).expect("a peer")
    }

    /// The requests of the one batch a hand-written HTTP/1.1 request carries.
    async fn read_batch(stream: &mut TcpStream) -> Vec<Request<Bytes>> {
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.expect("read");
            seen.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&seen);
            if let Some(end) = text.find("\r\n\r\n") {
                let head = text[..end].to_ascii_lowercase();
                assert!(
                    head.starts_with(&format!("post {} http/1.1", wire::PATH)),
                    "{head}"
                );
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .expect("a length")
                    .parse()
                    .expect("a number");
                if seen.len() >= end + 4 + length {
                    let body = Bytes::copy_from_slice(&seen[end + 4..end + 4 + length]);
                    return wire::requests(body, MAX_BATCH).expect("a batch");
                }
            }
        }
    }

    const STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/vnd.kitara.forward\r\ntransfer-encoding: chunked\r\n\r\n";

    async fn chunk(stream: &mut TcpStream, frame: &[u8]) {
        let mut out = format!("{:x}\r\n", frame.len()).into_bytes();
        out.extend_from_slice(frame);
        out.extend_from_slice(b"\r\n");
        stream.write_all(&out).await.expect("write");
    }

    fn lock(key: &str) -> Parts {
        Request::post("/api/v1/order/lock")
            .header("idempotency-key", key)
            .body(())
            .expect("a request")
            .into_parts()
            .0
    }

    fn answered(status: StatusCode, body: &'static [u8]) -> Bytes {
        wire::answer(0, status, &HeaderMap::new(), body)
    }

    /// Sends three requests at once, so that they travel in one batch.
    async fn three(peers: &Peers, peer: &Peer) -> Vec<Result<Response<Bytes>, PeerError>> {
        let (a, b, c) = (lock("a"), lock("b"), lock("c"));
        let (a, b, c) = tokio::join!(
            peers.send(peer, &a, b"{}"),
            peers.send(peer, &b, b"{}"),
            peers.send(peer, &c, b"{}"),
        );
        vec![a, b, c]
    }

    #[tokio::test]
    async fn answers_find_their_requests_in_any_order() {
        let peer = owner(|mut stream, batch| async move {
            let keys: Vec<_> = batch
                .iter()
                .map(|r| r.headers()["idempotency-key"].clone())
                .collect();
            assert_eq!(keys, ["a", "b", "c"]);
            stream.write_all(STREAM_HEAD).await.expect("write");
            for (index, status) in [(2, 409), (0, 200), (1, 400)] {
                let status = StatusCode::from_u16(status).expect("a status");
                let frame = wire::answer(index, status, &HeaderMap::new(), b"{}");
                chunk(&mut stream, &frame).await;
            }
            stream.write_all(b"0\r\n\r\n").await.expect("write");
        })
        .await;
        let peers = Peers::new(Duration::from_secs(5));
        let statuses: Vec<_> = three(&peers, &peer)
            .await
            .into_iter()
            .map(|a| a.expect("answered").status().as_u16())
            .collect();
        assert_eq!(statuses, [200, 400, 409]);
    }

    #[tokio::test]
    async fn a_batch_cut_off_leaves_its_unanswered_requests_unknown() {
        let peer = owner(|mut stream, _| async move {
            stream.write_all(STREAM_HEAD).await.expect("write");
            chunk(&mut stream, &answered(StatusCode::OK, b"{}")).await;
            // Half of the second answer, then the owner dies.
            let second = wire::answer(1, StatusCode::OK, &HeaderMap::new(), b"{}");
            chunk(&mut stream, &second[..5]).await;
        })
        .await;
        let peers = Peers::new(Duration::from_secs(5));
        let answers = three(&peers, &peer).await;
        assert_eq!(
            answers[0].as_ref().expect("answered").status(),
            StatusCode::OK
        );
        assert_eq!(answers[1].as_ref().err(), Some(&PeerError::Lost));
        assert_eq!(answers[2].as_ref().err(), Some(&PeerError::Lost));
    }

    #[tokio::test]
    async fn a_stream_that_ends_without_an_answer_leaves_it_unknown() {
        let peer = owner(|mut stream, _| async move {
            stream.write_all(STREAM_HEAD).await.expect("write");
            chunk(&mut stream, &answered(StatusCode::OK, b"{}")).await;
            stream.write_all(b"0\r\n\r\n").await.expect("write");
        })
        .await;
        let peers = Peers::new(Duration::from_secs(5));
        let answers = three(&peers, &peer).await;
        assert!(answers[0].is_ok());
        assert_eq!(answers[1].as_ref().err(), Some(&PeerError::Lost));
        assert_eq!(answers[2].as_ref().err(), Some(&PeerError::Lost));
    }

    #[tokio::test]
    async fn a_batch_refused_whole_decided_nothing() {
        let peer = owner(|mut stream, _| async move {
            let refusal = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}";
            stream.write_all(refusal).await.expect("write");
        })
        .await;
        let peers = Peers::new(Duration::from_secs(5));
        for answer in three(&peers, &peer).await {
            assert_eq!(answer.err(), Some(PeerError::Unreachable));
        }
    }

    #[tokio::test]
    async fn a_node_that_does_not_listen_was_not_reached() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        drop(listener);
        let peer = Peer::parse("n2", &url).expect("a peer");
        let peers = Peers::new(Duration::from_secs(5));
        for answer in three(&peers, &peer).await {
            assert_eq!(answer.err(), Some(PeerError::Unreachable));
        }
    }

    #[tokio::test]
    async fn an_owner_that_never_answers_is_cut_off_at_the_timeout() {
        let peer = owner(|stream, _| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(stream);
        })
        .await;
        let peers = Peers::new(Duration::from_millis(300));
        let started = std::time::Instant::now();
        for answer in three(&peers, &peer).await {
            assert_eq!(answer.err(), Some(PeerError::Lost));
        }
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }

    /// A node that answers every batch on every connection, each request 200, and says
    /// how many requests each batch held. A batch whose first request's key starts
    /// with `slow` it holds for 30 s first, past any forward's timeout.
    async fn every_batch_owner() -> (Peer, mpsc::UnboundedReceiver<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (got, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let got = got.clone();
                tokio::spawn(async move {
                    loop {
                        let batch = read_batch(&mut stream).await;
                        let _ = got.send(batch.len());
                        let key = batch[0].headers()["idempotency-key"].as_bytes();
                        if key.starts_with(b"slow") {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        stream.write_all(STREAM_HEAD).await.expect("write");
                        for index in 0..batch.len() {
                            let index = u32::try_from(index).expect("an index");
                            let frame =
                                wire::answer(index, StatusCode::OK, &HeaderMap::new(), b"{}");
                            chunk(&mut stream, &frame).await;
                        }
                        stream.write_all(b"0\r\n\r\n").await.expect("write");
                    }
                });
            }
        });
        (Peer::parse("n2", &url).expect("a peer"), seen)
    }

    #[tokio::test]
    async fn requests_the_owner_answers_late_hold_back_the_next_batch_only_briefly() {
        let (peer, mut seen) = every_batch_owner().await;
        let peers = Peers::new(Duration::from_secs(10));
        // Two batches the owner holds: as many as may be out at once.
        for key in ["slow-1", "slow-2"] {
            let (peers, peer) = (peers.clone(), peer.clone());
            tokio::spawn(async move { peers.send(&peer, &lock(key), b"{}").await });
            assert_eq!(seen.recv().await, Some(1));
        }
        let started = std::time::Instant::now();
        let answer = peers.send(&peer, &lock("fast"), b"{}").await;
        let waited = started.elapsed();
        assert_eq!(answer.expect("answered").status(), StatusCode::OK);
        assert!(
            waited >= OUT_AT_MOST / 2 && waited < Duration::from_secs(2),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn an_idle_relay_leaves_and_a_new_one_takes_its_place() {
        let (peer, _seen) = every_batch_owner().await;
        let mut peers = Peers::new(Duration::from_secs(5));
        peers.idle = Duration::from_millis(100);
        let relays = || peers.relays.lock().expect("the map").len();
        for _ in 0..2 {
            let answer = peers.send(&peer, &lock("k"), b"{}").await;
            assert_eq!(answer.expect("answered").status(), StatusCode::OK);
            assert_eq!(relays(), 1);
            tokio::time::sleep(Duration::from_millis(400)).await;
            assert_eq!(relays(), 0, "the idle relay left");
        }
    }

    #[tokio::test]
    async fn a_request_nobody_waits_for_any_more_is_not_sent() {
        let (got, mut seen) = mpsc::unbounded_channel();
        let peer = owner(move |mut stream, batch| async move {
            let keys: Vec<_> = batch
                .iter()
                .map(|r| r.headers()["idempotency-key"].clone())
                .collect();
            let _ = got.send(keys);
            stream.write_all(STREAM_HEAD).await.expect("write");
            chunk(&mut stream, &answered(StatusCode::OK, b"{}")).await;
            stream.write_all(b"0\r\n\r\n").await.expect("write");
        })
        .await;
        let peers = Peers::new(Duration::from_secs(5));
        // Given up on before the relay took it: its caller's future is dropped.
        let gone = lock("gone");
        let abandoned = futures_util::FutureExt::now_or_never(peers.send(&peer, &gone, b"{}"));
        assert!(abandoned.is_none(), "queued, not answered");
        let answer = peers.send(&peer, &lock("kept"), b"{}").await;
        assert_eq!(answer.expect("answered").status(), StatusCode::OK);
        assert_eq!(seen.recv().await.expect("a batch"), ["kept"]);
    }

    #[tokio::test]
    async fn a_batch_carries_at_most_max_batch_requests() {
        let (peer, mut seen) = every_batch_owner().await;
        let peers = Peers::new(Duration::from_secs(5));
        let head = lock("k");
        // All queued before the relay first runs (one thread): as few batches as can be.
        let sends = (0..MAX_BATCH + 100).map(|_| peers.send(&peer, &head, b"{}"));
        for answer in futures_util::future::join_all(sends).await {
            assert_eq!(answer.expect("answered").status(), StatusCode::OK);
        }
        let mut sizes = vec![
            seen.recv().await.expect("a batch"),
            seen.recv().await.expect("a batch"),
        ];
        sizes.sort_unstable();
        assert_eq!(sizes, [100, MAX_BATCH]);
    }
}
