//! The controller addresses an agent may dial (`controller = "host:port"`, or the replicas of one
//! controller: `controllers = ["a:7443", "b:7443"]`) and which of them is current.
//!
//! The contract: every address is a replica of **one** controller (the same database, CA and
//! grant keys); the agent uses one at a time. It starts at a random one, so that a fleet
//! configured with the same list spreads over the replicas, and only the grant stream
//! (`watch.rs`) moves on: when its connection fails or its stream ends, it goes to the next
//! address (round robin) after the fleet's back-off. The certificate renewal and the checkpoint
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
            (None, Some(list)) => {
                ensure!(
                    !list.is_empty(),
                    "controllers: the list is empty; name at least one \"host:port\""
                );
                ensure!(
                    list.len() <= MAX_CONTROLLERS,
                    "controllers: {} addresses given, at most {MAX_CONTROLLERS} are allowed",
                    list.len()
                );
                for (i, addr) in list.iter().enumerate() {
                    check_address(addr).map_err(|e| anyhow::anyhow!("controllers: {e}"))?;
                    if list[..i].contains(addr) {
                        bail!("controllers: {addr:?} is listed twice; name each address once");
                    }
                }
                list
            }
        };
        let start = rand::random::<u32>();
        Self::new(addrs, usize::try_from(start).unwrap_or(0))
    }

    /// The current address and its position (give the position back to
    /// [`ControllerAddrs::advance_from`]).
    pub fn current(&self) -> (usize, &str) {
        let i = self.current.load(Ordering::Acquire) % self.addrs.len();
        (i, &self.addrs[i])
    }

    /// After the address at `failed` failed: the next one becomes current, unless another
    /// caller has moved on already (then its choice stands). Returns the new current address.
    pub fn advance_from(&self, failed: usize) -> &str {
        let next = (failed + 1) % self.addrs.len();
        // Only a move from `failed` counts: two callers that saw the same failure move once.
        let _ = self
            .current
            .compare_exchange(failed, next, Ordering::AcqRel, Ordering::Acquire);
        self.current().1
    }

    /// Every address, in the configured order.
    pub fn all(&self) -> &[String] {
        &self.addrs
    }
}

/// `host:port` as a client dials it: a DNS name (letters, digits, `-`, `.`), an IPv4 address or
/// a bracketed IPv6 address, and a port 1–65535. Anything else (a scheme, a path, spaces, a
/// user) is refused with the reason.
pub fn check_address(addr: &str) -> anyhow::Result<()> {
    let bad = || anyhow::anyhow!("{addr:?} is not host:port (e.g. \"controller.example:7443\")");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
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
    fn advancing_goes_round_the_list_from_the_starting_address() {
        let c = ControllerAddrs::new(list(&["a:1", "b:2", "c:3"]), 4).unwrap();
        assert_eq!(
            c.current(),
            (1, "b:2"),
            "the start is taken modulo the length"
        );
        assert_eq!(c.advance_from(1), "c:3");
        assert_eq!(c.advance_from(2), "a:1", "after the last comes the first");
        assert_eq!(c.advance_from(0), "b:2");
        let one = ControllerAddrs::new(list(&["only:1"]), 7).unwrap();
        assert_eq!(one.advance_from(0), "only:1", "one address stays current");
    }

    #[test]
    fn a_failure_reported_twice_moves_only_once() {
        let c = ControllerAddrs::new(list(&["a:1", "b:2", "c:3"]), 0).unwrap();
        let (seen, _) = c.current();
        assert_eq!(c.advance_from(seen), "b:2");
        // A second task saw the same failure of "a:1": the move already happened.
        assert_eq!(c.advance_from(seen), "b:2");
        assert_eq!(c.current(), (1, "b:2"));
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
