//! How Kitara waits between attempts of something that may work again soon: an outcome
//! lookup on a fresh connection, a store's reload, a request of the rehearsal. One
//! policy for all: a few attempts at once (a pool may hold other connections that died
//! with the last one, and each failed attempt discards one), then pauses that double up
//! to a cap, never past a deadline.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Backoff {
    /// Attempts left to make without a pause.
    quick: u32,
    next: Duration,
    cap: Duration,
}

impl Backoff {
    pub fn new(quick: u32, first: Duration, cap: Duration) -> Self {
        Self {
            quick,
            next: first,
            cap,
        }
    }

    /// The pause before the next attempt.
    pub fn pause(&mut self) -> Duration {
        if self.quick > 0 {
            self.quick -= 1;
            return Duration::ZERO;
        }
        let pause = self.next;
        self.next = (self.next * 2).min(self.cap);
        pause
    }

    /// Waits the next pause, cut short at `deadline`; whether time is left after it.
    pub async fn wait(&mut self, deadline: Instant) -> bool {
        let pause = self.pause();
        tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
        Instant::now() < deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_at_once_then_doubling_to_the_cap() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(2, ms(20), ms(70));
        let pauses: Vec<Duration> = (0..6).map(|_| backoff.pause()).collect();
        assert_eq!(pauses, [ms(0), ms(0), ms(20), ms(40), ms(70), ms(70)]);
    }
}
