//! Where a store's committed events go on this node: the followers' feed and the
//! webhooks' head (`Feed`), and what a store actor keeps of its events (`StoreEvents`).
//! `store::events` drafts them with each submission and publishes them here.

use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use super::attempt::Attempt;
use crate::db::events::{Event, Stored};
use crate::db::write::Write;
use crate::domain::StoreId;

/// Events kept per followed store for followers that fall behind: one that is further
/// behind is disconnected (it reconnects with its last id and reads the rest from the
/// database), never buffered without bound. More than one submission of a store can
/// hold (its mailbox's 4,096 orders and a batch), so that a follower that keeps up is
/// never dropped by one large commit. Allocated only for a store someone follows here.
pub const FEED_CAPACITY: usize = 8_192;

/// The live events of the stores served here, fanned out from memory: a follower costs
/// the order path one `send` per event, whatever their number; and, per store, the last
/// event that committed, which wakes the webhooks' deliverer without holding events.
#[derive(Default)]
pub struct Feed {
    followed: dashmap::DashMap<StoreId, broadcast::Sender<Event>>,
    heads: dashmap::DashMap<StoreId, watch::Sender<i64>>,
}

impl Feed {
    /// Every event of `store` that commits here from now on.
    pub fn subscribe(&self, store: StoreId) -> broadcast::Receiver<Event> {
        self.followed
            .entry(store)
            .or_insert_with(|| broadcast::channel(FEED_CAPACITY).0)
            .subscribe()
    }

    /// The number of `store`'s last event committed here, changing as more commit.
    pub fn head(&self, store: StoreId) -> watch::Receiver<i64> {
        self.heads
            .entry(store)
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe()
    }

    /// Publishes committed events, in order.
    pub(super) fn publish(&self, store: StoreId, events: Vec<Stored>) {
        if let (Some(head), Some(last)) = (self.heads.get(&store), events.last()) {
            head.send_replace(last.seq);
        }
        let Some(sender) = self.followed.get(&store).map(|s| s.clone()) else {
            return;
        };
        if sender.receiver_count() == 0 {
            self.followed
                .remove_if(&store, |_, s| s.receiver_count() == 0);
            return;
        }
        for event in events {
            let _ = sender.send(event.event());
        }
    }
}

/// A store actor's events, when they are on.
pub(super) struct StoreEvents {
    pub(super) feed: Arc<Feed>,
    /// The number the store's next event takes: one past the last that committed.
    pub(super) next_seq: i64,
    /// Decided while a submission was at the writer; handed over once it is back.
    pub(super) held: Vec<(Attempt, Write)>,
}

impl StoreEvents {
    pub(super) fn new(feed: Arc<Feed>, last_seq: i64) -> Self {
        Self {
            feed,
            next_seq: last_seq + 1,
            held: Vec::new(),
        }
    }
}
