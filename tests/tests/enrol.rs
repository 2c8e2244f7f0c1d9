//! Agent enrolment end to end: the controller's pre-authentication port (`[enrolment]`), join
//! tokens, `loggate-agent enrol`, with the real binaries and real TLS on loopback.

use loggate_core::audit::{event_name, record_field};
use loggate_proto::controller_client::ControllerClient;
use loggate_proto::enrolment_client::EnrolmentClient;
use loggate_proto::EnrolRequest;
use loggate_tests::Cluster;

/// The controller's audit records named `name`.
fn records(cluster: &Cluster, name: &str) -> Vec<serde_json::Value> {
    cluster
        .controller_audit()
        .into_iter()
        .filter(|r| event_name(r) == Some(name))
        .collect()
}

fn field<'a>(record: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    record_field(record, name).unwrap_or(&serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enrolment_port_refuses_every_controller_method_and_oversized_requests() {
    let mut cluster = Cluster::new(None).expect("cluster");
    let enrolment = cluster.enable_enrolment("").expect("enrolment");
    cluster.start_controller().expect("controller");
    let channel = cluster
        .anonymous_channel(enrolment)
        .await
        .expect("an anonymous TLS connection to the enrolment port");
    // The Controller service is not served here, whatever is asked.
    let mut controller = ControllerClient::new(channel.clone());
    let status = controller
        .who_am_i(loggate_proto::WhoAmIRequest {})
        .await
        .expect_err("WhoAmI on the enrolment port");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    let status = controller
        .list_grants(loggate_proto::ListGrantsRequest::default())
        .await
        .expect_err("ListGrants on the enrolment port");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    // A request over 64 KiB is refused before it is decoded, and nothing is recorded for it.
    let mut client = EnrolmentClient::new(channel);
    let status = client
        .enrol(EnrolRequest {
            token: "lgj_x".into(),
            agent_id: "web-9".into(),
            csr_der: vec![0u8; 65 * 1024],
        })
        .await
        .expect_err("an oversized request");
    assert!(
        matches!(
            status.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{status:?}"
    );
    assert!(records(&cluster, "agent.enrol_refused").is_empty());
    // The main port still asks for a client certificate: the same anonymous client is refused.
    let refused = cluster.anonymous_channel(cluster.controller_addr).await;
    let refused = match refused {
        Err(e) => Err(format!("{e:#}")),
        Ok(channel) => ControllerClient::new(channel)
            .who_am_i(loggate_proto::WhoAmIRequest {})
            .await
            .map(|_| ())
            .map_err(|s| format!("{s:?}")),
    };
    assert!(
        refused.is_err(),
        "the mTLS port served a caller without a certificate"
    );
    cluster.stop_controller();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_token_is_refused_and_audited_without_the_token() {
    let mut cluster = Cluster::new(None).expect("cluster");
    let enrolment = cluster.enable_enrolment("").expect("enrolment");
    cluster.start_controller().expect("controller");
    let mut client =
        EnrolmentClient::new(cluster.anonymous_channel(enrolment).await.expect("channel"));
    let token = format!("lgj_{}", "7e".repeat(32));
    let status = client
        .enrol(EnrolRequest {
            token: token.clone(),
            agent_id: "web-9".into(),
            csr_der: b"not even a CSR".to_vec(),
        })
        .await
        .expect_err("an unknown token");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("not known"), "{status:?}");
    cluster.stop_controller();
    let refused = records(&cluster, "agent.enrol_refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(field(&refused[0], "reason_code"), "token_unknown");
    assert_eq!(field(&refused[0], "claimed_agent_id"), "web-9");
    assert!(field(&refused[0], "token_id").is_null());
    assert!(field(&refused[0], "peer")
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:")));
    let audit = std::fs::read_to_string(cluster.dir.join("controller/audit.jsonl")).expect("audit");
    assert!(
        !audit.contains(&token),
        "the token was written to the audit log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_over_the_per_address_budget_are_refused_unchecked_and_summarised() {
    let mut cluster = Cluster::new(None).expect("cluster");
    let enrolment = cluster
        .enable_enrolment("attempts_per_minute = 3")
        .expect("enrolment");
    cluster.start_controller().expect("controller");
    let mut client =
        EnrolmentClient::new(cluster.anonymous_channel(enrolment).await.expect("channel"));
    let mut codes = Vec::new();
    for i in 0..5 {
        let status = client
            .enrol(EnrolRequest {
                token: format!("lgj_guess{i}"),
                agent_id: "web-9".into(),
                csr_der: Vec::new(),
            })
            .await
            .expect_err("no such token");
        codes.push(status.code());
    }
    use tonic::Code::{PermissionDenied, ResourceExhausted};
    assert_eq!(
        codes,
        [
            PermissionDenied,
            PermissionDenied,
            PermissionDenied,
            ResourceExhausted,
            ResourceExhausted
        ]
    );
    // Three records one by one; the two over the budget in one summary (written at the end of
    // the minute, or at shutdown).
    cluster.stop_controller();
    let refused = records(&cluster, "agent.enrol_refused");
    let codes: Vec<&str> = refused
        .iter()
        .filter_map(|r| field(r, "reason_code").as_str())
        .collect();
    assert_eq!(
        codes,
        [
            "token_unknown",
            "token_unknown",
            "token_unknown",
            "rate_limited"
        ],
        "{refused:?}"
    );
    let summary = &refused[3];
    assert_eq!(field(summary, "suppressed_before"), 2);
    assert_eq!(field(summary, "peer"), "127.0.0.1");
}

/// A cluster with the enrolment port on, the controller running, and agent `id` configured
/// (serving `root`) with files of its own that do not exist yet. Returns the port.
fn enrolling_cluster(id: &str, root: &std::path::Path) -> (Cluster, std::net::SocketAddr) {
    let mut cluster = Cluster::new(None).expect("cluster");
    let enrolment = cluster.enable_enrolment("").expect("enrolment");
    cluster.start_controller().expect("controller");
    cluster.add_agent(id, &[root], "").expect("agent config");
    cluster.use_enrolled_files(id).expect("own files");
    (cluster, enrolment)
}

fn run(cmd: &mut std::process::Command) -> (bool, String, String) {
    let out = cmd.output().expect("run");
    let (stdout, stderr) = loggate_tests::text(&out);
    (out.status.success(), stdout, stderr)
}

#[test]
fn an_agent_enrolled_with_a_token_serves_reads_under_the_tokens_labels() {
    let logs = tempfile::tempdir().expect("tempdir");
    let logs_dir = std::fs::canonicalize(logs.path()).expect("canonical");
    std::fs::write(logs_dir.join("app.log"), "hello from web-7\n").expect("log");
    let (mut cluster, enrolment) = enrolling_cluster("web-7", &logs_dir);
    let token = cluster
        .join_token(&[
            "--labels",
            "env=prod,team=payments",
            "--ttl",
            "1h",
            "--uses",
            "1",
        ])
        .expect("token");
    assert!(token.starts_with("lgj_") && token.len() == 68, "{token}");
    let pin = cluster.ca_pin().expect("pin");
    let (ok, stdout, stderr) = run(&mut cluster.enrol_cmd("web-7", enrolment, &token, &pin));
    assert!(ok, "enrol failed: {stdout}{stderr}");
    assert!(
        stdout.contains("spiffe://loggate.local/agent/web-7"),
        "{stdout}"
    );
    let dir = cluster.agents["web-7"].dir.clone();
    let mode = |p: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(dir.join(p))
            .expect(p)
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("tls/agent.key"), 0o600, "the agent's key is private");
    // The enrolling controller's cluster is pinned at enrolment (review L2: before, a new
    // agent pinned whichever controller answered its first stream, which could be another
    // cluster's sharing the CA).
    let db = rusqlite::Connection::open(cluster.dir.join("controller/state.db")).expect("db");
    let cluster_id: String = db
        .query_row(
            "SELECT value FROM meta WHERE key = 'cluster_id'",
            [],
            |row| row.get(0),
        )
        .expect("the controller's cluster id");
    drop(db);
    let pinned = std::fs::read_to_string(dir.join("state/controller-cluster.id")).expect("pin");
    assert_eq!(pinned.trim(), cluster_id, "{stdout}");
    assert_eq!(mode("state/controller-cluster.id"), 0o600);
    assert!(
        stdout.contains(&format!("controller cluster {cluster_id} pinned")),
        "{stdout}"
    );
    cluster
        .start_agent("web-7")
        .expect("the enrolled agent starts");
    // The agent claims env=demo in its configuration; a grant for the token's label reaches it.
    let out = cluster
        .run_cli(
            "admin",
            &[
                "grant",
                "issue",
                "--subject",
                "alice",
                "--label",
                "team=payments",
                "--path",
                &format!("{}/*.log", logs_dir.display()),
                "--ttl",
                "10m",
                "--reason",
                "T-1",
                "--json",
            ],
        )
        .expect("grant issue");
    assert!(out.status.success(), "{:?}", loggate_tests::text(&out));
    let grant: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let grant_id = grant["id"].as_str().expect("id").to_string();
    cluster
        .wait_for_grant("web-7", &grant_id)
        .expect("a grant by the token's label arrives");
    let out = cluster
        .logs_cmd(
            "alice",
            "web-7",
            &["cat", &format!("{}/app.log", logs_dir.display())],
        )
        .output()
        .expect("logs cat");
    let (stdout, stderr) = loggate_tests::text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "hello from web-7\n");
    cluster.stop_agent("web-7");
    cluster.stop_controller();
    let enrolled = records(&cluster, "agent.enrolled");
    assert_eq!(enrolled.len(), 1, "{enrolled:?}");
    let record = &enrolled[0];
    assert_eq!(field(record, "agent_id"), "web-7");
    assert_eq!(
        field(record, "subject"),
        "spiffe://loggate.local/agent/web-7"
    );
    assert_eq!(
        field(record, "labels"),
        &serde_json::json!(["env=prod", "team=payments"])
    );
    assert!(field(record, "serial")
        .as_str()
        .is_some_and(|s| s.len() == 32));
    assert!(field(record, "not_after").as_i64().is_some_and(|t| t > 0));
    let created = records(&cluster, "agent.token_created");
    assert_eq!(created.len(), 1);
    assert_eq!(field(&created[0], "token_id"), field(record, "token_id"));
    let audit = std::fs::read_to_string(cluster.dir.join("controller/audit.jsonl")).expect("audit");
    assert!(
        !audit.contains(&token),
        "the token was written to the audit log"
    );
}

#[test]
fn reused_expired_and_unknown_tokens_are_refused_and_audited() {
    let logs = tempfile::tempdir().expect("tempdir");
    let (mut cluster, enrolment) = enrolling_cluster("web-7", logs.path());
    for id in ["web-8", "web-9", "web-10"] {
        cluster
            .add_agent(id, &[logs.path()], "")
            .expect("agent config");
        cluster.use_enrolled_files(id).expect("own files");
    }
    let pin = cluster.ca_pin().expect("pin");
    let once = cluster.join_token(&["--uses", "1"]).expect("token");
    let short = cluster.join_token(&["--ttl", "1s"]).expect("token");
    let (ok, _, stderr) = run(&mut cluster.enrol_cmd("web-7", enrolment, &once, &pin));
    assert!(ok, "{stderr}");
    // Used up.
    let (ok, _, stderr) = run(&mut cluster.enrol_cmd("web-8", enrolment, &once, &pin));
    assert!(
        !ok && stderr.contains("used as often as it allows"),
        "{stderr}"
    );
    // The same agent id again, with a fresh token that does not allow re-enrolment.
    let another = cluster.join_token(&[]).expect("token");
    let (ok, _, stderr) = run(&mut cluster.enrol_cmd("web-7", enrolment, &another, &pin));
    assert!(!ok && stderr.contains("already enrolled"), "{stderr}");
    // Expired.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (ok, _, stderr) = run(&mut cluster.enrol_cmd("web-9", enrolment, &short, &pin));
    assert!(!ok && stderr.contains("expired"), "{stderr}");
    // Unknown.
    let unknown = format!("lgj_{}", "0".repeat(64));
    let (ok, _, stderr) = run(&mut cluster.enrol_cmd("web-10", enrolment, &unknown, &pin));
    assert!(!ok && stderr.contains("not known"), "{stderr}");
    assert!(!cluster.agents["web-8"].dir.join("tls/agent.crt").exists());
    cluster.stop_controller();
    let refused = records(&cluster, "agent.enrol_refused");
    let got: Vec<(String, String, bool)> = refused
        .iter()
        .map(|r| {
            (
                field(r, "reason_code")
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                field(r, "claimed_agent_id")
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                field(r, "token_id").is_string(),
            )
        })
        .collect();
    let expect = |c: &str, id: &str, known: bool| (c.to_string(), id.to_string(), known);
    assert_eq!(
        got,
        [
            expect("token_used_up", "web-8", true),
            expect("already_enrolled", "web-7", true),
            expect("token_expired", "web-9", true),
            expect("token_unknown", "web-10", false),
        ]
    );
    let audit = std::fs::read_to_string(cluster.dir.join("controller/audit.jsonl")).expect("audit");
    for token in [&once, &short, &another, &unknown] {
        assert!(
            !audit.contains(token.as_str()),
            "a token was written to the audit log"
        );
    }
}

#[test]
fn a_wrong_ca_pin_is_refused_by_the_agent_before_the_token_is_sent() {
    let logs = tempfile::tempdir().expect("tempdir");
    let (cluster, enrolment) = enrolling_cluster("web-7", logs.path());
    let token = cluster.join_token(&[]).expect("token");
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let (ok, _, stderr) = run(&mut cluster.enrol_cmd("web-7", enrolment, &token, &wrong));
    assert!(!ok, "enrolled against an unpinned CA");
    assert!(stderr.contains("pinned CA key"), "{stderr}");
    assert!(!cluster.agents["web-7"].dir.join("tls/agent.key").exists());
    // The token never reached the controller: nothing was refused there, and it still works.
    assert!(records(&cluster, "agent.enrol_refused").is_empty());
    let pin = cluster.ca_pin().expect("pin");
    let (ok, _, stderr) = run(&mut cluster.enrol_cmd("web-7", enrolment, &token, &pin));
    assert!(ok, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_asking_for_another_identity_gets_the_tokens_agent_id_and_labels() {
    let mut cluster = Cluster::new(None).expect("cluster");
    let enrolment = cluster.enable_enrolment("").expect("enrolment");
    cluster.start_controller().expect("controller");
    let token = cluster
        .join_token(&["--labels", "env=prod"])
        .expect("token");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec!["loggate-controller".to_string()]).expect("params");
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://loggate.local/user/admin".try_into().expect("uri"),
    ));
    let csr = params.serialize_request(&key).expect("csr").der().to_vec();
    let mut client =
        EnrolmentClient::new(cluster.anonymous_channel(enrolment).await.expect("channel"));
    let answer = client
        .enrol(EnrolRequest {
            token,
            agent_id: "web-9".into(),
            csr_der: csr,
        })
        .await
        .expect("enrolled")
        .into_inner();
    assert_eq!(answer.labels, ["env=prod"]);
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(answer.certificate_pem.as_bytes())
        .map(|d: rustls::pki_types::CertificateDer<'static>| d.to_vec())
        .expect("pem");
    let identity = loggate_core::identity::Identity::from_certificate(&der, "loggate.local")
        .expect("identity");
    assert_eq!(identity.spiffe_id(), "spiffe://loggate.local/agent/web-9");
    let text = String::from_utf8_lossy(&der);
    assert!(!text.contains("user/admin") && !text.contains("loggate-controller"));
    cluster.stop_controller();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_labels_an_enrolled_agent_claims_are_ignored_for_the_tokens() {
    let logs = tempfile::tempdir().expect("tempdir");
    let (mut cluster, enrolment) = enrolling_cluster("web-7", logs.path());
    let token = cluster
        .join_token(&["--labels", "env=prod"])
        .expect("token");
    let pin = cluster.ca_pin().expect("pin");
    let (ok, _, stderr) = run(&mut cluster.enrol_cmd("web-7", enrolment, &token, &pin));
    assert!(ok, "{stderr}");
    // The agent, with its enrolled certificate, announces labels of its own choosing.
    let tls = cluster.agents["web-7"].dir.join("tls");
    let files = loggate_core::tls::TlsFiles {
        ca: tls.join("ca.crt"),
        cert: tls.join("agent.crt"),
        key: tls.join("agent.key"),
    };
    let channel = files
        .endpoint(
            &cluster.controller_addr.to_string(),
            loggate_core::tls::Server::Controller,
        )
        .expect("endpoint")
        .connect()
        .await
        .expect("the enrolled certificate is accepted on the main port");
    let mut agent = ControllerClient::new(channel);
    let mut stream = agent
        .watch_grants(loggate_proto::WatchGrantsRequest {
            agent_id: "web-7".into(),
            labels: vec!["team=payments".into(), "env=dev".into()],
            listen_addr: "127.0.0.1:1".into(),
            after_revision: 0,
            after_epoch: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let _ = stream.message().await.expect("the first event");
    let mut admin = cluster
        .controller_client_as("users/admin")
        .await
        .expect("admin");
    let resolved = admin
        .resolve_agent(loggate_proto::ResolveAgentRequest {
            agent_id: "web-7".into(),
        })
        .await
        .expect("resolve")
        .into_inner();
    assert_eq!(
        resolved.labels,
        ["env=prod"],
        "the agent's claim replaced the token's labels"
    );
    assert_eq!(resolved.addr, "127.0.0.1:1");
    drop(stream);
    cluster.stop_controller();
}

/// A `WatchGrants` client holding agent `id`'s enrolled certificate (`tls/` of its folder).
async fn enrolled_agent_client(
    cluster: &Cluster,
    id: &str,
) -> Result<ControllerClient<tonic::transport::Channel>, String> {
    agent_client_from(cluster, &cluster.agents[id].dir.join("tls")).await
}

/// A controller client with the agent certificate, key and CA in `tls`.
async fn agent_client_from(
    cluster: &Cluster,
    tls: &std::path::Path,
) -> Result<ControllerClient<tonic::transport::Channel>, String> {
    let files = loggate_core::tls::TlsFiles {
        ca: tls.join("ca.crt"),
        cert: tls.join("agent.crt"),
        key: tls.join("agent.key"),
    };
    let channel = files
        .endpoint(
            &cluster.controller_addr.to_string(),
            loggate_core::tls::Server::Controller,
        )
        .map_err(|e| format!("{e:#}"))?
        .connect()
        .await
        .map_err(|e| format!("{e:#}"))?;
    Ok(ControllerClient::new(channel))
}

fn watch_request(id: &str) -> loggate_proto::WatchGrantsRequest {
    loggate_proto::WatchGrantsRequest {
        agent_id: id.into(),
        labels: vec![],
        listen_addr: "127.0.0.1:1".into(),
        after_revision: 0,
        after_epoch: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_agent_is_refused_its_watch_cut_and_it_may_enrol_again() {
    let logs = tempfile::tempdir().expect("tempdir");
    let (mut cluster, enrolment) = enrolling_cluster("web-7", logs.path());
    let token = cluster
        .join_token(&["--labels", "env=prod,team=payments"])
        .expect("token");
    let pin = cluster.ca_pin().expect("pin");
    let (ok, _, stderr) = run(&mut cluster.enrol_cmd("web-7", enrolment, &token, &pin));
    assert!(ok, "{stderr}");
    let mut agent = enrolled_agent_client(&cluster, "web-7")
        .await
        .expect("client");
    let mut stream = agent
        .watch_grants(watch_request("web-7"))
        .await
        .expect("watch")
        .into_inner();
    stream
        .message()
        .await
        .expect("caught up")
        .expect("an event");
    // Listed, with its labels, certificate end and connection; filtered by selector.
    let out = cluster
        .run_cli(
            "alice",
            &[
                "agent",
                "list",
                "--selector",
                "team=payments",
                "--output",
                "json",
            ],
        )
        .expect("agent list");
    assert!(out.status.success(), "{:?}", loggate_tests::text(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one json line");
    assert_eq!(listed["id"], "web-7");
    assert_eq!(listed["connected"], true);
    assert_eq!(
        listed["labels"],
        serde_json::json!(["env=prod", "team=payments"])
    );
    assert!(listed["cert_not_after"].as_i64().is_some_and(|t| t > 0));
    let out = cluster
        .run_cli(
            "alice",
            &[
                "agent",
                "list",
                "--selector",
                "team=other",
                "--output",
                "json",
            ],
        )
        .expect("agent list");
    assert!(out.status.success() && out.stdout.is_empty());
    // Only admins remove.
    let out = cluster
        .run_cli("alice", &["agent", "remove", "web-7"])
        .expect("remove");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{:?}",
        loggate_tests::text(&out)
    );
    let out = cluster
        .run_cli("admin", &["agent", "remove", "web-7"])
        .expect("remove");
    let (stdout, stderr) = loggate_tests::text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("its stream was cut"), "{stdout}");
    // The live stream is cut, saying why.
    let cut = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream was not cut within 10 s");
    let status = cut.expect_err("the stream ends with an error");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("removed"), "{status:?}");
    // Its next call is refused.
    let mut agent = enrolled_agent_client(&cluster, "web-7")
        .await
        .expect("client");
    let status = agent
        .watch_grants(watch_request("web-7"))
        .await
        .expect_err("a removed agent's certificate");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    let out = cluster
        .run_cli("admin", &["agent", "list", "--output", "json"])
        .expect("list");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("web-7"));
    // A new token enrols it again, with a certificate issued after the removal.
    let again = cluster.join_token(&[]).expect("token");
    let (ok, _, stderr) = run(&mut cluster.enrol_cmd("web-7", enrolment, &again, &pin));
    assert!(ok, "{stderr}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut agent = enrolled_agent_client(&cluster, "web-7")
        .await
        .expect("client");
    agent
        .watch_grants(watch_request("web-7"))
        .await
        .expect("the re-enrolled certificate is accepted");
    cluster.stop_controller();
    let removed = records(&cluster, "agent.removed");
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(field(&removed[0], "agent_id"), "web-7");
    assert_eq!(field(&removed[0], "was_connected"), true);
    assert_eq!(
        field(&removed[0], "subject"),
        "spiffe://loggate.local/user/admin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_agent_renews_its_certificate_over_its_identity_and_it_is_audited() {
    let logs = tempfile::tempdir().expect("tempdir");
    let (mut cluster, enrolment) = enrolling_cluster("web-7", logs.path());
    let token = cluster.join_token(&[]).expect("token");
    let pin = cluster.ca_pin().expect("pin");
    let (ok, _, stderr) = run(&mut cluster.enrol_cmd("web-7", enrolment, &token, &pin));
    assert!(ok, "{stderr}");
    let mut agent = enrolled_agent_client(&cluster, "web-7")
        .await
        .expect("client");
    // A new key, and a CSR asking for another identity: the answer is for web-7 anyway.
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://loggate.local/user/admin".try_into().expect("uri"),
    ));
    let csr = params.serialize_request(&key).expect("csr").der().to_vec();
    let renewed = agent
        .renew_certificate(loggate_proto::RenewCertificateRequest {
            csr_der: csr,
            ..Default::default()
        })
        .await
        .expect("renewed")
        .into_inner();
    let dir = cluster.agents["web-7"].dir.join("tls");
    std::fs::write(dir.join("renewed.crt"), &renewed.certificate_pem).expect("write");
    std::fs::write(dir.join("renewed.key"), key.serialize_pem()).expect("write");
    let files = loggate_core::tls::TlsFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join("renewed.crt"),
        key: dir.join("renewed.key"),
    };
    let identity = files.own_identity("loggate.local").expect("identity");
    assert_eq!(identity.spiffe_id(), "spiffe://loggate.local/agent/web-7");
    let channel = files
        .endpoint(
            &cluster.controller_addr.to_string(),
            loggate_core::tls::Server::Controller,
        )
        .expect("endpoint")
        .connect()
        .await
        .expect("the renewed certificate is accepted");
    ControllerClient::new(channel)
        .watch_grants(watch_request("web-7"))
        .await
        .expect("watch with the renewed certificate");
    // An agent whose certificate did not come from enrolment is told where to renew.
    let mut pki_agent = cluster
        .controller_client_as("agents/web-1")
        .await
        .expect("web-1 of pki init");
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .der()
        .to_vec();
    let status = pki_agent
        .renew_certificate(loggate_proto::RenewCertificateRequest {
            csr_der: csr,
            ..Default::default()
        })
        .await
        .expect_err("not enrolled");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    cluster.stop_controller();
    let enrolled = records(&cluster, "agent.enrolled");
    let renewals = records(&cluster, "agent.certificate_renewed");
    assert_eq!(renewals.len(), 1, "{renewals:?}");
    assert_eq!(field(&renewals[0], "agent_id"), "web-7");
    assert_eq!(
        field(&renewals[0], "previous_serial"),
        field(&enrolled[0], "serial")
    );
    assert_eq!(field(&renewals[0], "serial"), renewed.serial.as_str());
    assert_ne!(
        renewed.serial,
        field(&enrolled[0], "serial").as_str().unwrap_or_default()
    );
}

/// The certificate (DER) agent `id` presents to a new TLS connection now (as alice).
fn presented_certificate(cluster: &Cluster, id: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let pki = cluster.dir.join("pki");
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(pki.join("ca.crt")).expect("ca") {
        roots.add(ca.expect("ca")).expect("root");
    }
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(pki.join("users/alice.crt"))
            .expect("cert")
            .map(|c| c.expect("cert"))
            .collect();
    let key = PrivateKeyDer::from_pem_file(pki.join("users/alice.key")).expect("key");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .expect("client auth");
    let name = ServerName::try_from(id.to_string()).expect("name");
    let mut conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
    let mut tcp = std::net::TcpStream::connect(cluster.agent_addr(id)).expect("connect");
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).expect("handshake");
    }
    conn.peer_certificates().expect("a server certificate")[0].to_vec()
}

fn file_certificate(path: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path)
        .expect("pem")
        .to_vec()
}

