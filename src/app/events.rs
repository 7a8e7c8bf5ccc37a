//! Following a store's events (SPEC.md, "Every change as an event"): history from the
//! database, then live events fanned out from memory, and the purge of old events.
//!
//! A follower subscribes to the store's live events first and reads history second, so
//! that nothing committed in between is missed; it skips what it already sent, by
//! number. The database holds each store's events as a gap-free prefix (its actor has
//! one transaction of them in flight at a time), so history read at any moment is
//! complete up to its last event. On a node that does not serve the store, nothing is
//! published here: the follower reads the database every `POLL` instead.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sea_orm::DatabaseConnection;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::admin::{Admin, AdminError};
use crate::cluster::{Cluster, Route};
use crate::db::call::{self, Reads};
use crate::db::events::{self, Event};
use crate::domain::StoreId;
use crate::store::{Feed, Published};

/// A comment line this often keeps an idle stream open through proxies.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How often a follower of a store served by another node reads the database.
const POLL: Duration = Duration::from_millis(250);

/// How often a follower of a store served here reads the database anyway: events are
/// published as they commit, but not those learnt only by a reload (a COMMIT whose
/// answer was lost), nor those a failed read left unsent.
const OWNER_POLL: Duration = Duration::from_secs(2);

/// Outbox rows read from the database per query (each holds one transaction's events
/// of the store).
const PAGE: u32 = 64;

/// Writes a follower's task may queue for its client before it waits (a write holds the
/// commits of up to `LINGER`, or a page of history); a client that stays behind makes it
/// fall behind the store's feed, and then it is disconnected.
const QUEUE: usize = 8;

/// A follower writes live events to its client at most once per this while they keep
/// coming: the first event after a quiet spell goes at once, and what commits within
/// this time of a write waits for its end and goes with the rest in one write. At a
/// flash sale's pace a follower then costs some twenty writes a second, not one per
/// commit; the wait adds at most this to an event's way.
const LINGER: Duration = Duration::from_millis(50);

/// A client that takes no frame for this long is disconnected: one that stopped reading
/// without closing would otherwise hold its follower, and what it queued, for good. It
/// reconnects with its last id and misses nothing.
const STALLED: Duration = Duration::from_secs(5);

/// The stores' event streams.
pub struct Events {
    pub feed: Arc<Feed>,
    pub reads: Reads,
    pub cluster: Arc<Cluster>,
    /// Turns true when the server shuts down: every stream ends.
    pub closing: watch::Receiver<bool>,
    /// How long a read may wait for the database.
    pub answer_within: Duration,
}

/// Why a stream did not start.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("store not found")]
    StoreNotFound,
    /// The position asked for is older than what is kept.
    #[error("events after position {after} are purged; the first event kept is {first_kept}")]
    Purged { after: i64, first_kept: i64 },
    #[error(transparent)]
    Admin(#[from] AdminError),
}

impl Events {
    /// Starts following `store` after position `after`: the frames of its events, as
    /// `text/event-stream` writes them, then a comment every `KEEP_ALIVE` while nothing
    /// happens; and the number of its last event when the stream started (a client that
    /// has just read the store's state follows from there). The stream ends when the client goes, falls too far behind, or the
    /// server shuts down.
    pub async fn follow(
        &self,
        admin: &Admin,
        store: StoreId,
        after: i64,
    ) -> Result<(mpsc::Receiver<Vec<Bytes>>, i64), StreamError> {
        let answer_by = Instant::now() + self.answer_within;
        if !admin.has_store(store, answer_by).await? {
            return Err(StreamError::StoreNotFound);
        }
        let live = self.feed.subscribe(store);
        let (first_kept, last) = self.positions(store, answer_by).await?;
        if let Some(first_kept) = first_kept
            && after + 1 < first_kept
        {
            return Err(StreamError::Purged { after, first_kept });
        }
        let (frames, receiver) = mpsc::channel(QUEUE);
        let follower = Follower {
            store,
            last: after,
            live,
            frames,
            written: None,
            reads: self.reads.clone(),
            cluster: self.cluster.clone(),
            closing: self.closing.clone(),
            answer_within: self.answer_within,
        };
        tokio::spawn(follower.run());
        Ok((receiver, last))
    }
}

