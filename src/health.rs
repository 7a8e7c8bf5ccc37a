//! Readiness (`GET /readyz`): Kitara is ready when its stores are loaded (they are
//! before it serves) and the database answered within the last few seconds. A prober
//! pings the database every second; on a Galera node, an answer counts only while the
//! node is in the primary component and synced (`db::galera_synced`). `/healthz` stays
//! the process's liveness and never touches the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sea_orm::{DatabaseConnection, DbErr};
use tokio::task::JoinHandle;

/// Ready while the database's last answer is at most this old.
pub const READY_WITHIN: Duration = Duration::from_secs(3);

/// How often the prober pings, and how long one ping may take.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Readiness {
    since: Instant,
    /// Milliseconds from `since` to the database's last answer.
    answered_at: AtomicU64,
    /// The database's last answer said it cannot take writes (a Galera node outside
    /// the primary component): not ready at once, however recent that answer.
    refusing: AtomicBool,
}

impl Default for Readiness {
    /// Answered now: start-up has just read every store.
    fn default() -> Self {
        Self {
            since: Instant::now(),
            answered_at: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
        }
    }
}

impl Readiness {
    pub fn answered(&self) {
        let now = self.since.elapsed().as_millis() as u64;
        self.answered_at.fetch_max(now, Ordering::Relaxed);
        self.refusing.store(false, Ordering::Relaxed);
    }

    /// The database answered that it cannot take writes now.
    pub fn refused(&self) {
        self.refusing.store(true, Ordering::Relaxed);
    }

    /// The database's last answer said it cannot take writes.
    pub fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    pub fn ready(&self) -> bool {
        let last = Duration::from_millis(self.answered_at.load(Ordering::Relaxed));
        !self.refusing() && self.since.elapsed().saturating_sub(last) <= READY_WITHIN
    }
}

/// Pings the database every second; each answer marks Kitara ready for a while. A ping
/// runs to its end on a task of its own (see `db::call`): one the server does not answer
/// in time is waited for no longer, and no new one starts until it ends, so a stalled
/// server holds at most one of the pool's connections for the prober.
pub fn spawn_prober(
    db: DatabaseConnection,
    galera: bool,
    readiness: Arc<Readiness>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(PROBE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ping: Option<JoinHandle<Result<bool, DbErr>>> = None;
        loop {
            every.tick().await;
            let pending = ping.get_or_insert_with(|| {
                let db = db.clone();
                tokio::spawn(async move {
                    db.ping().await?;
                    if galera {
                        return crate::db::galera_synced(&db).await;
                    }
                    Ok(true)
                })
            });
            match tokio::time::timeout(PROBE_TIMEOUT, pending).await {
                Ok(answer) => {
                    ping = None;
                    match answer {
                        Ok(Ok(true)) => readiness.answered(),
                        Ok(Ok(false)) => {
                            tracing::debug!(
                                "the Galera node is not synced in the primary component"
                            );
                            readiness.refused();
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "the database did not answer a ping")
                        }
                        Err(e) => tracing::debug!(error = %e, "a ping of the database failed"),
                    }
                }
                Err(_) => tracing::debug!("a ping of the database is still waiting"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_that_refuses_writes_makes_kitara_unready_at_once() {
        let readiness = Readiness::default();
        assert!(readiness.ready());
        readiness.refused();
        assert!(!readiness.ready(), "answered a moment ago, but refusing");
        readiness.answered();
        assert!(readiness.ready());
    }
}
