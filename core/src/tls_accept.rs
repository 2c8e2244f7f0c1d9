//! The mTLS listener of the agent and the controller: TCP connections are accepted and their TLS
//! handshakes completed here, before tonic sees them, so that a **refused** handshake — a
//! certificate from another CA, an expired one, none at all, a client that refused ours — is
//! reported (and audited by the caller) instead of vanishing inside the server.
//!
//! Each connection gets its own rustls configuration around one shared certificate, key and
//! client verifier, so the certificate a refused client presented can be named: its SPIFFE ID is
//! reported as `claimed`, which is what it says, not who it is (it failed verification).
//! Verification itself is rustls' WebPKI client verifier, unchanged: chain to the CA, validity
//! period, client-auth usage.
//!
//! # Handshake slots: bound what is unauthenticated and slow, not what is quick
//!
//! A connection that has not finished its handshake is unauthenticated: anyone can open one, and
//! one that sends nothing, or a byte and then nothing, costs its sender nothing to keep. So:
//!
//! - **Deadlines on the client's bytes, not on our queue.** The first byte must come within
//!   [`FIRST_BYTE_TIMEOUT`] (2 s; a TLS client sends its ClientHello at once) and the complete
//!   ClientHello within [`HANDSHAKE_TIMEOUT`] (5 s) of the accept, and the whole handshake
//!   within the same 5 s plus the time it waited for its turn for the cryptography (below):
//!   the client's own time is bounded by 5 s in all, and a connection keeps its place at most
//!   for what the client had left of it (a ClientHello trickled for 4.9 s leaves 0.1 s). The
//!   wait for that
//!   turn is ours, not the client's: it has its own bound ([`TURN_WITHIN`]), and a handshake
//!   that does not get a turn in time is reset *before* any cryptography is spent on it
//!   (`reason_code` `busy` in the summaries).
//! - **A bounded pool.** At most [`MAX_HANDSHAKES`] (1024) handshakes are in progress (fewer
//!   when the open-file limit is low). While places are free, anyone takes one, whatever its
//!   address: 600 agents behind one NAT reconnecting at once all get in.
//! - **A full pool evicts; it turns a newcomer away only for a victim's grace (below).** The
//!   connection closed is chosen by *progress*, not by idleness: a connection whose complete,
//!   parseable ClientHello has come (read first, with rustls' `Acceptor`, before the
//!   configuration is chosen) has done real TLS work and is protected. The victim is the
//!   oldest connection *without* a ClientHello of the address prefix holding most places (a
//!   /24 for IPv4, a /64 for IPv6; NAT64 and 6to4 addresses count as the IPv4 address they
//!   carry); only when every connection in the pool has sent its ClientHello does the oldest
//!   of all go. Age is the order of acceptance, never refreshed by a byte.
//!
//!   Why: with "idle longest" (first-in, first-out) eviction, a churn of new connections pushes
//!   out everything older than `pool / rate` — at ~9,000 connections a second, any handshake
//!   slower than ~110 ms, i.e. every client across a WAN. Now a churner's connections (which
//!   never send a ClientHello: sending one costs it a real TLS message per connection, and
//!   then it is bounded by the 5 s deadline) only push out each other, its own prefixes' first;
//!   a distant client is exposed only for the one-way trip before its ClientHello arrives, and
//!   then as the newest connection of a prefix that is not the largest.
//! - **The victim's grace: a herd is not a churn.** A fleet reconnecting after a restart fills
//!   the pool with clients that have connected and not yet sent their ClientHello (on a loaded
//!   host their process has not run yet); evicting them made each newcomer undo an attempt
//!   that was about to progress (measured: 43,819 evictions, every one of a connection that
//!   had sent nothing, for 10,000 agents). So when the victim chosen above has sent nothing
//!   and was accepted less than [`EVICTION_GRACE`] (500 ms) ago, a newcomer from *another*
//!   prefix holding *more than half* the victim prefix's places is reset at once instead
//!   (`SO_LINGER` 0, no TLS work; its client backs off and retries). The grace never changes
//!   which connection is the victim, a newcomer from a small prefix or the victim's own still
//!   evicts, and a victim that sent anything has none: why each defence above still holds is
//!   written at [`Table::make_room`]. Resets are summarised like evictions (`reset_in_grace`).
//! - **Turns for the cryptography.** At most [`HANDSHAKES_COMPUTING`] (64) handshakes compute
//!   our side of the handshake at once (what rustls does on the ClientHello, in one go before
//!   our first byte: key exchange, certificate, signature); the others wait for a turn, first
//!   come first served, costing no CPU. A herd (a fleet reconnecting after a restart) otherwise shares the CPU among all
//!   its handshakes until none completes within the deadline, and the retries start over.
//!   One that waited [`TURN_WITHIN`] (3 s) after its ClientHello is reset (`SO_LINGER` 0:
//!   the client sees a reset at once and retries after its back-off) with no TLS work done,
//!   and counted in a `busy` summary. Before, the deadline of the whole handshake ran from
//!   the accept and included that wait: on a starved machine a handshake got its turn late,
//!   was computed, and was then dropped as timed out, the work wasted and the client's
//!   back-off doubled for a delay that was ours (measured: ~98 % of the failed attempts after
//!   a controller restart with 10,000 agents, docs/performance.md).
//!
//!   A turn goes back as soon as our flight is computed: the client's answer is the client's
//!   to delay. Held across it (until 2026-12-06), the turns were an unauthenticated pool
//!   without eviction: a ClientHello recorded once and replayed on connections that never
//!   answer held all 64 for their whole deadline, ~13 connections a second (far fewer than
//!   fill the handshake pool) made every other handshake wait [`TURN_WITHIN`] and be reset
//!   `busy`, and CI saw a legitimate client reset so. What waits on its client now holds only
//!   its place in the pool, which eviction by progress bounds. The client's flight (its chain
//!   and signature) is verified without a turn, in the one poll that reads it; the turns still
//!   keep the flights computed ahead of it to 64. So that nothing costly is left outside a
//!   turn: only TLS 1.3 is served (in 1.2 our key exchange ends with the client's second
//!   flight, and its certificate comes in the clear, to be replayed), a ClientHello that would
//!   need a HelloRetryRequest is refused (the retry's second ClientHello would be computed
//!   without a turn; a client sends a key share for its first group, ours always), and a
//!   client chain of more than [`MAX_CLIENT_INTERMEDIATES`] intermediates is refused before
//!   any signature is checked.
//! - **Nothing that completes is throttled.** No rate limit and no cap per address or prefix
//!   while places are free; a handshake frees its place as soon as it completes, and a
//!   handshake that completes at the moment it is chosen for eviction is kept.
//! - **Counted and summarised, not logged one by one.** Evictions are counted; every
//!   [`PRESSURE_SUMMARY_INTERVAL`] (10 s) in which there were any, one `tls.refused` record with
//!   `reason_code` `evicted` (no peer) says how many, how far they had come (nothing sent, no
//!   complete ClientHello, a ClientHello), and the prefix that lost most. Refused handshakes (a
//!   bad certificate) are reported one by one, at most [`MAX_REPORTS_PER_MINUTE`] a minute, the
//!   rest in a `suppressed` summary. When the listener shuts, what was counted since the last
//!   summaries is written then.
//!
//! Left out on purpose: charging prefixes whose connections end unfinished (a token bucket on
//! their new connections). With eviction by progress and by the largest prefix a churner
//! already evicts only itself, and a per-prefix rate is what throttled a fleet behind one NAT
//! before; it is worth adding only if an attack that sends real ClientHellos is seen.
//!
//! # After the handshake: bound what a certificate can hold
//!
//! hyper's HTTP/2 server sets no timer while it waits for the connection preface, and nothing
//! bounded how many connections a valid certificate may keep. So a completed connection must
//! send the HTTP/2 preface within [`HTTP2_PREFACE_TIMEOUT`] (5 s; read here, then given back to
//! tonic in [`Connection`]); one SPIFFE identity may hold [`MAX_CONNECTIONS_PER_IDENTITY`]
//! (1024) established connections and all of them together [`MAX_CONNECTIONS`] (65536, or half
//! the open-file limit); people (`…/user/…` identities) may use [`PERSON_RESERVE`] (64) places
//! beyond that, so an admin's command gets in while a fleet holds every place. A connection over either is closed at once; those and the ones without
//! a preface are summarised every 10 s in one `tls.refused` record, `reason_code`
//! `connection_limit`. Accepted sockets get TCP keepalive (60 s, then every 10 s), and the
//! servers HTTP/2 keepalive pings (20 s, 20 s to answer), so a vanished peer's connection ends.
//!
//! # Measured
//!
//! On loopback, debug builds, 2 cores shared with other builds (load 5–8),
//! `LOGGATE_BIN_DIR=$PWD/target/debug cargo test -p loggate-tests --test handshake_flood`:
//!
//! - A client 300 ms away (a proxy delaying 150 ms each way), while three threads churn
//!   connections from three /24s as fast as the controller accepts them (250–320 a second, into
//!   a pool of 128: the controller started with 512 open files, since this machine cannot reach
//!   the ~9,000 a second that churn through 1024 places within a WAN handshake): connected and
//!   answered in 0.61–0.65 s, while 700–990 handshakes were evicted in ~3.6 s. The previous
//!   loop evicted the client (`tls handshake eof`), 2 runs out of 2.
//! - 3,000 connections held against each daemon (1,000 idle and 1,000 one-byte from
//!   127.0.0.1, 1,000 from 100 other /24s), then one-byte connections still arriving (8 attempts
//!   in flight): `loggate logs cat` from 127.0.0.1 took 20–153 ms, `loggate grant list` 13–177
//!   ms, while 12–588 of the flood's connections per daemon were evicted in the second around
//!   them.
//! - 600 clients from one address, all in progress at once (a proxy holds their bytes until
//!   they are open at the server: 529–600 at once): all got through in 2.7–4.6 s (slowest
//!   1.9–3.8 s, debug build on both sides), no `tls.refused` record; the previous loop evicted
//!   88 of them (its 512 per-prefix cap), 3 runs out of 3.
//! - A certified client that sends nothing after its handshake: closed after 5.0 s and counted;
//!   before, still open after 12 s.
//!
//! The pool needs file descriptors: [`incoming`] raises the process's soft `RLIMIT_NOFILE` to its
//! hard limit (systemd's default hard limit is 524288) and shrinks the pool to a quarter of the
//! limit when that is still low, so that pending handshakes cannot starve established
//! connections and the files being served.

use crate::tls::TlsFiles;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

/// The client's part of a handshake: its complete ClientHello must come within this long of
/// the accept, and the whole handshake within this long plus the time it waited for its turn
/// for the cryptography ([`TURN_WITHIN`]); a handshake over either is dropped (and reported).
/// The wait for the turn does not count: it is the server's delay, not the client's; the
/// client's own time is bounded by this in all.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A handshake whose ClientHello came must get its turn for the cryptography
/// ([`HANDSHAKES_COMPUTING`]) within this long of it, or it is reset with no TLS work done and
/// counted as `busy`: the client retries after its back-off, instead of a handshake being
/// computed for a client whose own connect timeout (the agent's is 10 s, TCP and TLS
/// together) has passed or is about to. With [`HANDSHAKE_TIMEOUT`] for the client's part, a
/// handshake is done or told within 8 s of its accept.
pub const TURN_WITHIN: Duration = Duration::from_secs(3);
/// A connection that sends nothing in this long is closed without a report (a probe, or a
/// connection held open only to take a handshake slot).
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
/// Handshakes in progress at once, in all (fewer if the open-file limit is low), whatever their
/// addresses; when all are taken, a newcomer evicts one chosen by progress (module docs).
pub const MAX_HANDSHAKES: usize = 1024;
/// Handshakes that may compute our side of the handshake (key exchange, certificate,
/// signature: what rustls does on the ClientHello) at once; the others wait for a turn (at
/// most [`TURN_WITHIN`]). A turn is held for that computation only, not across the client's
/// answer, which the client could delay to keep it (module docs). Without a bound,
/// a herd (a fleet reconnecting after a restart) shares the CPU among all its handshakes, so
/// that none completes within the deadline, all are dropped after the work was spent, and the
/// retries start over: measured with 1,000 agents on this machine's 2 cores (debug build),
/// 407 timed out and the last agent was back after 65 s. With a bound, the ones with a turn
/// finish at full speed and the others wait without costing CPU.
pub const HANDSHAKES_COMPUTING: usize = 64;
/// A connection accepted less than this long ago that has sent nothing yet is not closed to
/// make room for a newcomer from another prefix holding more than half as many places: the
/// newcomer is reset instead ([`Table::make_room`]). Long enough for a client on a loaded host
/// to send its ClientHello after its connect; short against the first-byte deadline.
pub const EVICTION_GRACE: Duration = Duration::from_millis(500);
/// Refusals reported per minute at most: a flood of bad handshakes must not flood the audit
/// log. The ones over are counted; the count goes with the next one reported, or in a summary
/// (`reason_code` `suppressed`, no peer) at the end of the minute, whichever comes first.
pub const MAX_REPORTS_PER_MINUTE: u32 = 60;
/// After its handshake, a connection must send the HTTP/2 preface (its first bytes) within this
/// long, or it is closed: hyper's server has no timer of its own while it waits for it.
pub const HTTP2_PREFACE_TIMEOUT: Duration = Duration::from_secs(5);
/// Established connections one SPIFFE identity may hold at once; one over is closed (and
/// counted). An agent needs one, a person's command one per server; this leaves room for
/// automation sharing one identity (a job running hundreds of commands at once) while one
/// stolen or misused certificate cannot take all of [`MAX_CONNECTIONS`].
pub const MAX_CONNECTIONS_PER_IDENTITY: usize = 1024;
/// Established connections in all, at most (fewer: half the open-file limit). The
/// controller holds one per agent of the fleet.
pub const MAX_CONNECTIONS: usize = 65_536;
/// Established connections of people (`…/user/…` identities) allowed beyond the limit in all:
/// when a fleet holds every place (more agents than the open-file limit allows, or a herd
/// reconnecting into a controller whose limit is the fleet's size), an admin's command still
/// gets in to see and act (`loggate grant revoke`, `agent list`). Small: each person is still
/// capped by [`MAX_CONNECTIONS_PER_IDENTITY`], and the reserve is only for people.
pub const PERSON_RESERVE: usize = 64;
/// TCP keepalive on every accepted connection: probes after this long idle …
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// … and then this often.
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// The TLS bytes one established connection of the agent's port may hold for sending,
/// beyond what its socket took ([`AcceptOptions::send_buffer`], rustls's send-buffer limit;
/// rustls's default is 64 KiB). A write is taken only up to the limit, the rest on the next
/// write: at 64 KiB a read's message (a 64 KiB read and its framing, just over 64 KiB) went
/// out as two `writev`s, the second of a few hundred bytes, each a TCP segment and a wake-up
/// of the reader (issue #15, docs/performance.md). At this size a read's message goes whole
/// (the agent checks its sizes against it), with room for its tags. It is what a peer that
/// stops reading can make the connection hold here, with nothing but HTTP/2 pings to answer
/// (so no more than that room): the controller's ports, whose connections are counted by the
/// thousand, keep rustls's default.
pub const SEND_BUFFER_LIMIT: usize = 96 * 1024;
/// How often, at most, evictions are summarised in one `tls.refused` record.
pub const PRESSURE_SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
/// Prefixes named in the eviction counts of one summary interval at most (memory bound).
const MAX_PREFIXES_COUNTED: usize = 4096;

