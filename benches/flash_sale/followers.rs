//! What attaches to a store's events in the `hot-followed` workload: 100 followers of
//! its stream and a webhook receiver, all on the load generator's runtime, as if they
//! were other processes. Hot with them attached is compared with hot without (`ratio
//! hot-followed/hot`, target ≥ 0.9); the receiver tells the webhooks' throughput and lag
//! at hot's rate.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Followers of the hot store's stream.
pub(crate) const FOLLOWERS: usize = 100;

/// The admin token of the followed server.
pub(crate) const TOKEN: &str = "bench-admin-token-0123456789";

/// The webhooks' secret of the followed server.
pub(crate) const SECRET: &str = "bench-webhook-secret-0123456789";

/// What the followers and the receiver saw.
#[derive(Default)]
pub(crate) struct Seen {
    /// Events the followers got, all together.
    pub(crate) followed: AtomicU64,
    /// Bytes the followers read, all together.
    pub(crate) bytes: AtomicU64,
    /// Streams opened again after one ended (a follower that fell behind is
    /// disconnected).
    pub(crate) reconnects: AtomicU64,
    pub(crate) delivered: AtomicU64,
    /// The last event the receiver got.
    pub(crate) last_delivered: AtomicU64,
    /// Delivery lags sampled (every 16th delivery), in milliseconds.
    pub(crate) lags_ms: Mutex<Vec<u32>>,
}

/// The receiver and the followers of one server.
pub(crate) struct Attached {
    pub(crate) seen: Arc<Seen>,
    tasks: Vec<JoinHandle<()>>,
}

impl Attached {
    /// Starts the webhook receiver; answers its URL for the server's settings.
    pub(crate) async fn receiver() -> (String, Arc<Seen>, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let seen = Arc::new(Seen::default());
        let counting = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = counting.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| receive(seen.clone(), request));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (format!("http://{addr}/hooks"), seen, task)
    }

    /// Attaches `FOLLOWERS` followers of `store`'s stream on `addr` to what `receiver`
    /// started.
    pub(crate) fn follow(
        addr: SocketAddr,
        store: i64,
        seen: Arc<Seen>,
        receiver: JoinHandle<()>,
    ) -> Self {
        let mut tasks = vec![receiver];
        for _ in 0..FOLLOWERS {
            let seen = seen.clone();
            tasks.push(tokio::spawn(follower(addr, store, seen)));
        }
        Attached { seen, tasks }
    }

    /// Waits until the receiver has acknowledged event `events` (the store's events are
    /// its orders, one each), for up to `within`; whether it did.
    pub(crate) async fn drained(&self, events: u64, within: std::time::Duration) -> bool {
        let started = std::time::Instant::now();
        while self.seen.last_delivered.load(Ordering::Relaxed) < events {
            if started.elapsed() > within {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        true
    }

    pub(crate) fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn receive(
    seen: Arc<Seen>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let count = seen.delivered.fetch_add(1, Ordering::Relaxed) + 1;
    if let Some(seq) = field(&body, b"\"seq\":").and_then(|s| s.parse::<u64>().ok()) {
        seen.last_delivered.fetch_max(seq, Ordering::Relaxed);
    }
    if count.is_multiple_of(16)
        && let Some(at) = field(&body, b"\"at\":\"")
        && let Ok(at) = chrono::DateTime::parse_from_rfc3339(at.trim_end_matches('"'))
    {
        let lag = chrono::Utc::now()
            .signed_duration_since(at)
            .num_milliseconds();
        if let Ok(mut lags) = seen.lags_ms.lock() {
            lags.push(u32::try_from(lag.max(0)).unwrap_or(u32::MAX));
        }
    }
    Ok(Response::new(Full::new(Bytes::new())))
}

/// The text after `prefix` in `body`, up to the next `,`.
fn field<'a>(body: &'a [u8], prefix: &[u8]) -> Option<&'a str> {
    let at = body.windows(prefix.len()).position(|w| w == prefix)? + prefix.len();
    let end = body[at..].iter().position(|&b| b == b',')? + at;
    std::str::from_utf8(&body[at..end]).ok()
}

/// One follower: reads the stream as it comes, counting events, and opens it again
/// after its last id when it ends.
async fn follower(addr: SocketAddr, store: i64, seen: Arc<Seen>) {
    let mut last = 0u64;
    let mut opened = false;
    loop {
        if opened {
            seen.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        opened = true;
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let request = format!(
            "GET /api/v1/admin/stores/{store}/events HTTP/1.1\r\nHost: bench\r\n\
             Authorization: Bearer {TOKEN}\r\nLast-Event-ID: {last}\r\n\r\n"
        );
        if stream.write_all(request.as_bytes()).await.is_err() {
            continue;
        }
        // What is read goes after the last bytes of the previous read (an `id:` line
        // may be cut between two reads); only the last complete `id:` line of a read is
        // parsed: the stream is in order, so it tells how many events arrived.
        let mut buffer = vec![0u8; 256 * 1024];
        let mut kept = 0;
        loop {
            let n = match stream.read(&mut buffer[kept..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            seen.bytes.fetch_add(n as u64, Ordering::Relaxed);
            let end = kept + n;
            if let Some(id) = last_id(&buffer[..end])
                && id > last
            {
                seen.followed.fetch_add(id - last, Ordering::Relaxed);
                last = id;
            }
            kept = end.min(TAIL);
            buffer.copy_within(end - kept..end, 0);
        }
    }
}

/// Bytes of a read kept for the next: more than an `id:` line.
const TAIL: usize = 32;

/// The number of the last complete `id: N` line in `read`.
fn last_id(read: &[u8]) -> Option<u64> {
    let mut end = read.len();
    while let Some(at) = read[..end].windows(5).rposition(|w| w == b"\nid: ") {
        let digits = &read[at + 5..end];
        if let Some(stop) = digits.iter().position(|&b| b == b'\n') {
            return std::str::from_utf8(&digits[..stop]).ok()?.parse().ok();
        }
        end = at;
    }
    None
}
