//! Orders are holds: a locked order reserves its units until it is confirmed (the units
//! are sold), cancelled or expired (the units go back). As in TigerBeetle's two-phase
//! transfers, a hold resolves at most once.
//!
//! `HoldBook` is the store actor's record of its live holds as plain data: which orders
//! are still `locked`, which of them have a resolution on its way to the database, and
//! when each expires. The actor sequences and times it; the rules live here.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::{LockOrder, OrderId};

/// `orders.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    Locked,
    Confirmed,
    Cancelled,
    Expired,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Locked => "locked",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "locked" => Some(OrderStatus::Locked),
            "confirmed" => Some(OrderStatus::Confirmed),
            "cancelled" => Some(OrderStatus::Cancelled),
            "expired" => Some(OrderStatus::Expired),
            _ => None,
        }
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a hold ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// Posted: the units are sold.
    Confirm,
    /// Voided by the buyer: the units go back.
    Cancel,
    /// Timed out: the units go back.
    Expire,
}

impl Resolution {
    /// The status the hold ends in.
    pub fn status(self) -> OrderStatus {
        match self {
            Resolution::Confirm => OrderStatus::Confirmed,
            Resolution::Cancel => OrderStatus::Cancelled,
            Resolution::Expire => OrderStatus::Expired,
        }
    }

    /// Whether the held units go back to the stock.
    pub fn returns_units(self) -> bool {
        self != Resolution::Confirm
    }
}

/// What asking for a resolution of an order in a given status leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The order is locked: the resolution applies.
    Apply,
    /// The order already is where the resolution would take it: a repeat, harmless.
    AlreadyThere,
    /// The order ended otherwise; it cannot change again.
    Conflict(OrderStatus),
}

/// Only `locked` changes, and only once.
pub fn transition(status: OrderStatus, asked: Resolution) -> Transition {
    match status {
        OrderStatus::Locked => Transition::Apply,
        s if s == asked.status() => Transition::AlreadyThere,
        s => Transition::Conflict(s),
    }
}

/// A hold's deadline: `expires_at` in whole seconds since the Unix epoch, UTC.
pub type Deadline = i64;

/// A live hold: a locked order.
#[derive(Debug, Clone)]
pub struct Hold {
    /// The buyer and the held lines; shared with the write that created it.
    pub order: Arc<LockOrder>,
    pub expires_at: Option<Deadline>,
    /// A resolution decided and on its way to the database. While it is, the hold
    /// neither expires nor accepts another resolution.
    pub pending: Option<Resolution>,
}

/// What `HoldBook::begin` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The hold is not live here: it ended, or never was.
    NotLive,
    /// A resolution is already on its way; wait for it.
    Pending(Resolution),
    /// This resolution was started (the asked one, or `Expire` for a hold past due).
    Started(Resolution),
}

/// The live holds of one store, with their deadlines in order.
#[derive(Debug, Default)]
pub struct HoldBook {
    holds: HashMap<OrderId, Hold>,
    /// Holds that will expire and are not being resolved, earliest first.
    deadlines: BTreeSet<(Deadline, OrderId)>,
}

impl HoldBook {
    pub fn new(
        holds: impl IntoIterator<Item = (OrderId, Arc<LockOrder>, Option<Deadline>)>,
    ) -> Self {
        let mut book = Self::default();
        for (id, order, expires_at) in holds {
            book.insert(id, order, expires_at);
        }
        book
    }

    pub fn len(&self) -> usize {
        self.holds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.holds.is_empty()
    }

    pub fn get(&self, id: OrderId) -> Option<&Hold> {
        self.holds.get(&id)
    }

