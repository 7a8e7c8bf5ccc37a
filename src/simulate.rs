//! `kitara simulate`: a flash-sale rehearsal against a running Kitara, over HTTP.
//!
//! `--customers` tasks share one keep-alive client. Each sends lock orders with an
//! `Idempotency-Key`, then confirms a `--confirm-ratio` of the holds it got. It cancels
//! the rest, or leaves them to expire when `--hold-seconds` is given. It stops after
//! `--orders` orders or `--duration`.
//!
//! The report gives the orders placed, the refusals by message, the units sold, the
//! latency percentiles of the locks and the throughput. Then it checks that
//! `GET /api/v1/products` agrees with what was sold: every product's stock must have
//! gone down by exactly the units confirmed. It assumes no other traffic meanwhile.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::backoff::Backoff;

#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Kitara's base URL, e.g. http://127.0.0.1:6071 (http only)
    #[arg(long)]
    pub url: String,

    /// Customers ordering at the same moment (concurrent connections)
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub customers: u32,

    /// Orders to send in all (unless --duration is given)
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "duration")]
    pub orders: u64,

    /// Send orders for this long instead, e.g. 30s, 2m
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// A product to order (repeat for several; each order picks one)
    #[arg(long = "product", default_value = "1", value_parser = clap::value_parser!(i64).range(1..))]
    pub products: Vec<i64>,

    /// A buyer's user id (repeat for several; customers take turns)
    #[arg(long = "user", default_values_t = [1, 2, 3], value_parser = clap::value_parser!(i64).range(1..))]
    pub users: Vec<i64>,

    /// Units per order
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..=2_147_483_647))]
    pub quantity: i64,

    /// How long each hold lasts; without it holds last until confirmed or cancelled
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=604_800))]
    pub hold_seconds: Option<u32>,

    /// The fraction of holds confirmed; the rest are cancelled, or left to expire
    /// when --hold-seconds is given
    #[arg(long, default_value_t = 1.0, value_parser = parse_ratio)]
    pub confirm_ratio: f64,

    /// Allow a URL that is not on this machine
    #[arg(long)]
    pub allow_remote: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30s or 2m"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3_600,
        _ => return Err(format!("{text:?}: the unit must be s, m or h")),
    };
    if seconds == 0 {
        return Err("the duration must be at least 1s".into());
    }
    Ok(Duration::from_secs(seconds))
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{text:?} is not a fraction between 0 and 1")),
    }
}

/// Why a rehearsal could not run or did not add up.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach Kitara at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the listing does not agree with what was sold")]
    Disagrees,
}