/// A running controller whose agent certificates live 30 s (renewed after ~20 s), and agent
/// `web-7` serving `logs_dir`, enrolled with a join token (its own key and certificate), not
/// started.
fn enrolled_with_short_lived_certificates(logs_dir: &std::path::Path) -> Cluster {
    let mut cluster = Cluster::new(None).expect("cluster");
    let enrolment = cluster
        .enable_enrolment("agent_cert_ttl = \"30s\"")
        .expect("enrolment");
    cluster.start_controller().expect("controller");
    cluster
        .add_agent("web-7", &[logs_dir], "")
        .expect("agent config");
    cluster.use_enrolled_files("web-7").expect("own files");
    let token = cluster.join_token(&[]).expect("token");
    let pin = cluster.ca_pin().expect("pin");
    let (ok, _, stderr) = run(&mut cluster.enrol_cmd("web-7", enrolment, &token, &pin));
    assert!(ok, "{stderr}");
    cluster
}

/// An agent renews only with the controller cluster it is pinned to, as it takes grant events
/// only from it: pinned to another cluster (as if this controller were an independent one
/// sharing the CA), its renewal is refused by the controller before anything is issued or
/// recorded (the request names the pinned cluster; the agent also checks the answer's), it
/// keeps its certificate and says why. Before, renewal took a certificate from whichever
/// controller answered.
#[test]
fn an_agent_refuses_a_renewal_from_a_controller_of_another_cluster() {
    let logs = tempfile::tempdir().expect("tempdir");
    let logs_dir = std::fs::canonicalize(logs.path()).expect("canonical");
    let mut cluster = enrolled_with_short_lived_certificates(&logs_dir);
    let dir = cluster.agents["web-7"].dir.clone();
    let other_cluster = "0123456789abcdef0123456789abcdef";
    std::fs::write(
        dir.join("state/controller-cluster.id"),
        format!("{other_cluster}\n"),
    )
    .expect("pin another cluster");
    let cert_file = dir.join("tls/agent.crt");
    let first = file_certificate(&cert_file);
    cluster.start_agent("web-7").expect("agent");
    // Renewal comes at two thirds of 30 s, less up to 3 s of jitter; its refusal is logged.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(45);
    loop {
        let stderr = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
        if let Some(line) = stderr
            .lines()
            .find(|line| line.contains("refused the renewal"))
        {
            assert!(
                line.contains(other_cluster) && line.contains("this controller belongs to"),
                "{line}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refused renewal: {}",
            cluster.agent_diagnosis("web-7")
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        file_certificate(&cert_file),
        first,
        "the certificate file was replaced"
    );
    assert!(
        !cluster
            .agent_audit("web-7")
            .iter()
            .any(|e| e["event"] == "agent.certificate_renewed"),
        "the agent recorded a renewal"
    );
    assert!(
        !cluster
            .controller_audit()
            .iter()
            .any(|e| e["event"] == "agent.certificate_renewed"),
        "the controller issued and recorded a renewal"
    );
}

#[test]
fn an_agent_renews_its_certificate_and_swaps_it_without_dropping_a_live_stream() {
    use std::io::{BufRead, Write};
    let logs = tempfile::tempdir().expect("tempdir");
    let logs_dir = std::fs::canonicalize(logs.path()).expect("canonical");
    let log = logs_dir.join("app.log");
    std::fs::write(&log, "before the renewal\n").expect("log");
    let mut cluster = enrolled_with_short_lived_certificates(&logs_dir);
    cluster.start_agent("web-7").expect("agent");
    let cert_file = cluster.agents["web-7"].dir.join("tls/agent.crt");
    let first = file_certificate(&cert_file);
    assert_eq!(presented_certificate(&cluster, "web-7"), first);
    cluster
        .grant(
            "alice",
            "web-7",
            &format!("{}/*.log", logs_dir.display()),
            "10m",
        )
        .expect("grant");
    let mut child = cluster
        .logs_cmd(
            "alice",
            "web-7",
            &["tail", "--follow", &log.display().to_string()],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tail --follow");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let wait = std::time::Duration::from_secs(10);
    assert_eq!(
        lines.recv_timeout(wait).expect("first line"),
        "before the renewal"
    );
    // Renewal at two thirds of 30 s, less up to 3 s of jitter.
    cluster
        .wait_for_audit("web-7", std::time::Duration::from_secs(40), |e| {
            e["event"] == "agent.certificate_renewed"
        })
        .expect("the agent renewed its certificate");
    let renewed = file_certificate(&cert_file);
    assert_ne!(renewed, first, "the certificate file was not replaced");
    // New connections get the new certificate; the live stream goes on.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while presented_certificate(&cluster, "web-7") != renewed {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent still presents its old certificate"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(b"after the renewal\n"))
        .expect("append");
    assert_eq!(
        lines
            .recv_timeout(wait)
            .expect("the live stream survived the renewal"),
        "after the renewal"
    );
    assert!(
        child.try_wait().expect("wait").is_none(),
        "tail --follow ended"
    );
    let _ = child.kill();
    let _ = child.wait();
    let out = cluster
        .logs_cmd("alice", "web-7", &["cat", &log.display().to_string()])
        .output()
        .expect("cat");
    assert!(out.status.success(), "{:?}", loggate_tests::text(&out));
    cluster.stop_agent("web-7");
    cluster.stop_controller();
    let renewals = records(&cluster, "agent.certificate_renewed");
    assert!(!renewals.is_empty(), "the controller recorded no renewal");
    assert_eq!(field(&renewals[0], "agent_id"), "web-7");
}

/// The next grant or revocation event of `stream` (heartbeats skipped), within 20 s.
async fn next_change(
    stream: &mut tonic::Streaming<loggate_proto::GrantEvent>,
) -> loggate_proto::grant_event::Event {
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            let event = stream
                .message()
                .await
                .expect("the stream")
                .expect("an event");
            match event.event {
                Some(loggate_proto::grant_event::Event::Heartbeat(_)) | None => continue,
                Some(change) => return change,
            }
        }
    })
    .await
    .expect("no change within 20 s")
}

