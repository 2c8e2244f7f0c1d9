//! `loggate login`: sign in at the organisation's OpenID Provider and get a short-lived
//! certificate from the controller.
//!
//! 1. Ask the controller's sign-in address (TLS, verified against the loggate CA; no client
//!    certificate) which IdP and client to use (`SignInConfig`).
//! 2. Make an ECDSA P-256 key pair here (it never leaves this machine) and a certificate
//!    request for it; the OpenID `nonce` commits to its public key
//!    (`crate::oidc::binding`), so the ID token is good for this key only.
//! 3. Sign in at the IdP: authorization code + PKCE with a redirect to a one-shot listener on
//!    127.0.0.1 (the URL is printed; a browser is opened only when there is one and standard
//!    output is a terminal), or the device authorization grant (`--device`).
//! 4. Send the ID token, the nonce and the request to the controller (`SignIn`), which checks
//!    them and signs a certificate for the identity the token names.
//! 5. Keep key, certificate and CA in the configuration folder (0600 files in a 0700 folder)
//!    and record them in `config.toml`, so the next command needs no flags.

use super::config_file::{self, SignedIn, CA_FILE, CERT_FILE, KEY_FILE};
use super::{Exit, Failure};
use crate::config::ClientConfig;
use crate::oidc::binding::make_nonce;
use crate::oidc::keys::error_chain;
use loggate_proto as pb;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, DeviceAuthorizationUrl, IssuerUrl, Nonce,
    PkceCodeChallenge, RedirectUrl, Scope,
};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long `loggate login` waits for the person to finish at the IdP.
const SIGN_IN_TIMEOUT: Duration = Duration::from_secs(300);
/// Requests to the loopback listener that are not the redirect (a browser's favicon…).
const MAX_STRAY_REQUESTS: usize = 16;
/// Redirects to `/callback` with a state that is not this login's, ignored before giving up.
const MAX_FOREIGN_REDIRECTS: usize = 64;
/// The longest request head read from the browser.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

pub struct LoginArgs {
    /// The controller's sign-in address (`[enrolment] listen`), `host:port`.
    pub controller: Option<String>,
    /// The loggate CA (PEM) to check the controller's certificate with.
    pub ca: Option<PathBuf>,
    pub device: bool,
    pub fresh: bool,
    /// The configuration file to write (`--config`/`$LOGGATE_CONFIG`, else the default).
    pub config_path: PathBuf,
}

fn fail(message: impl Into<String>) -> Failure {
    Failure::new(Exit::Error, message)
}

fn say(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

pub async fn login(args: LoginArgs) -> Result<(), Failure> {
    let existing = ClientConfig::load(&args.config_path).ok();
    let sign_in_addr = args
        .controller
        .clone()
        .or_else(|| existing.as_ref().and_then(|c| c.sign_in.clone()))
        .ok_or_else(|| {
            Failure::new(
                Exit::Usage,
                "give the controller's sign-in address: loggate login --controller HOST:PORT \
                 --ca CA.crt (your admin has both)",
            )
        })?;
    let ca_path = args
        .ca
        .clone()
        .or_else(|| existing.as_ref().map(|c| c.tls.ca.clone()))
        .ok_or_else(|| {
            Failure::new(
                Exit::Usage,
                "give the loggate CA certificate: loggate login --ca CA.crt (your admin has it)",
            )
        })?;
    let ca_pem = std::fs::read(&ca_path)
        .map_err(|e| fail(format!("cannot read the CA {}: {e}", ca_path.display())))?;

    let mut controller = sign_in_client(&sign_in_addr, &ca_pem).await?;
    let setup = controller
        .sign_in_config(pb::SignInConfigRequest {})
        .await
        .map_err(|s| {
            fail(format!(
                "the controller at {sign_in_addr} gave no sign-in settings: {}",
                s.message()
            ))
        })?
        .into_inner();

    let key =
        rcgen::KeyPair::generate().map_err(|e| fail(format!("cannot make a key pair: {e}")))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| fail(format!("cannot make the certificate request: {e}")))?;
    let spki = {
        use rcgen::PublicKeyData;
        key.subject_public_key_info()
    };
    let nonce = make_nonce(&spki);

    let idp = Idp::discover(&setup).await?;
    let id_token = if args.device {
        idp.device_flow(&nonce, args.fresh).await?
    } else {
        idp.code_flow(&nonce, args.fresh).await?
    };

    let issued = controller
        .sign_in(pb::SignInRequest {
            id_token,
            nonce,
            csr_der: csr.der().to_vec(),
        })
        .await
        .map_err(|s| {
            let code = if s.code() == tonic::Code::PermissionDenied {
                Exit::Denied
            } else {
                Exit::Error
            };
            Failure::new(
                code,
                format!("the controller refused the sign-in: {}", s.message()),
            )
        })?
        .into_inner();

    let dir = config_file::config_dir();
    let stored = (|| -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
        config_file::ensure_private_dir(&dir)?;
        let (key_path, cert_path, ca_file) =
            (dir.join(KEY_FILE), dir.join(CERT_FILE), dir.join(CA_FILE));
        config_file::write_private(&key_path, key.serialize_pem().as_bytes())?;
        config_file::write_private(&cert_path, issued.certificate_pem.as_bytes())?;
        config_file::write_private(&ca_file, issued.ca_pem.as_bytes())?;
        Ok((key_path, cert_path, ca_file))
    })()
    .map_err(|e| fail(format!("cannot keep the certificate: {e:#}")))?;
    let controller_addr = existing
        .as_ref()
        .map(|c| c.controller.clone())
        .unwrap_or_else(|| with_port(&sign_in_addr, issued.controller_port));
    config_file::write_config(
        &args.config_path,
        &SignedIn {
            controller: &controller_addr,
            sign_in: &sign_in_addr,
            ca: &stored.2,
            cert: &stored.1,
            key: &stored.0,
        },
    )
    .map_err(|e| {
        fail(format!(
            "cannot write {}: {e:#}",
            args.config_path.display()
        ))
    })?;
    say(&format!(
        "signed in as {}; certificate valid until {} (serial {})",
        issued.subject,
        super::format_time(issued.not_after_unix),
        issued.serial
    ));
    Ok(())
}

