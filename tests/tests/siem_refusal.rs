//! End-to-end: a SIEM collector that refuses delivery for good (HEC 403, a refused token) is
//! not hammered (issue 17, item 4): the real agent sends once, logs the refusal once, says
//! `"state":"refused"` in the sink's status file, keeps every record in its audit file, and
//! delivers them all once the collector accepts again (after its pause, or a restart).

use loggate_tests::{text, Fixture, HecReceiver};
use std::time::{Duration, Instant};

fn sink(hec: &HecReceiver, token_file: &std::path::Path) -> String {
    format!(
        "[[audit.sinks]]\nname = \"splunk\"\nkind = \"hec\"\n\
         url = \"http://{}/services/collector/event\"\ntoken_file = {:?}\nbatch_size = 5\n",
        hec.addr,
        token_file.display().to_string()
    )
}

fn status(f: &Fixture) -> serde_json::Value {
    std::fs::read(
        f.cluster
            .dir
            .join("agents/web-1/state/sinks/splunk.status.json"),
    )
    .ok()
    .and_then(|b| serde_json::from_slice(&b).ok())
    .unwrap_or_default()
}

#[test]
fn a_collector_refusing_the_token_gets_one_request_and_one_log_line_not_a_retry_loop(
) -> anyhow::Result<()> {
    // Every request in this test is refused with 403.
    let hec = HecReceiver::start_failing(usize::MAX, 403)?;
    let secrets = tempfile::tempdir()?;
    let token_file = secrets.path().join("hec.token");
    std::fs::write(&token_file, "0d4c-revoked-token\n")?;
    let mut f = Fixture::start_with(&sink(&hec, &token_file))?;
    f.grant("alice", "30m")?;
    for _ in 0..3 {
        let out = f.logs("alice", &["cat", &f.api_log()])?;
        assert!(out.status.success(), "{}", text(&out).1);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while status(&f)["state"] != "refused" {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the sink never said refused ({} requests so far): {}",
            hec.requests().len(),
            status(&f)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A retriable failure would be tried again after 250 ms, 500 ms, 1 s, 2 s, …: about six
    // times in these 4 s. A permanent one waits 5 minutes.
    std::thread::sleep(Duration::from_secs(4));
    let requests = hec.requests();
    assert_eq!(requests.len(), 1, "{} requests", requests.len());
    assert_eq!(requests[0].status, 403);
    let s = status(&f);
    assert_eq!(s["delivered_seq"], 0, "{s}");
    assert!(
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("the collector answered 403 Forbidden")),
        "{s}"
    );
    let log = std::fs::read_to_string(f.cluster.dir.join("agents/web-1/stderr.log"))?;
    assert_eq!(
        log.matches("the receiver refused delivery").count(),
        1,
        "logged once: {log}"
    );
    assert!(
        !log.contains("0d4c-revoked-token"),
        "the token is never logged"
    );

    // Nothing was skipped: once the collector accepts and the agent restarts (an operator's
    // fix), every record of the audit file arrives.
    hec.accept_all();
    f.cluster.stop_agent("web-1");
    f.cluster.start_agent("web-1")?;
    let audit = std::fs::read_to_string(f.cluster.dir.join("agents/web-1/audit.jsonl"))?;
    let before_restart = audit.lines().count() as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&f)["delivered_seq"].as_u64().unwrap_or(0) < before_restart {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not everything was delivered after the fix: {}",
            status(&f)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let accepted: usize = hec
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| String::from_utf8_lossy(&r.body).lines().count())
        .sum();
    assert!(
        accepted as u64 >= before_restart,
        "{accepted} < {before_restart}"
    );
    Ok(())
}
