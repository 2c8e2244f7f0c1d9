//! End-to-end, as separate hosts (issue 12, "Multi-host, for real"): the controller and two
//! agents each in a network namespace of their own with their own address on one bridge
//! (`loggate_tests::netns`), each agent serving its own roots. The CLI reads from both by
//! address; then one agent's cable is cut: a grant is issued and an older one revoked
//! meanwhile, the agent keeps enforcing what it holds (a read through its gate from its own
//! host), and once the cable is back the grant issued meanwhile arrives and the revoked one is
//! refused. The controller is reachable at two addresses of its host, which the agents list
//! (`controllers`); at the end it leaves the first one, and both agents follow it to the second.
//!
//! Needs root (network namespaces); run as another user it says why it skipped. CI runs as root.

use loggate_tests::netns::{self, Lab};
use loggate_tests::{text, Cluster};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

const AGENT_PORT: u16 = 7501;
const CONTROLLER_PORT: u16 = 7443;

/// Writes `<dir>/hosts/<id>/logs/app.log`, whose lines name the host, and returns the folder.
fn host_logs(cluster: &Cluster, id: &str) -> anyhow::Result<PathBuf> {
    let logs = cluster.dir.join("hosts").join(id).join("logs");
    std::fs::create_dir_all(&logs)?;
    let lines: String = (0..20).map(|i| format!("{id} line {i}\n")).collect();
    std::fs::write(logs.join("app.log"), lines)?;
    Ok(logs)
}

/// The agent's audit holds `event` for `grant_id`.
fn audited(cluster: &Cluster, id: &str, event: &str, grant_id: &str) -> bool {
    cluster
        .agent_audit(id)
        .iter()
        .any(|e| e["event"] == event && e["grant_id"] == grant_id)
}