/// `host:port` with `port` for `addr`'s host (the controller's commands port on the host
/// signed in at), or `addr` unchanged when no port was given.
fn with_port(addr: &str, port: u32) -> String {
    if port == 0 || port > u32::from(u16::MAX) {
        return addr.to_string();
    }
    match addr.rsplit_once(':') {
        Some((host, _)) => format!("{host}:{port}"),
        None => format!("{addr}:{port}"),
    }
}

/// A client of the controller's sign-in service: TLS checked against the loggate CA and the
/// controller's name; no client certificate.
async fn sign_in_client(
    addr: &str,
    ca_pem: &[u8],
) -> Result<
    pb::enrolment_client::EnrolmentClient<super::deadline::Deadline<tonic::transport::Channel>>,
    Failure,
> {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
        .domain_name("loggate-controller");
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| Failure::new(Exit::Usage, format!("bad address {addr:?}: {e}")))?
        .tls_config(tls)
        .map_err(|e| fail(format!("TLS configuration: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    // connect_timeout bounds TCP only: a server silent through TLS's handshake is bounded here.
    let connecting = tokio::time::timeout(super::deadline::CONNECT, endpoint.connect());
    let channel = connecting
        .await
        .map_err(|_| {
            fail(format!(
                "cannot connect to the controller's sign-in address {addr}: no TLS handshake \
                 within {} s; check the address and that the controller is running",
                super::deadline::CONNECT.as_secs()
            ))
        })?
        .map_err(|e| {
            fail(format!(
                "cannot connect to the controller's sign-in address {addr}: {}",
                error_chain(&e)
            ))
        })?;
    // The controller's own bound on a sign-in is the endpoint's 30 s timeout; ours is past it.
    Ok(pb::enrolment_client::EnrolmentClient::new(
        super::deadline::Deadline::with_default(channel, Duration::from_secs(40)),
    ))
}

/// The IdP, discovered from the issuer the controller named.
struct Idp {
    issuer: IssuerUrl,
    client_id: ClientId,
    client_secret: Option<ClientSecret>,
    scopes: Vec<String>,
    metadata: CoreProviderMetadata,
    http: reqwest::Client,
}

impl Idp {
    async fn discover(setup: &pb::SignInConfigResponse) -> Result<Idp, Failure> {
        let issuer = IssuerUrl::new(setup.issuer.clone()).map_err(|e| {
            fail(format!(
                "the controller named the IdP {:?}: {e}",
                setup.issuer
            ))
        })?;
        let loopback = setup.issuer.starts_with("http://127.0.0.1")
            || setup.issuer.starts_with("http://[::1]")
            || setup.issuer.starts_with("http://localhost");
        let mut http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30));
        if loopback {
            http = http.no_proxy();
        }
        let http = http
            .build()
            .map_err(|e| fail(format!("cannot make an HTTP client: {e}")))?;
        let metadata = CoreProviderMetadata::discover_async(issuer.clone(), &http)
            .await
            .map_err(|e| {
                fail(format!(
                    "cannot reach the IdP {}: {}",
                    issuer.as_str(),
                    error_chain(&e)
                ))
            })?;
        Ok(Idp {
            issuer,
            client_id: ClientId::new(setup.client_id.clone()),
            client_secret: (!setup.client_secret.is_empty())
                .then(|| ClientSecret::new(setup.client_secret.clone())),
            scopes: setup
                .scopes
                .iter()
                .filter(|s| s.as_str() != "openid")
                .cloned()
                .collect(),
            metadata,
            http,
        })
    }

    fn client(
        &self,
    ) -> CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    > {
        CoreClient::from_provider_metadata(
            self.metadata.clone(),
            self.client_id.clone(),
            self.client_secret.clone(),
        )
    }

    /// Authorization code + PKCE, redirected to a one-shot listener on 127.0.0.1.
    async fn code_flow(&self, nonce: &str, fresh: bool) -> Result<String, Failure> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| {
                fail(format!(
                    "cannot listen on 127.0.0.1 for the IdP's redirect: {e}"
                ))
            })?;
        let port = listener
            .local_addr()
            .map_err(|e| fail(format!("cannot read the listener's port: {e}")))?
            .port();
        let redirect = format!("http://127.0.0.1:{port}/callback");
        let client = self.client().set_redirect_uri(
            RedirectUrl::new(redirect.clone())
                .map_err(|e| fail(format!("redirect address {redirect}: {e}")))?,
        );
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let sent_nonce = nonce.to_string();
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                move || Nonce::new(sent_nonce),
            )
            .set_pkce_challenge(challenge);
        for scope in &self.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        if fresh {
            // max_age=0 also obliges the IdP to say when the person authenticated
            // (`auth_time`), which step-up rules are judged on.
            request = request
                .add_prompt(openidconnect::core::CoreAuthPrompt::Login)
                .set_max_age(Duration::ZERO);
        }
        let (url, state, _) = request.url();
        say(&format!("Open this address to sign in:\n{url}"));
        open_browser(url.as_str());
        let code = tokio::time::timeout(
            SIGN_IN_TIMEOUT,
            wait_for_redirect(&listener, &state, &self.issuer),
        )
        .await
        .map_err(|_| {
            fail(format!(
                "no sign-in within {} s: run `loggate login` again",
                SIGN_IN_TIMEOUT.as_secs()
            ))
        })??;
        let token = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| fail(format!("the IdP has no token endpoint: {e}")))?
            .set_pkce_verifier(verifier)
            .request_async(&self.http)
            .await
            .map_err(|e| fail(format!("the IdP refused the code: {}", error_chain(&e))))?;
        id_token_of(&token)
    }

    /// The device authorization grant: a code to enter on another device.
    async fn device_flow(&self, nonce: &str, fresh: bool) -> Result<String, Failure> {
        let endpoint = self.device_endpoint().await?;
        let client = self.client().set_device_authorization_url(endpoint);
        let mut request = client
            .exchange_device_code()
            .add_extra_param("nonce", nonce.to_string());
        for scope in &self.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        if fresh {
            request = request
                .add_extra_param("prompt", "login")
                .add_extra_param("max_age", "0");
        }
        let details: openidconnect::core::CoreDeviceAuthorizationResponse =
            request.request_async(&self.http).await.map_err(|e| {
                fail(format!(
                    "the IdP refused the device sign-in: {}",
                    error_chain(&e)
                ))
            })?;
        let shown = details
            .verification_uri_complete()
            .map(|u| u.secret().clone())
            .unwrap_or_else(|| details.verification_uri().to_string());
        say(&format!(
            "To sign in, open {} on any device and enter the code {}\n({shown})",
            details.verification_uri().as_str(),
            details.user_code().secret()
        ));
        let token = client
            .exchange_device_access_token(&details)
            .map_err(|e| fail(format!("the IdP has no token endpoint: {e}")))?
            .request_async(&self.http, tokio::time::sleep, Some(SIGN_IN_TIMEOUT))
            .await
            .map_err(|e| {
                fail(format!(
                    "the device sign-in did not finish: {}",
                    error_chain(&e)
                ))
            })?;
        id_token_of(&token)
    }

    /// `device_authorization_endpoint` from the discovery document (not in the core metadata
    /// type).
    async fn device_endpoint(&self) -> Result<DeviceAuthorizationUrl, Failure> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.as_str().trim_end_matches('/')
        );
        let body = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| fail(format!("cannot read {url}: {}", error_chain(&e))))?
            .bytes()
            .await
            .map_err(|e| fail(format!("cannot read {url}: {}", error_chain(&e))))?;
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| fail(format!("{url} is not JSON: {e}")))?;
        let endpoint = doc
            .get("device_authorization_endpoint")
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                fail("the IdP offers no device sign-in (no device_authorization_endpoint): use `loggate login` without --device")
            })?;
        DeviceAuthorizationUrl::new(endpoint.to_string())
            .map_err(|e| fail(format!("the IdP's device endpoint {endpoint:?}: {e}")))
    }
}

