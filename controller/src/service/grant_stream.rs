//! The wire of the `WatchGrants` stream: every change is encoded once, whatever the number of
//! agents it is sent to.
//!
//! **Why.** A grant or a revocation addressed to a label reaches every agent holding it: at
//! 10,000 agents, tonic's generated service (the prost codec) cloned the shared
//! [`pb::GrantEvent`] for each stream (to stamp the cluster id), encoded the clone and dropped it.
//! Here the change feed encodes each change once, cluster id and epoch included, into an
//! [`EncodedEvent`] (reference-counted bytes), and every stream's response is written from those
//! bytes by [`EncodedEventCodec`]: one copy into the stream's gRPC frame, no allocation, no
//! encoding per agent. What the agent receives is the same protobuf message, byte for byte, as
//! prost would have encoded it: agents decode it with the ordinary generated client.
//!
//! **Where.** [`ControllerRoutes`] wraps the generated `ControllerServer`: the one path
//! `/loggate.v1.Controller/WatchGrants` is served with this codec, every other method by the
//! generated server unchanged. It sits inside the mutual-TLS accept loop and its identity
//! interceptor like the generated server did (the peer's identity is checked in
//! [`ControllerService::open_watch`], as before). The request is decoded with prost under the
//! same size bound as every other request of the service; a malformed one is refused with
//! `INVALID_ARGUMENT` before any stream is opened.

use super::ControllerService;
use bytes::{BufMut, Bytes};
use loggate_proto as pb;
use loggate_proto::controller_server::ControllerServer;
use prost::Message;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

/// The path of the one method served with [`EncodedEventCodec`].
pub const WATCH_GRANTS_PATH: &str = "/loggate.v1.Controller/WatchGrants";

/// One `GrantEvent`, protobuf-encoded once: cloning it shares the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent(Bytes);

/// Test hook: how many events were encoded, by epoch (a test gives its feed an epoch of its
/// own, so tests running at once do not count each other's).
#[cfg(test)]
pub(crate) static ENCODES_BY_EPOCH: std::sync::Mutex<std::collections::BTreeMap<String, usize>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

impl EncodedEvent {
    /// Encodes `event` (with prost: the bytes any protobuf decoder of `GrantEvent` reads).
    pub fn encode(event: &pb::GrantEvent) -> EncodedEvent {
        #[cfg(test)]
        {
            *ENCODES_BY_EPOCH
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(event.epoch.clone())
                .or_default() += 1;
        }
        EncodedEvent(Bytes::from(event.encode_to_vec()))
    }

    /// The event back, as an agent decodes it (tests).
    #[cfg(test)]
    pub fn decode(&self) -> Result<pb::GrantEvent, prost::DecodeError> {
        pb::GrantEvent::decode(self.0.as_ref())
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The `WatchGrants` codec: the response is written from an [`EncodedEvent`]'s bytes; the
/// request is decoded with prost.
#[derive(Debug, Clone, Copy, Default)]
pub struct EncodedEventCodec;

/// Writes an [`EncodedEvent`] into the stream's frame as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct EncodedEventEncoder;

/// Decodes the `WatchGrantsRequest`, refusing malformed bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchRequestDecoder;

impl Codec for EncodedEventCodec {
    type Encode = EncodedEvent;
    type Decode = pb::WatchGrantsRequest;
    type Encoder = EncodedEventEncoder;
    type Decoder = WatchRequestDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedEventEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        WatchRequestDecoder
    }
}

impl Encoder for EncodedEventEncoder {
    type Item = EncodedEvent;
    type Error = Status;

    fn encode(&mut self, item: EncodedEvent, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let bytes = item.as_bytes();
        dst.reserve(bytes.len());
        dst.put_slice(bytes);
        Ok(())
    }
}

impl Decoder for WatchRequestDecoder {
    type Item = pb::WatchGrantsRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        pb::WatchGrantsRequest::decode(src)
            .map(Some)
            .map_err(|e| {
                Status::invalid_argument(format!(
                    "the WatchGrants request is not a valid protobuf message ({e}); send it with loggate-agent"
                ))
            })
    }
}

