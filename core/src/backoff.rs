//! The one retry pause of every loop that reconnects to something that may be down (the agent's
//! grant stream and checkpoint sender to the controller, the SIEM sinks to their receivers).
//!
//! Exponential back-off with jitter: the pause doubles from `first` up to `max` with every
//! failed attempt, and each pause is a random time in `[pause/2, pause]` ("equal jitter", the
//! default), so that many clients that lost their server at the same instant do not all come
//! back at the same instant. A success resets it to `first`. Doubling saturates at `max`; it
//! never overflows, however many attempts fail.
//!
//! A fleet uses **full jitter** ([`Backoff::full_jitter`]: a random time in `[0, pause]`):
//! thousands of agents that lost the controller at one instant (its restart) spread their
//! retries over the whole window instead of its upper half, which halves the peak rate of
//! connections meeting the controller when it comes back (the AWS architecture blog's
//! "Exponential Backoff And Jitter" compares both). A lone sink to a SIEM keeps equal jitter:
//! it gains nothing from a pause near zero.

use std::time::Duration;

/// The pause between a fleet's agents' attempts to reach the controller (their grant stream,
/// their checkpoint sender): up to 250 ms doubling to up to 30 s, with full jitter, so that a
/// fleet that lost the controller at one instant (its restart) comes back spread over the
/// window rather than in waves (`cargo xtask bench fleet`, docs/performance.md).
pub const FLEET: Backoff =
    Backoff::new(Duration::from_millis(250), Duration::from_secs(30)).full_jitter();

/// How long a fleet started at one instant (a deployment, a data centre's power coming back)
/// would spread its first connections over, as `cargo xtask bench fleet` simulates; the agent
/// itself connects at once for now (see `agent/src/watch.rs`).
pub const FIRST_CONNECT_SPREAD: Duration = Duration::from_secs(1);

/// The shortest first pause a [`Backoff`] takes; a smaller one is raised to it.
pub const MIN_FIRST: Duration = Duration::from_millis(1);

/// Exponential back-off with jitter between retries; see the module documentation.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    /// The upper end of the next pause's range.
    current: Duration,
    jitter: Jitter,
}

/// Where in `[0, pause]` a pause may fall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// `[pause/2, pause]`: never much shorter than the doubling says.
    Equal,
    /// `[0, pause]`: the widest spread, for many clients retrying against one server.
    Full,
}

impl Backoff {
    /// A back-off whose first pause is at most `first` and whose pauses never exceed `max`
    /// (taken as `first` when smaller). `first` is at least [`MIN_FIRST`]: a zero pause
    /// would double to zero forever, and the retry loop would spin on the CPU.
    pub const fn new(first: Duration, max: Duration) -> Self {
        let first = if first.as_nanos() < MIN_FIRST.as_nanos() {
            MIN_FIRST
        } else {
            first
        };
        let max = if max.as_nanos() < first.as_nanos() {
            first
        } else {
            max
        };
        Backoff {
            first,
            max,
            current: first,
            jitter: Jitter::Equal,
        }
    }

    /// The same back-off with each pause a random time in `[0, pause]` (module docs).
    pub const fn full_jitter(self) -> Self {
        Backoff {
            jitter: Jitter::Full,
            ..self
        }
    }

    /// The pause before the next attempt — a random time in `[current/2, current]`, or in
    /// `[0, current]` with full jitter — and doubles `current` for the one after (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let random = rand::random::<u64>();
        let delay = match self.jitter {
            Jitter::Equal => jittered(self.current, random),
            Jitter::Full => fully_jittered(self.current, random),
        };
        self.current = self.current.saturating_mul(2).min(self.max);
        delay
    }

    /// The upper end of the next pause's range (what the doubling has reached).
    pub fn ceiling(&self) -> Duration {
        self.current
    }

    /// The longest pause this back-off ever takes.
    pub const fn max_pause(&self) -> Duration {
        self.max
    }

    /// Sleeps for [`Backoff::next_delay`].
    pub async fn pause(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// After a success: the next failure pauses `first` again.
    pub fn reset(&mut self) {
        self.current = self.first;
    }
}

/// A time in `[delay/2, delay]` picked by `random` (uniform over `u64`). Computed on
/// nanoseconds in integers: no float rounding can push it past `delay` or panic on a long one.
fn jittered(delay: Duration, random: u64) -> Duration {
    let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
    let half = nanos / 2;
    let span = nanos - half; // the upper half, rounded up: the range ends at `delay` itself
    let extra = if span == u64::MAX {
        random
    } else {
        random % (span + 1)
    };
    Duration::from_nanos(half + extra)
}

