//! A PostgreSQL server of a test's own, for the controller's PostgreSQL backend.
//!
//! [`TestPostgres::start`] runs Debian's `initdb` in a fresh scratch folder, starts `postgres`
//! listening only on a unix socket inside that folder (mode 0700: only its owner, and root, can
//! reach it; no TCP at all, so no other local user can connect), waits until it accepts
//! connections, and stops it (`pg_ctl stop -m fast`, then a kill) and removes the folder on
//! drop: no state is shared between tests. It trusts connections on that socket (TCP is
//! rejected in `pg_hba.conf` too) and runs without fsync (a test's data is thrown away). Its
//! URLs name the socket's folder, percent-encoded, as the host.
//!
//! PostgreSQL refuses to run as root: when the test runs as root, `initdb`, `postgres` and
//! `pg_ctl` run as the `postgres` user (Debian's package creates it), or `nobody`, through
//! `Command::uid`/`gid`, and the scratch folder is handed to that user.
//!
//! The binaries are looked for in `/usr/lib/postgresql/*/bin` (newest first), then on `PATH`;
//! `cargo xtask test` installs the `postgresql` package when they are missing. This file is also
//! compiled into the controller's unit tests (`#[path]`), so it uses only std, anyhow and
//! tempfile.

use anyhow::{bail, Context};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The database role and database every test server has.
pub const USER: &str = "loggate";

/// A running PostgreSQL server in a scratch folder; stopped and removed on drop.
pub struct TestPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    owner: Option<(u32, u32)>,
    server: Option<Child>,
    /// Whether commits wait for the disk (`fsync`, `synchronous_commit` on): a benchmark's
    /// server; a test's runs without (its data is thrown away).
    durable: bool,
}

/// The folder holding `initdb`, `postgres` and `pg_ctl`, if PostgreSQL is installed.
pub fn binaries() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
    })
}

/// The (uid, gid) to run PostgreSQL as when this process is root: `postgres`, else `nobody`.
fn unprivileged_owner() -> anyhow::Result<Option<(u32, u32)>> {
    let me = std::fs::metadata("/proc/self").context("cannot read /proc/self")?;
    use std::os::unix::fs::MetadataExt;
    if me.uid() != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("cannot read /etc/passwd")?;
    for wanted in ["postgres", "nobody"] {
        for line in passwd.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() >= 4 && fields[0] == wanted {
                if let (Ok(uid), Ok(gid)) = (fields[2].parse(), fields[3].parse()) {
                    return Ok(Some((uid, gid)));
                }
            }
        }
    }
    bail!("running as root and neither a postgres nor a nobody user exists to run PostgreSQL as")
}

/// A loopback port nothing listens on now: a number for the socket file that no other
/// server of this host uses.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl TestPostgres {
    /// Whether PostgreSQL is installed here (tests that need it fail with the fix otherwise).
    pub fn available() -> bool {
        binaries().is_some()
    }

    /// Initialises and starts a fresh server (see the module's doc).
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(None, false)
    }

    /// A fresh server whose scratch folder is made in `parent` (a benchmark's folder under
    /// `target/bench`) and whose commits wait for the disk as a production server's do
    /// (`fsync` and `synchronous_commit` left on); otherwise as [`TestPostgres::start`].
    pub fn start_durable_in(parent: &Path) -> anyhow::Result<Self> {
        Self::start_with(Some(parent), true)
    }

    fn start_with(parent: Option<&Path>, durable: bool) -> anyhow::Result<Self> {
        let bin = binaries().context(
            "PostgreSQL is not installed: apt-get install postgresql (cargo xtask test does it)",
        )?;
        let owner = unprivileged_owner()?;
        let mut scratch = tempfile::Builder::new();
        scratch.prefix("loggate-pg");
        let dir = match parent {
            Some(parent) => scratch.tempdir_in(parent)?,
            None => scratch.tempdir()?,
        };
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .context("cannot hand the scratch folder to the PostgreSQL user")?;
        }
        let mut server = Self {
            bin,
            dir,
            port: 0,
            owner,
            server: None,
            durable,
        };
        let init = server
            .command("initdb")
            .args([
                "-D",
                "data",
                "-U",
                USER,
                "--auth-local=trust",
                "--auth-host=reject",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .args(["--no-instructions", "--locale=C"])
            .output()
            .context("cannot run initdb")?;
        if !init.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&init.stderr).trim()
            );
        }
        // A port taken between the probe and the bind: try another.
        let mut last = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("PostgreSQL did not start")))
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.path().join("server.log"))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(self.dir.path().join("server.log"), Some(uid), Some(gid))?;
        }
        let mut postgres = self.command("postgres");
        postgres
            .args(["-D", "data", "-p", &self.port.to_string()])
            .args(["-c", "listen_addresses="])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ));
        if !self.durable {
            postgres.args(["-c", "fsync=off", "-c", "synchronous_commit=off"]);
            postgres.args(["-c", "full_page_writes=off"]);
        }
        let mut child = postgres
            .args(["-c", "max_connections=50"])
            // Light enough that the suite's parallel tests can each run one.
            .args(["-c", "shared_buffers=16MB"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start postgres")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "postgres exited ({status}): {}",
                    std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
                );
            }
            let ready = self
                .command("pg_isready")
                .args([
                    "-q",
                    "-h",
                    &self.socket_dir(),
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    USER,
                ])
                .status()?;
            if ready.success() {
                self.server = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("postgres did not accept connections within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port number of its socket (`.s.PGSQL.<port>` in [`TestPostgres::dir`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder of its unix socket, as text.
    fn socket_dir(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// The scratch folder (its `server.log` tells why a test's query failed).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A URL of the `postgres` database (made by initdb) as [`USER`].
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// A URL of database `name` on this server.
    pub fn url_of(&self, name: &str) -> String {
        // The socket's folder as the host, percent-encoded.
        let host: String = self
            .socket_dir()
            .bytes()
            .map(|b| match b {
                b if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_') => {
                    char::from(b).to_string()
                }
                b => format!("%{b:02X}"),
            })
            .collect();
        format!("postgres://{USER}@{host}:{}/{name}", self.port)
    }

    /// Runs SQL with `psql` (for what a test does around the controller: e.g. a schema version
    /// from the future). Fails with psql's message.
    pub fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let out = self
            .command("psql")
            .args([
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                &self.socket_dir(),
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                database,
                "-c",
                sql,
            ])
            .output()
            .context("cannot run psql")?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(self.url_of(name))
    }

    /// Stops the server (fast shutdown: open connections are cut) and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.server.take() else {
            return;
        };
        let stopped = self
            .command("pg_ctl")
            .args(["stop", "-D", "data", "-m", "fast", "-w", "-t", "20"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !stopped {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// Starts the server again on the same port and data (a database restart under load).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch()
    }

    /// Starts a server [`TestPostgres::stop`]ped before, on the same port and data (the end of
    /// an outage a test made last a while).
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.server.is_none(),
            "the test PostgreSQL is still running"
        );
        self.launch()
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