#[test]
fn agents_on_separate_hosts_keep_enforcing_while_cut_off_and_catch_up_when_the_link_returns(
) -> anyhow::Result<()> {
    if let Some(why) = netns::unavailable() {
        eprintln!("SKIPPED: this test runs agents as separate hosts in network namespaces: {why}");
        return Ok(());
    }
    // Declared first, dropped last: the processes stop before their namespaces go.
    let mut lab = Lab::new()?;
    let ctl = lab.add_host("ctl")?;
    let hosts = [lab.add_host("web1")?, lab.add_host("web2")?];
    // The controller's host has a second address; the controller listens on both.
    let second_ip = Ipv4Addr::new(10, 77, 0, 201);
    lab.add_address(&ctl, second_ip)?;
    let first: SocketAddr = SocketAddrV4::new(ctl.ip, CONTROLLER_PORT).into();
    let second: SocketAddr = SocketAddrV4::new(second_ip, CONTROLLER_PORT).into();
    let mut cluster = Cluster::new(None)?;
    cluster.move_controller(first)?;
    let controller_config = cluster.controller_config.clone();
    let listen_on = |from: &str, to: &str| -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&controller_config)?;
        let (from, to) = (
            format!("\nlisten = \"{from}\"\n"),
            format!("\nlisten = \"{to}\"\n"),
        );
        anyhow::ensure!(
            text.contains(&from),
            "no {from:?} in the controller's configuration"
        );
        std::fs::write(&controller_config, text.replacen(&from, &to, 1))?;
        Ok(())
    };
    let any = format!("0.0.0.0:{CONTROLLER_PORT}");
    listen_on(&first.to_string(), &any)?;
    cluster.controller_netns = Some(ctl.ns.clone());
    // The people's CLI sits on the controller's host: it reaches every agent over the network.
    cluster.cli_netns = Some(ctl.ns.clone());
    let ids = ["web-1", "web-2"];
    let mut logs = Vec::new();
    for (id, host) in ids.iter().zip(&hosts) {
        let folder = host_logs(&cluster, id)?;
        cluster.add_agent(id, &[&folder], "")?;
        cluster.place_agent(
            id,
            &host.ns,
            SocketAddr::from(([0, 0, 0, 0], AGENT_PORT)),
            SocketAddrV4::new(host.ip, AGENT_PORT).into(),
        )?;
        cluster.set_agent_controllers(id, &[first.to_string(), second.to_string()])?;
        logs.push(folder);
    }
    cluster.start_controller()?;
    for id in ids {
        cluster.start_agent(id)?;
    }
    let glob = |i: usize| format!("{}/*.log", logs[i].display());
    let file = |i: usize| logs[i].join("app.log").display().to_string();

    // Alice reads from both hosts by address, each its own file.
    for (i, id) in ids.iter().enumerate() {
        cluster.grant("alice", id, &glob(i), "30m")?;
        let out = cluster.logs_cmd("alice", id, &["cat", &file(i)]).output()?;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{id}: {stderr}");
        assert!(
            stdout.contains(&format!("{id} line 19")),
            "{id} served: {stdout}"
        );
    }
    // By name alone: the CLI asks the controller where web-2 is (the address it advertised).
    let out = cluster
        .cli("alice")
        .args(["logs", "cat", "--host", "web-2", &file(1)])
        .output()?;
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success() && stdout.contains("web-2 line 0"),
        "web-2 by name: {stdout}{stderr}"
    );
    let old = cluster.grant("bob", "web-1", &glob(0), "30m")?;

    // web-1's cable is cut: the controller's host no longer reaches it.
    let web1 = &hosts[0];
    let web1_addr: SocketAddr = SocketAddrV4::new(web1.ip, AGENT_PORT).into();
    lab.cut(web1)?;
    assert!(
        !netns::reachable_from(&ctl.ns, web1_addr, Duration::from_millis(500))?,
        "web-1 is still reachable with its link down"
    );
    // Meanwhile: a grant for admin on web-1, and bob's grant revoked.
    let new = cluster.issue_grant("admin", "web-1", &glob(0), "30m")?;
    let out = cluster.run_cli("admin", &["grant", "revoke", &old, "--reason", "T-12"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    // web-2, still linked, is unaffected: a grant issued now reaches it.
    cluster.grant("admin", "web-2", &glob(1), "30m")?;

    // On web-1 itself, the gate keeps enforcing what it holds: alice reads, admin (whose grant
    // cannot arrive) is refused.
    let from_web1 = |user: &str| -> anyhow::Result<std::process::Output> {
        let mut cmd = netns::command_in(&web1.ns, &cluster.bins.join("loggate"));
        cmd.env("LOGGATE_CONFIG", cluster.client_config(user))
            .args(["logs", "cat", &file(0), "--host", "web-1"])
            .args(["--agent-addr", &format!("127.0.0.1:{AGENT_PORT}")]);
        Ok(cmd.output()?)
    };
    let out = from_web1("alice")?;
    assert!(
        out.status.success(),
        "alice on web-1 while cut: {}",
        text(&out).1
    );
    let out = from_web1("admin")?;
    assert_eq!(
        out.status.code(),
        Some(3),
        "admin on web-1 while cut: {}",
        text(&out).1
    );
    assert!(
        !audited(&cluster, "web-1", "grant.received", &new),
        "the grant reached web-1 through a cut cable"
    );

    // The cable is back: the grant issued meanwhile arrives, the revocation takes effect. A
    // stalled stream is either resumed by TCP or found dead by the agent (no heartbeat for 35 s)
    // and reconnected from its last revision.
    lab.restore(web1)?;
    netns::wait_until(
        "web-1 receives the grant issued while it was cut off",
        Duration::from_secs(60),
        || Ok(audited(&cluster, "web-1", "grant.received", &new)),
    )?;
    netns::wait_until(
        "web-1 refuses bob's revoked grant",
        Duration::from_secs(60),
        || {
            let out = cluster
                .logs_cmd("bob", "web-1", &["cat", &file(0)])
                .output()?;
            Ok(out.status.code() == Some(3))
        },
    )?;
    let out = cluster
        .logs_cmd("admin", "web-1", &["cat", &file(0)])
        .output()?;
    assert!(
        out.status.success(),
        "admin on web-1 after: {}",
        text(&out).1
    );
    let out = cluster
        .logs_cmd("alice", "web-2", &["cat", &file(1)])
        .output()?;
    assert!(
        out.status.success(),
        "alice on web-2 after: {}",
        text(&out).1
    );

    // The controller restarts on its second address only: both agents follow it there and
    // receive what it issues next.
    cluster.stop_controller();
    listen_on(&any, &first.to_string())?;
    cluster.move_controller(second)?;
    cluster.start_controller()?;
    for (i, id) in ids.iter().enumerate() {
        cluster.grant("bob", id, &glob(i), "30m")?;
        let connected: Vec<_> = cluster
            .agent_audit(id)
            .into_iter()
            .filter(|e| e["event"] == "controller.connected")
            .collect();
        let last = connected.last().map(|e| e["address"].clone());
        assert_eq!(
            last,
            Some(second.to_string().into()),
            "{id} does not follow the controller at {second}: {connected:?}"
        );
    }
    Ok(())
}
