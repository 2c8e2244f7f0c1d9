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
//! its failures in rounds ([`Rounds`]), and tells an address that is down from a live server
//! that turned it away ([`Failure`]). After a refusal (or a connect timeout, or a server that
//! is not ours) it tries the addresses not yet down in this round, each after at most the first
//! pause: a dead replica costs no doubling. After a live server turned it away (busy, its
//! database unavailable, a cut stream) the round ends and the pause doubles, as with one
//! address: the N addresses of one busy controller are not tried N times per pause. A new
//! round starts at an address that was not down in the last round when there is one.

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
    /// The addresses that failed as [`Failure::Down`] since the round began, one bit each.
    tried: u64,
    /// The addresses that failed as down in the last round that had any: a round that ends
    /// starts the next one elsewhere when it can (a replica that just refused is not the next
    /// round's first attempt while another may be alive). Forgotten at a success, and once
    /// [`DOWN_REMEMBERED_ROUNDS`] rounds have started elsewhere: a replica that was down once
    /// is tried again while the others keep turning the client away (it may be back, and the
    /// others may stay busy for long).
    was_down: u64,
    /// The round starts `was_down` still decides.
    down_rounds_left: u8,
}

/// How many round starts skip an address that was down ([`Rounds`]) while no address is down
/// again: with the 30 s cap, a replica that came back is tried again within about two minutes
/// however long the others turn the client away.
pub const DOWN_REMEMBERED_ROUNDS: u8 = 3;

/// How an attempt at one address failed, which decides what a [`Rounds`] does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing of the service is at the address: the connection was refused, the TCP connect
    /// timed out, the host or network is unreachable, or the server there is not the one
    /// expected (its certificate fails verification; the agent adds another cluster id). Costs
    /// the service nothing: the next address is tried after at most the first pause.
    Down,
    /// A live server turned the client away or cut it (reset `busy`, `UNAVAILABLE` from its
    /// database, a TLS eof or reset during the handshake, a stream that ended, an answer too
    /// late): the round ends, the pause doubles, as for a single address. With several
    /// addresses of one busy controller, moving on at once would hammer it once per address.
    TurnedAway,
}

impl Failure {
    /// How `error` (an attempt's, its cause chain read by type, not by message) failed:
    /// [`Failure::Down`] when the chain holds a refused, timed-out or unreachable connect, or a
    /// server certificate that failed verification; otherwise [`Failure::TurnedAway`] — what
    /// is not known to be down is treated as a live server's answer, the cautious side.
    pub fn of(error: &anyhow::Error) -> Failure {
        use std::io::ErrorKind;
        let down = |cause: &(dyn std::error::Error + 'static)| {
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                if matches!(
                    io.kind(),
                    ErrorKind::ConnectionRefused
                        | ErrorKind::TimedOut
                        | ErrorKind::HostUnreachable
                        | ErrorKind::NetworkUnreachable
                ) {
                    return true;
                }
                // tokio-rustls carries the TLS error inside an `io::Error`, whose `source`
                // skips it: look inside.
                if let Some(inner) = io.get_ref() {
                    return wrong_server(inner);
                }
            }
            wrong_server(cause)
        };
        if error.chain().any(down) {
            Failure::Down
        } else {
            Failure::TurnedAway
        }
    }
}

/// Whether `cause` is our TLS client's refusal of the server's certificate: whatever answers
/// at the address is not the service.
fn wrong_server(cause: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        cause.downcast_ref::<rustls::Error>(),
        Some(rustls::Error::InvalidCertificate(_))
    )
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
    /// Whether this failure ended a round (every address down, or a live one turned the
    /// client away): the back-off doubled.
    pub round_ended: bool,
}

impl Rounds {
    /// Rounds over `count` addresses (at least one) with `backoff` between them.
    pub fn new(backoff: Backoff, count: usize) -> Rounds {
        Rounds {
            backoff,
            count: count.max(1),
            tried: 0,
            was_down: 0,
            down_rounds_left: 0,
        }
    }

    /// After a success (an answered stream): the next failure starts a new round from the
    /// first pause.
    pub fn connected(&mut self) {
        self.backoff.reset();
        self.tried = 0;
        self.was_down = 0;
        self.down_rounds_left = 0;
    }

    /// The upper end of the pause range a round that ends now would draw from.
    pub fn ceiling(&self) -> Duration {
        self.backoff.ceiling()
    }

