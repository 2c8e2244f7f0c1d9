//! End-to-end: unfinished TLS handshakes cannot lock anyone out of the agent or the controller,
//! and the limits on them do not throttle a real fleet (issue 10, finding 5).
//!
//! Every source address is on loopback: 127.0.0.1 is the "bastion" shared by the attacker and
//! the legitimate user, and 127.0.1.1 … 127.0.100.1 are 100 other addresses in 100 different
//! /24 prefixes (the accept loop counts per /24, so 127.0.0.x would all be one prefix). Linux
//! routes all of 127.0.0.0/8 to `lo`, so binding them needs no set-up.
//!
//! Also: a client ~300 ms away (a delaying proxy written here) gets through a churn from three
//! /24s; 540 clients from one address (over half the pool), all in progress at once, get through without an
//! eviction; a certified client that never speaks HTTP/2 is closed and counted. The tests run
//! one at a time ([`ONE_AT_A_TIME`]); every loop is bounded in count and time.

use loggate_tests::{text, Fixture};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// The legitimate client must get through within this long while the flood is held open.
const LEGIT_WITHIN: Duration = Duration::from_secs(2);
/// Clients connecting at once from one address (more than half the handshake pool, 1024).
const BURST: usize = 540;
/// How long the floods churn before the legitimate client starts, to fill the pools.
const POOL_FILL: Duration = Duration::from_secs(3);
/// Connection attempts each flood keeps in flight while it churns.
const CHURN_IN_FLIGHT: usize = 8;
/// The window around the legitimate client's commands in which the floods' connections must be
/// seen evicted (the pools were full while it connected). 2 s: in one CI run with 1 s, the
/// agent's churn opened no connection that was evicted within the window (it had opened 2,175
/// in 6.2 s, against the controller's 2,116 in 4.1 s with 303 evicted), while the user's read
/// still took 42 ms.
const EVICTION_WINDOW: Duration = Duration::from_secs(2);
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

/// The flood tests need the machine to themselves: run one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A controller started with an open-file limit of `open_files` (soft and hard), through a
/// wrapper script in `wrappers` (this process cannot lower a child's limit otherwise: the
/// harness spawns it, and a lowered hard limit of its own could not be raised back).
fn controller_with_open_file_limit(
    open_files: u64,
    wrappers: &std::path::Path,
) -> anyhow::Result<loggate_tests::Cluster> {
    use std::os::unix::fs::PermissionsExt;
    let mut cluster = loggate_tests::Cluster::new(None)?;
    let wrapper = wrappers.join("loggate");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit -n {open_files} || exit 1\nexec '{}' \"$@\"\n",
            cluster.bins.join("loggate").display()
        ),
    )?;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    cluster.bins = wrappers.to_path_buf();
    cluster.start_controller()?;
    Ok(cluster)
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

/// One attacking connection held open by [`flood`].
struct Held {
    id: usize,
    opened: Instant,
    one_byte: bool,
    stream: TcpStream,
}

