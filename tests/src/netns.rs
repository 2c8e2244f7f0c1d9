//! Hosts for end-to-end tests: Linux network namespaces with their own addresses, wired to one
//! bridge like machines to a switch, so that a controller and agents run as separate hosts and
//! a host's link can be cut and restored (`ip link set … down|up` on its switch port).
//!
//! Layout of a [`Lab`]: a namespace holding the bridge (the switch), and one namespace per host
//! with `lo` and `eth0` (a veth pair whose other end is the host's port on the bridge) holding
//! `10.77.0.<n>/24`. Nothing touches the machine's own namespace: the addresses exist only inside
//! the lab, so they cannot clash with the machine's. Names are unique per run
//! (`lgmh-<pid>-<lab>-<host>`), and everything is deleted on drop, during a panic's unwinding
//! too; a lab left behind by a killed test run (its pid gone) is deleted by the next one.
//!
//! Processes run inside a namespace with `ip netns exec NAME program …` ([`command_in`]); the
//! test itself reaches into one from a thread that joined it ([`wait_for_port_in`]).

use anyhow::{bail, Context};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The prefix of every namespace a lab creates.
const PREFIX: &str = "lgmh-";

/// Why network namespaces cannot be used here (not root, no `ip`, creating one refused), or
/// `None` when they can: the one reason a namespace test may skip.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces need root".into());
    }
    remove_stale_labs();
    let probe = format!("{PREFIX}{}-probe", std::process::id());
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Err(e) => Some(format!("cannot run `ip` (iproute2): {e}")),
        Ok(out) if !out.status.success() => Some(format!(
            "`ip netns add` is refused here: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            None
        }
    }
}

/// `ip ARGS`, an error with its stderr when it fails.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `program` run inside namespace `ns` (`ip netns exec`, which execs it: the child's pid is the
/// program's own).
pub fn command_in(ns: &str, program: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// Runs `f` on a thread that joined namespace `ns` (only that thread: `setns` with
/// `CLONE_NEWNET` moves the calling thread alone).
pub fn run_in<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let file = std::fs::File::open(Path::new("/run/netns").join(ns))
        .with_context(|| format!("network namespace {ns}"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                use std::os::fd::AsRawFd;
                // SAFETY: setns(2) on an open namespace file descriptor that outlives the call;
                // it changes only this (scoped, fresh) thread's network namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    bail!(
                        "cannot enter network namespace {ns}: {}",
                        std::io::Error::last_os_error()
                    );
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread in namespace {ns} panicked"))?
    })
}

/// Whether a TCP connection to `addr` from namespace `ns` succeeds within `timeout`.
pub fn reachable_from(ns: &str, addr: SocketAddr, timeout: Duration) -> anyhow::Result<bool> {
    run_in(ns, || TcpStream::connect_timeout(&addr, timeout).is_ok())
}

/// [`crate::wait_for_port`] from inside namespace `ns`.
pub fn wait_for_port_in(ns: &str, addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    run_in(ns, || crate::wait_for_port(addr, timeout))?
}

/// One host of a [`Lab`].
#[derive(Debug, Clone)]
pub struct Host {
    /// Its namespace's name.
    pub ns: String,
    /// Its address on the lab's network.
    pub ip: Ipv4Addr,
    /// Its port on the bridge, in the switch's namespace.
    port: String,
}

/// A switch and the hosts wired to it (module docs). Deleted on drop.
pub struct Lab {
    prefix: String,
    switch: String,
    /// Every namespace created (or being created), deleted on drop in reverse order.
    created: Vec<String>,
    hosts: usize,
}

impl Lab {
    /// A new lab with its switch; deletes the labs of earlier runs that were killed.
    pub fn new() -> anyhow::Result<Lab> {
        static LABS: AtomicUsize = AtomicUsize::new(0);
        remove_stale_labs();
        let prefix = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            switch: format!("{prefix}-sw"),
            prefix,
            created: Vec::new(),
            hosts: 0,
        };
        let sw = lab.switch.clone();
        lab.add_namespace(&sw)?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        Ok(lab)
    }

    fn add_namespace(&mut self, ns: &str) -> anyhow::Result<()> {
        // Recorded first: a failure half-way is still cleaned up.
        self.created.push(ns.to_string());
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])
    }

    /// A new host `name` (a short word) with the next address `10.77.0.<n>`, linked to the
    /// switch.
    pub fn add_host(&mut self, name: &str) -> anyhow::Result<Host> {
        self.hosts += 1;
        let n = u8::try_from(self.hosts).context("at most 250 hosts")?;
        anyhow::ensure!(n <= 250, "at most 250 hosts");
        let ns = format!("{}-{name}", self.prefix);
        self.add_namespace(&ns)?;
        let port = format!("p{n}");
        let host_ip = Ipv4Addr::new(10, 77, 0, n);
        ip(&[
            "-n",
            &self.switch,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ])?;
        ip(&["-n", &self.switch, "link", "set", &port, "master", "br0"])?;
        ip(&["-n", &self.switch, "link", "set", &port, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{host_ip}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        Ok(Host {
            ns,
            ip: host_ip,
            port,
        })
    }

    /// Cuts `host`'s cable: its switch port goes down (the host keeps its address; nothing
    /// reaches it and nothing leaves).
    pub fn cut(&self, host: &Host) -> anyhow::Result<()> {
        ip(&["-n", &self.switch, "link", "set", &host.port, "down"])
    }

    /// Plugs `host`'s cable back in.
    pub fn restore(&self, host: &Host) -> anyhow::Result<()> {
        ip(&["-n", &self.switch, "link", "set", &host.port, "up"])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it, and so their peers.
        for ns in self.created.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Deletes the namespaces of labs whose test process is gone (a run killed before its drop).
fn remove_stale_labs() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// Waits until `check` holds, every 100 ms, for at most `timeout`; the error names `what`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
