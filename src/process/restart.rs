//! When to start a supervised task again after it ended: exponential backoff that starts over
//! after a healthy run. Used by apps and by the launched Consul.

use std::time::Duration;

use crate::util::backoff::Backoff;

/// Pauses between restarts: `min`, doubling per quick exit up to `max`; a run that lasted
/// `stable_after` was healthy, so the next pause is `min` again.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    backoff: Backoff,
    min: Duration,
    stable_after: Duration,
}

impl RestartPolicy {
    pub fn new(min: Duration, max: Duration, stable_after: Duration) -> Self {
        RestartPolicy {
            backoff: Backoff::new(min, max),
            min,
            stable_after,
        }
    }

    /// The pause before the next start, after a run that lasted `ran`.
    pub fn after_run(&mut self, ran: Duration) -> Duration {
        if ran >= self.stable_after {
            self.backoff.reset();
        }
        self.backoff.fail()
    }

    /// The pause before the next try, after a start that failed.
    pub fn after_failed_start(&mut self) -> Duration {
        self.backoff.fail()
    }

    /// Quick exits have pushed the next pause past four times the minimum: crash-looping.
    pub fn looping(&self) -> bool {
        self.backoff.peek() > self.min * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn quick_exits_grow_the_pause_and_a_healthy_run_resets_it() {
        let mut p = RestartPolicy::new(S, 30 * S, 60 * S);
        let quick: Vec<Duration> = (0..6).map(|_| p.after_run(S)).collect();
        assert_eq!(quick, [1, 2, 4, 8, 16, 30].map(|n| n * S));
        assert!(p.looping());
        assert_eq!(p.after_run(60 * S), S, "a healthy run starts over");
        assert!(!p.looping());
        assert_eq!(p.after_failed_start(), 2 * S);
    }

    #[test]
    fn looping_means_the_next_pause_is_over_four_times_the_minimum() {
        let mut p = RestartPolicy::new(S, 60 * S, 30 * S);
        p.after_run(S); // next 2
        p.after_run(S); // next 4
        assert!(!p.looping());
        p.after_run(S); // next 8
        assert!(p.looping());
    }
}
