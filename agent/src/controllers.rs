//! The controller addresses an agent may dial (`controller = "host:port"`, or the replicas of one
//! controller: `controllers = ["a:7443", "b:7443"]`) and which of them is current.
//!
//! The contract: every address is **one** controller cluster (the same database, CA and grant
//! keys; `cluster.rs` refuses an address presenting another cluster id); the agent uses one at a
//! time. It starts at a random one, so that a fleet configured with the same list spreads over
//! the replicas, and only the grant stream (`watch.rs`) moves on: when its connection fails, it
//! is refused, or its stream ends, it moves on (`loggate_core::backoff::Rounds`): after a refusal
//! (the address down) to an address not yet down in this round after at most the first pause;
//! after a live controller turned it away, or every address was down, after the fleet's
//! back-off, which doubles, to another address that was not just down (a refusal by a dead
//! replica does not lengthen the pause, and the agent does not go back to it while another is
//! alive). The certificate renewal and the checkpoint
//! sender use whichever address is current at their next attempt. Nothing is missed by a move:
//! the stream resumes from the agent's last revision, and a replica of another epoch sends
//! everything again (the epoch rules of `watch.rs`).
//!
//! Addresses are validated at load ([`check_address`]): `host:port` with a DNS name, an IPv4
//! address or a bracketed IPv6 address; no scheme, path, user or spaces. At most
//! [`MAX_CONTROLLERS`], none twice.

