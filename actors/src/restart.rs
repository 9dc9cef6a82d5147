//! The restart rule every supervisor here applies: restart a failed child after
//! an exponential backoff; more than `max_restarts` failures within `window`
//! escalate instead.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::messages::SupervisionOptions;

#[derive(Debug, Clone)]
pub struct RestartTracker {
    opts: SupervisionOptions,
    failures: VecDeque<Instant>,
}

impl RestartTracker {
    pub fn new(opts: &SupervisionOptions) -> Self {
        RestartTracker {
            opts: opts.clone(),
            failures: VecDeque::new(),
        }
    }

    /// Records a failure now: `Some(backoff)` to restart after, or `None` to
    /// escalate (too many failures in the window).
    pub fn failed(&mut self) -> Option<Duration> {
        self.failed_at(Instant::now())
    }

    fn failed_at(&mut self, now: Instant) -> Option<Duration> {
        self.failures.push_back(now);
        while self
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.opts.window)
        {
            self.failures.pop_front();
        }
        if self.failures.len() > self.opts.max_restarts {
            return None;
        }
        let n = self.failures.len().saturating_sub(1).min(16) as u32;
        Some(
            self.opts
                .backoff
                .saturating_mul(1 << n)
                .min(self.opts.max_backoff),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_escalates_and_old_failures_age_out() {
        let opts = SupervisionOptions {
            max_restarts: 3,
            window: Duration::from_secs(10),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            ..SupervisionOptions::default()
        };
        let mut t = RestartTracker::new(&opts);
        let t0 = Instant::now();
        assert_eq!(t.failed_at(t0), Some(Duration::from_millis(100)));
        assert_eq!(t.failed_at(t0), Some(Duration::from_millis(200)));
        assert_eq!(t.failed_at(t0), Some(Duration::from_millis(300)));
        assert_eq!(t.failed_at(t0), None);
        // Eleven seconds later the old failures no longer count.
        assert_eq!(
            t.failed_at(t0 + Duration::from_secs(11)),
            Some(Duration::from_millis(100))
        );
    }
}
