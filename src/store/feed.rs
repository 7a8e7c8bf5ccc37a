//! Where a store's committed events go on this node: the followers' feed and the
//! webhooks' head (`Feed`), and what a store actor keeps of its events (`StoreEvents`).
//! `store::events` drafts them with each submission and publishes them here.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{broadcast, watch};

use super::attempt::Attempt;
use crate::db::events::Stored;
use crate::db::write::Write;
use crate::domain::StoreId;

/// Commits kept per followed store for followers that fall behind: one that is further
/// behind is disconnected (it reconnects with its last id and reads the rest from the
/// database), never buffered without bound. A commit is one entry however many events
/// it holds, so one large commit never drops a follower that keeps up; this is about a
/// second of a store's commits whether they are large (a few hundred a second, at 256
/// connections) or small (a thousand a second, at 16). Allocated only for a store
/// someone follows here.
pub const FEED_CAPACITY: usize = 1_024;

/// The events of one commit of a store, written once as `text/event-stream` sends them:
/// every follower sends the same bytes, so a follower costs a write per commit and no
/// copy, whatever the number of events.
#[derive(Clone, Debug)]
pub struct Published {
    /// The number of its first event.
    pub first: i64,
    /// Each event's frame (`id:`, `event:`, `data:` lines and a blank line), in order.
    frames: Bytes,
    /// Where each event's frame starts in `frames`.
    starts: Arc<[usize]>,
}

impl Published {
    /// Writes `events` (consecutive, in order) as frames.
    pub fn new(events: &[Stored]) -> Option<Self> {
        let first = events.first()?.seq;
        let mut frames = Vec::with_capacity(events.iter().map(|e| e.data.len() + 160).sum());
        let mut starts = Vec::with_capacity(events.len());
        for stored in events {
            starts.push(frames.len());
            stored.event().write_frame(&mut frames);
        }
        Some(Self {
            first,
            frames: Bytes::from(frames),
            starts: starts.into(),
        })
    }

    /// The number of its last event.
    pub fn last(&self) -> i64 {
        self.first + self.starts.len() as i64 - 1
    }

    /// The frames of its events after event `seq` (all of them if `seq` is before the
    /// first, none if it is its last or after), without a copy.
    pub fn after(&self, seq: i64) -> Bytes {
        let skip = usize::try_from(seq + 1 - self.first).unwrap_or(0);
        self.starts
            .get(skip)
            .map_or_else(Bytes::new, |&start| self.frames.slice(start..))
    }
}

/// The live events of the stores served here, fanned out from memory: followers cost
/// the order path one rendering of a commit's events, whatever their number (written
/// once, for all, and sent as one message; nothing for a store nobody follows); and,
/// per store, the last event that committed, which wakes the webhooks' deliverer
/// without holding events.
#[derive(Default)]
pub struct Feed {
    followed: dashmap::DashMap<StoreId, broadcast::Sender<Published>>,
    heads: dashmap::DashMap<StoreId, watch::Sender<i64>>,
}

impl Feed {
    /// Every commit of `store`'s events here from now on.
    pub fn subscribe(&self, store: StoreId) -> broadcast::Receiver<Published> {
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

    /// Publishes events that committed together, in order.
    pub(super) fn publish(&self, store: StoreId, events: &[Stored]) {
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
        if let Some(published) = Published::new(events) {
            let _ = sender.send(published);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::events::EventKind;

    fn stored(seq: i64) -> Stored {
        Stored {
            store: StoreId(3),
            seq,
            kind: EventKind::OrderLocked,
            at_ms: 1_700_000_000_000,
            data: Bytes::from(format!("{{\"order_id\":{seq}}}")),
        }
    }

    #[test]
    fn a_commit_is_sent_from_the_first_event_a_follower_lacks() {
        let published = Published::new(&[stored(5), stored(6), stored(7)]).unwrap();
        assert_eq!((published.first, published.last()), (5, 7));
        let ids = |frames: Bytes| -> Vec<String> {
            String::from_utf8(frames.to_vec())
                .unwrap()
                .lines()
                .filter_map(|l| l.strip_prefix("id: ").map(str::to_owned))
                .collect()
        };
        assert_eq!(ids(published.after(2)), ["5", "6", "7"]);
        assert_eq!(ids(published.after(4)), ["5", "6", "7"]);
        assert_eq!(ids(published.after(5)), ["6", "7"]);
        assert_eq!(ids(published.after(6)), ["7"]);
        assert!(published.after(7).is_empty());
        let text = String::from_utf8(published.after(6).to_vec()).unwrap();
        assert!(
            text.starts_with("id: 7\nevent: order.locked\ndata: {\"store_id\":3,\"seq\":7,")
                && text.ends_with(",\"data\":{\"order_id\":7}}\n\n"),
            "{text}"
        );
        assert!(Published::new(&[]).is_none());
    }

    #[test]
    fn a_store_nobody_follows_any_more_is_forgotten_at_its_next_commit() {
        let feed = Feed::default();
        let follower = feed.subscribe(StoreId(3));
        let other = feed.subscribe(StoreId(4));
        feed.publish(StoreId(3), &[stored(1)]);
        assert!(feed.followed.contains_key(&StoreId(3)));
        drop(follower);
        feed.publish(StoreId(3), &[stored(2)]);
        assert!(
            !feed.followed.contains_key(&StoreId(3)),
            "its channel is freed"
        );
        assert!(
            feed.followed.contains_key(&StoreId(4)),
            "a followed store's is kept"
        );
        drop(other);
    }
}
