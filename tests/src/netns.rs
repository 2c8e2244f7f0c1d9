//! Hosts for end-to-end tests: Linux network namespaces with their own addresses, wired to one
//! bridge like machines to a switch, so that a controller and agents run as separate hosts and
//! a host's link can be cut and restored (`ip link set … down|up` on its switch port).
//!
//! Layout of a [`Lab`]: a namespace holding the bridge (the switch), and one namespace per host
//! with `lo` and `eth0` (a veth pair whose other end is the host's port on the bridge) holding
//! `10.77.0.<n>/24`. Nothing touches the machine's own namespace: the addresses exist only inside
//! the lab, so they cannot clash with the machine's. Names are random per lab
//! (`lgmh-<6 hex>-<host>`), and everything is deleted on drop, during a panic's unwinding too.
//!
//! A lab is alive exactly as long as its owner holds an `flock` on
//! `/run/loggate-netns/lgmh-<6 hex>.lock` (taken before its first namespace exists, released by
//! the kernel when the owner dies, however it dies). A lab whose lock can be taken, or whose
//! lock file is gone, was left behind by a killed run and is deleted by the next one; a live
//! lab is never touched, whatever PID namespace its owner runs in (pids are not compared).
//!
//! Processes run inside a namespace with `ip netns exec NAME program …` ([`command_in`]), with
//! `PR_SET_PDEATHSIG` = SIGKILL: when the test (the thread that started them) dies, so do they,
//! instead of running on for ever in a deleted namespace. The test itself reaches into one from
//! a thread that joined it ([`wait_for_port_in`]).
//!
//! `LOGGATE_REQUIRE_NETNS=1` (set by `cargo xtask test`, the CI path) turns "namespaces are
//! unavailable here", the one reason a namespace test may skip, into a failure.

use anyhow::{bail, Context};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The prefix of every namespace a lab creates.
const PREFIX: &str = "lgmh-";
/// Where the labs' liveness locks are (module docs).
const LOCKS: &str = "/run/loggate-netns";

/// Why network namespaces cannot be used here (not root, no `ip`, creating one refused), or
/// `None` when they can: the one reason a namespace test may skip. Panics instead when
/// `LOGGATE_REQUIRE_NETNS=1` (CI must not pass a test it skipped).
pub fn unavailable() -> Option<String> {
    let why = why_unavailable();
    if let Some(why) = &why {
        if std::env::var_os("LOGGATE_REQUIRE_NETNS").is_some_and(|v| v == "1") {
            panic!("LOGGATE_REQUIRE_NETNS=1, and network namespaces cannot be used here: {why}");
        }
    }
    why
}

fn why_unavailable() -> Option<String> {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces need root".into());
    }
    remove_stale_labs();
    // A lab of its own: the probe is cleaned up like any lab, and never collides with one.
    match LabLock::take() {
        Err(e) => Some(format!("cannot lock a lab under {LOCKS}: {e:#}")),
        Ok(lock) => {
            let probe = format!("{}-probe", lock.prefix);
            let answer = match Command::new("ip").args(["netns", "add", &probe]).output() {
                Err(e) => Some(format!("cannot run `ip` (iproute2): {e}")),
                Ok(out) if !out.status.success() => Some(format!(
                    "`ip netns add` is refused here: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Ok(_) => None,
            };
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            answer
        }
    }
}

/// A lab's liveness lock (module docs): its random name and the file whose `flock` it holds.
struct LabLock {
    /// `lgmh-<6 hex>`.
    prefix: String,
    path: PathBuf,
    _file: std::fs::File,
}

impl LabLock {
    /// A new random lab name, locked (a name whose lock file exists is drawn again).
    fn take() -> anyhow::Result<LabLock> {
        std::fs::create_dir_all(LOCKS).with_context(|| format!("cannot create {LOCKS}"))?;
        for _ in 0..16 {
            let prefix = format!("{PREFIX}{:06x}", rand::random::<u32>() & 0xff_ffff);
            let path = Path::new(LOCKS).join(format!("{prefix}.lock"));
            let file = match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()))
                }
            };
            // Blocking: a stale-lab sweep of another run may hold it for a moment.
            // SAFETY: flock(2) on a file descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("cannot lock {}", path.display()));
            }
            return Ok(LabLock {
                prefix,
                path,
                _file: file,
            });
        }
        bail!("16 random lab names were all taken under {LOCKS}")
    }
}

