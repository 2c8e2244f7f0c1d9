//! The systemd service notification protocol (`sd_notify(3)`), for `Type=notify` units: a daemon
//! says `READY=1` once it really serves, `STOPPING=1` when it begins to stop, and `WATCHDOG=1`
//! at half the unit's `WatchdogSec=` so that systemd restarts a daemon whose runtime hangs.
//!
//! The protocol is one datagram of `KEY=VALUE` lines to the Unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace); no crate is needed. Outside
//! systemd (no `$NOTIFY_SOCKET`) every call does nothing. A notification that cannot be sent is
//! logged and otherwise ignored: the service manager then times the start out or restarts the
//! daemon, which is the fail-safe reaction, while the daemon itself never stops serving over a
//! message to its supervisor.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Tells systemd the daemon is ready (`READY=1`) and, when the unit has a watchdog
/// (`$WATCHDOG_USEC`, for this process per `$WATCHDOG_PID`), starts pinging it from a task on
/// the current tokio runtime: a runtime that stops running tasks stops the pings, and systemd
/// restarts the daemon. Call it once, after the audit file is open and the listener bound.
pub fn ready() {
    send("READY=1");
    if let Some(period) = watchdog_period() {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let mut tick = tokio::time::interval(period);
                    loop {
                        tick.tick().await;
                        send("WATCHDOG=1");
                    }
                });
            }
            Err(_) => tracing::warn!("the systemd watchdog is set but no runtime can ping it"),
        }
    }
}

/// Tells systemd the daemon is stopping (`STOPPING=1`), so that `systemctl status` says so
/// while the last audit records are written.
pub fn stopping() {
    send("STOPPING=1");
}

/// Half the watchdog interval systemd expects pings within, if it expects them from this
/// process (`sd_watchdog_enabled(3)`).
fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Sends one notification to `$NOTIFY_SOCKET`; nothing without it.
fn send(message: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_to(socket.as_encoded_bytes(), message) {
        tracing::warn!("cannot notify systemd ({message}): {e:#}");
    }
}

fn send_to(socket: &[u8], message: &str) -> std::io::Result<()> {
    let address = match socket.split_first() {
        Some((b'@', name)) => SocketAddr::from_abstract_name(name)?,
        Some((b'/', _)) => SocketAddr::from_pathname(std::path::Path::new(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(socket),
        ))?,
        _ => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither an absolute path nor an @abstract name",
            ))
        }
    };
    let sender = UnixDatagram::unbound()?;
    let sent = sender.send_to_addr(message.as_bytes(), &address)?;
    if sent != message.len() {
        return Err(std::io::Error::other("the notification was cut short"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_reaches_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str().as_encoded_bytes(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("loggate-notify-test-{}", std::process::id());
        let abstract_addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&abstract_addr).unwrap();
        send_to(format!("@{name}").as_bytes(), "WATCHDOG=1").unwrap();
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn notify_socket_that_is_neither_path_nor_abstract_is_refused() {
        for bad in [&b""[..], b"relative/socket"] {
            let err = send_to(bad, "READY=1").unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        }
    }
}
