//! The time holds are judged by.
//!
//! A hold's deadline is a UTC instant stored with the order, so it survives restarts;
//! store actors arm one timer each for their earliest deadline. `Clock::system` is the
//! wall clock. `Clock::manual` stands still until `advance` moves it, so tests decide
//! exactly when holds expire; actors watch it and re-arm their timers when it moves.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::domain::Deadline;

#[derive(Clone)]
pub struct Clock {
    inner: Arc<Inner>,
}

struct Inner {
    /// Microseconds since the Unix epoch, for a manual clock.
    manual: Option<AtomicI64>,
    /// Bumped every time a manual clock moves; never for the system clock.
    moved: watch::Sender<u64>,
}

impl Clock {
    pub fn system() -> Self {
        Self::with(None)
    }

    /// A clock that stays at `start` until `advance` moves it.
    pub fn manual(start: DateTime<Utc>) -> Self {
        Self::with(Some(AtomicI64::new(start.timestamp_micros())))
    }

    fn with(manual: Option<AtomicI64>) -> Self {
        Self {
            inner: Arc::new(Inner {
                manual,
                moved: watch::Sender::new(0),
            }),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match &self.inner.manual {
            None => Utc::now(),
            Some(micros) => {
                DateTime::from_timestamp_micros(micros.load(Ordering::Acquire)).unwrap_or_default()
            }
        }
    }

    /// Moves a manual clock forward; the system clock cannot be moved.
    pub fn advance(&self, by: Duration) {
        if let Some(micros) = &self.inner.manual {
            micros.fetch_add(
                i64::try_from(by.as_micros()).unwrap_or(i64::MAX),
                Ordering::AcqRel,
            );
            self.inner.moved.send_modify(|n| *n += 1);
        }
    }

    pub fn is_manual(&self) -> bool {
        self.inner.manual.is_some()
    }

    /// Tells when a manual clock moves.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.inner.moved.subscribe()
    }

    /// The deadline of a hold of `seconds` that starts now: rounded up to the next whole
    /// second, so a hold is never shorter than asked and its deadline is stored exactly.
    pub fn deadline_after(&self, seconds: u32) -> Deadline {
        let micros = self.now().timestamp_micros() + i64::from(seconds) * 1_000_000;
        micros.div_euclid(1_000_000) + i64::from(micros.rem_euclid(1_000_000) != 0)
    }

    /// How long from now until `deadline`; zero once it has passed.
    pub fn until(&self, deadline: Deadline) -> Duration {
        let micros = deadline.saturating_mul(1_000_000) - self.now().timestamp_micros();
        Duration::from_micros(u64::try_from(micros).unwrap_or(0))
    }

    /// Whether `deadline` has passed.
    pub fn has_passed(&self, deadline: Deadline) -> bool {
        self.now().timestamp_micros() >= deadline.saturating_mul(1_000_000)
    }

    /// The current second, for judging deadlines.
    pub fn now_seconds(&self) -> Deadline {
        self.now().timestamp_micros().div_euclid(1_000_000)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

/// A deadline as an RFC 3339 UTC timestamp (`2026-12-02T03:04:05Z`).
pub fn rfc3339(deadline: Deadline) -> String {
    DateTime::from_timestamp(deadline, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let start = DateTime::from_timestamp(1_000, 250_000_000).unwrap();
        let clock = Clock::manual(start);
        assert_eq!(clock.now(), start);
        // 1,000.25 s + 2 s is rounded up to 1,003 s.
        assert_eq!(clock.deadline_after(2), 1_003);
        assert!(!clock.has_passed(1_003));
        assert_eq!(clock.until(1_003), Duration::from_millis(2_750));
        let moved = clock.watch();
        clock.advance(Duration::from_millis(2_750));
        assert!(moved.has_changed().unwrap());
        assert!(clock.has_passed(1_003));
        assert_eq!(clock.until(1_003), Duration::ZERO);
        assert_eq!(clock.deadline_after(1), 1_004);
        assert_eq!(rfc3339(1_003), "1970-01-01T00:16:43Z");
    }
}
