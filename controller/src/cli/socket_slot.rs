//! The connections of a multi-host read (`logs … --host 'web-*'`, `logs ls`, `logs journal`):
//! one socket per peer whose closing can be waited for, and one bounded retry of a transient
//! connect failure.
//!
//! **Why the socket is ours.** tonic closes a dropped channel's TCP connection later, on tasks
//! of its own (the channel's buffer worker, then hyper's connection task sending GOAWAY). A read
//! that gave its `--parallel` slot back as soon as it had dropped its channel let the next host
//! connect while that socket was still open: `cargo xtask bench reads` counted 144 sockets at
//! `--parallel 128`. Here the TCP connection is made by our own connector, and the socket holds
//! the one permit of its [`Socket`] until the socket itself is dropped; [`Socket::closed`]
//! waits for that, so a reader keeps its slot until its socket is really gone, and a reconnect
//! (or the refusal probe of [`super::explain_at`]) never overlaps the socket before it.
//!
//! **Why one retry.** Under load (a 500-wide `--merge` on a machine at load 20) an agent's
//! accept queue overflows and a few connects are refused, reset or time out although the agent
//! is up (the bench saw "Broken pipe" at connect): [`connect`] tries such a connect once more after a random pause of
//! [`RETRY_PAUSE_MS`] (so that hundreds of retries do not arrive together). Only the transport
//! failing before TLS has said anything is retried ([`is_transient`]); a TLS refusal, an
//! unexpected server and every gRPC answer (a refused grant, above all) are never retried, and
//! a host is tried at most twice. A connection that broke after TLS's handshake (a broken pipe,
//! a reset or an early end at HTTP/2's preface) may be the peer refusing our certificate with
//! its alert lost (docs/security.md, 11c): it is probed for that reason first
//! ([`super::probe_refusal`]), and a refusal ends the host with exit 3, not retried.
//!
//! **Time limits.** The TCP connect is bounded by [`TCP_CONNECT`] inside our connector (after
//! the wait for the peer's socket slot), and the whole connect, TLS's handshake included, by
//! `deadline::CONNECT` (10 s). The endpoint has no `connect_timeout`: tonic would wrap the whole
//! connector, TLS included, in it (5 s for TCP and TLS together).

use super::deadline::Deadline;
use super::{chain_has_io_kind, connect_failure, endpoint, tls_error_in, within_connect_deadline};
use super::{probe_refusal, tls_failure, ConnectError, Failure, Peer};
use crate::config::ClientConfig;
use hyper_util::rt::TokioIo;
use loggate_core::tls::Server;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::codegen::http::Uri;
use tonic::codegen::Service;
use tonic::transport::Channel;

/// The pause before the one retry of a transient connect failure, in milliseconds: drawn at
/// random in this range.
pub const RETRY_PAUSE_MS: std::ops::RangeInclusive<u64> = 100..=400;

/// The longest a reader waits for its dropped connection's socket to close before it gives its
/// slot back anyway (tonic closes it within a few scheduler turns; this only bounds a bug).
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The longest the TCP connect itself may take (the wait for the peer's socket slot before it
/// and TLS's handshake after it are not counted).
pub const TCP_CONNECT: Duration = Duration::from_secs(5);

/// The socket to one peer: at most one is open at a time, and its closing can be waited for.
#[derive(Debug, Clone)]
pub struct Socket {
    /// One permit, held by the open socket (inside the connection) until it is dropped.
    open: Arc<Semaphore>,
}

impl Default for Socket {
    fn default() -> Self {
        Socket {
            open: Arc::new(Semaphore::new(1)),
        }
    }
}

impl Socket {
    /// Waits until no socket to the peer is open, at most `bound`; true when none is.
    pub async fn closed(&self, bound: Duration) -> bool {
        matches!(
            tokio::time::timeout(bound, self.open.acquire()).await,
            Ok(Ok(_))
        )
    }

    /// Waits (at most `bound`) until no socket to the peer is open and keeps it so while the
    /// returned permit lives (a probe connection of one's own is then the only one); `None`
    /// when the socket did not close in time.
    pub async fn hold_closed(&self, bound: Duration) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(bound, Arc::clone(&self.open).acquire_owned())
            .await
            .ok()?
            .ok()
    }
}

