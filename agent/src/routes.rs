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
