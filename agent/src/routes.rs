//! The agent's gRPC service as served: tonic's generated `AgentServer` for `ListLogs` and
//! `Status`, and the two reads, `ReadLog` and `ReadJournal`, on a route of their own whose
//! responses are the agent's own gRPC frames ([`crate::frames`]: no copy of the content into
//! tonic's encode buffer, no allocation per message by tonic).
//!
//! **The request** is read as tonic's generated server reads it: its prost decoder, under the
//! same size bound (`max_request`, larger: `OUT_OF_RANGE`), no compression accepted (the
//! generated server here enables none: a compressed request is refused with `UNIMPLEMENTED`
//! and `grpc-accept-encoding: identity`, as tonic does). The route sits where the generated
//! server sat, inside the mutual-TLS accept loop, the identity interceptor and the stop's
//! hold (`loggate_core::daemon::serve_mtls`): the request's extensions (the caller's identity
//! check, its address) reach the handler as before.
//!
//! **The response** is what tonic sent: a refusal before the stream is tonic's trailers-only
//! response ([`Status::into_http`]); an opened stream is `content-type: application/grpc`, its
//! frames, then the trailers of its final status ([`FramedBody`]).

use crate::frames::FramedBody;
use crate::server::AgentService;
use loggate_proto as pb;
use loggate_proto::agent_server::AgentServer;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codec::{Codec, Streaming};
use tonic::codegen::{http, BoxFuture, Service};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::NamedService;
use tonic::{Request, Status};

/// The path of `ReadLog`, served with the agent's own frames.
pub const READ_LOG_PATH: &str = "/loggate.v1.Agent/ReadLog";
/// The path of `ReadJournal`, served with the agent's own frames.
pub const READ_JOURNAL_PATH: &str = "/loggate.v1.Agent/ReadJournal";

/// The agent's service as served (module docs).
#[derive(Clone)]
pub struct AgentRoutes {
    service: Arc<AgentService>,
    generated: AgentServer<AgentService>,
    max_request: usize,
}

impl AgentRoutes {
    /// Serves `service`, refusing requests larger than `max_request` bytes on every route.
    pub fn new(service: AgentService, max_request: usize) -> AgentRoutes {
        let service = Arc::new(service);
        AgentRoutes {
            generated: AgentServer::from_arc(service.clone())
                .max_decoding_message_size(max_request),
            service,
            max_request,
        }
    }
}

impl NamedService for AgentRoutes {
    const NAME: &'static str = pb::agent_server::SERVICE_NAME;
}

impl Service<http::Request<Body>> for AgentRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let service = self.service.clone();
        let max = self.max_request;
        match request.uri().path() {
            READ_LOG_PATH => Box::pin(respond(async move {
                let request = decode_request::<pb::ReadLogRequest>(request, max).await?;
                service.open_read_log(request).await
            })),
            READ_JOURNAL_PATH => Box::pin(respond(async move {
                let request = decode_request::<pb::ReadJournalRequest>(request, max).await?;
                service.open_read_journal(request).await
            })),
            _ => self.generated.call(request),
        }
    }
}

/// The response of a read: its frames, or the refusal as tonic writes one.
async fn respond<S>(
    opened: impl Future<Output = Result<S, Status>>,
) -> Result<http::Response<Body>, Infallible>
where
    S: tokio_stream::Stream<Item = crate::stream::Item> + Unpin + Send + 'static,
{
    Ok(match opened.await {
        Err(status) => status.into_http(),
        Ok(frames) => {
            let mut response = http::Response::new(Body::new(FramedBody::new(frames)));
            *response.version_mut() = http::Version::HTTP_2;
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            response
        }
    })
}

