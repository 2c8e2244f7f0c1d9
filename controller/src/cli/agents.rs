//! The fleet commands: `loggate agent token create|list|revoke` (admins). The controller
//! decides and records everything; these print its answer.

use super::{controller, format_time, the_controller, CliResult, Failure, OrExplain};
use crate::config::ClientConfig;
use loggate_proto as pb;
use std::io::Write;
use std::time::Duration;

/// `loggate agent token create`.
#[derive(clap::Args)]
pub struct TokenCreateArgs {
    /// The labels every agent enrolled with it gets, comma-separated ("env=prod,team=payments");
    /// the agents' own claims are ignored.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// How long it may be used ("1h", at most "30d").
    #[arg(long, value_parser = loggate_core::duration::value_parser, default_value = "1h")]
    pub ttl: Duration,
    /// How many agents it may enrol.
    #[arg(long, default_value_t = 1)]
    pub uses: u32,
    /// Allow it to enrol an agent id that is already enrolled (replacing its certificate: the
    /// earlier ones are refused from then on; for a host rebuilt, or one whose certificate
    /// lapsed while the controller was down).
    #[arg(long)]
    pub reenrol: bool,
    #[command(flatten)]
    pub format: super::Format,
}

fn token_json(info: &pb::JoinTokenInfo) -> serde_json::Value {
    serde_json::json!({
        "id": info.id, "labels": info.labels, "uses_left": info.uses_left,
        "expires_at": info.expires_at_unix, "reenrol": info.reenrol,
        "created_by": info.created_by, "created_at": info.created_at_unix,
        "revoked_at": (info.revoked_at_unix != 0).then_some(info.revoked_at_unix),
    })
}

fn out(text: std::fmt::Arguments<'_>) -> CliResult {
    writeln!(std::io::stdout().lock(), "{text}").map_err(Failure::from)
}

pub async fn token_create(config: &ClientConfig, args: TokenCreateArgs) -> CliResult {
    let labels: Vec<String> = args
        .labels
        .iter()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let mut client = controller(config).await?;
    let answer = client
        .create_join_token(pb::CreateJoinTokenRequest {
            labels,
            ttl_seconds: args.ttl.as_secs(),
            uses: args.uses,
            reenrol: args.reenrol,
        })
        .await
        .or_explain(config, &the_controller(config))
        .await?
        .into_inner();
    let info = answer.info.unwrap_or_default();
    if args.format.json() {
        let mut json = token_json(&info);
        json["token"] = serde_json::Value::String(answer.token);
        return out(format_args!("{json}"));
    }
    out(format_args!("{}", answer.token))?;
    eprintln!(
        "join token {} (shown once; the controller keeps only its hash): {} use(s), until {}, \
         labels [{}]{}",
        info.id,
        info.uses_left,
        format_time(info.expires_at_unix),
        info.labels.join(", "),
        if info.reenrol { ", may re-enrol" } else { "" }
    );
    Ok(())
}

pub async fn token_list(config: &ClientConfig, json: bool) -> CliResult {
    let mut client = controller(config).await?;
    let tokens = client
        .list_join_tokens(pb::ListJoinTokensRequest {})
        .await
        .or_explain(config, &the_controller(config))
        .await?
        .into_inner()
        .tokens;
    for t in &tokens {
        if json {
            out(format_args!("{}", token_json(t)))?;
        } else {
            let state = if t.revoked_at_unix != 0 {
                format!("revoked {}", format_time(t.revoked_at_unix))
            } else if t.expires_at_unix <= loggate_core::grant::unix_now() {
                "expired".to_string()
            } else if t.uses_left == 0 {
                "used up".to_string()
            } else {
                "usable".to_string()
            };
            out(format_args!(
                "{}  {state}  {} use(s) left  until {}  labels [{}]{}  by {}",
                t.id,
                t.uses_left,
                format_time(t.expires_at_unix),
                t.labels.join(", "),
                if t.reenrol { "  re-enrol" } else { "" },
                t.created_by
            ))?;
        }
    }
    if tokens.is_empty() && !json {
        eprintln!("no join tokens");
    }
    Ok(())
}

pub async fn token_revoke(config: &ClientConfig, id: String) -> CliResult {
    let mut client = controller(config).await?;
    let info = client
        .revoke_join_token(pb::RevokeJoinTokenRequest { id })
        .await
        .or_explain(config, &the_controller(config))
        .await?
        .into_inner()
        .info
        .unwrap_or_default();
    out(format_args!(
        "join token {} revoked ({} use(s) were left)",
        info.id, info.uses_left
    ))
}

/// `loggate agent list`: one line (or JSON object) per agent. `connected` is whether the
/// agent holds a stream to the replica that answered; `replica` is the replica it last
/// connected to (with several replicas, the one it is connected to unless that one died).
pub async fn agent_list(config: &ClientConfig, selector: String, json: bool) -> CliResult {
    let mut client = controller(config).await?;
    let agents = client
        .list_agents(pb::ListAgentsRequest { selector })
        .await
        .or_explain(config, &the_controller(config))
        .await?
        .into_inner()
        .agents;
    for a in &agents {
        if json {
            out(format_args!(
                "{}",
                serde_json::json!({
                    "id": a.agent_id, "labels": a.labels, "addr": a.addr,
                    "last_seen": a.last_seen_unix, "connected": a.connected,
                    "replica": (!a.replica.is_empty()).then_some(&a.replica),
                    "cert_not_after": (a.cert_not_after_unix != 0).then_some(a.cert_not_after_unix),
                    "cert_serial": (!a.cert_serial.is_empty()).then_some(&a.cert_serial),
                })
            ))?;
        } else {
            out(format_args!(
                "{}  {}  {}  replica {}  last seen {}  certificate {}  labels [{}]",
                a.agent_id,
                if a.connected {
                    "connected"
                } else {
                    "not connected"
                },
                // What the agent announced (its address, an unenrolled agent's labels) is
                // the agent's word: escaped, so that it cannot drive the admin's terminal.
                if a.addr.is_empty() {
                    "-".into()
                } else {
                    super::listing::printable(&a.addr)
                },
                if a.replica.is_empty() {
                    "-".into()
                } else {
                    super::listing::printable(&a.replica)
                },
                format_time(a.last_seen_unix),
                if a.cert_not_after_unix != 0 {
                    format!("until {}", format_time(a.cert_not_after_unix))
                } else {
                    "not enrolled".to_string()
                },
                a.labels
                    .iter()
                    .map(|l| super::listing::printable(l))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))?;
        }
    }
    if agents.is_empty() && !json {
        eprintln!("no agents");
    }
    Ok(())
}

/// `loggate agent remove ID` (admins).
pub async fn agent_remove(config: &ClientConfig, id: String) -> CliResult {
    let mut client = controller(config).await?;
    let answer = client
        .remove_agent(pb::RemoveAgentRequest {
            agent_id: id.clone(),
        })
        .await
        .or_explain(config, &the_controller(config))
        .await?
        .into_inner();
    out(format_args!(
        "agent {id} removed: its certificates issued until {} are refused{}",
        format_time(answer.removed_at_unix),
        if answer.was_connected {
            "; its stream was cut"
        } else {
            ""
        }
    ))
}
