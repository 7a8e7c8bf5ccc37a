//! The known-user check (rule 4 of the judging order).
//!
//! Known users live in memory: loaded at start, added after a successful lookup. A miss
//! costs one indexed lookup outside any transaction. Misses are not remembered, so a
//! flood of unknown ids cannot grow memory, and at most `MAX_CONCURRENT_LOOKUPS` of them
//! hold a database connection at once, so they cannot starve the writer of connections
//! or slow down orders of known users, which never touch the database here.

use dashmap::DashSet;
use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::Semaphore;

use crate::db::load;
use crate::domain::UserId;

const MAX_CONCURRENT_LOOKUPS: usize = 2;

pub struct KnownUsers {
    known: DashSet<UserId>,
    db: DatabaseConnection,
    lookups: Semaphore,
}

impl KnownUsers {
    pub fn new(known: impl IntoIterator<Item = UserId>, db: DatabaseConnection) -> Self {
        Self {
            known: known.into_iter().collect(),
            db,
            lookups: Semaphore::new(MAX_CONCURRENT_LOOKUPS),
        }
    }

    /// A user the admin API just created.
    pub fn add(&self, user: UserId) {
        self.known.insert(user);
    }

    pub async fn exists(&self, user: UserId) -> Result<bool, DbErr> {
        if self.known.contains(&user) {
            return Ok(true);
        }
        let _permit = self
            .lookups
            .acquire()
            .await
            .map_err(|_| DbErr::Custom("user lookups closed".into()))?;
        // Another request may have found the same user while this one waited.
        if self.known.contains(&user) {
            return Ok(true);
        }
        let found = load::user_exists(&self.db, user).await?;
        if found {
            self.known.insert(user);
        }
        Ok(found)
    }
}