/// Why a connection was refused: the `reason_code` of its `tls.refused` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The client certificate does not chain to the configured CA.
    UnknownIssuer,
    /// Chained by name to our CA but not signed by its key: another CA of the same name, or a
    /// forgery.
    BadSignature,
    /// A certificate of the CA presented without proof of its private key (a copied one?).
    KeyNotProven,
    /// The client certificate's validity has ended.
    CertificateExpired,
    /// Its validity starts in the future: a clock or an issuing mistake, not an expiry.
    CertificateNotValidYet,
    /// The client certificate is on the revocation list the verifier was given.
    CertificateRevoked,
    /// Any other certificate failure rustls reports (bad encoding, wrong key usage, unsupported
    /// name or extension).
    BadCertificate,
    /// The client sent no certificate on a port that requires one ([`ClientAuth::Required`]).
    NoClientCertificate,
    /// The client sent an alert refusing our certificate (bad, unknown CA, unknown or expired):
    /// look at its trust store, not at it.
    PeerRefusedOurCertificate,
    /// The handshake did not finish within the handshake deadline.
    HandshakeTimeout,
    /// Any other TLS failure (protocol error, unsupported version or cipher).
    TlsError,
    /// The summary of refusals over the rate limit.
    Suppressed,
    /// The summary of unfinished handshakes closed to make room for new ones.
    Evicted,
    /// The summary of new connections reset at their accept, before any TLS work, because the
    /// pool was full and the connection that would have made room was within its grace
    /// ([`EVICTION_GRACE`]).
    ResetInGrace,
    /// The summary of handshakes reset after their ClientHello, before any cryptography,
    /// because no turn for it came within [`TURN_WITHIN`].
    Busy,
    /// The summary of connections closed after their handshake: over the limit per identity
    /// or in all, or no HTTP/2 preface in time.
    ConnectionLimit,
}

impl RefusalReason {
    /// The stable `reason_code` written to `tls.refused` records and the refusal metric's label;
    /// never changes for an existing reason.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::UnknownIssuer => "unknown_issuer",
            RefusalReason::BadSignature => "bad_signature",
            RefusalReason::KeyNotProven => "key_not_proven",
            RefusalReason::CertificateExpired => "certificate_expired",
            RefusalReason::CertificateNotValidYet => "certificate_not_valid_yet",
            RefusalReason::CertificateRevoked => "certificate_revoked",
            RefusalReason::BadCertificate => "bad_certificate",
            RefusalReason::NoClientCertificate => "no_client_certificate",
            RefusalReason::PeerRefusedOurCertificate => "peer_refused_our_certificate",
            RefusalReason::HandshakeTimeout => "handshake_timeout",
            RefusalReason::TlsError => "tls_error",
            RefusalReason::Suppressed => "suppressed",
            RefusalReason::Evicted => "evicted",
            RefusalReason::ResetInGrace => "reset_in_grace",
            RefusalReason::Busy => "busy",
            RefusalReason::ConnectionLimit => "connection_limit",
        }
    }
}

/// A connection refused during its TLS handshake.
#[derive(Debug, Clone)]
pub struct Refused {
    /// `None` only for the summaries (`suppressed`, `evicted`).
    pub peer: Option<SocketAddr>,
    /// The classified reason, written as the record's `reason_code`.
    pub reason_code: RefusalReason,
    /// rustls' description of the failure.
    pub reason: String,
    /// The SPIFFE ID in the certificate the client presented, if any — unverified.
    pub claimed: Option<String>,
    /// Refusals not reported one by one before this one (over the rate limit); for a summary,
    /// how many connections it stands for.
    pub suppressed_before: u64,
}

impl Refused {
    /// Its `tls.refused` audit event; `service` is who refused it (`loggate agent`,
    /// `loggate controller`).
    pub fn audit_event(&self, service: &str) -> crate::audit::events::TlsRefused {
        crate::audit::events::TlsRefused {
            peer: self.peer.map(|p| p.to_string()),
            service: service.to_string(),
            reason_code: self.reason_code.as_str(),
            reason: self.reason.clone(),
            claimed_subject: self.claimed.clone(),
            suppressed_before: self.suppressed_before,
        }
    }
}

/// The usual report of a refusal: a warning, and a `tls.refused` record written to `log`
/// (deferred: no action waits on it). `service` names who refused (`loggate agent`, …).
pub fn audit_refusal(log: &crate::audit::SharedAuditLog, service: &str, refused: Refused) {
    tracing::warn!(
        peer = ?refused.peer,
        "TLS handshake refused ({}): {}",
        refused.reason_code.as_str(),
        refused.reason
    );
    if let Err(e) = log.append_deferred(&refused.audit_event(service)) {
        tracing::error!("audit write failed: {e:#}");
    }
}

/// At most `MAX_REPORTS_PER_MINUTE` reports in any minute-long window.
struct Limiter {
    window_start: Instant,
    reported: u32,
    suppressed: u64,
}

impl Limiter {
    /// `Some(suppressed before)` when this refusal may be reported.
    fn admit(&mut self) -> Option<u64> {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(60) {
            self.window_start = now;
            self.reported = 0;
        }
        if self.reported >= MAX_REPORTS_PER_MINUTE {
            self.suppressed += 1;
            return None;
        }
        self.reported += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The refusals the rate limit left out since the last report, as one summary (taking them).
fn summary(limiter: &Mutex<Limiter>) -> Option<Refused> {
    let left_out =
        std::mem::take(&mut limiter.lock().unwrap_or_else(|p| p.into_inner()).suppressed);
    (left_out > 0).then(|| Refused {
        peer: None,
        reason_code: RefusalReason::Suppressed,
        reason: format!(
            "{left_out} refused handshakes over the limit of {MAX_REPORTS_PER_MINUTE} a minute \
             were not recorded one by one"
        ),
        claimed: None,
        suppressed_before: left_out,
    })
}

/// The parts shared by every connection's configuration.
struct Shared {
    verifier: Arc<dyn ClientCertVerifier>,
    cert: Arc<OneCert>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    trust_domain: String,
    /// Handshakes computing our flight at once: see [`HANDSHAKES_COMPUTING`]. Fair: the turns
    /// go in the order they were asked for.
    computing: Arc<tokio::sync::Semaphore>,
    timing: Timing,
}

/// The deadlines of a handshake ([`HANDSHAKE_TIMEOUT`], [`TURN_WITHIN`]); the tests shorten
/// them.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// The client's part: the complete ClientHello, and the whole handshake once the time it
    /// waited for a turn is added, from the accept.
    hello_within: Duration,
    /// A turn for the cryptography, from the ClientHello.
    turn_within: Duration,
}

const TIMING: Timing = Timing {
    hello_within: HANDSHAKE_TIMEOUT,
    turn_within: TURN_WITHIN,
};

/// Whether a listener asks its clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Mutual TLS: a certificate chained to the CA is required (the daemons' main ports).
    Required,
    /// None asked (the controller's pre-authentication `Enrolment` port): the caller proves
    /// itself with what its request carries. Everything else — deadlines, the handshake pool,
    /// the connection caps (counted per address prefix, as `anonymous <prefix>`), the HTTP/2
    /// preface check and the refusal reports — is the same.
    NotAsked,
}

/// How [`incoming_with`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptOptions {
    /// Whether clients must present a certificate on this listener.
    pub client_auth: ClientAuth,
    /// Handshakes in progress at once, at most (and never more than the open-file limit
    /// allows, see [`MAX_HANDSHAKES`]).
    pub max_handshakes: usize,
    /// rustls's send-buffer limit for each established connection ([`SEND_BUFFER_LIMIT`] on
    /// the agent's port); `None`: rustls's default, 64 KiB.
    pub send_buffer: Option<usize>,
}

impl AcceptOptions {
    /// The daemons' mutual-TLS ports.
    pub const MUTUAL: AcceptOptions = AcceptOptions {
        client_auth: ClientAuth::Required,
        max_handshakes: MAX_HANDSHAKES,
        send_buffer: None,
    };
}

/// Accepts connections on `listener`, completes their mTLS handshakes (client certificate
/// required, chained to the CA of `tls`), and yields the established streams for
/// `tonic::transport::Server::serve_with_incoming*`; every refused handshake goes to `refused`
/// (a client that connects and closes without sending a byte is a port probe: not reported),
/// and so do the summaries of refusals over the rate limit and of evictions (module docs).
///
/// Raises the process's soft open-file limit to its hard limit (see the module docs).
pub fn incoming(
    listener: TcpListener,
    tls: &TlsFiles,
    trust_domain: &str,
    refused: impl Fn(Refused) + Send + Sync + 'static,
) -> anyhow::Result<Incoming> {
    incoming_with(listener, tls, trust_domain, AcceptOptions::MUTUAL, refused)
}

/// [`incoming`] with its client authentication and handshake pool chosen by `options`.
pub fn incoming_with(
    listener: TcpListener,
    tls: &TlsFiles,
    trust_domain: &str,
    options: AcceptOptions,
    refused: impl Fn(Refused) + Send + Sync + 'static,
) -> anyhow::Result<Incoming> {
    let computing = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_COMPUTING));
    incoming_timed(
        listener,
        tls,
        trust_domain,
        options,
        TIMING,
        computing,
        refused,
    )
}

/// [`incoming_with`] with its deadlines and its turns for the cryptography given (the tests
/// shorten the one and hold the other).
fn incoming_timed(
    listener: TcpListener,
    tls: &TlsFiles,
    trust_domain: &str,
    options: AcceptOptions,
    timing: Timing,
    computing: Arc<tokio::sync::Semaphore>,
    refused: impl Fn(Refused) + Send + Sync + 'static,
) -> anyhow::Result<Incoming> {
    let verifier: Arc<dyn ClientCertVerifier> = match options.client_auth {
        ClientAuth::Required => client_verifier(tls)?,
        ClientAuth::NotAsked => Arc::new(rustls::server::NoClientAuth),
    };
    let mut key = certified_key(tls)?;
    if options.client_auth == ClientAuth::NotAsked {
        key = with_ca_in_chain(key, tls)?;
    }
    key.keys_match()
        .map_err(|e| anyhow::anyhow!("{} and {}: {e}", tls.cert.display(), tls.key.display()))?;
    let shared = Arc::new(Shared {
        verifier,
        cert: Arc::new(OneCert(std::sync::RwLock::new(key))),
        provider: Arc::new(rustls::crypto::ring::default_provider()),
        trust_domain: trust_domain.to_string(),
        computing,
        timing,
    });
    let reloader = CertReloader {
        cert: shared.cert.clone(),
        tls: tls.clone(),
        with_ca: options.client_auth == ClientAuth::NotAsked,
    };
    // Built once here so that a configuration rustls refuses fails the start, not each client.
    server_config(&shared, Arc::new(Witness::new(shared.verifier.clone())))?;
    let open_files = raise_open_file_limit();
    let capacity = pool_size(open_files).min(options.max_handshakes.max(2));
    if capacity < options.max_handshakes {
        tracing::warn!(
            "the open-file limit is {open_files}: at most {capacity} TLS handshakes can be in \
             progress at once (raise LimitNOFILE to 4096 or more for {})",
            options.max_handshakes
        );
    }
    let admission = Arc::new(Admission::new(capacity));
    let connections = Arc::new(Connections::new(connection_limit(open_files)));
    let limiter = Arc::new(Mutex::new(Limiter {
        window_start: Instant::now(),
        reported: 0,
        suppressed: 0,
    }));
    let report = Arc::new(refused);
    let teardown = Teardown::new();
    // Dropped with `Incoming`: the summaries' task then writes what it has counted and ends.
    let (closing, closed) = oneshot::channel::<()>();
    tokio::spawn(write_summaries(
        limiter.clone(),
        report.clone(),
        admission.clone(),
        connections.clone(),
        // It writes records: counted until it ends (see `Teardown`).
        teardown.hold(),
        closed,
    ));
    let refused = Arc::new(move |mut refusal: Refused| {
        let admitted = limiter.lock().unwrap_or_else(|p| p.into_inner()).admit();
        if let Some(suppressed) = admitted {
            refusal.suppressed_before = suppressed;
            report(refusal);
        }
    });
    let (tx, rx) = mpsc::channel(64);
    let accept_teardown = teardown.clone();
    let send_buffer = options.send_buffer;
    let accepting = tokio::spawn(async move {
        let teardown = accept_teardown;
        // Dropped with this task (when `Incoming` is): every handshake still in progress is
        // aborted with it, and none outlives the listener.
        let mut handshakes = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                // A handshake's task that ended is let go of at once (its memory with it).
                Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and the like: wait a little rather than spin.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (slot, mut evicted) = match Admission::enter(&admission, peer, Instant::now()) {
                Entry::Admitted(slot, evicted) => (slot, evicted),
                Entry::ResetInGrace => {
                    // A reset (RST), not a close: no TIME_WAIT here, and the client knows
                    // at once. Nothing else is spent on it (counted by the admission).
                    let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                    drop(tcp);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            // A peer that vanishes (power loss, a dropped NAT mapping) is found out by the
            // kernel, whatever the protocol above does.
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(
                &socket2::TcpKeepalive::new()
                    .with_time(TCP_KEEPALIVE_IDLE)
                    .with_interval(TCP_KEEPALIVE_INTERVAL),
            );
            let (shared, refused, tx, connections, teardown) = (
                shared.clone(),
                refused.clone(),
                tx.clone(),
                connections.clone(),
                teardown.clone(),
            );
            let held = teardown.hold();
            handshakes.spawn(async move {
                let _held = held;
                // Evicted before its handshake completed (counted by the admission): dropped.
                let Some(outcome) =
                    unless_evicted(handshake(&shared, tcp, peer, &slot), &mut evicted).await
                else {
                    return;
                };
                // Established or refused, it no longer holds a place.
                drop(slot);
                match outcome {
                    Ok(stream) => {
                        if let Some(connection) =
                            establish(&connections, stream, peer, &teardown, send_buffer).await
                        {
                            let _ = tx.send(Ok(connection)).await;
                        }
                    }
                    Err(Some(refusal)) => refused(refusal),
                    Err(None) => {}
                }
            });
        }
    });
    Ok(Incoming {
        rx,
        accepting,
        _closing: closing,
        reloader,
        teardown,
    })
}

/// The listener's summaries: refusals over the rate limit every minute, evictions, resets in
/// grace and closed connections every [`PRESSURE_SUMMARY_INTERVAL`], each when there were
/// any; when `closed` resolves (the listener's [`Incoming`] dropped), what was counted since
/// the last ones, then the end. `_held` counts the task until then (see [`Teardown`]).
async fn write_summaries(
    limiter: Arc<Mutex<Limiter>>,
    report: Arc<impl Fn(Refused)>,
    admission: Arc<Admission>,
    connections: Arc<Connections>,
    _held: Holding,
    mut closed: oneshot::Receiver<()>,
) {
    let mut minute = tokio::time::interval(Duration::from_secs(60));
    let mut pressure = tokio::time::interval(PRESSURE_SUMMARY_INTERVAL);
    minute.tick().await;
    pressure.tick().await;
    let pressure_summaries = || {
        let summaries = [
            admission.eviction_summary(),
            admission.reset_summary(),
            admission.busy_summary(),
            connections.summary(),
        ];
        for summary in summaries.into_iter().flatten() {
            report(summary);
        }
    };
    loop {
        tokio::select! {
            _ = minute.tick() => {
                if let Some(summary) = summary(&limiter) {
                    report(summary);
                }
            }
            _ = pressure.tick() => pressure_summaries(),
            // The listener is shut: what was counted since the last summaries is
            // written now, not lost with the task.
            _ = &mut closed => {
                if let Some(summary) = summary(&limiter) {
                    report(summary);
                }
                pressure_summaries();
                return;
            }
        }
    }
}

/// Reloads the certificate and key a listener presents from their files (a renewed
/// certificate), without a restart: handshakes that start after [`CertReloader::reload`]
/// get the new one; established connections keep theirs.
#[derive(Debug, Clone)]
pub struct CertReloader {
    cert: Arc<OneCert>,
    tls: TlsFiles,
    with_ca: bool,
}

impl CertReloader {
    /// Reads the files again; on any error (unreadable, a key that is not the certificate's)
    /// the certificate in use stays, and the error says why.
    pub fn reload(&self) -> anyhow::Result<()> {
        let mut key = certified_key(&self.tls)?;
        if self.with_ca {
            key = with_ca_in_chain(key, &self.tls)?;
        }
        key.keys_match().map_err(|e| {
            anyhow::anyhow!(
                "{} and {}: {e}",
                self.tls.cert.display(),
                self.tls.key.display()
            )
        })?;
        *self.cert.0.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in force after.
fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the `rlimit` we own and pass by a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the `rlimit` we own and pass by a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
        tracing::warn!(
            "cannot raise the open-file limit from {} to {}: {}",
            limit.rlim_cur,
            limit.rlim_max,
            std::io::Error::last_os_error()
        );
    }
    limit.rlim_cur
}

/// Established connections that may be open with `open_files` descriptors: half of them, at
/// most [`MAX_CONNECTIONS`], at least 64.
fn connection_limit(open_files: u64) -> usize {
    usize::try_from(open_files / 2)
        .unwrap_or(usize::MAX)
        .clamp(64, MAX_CONNECTIONS)
}

/// Handshakes that may be in progress with `open_files` descriptors: a quarter of them, at most
/// [`MAX_HANDSHAKES`], at least 16.
fn pool_size(open_files: u64) -> usize {
    usize::try_from(open_files / 4)
        .unwrap_or(usize::MAX)
        .clamp(16, MAX_HANDSHAKES)
}

/// The address prefix a connection is counted under when the pool is full: a /24 for IPv4, a
/// /64 for IPv6. IPv6 addresses that carry an IPv4 address count as that IPv4 address:
/// IPv4-mapped (`::ffff:0:0/96`), NAT64 (`64:ff9b::/96`, RFC 6052) and 6to4 (`2002::/16`,
/// RFC 3056) — otherwise one IPv4 network behind a NAT64 gateway or a 6to4 relay would be
/// counted apart from its own IPv4 connections, or (6to4) spread over many /64s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Prefix {
    V4([u8; 3]),
    V6([u8; 8]),
}

