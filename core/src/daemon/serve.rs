//! `serve_mtls`: a daemon's gRPC service over the mTLS accept loop ([`crate::tls_accept`]),
//! with the caller's identity established once per request by one interceptor.
//!
//! The interceptor reads the client certificate the handshake verified (chained to our CA; a
//! connection without one never gets here) and puts a [`PeerCheck`] into the request's
//! extensions: the [`Identity`] it names, or why it names none we accept (not ours, no SPIFFE
//! ID of our trust domain). Each handler then asks [`peer_identity`] for the role it serves.
//! A request without a `PeerCheck` — a service not wrapped by the interceptor — is refused:
//! fail closed, never "anonymous".
//!
//! The interceptor also holds a table from gRPC method path to the role that may call it
//! ([`CONTROLLER_METHODS`], [`AGENT_METHODS`]; a unit test checks it against every method of
//! the proto): a method not in it is refused, and a caller of another role is refused before
//! the handler runs, so a handler that forgets [`peer_identity`] is still never anonymous.
//! Entries marked [`MethodAccess::CheckedInHandler`] pass every caller on: their handler
//! checks the identity itself, to audit a refusal (the agent's `ReadLog`, `Status`).

use crate::audit::SharedAuditLog;
use crate::identity::{Identity, Role};
use crate::tls::TlsFiles;
use anyhow::Context;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};

/// A peer that stops answering HTTP/2 pings is dropped after this (the accept loop also caps
/// the connections per identity and in all, and sets TCP keepalive).
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(20);

/// How long the graceful part of a stop may take: once the shutdown future has resolved, the
/// open requests get this long to end, then every connection still open is closed (a peer
/// that stopped reading must not hold a daemon's stop until systemd kills it).
pub const GRACEFUL_STOP_WITHIN: Duration = Duration::from_secs(5);

/// How long a stop waits, after closing the connections, for them and what they carried
/// (requests, handshakes) to end. A closed connection's task ends at its next poll, and a
/// request with it; only a handler blocking its thread can take longer, and is left behind
/// (logged) after this.
pub const CLOSED_WITHIN: Duration = Duration::from_secs(2);

/// What the identity interceptor found about a request's caller, kept in its extensions.
#[derive(Debug, Clone)]
pub struct PeerCheck(Result<Identity, PeerRefused>);

/// Why a caller has no identity we accept.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PeerRefused {
    /// No client certificate on the connection.
    NoCertificate,
    /// A certificate that names no identity of our trust domain; the reason says why.
    Unusable(String),
    /// A certificate of an identity removed after it was issued (`loggate agent remove`).
    Revoked(String),
}

/// Identities whose certificates are refused: each SPIFFE id with a cut-off time, and every
/// certificate of that id whose validity starts at or before the cut-off is revoked (so one
/// issued later — a re-enrolment after a removal — is not). Kept in memory, read on every
/// request by [`IdentifyPeer`]; the daemon refreshes it from its store. Watchers are told of
/// every change ([`Revocations::subscribe`]) to cut the streams of identities revoked.
#[derive(Debug)]
pub struct Revocations {
    cutoffs: std::sync::RwLock<std::collections::HashMap<String, i64>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations {
            cutoffs: Default::default(),
            changed: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Revocations {
    /// Replaces the whole set (a refresh from the store); watchers are woken when it changed.
    pub fn replace(&self, cutoffs: std::collections::HashMap<String, i64>) {
        let mut held = self.cutoffs.write().unwrap_or_else(|p| p.into_inner());
        if *held != cutoffs {
            *held = cutoffs;
            drop(held);
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Whether a certificate for `spiffe_id` whose validity starts at `not_before` (Unix s)
    /// is revoked.
    pub fn is_revoked(&self, spiffe_id: &str, not_before: i64) -> bool {
        self.cutoffs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(spiffe_id)
            .is_some_and(|cutoff| not_before <= *cutoff)
    }

    /// Wakes on every change of the set.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Whether a revoked SPIFFE id is a person's (`spiffe://<td>/user/<name>`): locked out, not
/// removed.
fn identity_is_user(spiffe_id: &str) -> bool {
    spiffe_id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, path)| path.starts_with("user/"))
}

/// The start of a certificate's validity (Unix s), `None` when it does not parse.
pub fn certificate_not_before(der: &[u8]) -> Option<i64> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, cert)| cert.validity().not_before.timestamp())
}

/// Who may call a gRPC method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodAccess {
    /// Only identities of this role; others are refused before the handler.
    Role(Role),
    /// Every caller reaches the handler, which checks for this role itself (with
    /// [`peer_identity`]) so that it can audit a refusal.
    CheckedInHandler(Role),
    /// No identity at all: the pre-authentication service ([`ENROLMENT_METHODS`]), served
    /// only by [`serve_pre_auth`] on a listener that asks for no certificate. The handler
    /// judges the caller by what the request carries (a join token).
    Anonymous,
}

