//! End-to-end: an agent whose controller accepts the connection and then says nothing (a hung
//! process, a half-dead load balancer) gives up on it within its bound and tries again, rather
//! than waiting in TLS's handshake for ever — which would leave it deaf to every revocation made
//! once the controller answers again.

use loggate_tests::Cluster;
use std::net::TcpListener;
use std::time::{Duration, Instant};

#[test]
fn an_agent_whose_controller_stalls_in_the_handshake_gives_up_and_tries_again() -> anyhow::Result<()>
{
    let mut cluster = Cluster::new(None)?;
    // The "controller": accepts, holds every connection open, never writes a byte.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    cluster.controller_addr = listener.local_addr()?;
    let logs = cluster.dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    cluster.add_agent("web-1", &[&logs], "")?;
    cluster.start_agent("web-1")?;
    // The agent dials twice at its start (the grant stream and the checkpoint sender); its
    // bound is 10 s and its back-off a few seconds: a third connection within 45 s shows it
    // gave up on a first one. With no bound there are only ever two.
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(45);
    while held.len() < 3 && Instant::now() < deadline {
        match listener.accept() {
            Ok((conn, _)) => held.push(conn),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let log_file = cluster.agents["web-1"].dir.join("stderr.log");
    let log = std::fs::read_to_string(&log_file).unwrap_or_default();
    assert!(
        held.len() >= 3,
        "{} connection(s) in 45 s: the agent waits on a silent controller\n{log}",
        held.len()
    );
    assert!(
        log.contains("no TLS handshake with the controller"),
        "the agent's log does not say why it gave up:\n{log}"
    );
    cluster.stop_agent("web-1");
    Ok(())
}