impl Prefix {
    fn of(ip: IpAddr) -> Prefix {
        match embedded_ipv4(ip) {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                Prefix::V4([a, b, c])
            }
            IpAddr::V6(v6) => {
                let mut first = [0u8; 8];
                first.copy_from_slice(&v6.octets()[..8]);
                Prefix::V6(first)
            }
        }
    }
}

/// `ip`, or the IPv4 address an IPv6 address carries (IPv4-mapped, NAT64, 6to4).
fn embedded_ipv4(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip.to_canonical() else {
        return ip.to_canonical();
    };
    let o = v6.octets();
    let segments = v6.segments();
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        IpAddr::V4(std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]))
    } else if segments[0] == 0x2002 {
        IpAddr::V4(std::net::Ipv4Addr::new(o[2], o[3], o[4], o[5]))
    } else {
        IpAddr::V6(v6)
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Prefix::V4([a, b, c]) => write!(f, "{a}.{b}.{c}.0/24"),
            Prefix::V6(first) => {
                let mut octets = [0u8; 16];
                octets[..8].copy_from_slice(first);
                write!(f, "{}/64", std::net::Ipv6Addr::from(octets))
            }
        }
    }
}

/// The handshakes in progress, and what was evicted to make room since the last summary.
struct Admission {
    capacity: usize,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    pending: HashMap<u64, Pending>,
    prefixes: HashMap<Prefix, PrefixSlots>,
    /// Handshakes whose complete ClientHello came, oldest (first accepted) first: evicted only
    /// when no connection without one is left.
    hello_received: BTreeSet<u64>,
    evicted_silent: u64,
    evicted_started: u64,
    evicted_hello: u64,
    evicted_by_prefix: HashMap<Prefix, u64>,
    /// Newcomers reset because the victim was within its grace ([`Table::make_room`]), since
    /// the last summary, and by prefix (at most [`MAX_PREFIXES_COUNTED`] named).
    reset_in_grace: u64,
    reset_by_prefix: HashMap<Prefix, u64>,
    /// Handshakes reset because no turn for the cryptography came within [`TURN_WITHIN`] of
    /// their ClientHello, since the last summary, and by prefix (at most
    /// [`MAX_PREFIXES_COUNTED`] named).
    busy: u64,
    busy_by_prefix: HashMap<Prefix, u64>,
}

/// The handshakes of one address prefix.
#[derive(Default)]
struct PrefixSlots {
    held: usize,
    /// Its handshakes without a complete ClientHello yet, oldest (first accepted) first.
    waiting_for_hello: BTreeSet<u64>,
}

/// How far a handshake in progress has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Not a byte yet.
    Silent,
    /// Some bytes, not yet a complete ClientHello.
    Started,
    /// A complete, parseable ClientHello: real TLS progress, protected from eviction while any
    /// connection without one is left.
    HelloReceived,
}

/// One handshake in progress.
struct Pending {
    prefix: Prefix,
    stage: Stage,
    /// When it was accepted: its grace ([`EVICTION_GRACE`]) runs from here.
    accepted: Instant,
    /// Dropped to evict it: its task is waiting on the other end.
    _evict: oneshot::Sender<()>,
}

/// What the pool did with a new connection.
enum Entry {
    /// It holds a place (after one was evicted, if the pool was full); the receiver completes
    /// when it is evicted in turn.
    Admitted(Slot, oneshot::Receiver<()>),
    /// Refused at once: the pool was full and the connection that would have made room was
    /// within its grace. The caller closes it with a reset, before any TLS work.
    ResetInGrace,
}

/// How a full pool makes room for a newcomer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// This connection is closed and the newcomer takes its place.
    Evict(u64),
    /// The newcomer is closed instead ([`Entry::ResetInGrace`]).
    ResetNewcomer,
}

/// One admitted handshake; leaving frees its place (unless it was evicted, which freed it).
struct Slot {
    admission: Arc<Admission>,
    id: u64,
}