/// The methods of `loggate.v1.Controller` and who may call them.
pub const CONTROLLER_METHODS: &[(&str, MethodAccess)] = &[
    (
        "/loggate.v1.Controller/WatchGrants",
        MethodAccess::Role(Role::Agent),
    ),
    (
        "/loggate.v1.Controller/IssueGrant",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/ListGrants",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/RevokeGrant",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/ResolveAgent",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/WhoAmI",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/ReportCheckpoints",
        MethodAccess::Role(Role::Agent),
    ),
    (
        "/loggate.v1.Controller/ListCheckpoints",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/CheckPolicy",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/ReloadPolicy",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/RequestAccess",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/ApproveRequest",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/DenyRequest",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/CancelRequest",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/GetRequest",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/ListRequests",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/AccessReview",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/AckBreakGlass",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/CreateJoinToken",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/ListJoinTokens",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/RevokeJoinToken",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/ListAgents",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/RemoveAgent",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/SetUserLock",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/ListUsers",
        MethodAccess::Role(Role::User),
    ),
    (
        "/loggate.v1.Controller/RenewCertificate",
        MethodAccess::Role(Role::Agent),
    ),
];

/// The methods of `loggate.v1.Agent` and who may call them.
pub const AGENT_METHODS: &[(&str, MethodAccess)] = &[
    (
        "/loggate.v1.Agent/ReadLog",
        // The handler audits `read.denied` (`identity_refused`) for any other caller.
        MethodAccess::CheckedInHandler(Role::User),
    ),
    (
        "/loggate.v1.Agent/Status",
        // Users only: the handler audits `agent.status_denied` (`identity_refused`) for any
        // other caller (who probes whether the bypass audit runs matters), then requires a
        // name in the agent's `status_readers`.
        MethodAccess::CheckedInHandler(Role::User),
    ),
    (
        "/loggate.v1.Agent/ListLogs",
        // Gated like a read: the handler audits `read.denied` (`identity_refused`) for any
        // other caller, then needs a usable grant.
        MethodAccess::CheckedInHandler(Role::User),
    ),
    (
        "/loggate.v1.Agent/ReadJournal",
        // A read of the journal: the handler audits `read.denied` (`identity_refused`) for any
        // other caller, then needs a grant naming the unit.
        MethodAccess::CheckedInHandler(Role::User),
    ),
];

/// The methods of `loggate.v1.Enrolment`, the controller's pre-authentication service: every
/// one [`MethodAccess::Anonymous`]. Kept apart from [`CONTROLLER_METHODS`] so that what is
/// reachable without a certificate is this short list, and nothing else.
pub const ENROLMENT_METHODS: &[(&str, MethodAccess)] = &[
    ("/loggate.v1.Enrolment/Enrol", MethodAccess::Anonymous),
    // A person signing in: judged on the ID token, nonce and CSR the request carries.
    ("/loggate.v1.Enrolment/SignIn", MethodAccess::Anonymous),
    // Public settings of the IdP (issuer, client id, scopes).
    (
        "/loggate.v1.Enrolment/SignInConfig",
        MethodAccess::Anonymous,
    ),
];

/// The method table of a gRPC service by its name (`NamedService::NAME`); an unknown
/// service has none, so every call to it is refused.
pub fn methods_of(service: &str) -> &'static [(&'static str, MethodAccess)] {
    match service {
        "loggate.v1.Controller" => CONTROLLER_METHODS,
        "loggate.v1.Agent" => AGENT_METHODS,
        "loggate.v1.Enrolment" => ENROLMENT_METHODS,
        _ => &[],
    }
}

/// The request's gRPC method path (`/package.Service/Method`), put into its extensions by
/// [`WithMethodPath`] for the interceptor (which sees no URI).
#[derive(Debug, Clone)]
struct MethodPath(String);

/// Puts the [`MethodPath`] of every request into its extensions, then calls `S`.
#[derive(Debug, Clone)]
pub struct WithMethodPath<S>(S);

impl<S: NamedService> NamedService for WithMethodPath<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tonic::codegen::Service<http::Request<B>> for WithMethodPath<S>
where
    S: tonic::codegen::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = MethodPath(request.uri().path().to_owned());
        request.extensions_mut().insert(path);
        self.0.call(request)
    }
}

/// The one interceptor that puts a [`PeerCheck`] into every request and refuses methods not
/// in its table or callers of another role (see the module docs).
#[derive(Debug, Clone)]
pub struct IdentifyPeer {
    trust_domain: Arc<str>,
    methods: &'static [(&'static str, MethodAccess)],
    revocations: Option<Arc<Revocations>>,
}

impl IdentifyPeer {
    /// An interceptor for one daemon: peers must carry a certificate of `trust_domain`, and only
    /// the methods in `methods` are served, each to the roles its [`MethodAccess`] names; no
    /// certificate is checked for revocation until [`IdentifyPeer::with_revocations`] gives a list.
    pub fn new(trust_domain: &str, methods: &'static [(&'static str, MethodAccess)]) -> Self {
        IdentifyPeer {
            trust_domain: trust_domain.into(),
            methods,
            revocations: None,
        }
    }

    /// Refuses the certificates `revocations` lists, wherever the identity is taken.
    pub fn with_revocations(mut self, revocations: Option<Arc<Revocations>>) -> Self {
        self.revocations = revocations;
        self
    }

    fn check<T>(&self, request: &Request<T>) -> PeerCheck {
        let leaf = request
            .peer_certs()
            .and_then(|certs| certs.first().cloned());
        PeerCheck(match leaf {
            None => Err(PeerRefused::NoCertificate),
            Some(leaf) => Identity::from_certificate(leaf.as_ref(), &self.trust_domain)
                .map_err(|e| PeerRefused::Unusable(e.to_string()))
                .and_then(|identity| self.not_revoked(identity, leaf.as_ref())),
        })
    }

    fn not_revoked(&self, identity: Identity, leaf: &[u8]) -> Result<Identity, PeerRefused> {
        let Some(revocations) = &self.revocations else {
            return Ok(identity);
        };
        // A certificate whose start cannot be read is judged issued at the beginning of time:
        // revoked whenever its identity is.
        let not_before = certificate_not_before(leaf).unwrap_or(i64::MIN);
        if revocations.is_revoked(identity.spiffe_id(), not_before) {
            return Err(PeerRefused::Revoked(identity.spiffe_id().to_string()));
        }
        Ok(identity)
    }
}

