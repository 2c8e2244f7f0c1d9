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
