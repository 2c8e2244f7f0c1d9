//! The IdP's discovery document and signing keys, fetched on first use and cached.
//!
//! Key rotation: a token whose `kid` no cached key has makes one fetch of the key set
//! ([`IdpKeys::refetch`]), at most once per `jwks_refetch_interval`, so a flood of tokens with
//! made-up `kid`s costs the IdP one request per interval, not one per token. When the key set
//! cannot be fetched (the IdP's JWKS endpoint is down) the cached keys stay: tokens signed with
//! a known key still verify, a token with an unknown key is refused. The HTTP client follows no
//! redirects (SSRF), bounds every request in time and, for a loopback test IdP, uses no proxy.

use super::{RefusalReason, SignInRefused};
use crate::config::OidcSettings;
use openidconnect::core::{CoreJsonWebKeySet, CoreProviderMetadata};
use openidconnect::IssuerUrl;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Every request to the IdP ends within this.
const IDP_TIMEOUT: Duration = Duration::from_secs(10);

/// What was learnt from the IdP.
#[derive(Clone)]
pub struct Snapshot {
    pub metadata: Arc<CoreProviderMetadata>,
    pub keys: Arc<CoreJsonWebKeySet>,
}

struct Cached {
    snapshot: Snapshot,
    /// When the key set was last fetched (or a fetch tried).
    keys_fetched: Instant,
}

/// The IdP's metadata and keys, shared by every sign-in.
pub struct IdpKeys {
    issuer: IssuerUrl,
    http: reqwest::Client,
    refetch_interval: Duration,
    /// The key set is replaced by the IdP's current one when it is older than this, so a key
    /// the IdP dropped (after a compromise) stops verifying; while the fetch fails the cached
    /// keys stay (a JWKS outage must not stop known keys).
    max_age: Duration,
    cached: Mutex<Option<Cached>>,
}

impl IdpKeys {
    pub fn new(settings: &OidcSettings) -> anyhow::Result<IdpKeys> {
        let issuer = IssuerUrl::new(settings.issuer.clone())
            .map_err(|e| anyhow::anyhow!("oidc.issuer {:?}: {e}", settings.issuer))?;
        Ok(IdpKeys {
            issuer,
            http: http_client(settings.loopback_issuer)?,
            refetch_interval: settings.jwks_refetch_interval,
            max_age: settings.jwks_max_age,
            cached: Mutex::new(None),
        })
    }

    /// The cached metadata and keys, discovering them on first use.
    pub async fn current(&self) -> Result<Snapshot, SignInRefused> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_mut() {
            if c.keys_fetched.elapsed() >= self.max_age {
                c.keys_fetched = Instant::now();
                let uri = c.snapshot.metadata.jwks_uri().clone();
                match CoreJsonWebKeySet::fetch_async(&uri, &self.http).await {
                    Ok(keys) => c.snapshot.keys = Arc::new(keys),
                    Err(e) => tracing::warn!(
                        "cannot refresh the IdP's keys from {}: {}; the cached keys stay",
                        uri.as_str(),
                        error_chain(&e)
                    ),
                }
            }
            return Ok(c.snapshot.clone());
        }
        let metadata = CoreProviderMetadata::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|e| {
                SignInRefused::new(
                    RefusalReason::IdpUnavailable,
                    format!(
                        "cannot read the IdP's discovery document at {}: {}",
                        self.issuer.as_str(),
                        error_chain(&e)
                    ),
                )
            })?;
        let keys = Arc::new(metadata.jwks().clone());
        let snapshot = Snapshot {
            metadata: Arc::new(metadata),
            keys,
        };
        *cached = Some(Cached {
            snapshot: snapshot.clone(),
            keys_fetched: Instant::now(),
        });
        Ok(snapshot)
    }

    /// Fetches the key set again after a token named a key none of the cached ones has;
    /// `None` when the last fetch was less than the refetch interval ago or this one failed
    /// (the cached keys stay either way).
    pub async fn refetch(&self) -> Option<Snapshot> {
        let mut cached = self.cached.lock().await;
        let c = cached.as_mut()?;
        if c.keys_fetched.elapsed() < self.refetch_interval {
            return None;
        }
        c.keys_fetched = Instant::now();
        let uri = c.snapshot.metadata.jwks_uri().clone();
        match CoreJsonWebKeySet::fetch_async(&uri, &self.http).await {
            Ok(keys) => {
                c.snapshot.keys = Arc::new(keys);
                Some(c.snapshot.clone())
            }
            Err(e) => {
                tracing::warn!(
                    "cannot fetch the IdP's keys from {}: {}; the cached keys stay",
                    uri.as_str(),
                    error_chain(&e)
                );
                None
            }
        }
    }
}

/// The HTTP client for the IdP: no redirects, bounded in time, no proxy for a loopback IdP.
fn http_client(loopback: bool) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(IDP_TIMEOUT)
        .connect_timeout(Duration::from_secs(5));
    if loopback {
        builder = builder.no_proxy();
    }
    builder
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the HTTP client for the IdP: {e}"))
}

/// `e` and its causes, `: `-separated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}