fn id_token_of(token: &openidconnect::core::CoreTokenResponse) -> Result<String, Failure> {
    token
        .extra_fields()
        .id_token()
        .map(|t| t.to_string())
        .ok_or_else(|| fail("the IdP answered without an ID token: is the \"openid\" scope allowed for this client?"))
}

/// Opens `url` in a browser when there is one to open and a person at a terminal.
fn open_browser(url: &str) {
    let graphical =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if !graphical || !std::io::stdout().is_terminal() {
        return;
    }
    let _ = std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// Serves the loopback listener until the IdP's redirect arrives: its `code`, once `state`
/// matches and `iss` (RFC 9207), when present, is the issuer.
async fn wait_for_redirect(
    listener: &tokio::net::TcpListener,
    state: &CsrfToken,
    issuer: &IssuerUrl,
) -> Result<String, Failure> {
    let mut foreign = 0usize;
    let mut stray = 0usize;
    while stray <= MAX_STRAY_REQUESTS {
        let (mut stream, _) = listener
            .accept()
            .await
            .map_err(|e| fail(format!("the redirect listener failed: {e}")))?;
        let target = match read_request_target(&mut stream).await {
            Some(t) => t,
            None => {
                stray += 1;
                continue;
            }
        };
        let Ok(url) = url::Url::parse(&format!("http://127.0.0.1{target}")) else {
            respond(&mut stream, 400, "Bad request.").await;
            stray += 1;
            continue;
        };
        if url.path() != "/callback" {
            respond(&mut stream, 404, "Not found.").await;
            stray += 1;
            continue;
        }
        let param = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        // Another sign-in's state, or a local process or web page poking the port: answered
        // and ignored (aborting would let anyone on this host cancel the login); the real
        // redirect can still come. Bounded by the login's own deadline and `MAX_FOREIGN`.
        if param("state").as_deref() != Some(state.secret().as_str()) {
            respond(&mut stream, 400, "This sign-in was not started here.").await;
            foreign += 1;
            if foreign > MAX_FOREIGN_REDIRECTS {
                return Err(fail(
                    "too many redirects with another sign-in's state reached the sign-in \
                     listener: run `loggate login` again (or `loggate login --device` on a \
                     shared host)",
                ));
            }
            continue;
        }
        if let Some(iss) = param("iss") {
            if iss != issuer.as_str() {
                respond(&mut stream, 400, "Wrong issuer.").await;
                return Err(fail(format!(
                    "the redirect came from issuer {iss:?}, not {}: run `loggate login` again",
                    issuer.as_str()
                )));
            }
        }
        if let Some(error) = param("error") {
            respond(&mut stream, 200, "Sign-in refused; see the terminal.").await;
            let detail = param("error_description").unwrap_or_default();
            let clean =
                |s: &str| -> String { s.chars().filter(|c| !c.is_control()).take(200).collect() };
            return Err(Failure::new(
                Exit::Denied,
                format!(
                    "the IdP refused the sign-in: {} {}",
                    clean(&error),
                    clean(&detail)
                ),
            ));
        }
        let Some(code) = param("code") else {
            respond(&mut stream, 400, "No code.").await;
            return Err(fail(
                "the IdP's redirect carried no code: run `loggate login` again",
            ));
        };
        respond(
            &mut stream,
            200,
            "Signed in at the IdP; loggate is getting your certificate. You can close this tab.",
        )
        .await;
        return Ok(code);
    }
    Err(fail(
        "too many requests to the sign-in listener that were not the IdP's redirect",
    ))
}

/// The request target of a `GET` (bounded in size and time), or `None`.
async fn read_request_target(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Some(())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()??;
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.split(' ');
    if parts.next()? != "GET" {
        return None;
    }
    let target = parts.next()?;
    target.starts_with('/').then(|| target.to_string())
}

async fn respond(stream: &mut tokio::net::TcpStream, status: u16, text: &str) {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Bad Request",
    };
    let body =
        format!("<!doctype html><meta charset=utf-8><title>loggate login</title><p>{text}</p>\n");
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The configuration file `login` and `logout` use.
pub fn config_path(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .unwrap_or_else(ClientConfig::default_path)
}
