//! End-to-end: unfinished TLS handshakes cannot lock anyone out of the agent or the controller,
//! and the limits on them do not throttle a real fleet (issue 10, finding 5).
//!
//! Every source address is on loopback: 127.0.0.1 is the "bastion" shared by the attacker and
//! the legitimate user, and 127.0.1.1 … 127.0.100.1 are 100 other addresses in 100 different
//! /24 prefixes (the accept loop counts per /24, so 127.0.0.x would all be one prefix). Linux
//! routes all of 127.0.0.0/8 to `lo`, so binding them needs no set-up.

use loggate_tests::{text, Fixture};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// The legitimate client must get through within this long while the flood is held open.
const LEGIT_WITHIN: Duration = Duration::from_secs(2);
/// Connections per kind of attack (idle; one byte then silent; from 100 other prefixes).
const PER_KIND: usize = 1000;
/// Bounds of the churn that keeps the flood at full strength while the legitimate client runs.
const CHURN_MAX_CONNECTIONS: usize = 20_000;
const CHURN_MAX_TIME: Duration = Duration::from_secs(30);

/// The flood needs thousands of sockets in this process (and the daemons, started by it, inherit
/// the raised limit as their hard limit; they raise their own soft limit themselves).
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the `rlimit` we own, by a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// One attacking connection from `source`: idle, or one byte of a TLS record header and then
/// silence. `None` when the connection could not be made (counted by the caller).
async fn attack_one(source: IpAddr, target: SocketAddr, one_byte: bool) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(source, 0)).ok()?;
    let mut stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(target))
        .await
        .ok()?
        .ok()?;
    if one_byte {
        stream.write_all(&[0x16]).await.ok()?;
    }
    Some(stream)
}

fn bastion() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// 100 addresses in 100 /24 prefixes other than the bastion's.
fn other_prefixes() -> Vec<IpAddr> {
    (1..=100u8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, i, 1)))
        .collect()
}

/// The `n`th attacking connection's source and kind: in turn idle from the bastion, one byte
/// from the bastion, and alternately idle or one byte from one of the 100 other prefixes.
fn nth_attack(n: usize, others: &[IpAddr]) -> (IpAddr, bool) {
    match n % 3 {
        0 => (bastion(), false),
        1 => (bastion(), true),
        _ => (others[(n / 3) % others.len()], (n / 3).is_multiple_of(2)),
    }
}

/// Holds `3 × PER_KIND` attacking connections open against `target`; then, until `stop` is set
/// (or a bound is reached), keeps opening new ones in the same mix, closing the oldest of its
/// own to stay at that number, so the server's pool stays full while the legitimate client runs.
/// Returns how many were opened and how many could not be.
async fn flood(
    target: SocketAddr,
    ready: tokio::sync::oneshot::Sender<()>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (usize, usize) {
    let others = other_prefixes();
    let mut held = std::collections::VecDeque::new();
    let (mut opened, mut failed) = (0usize, 0usize);
    let opening = Instant::now();
    for n in 0..3 * PER_KIND {
        if opening.elapsed() > CHURN_MAX_TIME {
            break;
        }
        let (source, one_byte) = nth_attack(n, &others);
        match attack_one(source, target, one_byte).await {
            Some(stream) => {
                held.push_back(stream);
                opened += 1;
            }
            None => failed += 1,
        }
    }
    let _ = ready.send(());
    let started = Instant::now();
    let before_churn = opened;
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed)
        && n < CHURN_MAX_CONNECTIONS
        && started.elapsed() < CHURN_MAX_TIME
    {
        let (source, one_byte) = nth_attack(n, &others);
        n += 1;
        match attack_one(source, target, one_byte).await {
            Some(stream) => {
                held.push_back(stream);
                opened += 1;
            }
            None => failed += 1,
        }
        if held.len() > 3 * PER_KIND {
            held.pop_front();
        }
    }
    eprintln!(
        "{target}: {} connections opened by the churn in {:?}",
        opened - before_churn,
        started.elapsed()
    );
    (opened, failed)
}