impl Admission {
    fn new(capacity: usize) -> Admission {
        Admission {
            capacity: capacity.max(2),
            table: Mutex::new(Table::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `peer` accepted at `now`. While the pool has room nobody is
    /// evicted, whatever the prefix; when it is full, one connection goes ([`Table::victim`]),
    /// or, when that one is within its grace, the newcomer does ([`Table::make_room`]).
    fn enter(this: &Arc<Admission>, peer: SocketAddr, now: Instant) -> Entry {
        Admission::enter_by(this, peer, now, Table::make_room)
    }

    /// [`Admission::enter`] with the rule that makes room in a full pool given (the tests run
    /// the same traffic through a rejected rule to show what it broke).
    fn enter_by(
        this: &Arc<Admission>,
        peer: SocketAddr,
        now: Instant,
        make_room: fn(&Table, Prefix, Instant) -> Option<Room>,
    ) -> Entry {
        let prefix = Prefix::of(peer.ip());
        let mut table = this.lock();
        if table.pending.len() >= this.capacity {
            match make_room(&table, prefix, now) {
                Some(Room::Evict(victim)) => table.evict(victim),
                // Not reached: a full pool always holds a connection to choose, and
                // every one [`Table::victim`] names is pending.
                None => {}
                Some(Room::ResetNewcomer) => {
                    table.reset_in_grace += 1;
                    if table.reset_by_prefix.len() < MAX_PREFIXES_COUNTED
                        || table.reset_by_prefix.contains_key(&prefix)
                    {
                        *table.reset_by_prefix.entry(prefix).or_insert(0) += 1;
                    }
                    return Entry::ResetInGrace;
                }
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let (evict, evicted) = oneshot::channel();
        table.pending.insert(
            id,
            Pending {
                prefix,
                stage: Stage::Silent,
                accepted: now,
                _evict: evict,
            },
        );
        let slots = table.prefixes.entry(prefix).or_default();
        slots.held += 1;
        slots.waiting_for_hello.insert(id);
        Entry::Admitted(
            Slot {
                admission: this.clone(),
                id,
            },
            evicted,
        )
    }

    /// The evictions since the last summary, as one summary (taking them).
    fn eviction_summary(&self) -> Option<Refused> {
        let mut table = self.lock();
        let (silent, started, hello) = (
            std::mem::take(&mut table.evicted_silent),
            std::mem::take(&mut table.evicted_started),
            std::mem::take(&mut table.evicted_hello),
        );
        let by_prefix = std::mem::take(&mut table.evicted_by_prefix);
        let total = silent + started + hello;
        if total == 0 {
            return None;
        }
        let busiest = busiest(&by_prefix);
        Some(Refused {
            peer: None,
            reason_code: RefusalReason::Evicted,
            reason: format!(
                "{total} unfinished TLS handshakes were closed to make room for new connections \
                 ({silent} had sent nothing, {started} had not sent a complete ClientHello, \
                 {hello} had; at most {} in progress){busiest}",
                self.capacity
            ),
            claimed: None,
            suppressed_before: total,
        })
    }
    /// The newcomers reset within a victim's grace since the last summary, as one summary
    /// (taking them).
    fn reset_summary(&self) -> Option<Refused> {
        let mut table = self.lock();
        let total = std::mem::take(&mut table.reset_in_grace);
        let by_prefix = std::mem::take(&mut table.reset_by_prefix);
        if total == 0 {
            return None;
        }
        let busiest = busiest(&by_prefix);
        Some(Refused {
            peer: None,
            reason_code: RefusalReason::ResetInGrace,
            reason: format!(
                "{total} new connections were reset at their accept, before any TLS work: every \
                 one of the {} handshake places was taken and the one to close had been accepted \
                 less than {EVICTION_GRACE:?} before and had sent nothing yet{busiest}",
                self.capacity
            ),
            claimed: None,
            suppressed_before: total,
        })
    }
}

impl Admission {
    /// The handshakes reset for want of a turn since the last summary, as one summary (taking
    /// them).
    fn busy_summary(&self) -> Option<Refused> {
        let mut table = self.lock();
        let total = std::mem::take(&mut table.busy);
        let by_prefix = std::mem::take(&mut table.busy_by_prefix);
        (total > 0).then(|| Refused {
            peer: None,
            reason_code: RefusalReason::Busy,
            reason: format!(
                "{total} TLS handshakes were reset after their ClientHello, before any \
                 cryptography: no turn of the {HANDSHAKES_COMPUTING} came within \
                 {TURN_WITHIN:?} (the clients retry after their back-off){}",
                busiest(&by_prefix)
            ),
            claimed: None,
            suppressed_before: total,
        })
    }
}

/// The prefix named most often in `by_prefix`, for a summary: "; most from P (n)", or, when
/// the map reached [`MAX_PREFIXES_COUNTED`] (prefixes past it went uncounted, so the busiest
/// may be one of those), "; most from P (n) of the first 4096 prefixes (no more counted)".
fn busiest(by_prefix: &HashMap<Prefix, u64>) -> String {
    let Some((prefix, n)) = by_prefix.iter().max_by_key(|(_, n)| **n) else {
        return String::new();
    };
    if by_prefix.len() >= MAX_PREFIXES_COUNTED {
        format!("; most from {prefix} ({n}) of the first {MAX_PREFIXES_COUNTED} prefixes (no more counted)")
    } else {
        format!("; most from {prefix} ({n})")
    }
}

impl Table {
    /// How a full pool makes room for a newcomer from `newcomer`'s prefix accepted at `now`:
    /// the victim is chosen by [`Table::victim`] alone, the grace never changes *which*
    /// connection that is; it only decides whether that one victim is closed or the newcomer
    /// is reset instead. The newcomer is reset when all of these hold:
    ///
    /// - the victim has sent nothing yet ([`Stage::Silent`]) and was accepted less than
    ///   [`EVICTION_GRACE`] before `now` — a client that has just connected has not had the
    ///   time to send its ClientHello (in a herd, its process may not have run yet);
    /// - the victim is of another prefix than the newcomer's;
    /// - the newcomer's prefix holds more than half as many places as the victim's.
    ///
    /// Otherwise the victim is closed, exactly as before the grace. Why each defence of the
    /// pool (module docs) still holds:
    ///
    /// 1. **A churn never evicts a client that sent its ClientHello while any connection
    ///    without one is left**, however fast it churns (faster than `pool / grace` too): the
    ///    victim is [`Table::victim`]'s, which takes a connection with a ClientHello only when
    ///    no other is left; the grace can only spare that victim, never pick another. (A rule
    ///    that skipped the victims within their grace and looked further took the oldest
    ///    connection past its grace — a distant client's, ClientHello and all.)
    /// 2. **A prefix's only place is not taken for another's**: again the victim is the
    ///    largest prefix's, as without the grace; a grace that skipped the largest prefix's
    ///    young connections would fall on a small prefix's older one.
    /// 3. **A prefix is never locked out or throttled to one handshake at a time by a bigger
    ///    one**: a newcomer whose prefix holds at most half the victim prefix's places (a
    ///    client alone, an admin, a fleet behind one NAT still growing) evicts as before, so
    ///    any prefix reaches at least half the largest one's share of the pool, and its
    ///    handshakes in progress complete and free places for the next ones. Resets fall only
    ///    on prefixes that already hold a share close to the largest (a herd spread over many
    ///    prefixes: each of them keeps its place while its clients send their ClientHellos).
    /// 4. **A churner sharing the newcomer's prefix (a bastion, a NAT) cannot lock it out**: a
    ///    victim of the newcomer's own prefix is always evicted, so the newcomer takes the
    ///    place of that prefix's oldest waiting connection, as before. (Resetting it would let
    ///    a churner that keeps its own connections younger than the grace refuse everyone
    ///    behind the same address.)
    /// 5. **Replayed ClientHellos are evicted as before**: a victim that has sent anything —
    ///    a ClientHello above all — has no grace.
    /// 6. **A reset costs the same for any number of them**: no TLS work, no task, no buffer
    ///    (the accept loop sets `SO_LINGER` 0 and closes the socket), counted in one number
    ///    and at most [`MAX_PREFIXES_COUNTED`] prefixes, summarised every
    ///    [`PRESSURE_SUMMARY_INTERVAL`] (`reason_code` `reset_in_grace`).
    ///
    /// What the grace costs: while the largest prefix's oldest waiting connection is younger
    /// than the grace, a prefix holding more than half its places gets its newcomers reset
    /// (the client backs off and retries); evictions fall to about `pool / grace` a second.
    /// That is the point in a herd — the evicted handshakes were the clients that were about
    /// to send their ClientHellos, and each eviction was a failed attempt for a client.
    fn make_room(&self, newcomer: Prefix, now: Instant) -> Option<Room> {
        let victim = self.victim()?;
        let pending = self.pending.get(&victim)?;
        let in_grace = pending.stage == Stage::Silent
            && now.saturating_duration_since(pending.accepted) < EVICTION_GRACE;
        if !in_grace || pending.prefix == newcomer {
            return Some(Room::Evict(victim));
        }
        let held = |prefix| self.prefixes.get(prefix).map_or(0, |slots| slots.held);
        if held(&newcomer).saturating_mul(2) <= held(&pending.prefix) {
            Some(Room::Evict(victim))
        } else {
            Some(Room::ResetNewcomer)
        }
    }

    /// The connection to close when the pool is full: the oldest one without a complete
    /// ClientHello of the prefix that holds the most places (of those that have such a
    /// connection); only when every connection has sent its ClientHello, the oldest of all.
    ///
    /// Age is the order of acceptance, never refreshed by a byte: a connection that dribbles
    /// bytes stays as old as it is.
    fn victim(&self) -> Option<u64> {
        self.prefixes
            .values()
            .filter_map(|slots| {
                let oldest = *slots.waiting_for_hello.first()?;
                Some((slots.held, std::cmp::Reverse(oldest)))
            })
            .max()
            .map(|(_, std::cmp::Reverse(oldest))| oldest)
            .or_else(|| self.hello_received.first().copied())
    }

    fn evict(&mut self, id: u64) {
        let Some(evicted) = self.remove(id) else {
            return;
        };
        match evicted.stage {
            Stage::Silent => self.evicted_silent += 1,
            Stage::Started => self.evicted_started += 1,
            Stage::HelloReceived => self.evicted_hello += 1,
        }
        if self.evicted_by_prefix.len() < MAX_PREFIXES_COUNTED
            || self.evicted_by_prefix.contains_key(&evicted.prefix)
        {
            *self.evicted_by_prefix.entry(evicted.prefix).or_insert(0) += 1;
        }
        // Dropping `evicted` drops its sender: its task closes the connection.
    }

    fn remove(&mut self, id: u64) -> Option<Pending> {
        let pending = self.pending.remove(&id)?;
        self.hello_received.remove(&id);
        if let Some(slots) = self.prefixes.get_mut(&pending.prefix) {
            slots.held = slots.held.saturating_sub(1);
            slots.waiting_for_hello.remove(&id);
            if slots.held == 0 {
                self.prefixes.remove(&pending.prefix);
            }
        }
        Some(pending)
    }
}

impl Slot {
    /// This handshake's first byte came (counted in the summary; it does not make the
    /// connection any younger).
    fn first_byte(&self) {
        if let Some(pending) = self.admission.lock().pending.get_mut(&self.id) {
            if pending.stage == Stage::Silent {
                pending.stage = Stage::Started;
            }
        }
    }

    /// This handshake's complete ClientHello came and parsed: it is protected from eviction
    /// while any connection without one is left.
    fn client_hello_received(&self) {
        let mut table = self.admission.lock();
        let Some(pending) = table.pending.get_mut(&self.id) else {
            return;
        };
        pending.stage = Stage::HelloReceived;
        let prefix = pending.prefix;
        if let Some(slots) = table.prefixes.get_mut(&prefix) {
            slots.waiting_for_hello.remove(&self.id);
        }
        table.hello_received.insert(self.id);
    }

    /// This handshake got no turn for its cryptography in time and is reset (counted for the
    /// `busy` summary).
    fn turned_away(&self) {
        let mut table = self.admission.lock();
        table.busy += 1;
        let Some(prefix) = table.pending.get(&self.id).map(|pending| pending.prefix) else {
            return;
        };
        if table.busy_by_prefix.len() < MAX_PREFIXES_COUNTED
            || table.busy_by_prefix.contains_key(&prefix)
        {
            *table.busy_by_prefix.entry(prefix).or_insert(0) += 1;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.lock().remove(self.id);
    }
}

/// The bytes every HTTP/2 client sends first (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Established connections by SPIFFE identity, and what was closed since the last summary.
struct Connections {
    limit: usize,
    table: Mutex<ConnectionTable>,
}

#[derive(Default)]
struct ConnectionTable {
    total: usize,
    per_identity: HashMap<String, usize>,
    over_identity: u64,
    over_total: u64,
    no_preface: u64,
    /// The identity closed most often over its limit since the last summary, and how often.
    over_by_identity: HashMap<String, u64>,
}

/// One established connection's place; dropping it frees the place.
struct ConnectionPlace {
    connections: Arc<Connections>,
    identity: String,
}

impl Connections {
    fn new(limit: usize) -> Connections {
        Connections {
            limit: limit.max(1),
            table: Mutex::new(ConnectionTable::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConnectionTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a connection of `identity` (its verified SPIFFE ID, or `""` for a
    /// certificate without one: they share one allowance), or `None` over either limit (the
    /// refusal counted for the summary).
    fn enter(this: &Arc<Connections>, identity: String) -> Option<ConnectionPlace> {
        let mut table = this.lock();
        let held = table.per_identity.get(&identity).copied().unwrap_or(0);
        if held >= MAX_CONNECTIONS_PER_IDENTITY {
            table.over_identity += 1;
            if table.over_by_identity.len() < MAX_PREFIXES_COUNTED
                || table.over_by_identity.contains_key(&identity)
            {
                *table.over_by_identity.entry(identity).or_insert(0) += 1;
            }
            return None;
        }
        let limit = if is_person(&identity) {
            this.limit.saturating_add(PERSON_RESERVE)
        } else {
            this.limit
        };
        if table.total >= limit {
            table.over_total += 1;
            return None;
        }
        table.total += 1;
        *table.per_identity.entry(identity.clone()).or_insert(0) += 1;
        Some(ConnectionPlace {
            connections: this.clone(),
            identity,
        })
    }

    fn no_preface(&self) {
        self.lock().no_preface += 1;
    }

    /// The connections closed after their handshake since the last summary, as one summary
    /// (taking them).
    fn summary(&self) -> Option<Refused> {
        let mut table = self.lock();
        let (over_identity, over_total, no_preface) = (
            std::mem::take(&mut table.over_identity),
            std::mem::take(&mut table.over_total),
            std::mem::take(&mut table.no_preface),
        );
        let by_identity = std::mem::take(&mut table.over_by_identity);
        let total = over_identity + over_total + no_preface;
        if total == 0 {
            return None;
        }
        let busiest = by_identity
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(identity, n)| format!("; most over its limit: {identity:?} ({n})"))
            .unwrap_or_default();
        Some(Refused {
            peer: None,
            reason_code: RefusalReason::ConnectionLimit,
            reason: format!(
                "{total} connections were closed after their TLS handshake: {over_identity} over \
                 the limit of {MAX_CONNECTIONS_PER_IDENTITY} per identity, {over_total} over the \
                 limit of {} in all, {no_preface} sent no HTTP/2 preface within \
                 {HTTP2_PREFACE_TIMEOUT:?}{busiest}",
                self.limit
            ),
            claimed: None,
            suppressed_before: total,
        })
    }
}

impl Drop for ConnectionPlace {
    fn drop(&mut self) {
        let mut table = self.connections.lock();
        table.total = table.total.saturating_sub(1);
        if let Some(n) = table.per_identity.get_mut(&self.identity) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                table.per_identity.remove(&self.identity);
            }
        }
    }
}

/// Whether a verified SPIFFE ID names a person (`spiffe://<td>/user/<name>`): they may use
/// [`PERSON_RESERVE`].
fn is_person(spiffe_id: &str) -> bool {
    spiffe_id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, path)| path.starts_with("user/"))
}

/// The identity a connection is counted under: the first SPIFFE URI of the client's verified
/// certificate, `""` if it has none; a client that presented no certificate (the
/// pre-authentication port) is counted under its address prefix, `anonymous <prefix>`, so that
/// one network cannot take every anonymous connection.
fn connection_identity(stream: &TlsStream<TcpStream>, peer: SocketAddr) -> String {
    match stream.get_ref().1.peer_certificates() {
        None => format!("anonymous {}", Prefix::of(peer.ip())),
        Some(chain) => chain
            .first()
            .and_then(|der| crate::identity::spiffe_uris(der).into_iter().next())
            .unwrap_or_default(),
    }
}

/// After a completed handshake: a place among the established connections, then the HTTP/2
/// preface within [`HTTP2_PREFACE_TIMEOUT`]; `None` (counted) when either fails and the
/// connection is closed.
async fn establish(
    connections: &Arc<Connections>,
    mut stream: TlsStream<TcpStream>,
    peer: SocketAddr,
    teardown: &Teardown,
    send_buffer: Option<usize>,
) -> Option<Connection> {
    let place = Connections::enter(connections, connection_identity(&stream, peer))?;
    let mut preface = [0u8; HTTP2_PREFACE.len()];
    let read = tokio::time::timeout(
        HTTP2_PREFACE_TIMEOUT,
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut preface),
    )
    .await;
    match read {
        Ok(Ok(_)) if &preface == HTTP2_PREFACE => Some(Connection {
            replayed: 0,
            stream: {
                if send_buffer.is_some() {
                    stream.get_mut().1.set_buffer_limit(send_buffer);
                }
                stream
            },
            _place: place,
            closing: Closing::new(teardown),
        }),
        _ => {
            tracing::debug!(%peer, "no HTTP/2 preface within {HTTP2_PREFACE_TIMEOUT:?} of the handshake");
            connections.no_preface();
            None
        }
    }
}

/// An established connection handed to tonic: its verified HTTP/2 preface is given back first,
/// then the stream; it holds its place among the established connections until dropped. Once
/// its listener's [`Teardown`] closes, every read, write and flush fails (see [`Closing`]).
pub struct Connection {
    /// How much of the preface, read before handing over, has been given back.
    replayed: usize,
    stream: TlsStream<TcpStream>,
    _place: ConnectionPlace,
    closing: Closing,
}

/// What ends a [`Connection`] when its listener's [`Teardown`] closes: the check made before
/// each read, write and flush, and the wake-up of a connection waiting on its socket (hyper's
/// connection task, parked on a read from a peer that holds its stream's window shut, or on a
/// write to a peer that stopped reading). The connection counts in the teardown until dropped.
struct Closing {
    teardown: Teardown,
    /// Resolves when the teardown closes; polled only when the socket would block, so that a
    /// call the socket answers at once pays one atomic load (the check), and one that would
    /// block also re-polls this (the watch's `Notified`: a lock of one of its notifier's
    /// shards). It stores one waker: enough because hyper polls a connection's reads and
    /// writes from the one task that serves it.
    signal: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>,
    _held: Holding,
}

impl Closing {
    fn new(teardown: &Teardown) -> Closing {
        let mut closed = teardown.0.close.subscribe();
        Closing {
            teardown: teardown.clone(),
            signal: Box::pin(async move {
                // A teardown gone (it cannot be while this holds it) counts as closed.
                let _ = closed.wait_for(|closed| *closed).await;
            }),
            _held: teardown.hold(),
        }
    }

    /// The error every call returns once the teardown has closed.
    fn error() -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the server is stopping: its connections are closed",
        )
    }

    /// The error to return once the teardown has closed: checked before every call.
    fn check(&self) -> Option<std::io::Error> {
        self.teardown.is_closed().then(Closing::error)
    }

    /// What a call that the socket left `Pending` returns: an error if the teardown closed
    /// meanwhile (the waker is registered for that, so a wait on the socket ends with it).
    fn or_pending<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<T>> {
        match std::future::Future::poll(self.signal.as_mut(), cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(Closing::error())),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.closing.teardown.is_closed() {
            // Closed by the stop: reset, not a FIN queued behind data a peer that stopped
            // reading will never take (the kernel would keep that socket after the process).
            let _ =
                socket2::SockRef::from(self.stream.get_ref().0).set_linger(Some(Duration::ZERO));
        }
    }
}

impl Connection {
    /// Runs one call on the stream unless the teardown closed: `Err` when it has, the call's
    /// result when it is ready, and when it would block, `Pending` with a wake-up at the close.
    fn unless_closed<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        call: impl FnOnce(
            std::pin::Pin<&mut TlsStream<TcpStream>>,
            &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        if let Some(closed) = self.closing.check() {
            return std::task::Poll::Ready(Err(closed));
        }
        match call(std::pin::Pin::new(&mut self.stream), cx) {
            std::task::Poll::Pending => self.closing.or_pending(cx),
            ready => ready,
        }
    }
}

impl tokio::io::AsyncRead for Connection {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Some(closed) = self.closing.check() {
            return std::task::Poll::Ready(Err(closed));
        }
        if self.replayed < HTTP2_PREFACE.len() {
            let rest = &HTTP2_PREFACE[self.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.replayed += n;
            return std::task::Poll::Ready(Ok(()));
        }
        self.unless_closed(cx, |s, cx| tokio::io::AsyncRead::poll_read(s, cx, buf))
    }
}

impl tokio::io::AsyncWrite for Connection {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.unless_closed(cx, |s, cx| tokio::io::AsyncWrite::poll_write(s, cx, buf))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.unless_closed(cx, tokio::io::AsyncWrite::poll_flush)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        // Closed by the stop: nothing more is sent (a TLS close_notify could wait for ever on
        // a peer that stopped reading); dropping the connection resets it.
        if self.closing.teardown.is_closed() {
            return std::task::Poll::Ready(Ok(()));
        }
        self.unless_closed(cx, tokio::io::AsyncWrite::poll_shutdown)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.unless_closed(cx, |s, cx| {
            tokio::io::AsyncWrite::poll_write_vectored(s, cx, bufs)
        })
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = <TlsStream<TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// The handshake's outcome, or `None` when the connection was evicted first. A handshake
/// that has completed wins over an eviction that came at the same moment: the place it would
/// free is freed by its completion anyway, and the client made it.
async fn unless_evicted<T>(
    handshake: impl std::future::Future<Output = T>,
    evicted: &mut oneshot::Receiver<()>,
) -> Option<T> {
    tokio::select! {
        biased;
        outcome = handshake => Some(outcome),
        _ = evicted => None,
    }
}

/// The established connections, in the order their handshakes completed. Dropping it stops
/// accepting and aborts the handshakes in progress (the summaries' task writes what it has
/// counted and ends); the
/// established connections stay, until their server ends them or [`Teardown::close`] does.
pub struct Incoming {
    rx: mpsc::Receiver<std::io::Result<Connection>>,
    accepting: tokio::task::JoinHandle<()>,
    /// Dropped with this: the summaries' task writes its last summaries and ends.
    _closing: oneshot::Sender<()>,
    reloader: CertReloader,
    teardown: Teardown,
}

impl Incoming {
    /// What reloads this listener's certificate from its files.
    pub fn cert_reloader(&self) -> CertReloader {
        self.reloader.clone()
    }

    /// What closes this listener's connections and tells when everything it started has
    /// ended (the server's stop, [`crate::daemon::serve_mtls`]).
    pub fn teardown(&self) -> Teardown {
        self.teardown.clone()
    }

    /// Tests: what ends the accept loop as a panic in it would.
    #[cfg(test)]
    pub(crate) fn accept_loop(&self) -> tokio::task::AbortHandle {
        self.accepting.abort_handle()
    }
}

/// What ends everything a listener started, and tells when it has. [`Teardown::close`] makes
/// every established [`Connection`] fail its next read, write and flush, and wakes the ones
/// waiting on their sockets: hyper's task serving the connection ends, which resets the socket
/// and ends the requests it carried. Whatever holds a [`Holding`] counts until dropped — each
/// connection, each handshake in progress (aborted when [`Incoming`] is dropped), the task
/// writing the refusal summaries, and each request the server runs, its handler and then its
/// response's body ([`crate::daemon::serve_mtls`]); [`Teardown::ended`] waits until none is
/// left. So a stop can return only once nothing that could write an audit record is left.
#[derive(Clone)]
pub struct Teardown(Arc<TeardownState>);

struct TeardownState {
    closed: std::sync::atomic::AtomicBool,
    close: tokio::sync::watch::Sender<bool>,
    held: std::sync::atomic::AtomicUsize,
    released: tokio::sync::Notify,
}

impl std::fmt::Debug for Teardown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Teardown")
            .field("closed", &self.is_closed())
            .field("held", &self.held())
            .finish()
    }
}

impl Default for Teardown {
    fn default() -> Self {
        Teardown::new()
    }
}

impl Teardown {
    /// Open, holding nothing.
    pub fn new() -> Teardown {
        Teardown(Arc::new(TeardownState {
            closed: std::sync::atomic::AtomicBool::new(false),
            close: tokio::sync::watch::Sender::new(false),
            held: std::sync::atomic::AtomicUsize::new(0),
            released: tokio::sync::Notify::new(),
        }))
    }

    /// Closes every connection, now and from now on (see the type's docs).
    pub fn close(&self) {
        self.0
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.0.close.send_replace(true);
    }

    /// Whether [`Teardown::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.0.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Counts something until the [`Holding`] is dropped.
    pub fn hold(&self) -> Holding {
        self.0
            .held
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Holding(self.0.clone())
    }