/// A time in `[0, delay]` picked by `random` (uniform over `u64`), on integer nanoseconds.
pub fn fully_jittered(delay: Duration, random: u64) -> Duration {
    let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
    let extra = if nanos == u64::MAX {
        random
    } else {
        random % (nanos + 1)
    };
    Duration::from_nanos(extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn pauses_double_from_first_up_to_max_within_their_jitter_range() {
        let mut b = Backoff::new(FIRST, MAX);
        let mut upper = FIRST;
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(
                d >= upper / 2 && d <= upper,
                "{d:?} outside [{:?}, {upper:?}]",
                upper / 2
            );
            upper = (upper * 2).min(MAX);
        }
        assert_eq!(b.current, MAX, "saturated at max");
    }

    #[test]
    fn jitter_spreads_pauses_over_the_upper_half_of_the_range() {
        let mut seen_low = false;
        let mut seen_high = false;
        for _ in 0..2000 {
            let d = Backoff::new(Duration::from_secs(10), MAX).next_delay();
            assert!(
                d >= Duration::from_secs(5) && d <= Duration::from_secs(10),
                "{d:?}"
            );
            seen_low |= d < Duration::from_secs(6);
            seen_high |= d > Duration::from_secs(9);
        }
        assert!(
            seen_low && seen_high,
            "the pauses are not spread over [5s, 10s]"
        );
        assert_eq!(jittered(Duration::from_secs(10), 0), Duration::from_secs(5));
        assert_eq!(
            jittered(Duration::from_secs(10), 5_000_000_000),
            Duration::from_secs(10),
            "the range includes its upper end"
        );
        assert_eq!(jittered(Duration::ZERO, u64::MAX), Duration::ZERO);
    }

    #[test]
    fn reset_brings_the_next_pause_back_to_first() {
        let mut b = Backoff::new(FIRST, MAX);
        for _ in 0..10 {
            b.next_delay();
        }
        b.reset();
        assert!(b.next_delay() <= FIRST);
    }

    #[test]
    fn many_failed_attempts_neither_overflow_nor_exceed_max() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::MAX);
        for _ in 0..10_000 {
            assert!(b.next_delay() <= Duration::MAX);
        }
        assert_eq!(b.current, Duration::MAX);
        // A max below first is taken as first.
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(2));
        }
    }

    #[test]
    fn a_zero_first_pause_is_raised_to_one_millisecond_and_still_doubles() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!((b.first, b.max), (MIN_FIRST, MIN_FIRST));
        assert!(b.next_delay() >= MIN_FIRST / 2, "a zero pause spins");
        let mut b = Backoff::new(Duration::ZERO, Duration::from_millis(8));
        for _ in 0..10 {
            b.next_delay();
        }
        assert_eq!(b.current, Duration::from_millis(8), "doubles from 1 ms");
        b.reset();
        assert!(b.next_delay() >= MIN_FIRST / 2, "reset to the raised first");
    }

    #[test]
    fn full_jitter_spreads_pauses_over_the_whole_range_and_still_doubles() {
        let mut seen_low = false;
        let mut seen_high = false;
        for _ in 0..2000 {
            let d = Backoff::new(Duration::from_secs(10), MAX)
                .full_jitter()
                .next_delay();
            assert!(d <= Duration::from_secs(10), "{d:?}");
            seen_low |= d < Duration::from_secs(1);
            seen_high |= d > Duration::from_secs(9);
        }
        assert!(
            seen_low && seen_high,
            "the pauses are not spread over [0, 10s]"
        );
        assert_eq!(fully_jittered(Duration::from_secs(10), 0), Duration::ZERO);
        assert_eq!(
            fully_jittered(Duration::from_secs(10), 10_000_000_000),
            Duration::from_secs(10),
            "the range includes its upper end"
        );
        assert_eq!(
            fully_jittered(Duration::MAX, u64::MAX),
            Duration::from_nanos(u64::MAX)
        );
        let mut b = Backoff::new(FIRST, MAX).full_jitter();
        let mut upper = FIRST;
        for _ in 0..20 {
            assert!(b.next_delay() <= upper);
            upper = (upper * 2).min(MAX);
        }
        assert_eq!(b.current, MAX, "saturated at max");
        b.reset();
        assert!(b.next_delay() <= FIRST);
    }
}