/// Issue 12's label gap, through the real controller: an agent that received a grant by its
/// token's label `team=a`, then re-enrolled with a token of `team=b`, resumes from its position
/// and is sent that grant's revocation (its old label is a former label), not `team=a`'s new
/// grants. Before the former labels its catch-up read only `team=b`'s rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_enrolled_agent_under_other_labels_is_sent_the_revocation_of_its_old_labels_grant() {
    let logs = tempfile::tempdir().expect("tempdir");
    let (mut cluster, enrolment) = enrolling_cluster("web-7", logs.path());
    let pin = cluster.ca_pin().expect("pin");
    let token = cluster
        .join_token(&["--labels", "team=a", "--reenrol"])
        .expect("token");
    let (ok, _, stderr) = run(&mut cluster.enrol_cmd("web-7", enrolment, &token, &pin));
    assert!(ok, "{stderr}");
    assert!(cluster
        .run_cli("alice", &["whoami"])
        .expect("whoami")
        .status
        .success());
    let issue = |label: &str| {
        let out = cluster
            .run_cli(
                "admin",
                &[
                    "grant",
                    "issue",
                    "--subject",
                    "alice",
                    "--label",
                    label,
                    "--path",
                    "/var/log/*.log",
                    "--ttl",
                    "30m",
                    "--reason",
                    "TEST-1",
                    "--json",
                ],
            )
            .expect("grant issue");
        assert!(out.status.success(), "{:?}", loggate_tests::text(&out));
        let issued: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        issued["id"].as_str().expect("an id").to_string()
    };
    let granted = issue("team=a");
    let mut agent = enrolled_agent_client(&cluster, "web-7")
        .await
        .expect("client");
    let mut stream = agent
        .watch_grants(watch_request("web-7"))
        .await
        .expect("watch")
        .into_inner();
    let (epoch, revision) = loop {
        let event = stream
            .message()
            .await
            .expect("the stream")
            .expect("an event");
        if let Some(loggate_proto::grant_event::Event::Heartbeat(_)) = event.event {
            break (event.epoch, event.revision);
        }
        match event.event {
            Some(loggate_proto::grant_event::Event::Grant(g)) => assert_eq!(g.grant_id, granted),
            other => panic!("{other:?}"),
        }
    };
    drop(stream);
    // Re-enrolled with other labels; meanwhile the grant is revoked and another team=a
    // grant issued.
    let token = cluster
        .join_token(&["--labels", "team=b", "--reenrol"])
        .expect("token");
    let (ok, _, stderr) = run(&mut cluster.enrol_cmd("web-7", enrolment, &token, &pin));
    assert!(ok, "{stderr}");
    let out = cluster
        .run_cli("admin", &["grant", "revoke", &granted, "--reason", "done"])
        .expect("revoke");
    assert!(out.status.success(), "{:?}", loggate_tests::text(&out));
    let other_a = issue("team=a");
    let for_b = issue("team=b");
    // The re-enrolment's certificate starts a second after it (it supersedes the earlier ones).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut agent = enrolled_agent_client(&cluster, "web-7")
        .await
        .expect("client");
    let mut stream = agent
        .watch_grants(loggate_proto::WatchGrantsRequest {
            after_revision: revision,
            after_epoch: epoch,
            ..watch_request("web-7")
        })
        .await
        .expect("watch")
        .into_inner();
    match next_change(&mut stream).await {
        loggate_proto::grant_event::Event::Revocation(r) => assert_eq!(r.grant_id, granted),
        other => panic!("expected the revocation of {granted}, got {other:?}"),
    }
    match next_change(&mut stream).await {
        loggate_proto::grant_event::Event::Grant(g) => {
            assert_eq!(g.grant_id, for_b, "not team=a's {other_a}")
        }
        other => panic!("expected {for_b}, got {other:?}"),
    }
    drop(stream);
    cluster.stop_controller();
}