    /// How many [`Holding`]s are alive.
    pub fn held(&self) -> usize {
        self.0.held.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once no [`Holding`] is alive.
    pub async fn ended(&self) {
        loop {
            let released = self.0.released.notified();
            tokio::pin!(released);
            // Registered before the count is read: a release in between still wakes it.
            released.as_mut().enable();
            if self.held() == 0 {
                return;
            }
            released.await;
        }
    }
}

/// One thing a [`Teardown`] waits for; dropping it says that thing has ended.
pub struct Holding(Arc<TeardownState>);

impl std::fmt::Debug for Holding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Holding")
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        if self
            .0
            .held
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.released.notify_waiters();
        }
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = std::io::Result<Connection>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// One handshake; `Err(None)` for a probe that sent nothing and for a handshake reset for want
/// of a turn (counted by the admission). The client's deadline runs from the accept, moved by
/// the time it waited for a turn; the turn's from the ClientHello ([`Timing`]).
async fn handshake(
    shared: &Shared,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: &Slot,
) -> Result<TlsStream<TcpStream>, Option<Refused>> {
    let timing = shared.timing;
    let hello_deadline = tokio::time::Instant::now() + timing.hello_within;
    // Nothing sent in time, or closed at once: a probe, not an authentication attempt.
    let mut first = [0u8; 1];
    match tokio::time::timeout(FIRST_BYTE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => slot.first_byte(),
        _ => {
            tracing::debug!(%peer, "connection closed: nothing sent within {FIRST_BYTE_TIMEOUT:?}");
            return Err(None);
        }
    }
    let witness = Arc::new(Witness::new(shared.verifier.clone()));
    let config = match server_config(shared, witness.clone()) {
        Ok(config) => config,
        Err(e) => {
            return Err(Some(Refused {
                peer: Some(peer),
                reason_code: RefusalReason::TlsError,
                reason: format!("the server's TLS configuration was refused: {e}"),
                claimed: None,
                suppressed_before: 0,
            }))
        }
    };
    let timed_out = |witness: &Witness, reason: String| {
        Err(Some(Refused {
            peer: Some(peer),
            reason_code: RefusalReason::HandshakeTimeout,
            reason,
            claimed: witness.claimed(&shared.trust_domain),
            suppressed_before: 0,
        }))
    };
    // Kept to reset the connection if no turn comes: the stream moves into the acceptor.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
    // The ClientHello first: once it is complete and parsed, the connection has made real TLS
    // progress and is protected from eviction (module docs).
    let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let error = match tokio::time::timeout_at(hello_deadline, hello).await {
        Ok(Ok(start)) => {
            slot.client_hello_received();
            // A turn for the cryptography of our flight (below). The wait is ours: it does not count against the client's deadlines. No turn in time:
            // reset now, before any work is spent (the signature is computed by
            // `into_stream`), rather than compute a handshake for a client that has given up.
            let asked = tokio::time::Instant::now();
            let turn = tokio::time::timeout(timing.turn_within, shared.computing.acquire()).await;
            let Ok(Ok(turn)) = turn else {
                // Reset (`SO_LINGER` 0, then the close): the client sees it at once, before any
                // TLS byte from us. Through `fd`, taken before the stream moved into the
                // acceptor: neither it nor tokio-rustls's `StartHandshake` gives the stream
                // back, and tokio's safe `set_zero_linger` needs it (set before the handshake,
                // it would reset every later close too; a `dup` per handshake costs a file).
                {
                    // SAFETY: `fd` is the descriptor of the `TcpStream` that `start` owns, and
                    // `start` is alive until after this block: the descriptor is open, and is
                    // that socket, for the whole borrow, which ends with the block.
                    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                    let _ = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO));
                }
                drop(start);
                slot.turned_away();
                tracing::debug!(%peer, "handshake reset: no turn within {:?}", timing.turn_within);
                return Err(None);
            };
            // The client's own time stays bounded by `hello_within` in all: the rest must be
            // done by the ClientHello's deadline moved by the time it waited for its turn, so a
            // connection keeps its place at most for what the client had left (a ClientHello
            // trickled for 4.9 s leaves it 0.1 s, not a fresh 5 s).
            let waited = asked.elapsed();
            let rest_deadline = hello_deadline + waited;
            // The turn bounds the cryptography of our flight, which `into_stream` computes
            // before it returns (it handles the ClientHello: key exchange, certificate,
            // signature). What follows waits on the client, so the turn goes back now: held
            // across the client's answer, it was the client's to keep, and a ClientHello
            // replayed on connections that never answer held every turn for the whole
            // deadline (module docs). The client's flight is verified without a turn: one poll.
            let mut retry_asked = false;
            let mut accept = start.into_stream_with(config, |connection| {
                retry_asked = connection.handshake_kind()
                    == Some(rustls::HandshakeKind::FullWithHelloRetryRequest);
            });
            drop(turn);
            if retry_asked {
                // Our flight was only a HelloRetryRequest: the key exchange and the signature
                // would come with a second ClientHello, without a turn, and a client replaying
                // both could have them computed without bound. The group is the first of the
                // client's list that we take; clients send a key share for it (ours, rustls:
                // X25519), so a client of ours never needs a retry.
                // A fatal handshake_failure alert (a plaintext record: no keys yet), so the
                // client is told rather than seeing the connection close; best effort.
                if let Some(tcp) = accept.get_mut() {
                    let _ = tcp.try_write(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
                }
                drop(accept);
                return Err(Some(Refused {
                    peer: Some(peer),
                    reason_code: RefusalReason::TlsError,
                    reason: "the ClientHello carried no key share for the first group it \
                             offers that this server takes (X25519, P-256, P-384); a \
                             HelloRetryRequest is not offered"
                        .to_string(),
                    claimed: None,
                    suppressed_before: 0,
                }));
            }
            match tokio::time::timeout_at(rest_deadline, accept).await {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(e)) => e,
                Err(_elapsed) => {
                    return timed_out(
                        &witness,
                        format!(
                            "no completed handshake within {:?} of the accept plus the {waited:.3?} \
                             it waited for its turn",
                            timing.hello_within
                        ),
                    );
                }
            }
        }
        Ok(Err(e)) => e,
        Err(_elapsed) => {
            return timed_out(
                &witness,
                format!(
                    "no complete ClientHello within {:?} of the accept",
                    timing.hello_within
                ),
            )
        }
    };
    let tls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    if tls_error.is_none() && witness.claimed(&shared.trust_domain).is_none() {
        // Closed or reset before a handshake message we could judge: a port probe or a
        // health check, not an authentication attempt.
        tracing::debug!(%peer, "connection closed before its TLS handshake: {error}");
        return Err(None);
    }
    let code = match tls_error.map_or(RefusalReason::TlsError, reason_code) {
        // The chain was good, the handshake signature was not: the client presented a
        // certificate of ours without proving it holds its key (a copied certificate?).
        RefusalReason::BadSignature if witness.chain_verified() => RefusalReason::KeyNotProven,
        code => code,
    };
    Err(Some(Refused {
        peer: Some(peer),
        reason_code: code,
        reason: error.to_string(),
        claimed: witness.claimed(&shared.trust_domain),
        suppressed_before: 0,
    }))
}

fn reason_code(e: &rustls::Error) -> RefusalReason {
    use rustls::{AlertDescription, CertificateError};
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => RefusalReason::UnknownIssuer,
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                RefusalReason::CertificateExpired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                RefusalReason::CertificateNotValidYet
            }
            CertificateError::Revoked => RefusalReason::CertificateRevoked,
            CertificateError::BadSignature => RefusalReason::BadSignature,
            _ => RefusalReason::BadCertificate,
        },
        rustls::Error::NoCertificatesPresented => RefusalReason::NoClientCertificate,
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired,
        ) => RefusalReason::PeerRefusedOurCertificate,
        _ => RefusalReason::TlsError,
    }
}