/// A channel to `server` at `addr` whose TCP connection is `socket`'s, with every call under a
/// deadline; a transient connect failure is tried once more (module documentation).
pub async fn connect(
    addr: &str,
    config: &ClientConfig,
    server: Server<'_>,
    socket: &Socket,
) -> Result<Deadline<Channel>, Failure> {
    // No connect_timeout: the connector bounds TCP itself, within_connect_deadline the rest.
    let endpoint = endpoint(addr, config, server, false)?;
    let attempt = || {
        within_connect_deadline(endpoint.connect_with_connector(Connector {
            open: Arc::clone(&socket.open),
        }))
    };
    let name = match server {
        Server::Controller => "loggate-controller",
        Server::Agent(id) => id,
    };
    let before_retry = |past_tls: bool| async move {
        // The failed attempt's socket is gone before the probe or the next attempt opens one.
        socket.closed(CLOSE_WAIT).await;
        if past_tls {
            let peer = Peer {
                name: name.to_string(),
                addr: addr.to_string(),
                server,
            };
            if let Some(tls) = probe_refusal(config, &peer).await {
                return Err(tls_failure(
                    &format!("{name} at {addr}"),
                    &tls,
                    &tls.to_string(),
                ));
            }
        }
        let ms = rand::random_range(RETRY_PAUSE_MS);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    };
    match once_more_if_transient(attempt, before_retry).await {
        Ok(channel) => Ok(Deadline::new(channel)),
        Err(Stop::Refused(failure)) => Err(failure),
        Err(Stop::Failed(e, tries)) => {
            let mut failure = connect_failure(addr, server, &e);
            if tries > 1 {
                failure.message.push_str(" (tried twice)");
            }
            Err(failure)
        }
    }
}

/// Why [`once_more_if_transient`] gave up.
#[derive(Debug)]
enum Stop {
    /// The last attempt's error, with the number of attempts made (1 or 2).
    Failed(ConnectError, u8),
    /// The check before the retry found the peer refusing us (exit 3): not tried again.
    Refused(Failure),
}

/// Runs `attempt`; when it fails transiently ([`is_transient`]), runs `before_retry` (told
/// whether the connection had got past TLS's handshake, [`past_tls`]) and, unless that finds
/// a refusal, `attempt` once more.
async fn once_more_if_transient<T, A, AF, P, PF>(mut attempt: A, before_retry: P) -> Result<T, Stop>
where
    A: FnMut() -> AF,
    AF: Future<Output = Result<T, ConnectError>>,
    P: FnOnce(bool) -> PF,
    PF: Future<Output = Result<(), Failure>>,
{
    match attempt().await {
        Ok(value) => Ok(value),
        Err(e) if is_transient(&e) => {
            before_retry(past_tls(&e)).await.map_err(Stop::Refused)?;
            attempt().await.map_err(|e| Stop::Failed(e, 2))
        }
        Err(e) => Err(Stop::Failed(e, 1)),
    }
}

/// True when the failed connect had got past TLS's handshake: the error came from HTTP/2's
/// handshake on the TLS stream (hyper's error is in the chain, by type), where a peer refusing
/// our certificate under TLS 1.3 closes the connection.
pub(super) fn past_tls(e: &ConnectError) -> bool {
    let ConnectError::Failed(e) = e else {
        return false;
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(c) = cause {
        if c.is::<hyper::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// True for a connect that failed in the transport before TLS said anything: refused, reset,
/// aborted, a broken pipe or an early end (the agent's accept loop shedding a handshake under
/// load: the bench's "Broken pipe"), or timed out (by the I/O error kinds of its cause chain,
/// never by message text), or no handshake within the deadline. A TLS error anywhere in the chain (our certificate refused,
/// an unexpected server) is never transient.
pub(super) fn is_transient(e: &ConnectError) -> bool {
    match e {
        ConnectError::NoHandshake => true,
        ConnectError::Failed(e) => {
            tls_error_in(e.as_ref()).is_none()
                && [
                    io::ErrorKind::ConnectionRefused,
                    io::ErrorKind::ConnectionReset,
                    io::ErrorKind::ConnectionAborted,
                    io::ErrorKind::BrokenPipe,
                    io::ErrorKind::UnexpectedEof,
                    io::ErrorKind::TimedOut,
                ]
                .into_iter()
                .any(|kind| chain_has_io_kind(e.as_ref(), kind))
        }
    }
}

/// Opens the TCP connection to the endpoint's URI (its host, its port or 443, as hyper's own
/// connector does) once the peer has no other socket open, within [`TCP_CONNECT`], and hands it
/// over holding that peer's one permit ([`HeldSocket`]).
#[derive(Clone)]
struct Connector {
    open: Arc<Semaphore>,
}

impl Service<Uri> for Connector {
    type Response = HeldSocket;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<HeldSocket>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let open = Arc::clone(&self.open);
        Box::pin(async move {
            let host = uri
                .host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host to dial"))?;
            let port = uri.port_u16().unwrap_or(443);
            // A reconnect waits here until the connection before it has dropped its socket;
            // the wait is not part of TCP's time limit.
            let permit = open
                .acquire_owned()
                .await
                .map_err(|_| io::Error::other("the connection's socket slot is gone"))?;
            let tcp = tokio::time::timeout(TCP_CONNECT, TcpStream::connect((host.as_str(), port)))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no TCP connection within {} s", TCP_CONNECT.as_secs()),
                    )
                })??;
            tcp.set_nodelay(true)?;
            Ok(HeldSocket {
                io: TokioIo::new(tcp),
                _open: permit,
            })
        })
    }
}