impl tonic::service::Interceptor for IdentifyPeer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let path = request
            .extensions()
            .get::<MethodPath>()
            .map(|p| p.0.as_str());
        let access = path.and_then(|p| {
            self.methods
                .iter()
                .find(|(method, _)| *method == p)
                .map(|(_, access)| *access)
        });
        let Some(access) = access else {
            return Err(Status::unimplemented(
                "this method is not served here; the request is refused",
            ));
        };
        let check = self.check(&request);
        if let MethodAccess::Role(role) = access {
            identity_of_role(&check, role)?;
        }
        request.extensions_mut().insert(check);
        Ok(request)
    }
}

/// The verified identity of the caller of `request`, which must have `role`. Refused
/// (`unauthenticated`) without a usable client certificate, and when the identity interceptor
/// did not run; `permission_denied` for an identity of another role.
pub fn peer_identity<T>(request: &Request<T>, role: Role) -> Result<Identity, Status> {
    let Some(check) = request.extensions().get::<PeerCheck>() else {
        tracing::error!("a request reached a handler without the identity interceptor; refused");
        return Err(Status::unauthenticated(
            "the caller's identity was not established; the request is refused",
        ));
    };
    identity_of_role(check, role)
}

/// The identity `check` found, which must have `role`.
fn identity_of_role(PeerCheck(check): &PeerCheck, role: Role) -> Result<Identity, Status> {
    let identity = match check {
        Ok(identity) => identity.clone(),
        Err(PeerRefused::NoCertificate) => {
            return Err(Status::unauthenticated("a client certificate is required"))
        }
        Err(PeerRefused::Unusable(why)) => {
            return Err(Status::unauthenticated(format!(
                "unusable client certificate: {why}"
            )))
        }
        Err(PeerRefused::Revoked(id)) if identity_is_user(id) => {
            return Err(Status::unauthenticated(format!(
                "the certificate of {id} was revoked (an admin locked this person out with \
                 `loggate user lock`); once an admin unlocks them, run `loggate login`"
            )))
        }
        Err(PeerRefused::Revoked(id)) => {
            return Err(Status::unauthenticated(format!(
                "the certificate of {id} was revoked (the agent was removed, or enrolled again \
                 after this certificate was issued); enrol it again \
                 with a new join token (loggate-agent enrol)"
            )))
        }
    };
    if identity.role() != role {
        return Err(Status::permission_denied(format!(
            "{identity} may not call this: it is for {} identities",
            match role {
                Role::Controller => "controller",
                Role::Agent => "agent",
                Role::User => "user",
            }
        )));
    }
    Ok(identity)
}

/// How a daemon serves over mTLS.
pub struct MtlsSettings<'a, D> {
    /// The daemon's CA, certificate and key files (PEM) it serves with.
    pub tls: &'a TlsFiles,
    /// The trust domain whose SPIFFE IDs are accepted; certificates of another domain are refused.
    pub trust_domain: &'a str,
    /// Who refuses in `tls.refused` records and what the server's errors name
    /// (`loggate agent`, `loggate controller`).
    pub service_name: &'static str,
    /// The daemon whose audit log receives the `tls.refused` records.
    pub audit: Arc<D>,
    /// Certificates refused although they chain to the CA (removed agents), checked on every
    /// request; `None`: none are.
    pub revocations: Option<Arc<Revocations>>,
    /// Each change reloads the certificate and key this server presents from `tls` (a
    /// renewal), without a restart; a reload that fails keeps the one in use (logged).
    pub reload_cert: Option<tokio::sync::watch::Receiver<u64>>,
    /// HTTP/2 streams one connection may have open at once (`None`: the HTTP/2 library's
    /// default, unbounded by this side).
    pub max_streams_per_connection: Option<u32>,
    /// rustls's send-buffer limit per connection on the mutual-TLS port
    /// ([`crate::tls_accept::AcceptOptions::send_buffer`]; a pre-authentication port always
    /// keeps rustls's default).
    pub send_buffer: Option<usize>,
}

/// What the servers here serve: a tonic service (every method of one gRPC service, named by
/// [`NamedService`]) that can be cloned per connection and sent between threads.
pub trait GrpcService:
    tonic::codegen::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> GrpcService for S where
    S: tonic::codegen::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Serves `service` on `listener` over mutual TLS until `shutdown` resolves, then lets the
