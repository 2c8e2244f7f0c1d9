//! End-to-end: a multi-host read tries a transient connect failure once more (issue 13: under
//! load 20, 4 of 500 agents' connections failed at connect with "Broken pipe" although the
//! agents were up), and never retries a refusal of the grant. Agent flaky-1 is published in the
//! registry (`advertise`) at a proxy written here that resets every odd connection (accepted,
//! then closed with `SO_LINGER` 0: the client's handshake fails with a reset or a broken pipe)
//! and forwards every even one to the agent; the proxy counts the connections.

use loggate_tests::{text, Cluster};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Fleet {
    cluster: Cluster,
    logs: PathBuf,
    /// Connections the proxy in front of flaky-1 has accepted.
    accepted: Arc<AtomicUsize>,
}

/// Forwards every even connection on `listener` to `agent` and resets every odd one; at most
/// 64 connections, for the test's life.
fn flaky_proxy(listener: TcpListener, agent: SocketAddr, accepted: Arc<AtomicUsize>) {
    std::thread::spawn(move || {
        for conn in listener.incoming().take(64) {
            let Ok(client) = conn else { continue };
            let n = accepted.fetch_add(1, Ordering::SeqCst) + 1;
            if n % 2 == 1 {
                // RST instead of FIN: the client's TLS handshake fails in the transport.
                let _ = socket2_linger_zero(&client);
                drop(client);
                continue;
            }
            let Ok(upstream) = TcpStream::connect(agent) else {
                continue;
            };
            let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), upstream.try_clone()) else {
                continue;
            };
            let (mut c1, mut u1) = (client, upstream);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut u1);
                let _ = u1.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
}

/// `SO_LINGER` 0 on `stream`, so that closing it sends a reset.
fn socket2_linger_zero(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this thread owns, with a pointer to a live `linger` and
    // its exact size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::linger>()).unwrap_or(8),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn fleet() -> anyhow::Result<Fleet> {
    let mut cluster = Cluster::new(None)?;
    let pki = cluster.dir.join("pki");
    for id in ["flaky-1", "steady-1"] {
        let out = Command::new(cluster.bins.join("loggate"))
            .args(["pki", "issue"])
            .arg(&pki)
            .args(["--agent", id])
            .output()?;
        anyhow::ensure!(out.status.success(), "pki issue {id}: {:?}", text(&out));
    }
    let logs = cluster.dir.join("logs/app");
    std::fs::create_dir_all(&logs)?;
    for name in ["a.log", "b.log"] {
        let content: String = (0..50)
            .map(|i| format!("2026-11-27T08:00:{:02}Z INFO {name} line {i}\n", i % 60))
            .collect();
        std::fs::write(logs.join(name), content)?;
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let proxy = listener.local_addr()?;
    cluster.add_agent("flaky-1", &[&logs], &format!("advertise = \"{proxy}\""))?;
    cluster.add_agent("steady-1", &[&logs], "")?;
    let agent: SocketAddr = cluster.agent_addr("flaky-1").parse()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    flaky_proxy(listener, agent, Arc::clone(&accepted));
    cluster.start_controller()?;
    cluster.start_agent("flaky-1")?;
    cluster.start_agent("steady-1")?;
    // flaky-1 may read a.log only; steady-1 every log.
    cluster.grant(
        "alice",
        "flaky-1",
        &logs.join("a.log").display().to_string(),
        "30m",
    )?;
    cluster.grant(
        "alice",
        "steady-1",
        &format!("{}/*.log", logs.display()),
        "30m",
    )?;
    wait_registered(&cluster, 2)?;
    Ok(Fleet {
        cluster,
        logs,
        accepted,
    })
}

/// Waits until the controller's registry knows `count` agents with their addresses.
fn wait_registered(cluster: &Cluster, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = cluster.run_cli("admin", &["agent", "list", "--output", "json"])?;
        let known = text(&out)
            .0
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|a| a["addr"].as_str().is_some_and(|s| !s.is_empty()))
            .count();
        if known >= count {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "only {known} agents registered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_connection_reset_at_connect_is_tried_once_more_and_a_grant_refusal_never() -> anyhow::Result<()>
{
    let f = fleet()?;
    let a = f.logs.join("a.log").display().to_string();
    let out = f
        .cluster
        .cli("alice")
        .args(["logs", "cat", "--host", "flaky-1", "--host", "steady-1", &a])
        .output()?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for host in ["flaky-1", "steady-1"] {
        let prefix = format!("{host}: ");
        let lines = stdout.lines().filter(|l| l.starts_with(&prefix)).count();
        assert_eq!(lines, 50, "{host} not read whole: {stdout}");
    }
    // The reset connection and the one retry that went through: no more.
    assert_eq!(f.accepted.load(Ordering::SeqCst), 2);

    // b.log is not granted on flaky-1: its refusal is an answer of the agent, never retried
    // (the proxy sees the reset connection and one more, and the agent one denial).
    let b = f.logs.join("b.log").display().to_string();
    let out = f
        .cluster
        .cli("alice")
        .args(["logs", "cat", "--host", "flaky-1", "--host", "steady-1", &b])
        .output()?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains("loggate: flaky-1: access denied"),
        "{stderr}"
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("steady-1: "))
            .count(),
        50,
        "{stdout}"
    );
    assert_eq!(f.accepted.load(Ordering::SeqCst), 4);
    let denials = f
        .cluster
        .agent_audit("flaky-1")
        .into_iter()
        .filter(|e| e["event"] == "read.denied" && e["path"] == b.as_str())
        .count();
    assert_eq!(denials, 1, "the refused read was asked once");
    Ok(())
}
