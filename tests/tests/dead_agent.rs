//! End-to-end: a reader whose agent's host dies in the middle of a stream (no FIN, no RST: the
//! host is simply gone) is told so within its keep-alive bound instead of waiting for ever.
//! The "dead host" is a TCP relay between the CLI and the agent that stops moving bytes both
//! ways while keeping both sockets open.

use loggate_tests::{text, Fixture};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Copies `from` → `to` until `frozen` is set, then holds both open, moving nothing, until
/// `done` (bounded by the test's own deadline).
fn relay(mut from: TcpStream, mut to: TcpStream, frozen: Arc<AtomicBool>, done: Arc<AtomicBool>) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 16 * 1024];
    let until = Instant::now() + Duration::from_secs(120);
    while !done.load(Ordering::Relaxed) && Instant::now() < until {
        if frozen.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

#[test]
fn a_follow_whose_agent_host_goes_silent_ends_with_an_error_within_its_keep_alive_bound(
) -> anyhow::Result<()> {
    let f = Fixture::start()?;
    f.grant("alice", "10m")?;
    let agent = f.cluster.agent_addr("web-1");
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let relay_addr = listener.local_addr()?.to_string();
    let frozen = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let (frozen2, done2) = (frozen.clone(), done.clone());
    let relays = std::thread::spawn(move || -> anyhow::Result<()> {
        let (client, _) = listener.accept()?;
        let upstream = TcpStream::connect(&agent)?;
        let (c2, u2) = (client.try_clone()?, upstream.try_clone()?);
        let (fa, da) = (frozen2.clone(), done2.clone());
        let up = std::thread::spawn(move || relay(client, upstream, fa, da));
        relay(u2, c2, frozen2, done2);
        let _ = up.join();
        Ok(())
    });
    let mut tail = f.cluster.cli("alice");
    tail.args(["logs", "tail", "--follow", &f.api_log()])
        .args(["--host", "web-1", "--agent-addr", &relay_addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = tail.spawn()?;
    // The follow is live once the file's last line has come through.
    let mut stdout = child.stdout.take().expect("piped");
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    let live_by = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&seen).contains("line 49") && Instant::now() < live_by {
        match stdout.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&chunk[..n]),
        }
    }
    anyhow::ensure!(
        String::from_utf8_lossy(&seen).contains("line 49"),
        "the follow never started: {}",
        String::from_utf8_lossy(&seen)
    );
    // The host "dies": nothing moves any more, nothing is closed.
    frozen.store(true, Ordering::Relaxed);
    let died = Instant::now();
    while child.try_wait()?.is_none() && died.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let ended = child.try_wait()?;
    if ended.is_none() {
        let _ = child.kill();
    }
    done.store(true, Ordering::Relaxed);
    let _ = relays.join();
    let out = child.wait_with_output()?;
    let stderr = text(&out).1;
    let status = ended.ok_or_else(|| {
        anyhow::anyhow!("the follow still waits 60 s after its agent's host went silent")
    })?;
    assert_ne!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("web-1"),
        "the error names the host: {stderr}"
    );
    Ok(())
}
