//! When a daemon (controller or agent) should stop: SIGINT or SIGTERM (systemd's stop).
//!
//! The handlers are installed by [`install`], called first thing at a daemon's start: a stop
//! signal that arrives while it is still starting (before anything awaits [`signal`]) is not
//! lost, and does not kill the process by the signal's default action before it wrote its
//! records; [`signal`] then resolves at once. Installed lazily by the first [`signal`] when
//! [`install`] was not called.

use std::sync::OnceLock;
use tokio::sync::watch;

/// Set once a stop signal was received (after [`install`]).
static STOP: OnceLock<watch::Sender<bool>> = OnceLock::new();

/// Installs the SIGINT and SIGTERM handlers now, on the current tokio runtime (a daemon's
/// start). Later calls do nothing. If the SIGTERM handler cannot be installed, SIGINT alone
/// stops the daemon rather than it stopping at once.
pub fn install() {
    STOP.get_or_init(|| {
        use tokio::signal::unix::{signal, SignalKind};
        let (stop, _) = watch::channel(false);
        // Created here, not in the task: the handlers exist when this returns.
        let term = signal(SignalKind::terminate()).ok();
        let interrupt = signal(SignalKind::interrupt()).ok();
        let notify = stop.clone();
        tokio::spawn(async move {
            let received = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = received(term) => {},
                _ = received(interrupt) => {},
            }
            notify.send_replace(true);
        });
        stop
    });
}

/// Resolves on SIGINT or SIGTERM received since [`install`] (at once if one was already).
pub async fn signal() {
    install();
    let Some(stop) = STOP.get() else {
        return std::future::pending().await;
    };
    let mut stopped = stop.subscribe();
    // An error: the sender is gone, which a static never is.
    let _ = stopped.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    /// Set in the child process that runs the test's body (see below).
    const CHILD: &str = "LOGGATE_SHUTDOWN_TEST_CHILD";

    /// A SIGTERM that arrives before anything awaits `signal()` is not lost: `signal()`
    /// awaited afterwards resolves (before `install`, the handler was created only when
    /// `signal()` was first polled, and a SIGTERM before that killed the daemon without its
    /// stop records).
    ///
    /// The body runs in a child process (this test binary, running only this test): it
    /// installs the process-wide handlers and leaves the stop set, which in this process would
    /// make every later `signal()` of this binary's tests resolve at once.
    #[test]
    fn a_stop_signal_before_anything_awaits_it_is_kept() {
        if std::env::var_os(CHILD).is_none() {
            let exe = std::env::current_exe().expect("the test binary");
            let out = std::process::Command::new(exe)
                .args([
                    "--exact",
                    "shutdown::tests::a_stop_signal_before_anything_awaits_it_is_kept",
                    "--test-threads=1",
                    "--nocapture",
                ])
                .env(CHILD, "1")
                .output()
                .expect("run the test binary");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "the child: {:?}\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            super::install();
            // SAFETY: raise(3) sends a signal to this process; its handler is installed
            // above, so SIGTERM's default action (termination) does not happen.
            unsafe {
                libc::raise(libc::SIGTERM);
            }
            tokio::time::timeout(std::time::Duration::from_secs(5), super::signal())
                .await
                .expect("signal() resolves for a SIGTERM received before it was awaited");
        });
    }
}