impl Drop for LabLock {
    fn drop(&mut self) {
        // Still held: no sweep can judge the lab stale while its namespaces are deleted.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// [`ip`], for methods whose parameter is named `ip`.
fn ip_cmd(args: &[&str]) -> anyhow::Result<()> {
    ip(args)
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
/// program's own). It is killed (SIGKILL) when the thread that spawns it ends, so spawn it from
/// the test's own thread: a killed test leaves no process behind in its namespaces.
pub fn command_in(ns: &str, program: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls only prctl(2) and
    // getppid(2), which are async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the prctl: no signal would come; do not start.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::other("the test process is gone"));
            }
            Ok(())
        });
    }
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
    /// Held until every namespace is deleted (fields drop after `Drop::drop` ran).
    _lock: LabLock,
    prefix: String,
    switch: String,
    /// Every namespace created (or being created), deleted on drop in reverse order.
    created: Vec<String>,
    hosts: usize,
}

impl Lab {
    /// A new lab with its switch; deletes the labs of earlier runs that were killed.
    pub fn new() -> anyhow::Result<Lab> {
        remove_stale_labs();
        let lock = LabLock::take()?;
        let prefix = lock.prefix.clone();
        let mut lab = Lab {
            _lock: lock,
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

    /// Gives `host` a further address `ip/24` on its link (one host reachable at two
    /// addresses).
    pub fn add_address(&self, host: &Host, ip: Ipv4Addr) -> anyhow::Result<()> {
        ip_cmd(&[
            "-n",
            &host.ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ])
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

/// Deletes the namespaces of labs nobody holds (module docs): a run killed before its drop.
fn remove_stale_labs() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(String::from)
        .collect();
    // A lab's name: the prefix and the word after it (`lgmh-<6 hex>`).
    let mut labs: Vec<&str> = names
        .iter()
        .filter_map(|n| {
            let word = n[PREFIX.len()..].split('-').next()?;
            n.get(..PREFIX.len() + word.len())
        })
        .collect();
    labs.sort_unstable();
    labs.dedup();
    for lab in labs {
        let path = Path::new(LOCKS).join(format!("{lab}.lock"));
        // Held by us while we delete: its owner cannot be starting it meanwhile.
        let _held = match std::fs::OpenOptions::new().write(true).open(&path) {
            Ok(file) => {
                // SAFETY: flock(2) on a file descriptor owned here.
                if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                    continue; // alive
                }
                Some(file)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(_) => continue, // cannot tell: leave it
        };
        for name in names.iter().filter(|n| n.starts_with(&format!("{lab}-"))) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn namespaces() -> String {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn a_lab_whose_owner_lives_is_kept_and_one_whose_owner_died_is_deleted() {
        if let Some(why) = unavailable() {
            eprintln!("SKIPPED: {why}");
            return;
        }
        // Another run's lab, owned by another process (as if in another PID namespace).
        let lab = format!("{PREFIX}{:06x}", rand::random::<u32>() & 0xff_ffff);
        let lock = Path::new(LOCKS).join(format!("{lab}.lock"));
        std::fs::write(&lock, b"").unwrap();
        // `-o`: the lock is held by flock itself, not by the `sleep` it runs.
        let mut owner = Command::new("flock")
            .arg("-o")
            .arg(&lock)
            .args(["sleep", "60"])
            .spawn()
            .unwrap();
        wait_until("the owner holds its lock", Duration::from_secs(10), || {
            let file = std::fs::File::open(&lock)?;
            // SAFETY: flock(2) on a file descriptor owned here; released when it closes.
            Ok(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0)
        })
        .unwrap();
        let ns = format!("{lab}-sw");
        ip(&["netns", "add", &ns]).unwrap();
        remove_stale_labs();
        let alive = namespaces().contains(&ns);
        let _ = owner.kill();
        let _ = owner.wait();
        remove_stale_labs();
        let after_death = namespaces().contains(&ns);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = std::fs::remove_file(&lock);
        assert!(alive, "a live lab was deleted");
        assert!(!after_death, "a dead run's lab was left behind");
    }

    #[test]
    fn a_process_started_in_a_namespace_dies_with_the_thread_that_started_it() {
        if let Some(why) = unavailable() {
            eprintln!("SKIPPED: {why}");
            return;
        }
        let mut lab = Lab::new().unwrap();
        let host = lab.add_host("h").unwrap();
        let pid = std::thread::scope(|s| {
            s.spawn(|| {
                command_in(&host.ns, Path::new("/bin/sleep"))
                    .arg("60")
                    .spawn()
                    .unwrap()
                    .id()
            })
            .join()
            .unwrap()
        });
        // Still this process's child (children belong to the process): reap it here.
        let gone = wait_until("the orphan dies", Duration::from_secs(10), || {
            let mut status = 0;
            // SAFETY: waitpid(2) on our own child's pid, WNOHANG: never blocks.
            let rc = unsafe {
                libc::waitpid(i32::try_from(pid).unwrap_or(-1), &mut status, libc::WNOHANG)
            };
            Ok(rc != 0)
        });
        assert!(
            gone.is_ok(),
            "the process in {} outlived its starter",
            host.ns
        );
    }
}