fn client_verifier(tls: &TlsFiles) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let ca = std::fs::read(&tls.ca)
        .map_err(|e| anyhow::anyhow!("cannot read CA certificate {}: {e}", tls.ca.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        let cert = cert.map_err(|e| anyhow::anyhow!("{}: {e}", tls.ca.display()))?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        anyhow::bail!("{} holds no certificate", tls.ca.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?)
}

fn certified_key(tls: &TlsFiles) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("certificate {}: {e}", tls.cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{} holds no certificate", tls.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| anyhow::anyhow!("private key {}: {e}", tls.key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| anyhow::anyhow!("private key {}: {e}", tls.key.display()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// `key` with the CA certificates of `tls.ca` appended to its chain (those not in it yet): a
/// client without our CA (an agent enrolling) checks the chain against the CA key it was
/// given a pin of (`loggate_core::tls::pinned_enrolment_endpoint`), so the CA must be sent.
fn with_ca_in_chain(key: Arc<CertifiedKey>, tls: &TlsFiles) -> anyhow::Result<Arc<CertifiedKey>> {
    let cas = CertificateDer::pem_file_iter(&tls.ca)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("CA certificate {}: {e}", tls.ca.display()))?;
    let mut chain = key.cert.clone();
    for ca in cas {
        if !chain.contains(&ca) {
            chain.push(ca);
        }
    }
    Ok(Arc::new(CertifiedKey::new(chain, key.key.clone())))
}

fn server_config(
    shared: &Shared,
    witness: Arc<Witness>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    // TLS 1.3 only: every client of ours speaks it, and in TLS 1.2 the server's key exchange
    // ends with the client's second flight (outside its turn) while the client's certificate
    // comes in the clear, to be replayed for nothing against our chain verification.
    let mut config = ServerConfig::builder_with_provider(shared.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(witness)
        .with_cert_resolver(shared.cert.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    // One configuration per connection: a session cache or tickets could never be used.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Our one certificate, whatever the client asks for; replaced by [`CertReloader`].
#[derive(Debug)]
struct OneCert(std::sync::RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// Intermediate certificates a client may send with its own, at most: ours are issued by the
/// CA itself, or by an organisation's issuing CA under its root (`ca_cert`,
/// docs/configuration.md). A longer chain is refused before any signature is checked: each
/// intermediate is a candidate issuer that costs a signature check, and path building tries
/// their orders (webpki stops at 100 checks; 3 intermediates bound it to 15).
pub const MAX_CLIENT_INTERMEDIATES: usize = 3;

/// The refusal of a chain over [`MAX_CLIENT_INTERMEDIATES`]; its `Debug` is its sentence,
/// which is what rustls shows of it (in the refusal's reason).
struct TooManyIntermediates(usize);

impl std::fmt::Debug for TooManyIntermediates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for TooManyIntermediates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the client sent {} intermediate certificates; at most {MAX_CLIENT_INTERMEDIATES} are taken",
            self.0
        )
    }
}

impl std::error::Error for TooManyIntermediates {}

/// The shared verifier, remembering the certificate this connection's client presented.
#[derive(Debug)]
struct Witness {
    inner: Arc<dyn ClientCertVerifier>,
    presented: Mutex<Option<CertificateDer<'static>>>,
    chain_verified: std::sync::atomic::AtomicBool,
}

impl Witness {
    fn new(inner: Arc<dyn ClientCertVerifier>) -> Witness {
        Witness {
            inner,
            presented: Mutex::new(None),
            chain_verified: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn chain_verified(&self) -> bool {
        self.chain_verified
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The SPIFFE ID the presented certificate claims (unverified).
    fn claimed(&self, trust_domain: &str) -> Option<String> {
        let presented = self.presented.lock().unwrap_or_else(|p| p.into_inner());
        let der = presented.as_ref()?;
        crate::identity::spiffe_uris(der)
            .into_iter()
            .find(|uri| uri.len() <= 512)
            .map(|uri| {
                if uri.starts_with(&format!("spiffe://{trust_domain}/")) {
                    uri
                } else {
                    format!("{uri} (another trust domain)")
                }
            })
    }
}

impl ClientCertVerifier for Witness {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        *self.presented.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(end_entity.clone().into_owned());
        // Checked before any signature: the chain is verified without a turn (the client's
        // flight), and each intermediate a client sends is a candidate issuer to check.
        if intermediates.len() > MAX_CLIENT_INTERMEDIATES {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                    TooManyIntermediates(intermediates.len()),
                ))),
            ));
        }
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Certificates for tests of the listener and the servers over it.
#[cfg(test)]
pub(crate) mod test_pki {
    use crate::tls::TlsFiles;
    use std::path::Path;

    /// A CA, and a certificate for `localhost` (and a controller SPIFFE ID) it signed, with its
    /// key, written into `dir`.
    pub(crate) fn server_files(dir: &Path) -> TlsFiles {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let ca_pem = ca.pem();
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://loggate.local/controller".try_into().expect("uri"),
        ));
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
        let cert = params.signed_by(&key, &issuer).expect("certificate");
        let files = TlsFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        };
        std::fs::write(&files.ca, ca_pem).expect("write");
        std::fs::write(&files.cert, cert.pem()).expect("write");
        std::fs::write(&files.key, key.serialize_pem()).expect("write");
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_over_the_limit_are_counted_and_reported_with_the_next() {
        let mut limiter = Limiter {
            window_start: std::time::Instant::now(),
            reported: 0,
            suppressed: 0,
        };
        for _ in 0..MAX_REPORTS_PER_MINUTE {
            assert_eq!(limiter.admit(), Some(0));
        }
        assert_eq!(limiter.admit(), None);
        assert_eq!(limiter.admit(), None);
        // A minute later the next one is reported, carrying the two left out.
        limiter.window_start -= Duration::from_secs(61);
        assert_eq!(limiter.admit(), Some(2));
        assert_eq!(limiter.admit(), Some(0));
        // Left out at the end of a minute with no refusal after them: the summary carries them.
        for _ in 0..MAX_REPORTS_PER_MINUTE {
            limiter.admit();
        }
        let limiter = Mutex::new(limiter);
        let s = summary(&limiter).expect("a summary");
        assert_eq!(
            (s.reason_code.as_str(), s.suppressed_before, s.peer),
            ("suppressed", 2, None)
        );
        assert!(summary(&limiter).is_none(), "taken once");
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn addresses_share_a_slot_budget_per_slash_24_and_slash_64() {
        let v4 = |s: &str| Prefix::of(s.parse().expect("ip"));
        assert_eq!(v4("192.0.2.1"), v4("192.0.2.254"));
        assert_ne!(v4("192.0.2.1"), v4("192.0.3.1"));
        assert_eq!(
            v4("::ffff:192.0.2.9"),
            v4("192.0.2.1"),
            "IPv4-mapped is IPv4"
        );
        assert_eq!(v4("2001:db8:0:1::1"), v4("2001:db8:0:1:ffff::2"));
        assert_ne!(v4("2001:db8:0:1::1"), v4("2001:db8:0:2::1"));
        assert_eq!(v4("192.0.2.77").to_string(), "192.0.2.0/24");
        assert_eq!(v4("2001:db8:0:1::1").to_string(), "2001:db8:0:1::/64");
    }

    #[test]
    fn nat64_and_6to4_addresses_count_as_the_ipv4_address_they_carry() {
        let prefix = |s: &str| Prefix::of(s.parse().expect("ip"));
        // 192.0.2.9 through a NAT64 gateway (RFC 6052 well-known prefix).
        assert_eq!(prefix("64:ff9b::c000:209"), prefix("192.0.2.1"));
        assert_eq!(prefix("64:ff9b::192.0.2.200").to_string(), "192.0.2.0/24");
        // 6to4: 2002:AABB:CCDD::/48 is 170.187.204.221; its many /64s are one IPv4 host.
        assert_eq!(prefix("2002:c000:209:1::1"), prefix("192.0.2.1"));
        assert_eq!(prefix("2002:c000:209:ffff::1"), prefix("192.0.2.50"));
        // Other IPv6 addresses stay IPv6, even when close to those prefixes.
        assert_eq!(prefix("64:ff9b:1::c000:209").to_string(), "64:ff9b:1::/64");
        assert_eq!(prefix("2003::1").to_string(), "2003::/64");
    }

    /// Whether the connection holding `receiver` was evicted.
    fn was_evicted(receiver: &mut oneshot::Receiver<()>) -> bool {
        receiver.try_recv() != Err(oneshot::error::TryRecvError::Empty)
    }

    /// `peer` entering `admission` at `at` under `rule`: its place, or `None` when reset.
    fn enter_at(
        admission: &Arc<Admission>,
        peer: &str,
        at: Instant,
        rule: fn(&Table, Prefix, Instant) -> Option<Room>,
    ) -> Option<(Slot, oneshot::Receiver<()>)> {
        match Admission::enter_by(admission, addr(peer), at, rule) {
            Entry::Admitted(slot, evicted) => Some((slot, evicted)),
            Entry::ResetInGrace => None,
        }
    }

    /// The rule of the branch `herd2` (measured, not merged: docs/performance.md), rebuilt
    /// from its description so the tests can show what it broke: connections within their
    /// grace are skipped and the victim is the first of the others in [`Table::victim`]'s
    /// order; when every one is within its grace the newcomer is reset, unless its prefix
    /// holds no place (then [`Table::victim`]'s goes).
    fn herd2_make_room(table: &Table, newcomer: Prefix, now: Instant) -> Option<Room> {
        let past_grace = |id: &&u64| {
            table
                .pending
                .get(id)
                .is_some_and(|p| now.saturating_duration_since(p.accepted) >= EVICTION_GRACE)
        };
        let victim = table
            .prefixes
            .values()
            .filter_map(|slots| {
                let oldest = *slots.waiting_for_hello.iter().find(past_grace)?;
                Some((slots.held, std::cmp::Reverse(oldest)))
            })
            .max()
            .map(|(_, std::cmp::Reverse(oldest))| oldest)
            .or_else(|| table.hello_received.iter().find(past_grace).copied());
        match victim {
            Some(victim) => Some(Room::Evict(victim)),
            None if !table.prefixes.contains_key(&newcomer) => table.victim().map(Room::Evict),
            None => Some(Room::ResetNewcomer),
        }
    }

    /// A client from 198.51.100.7 (accepted first, its ClientHello in 100 ms later, the rest
    /// of its handshake slow: across a WAN) while a churner from three /24s opens a
    /// connection every 250 µs for 3 s — 4,000 a second into 64 places, 31 times
    /// `pool / grace` — alternately silent and one byte, keeping its last 200 open. Whether
    /// the client was evicted, and the admission (for its summaries).
    fn wan_client_under_fast_churn(
        rule: fn(&Table, Prefix, Instant) -> Option<Room>,
    ) -> (bool, Arc<Admission>) {
        let admission = Arc::new(Admission::new(64));
        let t0 = Instant::now();
        let (client, mut client_evicted) =
            enter_at(&admission, "198.51.100.7:1", t0, rule).expect("a free place");
        let mut churn = std::collections::VecDeque::new();
        for n in 0..12_000u32 {
            let at = t0 + Duration::from_micros(250 * u64::from(n));
            if n == 400 {
                client.first_byte();
                client.client_hello_received();
            }
            let peer = format!("203.0.{}.1:1", n % 3);
            if let Some((slot, evicted)) = enter_at(&admission, &peer, at, rule) {
                if n % 2 == 0 {
                    slot.first_byte();
                }
                churn.push_back((slot, evicted));
                if churn.len() > 200 {
                    churn.pop_front();
                }
            }
        }
        (was_evicted(&mut client_evicted), admission)
    }

    #[test]
    fn fast_churn_never_evicts_a_slow_client_that_sent_its_client_hello() {
        let (evicted, admission) = wan_client_under_fast_churn(Table::make_room);
        assert!(
            !evicted,
            "the client that sent its ClientHello was evicted by the churn"
        );
        let summary = admission.eviction_summary().expect("evictions");
        assert!(summary.suppressed_before >= 2_000, "{}", summary.reason);
        assert!(summary.reason.contains(" 0 had;"), "{}", summary.reason);
        // What the rule of `herd2` did with the same traffic: past its grace, the client's
        // handshake was the only one left to evict.
        let (evicted_by_herd2, _) = wan_client_under_fast_churn(herd2_make_room);
        assert!(
            evicted_by_herd2,
            "herd2's rule kept the client: the test shows nothing"
        );
    }

    /// One connection from a quiet prefix, 600 ms old and one byte in (not a ClientHello),
    /// and a busy prefix holding the other seven places, all young and silent; then a
    /// newcomer from `newcomer`. Whether the quiet prefix lost its only place, and whether
    /// the newcomer was admitted.
    fn only_place_of_a_quiet_prefix(
        newcomer: &str,
        rule: fn(&Table, Prefix, Instant) -> Option<Room>,
    ) -> (bool, bool) {
        let admission = Arc::new(Admission::new(8));
        let t0 = Instant::now();
        let (quiet, mut quiet_evicted) =
            enter_at(&admission, "192.0.2.1:1", t0, rule).expect("a free place");
        quiet.first_byte();
        let busy_at = t0 + Duration::from_millis(550);
        let _busy: Vec<_> = (0..7)
            .map(|_| enter_at(&admission, "203.0.113.1:1", busy_at, rule).expect("a free place"))
            .collect();
        let newcomer = enter_at(&admission, newcomer, t0 + Duration::from_millis(600), rule);
        (was_evicted(&mut quiet_evicted), newcomer.is_some())
    }

    #[test]
    fn a_grace_never_takes_another_prefixs_only_place() {
        // From a third prefix (holding nothing) and from the busy prefix itself: both take
        // the busy prefix's oldest place, as without a grace.
        for newcomer in ["198.51.100.1:1", "203.0.113.9:1"] {
            assert_eq!(
                only_place_of_a_quiet_prefix(newcomer, Table::make_room),
                (false, true),
                "{newcomer}: (quiet prefix evicted, newcomer admitted)"
            );
            // herd2's rule: the busy prefix's places were within their grace, so it took the
            // quiet prefix's only one.
            assert!(
                only_place_of_a_quiet_prefix(newcomer, herd2_make_room).0,
                "{newcomer}: herd2's rule kept the quiet prefix's place: the test shows nothing"
            );
        }
    }

    /// A fleet behind one /24 (192.0.2.0/24) opening a connection every 5 ms for 10 s, each
    /// sending its ClientHello 2 ms after its accept and completing 50 ms after it, while a
    /// churner from three other /24s opens a silent connection every 500 µs (2,000 a second
    /// into 128 places, 8 times `pool / grace`), keeping its last 450 open. How many of the
    /// fleet's attempts completed, of how many.
    fn fleet_behind_one_prefix_under_churn(
        rule: fn(&Table, Prefix, Instant) -> Option<Room>,
    ) -> (usize, usize) {
        let admission = Arc::new(Admission::new(128));
        let t0 = Instant::now();
        let mut churn = std::collections::VecDeque::new();
        // (accepted at, its place, its eviction, ClientHello sent)
        let mut fleet: Vec<(Instant, Slot, oneshot::Receiver<()>, bool)> = Vec::new();
        let (mut attempts, mut completed) = (0, 0);
        for step in 0..20_000u32 {
            let now = t0 + Duration::from_micros(500 * u64::from(step));
            let peer = format!("203.0.{}.1:1", step % 3);
            if let Some(entered) = enter_at(&admission, &peer, now, rule) {
                churn.push_back(entered);
                if churn.len() > 450 {
                    churn.pop_front();
                }
            }
            if step % 10 == 0 {
                attempts += 1;
                let peer = format!("192.0.2.{}:1", 1 + step % 200);
                if let Some((slot, evicted)) = enter_at(&admission, &peer, now, rule) {
                    fleet.push((now, slot, evicted, false));
                }
            }
            let mut i = 0;
            while i < fleet.len() {
                let (accepted, slot, evicted, hello) = &mut fleet[i];
                let age = now.saturating_duration_since(*accepted);
                if was_evicted(evicted) {
                    fleet.swap_remove(i);
                    continue;
                }
                if !*hello && age >= Duration::from_millis(2) {
                    slot.first_byte();
                    slot.client_hello_received();
                    *hello = true;
                }
                if age >= Duration::from_millis(50) {
                    completed += 1;
                    fleet.swap_remove(i);
                    continue;
                }
                i += 1;
            }
        }
        (completed, attempts)
    }

    #[test]
    fn a_churn_does_not_throttle_a_fleet_behind_one_prefix() {
        let (completed, attempts) = fleet_behind_one_prefix_under_churn(Table::make_room);
        assert_eq!(attempts, 2_000);
        assert!(
            completed >= attempts * 95 / 100,
            "{completed} of {attempts} of the fleet's handshakes completed"
        );
        // herd2's rule: one handshake of the fleet's prefix at a time (the review measured
        // 224 of 2,065 end to end).
        let (by_herd2, _) = fleet_behind_one_prefix_under_churn(herd2_make_room);
        eprintln!("the fleet's handshakes completed of {attempts}: {completed}; by herd2's rule {by_herd2}");
        assert!(
            by_herd2 < attempts / 4,
            "herd2's rule completed {by_herd2} of {attempts}: the test shows nothing"
        );
    }

    #[test]
    fn a_newcomer_is_reset_while_the_victim_is_within_its_grace_and_evicts_after_it() {
        let admission = Arc::new(Admission::new(4));
        let t0 = Instant::now();
        let rule: fn(&Table, Prefix, Instant) -> Option<Room> = Table::make_room;
        // Two prefixes, two places each, nothing sent yet: a herd spread over prefixes.
        let mut a: Vec<_> = (0..2)
            .map(|_| enter_at(&admission, "192.0.2.1:1", t0, rule).expect("a free place"))
            .collect();
        let _b: Vec<_> = (0..2)
            .map(|_| enter_at(&admission, "198.51.100.1:1", t0, rule).expect("a free place"))
            .collect();
        // A newcomer from a prefix as big as the victim's, within the victim's grace: reset.
        let during = t0 + EVICTION_GRACE - Duration::from_millis(1);
        assert!(enter_at(&admission, "198.51.100.2:1", during, rule).is_none());
        assert!(a.iter_mut().all(|(_, e)| !was_evicted(e)));
        // From the victim's own prefix, or from one holding at most half its places (none
        // here): the victim goes, grace or not.
        let (_own, _) =
            enter_at(&admission, "192.0.2.9:1", during, rule).expect("own prefix: admitted");
        assert!(was_evicted(&mut a[0].1), "the own prefix's oldest stayed");
        let (_small, _) =
            enter_at(&admission, "100.64.0.1:1", during, rule).expect("small prefix: admitted");
        // Past the grace, a newcomer as big as the victim's prefix evicts as before.
        let after = t0 + EVICTION_GRACE;
        let (_late, _) =
            enter_at(&admission, "198.51.100.3:1", after, rule).expect("past the grace");
        // Within the grace but the victim has sent a byte: no grace for it.
        let admission = Arc::new(Admission::new(2));
        let (first, mut first_evicted) =
            enter_at(&admission, "192.0.2.1:1", t0, rule).expect("a free place");
        let _second = enter_at(&admission, "198.51.100.1:1", t0, rule).expect("a free place");
        first.first_byte();
        let (_, _) =
            enter_at(&admission, "198.51.100.2:1", t0, rule).expect("the victim had sent a byte");
        assert!(was_evicted(&mut first_evicted));
        drop(first);
        // The reset was counted, and summarised once with its prefix.
        assert!(admission.reset_summary().is_none(), "another admission");
        let admission_with_reset = {
            let admission = Arc::new(Admission::new(2));
            let _held: Vec<_> = ["192.0.2.1:1", "198.51.100.1:1"]
                .iter()
                .map(|p| enter_at(&admission, p, t0, rule).expect("a free place"))
                .collect();
            assert!(enter_at(&admission, "198.51.100.2:1", t0, rule).is_none());
            assert!(enter_at(&admission, "198.51.100.3:1", t0, rule).is_none());
            admission
        };
        let summary = admission_with_reset.reset_summary().expect("a summary");
        assert_eq!(
            (
                summary.reason_code.as_str(),
                summary.suppressed_before,
                summary.peer
            ),
            ("reset_in_grace", 2, None)
        );
        assert!(
            summary.reason.contains("198.51.100.0/24 (2)"),
            "{}",
            summary.reason
        );
        assert!(admission_with_reset.reset_summary().is_none(), "taken once");
        assert!(
            admission_with_reset.eviction_summary().is_none(),
            "no eviction"
        );
    }

    /// A full pool, every connection silent and within its grace: `victims` places held by
    /// 192.0.2.0/24 (the largest prefix, so the victim's), `newcomers` by 198.51.100.0/24;
    /// then a newcomer from 198.51.100.0/24. Whether it was admitted, and whether the
    /// victim prefix's oldest connection was evicted.
    fn newcomer_holding(newcomers: usize, victims: usize) -> (bool, bool) {
        let admission = Arc::new(Admission::new(newcomers + victims));
        let t0 = Instant::now();
        let rule: fn(&Table, Prefix, Instant) -> Option<Room> = Table::make_room;
        let mut victim: Vec<_> = (0..victims)
            .map(|_| enter_at(&admission, "192.0.2.1:1", t0, rule).expect("a free place"))
            .collect();
        let _held: Vec<_> = (0..newcomers)
            .map(|_| enter_at(&admission, "198.51.100.1:1", t0, rule).expect("a free place"))
            .collect();
        let during = t0 + EVICTION_GRACE / 2;
        let newcomer = enter_at(&admission, "198.51.100.2:1", during, rule);
        (newcomer.is_some(), was_evicted(&mut victim[0].1))
    }

    #[test]
    fn a_newcomer_whose_prefix_holds_exactly_half_evicts_and_one_more_is_reset() {
        // Exactly half the victim prefix's places: "more than half" it is not, so the
        // victim goes, within its grace or not.
        assert_eq!(newcomer_holding(1, 2), (true, true), "1 of 2");
        assert_eq!(newcomer_holding(2, 4), (true, true), "2 of 4");
        // One more than half: the newcomer is reset and the victim keeps its place.
        assert_eq!(newcomer_holding(3, 4), (false, false), "3 of 4");
        assert_eq!(newcomer_holding(2, 3), (false, false), "2 of 3");
    }

    #[test]
    fn a_summary_whose_prefix_count_was_full_says_so() {
        let admission = Admission::new(4);
        let full: HashMap<Prefix, u64> = (0..u32::MAX)
            .take(MAX_PREFIXES_COUNTED)
            .map(|n| (Prefix::of(std::net::Ipv4Addr::from(n << 8).into()), 1))
            .collect();
        let few: HashMap<Prefix, u64> = full.iter().take(3).map(|(p, n)| (*p, *n)).collect();
        let cap = format!("of the first {MAX_PREFIXES_COUNTED} prefixes (no more counted)");
        for (by_prefix, capped) in [(full, true), (few, false)] {
            {
                let mut table = admission.lock();
                table.reset_in_grace = 9_000;
                table.reset_by_prefix = by_prefix.clone();
                table.evicted_silent = 9_000;
                table.evicted_by_prefix = by_prefix;
            }
            for summary in [admission.reset_summary(), admission.eviction_summary()] {
                let reason = summary.expect("a summary").reason;
                assert!(reason.contains("; most from "), "{reason}");
                assert_eq!(reason.contains(&cap), capped, "{reason}");
            }
        }
    }

    #[test]
    fn a_churner_sharing_the_newcomers_prefix_cannot_lock_it_out() {
        // A bastion's /24: a churner holds every place with connections younger than the
        // grace; a user behind the same address still takes the oldest one's place.
        let admission = Arc::new(Admission::new(8));
        let t0 = Instant::now();
        let mut churn: Vec<_> = (0..8)
            .map(|_| enter_at(&admission, "192.0.2.1:1", t0, Table::make_room).expect("free"))
            .collect();
        let user = enter_at(
            &admission,
            "192.0.2.1:2",
            t0 + Duration::from_millis(10),
            Table::make_room,
        );
        assert!(
            user.is_some(),
            "the user was reset behind its own prefix's churn"
        );
        assert!(was_evicted(&mut churn[0].1));
        assert!(admission.reset_summary().is_none());
        // herd2's rule: every place within its grace and the newcomer's prefix holding some,
        // so the user was reset, again and again while the churner stays young.
        let admission = Arc::new(Admission::new(8));
        let _churn: Vec<_> = (0..8)
            .map(|_| enter_at(&admission, "192.0.2.1:1", t0, herd2_make_room).expect("free"))
            .collect();
        let later = t0 + Duration::from_millis(10);
        assert!(
            enter_at(&admission, "192.0.2.1:2", later, herd2_make_room).is_none(),
            "herd2's rule let the user in: the test shows nothing"
        );
    }

    #[test]
    fn a_full_pool_takes_from_the_prefix_holding_most_its_oldest_without_a_client_hello() {
        let admission = Arc::new(Admission::new(6));
        // One connection from a quiet prefix (oldest of all), no ClientHello yet.
        let (_quiet, mut quiet_evicted) =
            enter_at(&admission, "192.0.2.1:1", Instant::now(), Table::make_room)
                .expect("admitted");
        // Three from a busy prefix, the oldest of which has sent its ClientHello.
        let mut busy: Vec<_> = (0..3)
            .map(|_| {
                enter_at(
                    &admission,
                    "203.0.113.1:1",
                    Instant::now(),
                    Table::make_room,
                )
                .expect("admitted")
            })
            .collect();
        busy[0].0.client_hello_received();
        let mut others: Vec<_> = (0..2)
            .map(|_| {
                enter_at(
                    &admission,
                    "198.51.100.1:1",
                    Instant::now(),
                    Table::make_room,
                )
                .expect("admitted")
            })
            .collect();
        // Full: a newcomer from anywhere takes the busy prefix's oldest without a ClientHello.
        let (_new, mut new_evicted) =
            enter_at(&admission, "100.64.0.1:1", Instant::now(), Table::make_room)
                .expect("admitted");
        assert!(
            !was_evicted(&mut quiet_evicted),
            "the quiet prefix lost its one"
        );
        assert!(
            !was_evicted(&mut busy[0].1),
            "the one with a ClientHello went"
        );
        assert!(
            was_evicted(&mut busy[1].1),
            "the busy prefix's oldest waiting one stayed"
        );
        assert!(!was_evicted(&mut busy[2].1));
        assert!(others.iter_mut().all(|(_, e)| !was_evicted(e)));
        assert!(
            !was_evicted(&mut new_evicted),
            "the newcomer was turned away"
        );
        let summary = admission.eviction_summary().expect("a summary");
        assert_eq!(
            (summary.reason_code, summary.suppressed_before, summary.peer),
            (RefusalReason::Evicted, 1, None)
        );
        assert!(
            summary.reason.contains("203.0.113.0/24 (1)")
                && summary.reason.contains("1 had sent nothing"),
            "{}",
            summary.reason
        );
        assert!(admission.eviction_summary().is_none(), "taken once");
    }

    #[test]
    fn when_every_connection_sent_its_client_hello_the_oldest_goes() {
        let admission = Arc::new(Admission::new(3));
        let mut held: Vec<_> = ["192.0.2.1:1", "192.0.2.2:1", "198.51.100.1:1"]
            .iter()
            .map(|a| enter_at(&admission, a, Instant::now(), Table::make_room).expect("admitted"))
            .collect();
        for (slot, _) in &held {
            slot.client_hello_received();
        }
        let (_new, _) = enter_at(
            &admission,
            "198.51.100.2:1",
            Instant::now(),
            Table::make_room,
        )
        .expect("admitted");
        assert!(was_evicted(&mut held[0].1), "the oldest stayed");
        assert!(!was_evicted(&mut held[1].1) && !was_evicted(&mut held[2].1));
        drop(held);
        let table = admission.lock();
        assert_eq!((table.pending.len(), table.prefixes.len()), (1, 1));
        assert!(table.hello_received.is_empty());
    }

    #[test]
    fn one_prefix_may_take_every_free_place_a_600_client_burst_evicts_nobody() {
        let admission = Arc::new(Admission::new(pool_size(1 << 20)));
        let mut held: Vec<_> = (0..600)
            .map(|_| {
                enter_at(&admission, "192.0.2.1:1", Instant::now(), Table::make_room)
                    .expect("admitted")
            })
            .collect();
        assert!(admission.eviction_summary().is_none());
        assert!(held.iter_mut().all(|(_, e)| !was_evicted(e)));
        drop(held);
        assert!(admission.lock().pending.is_empty());
        assert!(admission.lock().prefixes.is_empty());
        // A small pool too: one prefix fills it all before anyone is evicted.
        let small = Arc::new(Admission::new(8));
        let held: Vec<_> = (0..8)
            .map(|_| {
                enter_at(&small, "192.0.2.1:1", Instant::now(), Table::make_room).expect("admitted")
            })
            .collect();
        assert!(small.eviction_summary().is_none());
        drop(held);
    }

    #[tokio::test]
    async fn a_completed_handshake_wins_over_an_eviction_at_the_same_moment() {
        let (evict, mut evicted) = oneshot::channel::<()>();
        drop(evict); // evicted …
                     // … while the handshake had completed: the connection is kept.
        let outcome = unless_evicted(std::future::ready("established"), &mut evicted).await;
        assert_eq!(outcome, Some("established"));
        // An eviction of a handshake still in progress closes it.
        let (evict, mut evicted) = oneshot::channel::<()>();
        drop(evict);
        let outcome = unless_evicted(std::future::pending::<&str>(), &mut evicted).await;
        assert_eq!(outcome, None);
    }

    #[test]
    fn a_person_gets_in_when_agents_hold_every_place() {
        let connections = Arc::new(Connections::new(100));
        let agents: Vec<_> = (0..100)
            .map(|i| Connections::enter(&connections, format!("spiffe://loggate.local/agent/a{i}")))
            .collect();
        assert!(agents.iter().all(Option::is_some));
        assert!(
            Connections::enter(&connections, "spiffe://loggate.local/agent/late".into()).is_none(),
            "an agent over the limit in all is closed"
        );
        let admin = "spiffe://loggate.local/user/admin".to_string();
        let people: Vec<_> = (0..PERSON_RESERVE)
            .map(|_| Connections::enter(&connections, admin.clone()))
            .collect();
        assert!(
            people.iter().all(Option::is_some),
            "the admin's commands are refused while agents hold every place"
        );
        assert!(
            Connections::enter(&connections, admin.clone()).is_none(),
            "the reserve is bounded"
        );
        for not_a_person in [
            "spiffe://loggate.local/agent/user",
            "spiffe://user/agent/x",
            "",
            "user/admin",
        ] {
            assert!(!is_person(not_a_person), "{not_a_person}");
        }
    }

    #[test]
    fn established_connections_are_capped_per_identity_and_in_all_and_summarised() {
        let connections = Arc::new(Connections::new(MAX_CONNECTIONS_PER_IDENTITY + 36));
        let alice = "spiffe://loggate.local/user/alice".to_string();
        let held: Vec<_> = (0..MAX_CONNECTIONS_PER_IDENTITY)
            .map(|_| Connections::enter(&connections, alice.clone()).expect("a place"))
            .collect();
        assert!(
            Connections::enter(&connections, alice.clone()).is_none(),
            "one identity held more than {MAX_CONNECTIONS_PER_IDENTITY} connections"
        );
        // Others still get in, up to the total.
        let bob: Vec<_> = (0..36)
            .map(|i| Connections::enter(&connections, format!("spiffe://loggate.local/agent/a{i}")))
            .collect();
        assert!(bob.iter().all(Option::is_some));
        assert!(
            Connections::enter(&connections, "spiffe://loggate.local/agent/z".into()).is_none()
        );
        connections.no_preface();
        let summary = connections.summary().expect("a summary");
        assert_eq!(
            (
                summary.reason_code.as_str(),
                summary.suppressed_before,
                summary.peer
            ),
            ("connection_limit", 3, None)
        );
        assert!(
            summary.reason.contains(&format!(
                "1 over the limit of {MAX_CONNECTIONS_PER_IDENTITY} per identity"
            )) && summary.reason.contains(&format!(
                "1 over the limit of {} in all",
                MAX_CONNECTIONS_PER_IDENTITY + 36
            )) && summary.reason.contains("1 sent no HTTP/2 preface")
                && summary.reason.contains("user/alice"),
            "{}",
            summary.reason
        );
        assert!(connections.summary().is_none(), "taken once");
        // Closing frees the places.
        drop(held);
        drop(bob);
        let table = connections.lock();
        assert_eq!((table.total, table.per_identity.len()), (0, 0));
    }

    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_limit() {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read or write the `rlimit` we own.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
            // One below the hard limit: harmless to the other tests of this process.
            let lowered = libc::rlimit {
                rlim_cur: limit.rlim_max - 1,
                rlim_max: limit.rlim_max,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lowered), 0);
        }
        assert_eq!(raise_open_file_limit(), limit.rlim_max);
        let mut after = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above: getrlimit writes one rlimit into `after`, which outlives the call.
        let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut after) };
        assert_eq!(got, 0);
        assert_eq!(after.rlim_cur, limit.rlim_max);
    }

    #[test]
    fn the_pool_shrinks_with_a_low_open_file_limit() {
        assert_eq!(pool_size(1024), 256);
        assert_eq!(pool_size(20), 16);
        assert_eq!(pool_size(1 << 20), MAX_HANDSHAKES);
    }

    #[test]
    fn handshake_failures_get_a_reason_code() {
        use rustls::{AlertDescription, CertificateError, Error};
        for (error, code) in [
            (
                Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "unknown_issuer",
            ),
            (
                Error::InvalidCertificate(CertificateError::BadSignature),
                "bad_signature",
            ),
            (
                Error::InvalidCertificate(CertificateError::Expired),
                "certificate_expired",
            ),
            (
                Error::InvalidCertificate(CertificateError::NotValidYet),
                "certificate_not_valid_yet",
            ),
            (
                Error::InvalidCertificate(CertificateError::Revoked),
                "certificate_revoked",
            ),
            (
                Error::InvalidCertificate(CertificateError::BadEncoding),
                "bad_certificate",
            ),
            (Error::NoCertificatesPresented, "no_client_certificate"),
            (
                Error::AlertReceived(AlertDescription::UnknownCA),
                "peer_refused_our_certificate",
            ),
            (Error::DecryptError, "tls_error"),
        ] {
            assert_eq!(reason_code(&error).as_str(), code, "{error}");
        }
    }

    /// A client that has sent the first byte of its handshake and nothing more: the handshake
    /// waits for the rest until its deadline. Dropping the listener's `Incoming` (a server's
    /// stop) aborts it at once, and its socket is closed, before that deadline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_incoming_aborts_the_handshakes_in_progress() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // The listener of `incoming` itself (mutual TLS, the production deadlines and turns),
        // not a `Loopback`: its drop is what is tested.
        let (_dir, files) = pki();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let incoming = incoming(listener, &files, "loggate.local", |_| {}).expect("incoming");
        let teardown = incoming.teardown();
        // The refusal summaries' task.
        assert_eq!(teardown.held(), 1);
        let connected = Instant::now();
        let mut client = TcpStream::connect(addr).await.expect("connect");
        // A TLS record's first byte (a handshake), then nothing.
        client.write_all(&[0x16]).await.expect("write");
        let waited = Instant::now();
        while teardown.held() < 2 {
            assert!(
                waited.elapsed() < Duration::from_secs(30),
                "the handshake never started"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(incoming);
        tokio::time::timeout(2 * HANDSHAKE_TIMEOUT, teardown.ended())
            .await
            .expect("the handshake task and the summaries' task ended");
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(2 * HANDSHAKE_TIMEOUT, client.read(&mut buf))
            .await
            .expect("the client's socket was closed");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "closed (EOF or reset), not answered: {read:?}"
        );
        assert!(
            connected.elapsed() < HANDSHAKE_TIMEOUT,
            "closed after {:?}: by the handshake's deadline, not by the drop",
            connected.elapsed()
        );
    }

    #[tokio::test]
    async fn the_summaries_counted_before_the_listener_shuts_are_written_at_its_shut() {
        // One eviction and one reset in grace, counted well before the next 10 s summary.
        let admission = Arc::new(Admission::new(2));
        let t0 = Instant::now();
        let rule: fn(&Table, Prefix, Instant) -> Option<Room> = Table::make_room;
        let _held: Vec<_> = ["192.0.2.1:1", "198.51.100.1:1"]
            .iter()
            .map(|p| enter_at(&admission, p, t0, rule).expect("a free place"))
            .collect();
        assert!(enter_at(&admission, "198.51.100.2:1", t0, rule).is_none());
        let _evicting = enter_at(&admission, "100.64.0.1:1", t0, rule).expect("evicts");
        let written = Arc::new(Mutex::new(Vec::new()));
        let report = {
            let written = written.clone();
            Arc::new(move |refused: Refused| {
                written
                    .lock()
                    .expect("lock")
                    .push(refused.reason_code.as_str());
            })
        };
        let limiter = Arc::new(Mutex::new(Limiter {
            window_start: Instant::now(),
            reported: 0,
            suppressed: 0,
        }));
        let teardown = Teardown::new();
        let (closing, closed) = oneshot::channel();
        let task = tokio::spawn(write_summaries(
            limiter,
            report,
            admission,
            Arc::new(Connections::new(4)),
            teardown.hold(),
            closed,
        ));
        drop(closing);
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the summaries' task ended at the shut")
            .expect("no panic");
        assert_eq!(
            *written.lock().expect("lock"),
            ["evicted", "reset_in_grace"]
        );
        assert_eq!(teardown.held(), 0);
    }

    /// A server's certificates (a CA and what it signed: [`test_pki::server_files`]) in a
    /// temporary folder, removed when the folder's handle is dropped.
    fn pki() -> (tempfile::TempDir, TlsFiles) {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = test_pki::server_files(dir.path());
        (dir, files)
    }

    /// A listener on loopback that asks no client certificate (the enrolment port's kind), with
    /// its own certificates, `timing`, and `turns` turns for the cryptography; what it refuses
    /// is collected. The handshake tests' setup.
    struct Loopback {
        addr: SocketAddr,
        incoming: Incoming,
        refused: Arc<Mutex<Vec<Refused>>>,
        /// The listener's turns, for a test to take or count.
        computing: Arc<tokio::sync::Semaphore>,
        files: TlsFiles,
        /// Last: the certificates' folder goes after the listener.
        _dir: tempfile::TempDir,
    }

    impl Loopback {
        /// A listener with `turns` for the cryptography and `send_buffer` as its
        /// [`AcceptOptions::send_buffer`].
        async fn start(timing: Timing, turns: usize, send_buffer: Option<usize>) -> Loopback {
            let (dir, files) = pki();
            let computing = Arc::new(tokio::sync::Semaphore::new(turns));
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("address");
            let refused = Arc::new(Mutex::new(Vec::new()));
            let options = AcceptOptions {
                client_auth: ClientAuth::NotAsked,
                max_handshakes: 16,
                send_buffer,
            };
            let incoming = incoming_timed(
                listener,
                &files,
                "loggate.local",
                options,
                timing,
                computing.clone(),
                {
                    let refused = refused.clone();
                    move |r| refused.lock().expect("lock").push(r)
                },
            )
            .expect("incoming");
            Loopback {
                addr,
                incoming,
                refused,
                computing,
                files,
                _dir: dir,
            }
        }

        /// One of the listener's turns for the cryptography (every one, when it has one), held
        /// until dropped.
        async fn take_a_turn(&self) -> tokio::sync::OwnedSemaphorePermit {
            self.computing
                .clone()
                .acquire_owned()
                .await
                .expect("the turn")
        }

        /// A TLS client ([`tls_client`]) of this listener, run until it is aborted.
        fn spawn_client(&self) -> tokio::task::JoinHandle<std::io::Result<()>> {
            let (addr, files) = (self.addr, self.files.clone());
            tokio::spawn(async move { tls_client(addr, &files, None).await })
        }
    }

    fn client_config(files: &TlsFiles) -> Arc<rustls::ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&files.ca).expect("ca") {
            roots.add(cert.expect("ca")).expect("root");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Arc::new(config)
    }

    /// A TLS client's handshake with `addr`, then the HTTP/2 preface (what the listener waits
    /// for before it yields the connection); then it reads nothing. With `receive_buffer`,
    /// its socket's receive buffer is that small (set before the connect, so the window it
    /// offers is too).
    async fn tls_client(
        addr: SocketAddr,
        files: &TlsFiles,
        receive_buffer: Option<u32>,
    ) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let socket = tokio::net::TcpSocket::new_v4()?;
        if let Some(size) = receive_buffer {
            socket.set_recv_buffer_size(size)?;
        }
        let tcp = socket.connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut tls = tokio_rustls::TlsConnector::from(client_config(files))
            .connect(name, tcp)
            .await?;
        tls.write_all(HTTP2_PREFACE).await?;
        tls.flush().await?;
        // Held open until the listener has yielded it.
        std::future::pending::<()>().await;
        Ok(())
    }

    /// An established connection of a listener with `send_buffer`, its socket's send buffer
    /// at 4 KiB, whose client (receive buffer 4 KiB) reads nothing, with the client's task.
    async fn a_connection_to_a_stalled_client(
        send_buffer: Option<usize>,
    ) -> (
        Loopback,
        Connection,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        use tokio_stream::StreamExt;
        let mut server = Loopback::start(TIMING, 1, send_buffer).await;
        let (addr, files) = (server.addr, server.files.clone());
        let client = tokio::spawn(async move { tls_client(addr, &files, Some(4096)).await });
        let connection = tokio::time::timeout(Duration::from_secs(30), server.incoming.next())
            .await
            .expect("a connection within 30 s")
            .expect("a connection")
            .expect("established");
        socket2::SockRef::from(connection.stream.get_ref().0)
            .set_send_buffer_size(4096)
            .expect("a small send buffer");
        (server, connection, client)
    }

    /// One `poll_write_vectored` of `bufs` (as h2 writes a frame: its head, then its payload).
    async fn write_once(
        connection: &mut Connection,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(tokio::io::AsyncWrite::poll_write_vectored(
                std::pin::Pin::new(&mut *connection),
                cx,
                bufs,
            ))
        })
        .await
    }

    /// The agent's send-buffer limit ([`SEND_BUFFER_LIMIT`]): one write of a read's HTTP/2
    /// frame (its head, then 72 KiB of redacted text and its framing) is taken whole,
    /// to be encrypted as one batch of records, even when the socket takes almost none of it.
    /// With rustls's default (a listener without the option: the controller's) the write
    /// takes 64 KiB and the rest goes as a write of its own (two `writev`s per message,
    /// issue #15). And what a peer that reads nothing makes the connection hold is bounded by
    /// the limit: writes are refused (`Pending`) once rustls holds it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reads_message_is_taken_whole_and_a_stalled_peer_holds_the_limit() {
        const PAYLOAD: usize = 72 * 1024 + 64;
        let head = [0u8; 9];
        let payload = vec![b'x'; PAYLOAD];
        let frame = [
            std::io::IoSlice::new(&head),
            std::io::IoSlice::new(&payload),
        ];
        // What the socket itself may take with both buffers at 4 KiB, at most (the send
        // buffer and the receive window, each doubled by the kernel: ~8 KiB measured here, the
        // same with either limit), so that a limit 16 KiB over its value fails too.
        const SOCKET: usize = 16 * 1024;
        for (send_buffer, limit) in [
            (Some(SEND_BUFFER_LIMIT), SEND_BUFFER_LIMIT),
            (None, 64 * 1024),
        ] {
            let (_server, mut connection, client) =
                a_connection_to_a_stalled_client(send_buffer).await;
            let mut held = match write_once(&mut connection, &frame).await {
                std::task::Poll::Ready(Ok(n)) => n,
                other => panic!("the write was not taken: {other:?}"),
            };
            if send_buffer.is_some() {
                assert_eq!(held, head.len() + PAYLOAD, "taken whole by one write");
            } else {
                assert_eq!(held, 64 * 1024, "rustls's default takes 64 KiB of it");
            }
            // Write on until refused: what the connection holds is the limit, and what the
            // socket took.
            let refused = loop {
                match write_once(&mut connection, &frame).await {
                    std::task::Poll::Ready(Ok(n)) => held += n,
                    std::task::Poll::Pending => break true,
                    std::task::Poll::Ready(Err(e)) => panic!("the write failed: {e}"),
                }
                if held > limit + SOCKET {
                    break false;
                }
            };
            assert!(
                refused,
                "{held} bytes taken and still writing (limit {limit})"
            );
            assert!(
                held >= limit,
                "refused at {held} bytes, under the limit {limit}"
            );
            assert!(
                !client.is_finished(),
                "the client failed: {:?}",
                client.await
            );
            client.abort();
        }
    }

    fn refusal_codes(refused: &Mutex<Vec<Refused>>) -> Vec<&'static str> {
        let refused = refused.lock().expect("lock");
        refused.iter().map(|r| r.reason_code.as_str()).collect()
    }

    /// The herd after a restart: every turn for the cryptography is taken for longer than the
    /// client's ClientHello deadline. The wait is the server's, not the client's: the
    /// handshake completes once a turn comes. (When the deadline ran from the accept and
    /// covered the wait, it was dropped as timed out.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wait_for_a_turn_does_not_count_against_the_clients_deadline() {
        use tokio_stream::StreamExt;
        let timing = Timing {
            hello_within: Duration::from_secs(2),
            turn_within: Duration::from_secs(60),
        };
        let mut server = Loopback::start(timing, 1, None).await;
        let every_turn = server.take_a_turn().await;
        let client = server.spawn_client();
        // Twice the ClientHello deadline with every turn taken, then a turn is free.
        tokio::time::sleep(2 * timing.hello_within).await;
        drop(every_turn);
        // The connection, or (the failure this test is for) a refusal.
        let refused = &server.refused;
        let refusal = async {
            while refusal_codes(refused).is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let incoming = &mut server.incoming;
        let connection = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::select! {
                connection = incoming.next() => connection,
                () = refusal => None,
            }
        })
        .await
        .expect("a connection or a refusal within 60 s");
        assert!(
            matches!(connection, Some(Ok(_))),
            "no connection; refused: {:?}",
            refusal_codes(&server.refused)
        );
        assert!(
            !client.is_finished(),
            "the client failed: {:?}",
            client.await
        );
        client.abort();
        assert!(refusal_codes(&server.refused).is_empty());
    }

    /// No turn within its bound: the handshake is reset (the client sees a reset, not a
    /// close or an alert) before any cryptography — no ServerHello was sent — and counted in
    /// a `busy` summary, not reported as a handshake timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handshake_without_a_turn_in_time_is_reset_before_any_cryptography() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let timing = Timing {
            hello_within: Duration::from_secs(60),
            turn_within: Duration::from_secs(1),
        };
        let server = Loopback::start(timing, 1, None).await;
        let teardown = server.incoming.teardown();
        let _every_turn = server.take_a_turn().await;
        // A real ClientHello, then read what the server sends.
        let hello = client_hello(&server.files);
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        tcp.write_all(&hello).await.expect("send the ClientHello");
        let mut received = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(60), tcp.read_to_end(&mut received))
            .await
            .expect("answered within 60 s");
        assert_eq!(
            read.as_ref().map_err(std::io::Error::kind).err(),
            Some(std::io::ErrorKind::ConnectionReset),
            "{read:?}"
        );
        assert!(
            received.is_empty(),
            "the server sent {} bytes",
            received.len()
        );
        drop(server.incoming);
        tokio::time::timeout(Duration::from_secs(60), teardown.ended())
            .await
            .expect("the listener's tasks ended");
        let refused = server.refused.lock().expect("lock");
        let codes: Vec<_> = refused.iter().map(|r| r.reason_code.as_str()).collect();
        assert_eq!(codes, ["busy"]);
        assert_eq!(refused[0].suppressed_before, 1);
        assert!(
            refused[0].reason.ends_with("; most from 127.0.0.0/24 (1)"),
            "the busiest prefix is not named: {}",
            refused[0].reason
        );
    }

    /// A real ClientHello for `files`' server.
    fn client_hello(files: &TlsFiles) -> Vec<u8> {
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut hello = Vec::new();
        rustls::ClientConnection::new(client_config(files), name)
            .expect("client")
            .write_tls(&mut hello)
            .expect("ClientHello");
        hello
    }

    /// Reads what the server sends until it closes `tcp`: (the bytes, when the close came).
    async fn until_closed(tcp: &mut TcpStream) -> (Vec<u8>, Instant) {
        use tokio::io::AsyncReadExt;
        let mut received = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(60), tcp.read_to_end(&mut received))
            .await
            .expect("closed within 60 s");
        assert!(read.is_ok(), "closed, not reset: {read:?}");
        (received, Instant::now())
    }

    /// The one refusal the listener reports, once it has.
    async fn the_refusal(refused: &Mutex<Vec<Refused>>) -> (RefusalReason, String) {
        let waited = Instant::now();
        loop {
            if let Some(r) = refused.lock().expect("lock").first() {
                return (r.reason_code, r.reason.clone());
            }
            assert!(waited.elapsed() < Duration::from_secs(60), "no refusal");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The slowloris defence holds after the turn, and the wait for the turn is not taken
    /// from the client: one that sends its ClientHello at once, waits for a turn, and then
    /// sends nothing is cut by its deadline moved by that wait — not before the turn's
    /// release plus its own time (when the deadline ran from the accept, it was cut while it
    /// waited) — and reported as a handshake timeout, its turn given back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_silent_after_its_turn_is_cut_at_its_deadline_moved_by_the_wait() {
        use tokio::io::AsyncWriteExt;
        let timing = Timing {
            hello_within: Duration::from_secs(2),
            turn_within: Duration::from_secs(60),
        };
        let server = Loopback::start(timing, 1, None).await;
        let every_turn = server.take_a_turn().await;
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        tcp.write_all(&client_hello(&server.files))
            .await
            .expect("send the ClientHello");
        // The turn is ours for longer than the client's deadline, then free.
        tokio::time::sleep(timing.hello_within + Duration::from_secs(1)).await;
        let released = Instant::now();
        drop(every_turn);
        let (received, closed) = until_closed(&mut tcp).await;
        assert!(!received.is_empty(), "the server's flight was sent");
        // Timers never fire early: the deadline is at least the release plus the client's
        // time, less what it spent before it asked for the turn (milliseconds; half is slack).
        assert!(
            closed.duration_since(released) >= timing.hello_within / 2,
            "cut {:?} after its turn: its deadline did not move by the wait",
            closed.duration_since(released)
        );
        let (code, reason) = the_refusal(&server.refused).await;
        assert_eq!(code, RefusalReason::HandshakeTimeout, "{reason}");
        assert!(
            reason.contains("it waited for its turn"),
            "the deadline of the rest fired: {reason}"
        );
        assert_eq!(
            server.computing.available_permits(),
            1,
            "the turn was given back"
        );
    }

    /// A client that sends a real ClientHello and never answers the server's flight (one
    /// recorded ClientHello replayed costs an attacker nothing per connection) does not keep
    /// its turn while the server waits for it: with a single turn, a legitimate client that
    /// comes next gets through at once. When the turn was held across the client's answer, the
    /// legitimate one waited its whole bound for the turn and was reset `busy`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_never_answers_our_flight_does_not_keep_its_turn() {
        use tokio::io::AsyncWriteExt;
        use tokio_stream::StreamExt;
        let timing = Timing {
            hello_within: Duration::from_secs(60),
            turn_within: Duration::from_secs(2),
        };
        let mut server = Loopback::start(timing, 1, None).await;
        let mut silent = TcpStream::connect(server.addr).await.expect("connect");
        silent
            .write_all(&client_hello(&server.files))
            .await
            .expect("send the ClientHello");
        // The server's flight arriving means the silent client has had its turn.
        let mut flight = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(30), silent.peek(&mut flight))
            .await
            .expect("the server's flight within 30 s")
            .expect("read the flight");
        let client = server.spawn_client();
        let connection = tokio::time::timeout(Duration::from_secs(15), server.incoming.next())
            .await
            .expect("the legitimate client's connection within 15 s");
        assert!(
            matches!(connection, Some(Ok(_))),
            "no connection; refused: {:?}",
            refusal_codes(&server.refused)
        );
        assert!(
            refusal_codes(&server.refused).is_empty(),
            "refused: {:?}",
            refusal_codes(&server.refused)
        );
        assert!(
            !client.is_finished(),
            "the client failed: {:?}",
            client.await
        );
        client.abort();
        assert_eq!(
            server.computing.available_permits(),
            1,
            "the silent client holds no turn"
        );
        drop(silent);
    }

    /// `hello` (a rustls ClientHello) with its one key share relabelled to an unknown group
    /// (GREASE 0x0a0a): the server finds no share for the group it picks (X25519, the client's
    /// first) and would ask for another ClientHello.
    fn without_a_usable_key_share(hello: &[u8]) -> Vec<u8> {
        let u16_at = |at: usize| usize::from(u16::from_be_bytes([hello[at], hello[at + 1]]));
        // Record header, handshake header, version, random.
        let mut at = 5 + 4 + 2 + 32;
        at += 1 + usize::from(hello[at]);
        at += 2 + u16_at(at);
        at += 1 + usize::from(hello[at]);
        let end = at + 2 + u16_at(at);
        at += 2;
        while at + 4 <= end {
            let (kind, len) = (u16_at(at), u16_at(at + 2));
            if kind == 0x0033 {
                // The shares' length, then the first share's group.
                let group = at + 4 + 2;
                let mut patched = hello.to_vec();
                patched[group..group + 2].copy_from_slice(&[0x0a, 0x0a]);
                return patched;
            }
            at += 4 + len;
        }
        panic!("the ClientHello has no key_share extension");
    }

    /// A ClientHello that would need a HelloRetryRequest is refused before the retry is sent:
    /// the retry's second ClientHello would have our key exchange and signature computed
    /// without a turn. Only a handshake_failure alert is sent, the refusal says why, and the
    /// turn is back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_hello_that_needs_a_retry_is_refused_and_keeps_no_turn() {
        use tokio::io::AsyncWriteExt;
        let timing = Timing {
            hello_within: Duration::from_secs(30),
            turn_within: Duration::from_secs(30),
        };
        let server = Loopback::start(timing, 1, None).await;
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        tcp.write_all(&without_a_usable_key_share(&client_hello(&server.files)))
            .await
            .expect("send the ClientHello");
        let (received, _) = until_closed(&mut tcp).await;
        assert_eq!(
            received,
            [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28],
            "not only a handshake_failure alert (a HelloRetryRequest?)"
        );
        let (code, reason) = the_refusal(&server.refused).await;
        assert_eq!(code, RefusalReason::TlsError, "{reason}");
        assert!(reason.contains("HelloRetryRequest"), "{reason}");
        assert_eq!(
            server.computing.available_permits(),
            1,
            "the turn was given back"
        );
    }

    /// TLS 1.2 is not served: its key exchange ends with the client's second flight (outside
    /// the turn) and its client certificate comes in the clear.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tls_1_2_client_is_refused() {
        // The production deadlines and turns.
        let server = Loopback::start(TIMING, HANDSHAKES_COMPUTING, None).await;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&server.files.ca).expect("ca") {
            roots.add(cert.expect("ca")).expect("root");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(server.addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let connected = tokio::time::timeout(
            Duration::from_secs(30),
            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
        )
        .await
        .expect("an answer within 30 s");
        assert!(connected.is_err(), "a TLS 1.2 handshake completed");
        let (code, reason) = the_refusal(&server.refused).await;
        assert_eq!(code, RefusalReason::TlsError, "{reason}");
    }

    /// A client chain with more intermediates than [`MAX_CLIENT_INTERMEDIATES`] is refused
    /// before any of them is checked; within the bound the verifier judges it as before.
    #[test]
    fn a_client_chain_with_too_many_intermediates_is_refused_before_any_signature() {
        let (_dir, files) = pki();
        let witness = Witness::new(client_verifier(&files).expect("verifier"));
        let leaf = CertificateDer::from_pem_file(&files.cert).expect("certificate");
        let (_foreign_dir, foreign) = pki();
        let stranger = CertificateDer::from_pem_file(&foreign.ca).expect("CA");
        let now = UnixTime::now();
        let over = vec![stranger.clone(); MAX_CLIENT_INTERMEDIATES + 1];
        let e = witness
            .verify_client_cert(&leaf, &over, now)
            .expect_err("too many intermediates");
        assert!(
            e.to_string().contains(&format!(
                "sent {} intermediate",
                MAX_CLIENT_INTERMEDIATES + 1
            )),
            "{e}"
        );
        assert_eq!(reason_code(&e), RefusalReason::BadCertificate);
        // At the bound the chain is judged as before: the certificate is the CA's (the
        // strangers are not its issuers and are passed over).
        let within = vec![stranger; MAX_CLIENT_INTERMEDIATES];
        assert!(witness.verify_client_cert(&leaf, &within, now).is_ok());
    }

    /// A slowloris that trickles its ClientHello almost to the deadline and then goes silent
    /// keeps its connection only for what it had left of its own time: it is cut by the accept plus
    /// its deadline (no wait for a turn here), well before a fresh deadline from its turn
    /// would have fired (the ClientHello's completion plus the deadline, which is what the
    /// test compares against: the slack is the whole trickle, seconds).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trickled_client_hello_then_silence_is_cut_at_the_deadline_from_the_accept() {
        use tokio::io::AsyncWriteExt;
        let timing = Timing {
            hello_within: Duration::from_secs(4),
            turn_within: Duration::from_secs(60),
        };
        let server = Loopback::start(timing, 1, None).await;
        let hello = client_hello(&server.files);
        let connected = Instant::now();
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        let (head, tail) = hello.split_at(hello.len() / 2);
        tcp.write_all(head).await.expect("the first half");
        tokio::time::sleep(timing.hello_within * 5 / 8).await;
        tcp.write_all(tail).await.expect("the second half");
        let hello_done = Instant::now();
        let (received, closed) = until_closed(&mut tcp).await;
        assert!(!received.is_empty(), "the server's flight was sent");
        let (code, reason) = the_refusal(&server.refused).await;
        assert_eq!(code, RefusalReason::HandshakeTimeout, "{reason}");
        assert!(reason.contains("it waited for its turn"), "{reason}");
        assert!(
            closed.duration_since(connected) >= timing.hello_within,
            "cut before its deadline"
        );
        assert!(
            closed < hello_done + timing.hello_within,
            "held {:?} after its ClientHello: a fresh deadline from the turn",
            closed.duration_since(hello_done)
        );
        assert_eq!(
            server.computing.available_permits(),
            1,
            "the turn was given back"
        );
    }

    #[tokio::test]
    async fn a_teardown_ends_when_the_last_holding_is_dropped() {
        let teardown = Teardown::new();
        teardown.ended().await;
        let (a, b) = (teardown.hold(), teardown.hold());
        let ended = tokio::spawn({
            let teardown = teardown.clone();
            async move { teardown.ended().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!ended.is_finished(), "one is still held");
        assert_eq!(teardown.held(), 1);
        drop(b);
        tokio::time::timeout(Duration::from_secs(30), ended)
            .await
            .expect("ended")
            .expect("task");
        assert!(!teardown.is_closed());
        teardown.close();
        assert!(teardown.is_closed());
    }
}
