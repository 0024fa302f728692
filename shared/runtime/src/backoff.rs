//! [`Backoff`]: the one retry delay every Substruct retry loop uses — capped,
//! exponential, with jitter so that many clients failing at once (every site's edge
//! after a hub restart) do not retry in lockstep.

use std::time::Duration;

/// Capped exponential backoff with "equal jitter": after `n` failures the next delay
/// lies in `[d/2, d)` where `d = min(cap, base * 2^n)` (never above `cap`).
///
/// ```
/// # use std::time::Duration;
/// # use substruct_runtime::backoff::Backoff;
/// let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// let first = backoff.next_delay();
/// assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(100));
/// assert_eq!(backoff.failures(), 1);
/// backoff.reset(); // after a success
/// assert_eq!(backoff.failures(), 0);
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff whose first delay is about `base` (between `base/2` and `base`) and
    /// that doubles per failure up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            failures: 0,
        }
    }

    /// The delay before the next attempt, jittered with the thread's random number
    /// generator; counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(rand::random::<f64>())
    }

    /// [`Self::next_delay`] with the jitter given: `unit` in `[0, 1)` (clamped; a
    /// non-finite value counts as 0). Deterministic, for tests.
    pub fn next_delay_with(&mut self, unit: f64) -> Duration {
        let delay = self.delay_after(self.failures, unit);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// The delay after `failures` failures with jitter `unit`, without changing any
    /// state (for callbacks that are handed the attempt number, such as a NATS
    /// client's reconnect delay).
    pub fn delay_after(&self, failures: u32, unit: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << failures.min(16));
        let ceiling = exp.min(self.cap);
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        ceiling.mul_f64(0.5 + 0.5 * unit).min(self.cap)
    }

    /// Forgets the failures (call it after a success): the next delay is about `base`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures counted so far (delays handed out since the last reset).
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn grows_to_the_cap_with_jitter_inside_bounds() {
        let mut b = Backoff::new(250 * MS, Duration::from_secs(5));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay_with(0.999_999)).collect();
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(5)));
        assert!(delays[7] > 4900 * MS);
        let mut b = Backoff::new(250 * MS, Duration::from_secs(5));
        assert_eq!(b.next_delay_with(0.0), 125 * MS);
        assert_eq!(b.next_delay_with(f64::NAN), 250 * MS);
        assert_eq!(b.failures(), 2);
        for _ in 0..100 {
            assert!(b.next_delay_with(2.0) <= Duration::from_secs(5));
        }
        assert_eq!(b.failures(), 102);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.next_delay_with(0.0), 125 * MS);
    }

    #[test]
    fn random_jitter_spreads_the_delays() {
        let delays: std::collections::BTreeSet<Duration> = (0..32)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(5)).next_delay())
            .collect();
        assert!(delays.len() > 1, "jitter: {delays:?}");
        assert!(delays
            .iter()
            .all(|d| *d >= 500 * MS && *d <= Duration::from_secs(1)));
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let b = Backoff::new(Duration::from_secs(u64::MAX / 4), Duration::MAX);
        let _ = b.delay_after(u32::MAX, 0.5);
        let b = Backoff::new(100 * MS, 3000 * MS);
        assert_eq!(b.delay_after(u32::MAX, 0.0), 1500 * MS);
    }

    proptest! {
        #[test]
        fn delay_is_within_half_and_whole_of_the_ceiling(
            base_ms in 1u64..10_000, cap_ms in 1u64..60_000, failures in 0u32..64, unit in -1.0f64..2.0
        ) {
            let (base, cap) = (Duration::from_millis(base_ms), Duration::from_millis(cap_ms));
            let b = Backoff::new(base, cap);
            let ceiling = base.saturating_mul(1 << failures.min(16)).min(cap);
            let d = b.delay_after(failures, unit);
            prop_assert!(d <= ceiling && d <= cap);
            prop_assert!(d >= (ceiling / 2).saturating_sub(MS));
        }
    }
}