/// A stream open across its agent's re-enrolment with other labels (a re-enrolment does not
/// close the agent's connection) is cut once the replica reloads the former labels (every
/// 10 s), with `UNAVAILABLE` naming the change: the agent reconnects under its new labels
/// instead of going on being sent the old label's new grants. Before, the stream ran on under
/// `team=a` until the agent reconnected of its own accord.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_open_across_a_re_enrolment_with_other_labels_is_cut() {
    let logs = tempfile::tempdir().expect("tempdir");
    let (mut cluster, enrolment) = enrolling_cluster("web-8", logs.path());
    let pin = cluster.ca_pin().expect("pin");
    let token = cluster
        .join_token(&["--labels", "team=a", "--reenrol"])
        .expect("token");
    let (ok, _, stderr) = run(&mut cluster.enrol_cmd("web-8", enrolment, &token, &pin));
    assert!(ok, "{stderr}");
    let mut agent = enrolled_agent_client(&cluster, "web-8")
        .await
        .expect("client");
    let mut stream = agent
        .watch_grants(watch_request("web-8"))
        .await
        .expect("watch")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("the stream")
        .expect("an event");
    assert!(matches!(
        first.event,
        Some(loggate_proto::grant_event::Event::Heartbeat(_))
    ));
    let token = cluster
        .join_token(&["--labels", "team=b", "--reenrol"])
        .expect("token");
    let (ok, _, stderr) = run(&mut cluster.enrol_cmd("web-8", enrolment, &token, &pin));
    assert!(ok, "{stderr}");
    // Heartbeats until the cut; a minute at most (the reload runs every 10 s).
    let cut = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => break status,
            }
        }
    })
    .await
    .expect("the stream under team=a is cut after the re-enrolment");
    // Its certificate was superseded by the re-enrolment (revoked at the same reload as the
    // labels' change is seen): cut as revoked, or as streaming labels it no longer holds.
    assert!(
        (cut.code() == tonic::Code::Unauthenticated && cut.message().contains("enrolled again"))
            || (cut.code() == tonic::Code::Unavailable && cut.message().contains("labels changed")),
        "{cut:?}"
    );
    cluster.stop_controller();
}

