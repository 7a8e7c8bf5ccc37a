//! Few clients: hot at 16 connections, against the obvious alternative, a durable
//! Redis+Lua check-and-decrement (`appendonly yes`, `appendfsync always`), at 16 and 256
//! connections, in alternating slices of one phase. Redis runs as a private
//! `redis-server` on a free port in a temporary directory, stopped by its pid; without
//! `redis-server` on the machine the baseline is skipped, and the report says so.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::cpu::CpuClock;
use crate::db::BenchDb;
use crate::load::{Load, MakeRequest, Rng, collect, drive, drive_with};
use crate::report::Row;
use crate::servers::{Running, Server};
use crate::workloads::lock_request;
use crate::{Bench, CONNECTIONS, HUGE_STOCK, USERS};

/// The connections of the few-clients workloads.
pub(crate) const FEW: usize = 16;

/// Check the stock, take the units, number the order: what a lock is, in Lua.
const SCRIPT: &str = "local stock = tonumber(redis.call('GET', KEYS[1])) \
    local want = tonumber(ARGV[1]) \
    if stock == nil or stock < want then return -1 end \
    redis.call('DECRBY', KEYS[1], want) \
    return redis.call('INCR', KEYS[2])";

/// What the phase measured: rows by key (`hot-c16`, `hot-c256`, `redis-c16`,
/// `redis-c256`), why Redis was skipped if it was, and hot's commit cycle at 16
/// connections.
pub(crate) struct FewClients {
    pub(crate) rows: Vec<(&'static str, Row)>,
    pub(crate) redis: Option<String>,
    pub(crate) cycle: Option<Cycle>,
}

/// One commit cycle of hot at 16 connections, from Kitara's own metrics.
pub(crate) struct Cycle {
    pub(crate) orders_per_commit: f64,
    pub(crate) transaction_ms: f64,
    pub(crate) commits_per_second: f64,
}

pub(crate) async fn few_clients(bench: &Bench) -> FewClients {
    let db = BenchDb::create(bench, 1, 1, HUGE_STOCK).await;
    let running = Running::start(&db, Server::Kitara).await;
    let redis = Redis::start().await;
    let unit = bench.duration() / (2 * bench.rounds());
    let hot: MakeRequest = std::sync::Arc::new(|rng: &mut Rng, _: Option<&bytes::Bytes>| {
        Some(lock_request(rng.below(USERS) + 1, 1))
    });
    let (mut kitara, mut kitara256) = (Load::default(), Load::default());
    let (mut redis16, mut redis256) = (Load::default(), Load::default());
    // Commit time, commits and orders of the 16-connection slices alone.
    let mut cycle_sums = (0.0, 0.0, 0.0);
    let mut kitara_time = Duration::ZERO;
    for _ in 0..bench.rounds() {
        let before = commit_metrics(running.addr).await;
        let slice = drive_with(&[running.addr], FEW, unit, hot.clone()).await;
        let after = commit_metrics(running.addr).await;
        kitara_time += slice.elapsed;
        kitara.then(slice);
        if let Some((b, a)) = before.zip(after) {
            cycle_sums = (
                cycle_sums.0 + a.0 - b.0,
                cycle_sums.1 + a.1 - b.1,
                cycle_sums.2 + a.2 - b.2,
            );
        }
        kitara256.then(drive(&[running.addr], unit, hot.clone()).await);
        if let Ok(redis) = &redis {
            redis16.then(redis.drive(FEW, unit).await);
            redis256.then(redis.drive(CONNECTIONS, unit).await);
        }
    }
    running.stop().await;
    let stored = db.check_invariants().await;
    assert_eq!(
        stored,
        kitara.ok + kitara256.ok,
        "hot beside Redis: every 200 must be an order row"
    );
    let note = db.batching_note().await;
    db.drop().await;

    let (seconds, commits, orders) = cycle_sums;
    let cycle = (commits > 0.0).then(|| Cycle {
        orders_per_commit: orders / commits,
        transaction_ms: seconds / commits * 1e3,
        commits_per_second: commits / kitara_time.as_secs_f64(),
    });
    let mut rows = vec![
        (
            "hot-c16",
            kitara.row("hot at 16 connections (kitara)", true, String::new()),
        ),
        (
            "hot-c256",
            kitara256.row("hot at 256 connections, beside Redis (kitara)", true, note),
        ),
    ];
    let note = match redis {
        Ok(redis) => {
            let sold = redis.sold().await;
            assert_eq!(
                sold,
                redis16.ok + redis256.ok,
                "redis: every order numbered is stock taken"
            );
            redis.stop().await;
            rows.push((
                "redis-c16",
                redis16.row(
                    "durable Redis+Lua at 16 connections",
                    true,
                    "appendfsync always".into(),
                ),
            ));
            rows.push((
                "redis-c256",
                redis256.row(
                    "durable Redis+Lua at 256 connections",
                    true,
                    "appendfsync always".into(),
                ),
            ));
            None
        }
        Err(why) => Some(why),
    };
    FewClients {
        rows,
        redis: note,
        cycle,
    }
}

/// `commit_duration_seconds_sum`, its count, and `orders_per_commit_sum`, from
/// `/metrics`.
pub(crate) async fn commit_metrics(addr: SocketAddr) -> Option<(f64, f64, f64)> {
    let text = metrics_text(addr).await?;
    Some((
        series(&text, "kitara_commit_duration_seconds_sum")?,
        series(&text, "kitara_commit_duration_seconds_count")?,
        series(&text, "kitara_orders_per_commit_sum")?,
    ))
}

/// The server's `/metrics`.
pub(crate) async fn metrics_text(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = "GET /metrics HTTP/1.1\r\nHost: kitara\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut text)
        .await
        .ok()?;
    Some(text)
}

/// The value of the series `name` (with its labels, if it has any) in `/metrics`.
pub(crate) fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A private durable `redis-server`, and the script's digest.
struct Redis {
    child: Child,
    addr: SocketAddr,
    sha: String,
    _dir: tempfile::TempDir,
}

impl Redis {
    async fn start() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!("redis-server not started ({e}): the Redis baseline is skipped")
            })?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let started = Instant::now();
        let mut conn = loop {
            match Resp::connect(addr).await {
                Ok(conn) => break conn,
                Err(_) if started.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(format!("redis-server did not answer: {e}")),
            }
        };
        conn.call(&["SET", "stock", &HUGE_STOCK.to_string()])
            .await?;
        conn.call(&["SET", "order_id", "0"]).await?;
        let sha = conn.call(&["SCRIPT", "LOAD", SCRIPT]).await?;
        Ok(Self {
            child,
            addr,
            sha,
            _dir: dir,
        })
    }

    /// `connections` closed-loop connections sending the script for `duration`.
    async fn drive(&self, connections: usize, duration: Duration) -> Load {
        let clock = CpuClock::now();
        let start = Instant::now();
        let deadline = start + duration;
        let tasks: Vec<_> = (0..connections)
            .map(|_| {
                let (addr, sha) = (self.addr, self.sha.clone());
                tokio::spawn(async move {
                    let mut load = Load::default();
                    let Ok(mut conn) = Resp::connect(addr).await else {
                        load.other += 1;
                        return load;
                    };
                    let call = Resp::encode(&["EVALSHA", &sha, "2", "stock", "order_id", "1"]);
                    while Instant::now() < deadline {
                        let sent = Instant::now();
                        match conn.send(&call).await {
                            Ok(reply) if reply.parse::<i64>().is_ok_and(|n| n > 0) => {
                                load.ok += 1;
                                load.latencies_us.push(sent.elapsed().as_micros() as u32);
                            }
                            Ok(_) => load.refused += 1,
                            Err(_) => {
                                load.other += 1;
                                break;
                            }
                        }
                    }
                    load
                })
            })
            .collect();
        collect(tasks, start, clock).await
    }

    /// Orders numbered, which must be the units taken.
    async fn sold(&self) -> u64 {
        let Ok(mut conn) = Resp::connect(self.addr).await else {
            return 0;
        };
        let numbered: u64 = conn
            .call(&["GET", "order_id"])
            .await
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let stock: i64 = conn
            .call(&["GET", "stock"])
            .await
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert_eq!(
            HUGE_STOCK - stock,
            numbered as i64,
            "redis: stock taken equals orders numbered"
        );
        numbered
    }

    async fn stop(mut self) {
        self.child.start_kill().ok();
        self.child.wait().await.ok();
    }
}

