//! `cargo xtask demo`: the whole product on loopback, narrated, in one command.

use loggate_tests::Cluster;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

fn step(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

fn show(cmd_text: &str, out: &std::process::Output) {
    println!("$ {cmd_text}");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        print!("{err}");
    }
    println!("(exit code {})", out.status.code().unwrap_or(-1));
}

fn write_sample_logs(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut api = String::new();
    for i in 0..20 {
        let level = if i % 7 == 3 { "ERROR" } else { "INFO" };
        api.push_str(&format!(
            "2026-11-27T07:{:02}:00.000Z {level} api request id=req-{i:03} status={} latency_ms={}\n",
            i,
            if level == "ERROR" { 500 } else { 200 },
            10 + i * 3
        ));
    }
    api.push_str("2026-11-27T07:19:30.000Z WARN payment failed user=jane.doe@example.com card=4111 1111 1111 1111 token=ghp_R2D2c3po4BB8xyzw0123456789abcdefABCD\n");
    std::fs::write(dir.join("api.log"), api)?;
    std::fs::write(
        dir.join("worker.log"),
        "2026-11-27T07:00:00Z INFO worker started\n2026-11-27T07:00:05Z WARN queue depth 120\n",
    )?;
    Ok(())
}

pub fn run(keep: Option<PathBuf>) -> anyhow::Result<()> {
    step("Building loggate and loggate-agent");
    let mut cluster = Cluster::new(keep.clone())?;
    let dir = cluster.dir.clone();
    println!("working folder: {}", dir.display());

    step("A development PKI (loggate pki init)");
    for line in [
        "ca.crt",
        "controller.crt",
        "agents/web-1.crt",
        "users/admin.crt",
        "users/alice.crt",
        "users/bob.crt",
        "users/carol.crt (loggate pki issue --user carol)",
        "grant-signing.key",
    ] {
        println!("  {}", dir.join("pki").join(line).display());
    }

    step("Sample logs under the agent's root");
    let logs = dir.join("logs/app");
    write_sample_logs(&logs)?;
    println!("  {}/api.log, worker.log", logs.display());

    step("An access policy: who may request what, and who approves (docs/policy.md)");
    let issued = std::process::Command::new(cluster.bins.join("loggate"))
        .args(["pki", "issue"])
        .arg(dir.join("pki"))
        .args(["--user", "carol"])
        .output()?;
    anyhow::ensure!(
        issued.status.success(),
        "pki issue --user carol: {}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let policy = format!(
        "[groups]\n\
         sre = [\"bob\", \"carol\"]\n\
         payments = [\"alice\", \"carol\"]\n\n\
         [agents.web-1]\n\
         labels = {{ env = \"prod\", team = \"payments\" }}\n\n\
         [[roles]]\n\
         name = \"payments-prod\"\n\
         groups = [\"payments\"]\n\
         selectors = [\"env=prod,team=payments\"]\n\
         paths = [\"{}/*.log\"]\n\
         max_ttl = \"30m\"\n\
         approval = \"approvers\"\n\
         approvers = 1\n\
         approver_groups = [\"sre\"]\n",
        logs.display()
    );
    let policy_file = cluster.set_policy(&policy)?;
    print!("{policy}");
    println!("  ({})", policy_file.display());

    step("Starting the controller and agent web-1 on loopback (mTLS everywhere)");
    cluster.add_agent("web-1", &[&logs], "")?;
    cluster.start_controller()?;
    println!("  controller on {}", cluster.controller_addr);
    cluster.start_agent("web-1")?;
    println!(
        "  agent web-1 on {}, serving only {}",
        cluster.agent_addr("web-1"),
        logs.display()
    );

    let glob = format!("{}/*.log", logs.display());
    step("alice asks for 30 minutes of the app logs; the policy says bob or carol must approve");
    let request = |user: &str| {
        cluster.run_cli(
            user,
            &[
                "grant", "request", "--host", "web-1", "--path", &glob, "--ttl", "30m", "--reason",
                "INC-42",
            ],
        )
    };
    let out = request("alice")?;
    show(
        &format!("loggate grant request --host web-1 --path '{glob}' --ttl 30m --reason INC-42   # as alice"),
        &out,
    );
    let request_id = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();

    step("carol asks too, and tries to approve her own request: refused (separation of duties)");
    let out = request("carol")?;
    show("loggate grant request … --reason INC-42   # as carol", &out);
    let carol_id = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let out = cluster.run_cli("carol", &["grant", "approve", &carol_id])?;
    show(
        &format!("loggate grant approve {carol_id}   # as carol"),
        &out,
    );

    step(
        "bob approves alice's request: the grant is signed, its clock starts now, and it is pushed",
    );
    let out = cluster.run_cli("bob", &["grant", "list", "--pending"])?;
    show("loggate grant list --pending   # as bob", &out);
    let out = cluster.run_cli(
        "bob",
        &[
            "grant",
            "approve",
            &request_id,
            "--comment",
            "ok for INC-42",
        ],
    )?;
    show(
        &format!("loggate grant approve {request_id} --comment 'ok for INC-42'   # as bob"),
        &out,
    );
    let grant_id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    cluster.wait_for_grant("web-1", &grant_id)?;
    println!("(the controller pushed the signed grant to web-1 over its WatchGrants stream)");

    let api = format!("{}/api.log", logs.display());
    step(
        "alice reads the log through the gate; secrets and personal data are redacted on the agent",
    );
    let out = cluster.run_cli(
        "alice",
        &["logs", "tail", "-n", "5", "--host", "web-1", &api],
    )?;
    show(&format!("loggate logs tail -n 5 --host web-1 {api}"), &out);
    let out = cluster.run_cli("alice", &["logs", "grep", "--host", "web-1", "ERROR", &api])?;
    show(&format!("loggate logs grep --host web-1 ERROR {api}"), &out);
    let out = cluster.run_cli(
        "alice",
        &[
            "logs",
            "cat",
            "--host",
            "web-1",
            "--since",
            "2026-11-27T07:17:00Z",
            &api,
        ],
    )?;
    show(
        &format!("loggate logs cat --host web-1 --since 2026-11-27T07:17:00Z {api}"),
        &out,
    );

    step("bob has no grant: denied, and the denial is audited");
    let out = cluster.run_cli("bob", &["logs", "cat", "--host", "web-1", &api])?;
    show(
        &format!("loggate logs cat --host web-1 {api}   # as bob"),
        &out,
    );

    step("alice tries to leave the root: denied");
    let out = cluster.run_cli("alice", &["logs", "cat", "--host", "web-1", "/etc/passwd"])?;
    show("loggate logs cat --host web-1 /etc/passwd", &out);

    step("An admin's break-glass grant (audited and flagged for review): bob gets 6 seconds and follows a log; the agent cuts the stream when it expires");
    let worker = format!("{}/worker.log", logs.display());
    let short = cluster.issue_grant("bob", "web-1", &worker, "6s")?;
    cluster.wait_for_grant("web-1", &short)?;
    println!("$ loggate logs tail --follow --host web-1 {worker}   # as bob");
    let mut follow = cluster
        .cli("bob")
        .args(["logs", "tail", "--follow", "--host", "web-1", &worker])
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()?;
    for i in 0..3 {
        std::thread::sleep(Duration::from_millis(1500));
        let mut f = std::fs::OpenOptions::new().append(true).open(&worker)?;
        writeln!(f, "2026-11-27T07:01:{:02}Z INFO job {i} done", i * 10)?;
    }
    let status = follow.wait()?;
    println!("(exit code {})", status.code().unwrap_or(-1));

    step("Someone reads the log directly on the host, around the gate: the agent sees it");
    let started = cluster
        .agent_audit("web-1")
        .into_iter()
        .find(|e| e["event"] == "agent.started")
        .unwrap_or_default();
    println!(
        "bypass audit mode: {}",
        started["bypass_mode"].as_str().unwrap_or("unknown")
    );
    println!("$ cat {api} > /dev/null");
    std::process::Command::new("cat")
        .arg(&api)
        .stdout(Stdio::null())
        .status()?;
    match cluster.wait_for_audit("web-1", Duration::from_secs(3), |e| e["event"] == "bypass.read") {
        Ok(e) => println!(
            "  bypass.read: pid {} uid {} comm {} opened {} via {} (severity {})",
            e["pid"], e["uid"], e["comm"].as_str().unwrap_or(""), e["path"].as_str().unwrap_or(""),
            e["hook"].as_str().unwrap_or(""), e["severity"].as_str().unwrap_or("")
        ),
        Err(_) => println!("  no bypass event (the bypass audit is not active here: it needs root and eBPF or fanotify)"),
    }

    step("The agent's audit trail (one JSON line per decision, hash-chained)");
    for e in cluster.agent_audit("web-1") {
        let subject = e["subject"]
            .as_str()
            .unwrap_or("")
            .rsplit('/')
            .next()
            .unwrap_or("");
        println!(
            "  seq={:<3} {:<16} {:<6} {:<20} {}",
            e["seq"],
            e["event"].as_str().unwrap_or(""),
            subject,
            e["grant_id"].as_str().unwrap_or(""),
            e["reason"]
                .as_str()
                .or(e["end_reason"].as_str())
                .or(e["comm"].as_str())
                .unwrap_or("")
        );
    }
    println!(
        "  full records: {}",
        dir.join("agents/web-1/audit.jsonl").display()
    );

    step("The controller's audit trail of the request: every step, refusals included");
    for e in cluster.controller_events() {
        let name = e["event"].as_str().unwrap_or("");
        if !(name.starts_with("access.") || name.starts_with("policy.") || name == "grant.issued") {
            continue;
        }
        let who = |k: &str| {
            e[k].as_str()
                .unwrap_or("")
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_string()
        };
        println!(
            "  seq={:<3} {:<22} {:<6} {:<8} {}",
            e["seq"],
            name,
            who("subject"),
            who("approver"),
            e["request_id"]
                .as_str()
                .or(e["grant_id"].as_str())
                .or(e["sha256"].as_str())
                .unwrap_or("")
        );
    }

    if keep.is_some() {
        step("Everything is kept; to start it again by hand:");
        println!(
            "  {}/loggate controller serve --config {}",
            cluster.bins.display(),
            cluster.controller_config.display()
        );
        println!(
            "  {}/loggate-agent run --config {}",
            cluster.bins.display(),
            dir.join("agents/web-1/agent.toml").display()
        );
        println!(
            "  export LOGGATE_CONFIG={}   # act as alice",
            cluster.client_config("alice").display()
        );
        println!(
            "  {}/loggate logs cat --host web-1 {api}",
            cluster.bins.display()
        );
    }
    step("Stopping everything the demo started");
    drop(cluster);
    println!("done.");
    Ok(())
}
