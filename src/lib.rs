//! Kitara: an order-lock service for online stores. It reserves limited stock for
//! customers who order at the same moment, all or nothing, and never oversells.
//!
//! # Layout
//!
//! - [`http`]: the hyper front end: routing, the edge checks (content type, size, JSON,
//!   types, ranges), the JSON envelope, and the mapping of errors to statuses.
//! - [`admin`]: the store owner's desk: the admin token, and how an admin change
//!   reaches a store's actor (or, for users and stores, the writer).
//! - [`app`]: the order desk shared by connections: the known-user check, routing an
//!   order to its store's actor through a concurrent index, the sold-out fast path.
//! - [`store`]: one single-owner actor per store, the only code that decides a change
//!   of its store's stock; it checks and reserves in memory, then hands orders to the
//!   writer and answers only after they committed.
//! - [`writer`]: persists what actors decided, many orders per transaction (group
//!   commit), and resolves a COMMIT whose connection died.
//! - [`domain`]: identifiers, the validated order, the pure stock rules, the life of a
//!   hold, per-customer limits, and idempotency keys.
//! - [`clock`]: the time holds are judged by (the wall clock, or a manual one in tests).
//! - [`idempotency`]: which keys have a request in progress, and their purge.
//! - [`db`]: connecting, the schema check, demo data, and every SQL statement.
//! - [`catalog`], [`users`]: what the front end knows without asking an actor.
//! - [`health`]: readiness, from a prober that pings the database.
//! - [`logs`]: quiet logs under a flood: repeated warnings summarised once a second.
//! - [`simulate`]: `kitara simulate`, a flash-sale rehearsal against a running Kitara.
//! - [`config`], [`telemetry`], [`startup`]: the command line, logging, and wiring.
//! - [`console`]: what the command-line tools print, quietly cut short by a closed pipe.

pub mod app;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod console;
pub mod db;
pub mod domain;
pub mod health;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod simulate;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod writer;