/// open requests finish. Every handshake is checked by [`crate::tls_accept::incoming`]
/// (refusals audited to `settings.audit`); every request goes through [`IdentifyPeer`].
pub async fn serve_mtls<S, D>(
    listener: TcpListener,
    settings: MtlsSettings<'_, D>,
    service: S,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    S: GrpcService,
    D: AsRef<SharedAuditLog> + Send + Sync + 'static,
{
    let options = crate::tls_accept::AcceptOptions {
        send_buffer: settings.send_buffer,
        ..crate::tls_accept::AcceptOptions::MUTUAL
    };
    serve_tls(listener, settings, options, service, shutdown).await
}

/// Handshakes in progress at once on a pre-authentication port, at most: it is reached by
/// agents enrolling (a few at a time, a fleet roll-out at most) and people signing in, never by
/// a fleet reconnecting, so it gets a quarter of the main port's pool.
pub const PRE_AUTH_MAX_HANDSHAKES: usize = crate::tls_accept::MAX_HANDSHAKES / 4;

/// Serves the pre-authentication `service` (only one whose methods are all
/// [`MethodAccess::Anonymous`], e.g. `loggate.v1.Enrolment`) on `listener` over TLS with our
/// certificate and **no client certificate asked**, until `shutdown` resolves. The accept
/// loop's deadlines, pool ([`PRE_AUTH_MAX_HANDSHAKES`]), connection caps and audited refusals
/// are the mutual-TLS ports'; the method table refuses every method that is not the
/// service's (a `Controller` method sent here is unknown); the request size bound and the
/// per-address attempt budget are the service's own.
pub async fn serve_pre_auth<S, D>(
    listener: TcpListener,
    settings: MtlsSettings<'_, D>,
    service: S,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    S: GrpcService,
    D: AsRef<SharedAuditLog> + Send + Sync + 'static,
{
    anyhow::ensure!(
        !methods_of(S::NAME).is_empty()
            && methods_of(S::NAME)
                .iter()
                .all(|(_, access)| *access == MethodAccess::Anonymous),
        "{} is not a pre-authentication service; it is never served without client certificates",
        S::NAME
    );
    // A peer of this port needs no certificate: its connections keep rustls's send buffer.
    anyhow::ensure!(
        settings.send_buffer.is_none(),
        "a pre-authentication port keeps rustls's send-buffer limit"
    );
    serve_tls(
        listener,
        settings,
        crate::tls_accept::AcceptOptions {
            client_auth: crate::tls_accept::ClientAuth::NotAsked,
            max_handshakes: PRE_AUTH_MAX_HANDSHAKES,
            send_buffer: None,
        },
        service,
        shutdown,
    )
    .await
}

async fn serve_tls<S, D>(
    listener: TcpListener,
    settings: MtlsSettings<'_, D>,
    options: crate::tls_accept::AcceptOptions,
    service: S,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    S: GrpcService,
    D: AsRef<SharedAuditLog> + Send + Sync + 'static,
{
    let addr = listener
        .local_addr()
        .context("the listening socket has no address")?;
    let auditor = settings.audit.clone();
    let service_name = settings.service_name;
    let incoming = crate::tls_accept::incoming_with(
        listener,
        settings.tls,
        settings.trust_domain,
        options,
        move |refused| {
            crate::metrics::common().handshake_refused(&refused);
            crate::tls_accept::audit_refusal((*auditor).as_ref(), service_name, refused)
        },
    )
    .context("TLS configuration")?;
    serve_incoming(incoming, addr, settings, service, shutdown).await
}

/// Serves `service` on the connections of `incoming` (listening on `addr`) until `shutdown`
/// resolves, with the stop's deadline and teardown (see the comments within).
async fn serve_incoming<S, D>(
    incoming: crate::tls_accept::Incoming,
    addr: std::net::SocketAddr,
    settings: MtlsSettings<'_, D>,
    service: S,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    S: GrpcService,
{
    let service_name = settings.service_name;
    let revocations = settings.revocations.clone();
    let teardown = incoming.teardown();
    let reloading = settings.reload_cert.map(|mut changes| {
        let reloader = incoming.cert_reloader();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                match reloader.reload() {
                    Ok(()) => tracing::info!("{service_name}: TLS certificate reloaded"),
                    Err(e) => tracing::error!(
                        "{service_name}: the renewed TLS certificate could not be loaded, the \
                         one in use stays: {e:#}"
                    ),
                }
            }
        })
    });
    // The graceful part of a stop has a deadline: hyper sends a response's end only after the
    // data it already took, and a stream nobody polls (its peer holds the window shut) never
    // sees the stop, so a peer that stopped reading would hold the stop until the unit's stop
    // timeout SIGKILLs the daemon without its last audit records. At the deadline the server
    // future is dropped and the listener's teardown closes every connection still open: each
    // one's next read or write fails (the ones waiting on their sockets are woken for it), so
    // hyper's task serving it ends, its socket is reset and the requests it carried are
    // dropped. The deadline is armed by the stop, or by the accept loop ending without one
    // (the server would otherwise wait for its connections without a bound).
    //
    // Then, whether the server ended within the deadline or not, this returns only once the
    // teardown holds nothing — no connection, no handshake, no request's handler or response
    // body (`Held`) — or after `CLOSED_WITHIN` (logged): what a daemon writes after this
    // (`agent.stopped`, `controller.stopped`) comes after every record of a request.
    let (fired, shutdown_fired) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = fired.send(());
    };
    let (ended, accept_ended) = tokio::sync::oneshot::channel::<()>();
    let accepted_to_the_end = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let incoming = UntilEnd {
        incoming,
        ended: Some(ended),
        ended_flag: accepted_to_the_end.clone(),
    };
    let graceful_deadline = async move {
        // Each sender is dropped unsent when the server ends first: the other branch has it.
        let stopped = async {
            if shutdown_fired.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let accept_ended = async {
            if accept_ended.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = stopped => {}
            () = accept_ended => {
                tracing::error!(
                    "{service_name}: the accept loop on {addr} ended without a stop; stopping"
                );
            }
        }
        tokio::time::sleep(GRACEFUL_STOP_WITHIN).await;
    };
    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE))
        .max_concurrent_streams(settings.max_streams_per_connection)
        .add_service(Held {
            inner: WithMethodPath(InterceptedService::new(
                service,
                IdentifyPeer::new(settings.trust_domain, methods_of(S::NAME))
                    .with_revocations(revocations),
            )),
            teardown: teardown.clone(),
        })
        .serve_with_incoming_shutdown(incoming, shutdown);
    let served = tokio::select! {
        served = served => served.with_context(|| format!("{service_name} server on {addr}")),
        () = graceful_deadline => {
            tracing::warn!(
                "{service_name}: some connections had not ended {}s after the stop (a peer \
                 not reading, or an agent holding its stream's window shut); closing them",
                GRACEFUL_STOP_WITHIN.as_secs()
            );
            Ok(())
        }
    };
    teardown.close();
    if tokio::time::timeout(CLOSED_WITHIN, teardown.ended())
        .await
        .is_err()
    {
        tracing::warn!(
            "{service_name}: {} connections, handshakes or requests had not ended {}s after \
             their connections were closed (a handler blocking its thread?); stopping without them",
            teardown.held(),
            CLOSED_WITHIN.as_secs()
        );
    }
    if let Some(task) = reloading {
        task.abort();
    }
    if accepted_to_the_end.load(std::sync::atomic::Ordering::SeqCst) {
        // Not a stop: the daemon must not go on as if it had been asked to.
        return served.and(Err(AcceptLoopEnded { service_name, addr }.into()));
    }
    served
}