impl Events {
    /// The number of `store`'s last event, without following it: what a `HEAD` of the
    /// stream answers, for a client about to read the store's state (whatever has been
    /// purged: it follows from this number, not from the first).
    pub async fn last(&self, admin: &Admin, store: StoreId) -> Result<i64, StreamError> {
        let answer_by = Instant::now() + self.answer_within;
        if !admin.has_store(store, answer_by).await? {
            return Err(StreamError::StoreNotFound);
        }
        Ok(self.positions(store, answer_by).await?.1)
    }

    /// The first event of `store` still kept, if any, and its last (0 for none).
    async fn positions(
        &self,
        store: StoreId,
        answer_by: Instant,
    ) -> Result<(Option<i64>, i64), StreamError> {
        let read = move |db: DatabaseConnection| async move {
            let first = events::first_kept(&db, store).await?;
            let last = events::last_seqs(&db, Some(store)).await?;
            Ok((first, last.first().map_or(0, |(_, last)| *last)))
        };
        Ok(self
            .reads
            .run(answer_by, read)
            .await
            .map_err(AdminError::from)?)
    }
}

/// One client's stream of one store.
struct Follower {
    store: StoreId,
    /// The last event sent.
    last: i64,
    live: broadcast::Receiver<Published>,
    /// Each item goes to the client in one write.
    frames: mpsc::Sender<Vec<Bytes>>,
    /// When live events were last written.
    written: Option<Instant>,
    reads: Reads,
    cluster: Arc<Cluster>,
    closing: watch::Receiver<bool>,
    answer_within: Duration,
}

/// Why a follower stops.
struct Stop;

/// What woke a follower up.
enum Woke {
    Live(Result<Published, broadcast::error::RecvError>),
    Poll,
    KeepAlive,
}

impl Follower {
    async fn run(mut self) {
        let _ = self.serve().await;
        tracing::debug!(store = %self.store, last = self.last, "an event stream ended");
    }

    async fn serve(&mut self) -> Result<(), Stop> {
        self.catch_up().await?;
        let mut keep_alive = tokio::time::interval_at(Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        let mut last_read = Instant::now();
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let woke = tokio::select! {
                received = self.live.recv() => Woke::Live(received),
                _ = poll.tick() => Woke::Poll,
                _ = keep_alive.tick() => Woke::KeepAlive,
                _ = self.closing.wait_for(|closing| *closing) => return Err(Stop),
                () = self.frames.closed() => return Err(Stop),
            };
            match woke {
                Woke::Live(Ok(commit)) if commit.last() <= self.last => {}
                // A commit's events, written once for every follower: sent as they are,
                // from the first this follower has not sent.
                Woke::Live(Ok(commit)) if commit.first <= self.last + 1 => {
                    self.send_live(commit).await?
                }
                // Published before this follower caught up, or by a store loaded anew
                // here: the database has what lies between.
                Woke::Live(Ok(_)) => self.catch_up().await?,
                // Too far behind to be fed from memory: the client reconnects with its
                // last id and reads the rest from the database.
                Woke::Live(Err(broadcast::error::RecvError::Lagged(_))) => {
                    tracing::info!(store = %self.store, last = self.last, "an event stream fell behind; disconnecting it");
                    return Err(Stop);
                }
                Woke::Live(Err(broadcast::error::RecvError::Closed)) => return Err(Stop),
                Woke::Poll => {
                    let here = matches!(self.cluster.route(self.store), Route::Here(_));
                    if !here || last_read.elapsed() >= OWNER_POLL {
                        self.catch_up().await?;
                        last_read = Instant::now();
                    }
                }
                Woke::KeepAlive => {
                    self.write(vec![Bytes::from_static(b": keep-alive\n\n")])
                        .await?
                }
            }
        }
    }