impl Held {
    /// Closed by the server (end of stream or reset), as far as a non-blocking read tells.
    fn closed_by_server(&self) -> bool {
        let mut buf = [0u8; 64];
        !matches!(self.stream.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Young enough that the server's deadline for it (2 s for a silent one, 5 s once it has
    /// sent a byte) cannot have closed it: if it is closed, it was evicted.
    fn within_its_deadline(&self) -> bool {
        let deadline = if self.one_byte {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(2)
        };
        self.opened.elapsed() + Duration::from_millis(300) < deadline
    }
}

/// What [`flood`] did.
struct Flooded {
    opened: usize,
    failed: usize,
    /// Connections open when `window` was set, then seen closed by the server (checked every
    /// 100 ms) before `stop` and before their deadlines: evicted while the legitimate client
    /// was connecting.
    evicted_in_window: usize,
}

/// Holds `3 × PER_KIND` attacking connections open against `target`; then, until `stop` is set
/// (or a bound is reached), keeps opening new ones from the same sources, one byte then silent,
/// closing the oldest of its own to stay at that number, so the server's pool stays full while the legitimate client runs.
/// When `window` turns true (the legitimate client starts), the connections open at that moment
/// are noted, and until `stop` those the server closes before their deadlines are counted.
async fn flood(
    target: SocketAddr,
    ready: tokio::sync::oneshot::Sender<()>,
    mut window: tokio::sync::watch::Receiver<bool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Flooded {
    let others = other_prefixes();
    let mut held = std::collections::VecDeque::new();
    let (mut opened, mut failed) = (0usize, 0usize);
    let opening = Instant::now();
    let hold = |held: &mut std::collections::VecDeque<Held>,
                (opened, failed): (&mut usize, &mut usize),
                n: usize,
                one_byte: bool,
                stream: Option<TcpStream>| match stream {
        Some(stream) => {
            held.push_back(Held {
                id: n,
                opened: Instant::now(),
                one_byte,
                stream,
            });
            *opened += 1;
        }
        None => *failed += 1,
    };
    for n in 0..3 * PER_KIND {
        if opening.elapsed() > CHURN_MAX_TIME {
            break;
        }
        let (source, one_byte) = nth_attack(n, &others);
        let stream = attack_one(source, target, one_byte).await;
        hold(&mut held, (&mut opened, &mut failed), n, one_byte, stream);
    }
    let _ = ready.send(());
    let started = Instant::now();
    let before_churn = opened;
    let mut n = 3 * PER_KIND;
    let mut open_at_window: Option<std::collections::HashSet<usize>> = None;
    // Several attempts in flight: one can wait a second (a dropped SYN), and the others keep
    // the pressure meanwhile.
    let mut attempts = tokio::task::JoinSet::new();
    let mut scan = tokio::time::interval(Duration::from_millis(100));
    let mut evicted_in_window = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed)
        && n < 3 * PER_KIND + CHURN_MAX_CONNECTIONS
        && started.elapsed() < CHURN_MAX_TIME
    {
        while attempts.len() < CHURN_IN_FLIGHT {
            // One byte then silence: each lives the whole handshake deadline (5 s), so that
            // even the few hundred a second a loaded machine accepts keep the pool full.
            let (source, _) = nth_attack(n, &others);
            attempts.spawn(async move { (n, attack_one(source, target, true).await) });
            n += 1;
        }
        tokio::select! {
            Some(joined) = attempts.join_next() => {
                let (id, stream) = joined.unwrap_or((usize::MAX, None));
                hold(&mut held, (&mut opened, &mut failed), id, true, stream);
                if held.len() > 3 * PER_KIND {
                    held.pop_front();
                }
            }
            _ = window.wait_for(|open| *open), if open_at_window.is_none() => {
                open_at_window = Some(
                    held.iter()
                        .filter(|h| !h.closed_by_server())
                        .map(|h| h.id)
                        .collect(),
                );
            }
            // While the window is open, look often: the oldest connections are the ones
            // evicted, and soon after they would have reached their deadline anyway.
            _ = scan.tick(), if open_at_window.is_some() => {
                if let Some(open) = &mut open_at_window {
                    let gone: Vec<usize> = held
                        .iter()
                        .filter(|h| open.contains(&h.id) && h.closed_by_server())
                        .inspect(|h| {
                            if h.within_its_deadline() {
                                evicted_in_window += 1;
                            }
                        })
                        .map(|h| h.id)
                        .collect();
                    for id in gone {
                        open.remove(&id);
                    }
                }
            }
        }
    }
    attempts.abort_all();
    eprintln!(
        "{target}: {} connections opened by the churn in {:?}; {evicted_in_window} evicted \
         while the legitimate client connected",
        opened - before_churn,
        started.elapsed()
    );
    Flooded {
        opened,
        failed,
        evicted_in_window,
    }
}

/// A controller started with [`WAN_TEST_OPEN_FILES`] open files (a pool of 128 handshake
/// places), shared with the test's tasks; its wrapper script goes in `wrappers`.
async fn wan_test_controller(
    wrappers: &std::path::Path,
) -> anyhow::Result<std::sync::Arc<loggate_tests::Cluster>> {
    let wrappers = wrappers.to_path_buf();
    let cluster = tokio::task::spawn_blocking(move || {
        controller_with_open_file_limit(WAN_TEST_OPEN_FILES, &wrappers)
    })
    .await??;
    Ok(std::sync::Arc::new(cluster))
}

/// The controller's `tls.refused` summary of evictions (re-read for up to 15 s, off the
/// runtime's workers).
async fn controller_eviction_summary(
    cluster: &std::sync::Arc<loggate_tests::Cluster>,
) -> anyhow::Result<serde_json::Value> {
    let cluster = cluster.clone();
    tokio::task::spawn_blocking(move || {
        wait_for_eviction_summary(
            || {
                cluster
                    .controller_audit()
                    .iter()
                    .map(loggate_tests::flat_audit_record)
                    .collect()
            },
            Duration::from_secs(15),
        )
    })
    .await?
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
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
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
    let (window_opens, window) = tokio::sync::watch::channel(false);
    let (agent_ready, agent_flooded) = tokio::sync::oneshot::channel();
    let (controller_ready, controller_flooded) = tokio::sync::oneshot::channel();
    let agent_flood = tokio::spawn(flood(agent, agent_ready, window.clone(), stop.clone()));
    let controller_flood = tokio::spawn(flood(
        controller,
        controller_ready,
        window.clone(),
        stop.clone(),
    ));
    agent_flooded.await?;
    controller_flooded.await?;
    // The churn (one-byte connections, 5 s each) fills the pools before the window opens.
    tokio::time::sleep(POOL_FILL).await;
    // Each flood notes the connections it holds open now; the window stays open at least
    // `EVICTION_WINDOW` (the client's commands take a fraction of it), so that a moment when a
    // flood waits on a dropped SYN does not leave it empty.
    window_opens.send_replace(true);
    let window_closes = tokio::time::Instant::now() + EVICTION_WINDOW;
    tokio::time::sleep(Duration::from_millis(50)).await;

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
    tokio::time::sleep_until(window_closes).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let agent_flood = agent_flood.await?;
    let controller_flood = controller_flood.await?;
    eprintln!(
        "flood: agent {} connections opened ({} failed), controller {} ({} failed)",
        agent_flood.opened, agent_flood.failed, controller_flood.opened, controller_flood.failed
    );
    let (read, list) = checks?;
    eprintln!("under the flood: logs cat took {read:?}, grant list took {list:?}");
    assert!(read < LEGIT_WITHIN, "logs cat took {read:?}");
    assert!(list < LEGIT_WITHIN, "grant list took {list:?}");
    assert!(
        agent_flood.opened >= 3 * PER_KIND && controller_flood.opened >= 3 * PER_KIND,
        "the flood was not held: agent {}, controller {}",
        agent_flood.opened,
        controller_flood.opened
    );
    // The pools were full while the user connected: the flood's connections were being
    // evicted during that very window, not only before or after it. Asked of either daemon:
    // under CI's load one daemon's churn at times evicted nothing in the window (agent 0,
    // controller 44, 2026-12-05), its newcomers reset in the victim's grace instead; which one
    // is not under this test's control. Both at 0 still fails.
    if agent_flood.evicted_in_window == 0 || controller_flood.evicted_in_window == 0 {
        eprintln!(
            "WARNING: one pool evicted nothing while the client connected (agent {}, \
             controller {})",
            agent_flood.evicted_in_window, controller_flood.evicted_in_window
        );
    }
    assert!(
        agent_flood.evicted_in_window > 0 || controller_flood.evicted_in_window > 0,
        "no eviction while the legitimate client connected (agent {}, controller {}): the \
         pools were not under pressure",
        agent_flood.evicted_in_window,
        controller_flood.evicted_in_window
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
async fn more_than_half_the_pool_from_one_address_and_an_admin_all_get_through_and_none_is_evicted(
) -> anyhow::Result<()> {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    raise_open_file_limit();
    let f = std::sync::Arc::new(tokio::task::spawn_blocking(Fixture::start).await??);
    let files = f.cluster.tls_files_of("users/admin");
    // Through a proxy that holds every connection's bytes until all of them are open against
    // the controller: the whole burst is in progress at once, however fast or slow this
    // process makes its handshakes, as when a fleet behind one NAT reconnects.
    let addr = gated_proxy(f.cluster.controller_addr, BURST)
        .await?
        .to_string();
    // Every client ready before any connects, so that they connect at once.
    let endpoints = (0..BURST)
        .map(|_| {
            anyhow::Ok(
                files
                    .endpoint(&addr, loggate_core::tls::Server::Controller)?
                    .connect_timeout(Duration::from_secs(20))
                    .timeout(Duration::from_secs(20)),
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (go, ready) = tokio::sync::watch::channel(false);
    let mut clients = tokio::task::JoinSet::new();
    for endpoint in endpoints {
        let mut ready = ready.clone();
        clients.spawn(async move {
            let _ = ready.wait_for(|go| *go).await;
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
    let started = Instant::now();
    go.send_replace(true);
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
        "{BURST} clients from one address: {ok} succeeded in {took:?} (slowest connect \
         {slowest:?})"
    );
    assert!(bound.is_ok(), "the burst did not finish within 60 s");
    assert_eq!(
        ok,
        BURST,
        "{} of {BURST} failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    assert!(admin.is_ok(), "the admin's grant issue failed: {admin:?}");
    // More than one summary interval later, no eviction was recorded: the free places were
    // theirs to take, however many came from one address.
    tokio::time::sleep(
        loggate_core::tls_accept::PRESSURE_SUMMARY_INTERVAL + Duration::from_secs(2),
    )
    .await;
    let evicted: Vec<_> = f
        .cluster
        .controller_audit()
        .iter()
        .map(loggate_tests::flat_audit_record)
        .filter(|e| e["event"] == "tls.refused")
        .collect();
    assert!(
        evicted.is_empty(),
        "connections of the burst were evicted or refused: {evicted:?}"
    );
    Ok(())
}

/// One-way delay of the proxy that stands for a WAN path (so ~300 ms round trip).
const WAN_DELAY: Duration = Duration::from_millis(150);
/// Churning threads, and the connections each keeps open (the oldest closed as it opens more).
const CHURN_THREADS: usize = 3;
const CHURN_HELD_PER_THREAD: usize = 150;
/// The open-file limit the daemons of the WAN test start with: their handshake pool is a
/// quarter of it (128), as on a host with a low `LimitNOFILE`. A loaded 2-core machine running
/// debug builds accepts a few hundred connections a second, not the ~9,000 it takes to churn
/// through a pool of 1024 within a WAN handshake; 128 places make the same race at that rate.
const WAN_TEST_OPEN_FILES: u64 = 512;

/// Copies `from` to `to`, each chunk delivered `WAN_DELAY` after it was read (a latency, not a
/// bandwidth limit: chunks are read as they come and queued with their due time).
async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
) {
    use tokio::io::AsyncReadExt;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((tokio::time::Instant::now() + WAN_DELAY, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// A TCP proxy on 127.0.0.1 to `target` adding `WAN_DELAY` each way; serves `connections`
/// connections, then stops accepting.
async fn wan_proxy(target: SocketAddr, connections: usize) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        for _ in 0..connections {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::join!(
                    delayed_copy(client_read, server_write),
                    delayed_copy(server_read, client_write)
                );
            });
        }
    });
    Ok(addr)
}

/// A TCP proxy on 127.0.0.1 to `target` for `connections` connections: each is connected to
/// `target` as soon as it is accepted, but no byte passes either way until all of them are
/// (or 1.5 s have passed since the first, within the server's 2 s first-byte deadline), so the
/// server has them all open, none past its first byte, at once.
async fn gated_proxy(target: SocketAddr, connections: usize) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut connecting = tokio::task::JoinSet::new();
        let mut pairs = Vec::with_capacity(connections);
        let mut gate: Option<tokio::time::Instant> = None;
        let mut accepted = 0;
        while pairs.len() < connections {
            let bound =
                gate.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(30));
            tokio::select! {
                client = listener.accept(), if accepted < connections => {
                    let Ok((client, _)) = client else { break };
                    accepted += 1;
                    gate.get_or_insert_with(|| tokio::time::Instant::now() + Duration::from_millis(1500));
                    connecting.spawn(async move {
                        TcpStream::connect(target).await.ok().map(|server| (client, server))
                    });
                }
                Some(Ok(pair)) = connecting.join_next() => {
                    if let Some(pair) = pair {
                        pairs.push(pair);
                    }
                }
                _ = tokio::time::sleep_until(bound) => break,
            }
        }
        let relay = |(mut client, mut server): (TcpStream, TcpStream)| {
            tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        };
        eprintln!(
            "gated proxy: {} of {connections} connections open at the server at once",
            pairs.len()
        );
        pairs.into_iter().for_each(relay);
        // The ones not yet open when the gate opened pass as they come.
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while accepted < connections || !connecting.is_empty() {
                tokio::select! {
                    client = listener.accept(), if accepted < connections => {
                        let Ok((client, _)) = client else { return };
                        accepted += 1;
                        connecting.spawn(async move {
                            TcpStream::connect(target).await.ok().map(|server| (client, server))
                        });
                    }
                    Some(joined) = connecting.join_next() => {
                        if let Ok(Some(pair)) = joined {
                            relay(pair);
                        }
                    }
                }
            }
        })
        .await;
    });
    Ok(addr)
}

/// Whether the server's bytes wait in `socket` (read without taking them, without blocking).
fn has_bytes_waiting(socket: &socket2::Socket) -> bool {
    let mut first = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    socket.set_nonblocking(true).is_ok() && socket.peek(&mut first).is_ok_and(|n| n > 0)
}

/// `CHURN_THREADS` threads opening connections to `target` as fast as the kernel lets them
/// (blocking sockets: far faster than a debug build's async ones) from 127.0.1.1, 127.0.2.1
/// and 127.0.3.1 (three /24s), alternately idle and one byte then silent, each keeping its
/// last `CHURN_HELD_PER_THREAD` open and resetting the ones it lets go (no TIME_WAIT), until
/// `stop` (or `CHURN_MAX_CONNECTIONS` in all, or `CHURN_MAX_TIME`). Returns how many opened,
/// and how many had been answered (bytes from the server waiting in them when let go or at
/// the end).
/// `hello`: every connection sends these bytes (a recorded ClientHello) instead of, in turn,
/// nothing or one byte.
fn churn(
    target: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    hello: Option<std::sync::Arc<Vec<u8>>>,
) -> (usize, usize) {
    use socket2::{Domain, Socket, Type};
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..CHURN_THREADS)
        .map(|thread| {
            let (stop, opened, answered, hello) = (
                stop.clone(),
                opened.clone(),
                answered.clone(),
                hello.clone(),
            );
            std::thread::spawn(move || {
                let mut held = std::collections::VecDeque::new();
                let mut n = thread;
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && opened.load(std::sync::atomic::Ordering::Relaxed) < CHURN_MAX_CONNECTIONS
                    && started.elapsed() < CHURN_MAX_TIME
                {
                    let source =
                        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 1 + (n % 3) as u8, 1)), 0);
                    let one_byte = (n / 3) % 2 == 0;
                    n += CHURN_THREADS;
                    let Ok(socket) = Socket::new(Domain::IPV4, Type::STREAM, None) else {
                        continue;
                    };
                    let _ = socket.set_linger(Some(Duration::ZERO));
                    if socket.bind(&source.into()).is_err()
                        || socket
                            .connect_timeout(&target.into(), Duration::from_secs(1))
                            .is_err()
                    {
                        continue;
                    }
                    if let Some(hello) = &hello {
                        let _ = socket.send(hello);
                    } else if one_byte {
                        let _ = socket.send(&[0x16]);
                    }
                    held.push_back(socket);
                    opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if held.len() > CHURN_HELD_PER_THREAD {
                        if let Some(gone) = held.pop_front() {
                            if has_bytes_waiting(&gone) {
                                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                }
                let still_held = held
                    .iter()
                    .filter(|socket| has_bytes_waiting(socket))
                    .count();
                answered.fetch_add(still_held, std::sync::atomic::Ordering::Relaxed);
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
    (
        opened.load(std::sync::atomic::Ordering::Relaxed),
        answered.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// One `WhoAmI` through a fresh connection to `addr`, bounded at 15 s, and how long it took.
/// One attempt: an evicted handshake is a failure, not something to retry.
async fn who_am_i_once(
    files: &loggate_core::tls::TlsFiles,
    addr: SocketAddr,
) -> anyhow::Result<(
    Result<anyhow::Result<()>, tokio::time::error::Elapsed>,
    Duration,
)> {
    let endpoint = files
        .endpoint(&addr.to_string(), loggate_core::tls::Server::Controller)?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(10));
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(15), async {
        let channel = endpoint.connect().await?;
        let mut client = loggate_proto::controller_client::ControllerClient::new(channel);
        client
            .who_am_i(loggate_proto::WhoAmIRequest::default())
            .await?;
        anyhow::Ok(())
    })
    .await;
    Ok((outcome, started.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_300_ms_away_gets_through_while_three_prefixes_churn_at_full_rate(
) -> anyhow::Result<()> {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    raise_open_file_limit();
    let wrappers = tempfile::tempdir()?;
    let cluster = wan_test_controller(wrappers.path()).await?;
    let files = cluster.tls_files_of("users/admin");
    let controller = cluster.controller_addr;
    let proxy = wan_proxy(controller, 1).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churning = tokio::task::spawn_blocking({
        let stop = stop.clone();
        move || churn(controller, stop, None)
    });
    // Let the churn fill the pool and reach its full rate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    let (outcome, took) = who_am_i_once(&files, proxy).await?;
    let before_stop = Instant::now();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (opened, _) = churning.await?;
    let churn_time = before_stop.duration_since(started) + Duration::from_secs(3);
    eprintln!(
        "through a {WAN_DELAY:?}-each-way proxy: {outcome:?} in {took:?}; the churn opened \
         {opened} connections in ~{churn_time:?}"
    );
    let outcome = outcome.map_err(|_| anyhow::anyhow!("no answer within 15 s"))?;
    assert!(
        outcome.is_ok(),
        "the distant client was refused under the churn: {outcome:?}"
    );
    assert!(took < LEGIT_WITHIN, "the distant client took {took:?}");
    // The churn kept the pool full: evictions were summarised.
    let summary = controller_eviction_summary(&cluster).await?;
    eprintln!("controller: {}", summary["reason"]);
    Ok(())
}

/// The bytes of a real TLS 1.3 ClientHello for the controller, made by rustls without a client
/// certificate: what an attacker replays on every connection (it costs it nothing per
/// connection) to be taken for real TLS progress.
fn recorded_client_hello() -> anyhow::Result<Vec<u8>> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("loggate-controller")?.to_owned();
    let mut connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name)?;
    let mut hello = Vec::new();
    connection.write_tls(&mut hello)?;
    anyhow::ensure!(hello.first() == Some(&0x16), "not a handshake record");
    Ok(hello)
}

/// An attacker that replays a real ClientHello on every connection (its connections count as
/// real TLS progress, the last to be evicted) and never answers our flight cannot lock a
/// client out: its handshakes hold no turn for the cryptography while we wait for them (CI saw
/// the client reset `busy` after 3 s when they held their turns until their deadline), once
/// every connection in the pool has sent one the oldest are evicted, and a legitimate client
/// gets through within the same bound as under the other floods. Any change that lets a full
/// pool of ClientHello senders stop evicting (to spare a reconnecting fleet,
/// docs/performance.md) must keep this.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replayed_client_hellos_that_never_complete_lock_nobody_out() -> anyhow::Result<()> {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    raise_open_file_limit();
    let wrappers = tempfile::tempdir()?;
    let cluster = wan_test_controller(wrappers.path()).await?;
    let files = cluster.tls_files_of("users/admin");
    let controller = cluster.controller_addr;
    let hello = std::sync::Arc::new(recorded_client_hello()?);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churning = tokio::task::spawn_blocking({
        let stop = stop.clone();
        move || churn(controller, stop, Some(hello))
    });
    // Let the replayed ClientHellos fill the pool (128 places) and reach the turns.
    tokio::time::sleep(POOL_FILL).await;
    let (outcome, took) = who_am_i_once(&files, controller).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (opened, answered) = churning.await?;
    eprintln!(
        "under replayed ClientHellos: {outcome:?} in {took:?}; {opened} connections opened, \
         {answered} had our flight"
    );
    let outcome = outcome.map_err(|_| anyhow::anyhow!("no answer within 15 s"))?;
    assert!(
        outcome.is_ok(),
        "the client was refused under the replayed ClientHellos: {outcome:?}"
    );
    assert!(took < LEGIT_WITHIN, "the client took {took:?}");
    // The flood was at full strength while the client connected: the pool was full (only a
    // full pool evicts: the summary is waited for), and more replayed ClientHellos had our
    // flight computed than there are turns for the cryptography (64), so that turns held
    // until each never-answering handshake's deadline (until 2026-12-06) would all have been
    // taken. Which connections were evicted depends on how fast the accept loop reads the
    // ClientHellos against the churn on this machine (CI saw summaries of only connections
    // that had sent nothing).
    let summary = controller_eviction_summary(&cluster).await?;
    eprintln!("controller: {}", summary["reason"]);
    assert!(
        answered > loggate_core::tls_accept::HANDSHAKES_COMPUTING,
        "only {answered} of {opened} replayed ClientHellos had our flight: not every turn \
         was taken"
    );
    Ok(())
}

/// A mutual-TLS client of the controller with `user`'s certificate that completes its
/// handshake and then sends nothing (blocking rustls over a std socket).
fn silent_after_handshake(
    cluster: &loggate_tests::Cluster,
    user: &str,
) -> anyhow::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let pki = cluster.dir.join("pki");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.join("ca.crt"))? {
        roots.add(cert?)?;
    }
    let chain = CertificateDer::pem_file_iter(pki.join(format!("users/{user}.crt")))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(pki.join(format!("users/{user}.key")))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from("loggate-controller")?.to_owned();
    let mut connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name)?;
    let mut tcp = std::net::TcpStream::connect(cluster.controller_addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    while connection.is_handshaking() {
        connection.complete_io(&mut tcp)?;
    }
    Ok(rustls::StreamOwned::new(connection, tcp))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certified_client_that_sends_no_http2_preface_is_closed_and_counted() -> anyhow::Result<()>
{
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    tokio::task::spawn_blocking(|| -> anyhow::Result<()> {
        let mut cluster = loggate_tests::Cluster::new(None)?;
        cluster.start_controller()?;
        let mut silent = silent_after_handshake(&cluster, "admin")?;
        // Nothing sent after the handshake: the server closes it after its preface deadline
        // (5 s); without that deadline it waits for ever.
        silent
            .sock
            .set_read_timeout(Some(Duration::from_secs(12)))?;
        let started = Instant::now();
        let mut buf = [0u8; 256];
        let closed = loop {
            match std::io::Read::read(&mut silent, &mut buf) {
                Ok(0) => break Ok(()),
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break Err(e)
                }
                // Closed without close_notify, or reset: closed all the same.
                Err(_) => break Ok(()),
            }
        };
        let took = started.elapsed();
        eprintln!("a silent certified connection was closed after {took:?}: {closed:?}");
        anyhow::ensure!(
            closed.is_ok(),
            "a certified connection that sent no HTTP/2 preface was still open after {took:?}"
        );
        anyhow::ensure!(took < Duration::from_secs(9), "closed only after {took:?}");
        // Counted in the summary of connections closed after their handshake.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let summary = cluster
                .controller_audit()
                .iter()
                .map(loggate_tests::flat_audit_record)
                .find(|e| e["event"] == "tls.refused" && e["reason_code"] == "connection_limit");
            if let Some(summary) = summary {
                eprintln!("controller: {}", summary["reason"]);
                anyhow::ensure!(
                    summary["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("1 sent no HTTP/2 preface")),
                    "{summary}"
                );
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no connection_limit summary within 15 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await?
}