/// A RESP connection: one command, one reply.
struct Resp {
    reader: BufReader<TcpStream>,
    line: String,
}

impl Resp {
    async fn connect(addr: SocketAddr) -> Result<Self, String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream.set_nodelay(true).ok();
        let mut conn = Self {
            reader: BufReader::new(stream),
            line: String::new(),
        };
        conn.call(&["PING"]).await?;
        Ok(conn)
    }

    fn encode(words: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", words.len()).into_bytes();
        for word in words {
            out.extend_from_slice(format!("${}\r\n{word}\r\n", word.len()).as_bytes());
        }
        out
    }

    async fn call(&mut self, words: &[&str]) -> Result<String, String> {
        let command = Self::encode(words);
        self.send(&command).await
    }

    /// Sends an encoded command; answers a simple string, integer or bulk string (an
    /// error reply is an `Err`).
    async fn send(&mut self, command: &[u8]) -> Result<String, String> {
        self.reader
            .get_mut()
            .write_all(command)
            .await
            .map_err(|e| e.to_string())?;
        self.line.clear();
        self.reader
            .read_line(&mut self.line)
            .await
            .map_err(|e| e.to_string())?;
        let line = self.line.trim_end();
        match line.split_at_checked(1) {
            Some(("+" | ":", rest)) => Ok(rest.to_owned()),
            Some(("$", "-1")) => Ok(String::new()),
            Some(("$", _)) => {
                self.line.clear();
                self.reader
                    .read_line(&mut self.line)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(self.line.trim_end().to_owned())
            }
            _ => Err(format!("redis: {line}")),
        }
    }
}

impl Cycle {
    pub(crate) fn print(&self) {
        println!(
            "commit cycle of hot at {FEW} connections: {:.1} orders per commit, {:.0} commits/s, {:.2} ms BEGIN to COMMIT on average",
            self.orders_per_commit, self.commits_per_second, self.transaction_ms
        );
    }
}
