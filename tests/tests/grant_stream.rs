//! End-to-end: an agent's `WatchGrants` stream through the controller's real route (mutual
//! TLS, `ControllerRoutes`, the change feed read by the response itself), decoded message by
//! message as an agent decodes it; and a stream whose client goes away ends and is counted gone.

use loggate_core::grant::{unix_now, Audience, GrantVerifier, VerifyingKey};
use loggate_core::identity::AgentId;
use loggate_proto as pb;
use loggate_tests::{free_addr, text, Fixture};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Longer than the controller's heartbeat period (10 s).
const WAIT: Duration = Duration::from_secs(20);

/// The controller's epoch and cluster id as its database holds them.
fn epoch_and_cluster_id(f: &Fixture) -> anyhow::Result<(String, String)> {
    let db = rusqlite::Connection::open(f.cluster.dir.join("controller/state.db"))?;
    let meta = |key: &str| -> anyhow::Result<String> {
        Ok(
            db.query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })?,
        )
    };
    Ok((meta("epoch")?, meta("cluster_id")?))
}

async fn next(stream: &mut tonic::Streaming<pb::GrantEvent>) -> anyhow::Result<pb::GrantEvent> {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .map_err(|_| anyhow::anyhow!("no event within {WAIT:?}"))??
        .ok_or_else(|| anyhow::anyhow!("the stream ended"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_stream_through_the_route_carries_a_verified_grant_its_revocation_and_heartbeats(
) -> anyhow::Result<()> {
    let f = tokio::task::spawn_blocking(Fixture::start).await??;
    let (epoch, cluster_id) = epoch_and_cluster_id(&f)?;
    let mut client = f.cluster.controller_client_as("agents/web-1").await?;
    let mut stream = client
        .watch_grants(pb::WatchGrantsRequest {
            agent_id: "web-1".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    // Every event carries this run's epoch and the cluster's id.
    let stamped = |event: &pb::GrantEvent| {
        assert_eq!(
            (event.epoch.as_str(), event.cluster_id.as_str()),
            (epoch.as_str(), cluster_id.as_str()),
            "{event:?}"
        );
    };

    // A stream of another epoch (none) is resynchronised: its catch-up ends with a heartbeat.
    let first = next(&mut stream).await?;
    stamped(&first);
    assert!(
        matches!(first.event, Some(pb::grant_event::Event::Heartbeat(_))),
        "{first:?}"
    );

    let id = tokio::task::block_in_place(|| f.grant("alice", "1h"))?;
    let granted = next(&mut stream).await?;
    stamped(&granted);
    assert!(granted.revision > first.revision, "{granted:?}");
    let Some(pb::grant_event::Event::Grant(signed)) = &granted.event else {
        panic!("a grant was expected: {granted:?}");
    };
    assert_eq!(signed.grant_id, id);
    // The token verifies as the agent verifies it, with the controller's public key.
    let key = VerifyingKey::from_paserk(&std::fs::read_to_string(
        f.cluster.dir.join("pki/grant-signing.pub"),
    )?)?;
    let verifier = GrantVerifier::new(vec![key], Duration::from_secs(60));
    let audience = Audience {
        agent_id: AgentId::new("web-1")?,
        labels: vec![],
    };
    let grant = verifier
        .verify_on_receipt(&signed.token, &audience, unix_now())
        .map_err(|e| anyhow::anyhow!("the pushed token does not verify: {e}"))?;
    assert_eq!(grant.claims().jti, id);

    let out = tokio::task::block_in_place(|| {
        f.cluster
            .run_cli("admin", &["grant", "revoke", &id, "--reason", "done"])
    })?;
    assert!(out.status.success(), "{}", text(&out).1);
    let revoked = next(&mut stream).await?;
    stamped(&revoked);
    assert_eq!(revoked.revision, granted.revision + 1, "{revoked:?}");
    match &revoked.event {
        Some(pb::grant_event::Event::Revocation(r)) => {
            assert_eq!(r.grant_id, id);
            assert_eq!(r.reason, "done");
        }
        other => panic!("a revocation was expected: {other:?}"),
    }

    // Silence: a heartbeat at the revision reached.
    let beat = next(&mut stream).await?;
    stamped(&beat);
    assert!(
        matches!(beat.event, Some(pb::grant_event::Event::Heartbeat(_))),
        "{beat:?}"
    );
    assert_eq!(beat.revision, revoked.revision);
    tokio::task::spawn_blocking(move || drop(f)).await?;
    Ok(())
}

/// `loggate_controller_connected_agents` as the controller's `/metrics` reports it.
fn connected_agents(addr: SocketAddr) -> anyhow::Result<f64> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    response
        .lines()
        .find_map(|l| l.strip_prefix("loggate_controller_connected_agents "))
        .ok_or_else(|| anyhow::anyhow!("no connected_agents in {response:?}"))?
        .trim()
        .parse()
        .map_err(Into::into)
}

fn wait_for_connected(addr: SocketAddr, want: f64) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = connected_agents(addr)?;
        if now == want {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{now} agents connected after {WAIT:?}, {want} expected"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A stream ends when its client's connection goes away: the controller counts the agent gone
/// (the count is kept by the stream's end, which runs only when the stream is dropped), and
/// the agent can watch again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_stream_whose_client_disconnects_ends_and_is_counted_gone() -> anyhow::Result<()> {
    let metrics = free_addr()?;
    let f = tokio::task::spawn_blocking(Fixture::start).await??;
    // The fixture's controller again, with its metrics endpoint.
    let config = format!("[metrics]\nenabled = true\nlisten = \"{metrics}\"\n");
    let f = tokio::task::spawn_blocking(move || -> anyhow::Result<Fixture> {
        let mut f = f;
        let mut text = std::fs::read_to_string(&f.cluster.controller_config)?;
        text.push_str(&format!("\n{config}"));
        std::fs::write(&f.cluster.controller_config, text)?;
        f.cluster.stop_controller();
        f.cluster.start_controller()?;
        wait_for_connected(metrics, 1.0)?; // web-1's own agent
        f.cluster.issue_agent_cert("web-9")?;
        Ok(f)
    })
    .await??;
    for round in 0..3 {
        let mut client = f.cluster.controller_client_as("agents/web-9").await?;
        let mut stream = client
            .watch_grants(pb::WatchGrantsRequest {
                agent_id: "web-9".into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let first = next(&mut stream).await?;
        assert!(
            matches!(first.event, Some(pb::grant_event::Event::Heartbeat(_))),
            "round {round}: {first:?}"
        );
        tokio::task::block_in_place(|| wait_for_connected(metrics, 2.0))?;
        // The client goes away: its stream and its connection with it.
        drop(stream);
        drop(client);
        tokio::task::block_in_place(|| wait_for_connected(metrics, 1.0))?;
    }
    tokio::task::spawn_blocking(move || drop(f)).await?;
    Ok(())
}

/// A stop is not held for ever by an agent that keeps its `WatchGrants` stream's HTTP/2 window
/// shut (it answers pings, so keepalive never drops it, and hyper never polls a stream without
/// window, so the stream never sees the stop): the controller closes its connection
/// `GRACEFUL_STOP_WITHIN` after the stop, the stream ends before the controller's last record,
/// and the controller writes `controller.stopped`, instead of waiting until systemd kills it
/// without its last records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_holding_its_streams_window_shut_does_not_hold_the_controllers_stop(
) -> anyhow::Result<()> {
    let mut f = tokio::task::spawn_blocking(Fixture::start).await??;
    let files = f.cluster.tls_files_of("agents/web-1");
    // A window of 0: the controller may send the response's headers, never a byte of data.
    let channel = files
        .endpoint(
            &f.cluster.controller_addr.to_string(),
            loggate_core::tls::Server::Controller,
        )?
        .initial_stream_window_size(0u32)
        .connect()
        .await?;
    let mut client = pb::controller_client::ControllerClient::new(channel);
    let stream = client
        .watch_grants(pb::WatchGrantsRequest {
            agent_id: "web-1".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    // Let the stream settle: whatever it has to send waits for window.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let within = loggate_core::daemon::GRACEFUL_STOP_WITHIN
        + loggate_core::daemon::CLOSED_WITHIN
        + Duration::from_secs(3);
    let stopped = tokio::task::block_in_place(|| f.cluster.terminate_controller_within(within));
    let Some((status, took)) = stopped else {
        panic!("the controller had not exited {within:?} after SIGTERM (it was killed)");
    };
    assert!(status.success(), "the controller's exit: {status:?}");
    assert!(
        took >= loggate_core::daemon::GRACEFUL_STOP_WITHIN - Duration::from_secs(1),
        "the stop took {took:?}: the stalled stream did not hold it, so this test proves nothing"
    );
    let audit = f.cluster.controller_audit();
    // The stop's own checkpoint follows `controller.stopped`; nothing else may.
    assert_eq!(
        audit
            .iter()
            .filter_map(loggate_core::audit::event_name)
            .rfind(|name| *name != "audit.checkpoint"),
        Some("controller.stopped"),
        "the controller's last record before its final checkpoint"
    );
    let log = std::fs::read_to_string(f.cluster.dir.join("controller/stderr.log"))?;
    assert!(
        log.contains("some connections had not ended"),
        "the stalled stream was not what held the stop: {log}"
    );
    // Its connection was closed at the deadline, not left to the process's exit: the stalled
    // stream ended (`agent disconnected`) before `loggate controller stopped`, as the real
    // agent's did, so nothing of it ran after the controller's last record.
    let (before_stop, _) = log
        .split_once("loggate controller stopped")
        .ok_or_else(|| anyhow::anyhow!("no `loggate controller stopped` line: {log}"))?;
    let connected = before_stop.matches("agent connected agent=web-1").count();
    let disconnected = before_stop
        .matches("agent disconnected agent=web-1")
        .count();
    assert!(
        connected >= 2 && disconnected == connected,
        "{connected} streams of web-1 connected, {disconnected} ended before the controller's \
         stop: {log}"
    );
    // And the client sees its connection closed, not a stream left hanging.
    let mut stream = stream;
    let end = tokio::time::timeout(WAIT, stream.message())
        .await
        .map_err(|_| anyhow::anyhow!("the stalled stream still hung {WAIT:?} after the stop"))?;
    assert!(
        !matches!(end, Ok(Some(_))),
        "a message through a window of 0: {end:?}"
    );
    drop(stream);
    tokio::task::spawn_blocking(move || drop(f)).await?;
    Ok(())
}
