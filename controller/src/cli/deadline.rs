//! A deadline on every call the CLI makes, from the moment it is handed to the channel until
//! the answer's head arrives.
//!
//! tonic's own `Endpoint::timeout` covers a call only once the connection has taken it: a call
//! still queued in the channel's buffer, waiting for a connection that the server has just
//! closed (a refused client certificate ends the connection right after TLS 1.3's handshake),
//! is not covered, and CI saw `loggate grant list` wait there forever with no socket left and no
//! timer armed. With this wrapper every call ends: with its answer, its error, or
//! [`NoAnswer`] once its deadline has passed. A streamed answer (`logs tail --follow`) is
//! bounded only until its head: the stream itself may last as long as it has lines.
//!
//! A call may ask for a longer deadline with `tonic::Request::set_timeout` (the `grpc-timeout`
//! header, which the server honours too): the long-polls of `grant request --wait` do. The
//! deadline is then that timeout plus [`SLACK`], so that the server's own answer to its timeout
//! arrives before ours.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::codegen::{http, Service, StdError};

/// The deadline of a call that asks for none: the answer's head comes in milliseconds from a
/// healthy server, so this is far beyond any wait that is not a hang.
pub const DEFAULT: Duration = Duration::from_secs(20);

/// The longest a connection may take, TCP's connect and TLS's handshake together.
pub const CONNECT: Duration = Duration::from_secs(10);

/// The interval of HTTP/2 pings on a connection, and how long one may go unanswered.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What a call that set its own timeout gets on top of it.
pub const SLACK: Duration = Duration::from_secs(10);

/// The longest deadline a call can ask for (a `grpc-timeout` can say hours).
const LONGEST: Duration = Duration::from_secs(600);

/// A call's deadline passed without an answer.
#[derive(Debug, Clone, Copy)]
pub struct NoAnswer(pub Duration);

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no answer within {} s", self.0.as_secs())
    }
}

impl std::error::Error for NoAnswer {}

/// `inner` with a deadline on every call (see the module's text).
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    default: Duration,
    slack: Duration,
}

impl<S> Deadline<S> {
    /// `inner` with [`DEFAULT`] and [`SLACK`].
    pub fn new(inner: S) -> Deadline<S> {
        Deadline {
            inner,
            default: DEFAULT,
            slack: SLACK,
        }
    }

    /// `inner` with `default` for calls that ask for no deadline of their own (a sign-in
    /// waits on the IdP's keys behind the controller).
    pub fn with_default(inner: S, default: Duration) -> Deadline<S> {
        Deadline {
            inner,
            default,
            slack: SLACK,
        }
    }
}

impl<S, B> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<StdError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = StdError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, StdError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StdError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let deadline = deadline_of(request.headers(), self.default, self.slack);
        let answer = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(deadline, answer).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(Box::new(NoAnswer(deadline)) as StdError),
            }
        })
    }
}

/// The deadline for a call with these headers: its own `grpc-timeout` plus `slack` (at most
/// [`LONGEST`]), or `default` when it has none or one that does not parse.
fn deadline_of(headers: &http::HeaderMap, default: Duration, slack: Duration) -> Duration {
    headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(grpc_timeout)
        .map_or(default, |asked| asked.saturating_add(slack).min(LONGEST))
}

/// A `grpc-timeout` value (gRPC over HTTP/2: at most 8 digits and a unit among H M S m u n).
fn grpc_timeout(value: &str) -> Option<Duration> {
    let digits = value.get(..value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match value.as_bytes().last()? {
        b'H' => Duration::from_secs(n.checked_mul(3600)?),
        b'M' => Duration::from_secs(n.checked_mul(60)?),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Whether `error`'s chain holds a [`NoAnswer`].
pub fn no_answer_in(error: &(dyn std::error::Error + 'static)) -> Option<NoAnswer> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<NoAnswer>() {
            return Some(*found);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    #[test]
    fn a_calls_own_timeout_sets_its_deadline_and_anything_else_gets_the_default() {
        let of = |headers: &http::HeaderMap| deadline_of(headers, DEFAULT, SLACK);
        let mut headers = http::HeaderMap::new();
        assert_eq!(of(&headers), DEFAULT);
        headers.insert("grpc-timeout", http::HeaderValue::from_static("40S"));
        assert_eq!(of(&headers), Duration::from_secs(50));
        headers.insert("grpc-timeout", http::HeaderValue::from_static("1500m"));
        assert_eq!(of(&headers), Duration::from_millis(11_500));
        headers.insert("grpc-timeout", http::HeaderValue::from_static("99999999H"));
        assert_eq!(of(&headers), LONGEST);
        for bad in ["", "S", "10", "10s", "123456789S", "-5S", "1.5S"] {
            headers.insert("grpc-timeout", http::HeaderValue::from_static(bad));
            assert_eq!(of(&headers), DEFAULT, "{bad:?}");
        }
    }

    /// A service whose answer never comes, as a call queued for a dead connection.
    #[derive(Clone)]
    struct Never;

    impl Service<http::Request<()>> for Never {
        type Response = ();
        type Error = Infallible;
        type Future = std::future::Pending<Result<(), Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            std::future::pending()
        }
    }

    #[tokio::test]
    async fn a_call_that_never_gets_an_answer_ends_with_no_answer_at_its_deadline() {
        let mut service = Deadline {
            inner: Never,
            default: Duration::from_millis(50),
            slack: Duration::from_millis(100),
        };
        let started = std::time::Instant::now();
        let plain = http::Request::new(());
        let error = service.call(plain).await.expect_err("never answers");
        assert!(started.elapsed() >= Duration::from_millis(50));
        let found = no_answer_in(error.as_ref()).expect("a NoAnswer");
        assert_eq!(found.0, Duration::from_millis(50));
        let asked = http::Request::builder()
            .header("grpc-timeout", "200m")
            .body(())
            .expect("request");
        let error = service.call(asked).await.expect_err("never answers");
        let found = no_answer_in(error.as_ref()).expect("a NoAnswer");
        assert_eq!(found.0, Duration::from_millis(300));
        assert!(started.elapsed() >= Duration::from_millis(350));
        assert_eq!(NoAnswer(DEFAULT).to_string(), "no answer within 20 s");
    }
}