impl SimulateError {
    pub fn exit_code(&self) -> u8 {
        match self {
            SimulateError::Disagrees => 1,
            _ => 2,
        }
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// How long one request may take before it counts as failed on the wire.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Tries of a keyed request whose connection failed.
const WIRE_ATTEMPTS: u32 = 3;

/// The first pause before another try (`Backoff`: doubling after it).
const WIRE_RETRY: Duration = Duration::from_millis(100);

struct Target {
    base: String,
    client: HttpClient,
}

impl Target {
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> Result<(StatusCode, Value), String> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))?
            .map_err(|e| chain(&e))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// A keyed request, sent again (with its key, so it books once) when the
    /// connection fails: a lock whose answer was lost may have placed a hold.
    async fn send_keyed(
        &self,
        path: &str,
        body: &Value,
        key: &str,
    ) -> Result<(StatusCode, Value), String> {
        let mut last = String::new();
        let mut backoff = Backoff::new(0, WIRE_RETRY, WIRE_RETRY * 4);
        for attempt in 0..WIRE_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff.pause()).await;
            }
            match self.send(Method::POST, path, Some(body), Some(key)).await {
                Ok(answer) => return Ok(answer),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Stock per product, as listed.
    async fn stocks(&self) -> Result<BTreeMap<i64, i64>, SimulateError> {
        let unreachable = |reason| SimulateError::Unreachable {
            url: self.base.clone(),
            reason,
        };
        let (status, body) = self
            .send(Method::GET, "/api/v1/products", None, None)
            .await
            .map_err(unreachable)?;
        if status != StatusCode::OK {
            return Err(unreachable(format!(
                "GET /api/v1/products answered {status}"
            )));
        }
        Ok(body["data"]
            .as_array()
            .map(|products| {
                products
                    .iter()
                    .filter_map(|p| Some((p["id"].as_i64()?, p["current_stock"].as_i64()?)))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// What the customers saw, shared by them.
#[derive(Default)]
struct Tally {
    /// Lock answers by status and message.
    answers: BTreeMap<(u16, String), u64>,
    /// Lock latencies, in microseconds.
    latencies: Vec<u32>,
    /// Orders that failed on the wire.
    failed: u64,
    confirmed_units: BTreeMap<i64, i64>,
    cancelled: u64,
    left_to_expire: u64,
    /// Holds that expired before their confirm reached them.
    expired_first: u64,
    /// Confirms and cancels that did not answer 200.
    unresolved: u64,
}

/// Runs the rehearsal and prints its report.
pub async fn run(args: SimulateArgs) -> Result<(), SimulateError> {
    let base = check_url(&args.url, args.allow_remote)?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.customers as usize)
        .build(connector);
    let target = Arc::new(Target {
        base: base.clone(),
        client,
    });
    let before = target.stocks().await?;
    for product in &args.products {
        if !before.contains_key(product) {
            return Err(SimulateError::Usage(format!(
                "product {product} is not listed at {base}/api/v1/products"
            )));
        }
    }

    let bar = match args.duration {
        Some(duration) => ProgressBar::new(duration.as_secs())
            .with_style(style("{elapsed_precise} [{wide_bar}] {pos}/{len} s  {msg}")),
        None => ProgressBar::new(args.orders).with_style(style(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} orders  {msg}",
        )),
    };
    let sent = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let run = format!("{:x}", std::process::id() ^ now_nanos());
    let started = Instant::now();
    let customers: Vec<_> = (0..args.customers)
        .map(|customer| {
            let (target, sent, tally, args, run, bar) = (
                target.clone(),
                sent.clone(),
                tally.clone(),
                args.clone(),
                run.clone(),
                bar.clone(),
            );
            tokio::spawn(async move {
                customer_loop(customer, &target, &sent, &tally, &args, &run, &bar, started).await
            })
        })
        .collect();
    for customer in customers {
        let _ = customer.await;
    }
    let took = started.elapsed();
    bar.finish_and_clear();

    let tally = std::mem::take(&mut *tally.lock().await);
    let attempted: u64 = tally.answers.values().sum::<u64>() + tally.failed;
    if attempted > 0 && tally.failed == attempted {
        return Err(SimulateError::Unreachable {
            url: base,
            reason: "every order failed on the wire".into(),
        });
    }
    if tally.left_to_expire > 0
        && let Some(hold) = args.hold_seconds
    {
        eprintln!(
            "waiting {} s for the {} holds left to expire...",
            hold + 2,
            tally.left_to_expire
        );
        tokio::time::sleep(Duration::from_secs(u64::from(hold) + 2)).await;
    }
    let after = target.stocks().await?;
    report(&args, &tally, attempted, took, &before, &after)
}

#[allow(clippy::too_many_arguments)]
async fn customer_loop(
    customer: u32,
    target: &Target,
    sent: &AtomicU64,
    tally: &Mutex<Tally>,
    args: &SimulateArgs,
    run: &str,
    bar: &ProgressBar,
    started: Instant,
) {
    let buyer = args.users[customer as usize % args.users.len()];
    let mut rng = u64::from(customer).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    loop {
        let n = sent.fetch_add(1, Ordering::Relaxed);
        match args.duration {
            Some(duration) => {
                let elapsed = started.elapsed();
                if elapsed >= duration {
                    return;
                }
                bar.set_position(elapsed.as_secs());
            }
            None if n >= args.orders => return,
            None => bar.inc(1),
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let product = args.products[(rng % args.products.len() as u64) as usize];
        let mut body = json!({
            "user_id": buyer,
            "products": [{"product_id": product, "quantity": args.quantity}],
        });
        if let Some(hold) = args.hold_seconds {
            body["hold_seconds"] = json!(hold);
        }
        let key = format!("simulate-{run}-{n}");
        let asked = Instant::now();
        let answer = target.send_keyed("/api/v1/order/lock", &body, &key).await;
        let latency = asked.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        let (status, answer) = match answer {
            Ok(answer) => answer,
            Err(_) => {
                tally.lock().await.failed += 1;
                continue;
            }
        };
        let message = answer["message"]
            .as_str()
            .unwrap_or("no message")
            .to_owned();
        {
            let mut tally = tally.lock().await;
            tally.latencies.push(latency);
            *tally.answers.entry((status.as_u16(), message)).or_default() += 1;
        }
        let Some(order) = answer["data"]["order_id"]
            .as_i64()
            .filter(|_| status == StatusCode::OK)
        else {
            continue;
        };
        let confirm = (rng % 10_000) as f64 / 10_000.0 < args.confirm_ratio;
        let action = match (confirm, args.hold_seconds) {
            (true, _) => "confirm",
            (false, None) => "cancel",
            (false, Some(_)) => {
                tally.lock().await.left_to_expire += 1;
                continue;
            }
        };
        let resolved = target
            .send_keyed(
                &format!("/api/v1/order/{order}/{action}"),
                &json!({"user_id": buyer}),
                &format!("{key}-{action}"),
            )
            .await;
        let mut tally = tally.lock().await;
        match resolved {
            Ok((StatusCode::OK, _)) if confirm => {
                *tally.confirmed_units.entry(product).or_default() += args.quantity;
            }
            Ok((StatusCode::OK, _)) => tally.cancelled += 1,
            // The hold expired before the confirm reached it: its units are back.
            Ok((StatusCode::CONFLICT, answer)) if answer["message"] == "order is expired" => {
                tally.expired_first += 1;
            }
            _ => tally.unresolved += 1,
        }
    }
}

/// An error and its causes, `a: b: c`.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn now_nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
}

/// The base URL without a trailing slash, if it is plain HTTP to this machine (or
/// `allow_remote`).
fn check_url(url: &str, allow_remote: bool) -> Result<String, SimulateError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| SimulateError::Usage(format!("{url:?} is not a URL")))?;
    if uri.scheme_str() != Some("http") {
        return Err(SimulateError::Usage(format!(
            "{url:?}: only http:// URLs are supported"
        )));
    }
    let host = uri
        .host()
        .ok_or_else(|| SimulateError::Usage(format!("{url:?} names no host")))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let local = bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !local && !allow_remote {
        return Err(SimulateError::Usage(format!(
            "{host} is not this machine: a rehearsal sells real stock; pass --allow-remote to run it there anyway"
        )));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The `p`th percentile (0 to 100) of `sorted` microseconds, in milliseconds, by the
/// nearest rank; 0 for no values. The flash-sale benchmark reports by it too.
pub fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // The epsilon keeps 99.9 % of 1,000 at 999, not 1,000.
    let rank = (p / 100.0 * sorted.len() as f64 - 1e-9).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1_000.0
}

fn report(
    args: &SimulateArgs,
    tally: &Tally,
    attempted: u64,
    took: Duration,
    before: &BTreeMap<i64, i64>,
    after: &BTreeMap<i64, i64>,
) -> Result<(), SimulateError> {
    let placed: u64 = tally
        .answers
        .iter()
        .filter(|((status, _), _)| *status == 200)
        .map(|(_, n)| n)
        .sum();
    crate::say!(
        "orders: {attempted} sent by {} customers in {:.2} s ({:.0} orders/s)",
        args.customers,
        took.as_secs_f64(),
        attempted as f64 / took.as_secs_f64().max(1e-9)
    );
    crate::say!("  placed: {placed}");
    for ((status, message), n) in &tally.answers {
        if *status != 200 {
            crate::say!("  refused {status} {message:?}: {n}");
        }
    }
    if tally.failed > 0 {
        crate::say!(
            "  failed on the wire, {WIRE_ATTEMPTS} times with the same key: {} (their outcome is unknown)",
            tally.failed
        );
    }
    let sold: i64 = tally.confirmed_units.values().sum();
    crate::say!(
        "holds: {} confirmed ({sold} units sold), {} cancelled, {} left to expire, {} expired before their confirm, {} not resolved",
        tally.confirmed_units.values().sum::<i64>() / args.quantity,
        tally.cancelled,
        tally.left_to_expire,
        tally.expired_first,
        tally.unresolved
    );
    let mut sorted = tally.latencies.clone();
    sorted.sort_unstable();
    crate::say!(
        "lock latency: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        percentile_ms(&sorted, 50.0),
        percentile_ms(&sorted, 99.0),
        percentile_ms(&sorted, 99.9)
    );
    let mut agrees = tally.unresolved == 0;
    for product in args
        .products
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
    {
        let sold = tally.confirmed_units.get(product).copied().unwrap_or(0);
        let (was, is) = (before.get(product), after.get(product));
        let expected = was.map(|w| w - sold);
        let ok = expected.is_some() && expected == is.copied();
        agrees &= ok;
        crate::say!(
            "product {product}: listed {} before, {} after, {sold} sold: {}",
            was.map_or("-".into(), i64::to_string),
            is.map_or("-".into(), i64::to_string),
            if ok { "agrees" } else { "DOES NOT AGREE" }
        );
    }
    if tally.unresolved > 0 {
        crate::say!(
            "{} confirms or cancels were not answered 200: their units are unknown",
            tally.unresolved
        );
    }
    if agrees {
        crate::say!("the listing agrees with what was sold");
        Ok(())
    } else {
        Err(SimulateError::Disagrees)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_to_this_machine_unless_allowed() {
        for (url, checked) in [
            ("http://127.0.0.1:6071", "http://127.0.0.1:6071"),
            ("http://localhost:6071/", "http://localhost:6071"),
            ("http://[::1]:6071", "http://[::1]:6071"),
        ] {
            assert_eq!(check_url(url, false).unwrap(), checked, "{url}");
        }
        assert_eq!(
            check_url("http://localhost:6071/", false).unwrap(),
            "http://localhost:6071"
        );
        for url in [
            "http://10.0.0.5:6071",
            "http://shop.example",
            "https://127.0.0.1",
            "nonsense url",
        ] {
            assert!(check_url(url, false).is_err(), "{url}");
        }
        assert!(check_url("http://10.0.0.5:6071", true).is_ok());
    }

    #[test]
    fn durations_ratios_and_percentiles() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        for bad in ["0s", "s", "5x", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert!(parse_ratio("1.5").is_err() && parse_ratio("x").is_err());
        let sorted: Vec<u32> = (1..=1_000).map(|ms| ms * 1_000).collect();
        assert_eq!(percentile_ms(&sorted, 50.0), 500.0);
        assert_eq!(percentile_ms(&sorted, 99.0), 990.0);
        assert_eq!(percentile_ms(&sorted, 99.9), 999.0);
    }
}
