//! Exponential back-off, capped: the one used by blocking queries, result retries and the
//! restart policy of apps and the launched Consul.

use std::time::Duration;

/// Pauses that double from `min` up to `max`; `reset` starts over.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            next: min,
            min,
            max,
        }
    }
    /// The pause to take now; doubles the next one.
    pub fn fail(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
    /// The pause the next `fail` will give.
    pub fn peek(&self) -> Duration {
        self.next
    }
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        assert_eq!(b.fail(), Duration::from_millis(100));
        assert_eq!(b.peek(), Duration::from_millis(200));
        assert_eq!(b.fail(), Duration::from_millis(200));
        assert_eq!(b.fail(), Duration::from_millis(350));
        assert_eq!(b.fail(), Duration::from_millis(350));
        b.reset();
        assert_eq!(b.fail(), Duration::from_millis(100));
    }
}