    /// After the attempt at address `failed` failed as `how`:
    /// - **down**, with an address not yet down in this round: a random one of those, after at
    ///   most the first pause (jittered, never grown);
    /// - otherwise (every address down, or a live server **turned the client away**) the round
    ///   ends: the back-off's pause, which doubles for the next round, then a random other
    ///   address that was not down in the last round with any down, within the last
    ///   [`DOWN_REMEMBERED_ROUNDS`] (the spread over replicas, without going back to a dead
    ///   one while another may be alive, but not for ever); failing that, the
    ///   address that turned the client away (it is alive); failing that (all down), a random
    ///   other one.
    ///
    /// With one address every failure ends a round: the plain back-off.
    pub fn failed(&mut self, failed: usize, how: Failure) -> Next {
        let failed = failed % self.count;
        if how == Failure::Down {
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
        }
        if self.tried != 0 {
            self.was_down = self.tried;
            self.down_rounds_left = DOWN_REMEMBERED_ROUNDS;
        } else if self.down_rounds_left > 0 {
            self.down_rounds_left -= 1;
        }
        if self.down_rounds_left == 0 {
            self.was_down = 0;
        }
        if how == Failure::TurnedAway {
            // It answered: alive, whatever it was before.
            self.was_down &= !bit(failed);
        }
        self.tried = 0;
        let address = self.next_round_start(failed);
        let ceiling = self.backoff.ceiling();
        Next {
            address,
            pause: self.backoff.next_delay(),
            ceiling,
            round_ended: true,
        }
    }

