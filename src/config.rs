//! Command line and configuration.
//!
//! Precedence is flags > environment > `.env` file > defaults: `main` loads `.env` into
//! the environment without overriding what is already set, then clap reads flags and
//! falls back to the environment. `.env.example` documents every key.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::domain::{MAX_HOLD_SECONDS, NodeId};

/// The database Kitara uses when `DATABASE_URL` is not set: an embedded SQLite file in
/// the working directory, so a fresh machine needs nothing else.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://kitara.db";

#[derive(Debug, Parser)]
#[command(
    name = "kitara",
    version,
    about = "Order-lock service: reserves limited stock for \
    customers who order at the same moment, and never oversells"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (on SQLite, migrate and seed the database first)
    Serve(Settings),
    /// Create or update the schema and, into a database without stores, load demo data
    Migrate(MigrateArgs),
    /// Prove that every product's stock adds up: current_stock = Σ ledger deltas − units
    /// of live order lines. Safe while Kitara serves; exits 1 if any product fails
    Check(CheckArgs),
    /// Rehearse a flash sale against a running Kitara over HTTP: concurrent customers
    /// lock, confirm and cancel; then a report, and whether the listing agrees with
    /// what was sold (exit 1 if not, 2 if Kitara cannot be reached)
    Simulate(crate::simulate::SimulateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Database URL: `mysql://user:password@host:3306/db` or `sqlite://path`
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Connections in the database pool
    #[arg(long, env = "KITARA_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,

    /// How long a request waits for the database (a pooled connection, then its answer)
    /// before it is answered 503; a COMMIT already in flight may also take the outcome
    /// deadline
    #[arg(long = "db-acquire-timeout-ms", env = "KITARA_DB_ACQUIRE_TIMEOUT_MS", default_value = "3000", value_parser = millis)]
    pub acquire_timeout: Duration,
}

impl DatabaseArgs {
    pub fn is_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Do not load the demo stores, products and users
    #[arg(long)]
    pub no_demo: bool,
}

/// Everything `kitara serve` can be told. Tests build it with
/// `Settings::parse_from(["kitara", ...])` and adjust the fields they need.
#[derive(Debug, Clone, Parser)]
#[command(name = "kitara")]
pub struct Settings {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Address to listen on
    #[arg(long, env = "KITARA_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on (0 picks a free one)
    #[arg(long, env = "KITARA_PORT", default_value_t = 6071)]
    pub port: u16,

    /// Most orders one database transaction may hold (group commit)
    #[arg(long, env = "KITARA_BATCH_SIZE", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub batch_size: u32,

    /// Database writer tasks, each with one transaction in flight. More than one pays off
    /// when the database is far away (round trips overlap); on SQLite it is always 1.
    #[arg(long, env = "KITARA_WRITERS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub writers: u32,

    /// How long a lock holds its units when its body names no `hold_seconds`, in
    /// seconds (at most a week); 0 holds them until the order is confirmed or cancelled
    #[arg(long, env = "KITARA_HOLD_SECONDS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_HOLD_SECONDS)))]
    pub hold_seconds: u32,

    /// How long idempotency keys are kept, in hours; older ones are purged
    #[arg(long, env = "KITARA_IDEMPOTENCY_HOURS", default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..=8_760))]
    pub idempotency_hours: u32,

    /// Record every change of a store as an event (the outbox, the stream). Off only to
    /// measure what events cost: the stream then has nothing new to send
    #[arg(long, env = "KITARA_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub events: bool,

    /// How long events are kept, in days; older ones are purged (each store's last one
    /// stays). 0 keeps only each store's last event
    #[arg(long, env = "KITARA_EVENTS_DAYS", default_value_t = 7, value_parser = clap::value_parser!(u32).range(0..=3_650))]
    pub events_days: u32,

    /// Where every event is POSTed (http or https), signed with `KITARA_WEBHOOK_SECRET`
    #[arg(long, env = "KITARA_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// The key of the webhooks' HMAC-SHA256 signature, at least 16 characters
    #[arg(long, env = "KITARA_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// How long one webhook delivery may take before it is tried again, in milliseconds
    #[arg(long = "webhook-timeout-ms", env = "KITARA_WEBHOOK_TIMEOUT_MS", default_value = "5000", value_parser = millis)]
    pub webhook_timeout: Duration,

    /// Orders a store's mailbox holds before further orders are answered 503
    #[arg(long, env = "KITARA_MAILBOX_SIZE", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub mailbox_size: u32,

    /// Batches of decided orders that may wait for the database writer
    #[arg(long, env = "KITARA_WRITER_QUEUE", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub writer_queue: u32,