/// The `tls.refused` summary of evictions written by `audit` (re-read until `timeout`).
fn wait_for_eviction_summary(
    audit: impl Fn() -> Vec<serde_json::Value>,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(summary) = audit()
            .into_iter()
            .find(|e| e["event"] == "tls.refused" && e["reason_code"] == "evicted")
        {
            return Ok(summary);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no eviction summary within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_legitimate_client_gets_through_while_thousands_of_idle_and_slow_connections_are_held(
) -> anyhow::Result<()> {
    raise_open_file_limit();
    let f = tokio::task::spawn_blocking(|| -> anyhow::Result<Fixture> {
        let f = Fixture::start()?;
        f.grant("alice", "30m")?;
        Ok(f)
    })
    .await??;
    let agent: SocketAddr = f.cluster.agent_addr("web-1").parse()?;
    let controller = f.cluster.controller_addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (agent_ready, agent_flooded) = tokio::sync::oneshot::channel();
    let (controller_ready, controller_flooded) = tokio::sync::oneshot::channel();
    let agent_flood = tokio::spawn(flood(agent, agent_ready, stop.clone()));
    let controller_flood = tokio::spawn(flood(controller, controller_ready, stop.clone()));
    agent_flooded.await?;
    controller_flooded.await?;

    // Both daemons now face 3,000 held connections each, and new ones keep coming; the user
    // reads from the attacker's own address.
    let f = std::sync::Arc::new(f);
    let checks = tokio::task::spawn_blocking({
        let f = f.clone();
        move || -> anyhow::Result<(Duration, Duration)> {
            let started = Instant::now();
            let out = f.logs("alice", &["cat", &f.api_log()])?;
            let read = started.elapsed();
            let (stdout, stderr) = text(&out);
            anyhow::ensure!(
                out.status.success() && stdout.contains("INFO line 49"),
                "the read failed under the flood ({:?}): {stderr}",
                out.status
            );
            let started = Instant::now();
            let out = f.cluster.run_cli("admin", &["grant", "list"])?;
            let list = started.elapsed();
            anyhow::ensure!(
                out.status.success(),
                "grant list failed under the flood ({:?}): {}",
                out.status,
                text(&out).1
            );
            Ok((read, list))
        }
    })
    .await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (agent_opened, agent_failed) = agent_flood.await?;
    let (controller_opened, controller_failed) = controller_flood.await?;
    eprintln!(
        "flood: agent {agent_opened} connections opened ({agent_failed} failed), controller \
         {controller_opened} ({controller_failed} failed)"
    );
    let (read, list) = checks?;
    eprintln!("under the flood: logs cat took {read:?}, grant list took {list:?}");
    assert!(read < LEGIT_WITHIN, "logs cat took {read:?}");
    assert!(list < LEGIT_WITHIN, "grant list took {list:?}");
    assert!(
        agent_opened >= 3 * PER_KIND && controller_opened >= 3 * PER_KIND,
        "the flood was not held: agent {agent_opened}, controller {controller_opened}"
    );

    // The pools were full (the user got in by evicting), and the evictions are summarised.
    let summary = tokio::task::spawn_blocking({
        let f = f.clone();
        move || {
            let agent = wait_for_eviction_summary(
                || f.cluster.agent_audit("web-1"),
                Duration::from_secs(15),
            )?;
            let controller = wait_for_eviction_summary(
                || {
                    f.cluster
                        .controller_audit()
                        .iter()
                        .map(loggate_tests::flat_audit_record)
                        .collect()
                },
                Duration::from_secs(15),
            )?;
            anyhow::Ok((agent, controller))
        }
    })
    .await??;
    for (who, record) in [("agent", &summary.0), ("controller", &summary.1)] {
        eprintln!("{who}: {}", record["reason"]);
        assert!(record["peer"].is_null(), "{record}");
        assert!(
            record["suppressed_before"].as_u64().unwrap_or(0) >= 1,
            "{who}: {record}"
        );
        assert!(
            record["reason"]
                .as_str()
                .is_some_and(|r| r.contains("closed to make room")),
            "{who}: {record}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_hundred_clients_from_one_address_and_an_admin_all_get_through_at_once(
) -> anyhow::Result<()> {
    raise_open_file_limit();
    let f = std::sync::Arc::new(tokio::task::spawn_blocking(Fixture::start).await??);
    let pki = f.cluster.dir.join("pki");
    let files = loggate_core::tls::TlsFiles {
        ca: pki.join("ca.crt"),
        cert: pki.join("users/admin.crt"),
        key: pki.join("users/admin.key"),
    };
    let addr = f.cluster.controller_addr.to_string();
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..400 {
        let endpoint = files
            .endpoint(&addr, loggate_core::tls::Server::Controller)?
            .connect_timeout(Duration::from_secs(20))
            .timeout(Duration::from_secs(20));
        clients.spawn(async move {
            // One attempt each: a refused handshake is a failure, not something to retry.
            let started = Instant::now();
            let channel = endpoint.connect().await?;
            let connected = started.elapsed();
            let mut client = loggate_proto::controller_client::ControllerClient::new(channel);
            client
                .who_am_i(loggate_proto::WhoAmIRequest::default())
                .await?;
            anyhow::Ok(connected)
        });
    }
    // The admin's own command, from the same address, in the middle of the burst.
    let admin = tokio::task::spawn_blocking({
        let f = f.clone();
        move || {
            f.cluster
                .issue_grant("alice", "web-1", &f.glob(), "10m")
                .map_err(|e| anyhow::anyhow!("{e:#}"))
        }
    });
    let (mut ok, mut failures, mut slowest) = (0usize, Vec::new(), Duration::ZERO);
    let bound = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(joined) = clients.join_next().await {
            match joined {
                Ok(Ok(connected)) => {
                    ok += 1;
                    slowest = slowest.max(connected);
                }
                Ok(Err(e)) => failures.push(format!("{e:#}")),
                Err(e) => failures.push(e.to_string()),
            }
        }
    })
    .await;
    let took = started.elapsed();
    let admin = admin.await?;
    eprintln!(
        "400 clients from one address: {ok} succeeded in {took:?} (slowest connect {slowest:?})"
    );
    assert!(bound.is_ok(), "the burst did not finish within 60 s");
    assert_eq!(
        ok,
        400,
        "{} of 400 failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    assert!(admin.is_ok(), "the admin's grant issue failed: {admin:?}");
    Ok(())
}
