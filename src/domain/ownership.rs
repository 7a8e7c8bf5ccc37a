//! Which node should own a store, and what a node does about what it sees.
//!
//! Stores are spread over the live nodes by rendezvous hashing: each (node, store) pair
//! gets a score, and the live node with the highest score is the store's rightful
//! owner. When a node joins, only the stores it now wins move to it; when one leaves,
//! only its stores move, each to its next best node. The score is a fixed hash (FNV-1a,
//! then a 64-bit finaliser), the same in every build, so nodes of different versions
//! agree.
//!
//! Safety does not rest on this: two nodes that disagree (one sees a node live that the
//! other thinks gone) may both try to take a store, and the ownership table's guarded
//! update lets one of them have it; the epoch fence keeps the other from ever committing
//! for it. This only decides who tries.

use std::collections::HashSet;
use std::sync::Arc;

use super::StoreId;

/// A node's name in the cluster (`--node-id`): 1 to 255 of `A-Z a-z 0-9 . _ : -`, so
/// it can stand in a header, a log line and the SQL text of a takeover as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a node id is 1 to 255 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'")]
pub struct NodeIdError;

impl NodeId {
    pub fn parse(text: &str) -> Result<Self, NodeIdError> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
        if text.is_empty() || text.len() > 255 || !text.chars().all(allowed) {
            return Err(NodeIdError);
        }
        Ok(Self(text.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The rendezvous score of `node` for `store`.
pub fn score(node: &str, store: StoreId) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for byte in node.bytes().chain([0xff]).chain(store.0.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    // FNV's low bits mix poorly; a finaliser spreads every input bit over the result.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// The node that should own `store` among `nodes`: the highest score, ties to the
/// smaller id.
pub fn rightful<'a>(store: StoreId, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    nodes
        .into_iter()
        .max_by(|a, b| score(a, store).cmp(&score(b, store)).then(b.cmp(a)))
}

/// One store as the ownership table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub store: StoreId,
    /// `None` when nobody owns it (never owned, or released).
    pub owner: Option<String>,
    pub epoch: i64,
    /// Its owner's lease has run out by the database's clock.
    pub lapsed: bool,
}

/// What a node does after a look at the ownership table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Take these (epoch + 1), then load them: each is free, its lease lapsed, or owned
    /// under this node's id by no actor of this process (an earlier incarnation's).
    pub take: Vec<StoreId>,
    /// Hand these over: stop their actors, then release them for their rightful owner.
    pub hand_over: Vec<StoreId>,
    /// Release these, which the table says this node owns but no actor of it serves,
    /// and which another node should own.
    pub release: Vec<StoreId>,
    /// Another node owns these now: stop their actors, without touching the table.
    pub lost: Vec<StoreId>,
}

/// What `me` should do, given the live nodes (`me` among them or not: a running node
/// counts itself live), what the table shows, and the stores this process serves.
pub fn plan(me: &str, live: &[&str], seen: &[Seen], serving: &HashSet<StoreId>) -> Plan {
    let mut nodes: Vec<&str> = live.to_vec();
    if !nodes.contains(&me) {
        nodes.push(me);
    }
    let mut plan = Plan::default();
    for row in seen {
        let rightful = rightful(row.store, nodes.iter().copied()) == Some(me);
        let owned = row.owner.as_deref() == Some(me);
        if serving.contains(&row.store) {
            if !owned {
                plan.lost.push(row.store);
            } else if !rightful {
                plan.hand_over.push(row.store);
            }
        } else if rightful && (owned || row.owner.is_none() || row.lapsed) {
            plan.take.push(row.store);
        } else if owned {
            plan.release.push(row.store);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn node_ids_are_plain_names() {
        for good in ["a", "node-1", "host.example:6071", "n_2", &"x".repeat(255)] {
            assert_eq!(
                NodeId::parse(good).map(|n| n.to_string()),
                Ok(good.to_owned())
            );
            assert_eq!(
                NodeId::parse(good).map(|n| n.as_str().len()),
                Ok(good.len())
            );
            assert_eq!(NodeId::parse(good).unwrap().as_str(), good);
        }
        for bad in ["", "a b", "o'brien", "n\u{e9}", "a;b", &"x".repeat(256)] {
            assert_eq!(NodeId::parse(bad), Err(NodeIdError), "{bad:?}");
        }
    }

    #[test]
    fn the_score_is_the_same_in_every_build() {
        // Nodes of two versions must agree on who owns what.
        assert_eq!(score("a", StoreId(1)), score("a", StoreId(1)));
        assert_ne!(score("a", StoreId(1)), score("a", StoreId(2)));
        assert_ne!(score("a", StoreId(1)), score("b", StoreId(1)));
        assert_eq!(score("node-1", StoreId(42)), 0xe275_7171_b22f_8cdb);
    }

    #[test]
    fn stores_spread_over_the_nodes() {
        let nodes = ["n1", "n2", "n3"];
        let mut counts: HashMap<&str, u32> = HashMap::new();
        for store in 1..=3000 {
            *counts
                .entry(rightful(StoreId(store), nodes).unwrap())
                .or_default() += 1;
        }
        for node in nodes {
            let share = counts[node];
            assert!((850..=1150).contains(&share), "{node}: {share} of 3000");
        }
    }

    #[test]
    fn a_joining_node_takes_only_the_stores_it_wins() {
        let before = ["n1", "n2", "n3"];
        let after = ["n1", "n2", "n3", "n4"];
        let mut moved = 0;
        for store in 1..=4000 {
            let (old, new) = (
                rightful(StoreId(store), before).unwrap(),
                rightful(StoreId(store), after).unwrap(),
            );
            if old != new {
                assert_eq!(new, "n4", "store {store} moved from {old} to {new}");
                moved += 1;
            }
        }
        assert!((850..=1150).contains(&moved), "{moved} of 4000 moved");
    }

    fn seen(store: i64, owner: Option<&str>, lapsed: bool) -> Seen {
        Seen {
            store: StoreId(store),
            owner: owner.map(str::to_owned),
            epoch: 1,
            lapsed,
        }
    }

    #[test]
    fn a_node_takes_what_is_free_or_lapsed_and_its_own_id_left() {
        let me = "only";
        let rows = [
            seen(1, None, false),
            seen(2, Some("gone"), true),
            seen(3, Some("gone"), false),
            seen(4, Some("only"), false),
        ];
        let planned = plan(me, &[me], &rows, &HashSet::new());
        // 3's owner holds a valid lease: it waits for it to lapse.
        assert_eq!(planned.take, vec![StoreId(1), StoreId(2), StoreId(4)]);
        assert!(
            planned.hand_over.is_empty() && planned.release.is_empty() && planned.lost.is_empty()
        );
        // A running node counts itself live before the table shows its heartbeat (at
        // its start, or with its heartbeat late), and shares with the nodes it sees.
        assert_eq!(plan(me, &[], &rows, &HashSet::new()), planned);
        let other = "other";
        let shared = plan(me, &[other], &rows, &HashSet::new());
        for store in &shared.take {
            assert_eq!(rightful(*store, [me, other]), Some(me));
        }
    }

    #[test]
    fn a_served_store_is_handed_over_or_lost() {
        let serving: HashSet<StoreId> = (1..=200).map(StoreId).collect();
        let rows: Vec<Seen> = (1..=200)
            .map(|s| seen(s, Some(if s == 7 { "other" } else { "n1" }), false))
            .collect();
        let plan = plan("n1", &["n1", "n2"], &rows, &serving);
        assert_eq!(plan.lost, vec![StoreId(7)]);
        for store in &plan.hand_over {
            assert_eq!(rightful(*store, ["n1", "n2"]), Some("n2"));
        }
        assert!(!plan.hand_over.is_empty());
        assert!(plan.take.is_empty());
    }

    /// A model of the cluster: the ownership table, and which stores each node serves.
    /// Nodes look at the table in turn and apply their plans, the table's guarded
    /// updates as the database runs them.
    #[derive(Debug, Clone)]
    struct Model {
        table: HashMap<StoreId, (Option<String>, i64)>,
        serving: HashMap<String, HashSet<StoreId>>,
    }

    impl Model {
        fn new(stores: i64) -> Self {
            Self {
                table: (1..=stores).map(|s| (StoreId(s), (None, 0))).collect(),
                serving: HashMap::new(),
            }
        }

        /// One node's look and its plan; a node that is not live lets its leases lapse.
        fn step(&mut self, me: &str, live: &[&str]) {
            let rows: Vec<Seen> = self
                .table
                .iter()
                .map(|(&store, (owner, epoch))| Seen {
                    store,
                    owner: owner.clone(),
                    epoch: *epoch,
                    lapsed: owner.as_deref().is_some_and(|o| !live.contains(&o)),
                })
                .collect();
            let serving = self.serving.entry(me.to_owned()).or_default().clone();
            let plan = plan(me, live, &rows, &serving);
            let mine = self.serving.get_mut(me).unwrap();
            for store in plan.lost.iter().chain(&plan.hand_over) {
                mine.remove(store);
            }
            for store in plan.hand_over.iter().chain(&plan.release) {
                self.table.get_mut(store).unwrap().0 = None;
            }
            for store in plan.take {
                let (owner, epoch) = self.table.get_mut(&store).unwrap();
                *owner = Some(me.to_owned());
                *epoch += 1;
                mine.insert(store);
            }
        }

        /// A store is served by at most one node, which the table names as its owner.
        fn check(&self) {
            for (store, (owner, _)) in &self.table {
                let servers: Vec<&String> = self
                    .serving
                    .iter()
                    .filter(|(_, s)| s.contains(store))
                    .map(|(n, _)| n)
                    .collect();
                assert!(servers.len() <= 1, "{store} served by {servers:?}");
                if let Some(server) = servers.first() {
                    assert_eq!(owner.as_deref(), Some(server.as_str()), "{store}");
                }
            }
        }
    }

    proptest! {
        /// Whatever the order nodes join, leave and look in, a store is never served by
        /// two nodes, and once the live nodes have each looked twice, every store is
        /// served by its rightful owner.
        #[test]
        fn every_store_ends_with_its_rightful_owner(
            steps in proptest::collection::vec((0usize..4, any::<bool>()), 1..40),
        ) {
            let names = ["n1", "n2", "n3", "n4"];
            let mut live: Vec<&str> = vec!["n1"];
            let mut model = Model::new(40);
            for (node, toggle) in steps {
                let name = names[node];
                if toggle {
                    if live.contains(&name) && live.len() > 1 {
                        live.retain(|n| *n != name);
                        // A node that left serves nothing.
                        model.serving.remove(name);
                    } else if !live.contains(&name) {
                        live.push(name);
                    }
                } else if live.contains(&name) {
                    model.step(name, &live);
                }
                model.check();
            }
            for _ in 0..2 {
                for name in live.clone() {
                    model.step(name, &live);
                    model.check();
                }
            }
            for (store, (owner, _)) in &model.table {
                let rightful = rightful(*store, live.iter().copied());
                prop_assert_eq!(owner.as_deref(), rightful);
                prop_assert!(model.serving[rightful.unwrap()].contains(store));
            }
        }
    }
}