/// The error of a server whose accept loop ended without a stop (which only a panic in it
/// does): its connections were closed as at a stop, and its daemon should run its stop
/// sequence, then exit with this error.
#[derive(Debug)]
pub struct AcceptLoopEnded {
    service_name: &'static str,
    addr: std::net::SocketAddr,
}

impl std::fmt::Display for AcceptLoopEnded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: the accept loop on {} ended without a stop",
            self.service_name, self.addr
        )
    }
}

impl std::error::Error for AcceptLoopEnded {}

/// The listener's connections; when their stream ends — the accept loop stopped without a
/// stop, which only a panic does — it sets `ended_flag` and tells `ended`.
struct UntilEnd {
    incoming: crate::tls_accept::Incoming,
    ended: Option<tokio::sync::oneshot::Sender<()>>,
    ended_flag: Arc<std::sync::atomic::AtomicBool>,
}

impl tokio_stream::Stream for UntilEnd {
    type Item = std::io::Result<crate::tls_accept::Connection>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let next = std::pin::Pin::new(&mut self.incoming).poll_next(cx);
        if matches!(next, std::task::Poll::Ready(None)) {
            self.ended_flag
                .store(true, std::sync::atomic::Ordering::SeqCst);
            if let Some(ended) = self.ended.take() {
                let _ = ended.send(());
            }
        }
        next
    }
}

/// Counts each request in the listener's [`Teardown`](crate::tls_accept::Teardown) while
/// anything of it runs — its handler's future, then its response's body — so that the stop
/// waits for it (see `serve_tls`): a request cut by the stop is dropped before the daemon's
/// last record, not after.
#[derive(Debug, Clone)]
struct Held<S> {
    inner: S,
    teardown: crate::tls_accept::Teardown,
}

impl<S: NamedService> NamedService for Held<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tonic::codegen::Service<http::Request<tonic::body::Body>> for Held<S>
where
    S: tonic::codegen::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<B>,
        Error = Infallible,
    >,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let held = self.teardown.hold();
        let handled = self.inner.call(request);
        Box::pin(async move {
            let response = handled.await?;
            Ok(response.map(|body| tonic::body::Body::new(HeldBody { body, _held: held })))
        })
    }
}