/// What both routes of the controller's service (the generated server, and `WatchGrants`'s
/// own) are configured with, in one place: a limit or a compression setting added here applies
/// to both, never to one route only. Neither route compresses (none is enabled here).
#[derive(Debug, Clone, Copy)]
pub struct RouteConfig {
    /// The largest request accepted, in bytes (larger: `OUT_OF_RANGE`).
    pub max_request_bytes: usize,
    /// The largest response message sent, in bytes; `None`: tonic's default.
    pub max_response_bytes: Option<usize>,
}

impl RouteConfig {
    fn generated(self, service: Arc<ControllerService>) -> ControllerServer<ControllerService> {
        let server =
            ControllerServer::from_arc(service).max_decoding_message_size(self.max_request_bytes);
        match self.max_response_bytes {
            Some(max) => server.max_encoding_message_size(max),
            None => server,
        }
    }

    fn watch_grants(self) -> tonic::server::Grpc<EncodedEventCodec> {
        tonic::server::Grpc::new(EncodedEventCodec)
            .apply_max_message_size_config(Some(self.max_request_bytes), self.max_response_bytes)
    }
}

/// The controller's gRPC service as served: the generated `ControllerServer`, with
/// `WatchGrants` answered from pre-encoded events (module docs).
#[derive(Clone)]
pub struct ControllerRoutes {
    service: Arc<ControllerService>,
    generated: ControllerServer<ControllerService>,
    config: RouteConfig,
}

impl ControllerRoutes {
    /// Serves `service`, refusing requests larger than `max_request_bytes`.
    pub fn new(service: Arc<ControllerService>, max_request_bytes: usize) -> ControllerRoutes {
        ControllerRoutes::with_config(
            service,
            RouteConfig {
                max_request_bytes,
                max_response_bytes: None,
            },
        )
    }

    /// Serves `service` with `config` on both routes.
    pub fn with_config(service: Arc<ControllerService>, config: RouteConfig) -> ControllerRoutes {
        ControllerRoutes {
            generated: config.generated(service.clone()),
            service,
            config,
        }
    }
}

impl NamedService for ControllerRoutes {
    const NAME: &'static str = pb::controller_server::SERVICE_NAME;
}

/// `WatchGrants` as a server-streaming method of pre-encoded events.
struct WatchGrantsMethod(Arc<ControllerService>);

impl tonic::server::ServerStreamingService<pb::WatchGrantsRequest> for WatchGrantsMethod {
    type Response = EncodedEvent;
    type ResponseStream = super::EncodedEventStream;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<pb::WatchGrantsRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.open_watch(request).await.map(Response::new) })
    }
}