    pub fn ids(&self) -> impl Iterator<Item = OrderId> + '_ {
        self.holds.keys().copied()
    }

    /// A newly committed lock.
    pub fn insert(&mut self, id: OrderId, order: Arc<LockOrder>, expires_at: Option<Deadline>) {
        if let Some(old) = self.holds.remove(&id)
            && let Some(deadline) = old.expires_at
        {
            self.deadlines.remove(&(deadline, id));
        }
        if let Some(deadline) = expires_at {
            self.deadlines.insert((deadline, id));
        }
        let hold = Hold {
            order,
            expires_at,
            pending: None,
        };
        self.holds.insert(id, hold);
    }

    /// Starts resolving a hold at `now` (seconds): a hold past its deadline expires
    /// instead of taking the asked resolution.
    pub fn begin(&mut self, id: OrderId, asked: Resolution, now: Deadline) -> Ending {
        let Some(hold) = self.holds.get_mut(&id) else {
            return Ending::NotLive;
        };
        if let Some(pending) = hold.pending {
            return Ending::Pending(pending);
        }
        let resolution = match hold.expires_at {
            Some(deadline) if deadline <= now => Resolution::Expire,
            _ => asked,
        };
        hold.pending = Some(resolution);
        if let Some(deadline) = hold.expires_at {
            self.deadlines.remove(&(deadline, id));
        }
        Ending::Started(resolution)
    }

    /// The pending resolution did not reach the database: the hold is locked again.
    pub fn abort(&mut self, id: OrderId) {
        if let Some(hold) = self.holds.get_mut(&id)
            && hold.pending.take().is_some()
            && let Some(deadline) = hold.expires_at
        {
            self.deadlines.insert((deadline, id));
        }
    }

    /// The pending resolution committed: the hold is over.
    pub fn finish(&mut self, id: OrderId) -> Option<Hold> {
        let hold = self.holds.remove(&id)?;
        if let Some(deadline) = hold.expires_at {
            self.deadlines.remove(&(deadline, id));
        }
        Some(hold)
    }

    /// The earliest deadline of a hold that is not being resolved.
    pub fn next_deadline(&self) -> Option<Deadline> {
        self.deadlines.first().map(|&(deadline, _)| deadline)
    }

    /// Starts expiring up to `limit` holds whose deadline is at or before `now`,
    /// earliest first.
    pub fn begin_due(&mut self, now: Deadline, limit: usize) -> Vec<OrderId> {
        let mut due = Vec::new();
        while due.len() < limit {
            match self.deadlines.first() {
                Some(&(deadline, id)) if deadline <= now => {
                    self.deadlines.pop_first();
                    if let Some(hold) = self.holds.get_mut(&id) {
                        hold.pending = Some(Resolution::Expire);
                        due.push(id);
                    }
                }
                _ => break,
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ProductId, UserId};

    fn order() -> Arc<LockOrder> {
        Arc::new(LockOrder::new(UserId(1), [(ProductId(1), 2)]).unwrap())
    }

    #[test]
    fn only_locked_changes_and_a_repeat_is_harmless() {
        use OrderStatus::*;
        assert_eq!(transition(Locked, Resolution::Confirm), Transition::Apply);
        assert_eq!(
            transition(Confirmed, Resolution::Confirm),
            Transition::AlreadyThere
        );
        assert_eq!(
            transition(Cancelled, Resolution::Cancel),
            Transition::AlreadyThere
        );
        assert_eq!(
            transition(Cancelled, Resolution::Confirm),
            Transition::Conflict(Cancelled)
        );
        assert_eq!(
            transition(Expired, Resolution::Cancel),
            Transition::Conflict(Expired)
        );
        assert_eq!(
            transition(Confirmed, Resolution::Cancel),
            Transition::Conflict(Confirmed)
        );
        for s in [Locked, Confirmed, Cancelled, Expired] {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        assert_eq!(OrderStatus::parse("sold"), None);
    }

    #[test]
    fn a_hold_resolves_at_most_once() {
        let mut book = HoldBook::new([(OrderId(1), order(), Some(100))]);
        assert_eq!(
            book.begin(OrderId(1), Resolution::Confirm, 50),
            Ending::Started(Resolution::Confirm)
        );
        // While the confirm is on its way, nothing else starts and nothing expires.
        assert_eq!(
            book.begin(OrderId(1), Resolution::Cancel, 50),
            Ending::Pending(Resolution::Confirm)
        );
        assert!(book.begin_due(1_000, 10).is_empty());
        assert_eq!(book.next_deadline(), None);
        // The write failed: the hold is locked again, with its deadline.
        book.abort(OrderId(1));
        assert_eq!(book.next_deadline(), Some(100));
        assert_eq!(
            book.begin(OrderId(1), Resolution::Cancel, 50),
            Ending::Started(Resolution::Cancel)
        );
        assert!(book.finish(OrderId(1)).is_some());
        assert_eq!(
            book.begin(OrderId(1), Resolution::Confirm, 50),
            Ending::NotLive
        );
        assert!(book.is_empty());
    }

    #[test]
    fn a_hold_past_its_deadline_expires_instead() {
        // At its deadline or after it, whatever was asked; a moment before, as asked.
        let cases = [
            (Resolution::Confirm, 100, Resolution::Expire),
            (Resolution::Cancel, 250, Resolution::Expire),
            (Resolution::Cancel, 99, Resolution::Cancel),
        ];
        for (asked, now, ends_as) in cases {
            let mut book = HoldBook::new([(OrderId(1), order(), Some(100))]);
            let ending = book.begin(OrderId(1), asked, now);
            assert_eq!(ending, Ending::Started(ends_as), "{asked:?} at {now}");
        }
    }

    #[test]
    fn confirmed_units_are_sold_and_the_others_come_back() {
        assert!(!Resolution::Confirm.returns_units());
        assert!(Resolution::Cancel.returns_units());
        assert!(Resolution::Expire.returns_units());
    }

    /// One step of a store's life with its holds.
    #[derive(Debug, Clone)]
    enum Step {
        Insert(i64, Option<Deadline>),
        Ending(i64, Resolution, Deadline),
        Abort(i64),
        Finish(i64),
        BeginDue(Deadline, usize),
    }

    fn steps() -> impl proptest::strategy::Strategy<Value = Vec<Step>> {
        use proptest::prelude::*;
        let id = 1i64..6;
        let deadline = prop::option::of(0i64..20);
        let resolution = prop_oneof![
            Just(Resolution::Confirm),
            Just(Resolution::Cancel),
            Just(Resolution::Expire)
        ];
        let step = prop_oneof![
            (id.clone(), deadline).prop_map(|(i, d)| Step::Insert(i, d)),
            (id.clone(), resolution, 0i64..20).prop_map(|(i, r, n)| Step::Ending(i, r, n)),
            id.clone().prop_map(Step::Abort),
            id.prop_map(Step::Finish),
            (0i64..20, 0usize..4).prop_map(|(n, l)| Step::BeginDue(n, l)),
        ];
        prop::collection::vec(step, 0..60)
    }

    /// The model: each live hold's deadline and pending resolution, nothing more.
    type Model = std::collections::BTreeMap<i64, (Option<Deadline>, Option<Resolution>)>;

    proptest::proptest! {
        /// Against a model of what each hold is: after every step, what the book answers
        /// (its size, its ids, each hold, the next deadline, what falls due) is what the
        /// model says.
        #[test]
        fn the_book_agrees_with_a_model_of_its_holds(steps in steps()) {
            use proptest::prelude::*;
            let mut book = HoldBook::default();
            let mut model = Model::new();
            for step in steps {
                match step {
                    Step::Insert(id, deadline) => {
                        book.insert(OrderId(id), order(), deadline);
                        model.insert(id, (deadline, None));
                    }
                    Step::Ending(id, asked, now) => {
                        let expected = match model.get_mut(&id) {
                            None => Ending::NotLive,
                            Some((_, Some(pending))) => Ending::Pending(*pending),
                            Some((deadline, pending)) => {
                                let started = match deadline {
                                    Some(d) if *d <= now => Resolution::Expire,
                                    _ => asked,
                                };
                                *pending = Some(started);
                                Ending::Started(started)
                            }
                        };
                        prop_assert_eq!(book.begin(OrderId(id), asked, now), expected);
                    }
                    Step::Abort(id) => {
                        book.abort(OrderId(id));
                        if let Some((_, pending)) = model.get_mut(&id) {
                            *pending = None;
                        }
                    }
                    Step::Finish(id) => {
                        let finished = book.finish(OrderId(id));
                        let expected = model.remove(&id);
                        prop_assert_eq!(finished.map(|h| h.expires_at), expected.map(|e| e.0));
                    }
                    Step::BeginDue(now, limit) => {
                        let mut due: Vec<(Deadline, i64)> = model
                            .iter()
                            .filter_map(|(&id, &(deadline, pending))| match (deadline, pending) {
                                (Some(d), None) if d <= now => Some((d, id)),
                                _ => None,
                            })
                            .collect();
                        due.sort();
                        due.truncate(limit);
                        for (_, id) in &due {
                            model.get_mut(id).unwrap().1 = Some(Resolution::Expire);
                        }
                        let expected: Vec<OrderId> = due.iter().map(|&(_, id)| OrderId(id)).collect();
                        prop_assert_eq!(book.begin_due(now, limit), expected);
                    }
                }
                prop_assert_eq!(book.len(), model.len());
                prop_assert_eq!(book.is_empty(), model.is_empty());
                let mut ids: Vec<i64> = book.ids().map(|id| id.0).collect();
                ids.sort();
                prop_assert_eq!(ids, model.keys().copied().collect::<Vec<_>>());
                for (&id, &(deadline, pending)) in &model {
                    let hold = book.get(OrderId(id));
                    prop_assert!(hold.is_some(), "hold {} is live", id);
                    let hold = hold.unwrap();
                    prop_assert_eq!(hold.expires_at, deadline);
                    prop_assert_eq!(hold.pending, pending);
                }
                let next = model
                    .values()
                    .filter(|(_, pending)| pending.is_none())
                    .filter_map(|(deadline, _)| *deadline)
                    .min();
                prop_assert_eq!(book.next_deadline(), next);
            }
        }
    }

    #[test]
    fn due_holds_expire_earliest_first_in_bounded_steps() {
        let mut book = HoldBook::new([
            (OrderId(1), order(), Some(30)),
            (OrderId(2), order(), Some(10)),
            (OrderId(3), order(), Some(20)),
            (OrderId(4), order(), None),
        ]);
        assert_eq!(book.next_deadline(), Some(10));
        assert_eq!(book.begin_due(25, 1), vec![OrderId(2)]);
        assert_eq!(book.begin_due(25, 10), vec![OrderId(3)]);
        assert_eq!(book.next_deadline(), Some(30));
        assert_eq!(
            book.begin(OrderId(2), Resolution::Cancel, 25),
            Ending::Pending(Resolution::Expire)
        );
        assert_eq!(book.len(), 4);
    }
}