/// A TCP connection that holds its peer's one permit until it is dropped (closed).
struct HeldSocket {
    io: TokioIo<TcpStream>,
    _open: OwnedSemaphorePermit,
}

impl hyper::rt::Read for HeldSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for HeldSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU8, Ordering};

    /// A failed connect whose cause chain holds an I/O error of `kind` (as hyper's connector
    /// reports a refused TCP connect, under tonic's own error).
    fn io_failure(kind: io::ErrorKind) -> ConnectError {
        #[derive(Debug)]
        struct Wrapped(io::Error);
        impl std::fmt::Display for Wrapped {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("transport error")
            }
        }
        impl std::error::Error for Wrapped {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        ConnectError::Failed(Box::new(Wrapped(io::Error::from(kind))))
    }

    /// Runs [`once_more_if_transient`] over attempts that fail with `first` then `then`;
    /// returns (attempts made, pauses made, the attempts the error reports).
    async fn tries(first: ConnectError, then: ConnectError) -> (u8, u8, u8) {
        tries_probing(first, then, false).await
    }

    /// [`tries`], with a check before the retry that finds a refusal when `refused`.
    async fn tries_probing(first: ConnectError, then: ConnectError, refused: bool) -> (u8, u8, u8) {
        let made = AtomicU8::new(0);
        let paused = AtomicU8::new(0);
        let errors = std::sync::Mutex::new(vec![then, first]);
        let result: Result<(), _> = once_more_if_transient(
            || async {
                made.fetch_add(1, Ordering::SeqCst);
                let next = errors.lock().expect("lock").pop();
                Err(next.unwrap_or(ConnectError::NoHandshake))
            },
            |_past_tls| async {
                paused.fetch_add(1, Ordering::SeqCst);
                if refused {
                    Err(Failure::new(super::super::Exit::Denied, "refused"))
                } else {
                    Ok(())
                }
            },
        )
        .await;
        let reported = match result {
            Ok(()) => 0,
            Err(Stop::Failed(_, n)) => n,
            Err(Stop::Refused(f)) => {
                assert_eq!(f.code, super::super::Exit::Denied);
                u8::MAX
            }
        };
        (made.into_inner(), paused.into_inner(), reported)
    }

    #[tokio::test]
    async fn a_refusal_found_before_the_retry_is_not_tried_again() {
        let broken = || io_failure(io::ErrorKind::BrokenPipe);
        assert_eq!(
            tries_probing(broken(), broken(), true).await,
            (1, 1, u8::MAX)
        );
    }

    #[tokio::test]
    async fn the_connector_dials_the_uris_host_and_port_and_443_by_default() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut connector = Connector {
            open: Arc::new(Semaphore::new(1)),
        };
        let uri: Uri = format!("https://127.0.0.1:{port}").parse().expect("uri");
        let held = connector
            .call(uri)
            .await
            .expect("connects to the URI's port");
        drop(held);
        // No port: 443, as hyper's connector dials (a refused or failed connect, never the
        // "invalid socket address" of dialling the bare string).
        let bare = connector.call(Uri::from_static("https://127.0.0.1")).await;
        if let Err(e) = bare {
            assert_ne!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        }
    }

    #[tokio::test]
    async fn a_transient_connect_failure_is_tried_once_more_and_no_more() {
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::TimedOut,
        ] {
            assert_eq!(
                tries(io_failure(kind), io_failure(kind)).await,
                (2, 1, 2),
                "{kind:?}"
            );
        }
        assert_eq!(
            tries(ConnectError::NoHandshake, ConnectError::NoHandshake).await,
            (2, 1, 2)
        );
    }

    #[tokio::test]
    async fn a_tls_refusal_or_other_failure_is_never_retried() {
        let tls = ConnectError::Failed(Box::new(io::Error::other(rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate,
        ))));
        assert!(!is_transient(&tls));
        assert_eq!(tries(tls, ConnectError::NoHandshake).await, (1, 0, 1));
        let other = io_failure(io::ErrorKind::InvalidData);
        assert_eq!(tries(other, ConnectError::NoHandshake).await, (1, 0, 1));
    }

    #[tokio::test]
    async fn a_socket_is_closed_once_its_holder_is_dropped() {
        let socket = Socket::default();
        let held = Arc::clone(&socket.open).try_acquire_owned().expect("free");
        assert!(!socket.closed(Duration::from_millis(50)).await);
        drop(held);
        assert!(socket.closed(Duration::from_millis(50)).await);
    }
}
