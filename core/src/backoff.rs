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
//!
//! A client of **several addresses of one service** (the agent's controller replicas) counts
//! its failures in rounds ([`Rounds`]): after a failure it tries the addresses it has not tried
//! in this round first, each after at most the first pause, and the pause doubles once per
//! full round, not once per address. Before, every failed address doubled it: after a replica
//! died, an agent turned away by the live one (busy) moved to the dead one, was refused there,
//! and paused twice as long for a refusal that cost nothing, so agents piled up at the 30 s
//! cap while a replica was alive (docs/performance.md, the fleet's failover).

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

    /// A pause drawn from the first range (`first`, with this back-off's jitter), without
    /// doubling anything: the pause before another address of the same round ([`Rounds`]).
    pub fn first_delay(&self) -> Duration {
        let random = rand::random::<u64>();
        match self.jitter {
            Jitter::Equal => jittered(self.first, random),
            Jitter::Full => fully_jittered(self.first, random),
        }
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

/// The most addresses a [`Rounds`] tells apart (a bit each); beyond, addresses share bits
/// (`index % 64`) and a round may end before every one of them was tried.
pub const MAX_ROUND_ADDRESSES: usize = 64;

/// The reconnect of a client that has several addresses of one service (the agent's grant
/// stream and its controller replicas; `cargo xtask bench fleet`'s simulated agents use the
/// same, so that the bench cannot drift from the agent). See the module documentation.
#[derive(Debug, Clone)]
pub struct Rounds {
    backoff: Backoff,
    count: usize,
    /// The addresses that failed since the round began, one bit each.
    tried: u64,
}

/// Where and when a [`Rounds`] client tries next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    /// The index of the address to try.
    pub address: usize,
    /// The pause before trying it.
    pub pause: Duration,
    /// The upper end of the range `pause` was drawn from.
    pub ceiling: Duration,
    /// Whether this failure ended a round (every address tried): the back-off doubled.
    pub round_ended: bool,
}

impl Rounds {
    /// Rounds over `count` addresses (at least one) with `backoff` between them.
    pub fn new(backoff: Backoff, count: usize) -> Rounds {
        Rounds {
            backoff,
            count: count.max(1),
            tried: 0,
        }
    }

    /// After a success (an answered stream): the next failure starts a new round from the
    /// first pause.
    pub fn connected(&mut self) {
        self.backoff.reset();
        self.tried = 0;
    }

    /// The upper end of the pause range a round that ends now would draw from.
    pub fn ceiling(&self) -> Duration {
        self.backoff.ceiling()
    }

    /// After the attempt at address `failed` failed (refused, reset, timed out, or a stream
    /// that ended): a random address not yet tried in this round, after at most the first
    /// pause (jittered, never grown); when every address has been tried, the round ends: a
    /// random *other* address (the spread over replicas), after the back-off's pause, which
    /// doubles for the next round. With one address every failure ends a round: the plain
    /// back-off.
    pub fn failed(&mut self, failed: usize) -> Next {
        let failed = failed % self.count;
        self.tried |= bit(failed);
        let untried: Vec<usize> = (0..self.count)
            .filter(|&i| self.tried & bit(i) == 0)
            .collect();
        if let Some(&address) = untried.get(random_below(untried.len())) {
            return Next {
                address,
                pause: self.backoff.first_delay(),
                ceiling: self.backoff.first,
                round_ended: false,
            };
        }
        self.tried = 0;
        let address = match self.count {
            1 => 0,
            // One of the count - 1 others: an offset of 1 ..= count - 1 from `failed`.
            count => (failed + 1 + random_below(count - 1)) % count,
        };
        let ceiling = self.backoff.ceiling();
        Next {
            address,
            pause: self.backoff.next_delay(),
            ceiling,
            round_ended: true,
        }
    }
}

/// The bit of address `i` in [`Rounds::tried`].
fn bit(i: usize) -> u64 {
    1u64 << (i % MAX_ROUND_ADDRESSES)
}

/// A random number in `0..n` (0 when `n` is 0).
fn random_below(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    usize::try_from(rand::random::<u64>() % u64::try_from(n).unwrap_or(u64::MAX)).unwrap_or(0)
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
    fn a_round_tries_every_address_before_the_pause_doubles() {
        let mut rounds = Rounds::new(Backoff::new(FIRST, MAX).full_jitter(), 3);
        for round in 0..8u32 {
            // The two failures that leave an address untried: the first pause, never more.
            let mut at = 0;
            let mut seen = vec![0];
            for _ in 0..2 {
                let next = rounds.failed(at);
                assert!(
                    !next.round_ended,
                    "round {round}: ended before all were tried"
                );
                assert_eq!(next.ceiling, FIRST);
                assert!(next.pause <= FIRST, "{:?}", next.pause);
                assert!(
                    !seen.contains(&next.address),
                    "{seen:?} again {}",
                    next.address
                );
                seen.push(next.address);
                at = next.address;
            }
            // The third ends the round: the back-off's pause, doubling once per round.
            let next = rounds.failed(at);
            assert!(next.round_ended);
            assert_eq!(next.ceiling, (FIRST * 2u32.pow(round)).min(MAX));
            assert!(next.pause <= next.ceiling);
            assert_ne!(next.address, at, "a new round starts at another address");
        }
        rounds.connected();
        let next = rounds.failed(1);
        assert!(!next.round_ended && next.ceiling == FIRST);
    }

    /// Two replicas, one dead: the agent turned away by the live one is refused by the dead
    /// one at no cost, and its pause grows once per round, not twice.
    #[test]
    fn a_refusal_by_a_dead_replica_does_not_double_the_pause_again() {
        let mut rounds = Rounds::new(Backoff::new(FIRST, MAX).full_jitter(), 2);
        let (live, dead) = (0, 1);
        let mut ceilings = Vec::new();
        for _ in 0..4 {
            let to_dead = rounds.failed(live);
            assert_eq!((to_dead.address, to_dead.round_ended), (dead, false));
            let to_live = rounds.failed(dead);
            assert_eq!((to_live.address, to_live.round_ended), (live, true));
            ceilings.push(to_live.ceiling);
        }
        assert_eq!(ceilings, [FIRST, FIRST * 2, FIRST * 4, FIRST * 8]);
    }

    #[test]
    fn with_one_address_every_failure_ends_a_round_as_the_plain_back_off() {
        let mut rounds = Rounds::new(Backoff::new(FIRST, MAX), 1);
        let mut upper = FIRST;
        for _ in 0..12 {
            let next = rounds.failed(0);
            assert_eq!(
                (next.address, next.round_ended, next.ceiling),
                (0, true, upper)
            );
            assert!(next.pause >= upper / 2 && next.pause <= upper);
            upper = (upper * 2).min(MAX);
        }
        // A failed index out of range is taken modulo the count, never a panic.
        assert_eq!(Rounds::new(FLEET, 0).failed(7).address, 0);
        let mut many = Rounds::new(FLEET, 100);
        let next = many.failed(99);
        assert!(next.address < 100 && !next.round_ended);
    }

    #[test]
    fn rounds_spread_a_dead_replicas_agents_over_all_the_others() {
        let mut counts = [0u32; 4];
        for _ in 0..1000 {
            let mut rounds = Rounds::new(FLEET, 4);
            counts[rounds.failed(1).address] += 1;
        }
        assert_eq!(counts[1], 0, "{counts:?}");
        for i in [0, 2, 3] {
            assert!((250..420).contains(&counts[i]), "{counts:?}");
        }
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