    /// Sends every event the database holds after the last one sent.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        loop {
            let (store, after) = (self.store, self.last);
            let read = move |db: DatabaseConnection| async move {
                events::after(&db, store, after, PAGE).await
            };
            let page = match self
                .reads
                .run(Instant::now() + self.answer_within, read)
                .await
            {
                Ok(page) => page,
                // Tried again at the next event, or the next poll.
                Err(e) => {
                    crate::warn_summarised!("cannot read a store's events", error = %e, "cannot read a store's events");
                    return Ok(());
                }
            };
            if page.is_empty() {
                return Ok(());
            }
            self.send(&page).await?;
        }
    }

    /// Sends consecutive events, the next ones after the last sent, as one frame.
    async fn send(&mut self, events: &[Event]) -> Result<(), Stop> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        let size = events.iter().map(|e| e.body.len() + 64).sum();
        let mut frame = Vec::with_capacity(size);
        for event in events {
            event.write_frame(&mut frame);
        }
        self.write(vec![Bytes::from(frame)]).await?;
        self.last = last.seq;
        Ok(())
    }

    /// Sends `first` (the next commit's events) and what the feed holds after it, in one
    /// write. Within `LINGER` of the last write it waits for the rest of that time first,
    /// gathering what commits meanwhile.
    async fn send_live(&mut self, first: Published) -> Result<(), Stop> {
        if let Some(due) = self.written.map(|at| at + LINGER)
            && due > Instant::now()
        {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                _ = self.closing.wait_for(|closing| *closing) => return Err(Stop),
            }
        }
        let mut frames = vec![first.after(self.last)];
        // The last event gathered; the last sent once the write is queued.
        let mut last = first.last();
        let mut ahead = false;
        loop {
            match self.live.try_recv() {
                Ok(commit) if commit.last() <= last => {}
                Ok(commit) if commit.first <= last + 1 => {
                    frames.push(commit.after(last));
                    last = commit.last();
                }
                Ok(_) => {
                    ahead = true;
                    break;
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    tracing::info!(store = %self.store, last = self.last, "an event stream fell behind; disconnecting it");
                    return Err(Stop);
                }
                // Closed: the next wait sees it.
                Err(_) => break,
            }
        }
        self.write(frames).await?;
        self.last = last;
        self.written = Some(Instant::now());
        if ahead {
            self.catch_up().await?;
        }
        Ok(())
    }

    /// Queues frames for the client, to go in one write, waiting while its queue is
    /// full: until the client takes a write, goes, stalls for `STALLED`, or the server
    /// shuts down.
    async fn write(&mut self, frames: Vec<Bytes>) -> Result<(), Stop> {
        tokio::select! {
            sent = self.frames.send(frames) => sent.map_err(|_| Stop),
            _ = self.closing.wait_for(|closing| *closing) => Err(Stop),
            () = tokio::time::sleep(STALLED) => {
                tracing::info!(store = %self.store, last = self.last, "an event stream's client stopped reading; disconnecting it");
                Err(Stop)
            }
        }
    }
}

/// A pause between steps, so that a sweep of a large table yields to the writer.
const PURGE_PAUSE: Duration = Duration::from_millis(10);

/// How often the purge sweeps.
const PURGE_INTERVAL: Duration = Duration::from_secs(3_600);

/// Starts the task that deletes events decided more than `keep` ago (each store's last
/// one stays: its actor numbers on from it): now, then every `PURGE_INTERVAL`, a store
/// and a small chunk at a time, on its own pooled connection, off the order path.
pub fn spawn_purger(db: DatabaseConnection, keep: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(PURGE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
            let before_ms = chrono::Utc::now()
                .timestamp_millis()
                .saturating_sub(keep_ms);
            let mut purged = 0u64;
            let mut from = StoreId(0);
            loop {
                // Detached: shutdown aborts the purger, never a statement half-way.
                let db = db.clone();
                let step =
                    call::detached(async move { events::purge_step(&db, before_ms, from).await });
                match step.await {
                    Ok((deleted, next)) => {
                        purged += deleted;
                        let Some(next) = next else { break };
                        from = next;
                        tokio::time::sleep(PURGE_PAUSE).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot purge events");
                        break;
                    }
                }
            }
            if purged > 0 {
                tracing::info!(purged, "purged events past their time");
            }
        }
    })
}
