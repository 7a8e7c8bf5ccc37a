//! Quiet logs under a flood: a warning that can repeat per request or per batch (503s
//! while the database is down, a full mailbox, a failed reload) is summarised. The
//! first of a burst is logged in full, with its request's id; the rest are counted, and
//! once a second the summariser writes one line per kind with the count, for example
//! `answered 503 (database unavailable) 4,812 times in the last 1 s`. A second without
//! any ends the burst: the next one is logged in full again.
//!
//! Counting is two atomic operations: no lock and no allocation on the request path.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

/// How often the summariser writes its lines.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(1);

/// One kind of summarised warning.
pub struct Throttle {
    /// What the summary line says happened, e.g. `answered 503 (store is busy)`.
    what: &'static str,
    /// Set by the first occurrence of a burst; cleared by a quiet second.
    in_burst: AtomicBool,
    /// Occurrences since the last summary, the first of the burst excluded.
    since: AtomicU64,
    registered: AtomicBool,
}

/// Every throttle used so far; the summariser walks it once a second.
static THROTTLES: Mutex<Vec<&'static Throttle>> = Mutex::new(Vec::new());

impl Throttle {
    pub const fn new(what: &'static str) -> Self {
        Self {
            what,
            in_burst: AtomicBool::new(false),
            since: AtomicU64::new(0),
            registered: AtomicBool::new(false),
        }
    }

    /// Whether this occurrence is to be logged in full: the first of a burst. The
    /// others are counted for the next summary line.
    pub fn first(&'static self) -> bool {
        if !self.registered.load(Ordering::Relaxed) && !self.registered.swap(true, Ordering::AcqRel)
        {
            THROTTLES
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(self);
        }
        if !self.in_burst.swap(true, Ordering::AcqRel) {
            return true;
        }
        self.since.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// The count to summarise, if any; a quiet second ends the burst.
    fn take(&self) -> Option<u64> {
        match self.since.swap(0, Ordering::AcqRel) {
            0 => {
                self.in_burst.store(false, Ordering::Release);
                None
            }
            n => Some(n),
        }
    }
}

/// Logs a warning in full if it is the first of its burst, else counts it. The
/// throttle is one per call site.
#[macro_export]
macro_rules! warn_summarised {
    ($what:literal, $($arg:tt)+) => {{
        static THROTTLE: $crate::logs::Throttle = $crate::logs::Throttle::new($what);
        if THROTTLE.first() {
            tracing::warn!($($arg)+);
        }
    }};
}

/// Writes the summary lines once a second until aborted.
pub fn spawn_summariser() -> JoinHandle<()> {
    tokio::spawn(async {
        let mut every = tokio::time::interval(SUMMARY_EVERY);
        every.tick().await;
        loop {
            every.tick().await;
            summarise();
        }
    })
}

fn summarise() {
    let throttles: Vec<&'static Throttle> = THROTTLES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    for throttle in throttles {
        if let Some(n) = throttle.take() {
            tracing::warn!(
                count = n,
                "{} {} times in the last {} s",
                throttle.what,
                thousands(n),
                SUMMARY_EVERY.as_secs()
            );
        }
    }
}

/// `4812` as `4,812`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_once_then_counted_until_a_quiet_second() {
        static T: Throttle = Throttle::new("answered 503 (test)");
        assert!(T.first());
        for _ in 0..4_811 {
            assert!(!T.first());
        }
        assert_eq!(T.take(), Some(4_811));
        assert!(!T.first(), "the burst goes on");
        assert_eq!(T.take(), Some(1));
        assert_eq!(T.take(), None);
        assert!(T.first(), "a quiet second ended the burst");
    }

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(4_812), "4,812");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
