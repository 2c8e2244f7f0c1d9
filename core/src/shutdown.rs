//! When a daemon (controller or agent) should stop: SIGINT or SIGTERM (systemd's stop).

/// Resolves on SIGINT or SIGTERM. If the SIGTERM handler cannot be installed it waits for
/// SIGINT alone rather than stopping at once.
pub async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
