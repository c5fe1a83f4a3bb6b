//! The one back-off of the program: every retry loop (the reconcile loop
//! after a failed run, connecting to the database, to AMI and for CEL, ARI's
//! events, waiting out a reload in progress) waits `first × 2^(n-1)`
//! before its n-th retry, capped at `max`. Each loop has its own
//! [`BackoffConfig`]; none writes the doubling again.

use std::time::Duration;

/// How a back-off grows: the first delay, doubled per failure up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    pub first: Duration,
    pub max: Duration,
}

impl BackoffConfig {
    pub const fn new(first: Duration, max: Duration) -> Self {
        BackoffConfig { first, max }
    }

    /// The delay before retry number `failures` (1-based; 0 counts as 1):
    /// `first × 2^(failures-1)`, capped at `max`.
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
        self.first.saturating_mul(factor).min(self.max)
    }
}

/// A back-off under way: counts failures since the last success.
#[derive(Clone, Debug)]
pub struct Backoff {
    cfg: BackoffConfig,
    failures: u32,
}

impl Backoff {
    pub fn new(cfg: BackoffConfig) -> Self {
        Backoff { cfg, failures: 0 }
    }

    /// Counts a failure; returns how long to wait before the next attempt.
    pub fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.cfg.delay(self.failures)
    }

    /// What the next [`fail`](Backoff::fail) will return, without counting.
    pub fn next_delay(&self) -> Duration {
        self.cfg.delay(self.failures.saturating_add(1))
    }

    /// After a success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let cfg = BackoffConfig::new(Duration::from_secs(1), Duration::from_secs(10));
        let got: Vec<u64> = (1..=6).map(|n| cfg.delay(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
        assert_eq!(cfg.delay(1000), Duration::from_secs(10));
    }

    #[test]
    fn a_backoff_counts_failures_and_starts_over_after_a_success() {
        let mut b = Backoff::new(BackoffConfig::new(Duration::from_millis(200), Duration::from_secs(30)));
        assert_eq!(b.next_delay(), Duration::from_millis(200), "peeking does not count");
        let got: Vec<u128> = (0..10).map(|_| b.fail().as_millis()).collect();
        assert_eq!(got, [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]);
        assert_eq!(b.failures(), 10);
        b.reset();
        assert_eq!(b.fail(), Duration::from_millis(200));
    }
}