impl Service<http::Request<Body>> for ControllerRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != WATCH_GRANTS_PATH {
            return self.generated.call(request);
        }
        let method = WatchGrantsMethod(self.service.clone());
        let mut grpc = self.config.watch_grants();
        Box::pin(async move { Ok(grpc.server_streaming(method, request).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revocation() -> pb::GrantEvent {
        pb::GrantEvent {
            revision: 42,
            event: Some(pb::grant_event::Event::Revocation(pb::Revocation {
                grant_id: "g-1".into(),
                revoked_at_unix: 1_700_000_000,
                revoked_by: "spiffe://loggate.local/user/admin".into(),
                reason: "done".into(),
            })),
            epoch: "e1".into(),
            cluster_id: "c1".into(),
        }
    }

    #[test]
    fn an_encoded_event_is_the_bytes_prost_would_send() {
        let event = revocation();
        let encoded = EncodedEvent::encode(&event);
        assert_eq!(encoded.as_bytes(), event.encode_to_vec().as_slice());
        assert_eq!(encoded.decode().unwrap(), event);
    }

    /// A controller service on a fresh store, served through [`ControllerRoutes`].
    fn routes() -> (
        tempfile::TempDir,
        tokio::sync::watch::Sender<bool>,
        ControllerRoutes,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::Store::open(&dir.path().join("state.db")).unwrap());
        let log =
            loggate_core::audit::AuditLog::open(&dir.path().join("audit.jsonl"), "c").unwrap();
        let audit = Arc::new(loggate_core::audit::SharedAuditLog::new(log).unwrap());
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let service = ControllerService::new(
            store,
            loggate_core::grant::SigningKey::generate().unwrap(),
            "loggate.local".into(),
            super::super::Policy {
                admins: Default::default(),
                max_ttl: std::time::Duration::from_secs(3600),
                redaction_profiles: vec!["default".into()],
            },
            audit,
            stopping,
            "e1".into(),
        )
        .unwrap();
        (
            dir,
            stop,
            ControllerRoutes::new(Arc::new(service), 64 * 1024),
        )
    }

    /// A gRPC request to `path` whose one message is `payload`, framed as a client frames it.
    fn grpc_request(path: &str, payload: &[u8]) -> http::Request<Body> {
        let mut frame = vec![0u8];
        frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(payload);
        http::Request::builder()
            .method("POST")
            .uri(format!("http://controller{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Body::new(http_body_util::Full::new(Bytes::from(frame))))
            .unwrap()
    }

    /// The status a response carries in its headers (a refusal before any message).
    fn refusal(response: &http::Response<Body>) -> Status {
        Status::from_header_map(response.headers()).expect("a gRPC status in the headers")
    }

    #[tokio::test]
    async fn a_malformed_watch_request_is_refused_as_invalid_before_a_stream_opens() {
        let (_dir, _stop, mut routes) = routes();
        // Field 1 (agent_id) announcing 200 bytes with 3 behind it: truncated.
        let request = grpc_request(WATCH_GRANTS_PATH, &[0x0a, 0xc8, 0x01, b'a', b'b', b'c']);
        let response = routes.call(request).await.unwrap();
        let refused = refusal(&response);
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(
            refused
                .message()
                .contains("WatchGrants request is not a valid protobuf"),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn the_watch_route_refuses_a_caller_whose_identity_was_not_established() {
        // Served by the pre-encoded route, not the generated server: the identity check of
        // `open_watch` still holds (here no identity interceptor ran: fail closed).
        let (_dir, _stop, mut routes) = routes();
        let request = pb::WatchGrantsRequest {
            agent_id: "web-1".into(),
            ..Default::default()
        };
        let response = routes
            .call(grpc_request(WATCH_GRANTS_PATH, &request.encode_to_vec()))
            .await
            .unwrap();
        let refused = refusal(&response);
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    }

    /// The route's size bound holds on `WatchGrants` too (`RouteConfig::watch_grants`): a
    /// request over it is refused before it is decoded.
    #[tokio::test]
    async fn a_watch_request_over_the_size_bound_is_refused_through_the_route() {
        let (_dir, _stop, mut routes) = routes();
        let request = pb::WatchGrantsRequest {
            agent_id: "web-1".into(),
            listen_addr: "a".repeat(64 * 1024 + 1),
            ..Default::default()
        };
        let response = routes
            .call(grpc_request(WATCH_GRANTS_PATH, &request.encode_to_vec()))
            .await
            .unwrap();
        let refused = refusal(&response);
        assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    }

    /// The generated server's `watch_grants` is never the route served; reached anyway, it
    /// fails as an internal error instead of running a second stream path.
    #[tokio::test]
    async fn the_generated_watch_grants_fails_as_internal() {
        use pb::controller_server::Controller;
        let (_dir, _stop, routes) = routes();
        let answer = routes
            .service
            .watch_grants(Request::new(pb::WatchGrantsRequest::default()))
            .await;
        match answer {
            Ok(_) => panic!("the generated WatchGrants answered a stream"),
            Err(status) => assert_eq!(status.code(), tonic::Code::Internal, "{status:?}"),
        }
    }
}