/// The one request message of a server-streaming call, read as tonic's server reads it
/// (module docs), with the HTTP request's headers (and trailers) as metadata and its
/// extensions.
async fn decode_request<M>(request: http::Request<Body>, max: usize) -> Result<Request<M>, Status>
where
    M: prost::Message + Default + Send + 'static,
{
    if let Some(encoding) = request.headers().get("grpc-encoding") {
        if encoding.as_bytes() != b"identity" {
            let named = match std::str::from_utf8(encoding.as_bytes()) {
                Ok(s) => s.to_string(),
                Err(_) => format!("{:?}", encoding.as_bytes()),
            };
            let mut status = Status::unimplemented(format!(
                "Content is compressed with `{named}` which isn't supported"
            ));
            status.metadata_mut().insert(
                "grpc-accept-encoding",
                MetadataValue::from_static("identity"),
            );
            return Err(status);
        }
    }
    let (parts, body) = request.into_parts();
    let decoder = tonic_prost::ProstCodec::<M, M>::default().decoder();
    let mut stream = Streaming::new_request(decoder, body, None, Some(max));
    let message = stream
        .message()
        .await?
        .ok_or_else(|| Status::internal("Missing request message."))?;
    let mut headers = parts.headers;
    if let Some(trailers) = stream.trailers().await? {
        headers.extend(trailers.into_headers());
    }
    Ok(Request::from_parts(
        MetadataMap::from_headers(headers),
        parts.extensions,
        message,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::BodyExt;
    use prost::Message;
    use std::sync::Mutex;

    /// The request bound of these tests.
    const MAX: usize = 1024;

    /// A server-streaming handler that answers with a status naming what it was given: the
    /// request's path field and its `x-trailer` metadata.
    fn answer(request: Request<pb::ReadLogRequest>) -> Status {
        let trailer = request
            .metadata()
            .get("x-trailer")
            .map(|v| v.to_str().unwrap_or("?").to_string());
        Status::aborted(format!("{:?} {trailer:?}", request.get_ref().path))
    }

    /// tonic's generated server's handler of a server-streaming call, with [`answer`].
    #[derive(Clone)]
    struct Answer;

    impl Service<Request<pb::ReadLogRequest>> for Answer {
        type Response = tonic::Response<tokio_stream::Empty<Result<pb::ReadLogChunk, Status>>>;
        type Error = Status;
        type Future = BoxFuture<Self::Response, Status>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<pb::ReadLogRequest>) -> Self::Future {
            Box::pin(async move { Err(answer(request)) })
        }
    }

    /// What tonic's server answers to `request` (as the generated server calls it).
    async fn tonic_answers(request: http::Request<Body>) -> http::Response<Body> {
        let codec = tonic_prost::ProstCodec::<pb::ReadLogChunk, pb::ReadLogRequest>::default();
        tonic::server::Grpc::new(codec)
            .max_decoding_message_size(MAX)
            .server_streaming(Answer, request)
            .await
    }

    /// What the agent's route answers to `request`, its handler being [`answer`].
    async fn route_answers(request: http::Request<Body>) -> http::Response<Body> {
        let answered = respond(async move {
            let request = decode_request::<pb::ReadLogRequest>(request, MAX).await?;
            Err::<tokio_stream::Empty<crate::stream::Item>, _>(answer(request))
        })
        .await;
        match answered {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    /// One gRPC message frame (uncompressed) of `message`.
    fn frame(message: &impl Message) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut out = vec![0u8];
        out.extend(
            u32::try_from(body.len())
                .expect("a test message")
                .to_be_bytes(),
        );
        out.extend(body);
        out
    }

    fn read_of(path: &str) -> pb::ReadLogRequest {
        pb::ReadLogRequest {
            path: path.to_string(),
            ..Default::default()
        }
    }

    /// A `ReadLog` request of `body` (and its `trailers`), with `headers`.
    fn request(
        headers: &[(&'static str, &'static str)],
        body: Vec<u8>,
        trailers: Option<http::HeaderMap>,
    ) -> http::Request<Body> {
        let mut frames = vec![Ok::<_, Infallible>(Frame::data(Bytes::from(body)))];
        frames.extend(trailers.map(|t| Ok(Frame::trailers(t))));
        let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
        let mut request = http::Request::new(Body::new(body));
        *request.uri_mut() = http::Uri::from_static(READ_LOG_PATH);
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, http::HeaderValue::from_static(value));
        }
        request
    }

    /// The status a response carries, after checking that the route's response is tonic's:
    /// the same HTTP status, headers and (empty) body.
    async fn same_answer(make: impl Fn() -> http::Request<Body>) -> Status {
        let (ours, our_body) = route_answers(make()).await.into_parts();
        let (tonics, tonic_body) = tonic_answers(make()).await.into_parts();
        assert_eq!(ours.status, tonics.status);
        assert_eq!(ours.headers, tonics.headers);
        let our_body = our_body.collect().await.expect("body").to_bytes();
        let tonic_body = tonic_body.collect().await.expect("body").to_bytes();
        assert_eq!(our_body, tonic_body);
        Status::from_header_map(&ours.headers).expect("a trailers-only status")
    }

    #[tokio::test]
    async fn a_request_is_decoded_as_tonic_decodes_it() {
        let status = same_answer(|| request(&[], frame(&read_of("/var/log/a")), None)).await;
        assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
        assert_eq!(status.message(), "\"/var/log/a\" None");
        // `identity` is no compression.
        let status = same_answer(|| {
            request(
                &[("grpc-encoding", "identity")],
                frame(&read_of("/var/log/a")),
                None,
            )
        })
        .await;
        assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    }

    #[tokio::test]
    async fn a_compressed_request_is_refused_as_tonic_refuses_it() {
        let status = same_answer(|| {
            request(
                &[("grpc-encoding", "gzip")],
                frame(&read_of("/var/log/a")),
                None,
            )
        })
        .await;
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
        assert_eq!(
            status
                .metadata()
                .get("grpc-accept-encoding")
                .map(|v| v.as_bytes()),
            Some(&b"identity"[..])
        );
    }

    #[tokio::test]
    async fn an_empty_request_body_is_refused_as_tonic_refuses_it() {
        let status = same_answer(|| request(&[], Vec::new(), None)).await;
        assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
        assert_eq!(status.message(), "Missing request message.");
    }

    /// A second request message is read and dropped: the handler gets the first.
    #[tokio::test]
    async fn of_two_request_messages_the_first_is_served_as_tonic_serves_it() {
        let status = same_answer(|| {
            let mut body = frame(&read_of("/var/log/first"));
            body.extend(frame(&read_of("/var/log/second")));
            request(&[], body, None)
        })
        .await;
        assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
        assert_eq!(status.message(), "\"/var/log/first\" None");
    }

    #[tokio::test]
    async fn an_oversized_request_is_out_of_range_as_in_tonic() {
        let status = same_answer(|| request(&[], frame(&read_of(&"a".repeat(MAX))), None)).await;
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
        // At the bound: served.
        let status =
            same_answer(|| request(&[], frame(&read_of(&"a".repeat(MAX - 3))), None)).await;
        assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    }

    /// The request body's trailers reach the handler as metadata, as in tonic.
    #[tokio::test]
    async fn request_trailers_are_metadata_as_in_tonic() {
        let status = same_answer(|| {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-trailer", http::HeaderValue::from_static("t"));
            request(&[], frame(&read_of("/var/log/a")), Some(trailers))
        })
        .await;
        assert_eq!(status.message(), "\"/var/log/a\" Some(\"t\")");
    }

    /// The paths the route serves are the ones the generated client calls, so the generated
    /// server's read stubs are never reached by a read.
    #[tokio::test]
    async fn the_routes_paths_are_the_ones_clients_call() {
        #[derive(Clone, Default)]
        struct PathOf(Arc<Mutex<Vec<String>>>);
        impl Service<http::Request<Body>> for PathOf {
            type Response = http::Response<Body>;
            type Error = Infallible;
            type Future = std::future::Ready<Result<http::Response<Body>, Infallible>>;
            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, request: http::Request<Body>) -> Self::Future {
                if let Ok(mut paths) = self.0.lock() {
                    paths.push(request.uri().path().to_string());
                }
                std::future::ready(Ok(Status::unavailable("recorded").into_http()))
            }
        }
        let paths = PathOf::default();
        let mut client = pb::agent_client::AgentClient::new(paths.clone());
        let _ = client.read_log(read_of("/var/log/a")).await;
        let _ = client.read_journal(pb::ReadJournalRequest::default()).await;
        assert_eq!(
            *paths.0.lock().expect("lock"),
            [READ_LOG_PATH, READ_JOURNAL_PATH]
        );
    }
}
