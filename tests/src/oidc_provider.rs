//! A real OpenID Provider for the sign-in tests: `tests/oidc-provider/provider.mjs`
//! (the OpenID Certified `oidc-provider` package) run by Node.js ≥ 20 on 127.0.0.1, port 0.
//! See /work/shared/notes/oidc-test-provider.md and the fixture's header for its users,
//! clients and test hooks.
//!
//! [`OidcProvider::start`] installs the fixture's packages when they are missing (`npm ci`
//! from the committed lockfile, bounded in time, serialised by a lock file), spawns it, waits
//! for its `LISTENING` line (bounded) and kills it on drop. [`Browser`] plays the person at
//! the IdP over plain HTTP: a cookie jar, redirects not followed, no proxy.

use anyhow::{anyhow, bail, Context};
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The fixture's folder.
pub fn fixture_dir() -> PathBuf {
    crate::workspace_root().join("tests/oidc-provider")
}

/// Installs the fixture's packages (`npm ci`) unless they are there; at most 3 minutes.
pub fn ensure_installed() -> anyhow::Result<()> {
    let dir = fixture_dir();
    let marker = dir.join("node_modules/oidc-provider/package.json");
    if marker.exists() {
        return Ok(());
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(std::env::temp_dir().join("loggate-oidc-provider-npm.lock"))?;
    // SAFETY: flock on a descriptor this function owns for the whole call; it is released
    // when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!(
            "cannot lock the npm install: {}",
            std::io::Error::last_os_error()
        );
    }
    if marker.exists() {
        return Ok(());
    }
    let mut child = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .spawn()
        .context(
            "cannot run npm (install Node.js 20 or later with npm: see xtask's prerequisites)",
        )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("npm ci in {} failed: {status}", dir.display());
            }
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("npm ci in {} took over 3 minutes", dir.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running provider; killed on drop.
pub struct OidcProvider {
    child: Child,
    /// `http://127.0.0.1:PORT`, the issuer exactly as its discovery document says.
    pub issuer: String,
    http: reqwest::blocking::Client,
}

impl OidcProvider {
    /// Starts the fixture with `env` (`SKEW`, `ID_TOKEN_TTL`, `CONFORM`).
    pub fn start(env: &[(&str, &str)]) -> anyhow::Result<OidcProvider> {
        ensure_installed()?;
        let mut cmd = Command::new("node");
        cmd.arg(fixture_dir().join("provider.mjs"))
            .current_dir(fixture_dir())
            .env("PORT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .context("cannot start node (Node.js 20 or later)")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let issuer = loop {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(line) => {
                    if let Some(issuer) = line.strip_prefix("LISTENING ") {
                        break issuer.trim().to_string();
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("the OpenID Provider did not start within 20 s: {e}");
                }
            }
        };
        if !issuer.starts_with("http://127.0.0.1:") {
            let _ = child.kill();
            bail!("the OpenID Provider listens at {issuer}, not on loopback");
        }
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()?;
        Ok(OidcProvider {
            child,
            issuer,
            http,
        })
    }

    /// A token signed by the fixture: `alg` `RS256`/`ES256` with its current key (or, with
    /// `unknown_key`, a key its JWKS does not list), `none`, or `HS256` keyed with the RSA
    /// public key's PEM.
    pub fn sign(
        &self,
        alg: &str,
        payload: &serde_json::Value,
        unknown_key: bool,
    ) -> anyhow::Result<String> {
        let body = serde_json::json!({
            "alg": alg, "payload": payload, "key": if unknown_key { "unknown" } else { "current" },
        });
        let answer: serde_json::Value = self
            .http
            .post(format!("{}/__test/sign", self.issuer))
            .json(&body)
            .send()?
            .error_for_status()?
            .json()?;
        answer["token"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| anyhow!("no token in {answer}"))
    }

    /// The JWKS endpoint answers normally (`up`), 503 (`down`) or with no keys (`empty`).
    pub fn set_jwks(&self, mode: &str) -> anyhow::Result<()> {
        self.http
            .get(format!("{}/__test/jwks?mode={mode}", self.issuer))
            .send()?
            .error_for_status()?;
        Ok(())
    }

    /// Switches to new signing keys (`rs-b`, `es-b`); the JWKS lists old and new.
    pub fn rotate(&self) -> anyhow::Result<()> {
        self.http
            .get(format!("{}/__test/rotate", self.issuer))
            .send()?
            .error_for_status()?;
        Ok(())
    }

    /// A person's browser at this IdP (its own cookie jar).
    pub fn browser(&self) -> anyhow::Result<Browser> {
        Ok(Browser {
            issuer: self.issuer.clone(),
            http: reqwest::blocking::Client::builder()
                .no_proxy()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(20))
                .build()?,
        })
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A person at the IdP: follows the sign-in pages by hand.
pub struct Browser {
    issuer: String,
    http: reqwest::blocking::Client,
}

impl Browser {
    fn absolute(&self, location: &str) -> String {
        if location.starts_with('/') {
            format!("{}{location}", self.issuer)
        } else {
            location.to_string()
        }
    }

    fn location(response: &reqwest::blocking::Response) -> anyhow::Result<String> {
        if !response.status().is_redirection() {
            bail!("expected a redirect, got {}", response.status());
        }
        response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(String::from)
            .ok_or_else(|| anyhow!("a redirect without Location"))
    }

    /// Logs in as `user` (password `<user>-pw` unless `password` is given) on the
    /// interaction page `location` and follows the provider's redirects back; returns the
    /// first Location that leaves the IdP (the client's redirect URI) or, for the device
    /// flow, the final page's status.
    fn login_at(&self, location: &str, user: &str, password: &str) -> anyhow::Result<String> {
        let url = self.absolute(location);
        let response = self
            .http
            .post(&url)
            .form(&[("prompt", "login"), ("login", user), ("password", password)])
            .send()?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            bail!("the IdP refused the password of {user}");
        }
        let mut next = Self::location(&response)?;
        for _ in 0..8 {
            let url = self.absolute(&next);
            if !url.starts_with(&self.issuer) {
                return Ok(url);
            }
            let response = self.http.get(&url).send()?;
            if response.status().is_success() {
                return Ok(url);
            }
            next = Self::location(&response)?;
            if next.contains("/interaction/") {
                // Consent, when a client still asks for it.
                let url = self.absolute(&next);
                let response = self.http.post(&url).form(&[("prompt", "consent")]).send()?;
                next = Self::location(&response)?;
            }
        }
        bail!("too many redirects at the IdP")
    }

    /// The authorization-code sign-in: from the client's `/auth` URL to the redirect (with
    /// `code`, `state`, `iss`) the IdP sends the browser to.
    pub fn sign_in(&self, auth_url: &str, user: &str) -> anyhow::Result<String> {
        self.sign_in_with_password(auth_url, user, &format!("{user}-pw"))
    }

    pub fn sign_in_with_password(
        &self,
        auth_url: &str,
        user: &str,
        password: &str,
    ) -> anyhow::Result<String> {
        let response = self.http.get(auth_url).send()?;
        let location = Self::location(&response)?;
        if !location.contains("/interaction/") {
            // Already signed in here (SSO): straight back to the client.
            return Ok(self.absolute(&location));
        }
        self.login_at(&location, user, password)
    }

    /// The device flow's browser side: enter `user_code`, log in as `user`.
    pub fn approve_device(&self, user_code: &str, user: &str) -> anyhow::Result<()> {
        let page = self
            .http
            .get(format!("{}/device", self.issuer))
            .send()?
            .text()?;
        let xsrf = page
            .split("name=\"xsrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .ok_or_else(|| anyhow!("no xsrf field on the device page"))?
            .to_string();
        let response = self
            .http
            .post(format!("{}/device", self.issuer))
            .form(&[
                ("xsrf", xsrf.as_str()),
                ("user_code", user_code),
                ("confirm", "yes"),
            ])
            .send()?;
        let location = Self::location(&response)?;
        // Ends on the provider's "Sign-in Success" page (a 200 it answered once).
        let end = self.login_at(&location, user, &format!("{user}-pw"))?;
        if !end.starts_with(&self.issuer) {
            bail!("the device sign-in left the IdP for {end}");
        }
        Ok(())
    }

    /// Delivers the IdP's redirect to the client's loopback listener (what the browser does
    /// next); returns the listener's HTTP status.
    pub fn deliver(&self, redirect: &str) -> anyhow::Result<u16> {
        Ok(self.http.get(redirect).send()?.status().as_u16())
    }
}
