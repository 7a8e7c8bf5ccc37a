//! The load generator: `CONNECTIONS` closed-loop keep-alive HTTP/1.1 connections, each
//! sending its next request when the previous answer arrives, and what they count.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::CONNECTIONS;
use crate::cpu::{CpuClock, CpuUse};
use crate::report::Row;

/// A small xorshift generator: the load generator needs speed, not quality.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(crate) fn below(&mut self, n: i64) -> i64 {
        (self.next() % n as u64) as i64
    }
}

/// The next request of a connection, given the body of its previous answer if that was
/// a 200; `None` ends the connection.
pub(crate) type MakeRequest =
    Arc<dyn Fn(&mut Rng, Option<&Bytes>) -> Option<Request<Full<Bytes>>> + Send + Sync>;

#[derive(Default)]
pub(crate) struct Load {
    pub(crate) elapsed: Duration,
    pub(crate) ok: u64,
    /// Not-available 400s.
    pub(crate) refused: u64,
    pub(crate) other: u64,
    /// When the last 200 arrived, from the start.
    pub(crate) last_ok: Duration,
    pub(crate) latencies_us: Vec<u32>,
    /// When each of those requests was sent, in milliseconds from the start.
    pub(crate) sent_ms: Vec<u32>,
    /// CPU time spent while the connections ran.
    pub(crate) cpu: Option<CpuUse>,
}

impl Load {
    /// Adds the answers of connections that ran at the same time.
    pub(crate) fn merge(&mut self, other: Load) {
        self.ok += other.ok;
        self.refused += other.refused;
        self.other += other.other;
        self.last_ok = self.last_ok.max(other.last_ok);
        self.latencies_us.extend(other.latencies_us);
        self.sent_ms.extend(other.sent_ms);
    }

    /// Appends a later slice of the same workload: times and CPU add up.
    pub(crate) fn then(&mut self, next: Load) {
        let before = self.elapsed;
        self.elapsed += next.elapsed;
        self.cpu = match (self.cpu.take(), next.cpu) {
            (Some(a), Some(b)) => Some(a.add(b)),
            (a, b) if before.is_zero() => b.or(a),
            _ => None,
        };
        self.merge(Load {
            last_ok: before + next.last_ok,
            ..next
        });
    }

    pub(crate) fn row(mut self, name: &'static str, commits: bool, note: String) -> Row {
        let mut pick = |q: f64| percentile(&mut self.latencies_us, q);
        let answers = self.ok + self.refused + self.other;
        let counted = if commits { self.ok } else { answers };
        let cpu = self.cpu.map(|cpu| cpu.per(counted));
        Row {
            name,
            answers,
            ok: self.ok,
            cpu,
            rate: counted as f64 / self.elapsed.as_secs_f64(),
            p50: pick(0.50),
            p99: pick(0.99),
            p999: pick(0.999),
            note,
        }
    }
}

/// The `q`th quantile (0 to 1) of the latencies, in milliseconds: `kitara simulate`'s
/// percentile, over the latencies sorted.
pub(crate) fn percentile(latencies_us: &mut [u32], q: f64) -> f64 {
    if latencies_us.is_empty() {
        return f64::NAN;
    }
    latencies_us.sort_unstable();
    kitara::simulate::percentile_ms(latencies_us, q * 100.0)
}

/// Runs `CONNECTIONS` closed-loop connections for `duration`, spread evenly over
/// `addrs` (the nodes of a cluster, or one server).
pub(crate) async fn drive(addrs: &[SocketAddr], duration: Duration, make: MakeRequest) -> Load {
    drive_with(addrs, CONNECTIONS, duration, make).await
}

/// `drive` with `connections` connections.
pub(crate) async fn drive_with(
    addrs: &[SocketAddr],
    connections: usize,
    duration: Duration,
    make: MakeRequest,
) -> Load {
    let clock = CpuClock::now();
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let make = make.clone();
            let addr = addrs[c % addrs.len()];
            tokio::spawn(connection(addr, start, c as u64, make, move |_, sent| {
                sent < deadline
            }))
        })
        .collect();
    collect(tasks, start, clock).await
}

/// Runs until each connection has seen three not-available refusals in a row.
pub(crate) async fn drive_until_refused(addr: SocketAddr, make: MakeRequest) -> Load {
    let clock = CpuClock::now();
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let make = make.clone();
            tokio::spawn(connection(
                addr,
                start,
                c as u64,
                make,
                move |load: &Load, _| {
                    load.refused < 3 && start.elapsed() < Duration::from_secs(120)
                },
            ))
        })
        .collect();
    collect(tasks, start, clock).await
}

/// One request on each of `n` connections.
pub(crate) async fn drive_count(addr: SocketAddr, n: usize, make: MakeRequest) -> Load {
    let clock = CpuClock::now();
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|c| {
            let make = make.clone();
            tokio::spawn(connection(addr, start, c as u64, make, |load: &Load, _| {
                load.ok + load.refused + load.other == 0
            }))
        })
        .collect();
    collect(tasks, start, clock).await
}

pub(crate) async fn collect(
    tasks: Vec<tokio::task::JoinHandle<Load>>,
    start: Instant,
    clock: Option<CpuClock>,
) -> Load {
    let mut total = Load::default();
    for task in tasks {
        total.merge(task.await.expect("connection task"));
    }
    total.elapsed = start.elapsed();
    total.cpu = clock.and_then(|clock| clock.used());
    total
}

pub(crate) async fn connection(
    addr: SocketAddr,
    start: Instant,
    seed: u64,
    make: MakeRequest,
    go_on: impl Fn(&Load, Instant) -> bool,
) -> Load {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).ok();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (seed + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut load = Load::default();
    let mut previous: Option<Bytes> = None;
    loop {
        let sent = Instant::now();
        if !go_on(&load, sent) {
            break;
        }
        let Some(mut request) = make(&mut rng, previous.take().as_ref()) else {
            break;
        };
        request
            .headers_mut()
            .insert("host", hyper::header::HeaderValue::from_static("kitara"));
        if sender.ready().await.is_err() {
            load.other += 1;
            break;
        }
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(_) => {
                load.other += 1;
                break;
            }
        };
        let status = response.status();
        let body = response.into_body().collect().await.map(|b| b.to_bytes());
        let now = Instant::now();
        load.latencies_us.push((now - sent).as_micros() as u32);
        load.sent_ms.push((sent - start).as_millis() as u32);
        match (status, body) {
            (StatusCode::OK, Ok(body)) => {
                load.ok += 1;
                load.last_ok = now - start;
                previous = Some(body);
            }
            (StatusCode::BAD_REQUEST, Ok(body))
                if body.windows(13).any(|w| w == b"not available") =>
            {
                load.refused += 1
            }
            _ => load.other += 1,
        }
    }
    load
}