    /// Threads that serve HTTP and run the store actors and the writer; 0 means one per
    /// core. One is plenty for the order path (the database's commit rate is the limit)
    /// and leaves the other cores to a database on the same machine.
    #[arg(long, env = "KITARA_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: u32,

    /// Most HTTP connections served at once; more wait in the listen backlog
    #[arg(long, env = "KITARA_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: u32,

    /// How long a client may take to send its request: a body late by then gets 408,
    /// headers late by then end the connection without an answer; a keep-alive
    /// connection idle this long is closed
    #[arg(long = "request-timeout-ms", env = "KITARA_REQUEST_TIMEOUT_MS", default_value = "10000", value_parser = millis)]
    pub request_timeout: Duration,

    /// How long Kitara keeps trying to learn whether a COMMIT whose connection died
    /// went through, before it answers 503 `order outcome unknown`
    #[arg(long = "outcome-deadline-ms", env = "KITARA_OUTCOME_DEADLINE_MS", default_value = "10000", value_parser = millis)]
    pub outcome_deadline: Duration,

    /// How long shutdown waits for requests in flight, and then for database
    /// connections to close
    #[arg(long = "shutdown-timeout-ms", env = "KITARA_SHUTDOWN_TIMEOUT_MS", default_value = "10000", value_parser = millis)]
    pub shutdown_timeout: Duration,

    /// The bearer token of the admin API (`/api/v1/admin/`, and the page `/admin`):
    /// at least 16 visible ASCII characters. Unset or empty disables the admin API
    /// (403). Prefer the environment or `.env`: a flag is visible to other users.
    #[arg(long, env = "KITARA_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Record and serve Prometheus metrics at `/metrics`; `false` only to measure what
    /// they cost
    #[arg(long, env = "KITARA_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics: bool,

    /// Log format
    #[arg(long, env = "KITARA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// This node's name in the cluster (MySQL): letters, digits and `._:-`; default the
    /// host name and the port. A node started with the id of a live node refuses to
    /// start
    #[arg(long, env = "KITARA_NODE_ID", value_parser = node_id)]
    pub node_id: Option<NodeId>,

    /// The address other nodes reach this one at; default `http://HOST:PORT`
    #[arg(long, env = "KITARA_ADVERTISE_URL", value_parser = advertise_url)]
    pub advertise_url: Option<String>,

    /// How long a node's ownership of its stores lasts unless renewed (every third of
    /// it); a store whose owner stopped renewing is taken by another node after this
    #[arg(long = "lease-ms", env = "KITARA_LEASE_MS", default_value = "5000", value_parser = lease)]
    pub lease: Duration,

    /// Check orders against the store's in-memory stock (layer 3). Only tests turn this
    /// off, to show that the database guard alone still stops oversell.
    #[arg(skip = true)]
    pub memory_check: bool,

    /// Guard every decrement in SQL (`WHERE current_stock + d >= 0`, layer 4). Only tests
    /// turn this off, with the memory check, to show that the schema's
    /// `CHECK (current_stock >= 0)` alone still stops oversell.
    #[arg(skip = true)]
    pub database_guard: bool,
}

impl Settings {
    /// The defaults (and whatever the environment sets) with this database, listening on
    /// 127.0.0.1 on a free port: for tests and benchmarks that run Kitara in-process.
    pub fn local(database_url: &str) -> Self {
        Self::parse_from([
            "kitara",
            "--database-url",
            database_url,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ])
    }

    pub fn idempotency_keep(&self) -> Duration {
        Duration::from_secs(u64::from(self.idempotency_hours) * 3_600)
    }

    pub fn events_keep(&self) -> Duration {
        Duration::from_secs(u64::from(self.events_days) * 86_400)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn node_id(text: &str) -> Result<NodeId, String> {
    NodeId::parse(text).map_err(|e| e.to_string())
}

/// `http://host:port` (or `https`), with no path: where other nodes send requests.
fn advertise_url(text: &str) -> Result<String, String> {
    let url = text.trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{text:?} must start with http:// or https://"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
        return Err(format!("{text:?} must be http://host:port, without a path"));
    }
    Ok(url.to_owned())
}

/// A lease of 0.5 s to 10 minutes.
fn lease(text: &str) -> Result<Duration, String> {
    let lease = millis(text)?;
    if !(Duration::from_millis(500)..=Duration::from_secs(600)).contains(&lease) {
        return Err(format!("{text} ms is not between 500 and 600000"));
    }
    Ok(lease)
}

/// The value of a `KITARA_*_MS` key (or its flag): whole milliseconds.
fn millis(text: &str) -> Result<Duration, String> {
    text.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{text:?} is not a whole number of milliseconds"))
}