    /// Where a new round starts after `failed` ended the last one ([`Rounds::failed`]).
    fn next_round_start(&self, failed: usize) -> usize {
        let live: Vec<usize> = (0..self.count)
            .filter(|&i| i != failed && self.was_down & bit(i) == 0)
            .collect();
        if let Some(&address) = live.get(random_below(live.len())) {
            return address;
        }
        if self.was_down & bit(failed) == 0 || self.count == 1 {
            return failed;
        }
        // All down: one of the count - 1 others, an offset of 1 ..= count - 1 from `failed`.
        (failed + 1 + random_below(self.count - 1)) % self.count
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
    fn a_round_tries_every_address_down_before_the_pause_doubles() {
        let mut rounds = Rounds::new(Backoff::new(FIRST, MAX).full_jitter(), 3);
        for round in 0..8u32 {
            // The two refusals that leave an address untried: the first pause, never more.
            let mut at = 0;
            let mut seen = vec![0];
            for _ in 0..2 {
                let next = rounds.failed(at, Failure::Down);
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
            let next = rounds.failed(at, Failure::Down);
            assert!(next.round_ended);
            assert_eq!(next.ceiling, (FIRST * 2u32.pow(round)).min(MAX));
            assert!(next.pause <= next.ceiling);
            assert_ne!(next.address, at, "a new round starts at another address");
        }
        rounds.connected();
        let next = rounds.failed(1, Failure::Down);
        assert!(!next.round_ended && next.ceiling == FIRST);
    }

    /// One controller at eight addresses, busy: every turn-away doubles the pause, as with one
    /// address — the agent does not try the same overloaded controller eight times per pause
    /// (it did when every failure counted as an address down).
    #[test]
    fn the_addresses_of_one_busy_controller_are_not_tried_once_each_per_round() {
        let mut rounds = Rounds::new(Backoff::new(FIRST, MAX).full_jitter(), 8);
        let mut at = 3;
        let mut ceilings = Vec::new();
        for _ in 0..9 {
            let next = rounds.failed(at, Failure::TurnedAway);
            assert!(next.round_ended, "a turn-away moved on at the first pause");
            assert!(next.pause <= next.ceiling);
            assert_ne!(next.address, at, "the spread over the addresses is kept");
            ceilings.push(next.ceiling.as_millis());
            at = next.address;
        }
        assert_eq!(
            ceilings,
            [250, 500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000]
        );
    }

    /// Two replicas, one dead: the agent turned away by the live one goes on to the dead one
    /// once, is refused there at no cost (the first pause), and then stays with the live one:
    /// the pause doubles once per turn-away, never for the refusal, and no round starts at
    /// the replica that just refused while the live one is there.
    #[test]
    fn a_dead_replica_costs_no_doubling_and_no_round_starts_there() {
        let mut rounds = Rounds::new(Backoff::new(FIRST, MAX).full_jitter(), 2);
        let (live, dead) = (0, 1);
        let to_dead = rounds.failed(live, Failure::TurnedAway);
        assert_eq!((to_dead.address, to_dead.round_ended), (dead, true));
        assert_eq!(to_dead.ceiling, FIRST);
        let to_live = rounds.failed(dead, Failure::Down);
        assert_eq!((to_live.address, to_live.round_ended), (live, false));
        assert_eq!(to_live.ceiling, FIRST, "the refusal doubled the pause");
        let mut ceilings = Vec::new();
        for _ in 0..DOWN_REMEMBERED_ROUNDS {
            let next = rounds.failed(live, Failure::TurnedAway);
            assert_eq!(
                (next.address, next.round_ended),
                (live, true),
                "a round started at the replica that just refused"
            );
            ceilings.push(next.ceiling);
        }
        assert_eq!(ceilings, [FIRST * 2, FIRST * 4, FIRST * 8]);
        // Not for ever (second review of herd5, M1): the live one keeps turning the agent
        // away, the dead one may be back; the next round starts there again.
        let back = rounds.failed(live, Failure::TurnedAway);
        assert_eq!((back.address, back.round_ended), (dead, true));
        assert_eq!(back.ceiling, FIRST * 16);
        // Still dead: no doubling for it, and it is skipped again as a round's start.
        let next = rounds.failed(dead, Failure::Down);
        assert_eq!((next.address, next.round_ended), (live, false));
        assert_eq!(next.ceiling, FIRST, "the refusal doubled the pause");
        let next = rounds.failed(live, Failure::TurnedAway);
        assert_eq!((next.address, next.round_ended), (live, true));
        // The live one down too: the other is tried again at once, whatever it was.
        let next = rounds.failed(live, Failure::Down);
        assert_eq!((next.address, next.round_ended), (dead, false));
        // A success forgets the dead one.
        rounds.connected();
        assert_eq!(rounds.failed(live, Failure::TurnedAway).address, dead);
    }

    #[test]
    fn with_one_address_every_failure_ends_a_round_as_the_plain_back_off() {
        let mut rounds = Rounds::new(Backoff::new(FIRST, MAX), 1);
        let mut upper = FIRST;
        for i in 0..12 {
            let how = if i % 2 == 0 {
                Failure::Down
            } else {
                Failure::TurnedAway
            };
            let next = rounds.failed(0, how);
            assert_eq!(
                (next.address, next.round_ended, next.ceiling),
                (0, true, upper)
            );
            assert!(next.pause >= upper / 2 && next.pause <= upper);
            upper = (upper * 2).min(MAX);
        }
        // A failed index out of range is taken modulo the count, never a panic.
        assert_eq!(Rounds::new(FLEET, 0).failed(7, Failure::Down).address, 0);
        let mut many = Rounds::new(FLEET, 100);
        let next = many.failed(99, Failure::Down);
        assert!(next.address < 100 && !next.round_ended);
        let next = many.failed(99, Failure::TurnedAway);
        assert!(next.address < 100 && next.round_ended);
    }

    #[test]
    fn rounds_spread_a_dead_replicas_agents_over_all_the_others() {
        let mut counts = [0u32; 4];
        for _ in 0..1000 {
            let mut rounds = Rounds::new(FLEET, 4);
            counts[rounds.failed(1, Failure::Down).address] += 1;
        }
        assert_eq!(counts[1], 0, "{counts:?}");
        for i in [0, 2, 3] {
            assert!((250..420).contains(&counts[i]), "{counts:?}");
        }
    }

    /// Down: refused, connect timed out, unreachable, a server certificate that fails
    /// verification (however deep in the chain, and inside tokio-rustls's `io::Error`).
    /// Turned away: a reset (`busy`), an eof in the handshake, a status from the controller,
    /// a timeout of ours, anything unknown.
    #[test]
    fn failures_are_classified_by_type_down_only_when_the_address_shows_it() {
        use std::io::{Error, ErrorKind};
        let io = |kind: ErrorKind| anyhow::Error::new(Error::from(kind)).context("connect");
        for kind in [
            ErrorKind::ConnectionRefused,
            ErrorKind::TimedOut,
            ErrorKind::HostUnreachable,
            ErrorKind::NetworkUnreachable,
        ] {
            assert_eq!(Failure::of(&io(kind)), Failure::Down, "{kind:?}");
        }
        for kind in [
            ErrorKind::ConnectionReset,
            ErrorKind::UnexpectedEof,
            ErrorKind::BrokenPipe,
        ] {
            assert_eq!(Failure::of(&io(kind)), Failure::TurnedAway, "{kind:?}");
        }
        let tls = |e: rustls::Error| {
            anyhow::Error::new(Error::new(ErrorKind::InvalidData, e))
                .context("tls handshake")
                .context("cannot connect to the controller")
        };
        let wrong = rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName);
        assert_eq!(Failure::of(&tls(wrong.clone())), Failure::Down);
        assert_eq!(Failure::of(&anyhow::Error::new(wrong)), Failure::Down);
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure);
        assert_eq!(Failure::of(&tls(alert)), Failure::TurnedAway);
        let status = anyhow::Error::new(tonic::Status::unavailable("the database is busy"));
        assert_eq!(Failure::of(&status), Failure::TurnedAway);
        assert_eq!(
            Failure::of(&anyhow::anyhow!("no TLS handshake within 10 s")),
            Failure::TurnedAway
        );
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
