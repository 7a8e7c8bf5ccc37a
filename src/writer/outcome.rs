//! A COMMIT whose answer was lost: the transaction's token, looked up on a fresh
//! connection, tells whether it went through. Kitara never guesses.

use std::time::Duration;

use tokio::time::Instant;

use super::Writer;
use crate::backoff::Backoff;
use crate::db::write::PersistError;
use crate::db::{call, load, persist};

impl Writer {
    /// After a failed COMMIT, asks the database whether the transaction's token is
    /// there, retrying on fresh connections until `deadline`. Each lookup runs to its end
    /// on its own task (`db::call`): one that waits for the lock of a transaction the
    /// server has not finished (its session outlived the connection Kitara lost), or for
    /// a connection that no longer answers, is waited for only until the deadline.
    pub(super) async fn resolve(
        &self,
        token: &persist::Token,
        deadline: Instant,
    ) -> Result<(), PersistError> {
        // The pool may hold other connections that died with this one: the first few
        // retries go without a pause.
        let mut backoff = Backoff::new(4, Duration::from_millis(20), Duration::from_millis(500));
        loop {
            let db = self.db.clone();
            let text = token.as_str().to_owned();
            let lookup = call::within(
                deadline,
                async move { load::token_committed(&db, &text).await },
            );
            let token = token.as_str();
            match lookup.await {
                Ok(true) => {
                    tracing::info!(token, "the transaction committed after all");
                    return Ok(());
                }
                Ok(false) => {
                    tracing::info!(token, "the transaction did not commit");
                    return Err(PersistError::Unavailable);
                }
                Err(e) if Instant::now() >= deadline => {
                    tracing::error!(error = %e, token, "outcome unknown past the deadline");
                    return Err(PersistError::OutcomeUnknown);
                }
                Err(e) => {
                    crate::warn_summarised!(
                        "cannot look an outcome up yet",
                        error = %e,
                        token,
                        "cannot look the outcome up yet"
                    );
                    backoff.wait(deadline).await;
                }
            }
        }
    }
}
