//! `serve_mtls`: a daemon's gRPC service over the mTLS accept loop ([`crate::tls_accept`]),
//! with the caller's identity established once per request by one interceptor.
//!
//! The interceptor reads the client certificate the handshake verified (chained to our CA; a
//! connection without one never gets here) and puts a [`PeerCheck`] into the request's
//! extensions: the [`Identity`] it names, or why it names none we accept (not ours, no SPIFFE
//! ID of our trust domain). Each handler then asks [`peer_identity`] for the role it serves.
//! A request without a `PeerCheck` — a service not wrapped by the interceptor — is refused:
//! fail closed, never "anonymous".

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
}

/// The one interceptor that puts a [`PeerCheck`] into every request (see the module docs).
#[derive(Debug, Clone)]
pub struct IdentifyPeer {
    trust_domain: Arc<str>,
}

impl IdentifyPeer {
    pub fn new(trust_domain: &str) -> Self {
        IdentifyPeer {
            trust_domain: trust_domain.into(),
        }
    }

    fn check<T>(&self, request: &Request<T>) -> PeerCheck {
        let leaf = request
            .peer_certs()
            .and_then(|certs| certs.first().cloned());
        PeerCheck(match leaf {
            None => Err(PeerRefused::NoCertificate),
            Some(leaf) => Identity::from_certificate(leaf.as_ref(), &self.trust_domain)
                .map_err(|e| PeerRefused::Unusable(e.to_string())),
        })
    }
}

impl tonic::service::Interceptor for IdentifyPeer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let check = self.check(&request);
        request.extensions_mut().insert(check);
        Ok(request)
    }
}

/// The verified identity of the caller of `request`, which must have `role`. Refused
/// (`unauthenticated`) without a usable client certificate, and when the identity interceptor
/// did not run; `permission_denied` for an identity of another role.
pub fn peer_identity<T>(request: &Request<T>, role: Role) -> Result<Identity, Status> {
    let Some(PeerCheck(check)) = request.extensions().get::<PeerCheck>() else {
        tracing::error!("a request reached a handler without the identity interceptor; refused");
        return Err(Status::unauthenticated(
            "the caller's identity was not established; the request is refused",
        ));
    };
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
    pub tls: &'a TlsFiles,
    pub trust_domain: &'a str,
    /// Who refuses in `tls.refused` records and what the server's errors name
    /// (`loggate agent`, `loggate controller`).
    pub service_name: &'static str,
    /// The daemon whose audit log receives the `tls.refused` records.
    pub audit: Arc<D>,
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
    S: tonic::codegen::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    D: AsRef<SharedAuditLog> + Send + Sync + 'static,
{
    let addr = listener
        .local_addr()
        .context("the listening socket has no address")?;
    let auditor = settings.audit;
    let service_name = settings.service_name;
    let incoming = crate::tls_accept::incoming(
        listener,
        settings.tls,
        settings.trust_domain,
        move |refused| crate::tls_accept::audit_refusal((*auditor).as_ref(), service_name, refused),
    )
    .context("TLS configuration")?;
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE))
        .add_service(InterceptedService::new(
            service,
            IdentifyPeer::new(settings.trust_domain),
        ))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .with_context(|| format!("{service_name} server on {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_the_interceptor_did_not_see_is_refused() {
        let request = Request::new(());
        let status = peer_identity(&request, Role::User).expect_err("fail closed");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("not established"), "{status:?}");
    }

    #[test]
    fn a_request_without_a_client_certificate_is_refused_after_the_interceptor() {
        let mut interceptor = IdentifyPeer::new("loggate.local");
        let request =
            tonic::service::Interceptor::call(&mut interceptor, Request::new(())).expect("passes");
        let status = peer_identity(&request, Role::Agent).expect_err("no certificate");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), "a client certificate is required");
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
}
