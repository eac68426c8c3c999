//! The one back-off policy: delays that grow per failed try (times a factor, or by a fixed
//! step) up to a cap, each cut by a random share of up to `jitter_percent` so that many
//! retrying clients (partitions, instances) do not retry in step. Jitter only shortens a delay:
//! the cap stays a bound.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How the delay grows from one try to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Growth {
    /// Multiplied by this factor.
    Times(u32),
    /// Added this step.
    Plus(Duration),
}

/// A back-off: `nominal(n)` is the delay before retry `n` (0-based), without jitter;
/// `next()` walks through them, `reset()` starts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    growth: Growth,
    jitter_percent: u32,
    /// Delays handed out since the last reset.
    tries: u32,
}

/// The share of a delay jitter may cut by default.
const JITTER_PERCENT: u32 = 20;

impl Backoff {
    /// `base`, doubling per try up to `max`, with the default jitter.
    pub(crate) const fn doubling(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            growth: Growth::Times(2),
            jitter_percent: JITTER_PERCENT,
            tries: 0,
        }
    }

    /// `base`, then `base + step`, `base + 2 step`, … up to `max`, with the default jitter.
    pub(crate) const fn linear(base: Duration, step: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            growth: Growth::Plus(step),
            jitter_percent: JITTER_PERCENT,
            tries: 0,
        }
    }

    /// The same, multiplying by `factor` instead of 2.
    pub(crate) const fn times(self, factor: u32) -> Self {
        Self {
            growth: Growth::Times(factor),
            ..self
        }
    }

    /// The same, with delays cut by up to `percent` % (0: no jitter; at most 100).
    #[cfg(test)]
    pub(crate) const fn jitter(self, percent: u32) -> Self {
        Self {
            jitter_percent: if percent > 100 { 100 } else { percent },
            ..self
        }
    }

    /// The delay before retry `attempt` (0-based) without jitter: never above `max`.
    pub(crate) fn nominal(&self, attempt: u32) -> Duration {
        let grown = match self.growth {
            Growth::Times(factor) => factor
                .checked_pow(attempt)
                .and_then(|times| self.base.checked_mul(times)),
            Growth::Plus(step) => step
                .checked_mul(attempt)
                .and_then(|more| self.base.checked_add(more)),
        };
        grown.map_or(self.max, |d| d.min(self.max))
    }

    /// The delay before retry `attempt` (0-based), with jitter.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        cut(self.nominal(attempt), self.jitter_percent)
    }

    /// The next delay, with jitter; each call waits longer (up to `max`) until [`reset`].
    ///
    /// [`reset`]: Backoff::reset
    pub(crate) fn next(&mut self) -> Duration {
        let delay = self.delay(self.tries);
        self.tries = self.tries.saturating_add(1);
        delay
    }

    /// The nominal delay the last [`next`](Backoff::next) was drawn from; zero before one.
    #[cfg(test)]
    pub(crate) fn current(&self) -> Duration {
        match self.tries {
            0 => Duration::ZERO,
            n => self.nominal(n - 1),
        }
    }

    /// Starts over at `base` (after a success).
    pub(crate) fn reset(&mut self) {
        self.tries = 0;
    }
}

/// `delay` cut by a random share of up to `percent` %.
fn cut(delay: Duration, percent: u32) -> Duration {
    if percent == 0 || delay.is_zero() {
        return delay;
    }
    let nanos = delay.as_nanos().min(u128::from(u64::MAX)) as u64;
    let most = (u128::from(nanos) * u128::from(percent) / 100) as u64;
    let cut = random() % (most + 1);
    Duration::from_nanos(nanos - cut)
}

/// A xorshift64 generator shared by the process, seeded from the standard library's
/// per-process random hash keys: cheap, and good enough to spread retries.
fn random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(0x9E37_79B9_7F4A_7C15);
        x = hasher.finish() | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    // Two threads may draw the same number: harmless for jitter.
    STATE.store(x, Ordering::Relaxed);
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_doubling_back_off_doubles_up_to_its_cap_and_starts_over_on_reset() {
        let mut backoff = Backoff::doubling(MS * 100, MS * 5000).jitter(0);
        let delays: Vec<u128> = (0..8).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff.current(), MS * 5000);
        backoff.reset();
        assert_eq!(backoff.current(), Duration::ZERO);
        assert_eq!(backoff.next(), MS * 100);
    }

    #[test]
    fn other_factors_and_linear_steps() {
        let four = Backoff::doubling(MS * 100, MS * 10_000).times(4);
        let nominal: Vec<u128> = (0..4).map(|n| four.nominal(n).as_millis()).collect();
        assert_eq!(nominal, [100, 400, 1600, 6400]);
        let linear = Backoff::linear(MS * 200, MS * 200, MS * 2000);
        let nominal: Vec<u128> = (0..12).map(|n| linear.nominal(n).as_millis()).collect();
        assert_eq!(
            nominal,
            [
                200, 400, 600, 800, 1000, 1200, 1400, 1600, 1800, 2000, 2000, 2000
            ]
        );
    }

    #[test]
    fn huge_attempts_stay_at_the_cap() {
        let backoff = Backoff::doubling(MS * 100, Duration::from_secs(30));
        assert_eq!(backoff.nominal(9), Duration::from_secs(30));
        assert_eq!(backoff.nominal(u32::MAX), Duration::from_secs(30));
        let linear = Backoff::linear(MS, Duration::MAX, Duration::from_secs(1));
        assert_eq!(linear.nominal(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_only_shortens_and_stays_within_its_share() {
        let mut backoff = Backoff::doubling(MS * 1000, MS * 1000);
        let delays: Vec<Duration> = (0..500).map(|_| backoff.next()).collect();
        assert!(delays.iter().all(|d| *d <= MS * 1000 && *d >= MS * 800));
        assert!(
            delays.iter().any(|d| *d != delays[0]),
            "the delays vary: {:?}",
            &delays[..5]
        );
        let whole = Backoff::doubling(MS * 10, MS * 10).jitter(100);
        assert!((0..100).all(|n| whole.delay(n) <= MS * 10));
        assert_eq!(Backoff::doubling(MS, MS).jitter(0).delay(3), MS);
    }
}