/// Review of issue #12, H1: a re-enrolment (a rebuilt host, perhaps because it was
/// compromised) supersedes the certificates issued to the id before it. The old holder's
/// certificate can no longer renew itself (before, it renewed for ever and kept the identity)
/// nor watch grants; the re-enrolment's certificate does both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_enrolment_supersedes_the_earlier_certificate_which_no_longer_renews_or_watches() {
    let logs = tempfile::tempdir().expect("tempdir");
    let (mut cluster, enrolment) = enrolling_cluster("web-9", logs.path());
    let pin = cluster.ca_pin().expect("pin");
    let token = cluster.join_token(&[]).expect("token");
    let (ok, _, stderr) = run(&mut cluster.enrol_cmd("web-9", enrolment, &token, &pin));
    assert!(ok, "{stderr}");
    // The old holder keeps its key and certificate.
    let tls = cluster.agents["web-9"].dir.join("tls");
    let old = tls.join("old");
    std::fs::create_dir_all(&old).expect("dir");
    for file in ["ca.crt", "agent.crt", "agent.key"] {
        std::fs::copy(tls.join(file), old.join(file)).expect("copy");
    }
    let old_client = || async {
        agent_client_from(&cluster, &old)
            .await
            .expect("TLS to the controller")
    };
    let csr = || {
        let key = rcgen::KeyPair::generate().expect("key");
        rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .serialize_request(&key)
            .expect("csr")
            .der()
            .to_vec()
    };
    // Before the re-enrolment the old certificate renews.
    old_client()
        .await
        .renew_certificate(loggate_proto::RenewCertificateRequest {
            csr_der: csr(),
            ..Default::default()
        })
        .await
        .expect("renewed before the re-enrolment");
    let again = cluster.join_token(&["--reenrol"]).expect("token");
    let (ok, _, stderr) = run(&mut cluster.enrol_cmd("web-9", enrolment, &again, &pin));
    assert!(ok, "{stderr}");
    // Refused at once by the store's check (this replica's revocation set may not have it
    // yet), then at the identity check once it is reloaded (within 10 s).
    let status = old_client()
        .await
        .renew_certificate(loggate_proto::RenewCertificateRequest {
            csr_der: csr(),
            ..Default::default()
        })
        .await
        .expect_err("a superseded certificate renews");
    assert!(
        matches!(
            status.code(),
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
        ),
        "{status:?}"
    );
    assert!(
        status.message().contains("superseded") || status.message().contains("enrolled again"),
        "{status:?}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let refused = loop {
        match old_client()
            .await
            .watch_grants(watch_request("web-9"))
            .await
        {
            Err(status) => break status,
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await
            }
            Ok(_) => panic!("the superseded certificate still watches 15 s after"),
        }
    };
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    // The re-enrolment's certificate (starting a second after it) watches and renews.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut agent = enrolled_agent_client(&cluster, "web-9")
        .await
        .expect("client");
    agent
        .watch_grants(watch_request("web-9"))
        .await
        .expect("the re-enrolled certificate watches");
    agent
        .renew_certificate(loggate_proto::RenewCertificateRequest {
            csr_der: csr(),
            ..Default::default()
        })
        .await
        .expect("the re-enrolled certificate renews");
    cluster.stop_controller();
}