/// A response's body, counted in the teardown until it is dropped (see [`Held`]).
struct HeldBody<B> {
    body: B,
    _held: crate::tls_accept::Holding,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for HeldBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    #[test]
    fn a_request_the_interceptor_did_not_see_is_refused() {
        let request = Request::new(());
        let status = peer_identity(&request, Role::User).expect_err("fail closed");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("not established"), "{status:?}");
    }

    /// A request for `method`, as [`WithMethodPath`] passes it to the interceptor.
    fn request_for(method: &str) -> Request<()> {
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(MethodPath(method.to_string()));
        request
    }

    #[test]
    fn a_request_without_a_client_certificate_reaches_a_handler_that_checks_and_is_refused() {
        let mut interceptor = IdentifyPeer::new("loggate.local", AGENT_METHODS);
        let request = tonic::service::Interceptor::call(
            &mut interceptor,
            request_for("/loggate.v1.Agent/ReadLog"),
        )
        .expect("passes: the handler checks (and audits)");
        let status = peer_identity(&request, Role::User).expect_err("no certificate");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), "a client certificate is required");
    }

    #[test]
    fn the_interceptor_refuses_unknown_methods_and_callers_of_another_role() {
        let mut interceptor = IdentifyPeer::new("loggate.local", CONTROLLER_METHODS);
        for method in ["/loggate.v1.Controller/Nope", "/other.Svc/WatchGrants", ""] {
            let status = tonic::service::Interceptor::call(&mut interceptor, request_for(method))
                .expect_err("unknown method");
            assert_eq!(status.code(), tonic::Code::Unimplemented, "{method}");
        }
        let status = tonic::service::Interceptor::call(&mut interceptor, Request::new(()))
            .expect_err("no method path");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        // A table method with no certificate never reaches its handler.
        let status = tonic::service::Interceptor::call(
            &mut interceptor,
            request_for("/loggate.v1.Controller/RevokeGrant"),
        )
        .expect_err("no certificate");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(methods_of("loggate.v1.Unknown").is_empty());
    }

    #[test]
    fn every_method_of_the_proto_has_exactly_one_entry_in_its_services_table() {
        let proto = include_str!("../../../proto/proto/loggate.proto");
        let mut service = None;
        let mut in_proto = Vec::new();
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().map(String::from);
            } else if line == "}" {
                service = None;
            } else if let (Some(svc), Some(rest)) = (&service, line.strip_prefix("rpc ")) {
                let name = rest.split('(').next().unwrap_or_default().trim();
                in_proto.push((
                    format!("loggate.v1.{svc}"),
                    format!("/loggate.v1.{svc}/{name}"),
                ));
            }
        }
        let services: std::collections::BTreeSet<&str> =
            in_proto.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(
            services.into_iter().collect::<Vec<_>>(),
            [
                "loggate.v1.Agent",
                "loggate.v1.Controller",
                "loggate.v1.Enrolment"
            ],
            "every service parsed"
        );
        for (svc, method) in &in_proto {
            let entries = methods_of(svc).iter().filter(|(m, _)| m == method).count();
            assert_eq!(
                entries, 1,
                "{method} has {entries} entries in the table of {svc}"
            );
        }
        for (svc, table) in [
            ("loggate.v1.Controller", CONTROLLER_METHODS),
            ("loggate.v1.Agent", AGENT_METHODS),
            ("loggate.v1.Enrolment", ENROLMENT_METHODS),
        ] {
            for (method, _) in table {
                assert!(
                    in_proto.iter().any(|(s, m)| s == svc && m == method),
                    "{method} is in the table but not in the proto"
                );
            }
        }
    }

    #[test]
    fn only_the_enrolment_service_is_anonymous_and_it_refuses_every_controller_method() {
        // Nothing outside the pre-authentication table is reachable without an identity.
        for table in [CONTROLLER_METHODS, AGENT_METHODS] {
            assert!(
                table.iter().all(|(_, a)| *a != MethodAccess::Anonymous),
                "an anonymous method on an mTLS service"
            );
        }
        assert!(ENROLMENT_METHODS
            .iter()
            .all(|(_, a)| *a == MethodAccess::Anonymous));
        let mut interceptor = IdentifyPeer::new("loggate.local", ENROLMENT_METHODS);
        tonic::service::Interceptor::call(
            &mut interceptor,
            request_for("/loggate.v1.Enrolment/Enrol"),
        )
        .expect("an anonymous caller reaches Enrol");
        for (method, _) in CONTROLLER_METHODS {
            let status = tonic::service::Interceptor::call(&mut interceptor, request_for(method))
                .expect_err("a Controller method on the enrolment port");
            assert_eq!(status.code(), tonic::Code::Unimplemented, "{method}");
        }
    }

    #[test]
    fn a_removed_identitys_certificates_are_refused_until_one_issued_after_the_removal() {
        let revocations = Arc::new(Revocations::default());
        let changes = revocations.subscribe();
        let interceptor = IdentifyPeer::new("loggate.local", CONTROLLER_METHODS)
            .with_revocations(Some(revocations.clone()));
        let agent = "spiffe://loggate.local/agent/web-1";
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(agent.try_into().expect("uri")));
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        let der = params.self_signed(&key).expect("cert").der().to_vec();
        let identity = Identity::from_certificate(&der, "loggate.local").expect("identity");
        assert!(interceptor.not_revoked(identity.clone(), &der).is_ok());
        let issued = certificate_not_before(&der).expect("not_before");
        revocations.replace([(agent.to_string(), issued)].into());
        assert!(changes.has_changed().expect("open"), "watchers are told");
        assert_eq!(
            interceptor.not_revoked(identity.clone(), &der),
            Err(PeerRefused::Revoked(agent.to_string()))
        );
        // Removed before it was issued: a re-enrolled certificate.
        revocations.replace([(agent.to_string(), issued - 1)].into());
        assert!(interceptor.not_revoked(identity, &der).is_ok());
    }

    /// The identity of a self-signed certificate carrying `spiffe_id`.
    fn identity_of(spiffe_id: &str) -> Identity {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(spiffe_id.try_into().expect("uri")));
        let cert = params.self_signed(&key).expect("certificate");
        Identity::from_certificate(cert.der(), "loggate.local").expect("identity")
    }

    #[test]
    fn a_handler_gets_the_identity_of_its_role_and_refuses_another_role() {
        let mut request = Request::new(());
        let agent = identity_of("spiffe://loggate.local/agent/web-1");
        request
            .extensions_mut()
            .insert(PeerCheck(Ok(agent.clone())));
        assert_eq!(
            peer_identity(&request, Role::Agent).expect("an agent"),
            agent
        );
        let status = peer_identity(&request, Role::User).expect_err("not a user");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(
            status.message().contains("it is for user identities"),
            "{status:?}"
        );
    }

    #[test]
    fn an_unusable_certificate_is_refused_with_its_reason() {
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(PeerCheck(Err(PeerRefused::Unusable("no SPIFFE ID".into()))));
        let status = peer_identity(&request, Role::User).expect_err("unusable");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            status.message(),
            "unusable client certificate: no SPIFFE ID"
        );
    }

    /// Counts its drops: a request's handler future or body, dropped when it ended, after
    /// taking `.1` to end (as a request writing its last record does).
    struct DropCount(Arc<std::sync::atomic::AtomicUsize>, Duration);

    impl Drop for DropCount {
        fn drop(&mut self) {
            std::thread::sleep(self.1);
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A body that never yields a frame (its peer's window shut, as far as it is concerned).
    struct StalledBody(#[allow(dead_code)] DropCount);

    impl hyper::body::Body for StalledBody {
        type Data = bytes::Bytes;
        type Error = Status;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Status>>> {
            std::task::Poll::Pending
        }
    }

    /// The enrolment service as far as the server knows, whose requests never end: `Enrol`'s
    /// handler never answers, `SignIn` answers with a body that never ends. Ignores the stop.
    #[derive(Clone)]
    struct Stalls {
        started: Arc<std::sync::atomic::AtomicUsize>,
        dropped: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl NamedService for Stalls {
        const NAME: &'static str = "loggate.v1.Enrolment";
    }

    impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Stalls {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = std::pin::Pin<
            Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send + 'static>,
        >;

        fn poll_ready(
            &mut self,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
            self.started
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let answers = request.uri().path() == "/loggate.v1.Enrolment/SignIn";
            // The handler takes a moment to end: the stop waits for it.
            let guard = DropCount(
                self.dropped.clone(),
                if answers {
                    Duration::ZERO
                } else {
                    Duration::from_millis(300)
                },
            );
            Box::pin(async move {
                if !answers {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                    unreachable!("pending");
                }
                Ok(http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(tonic::body::Body::new(StalledBody(guard)))
                    .unwrap_or_default())
            })
        }
    }

    /// A gRPC request for `method`, to be sent on an HTTP/2 connection.
    fn grpc_request(method: &str) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
        http::Request::post(format!("https://localhost{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Empty::new())
            .expect("request")
    }

    /// A client of [`Stalls`] with both of its requests running.
    struct StalledClient {
        /// The HTTP/2 connection's task: its result says how the connection ended.
        connection: tokio::task::JoinHandle<hyper::Result<()>>,
        /// The `Enrol` request, never answered.
        never_answered:
            tokio::task::JoinHandle<hyper::Result<http::Response<hyper::body::Incoming>>>,
        /// The `SignIn` answer, whose body never ends.
        stalled: http::Response<hyper::body::Incoming>,
        /// Kept: without a sender left, the client closes the connection itself.
        _sender: hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    }

    impl StalledClient {
        /// Connects to `addr` (a server of `files`' CA), sends both requests and waits until
        /// the server's `started` counts both.
        async fn connect(
            addr: std::net::SocketAddr,
            files: &TlsFiles,
            started: &std::sync::atomic::AtomicUsize,
        ) -> StalledClient {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_file_iter(&files.ca).expect("CA") {
                roots.add(ca.expect("CA")).expect("root");
            }
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec()];
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect("localhost".try_into().expect("name"), tcp)
                .await
                .expect("TLS");
            let (mut sender, connection) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tls),
            )
            .await
            .expect("HTTP/2");
            let connection = tokio::spawn(connection);
            sender.ready().await.expect("ready");
            let never_answered =
                tokio::spawn(sender.send_request(grpc_request("/loggate.v1.Enrolment/Enrol")));
            let stalled = sender
                .send_request(grpc_request("/loggate.v1.Enrolment/SignIn"))
                .await
                .expect("answered, with a body that never ends");
            let waited = std::time::Instant::now();
            while started.load(std::sync::atomic::Ordering::SeqCst) < 2 {
                assert!(waited.elapsed() < Duration::from_secs(30), "not started");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            StalledClient {
                connection,
                never_answered,
                stalled,
                _sender: sender,
            }
        }
    }

    /// Whether the client's connection ended with a reset from the server (`ECONNRESET` on
    /// its socket), not a clean end or a FIN (which TLS reports as an unexpected end of file).
    fn reset_by_the_server(ended: &hyper::Result<()>) -> bool {
        let Err(error) = ended else { return false };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return io.kind() == std::io::ErrorKind::ConnectionReset
                    || io.raw_os_error() == Some(libc::ECONNRESET);
            }
            cause = e.source();
        }
        false
    }

    /// The server of [`Stalls`] on a loopback port, its audit log in `dir`.
    fn stalls_settings(dir: &std::path::Path) -> (TlsFiles, Arc<SharedAuditLog>, Stalls) {
        let files = crate::tls_accept::test_pki::server_files(dir);
        let audit = Arc::new(
            SharedAuditLog::new(
                crate::audit::AuditLog::open(&dir.join("audit.jsonl"), "test").expect("audit log"),
            )
            .expect("audit"),
        );
        let service = Stalls {
            started: Default::default(),
            dropped: Default::default(),
        };
        (files, audit, service)
    }

    /// The accept loop ending without a stop (as a panic in it would) arms the deadline too:
    /// the server does not wait for ever for a request that never ends; it closes the
    /// connections, drops the requests and returns an error (not a stop) to its daemon.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_accept_loop_ending_without_a_stop_arms_the_deadline_and_is_an_error() {
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().expect("tempdir");
        let (files, audit, service) = stalls_settings(dir.path());
        let (started, dropped) = (service.started.clone(), service.dropped.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let incoming = crate::tls_accept::incoming_with(
            listener,
            &files,
            "loggate.local",
            crate::tls_accept::AcceptOptions {
                client_auth: crate::tls_accept::ClientAuth::NotAsked,
                max_handshakes: PRE_AUTH_MAX_HANDSHAKES,
                send_buffer: None,
            },
            |_| {},
        )
        .expect("incoming");
        let accept_loop = incoming.accept_loop();
        let server = tokio::spawn({
            let files = files.clone();
            async move {
                serve_incoming(
                    incoming,
                    addr,
                    MtlsSettings {
                        tls: &files,
                        trust_domain: "loggate.local",
                        service_name: "loggate test",
                        audit,
                        revocations: None,
                        reload_cert: None,
                        max_streams_per_connection: None,
                        send_buffer: None,
                    },
                    service,
                    // Never a stop.
                    std::future::pending::<()>(),
                )
                .await
            }
        });
        let client = StalledClient::connect(addr, &files, &started).await;
        accept_loop.abort();
        let served = tokio::time::timeout(
            GRACEFUL_STOP_WITHIN + CLOSED_WITHIN + Duration::from_secs(30),
            server,
        )
        .await
        .expect("the server returned after its accept loop ended")
        .expect("task");
        let error = served.expect_err("an accept loop that ended is not a stop");
        assert!(error.is::<AcceptLoopEnded>(), "{error:#}");
        assert_eq!(dropped.load(SeqCst), 2, "both requests were dropped");
        let ended = tokio::time::timeout(Duration::from_secs(30), client.connection)
            .await
            .expect("the client's connection was closed")
            .expect("task");
        assert!(reset_by_the_server(&ended), "{ended:?}");
    }

    /// Requests that ignore the stop — a handler that never answers, a response whose body
    /// never ends (a peer holding its window shut) — are ended with their connection at the
    /// deadline: when the server returns, both are dropped (nothing of them can write a record
    /// after the daemon's last), and the client's connection is closed under it, not left open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_the_stop_deadline_every_connection_is_closed_and_its_requests_dropped() {
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().expect("tempdir");
        let (files, audit, service) = stalls_settings(dir.path());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (started, dropped) = (service.started.clone(), service.dropped.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn({
            let files = files.clone();
            async move {
                serve_pre_auth(
                    listener,
                    MtlsSettings {
                        tls: &files,
                        trust_domain: "loggate.local",
                        service_name: "loggate test",
                        audit,
                        revocations: None,
                        reload_cert: None,
                        max_streams_per_connection: None,
                        send_buffer: None,
                    },
                    service,
                    async move {
                        let _ = stopped.await;
                    },
                )
                .await
            }
        });

        let client = StalledClient::connect(addr, &files, &started).await;

        let _ = stop.send(());
        let served = tokio::time::timeout(
            GRACEFUL_STOP_WITHIN + CLOSED_WITHIN + Duration::from_secs(30),
            server,
        )
        .await
        .expect("the server returned after the stop")
        .expect("task");
        served.expect("a stop is not an error");
        assert_eq!(
            dropped.load(SeqCst),
            2,
            "the stalled handler and body were dropped before the server returned"
        );
        // The client sees its connection reset, the request without an answer fail.
        let ended = tokio::time::timeout(Duration::from_secs(30), client.connection)
            .await
            .expect("the client's connection was closed")
            .expect("task");
        assert!(
            reset_by_the_server(&ended),
            "reset by the server, not ended cleanly or by a FIN: {ended:?}"
        );
        let answer = tokio::time::timeout(Duration::from_secs(30), client.never_answered)
            .await
            .expect("the request ended")
            .expect("task");
        assert!(answer.is_err(), "{answer:?}");
        drop(client.stalled);
    }
}
