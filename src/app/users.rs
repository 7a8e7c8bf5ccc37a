//! The known-user check (rule 4 of the judging order).
//!
//! Known users live in memory: loaded at start, added after a successful lookup. A miss
//! costs one indexed lookup outside any transaction. Misses are not remembered, so a
//! flood of unknown ids cannot grow memory, and at most `MAX_CONCURRENT_LOOKUPS` of them
//! hold a database connection at once, so they cannot starve the writer of connections
//! or slow down orders of known users, which never touch the database here.

use std::sync::Arc;

use dashmap::DashSet;
use sea_orm::{DatabaseConnection, DbErr};
use tokio::time::Instant;

use crate::db::call::Reads;
use crate::db::load;
use crate::domain::UserId;

const MAX_CONCURRENT_LOOKUPS: usize = 2;

pub struct KnownUsers {
    /// Shared with the lookups, which may outlive the request that started them.
    known: Arc<DashSet<UserId>>,
    lookups: Reads,
}

impl KnownUsers {
    pub fn new(known: impl IntoIterator<Item = UserId>, db: DatabaseConnection) -> Self {
        Self {
            known: Arc::new(known.into_iter().collect()),
            lookups: Reads::new(db, MAX_CONCURRENT_LOOKUPS),
        }
    }

    /// A user the admin API just created.
    pub fn add(&self, user: UserId) {
        self.known.insert(user);
    }

    /// Whether `user` is a live user; the database is waited for until `answer_by`.
    pub async fn exists(&self, user: UserId, answer_by: Instant) -> Result<bool, DbErr> {
        if self.known.contains(&user) {
            return Ok(true);
        }
        let known = self.known.clone();
        self.lookups
            .run(answer_by, move |db| async move {
                // Another request may have found the same user while this one waited.
                if known.contains(&user) {
                    return Ok(true);
                }
                let found = load::user_exists(&db, user).await?;
                if found {
                    known.insert(user);
                }
                Ok(found)
            })
            .await
    }
}