use anyhow::{bail, ensure};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The most addresses `controllers` may list (a bound on a hostile configuration; a controller
/// has a handful of replicas).
pub const MAX_CONTROLLERS: usize = 32;

/// The validated, non-empty list of controller addresses and the index of the current one.
#[derive(Debug)]
pub struct ControllerAddrs {
    addrs: Vec<String>,
    current: AtomicUsize,
}

impl ControllerAddrs {
    /// A list starting at `addrs[start % len]`. `addrs` must be non-empty and valid (see
    /// [`ControllerAddrs::from_config`], which checks); an empty list is refused.
    pub fn new(addrs: Vec<String>, start: usize) -> anyhow::Result<Self> {
        ensure!(!addrs.is_empty(), "no controller address");
        let start = start % addrs.len();
        Ok(ControllerAddrs {
            addrs,
            current: AtomicUsize::new(start),
        })
    }

    /// The configuration's `controller` (one address) or `controllers` (a list): exactly one of
    /// them, every address valid, none twice; the current one is picked at random.
    pub fn from_config(
        controller: Option<String>,
        controllers: Option<Vec<String>>,
    ) -> anyhow::Result<Self> {
        let addrs = match (controller, controllers) {
            (Some(_), Some(_)) => bail!(
                "controller and controllers are both given: keep controller = \"host:port\" for \
                 one address, or controllers = [\"a:7443\", \"b:7443\"] for the replicas of one \
                 controller, not both"
            ),
            (None, None) => bail!(
                "controller: name the controller's address (controller = \"host:port\") or its \
                 replicas' (controllers = [\"a:7443\", \"b:7443\"])"
            ),
            (Some(one), None) => {
                check_address(&one).map_err(|e| anyhow::anyhow!("controller: {e}"))?;
                vec![one]
            }
            (None, Some(list)) => return Self::from_list("controllers", list),
        };
        let start = rand::random::<u32>();
        Self::new(addrs, usize::try_from(start).unwrap_or(0))
    }

    /// A list of addresses (`controllers`, or `enrol --controller` repeated), checked as one:
    /// non-empty, at most [`MAX_CONTROLLERS`], each valid, none twice; the current one is
    /// picked at random. `what` names the setting in the errors.
    pub fn from_list(what: &str, list: Vec<String>) -> anyhow::Result<Self> {
        ensure!(
            !list.is_empty(),
            "{what}: the list is empty; name at least one \"host:port\""
        );
        ensure!(
            list.len() <= MAX_CONTROLLERS,
            "{what}: {} addresses given, at most {MAX_CONTROLLERS} are allowed",
            list.len()
        );
        for (i, addr) in list.iter().enumerate() {
            check_address(addr).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
            if list[..i].contains(addr) {
                bail!("{what}: {addr:?} is listed twice; name each address once");
            }
        }
        let start = rand::random::<u32>();
        Self::new(list, usize::try_from(start).unwrap_or(0))
    }

    /// The current address and its position (give the position back to
    /// [`ControllerAddrs::advance_from`]).
    pub fn current(&self) -> (usize, &str) {
        let i = self.current.load(Ordering::Acquire) % self.addrs.len();
        (i, &self.addrs[i])
    }

    /// After the address at `failed` failed: a random other one becomes current, unless
    /// another caller has moved on already (then its choice stands). Returns the new current
    /// address. Random, not the next in the list: when one replica dies, its agents spread
    /// over all the others instead of doubling the load of its neighbour.
    pub fn advance_from(&self, failed: usize) -> &str {
        let len = self.addrs.len();
        let next = match len {
            1 => 0,
            // One of the len - 1 others: an offset of 1 ..= len - 1 from `failed`.
            _ => {
                let offset = 1 + usize::try_from(rand::random::<u32>()).unwrap_or(0) % (len - 1);
                (failed % len + offset) % len
            }
        };
        // Only a move from `failed` counts: two callers that saw the same failure move once.
        let _ = self
            .current
            .compare_exchange(failed, next, Ordering::AcqRel, Ordering::Acquire);
        self.current().1
    }

    /// After the address at `failed` failed: the one at `next` (chosen by the caller's
    /// [`loggate_core::backoff::Rounds`]) becomes current, unless another caller has moved on
    /// already (then its choice stands). Returns the new current address and its position.
    pub fn move_from(&self, failed: usize, next: usize) -> (usize, &str) {
        let next = next % self.addrs.len();
        // Only a move from `failed` counts: two callers that saw the same failure move once.
        let _ = self
            .current
            .compare_exchange(failed, next, Ordering::AcqRel, Ordering::Acquire);
        self.current()
    }

    /// Every address, in the configured order.
    pub fn all(&self) -> &[String] {
        &self.addrs
    }
}

/// `host:port` as a client dials it: a host name (letters, digits, `-`, `_`, `.`: resolvers and
/// container service names accept `_`), an IPv4 address or a bracketed IPv6 address (with a
/// zone id, `[fe80::1%eth0]`), and a port 1–65535. Anything else (a scheme, a path, spaces, a
/// user) is refused with the reason.
pub fn check_address(addr: &str) -> anyhow::Result<()> {
    let bad = || anyhow::anyhow!("{addr:?} is not host:port (e.g. \"controller.example:7443\")");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let (ip, zone) = match v6.split_once('%') {
            Some((ip, zone)) => (ip, Some(zone)),
            None => (v6, None),
        };
        ip.parse::<std::net::Ipv6Addr>().is_ok()
            && zone.is_none_or(|z| {
                !z.is_empty()
                    && z.len() <= 64
                    && z.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            })
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !host.starts_with(['-', '.'])
    };
    if !host_ok || !port_ok {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(addrs: &[&str]) -> Vec<String> {
        addrs.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn advancing_leaves_the_failed_address_for_another() {
        let c = ControllerAddrs::new(list(&["a:1", "b:2", "c:3"]), 4).unwrap();
        assert_eq!(
            c.current(),
            (1, "b:2"),
            "the start is taken modulo the length"
        );
        for _ in 0..100 {
            let (at, addr) = c.current();
            let next = c.advance_from(at);
            assert_ne!(next, addr, "a failed address is never chosen again at once");
        }
        let two = ControllerAddrs::new(list(&["a:1", "b:2"]), 0).unwrap();
        assert_eq!(two.advance_from(0), "b:2", "of two, the other one");
        assert_eq!(two.advance_from(1), "a:1");
        let one = ControllerAddrs::new(list(&["only:1"]), 7).unwrap();
        assert_eq!(one.advance_from(0), "only:1", "one address stays current");
    }

    #[test]
    fn the_agents_of_a_failed_address_spread_over_all_the_others() {
        let addrs = list(&["a:1", "b:2", "c:3", "d:4"]);
        let mut counts = [0_u32; 4];
        for _ in 0..1000 {
            let c = ControllerAddrs::new(addrs.clone(), 1).unwrap();
            c.advance_from(1);
            counts[c.current().0] += 1;
        }
        assert_eq!(counts[1], 0, "{counts:?}");
        // A third each (333); a fair die leaves 250..420 with overwhelming probability.
        for i in [0, 2, 3] {
            assert!((250..420).contains(&counts[i]), "{counts:?}");
        }
    }

    #[test]
    fn a_failure_reported_twice_moves_only_once() {
        let c = ControllerAddrs::new(list(&["a:1", "b:2", "c:3"]), 0).unwrap();
        let (seen, _) = c.current();
        let moved = c.advance_from(seen).to_string();
        assert_ne!(moved, "a:1");
        // A second task saw the same failure of "a:1": the move already happened.
        assert_eq!(c.advance_from(seen), moved);
        assert_eq!(c.current().1, moved);
    }

    /// Two replicas, the second dead: the agent's grant stream turned away by the live one
    /// (busy) goes on to the dead one after the pause, is refused there and comes back to the
    /// live one after at most the first pause; it stays with the live one for
    /// `DOWN_REMEMBERED_ROUNDS` rounds, its pause doubling once per turn-away, never for the
    /// refusal, then tries the dead one again. (It moved to "a random other"
    /// address and doubled the pause at every address: a refusal by the dead replica made the
    /// next pause twice as long while a replica was alive.)
    #[test]
    fn a_dead_replica_costs_no_doubling_of_the_pause() {
        use loggate_core::backoff::{Failure, Rounds};
        let c = ControllerAddrs::new(list(&["live:1", "dead:2"]), 0).unwrap();
        let mut rounds = Rounds::new(crate::watch::CONTROLLER_BACKOFF, c.all().len());
        let (at, _) = c.current();
        let next = rounds.failed(at, Failure::TurnedAway);
        assert_eq!(c.move_from(at, next.address), (1, "dead:2"));
        let (at, _) = c.current();
        let next = rounds.failed(at, Failure::Down);
        assert_eq!(c.move_from(at, next.address), (0, "live:1"));
        assert!(
            next.pause <= loggate_core::backoff::FLEET.ceiling(),
            "{:?} after the refusal",
            next.pause
        );
        let mut longest = Vec::new();
        for _ in 0..loggate_core::backoff::DOWN_REMEMBERED_ROUNDS {
            let (at, _) = c.current();
            let next = rounds.failed(at, Failure::TurnedAway);
            assert_eq!(c.move_from(at, next.address), (0, "live:1"));
            longest.push(next.ceiling.as_millis());
        }
        assert_eq!(longest, [500, 1000, 2000]);
        // Then the replica that was down is tried again (it may be back), after the pause
        // that kept doubling at the live one.
        let (at, _) = c.current();
        let next = rounds.failed(at, Failure::TurnedAway);
        assert_eq!(next.ceiling.as_millis(), 4000);
        assert_eq!(c.move_from(at, next.address), (1, "dead:2"));
        // Another task's move stands.
        assert_eq!(c.move_from(0, 0), (1, "dead:2"));
    }

    #[test]
    fn a_list_is_checked_whole_wherever_it_comes_from() {
        let twice = ControllerAddrs::from_list("--controller", list(&["a:1", "a:1"])).unwrap_err();
        assert_eq!(
            format!("{twice}"),
            "--controller: \"a:1\" is listed twice; name each address once"
        );
        let many: Vec<String> = (1..=33).map(|p| format!("ctl:{p}")).collect();
        let too_many = ControllerAddrs::from_list("--controller", many).unwrap_err();
        assert!(format!("{too_many}").contains("at most 32"), "{too_many}");
    }

    #[test]
    fn underscores_and_ipv6_zone_ids_are_accepted_as_before() {
        for good in [
            "loggate_ctl:7400",
            "ctl_b.svc_net:7400",
            "[fe80::1%eth0]:7400",
            "[fe80::1%25]:7400",
        ] {
            check_address(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        let one = ControllerAddrs::from_config(Some("loggate_ctl:7400".into()), None).unwrap();
        assert_eq!(one.all(), ["loggate_ctl:7400"]);
        for bad in [
            "[fe80::1%]:7400",
            "[fe80::1%a b]:7400",
            "[fe80::1%eth0/x]:7400",
            "_:",
        ] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_starting_address_is_random_so_a_fleet_spreads() {
        let addrs = list(&["a:1", "b:2", "c:3", "d:4"]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..400 {
            let c = ControllerAddrs::from_config(None, Some(addrs.clone())).unwrap();
            seen.insert(c.current().0);
        }
        assert_eq!(seen.len(), 4, "400 agents all started on {seen:?}");
    }

    #[test]
    fn one_address_or_a_list_but_not_both_and_not_neither() {
        let one = ControllerAddrs::from_config(Some("ctl.example:7443".into()), None).unwrap();
        assert_eq!(one.all(), ["ctl.example:7443"]);
        let many = ControllerAddrs::from_config(
            None,
            Some(list(&["10.0.0.1:7443", "[2001:db8::1]:7443", "ctl-b:7443"])),
        )
        .unwrap();
        assert_eq!(many.all().len(), 3);

        let both =
            ControllerAddrs::from_config(Some("a:1".into()), Some(list(&["b:2"]))).unwrap_err();
        assert!(format!("{both}").contains("both given"), "{both}");
        let neither = ControllerAddrs::from_config(None, None).unwrap_err();
        assert!(
            format!("{neither}").contains("name the controller"),
            "{neither}"
        );
        let empty = ControllerAddrs::from_config(None, Some(vec![])).unwrap_err();
        assert!(format!("{empty}").contains("the list is empty"), "{empty}");
        let twice =
            ControllerAddrs::from_config(None, Some(list(&["a:1", "b:2", "a:1"]))).unwrap_err();
        assert!(format!("{twice}").contains("listed twice"), "{twice}");
        let many: Vec<String> = (1..=33).map(|p| format!("ctl:{p}")).collect();
        let too_many = ControllerAddrs::from_config(None, Some(many)).unwrap_err();
        assert!(format!("{too_many}").contains("at most 32"), "{too_many}");
    }

    #[test]
    fn addresses_must_be_host_and_port_and_nothing_else() {
        for good in [
            "ctl:1",
            "ctl.example.net:65535",
            "10.1.2.3:7443",
            "[::1]:7443",
        ] {
            check_address(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            "ctl",
            "ctl:",
            ":7443",
            "ctl:0",
            "ctl:65536",
            "ctl:+1",
            "https://ctl:7443",
            "ctl:7443/path",
            "user@ctl:7443",
            "ctl example:7443",
            "-ctl:7443",
            "[not-v6]:7443",
            "::1:7443",
            "ctl\n:7443",
        ] {
            let e = check_address(bad).expect_err(bad);
            assert!(format!("{e}").contains("is not host:port"), "{bad}: {e}");
        }
        let in_list =
            ControllerAddrs::from_config(None, Some(list(&["a:1", "https://b:2"]))).unwrap_err();
        assert!(
            format!("{in_list}").starts_with("controllers: \"https://b:2\" is not host:port"),
            "{in_list}"
        );
    }
}
