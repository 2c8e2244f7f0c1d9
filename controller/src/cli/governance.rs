//! The governance commands: `grant request|approve|deny|cancel`, `grant list --pending`,
//! `policy check|reload`. The controller decides everything (the same policy code for a check
//! and a request); these print its answer and map it to exit codes: 0 granted or done,
//! 3 refused, denied or expired, 2 bad usage, 1 error.

use super::{
    controller, format_time, print_grant, the_controller, usage, CliResult, Exit, Failure,
    OrExplain,
};
use crate::config::ClientConfig;
use loggate_proto as pb;
use std::io::{IsTerminal, Write};
use std::time::Duration;

/// `loggate grant request`.
#[derive(clap::Args)]
pub struct RequestArgs {
    /// Agent id to read on (repeatable).
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// A label selector ("env=prod,team=payments", "env in (prod,staging)"): every agent the
    /// access policy gives matching labels.
    #[arg(long, default_value = "")]
    pub selector: String,
    /// Absolute path or path glob, as a role allows it (repeatable); or --unit, or both.
    #[arg(long = "path", required_unless_present = "units")]
    pub paths: Vec<String>,
    /// A systemd journal unit, named exactly ("nginx.service"), as a role's `units` allow it
    /// (repeatable); read with `loggate logs journal`.
    #[arg(long = "unit")]
    pub units: Vec<String>,
    /// How long the access lasts once granted, counted from the approval ("30m", "2h");
    /// capped at the role's max_ttl.
    #[arg(long, value_parser = loggate_core::duration::value_parser, allow_hyphen_values = true)]
    pub ttl: Duration,
    /// Why: a ticket or incident id (required). Recorded in the audit stream.
    #[arg(long)]
    pub reason: String,
    /// Redaction profile, as the role allows ("default"; `raw` only where a role lists it).
    #[arg(long, default_value = "default")]
    pub redaction: String,
    /// Use a break-glass role: granted at once, its approvers notified, reviewed afterwards.
    #[arg(long)]
    pub break_glass: bool,
    /// Wait for the decision; exit 0 when granted, 3 when denied, cancelled or expired.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub format: super::Format,
}

/// `loggate policy check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// Whose access to check (a user name; admins only for someone else). Default: you.
    #[arg(long, default_value = "")]
    pub subject: String,
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    #[arg(long, default_value = "")]
    pub selector: String,
    #[arg(long = "path", required_unless_present = "units")]
    pub paths: Vec<String>,
    /// A systemd journal unit (repeatable), as `grant request --unit`.
    #[arg(long = "unit")]
    pub units: Vec<String>,
    #[arg(long, value_parser = loggate_core::duration::value_parser, allow_hyphen_values = true, default_value = "1h")]
    pub ttl: Duration,
    #[arg(long, default_value = "default")]
    pub redaction: String,
    #[arg(long)]
    pub break_glass: bool,
    #[command(flatten)]
    pub format: super::Format,
}

fn request_json(r: &pb::AccessRequestResponse) -> serde_json::Value {
    let req = r.request.clone().unwrap_or_default();
    serde_json::json!({
        "id": req.id, "requester": req.requester, "hosts": req.hosts, "paths": req.paths,
        "units": req.units, "ttl_seconds": req.ttl_seconds, "redaction_profile": req.redaction_profile,
        "reason": req.reason, "role": req.role, "approval": req.approval,
        "approvals_needed": req.approvals_needed, "approvers": req.approvers,
        "reviews": req.reviews.iter().map(|v| serde_json::json!({
            "reviewer": v.reviewer, "approve": v.approve, "comment": v.comment, "at": v.at_unix,
        })).collect::<Vec<_>>(),
        "state": req.state, "created": req.created_unix, "expires": req.expires_unix,
        "decided": req.decided_unix, "grant_id": req.grant_id, "ttl_capped": r.ttl_capped,
        "grant": r.grant.as_ref().map(super::grant_json),
    })
}

fn print_request(r: &pb::AccessRequestInfo) -> CliResult {
    let approvals = r.reviews.iter().filter(|v| v.approve).count();
    let detail = match r.state.as_str() {
        "pending" => format!(
            "pending: {approvals} of {} approvals, approvers {}; expires {}",
            r.approvals_needed,
            if r.approvers.is_empty() {
                "(none in the policy now)".to_string()
            } else {
                r.approvers.join(", ")
            },
            format_time(r.expires_unix)
        ),
        "approved" => format!("approved: grant {}", r.grant_id),
        other => other.to_string(),
    };
    let who = r.requester.rsplit('/').next().unwrap_or(&r.requester);
    let line = format!(
        "{}  {who}  on {}  paths {}  for {}  role {} ({})  reason {:?}  {detail}",
        r.id,
        r.hosts.join(","),
        r.paths.join(","),
        loggate_core::duration::format(Duration::from_secs(r.ttl_seconds)),
        r.role,
        r.approval,
        r.reason
    );
    // Text from the controller (paths, reasons written by others) is printed escaped: a
    // control or bidi character cannot rewrite the reader's terminal line.
    writeln!(
        std::io::stdout().lock(),
        "{}",
        crate::policy::text::escaped(&line)
    )
    .map_err(Failure::from)
}

/// Prints a request's answer; the exit status of its state (0 granted or pending, 3 ended
/// without access).
fn report(r: &pb::AccessRequestResponse, json: bool) -> CliResult {
    let req = r.request.clone().unwrap_or_default();
    if json {
        writeln!(std::io::stdout().lock(), "{}", request_json(r)).map_err(Failure::from)?;
    } else {
        print_request(&req)?;
        if let Some(g) = &r.grant {
            print_grant(g)?;
        }
        if r.ttl_capped {
            eprintln!(
                "note: the ttl was capped at {} by role {}",
                loggate_core::duration::format(Duration::from_secs(req.ttl_seconds)),
                req.role
            );
        }
        if req.state == "pending" {
            eprintln!(
                "waiting for approval: ask {} to run `loggate grant approve {}`",
                req.approvers.join(" or "),
                req.id
            );
        }
    }
    match req.state.as_str() {
        "approved" | "pending" => Ok(()),
        other => Err(Failure {
            code: Exit::Denied,
            message: format!("request {} was {other}; no access was granted", req.id),
        }),
    }
}

pub async fn grant_request(config: &ClientConfig, args: RequestArgs) -> CliResult {
    if args.hosts.is_empty() && args.selector.is_empty() {
        return Err(usage("name at least one --host or a --selector"));
    }
    let mut client = controller(config).await?;
    let peer = the_controller(config);
    let mut response = client
        .request_access(pb::AccessRequestRequest {
            hosts: args.hosts,
            selector: args.selector,
            paths: args.paths,
            ttl_seconds: args.ttl.as_secs(),
            reason: args.reason,
            redaction_profile: args.redaction,
            break_glass: args.break_glass,
            units: args.units,
        })
        .await
        .or_explain(config, &peer)
        .await?
        .into_inner();
    let pending =
        |r: &pb::AccessRequestResponse| r.request.as_ref().is_some_and(|q| q.state == "pending");
    if args.wait && pending(&response) {
        let id = response
            .request
            .as_ref()
            .map(|r| r.id.clone())
            .unwrap_or_default();
        let capped = response.ttl_capped;
        if !args.format.json() {
            report(&response, false)?;
        }
        let spinner = std::io::stderr().is_terminal();
        let frames = ['|', '/', '-', '\\'];
        let mut turn = 0usize;
        // Each call waits on the controller for up to 30 s; the request's own expiry ends it.
        while pending(&response) {
            if spinner {
                eprint!("\r{} waiting for a decision on {id} ", frames[turn % 4]);
                turn += 1;
            }
            // The call's own timeout tells the CLI's deadline (and the server) it waits long.
            let mut ask = tonic::Request::new(pb::GetRequestRequest {
                request_id: id.clone(),
                wait_seconds: 30,
            });
            ask.set_timeout(Duration::from_secs(45));
            response = client
                .get_request(ask)
                .await
                .or_explain(config, &peer)
                .await?
                .into_inner();
        }
        if spinner {
            eprintln!();
        }
        response.ttl_capped = capped;
        if args.format.json() {
            return report(&response, true);
        }
        let req = response.request.clone().unwrap_or_default();
        if let Some(g) = &response.grant {
            print_grant(g)?;
        }
        return match req.state.as_str() {
            "approved" => Ok(()),
            other => Err(Failure {
                code: Exit::Denied,
                message: format!("request {} was {other}; no access was granted", req.id),
            }),
        };
    }
    report(&response, args.format.json())
}

/// `grant approve ID` (`approve` true) or `grant deny ID --comment`.
pub async fn grant_review(
    config: &ClientConfig,
    id: String,
    comment: String,
    approve: bool,
    json: bool,
) -> CliResult {
    let mut client = controller(config).await?;
    let request = pb::ReviewRequest {
        request_id: id,
        comment,
    };
    let response = if approve {
        client.approve_request(request).await
    } else {
        client.deny_request(request).await
    }
    .or_explain(config, &the_controller(config))
    .await?
    .into_inner();
    if json {
        return writeln!(std::io::stdout().lock(), "{}", request_json(&response))
            .map_err(Failure::from);
    }
    let req = response.request.clone().unwrap_or_default();
    print_request(&req)?;
    if let Some(g) = &response.grant {
        print_grant(g)?;
    }
    Ok(())
}

pub async fn grant_cancel(config: &ClientConfig, id: String) -> CliResult {
    let mut client = controller(config).await?;
    let response = client
        .cancel_request(pb::CancelRequestRequest { request_id: id })
        .await
        .or_explain(config, &the_controller(config))
        .await?
        .into_inner();
    print_request(&response.request.unwrap_or_default())
}

/// `grant list --pending`: requests I can review, and my own.
pub async fn requests_list(config: &ClientConfig, json: bool) -> CliResult {
    let mut client = controller(config).await?;
    let answer = client
        .list_requests(pb::ListRequestsRequest { pending_only: true })
        .await
        .or_explain(config, &the_controller(config))
        .await?
        .into_inner();
    if answer.truncated {
        eprintln!(
            "loggate: more requests match than the controller lists at once; the newest are shown"
        );
    }
    let requests = answer.requests;
    if json {
        let list: Vec<_> = requests
            .into_iter()
            .map(|r| {
                request_json(&pb::AccessRequestResponse {
                    request: Some(r),
                    grant: None,
                    ttl_capped: false,
                })
            })
            .collect();
        return writeln!(
            std::io::stdout().lock(),
            "{}",
            serde_json::Value::from(list)
        )
        .map_err(Failure::from);
    }
    if requests.is_empty() {
        eprintln!("no pending requests you can review or made");
    }
    requests.iter().try_for_each(print_request)
}

/// `policy check`: exit 0 when a role allows it, 3 when none does.
pub async fn policy_check(config: &ClientConfig, args: CheckArgs) -> CliResult {
    if args.hosts.is_empty() && args.selector.is_empty() {
        return Err(usage("name at least one --host or a --selector"));
    }
    let mut client = controller(config).await?;
    let answer = client
        .check_policy(pb::CheckPolicyRequest {
            subject: args.subject,
            hosts: args.hosts,
            selector: args.selector,
            paths: args.paths,
            ttl_seconds: args.ttl.as_secs(),
            redaction_profile: args.redaction,
            break_glass: args.break_glass,
            units: args.units,
        })
        .await
        .or_explain(config, &the_controller(config))
        .await?
        .into_inner();
    if args.format.json() {
        let value = serde_json::json!({
            "allowed": answer.allowed, "role": answer.role, "approval": answer.approval,
            "approvals_needed": answer.approvals_needed, "approvers": answer.approvers,
            "ttl_seconds": answer.ttl_seconds, "ttl_capped": answer.ttl_capped,
            "hosts": answer.hosts, "explanation": answer.explanation,
            "policy_sha256": answer.policy_sha256,
            "refusals": answer.refusals.iter().map(|r| serde_json::json!({
                "role": r.role, "code": r.code, "reason": r.reason,
            })).collect::<Vec<_>>(),
        });
        writeln!(std::io::stdout().lock(), "{value}").map_err(Failure::from)?;
    } else {
        writeln!(std::io::stdout().lock(), "{}", answer.explanation).map_err(Failure::from)?;
        if answer.allowed && !answer.approvers.is_empty() {
            writeln!(
                std::io::stdout().lock(),
                "approvers: {}",
                answer.approvers.join(", ")
            )
            .map_err(Failure::from)?;
        }
    }
    if answer.allowed {
        Ok(())
    } else {
        Err(Failure {
            code: Exit::Denied,
            message: "no role allows this access".into(),
        })
    }
}

pub async fn policy_reload(config: &ClientConfig) -> CliResult {
    let mut client = controller(config).await?;
    let answer = client
        .reload_policy(pb::ReloadPolicyRequest {})
        .await
        .or_explain(config, &the_controller(config))
        .await?
        .into_inner();
    writeln!(
        std::io::stdout().lock(),
        "access policy {} reloaded: {} roles, sha256 {}",
        answer.file,
        answer.roles,
        answer.sha256
    )
    .map_err(Failure::from)
}

fn reviewed_grant_json(g: &pb::ReviewedGrant) -> serde_json::Value {
    serde_json::json!({
        "grant_id": g.grant_id, "subject": g.subject, "role": g.role,
        "approved_by": g.approved_by, "not_before": g.not_before_unix,
        "not_after": g.not_after_unix, "break_glass": g.break_glass, "reviewed": g.reviewed,
        "reviewed_by": g.reviewed_by, "reason": g.reason, "hosts": g.hosts,
        "labels": g.labels, "paths": g.paths, "redaction_profile": g.redaction_profile,
        "revoked_at": (g.revoked_at_unix != 0).then_some(g.revoked_at_unix),
        "revoked_by": g.revoked_by,
    })
}

fn print_reviewed_grant(out: &mut impl Write, g: &pb::ReviewedGrant) -> std::io::Result<()> {
    // Text from the controller is printed escaped (see `print_request`).
    let mut out = EscapedLines(out);
    let out = &mut out;
    writeln!(
        out,
        "  {}  {}  role {}  approved by {}  {} .. {}{}  reason {:?}",
        g.grant_id,
        g.subject.rsplit('/').next().unwrap_or(&g.subject),
        if g.role.is_empty() {
            "(grant issue)"
        } else {
            &g.role
        },
        g.approved_by.rsplit('/').next().unwrap_or(&g.approved_by),
        format_time(g.not_before_unix),
        format_time(g.not_after_unix),
        match (g.break_glass, g.reviewed) {
            (true, true) => format!("  BREAK-GLASS reviewed by {}", g.reviewed_by),
            (true, false) => "  BREAK-GLASS not reviewed".to_string(),
            _ => String::new(),
        },
        g.reason
    )?;
    // What the grant allowed: the controller never receives the agents' read records (see
    // docs/policy.md, "The access review").
    writeln!(
        out,
        "      may read {} on {} (redaction {}){}",
        g.paths.join(", "),
        g.hosts
            .iter()
            .cloned()
            .chain(g.labels.iter().map(|l| format!("label {l}")))
            .collect::<Vec<_>>()
            .join(", "),
        g.redaction_profile,
        if g.revoked_at_unix != 0 {
            format!(
                "; revoked at {} by {}",
                format_time(g.revoked_at_unix),
                g.revoked_by.rsplit('/').next().unwrap_or(&g.revoked_by)
            )
        } else {
            String::new()
        }
    )
}

/// How `access review` prints.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReviewOutput {
    Text,
    Json,
    /// One row per grant of the period (and per break-glass grant not reviewed), for a
    /// spreadsheet.
    Csv,
}

/// One CSV field: quoted when it holds a comma, a quote or a line break (RFC 4180), and a
/// leading `=`, `+`, `-`, `@`, tab or carriage return defused (OWASP's list) so that a
/// spreadsheet does not run a reason as a formula.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn review_csv(out: &mut impl Write, review: &pb::AccessReviewResponse) -> std::io::Result<()> {
    writeln!(
        out,
        "grant_id,subject,role,approved_by,not_before,not_after,break_glass,reviewed,reviewed_by,reason,hosts,paths,redaction_profile,revoked_at"
    )?;
    let mut seen = std::collections::HashSet::new();
    for g in review.grants.iter().chain(&review.unreviewed_break_glass) {
        if !seen.insert(g.grant_id.clone()) {
            continue;
        }
        let fields = [
            g.grant_id.clone(),
            g.subject.clone(),
            g.role.clone(),
            g.approved_by.clone(),
            format_time(g.not_before_unix),
            format_time(g.not_after_unix),
            g.break_glass.to_string(),
            g.reviewed.to_string(),
            g.reviewed_by.clone(),
            g.reason.clone(),
            g.hosts
                .iter()
                .cloned()
                .chain(g.labels.iter().map(|l| format!("label {l}")))
                .collect::<Vec<_>>()
                .join(" "),
            g.paths.join(" "),
            g.redaction_profile.clone(),
            if g.revoked_at_unix != 0 {
                format_time(g.revoked_at_unix)
            } else {
                String::new()
            },
        ];
        let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        writeln!(out, "{}", row.join(","))?;
    }
    Ok(())
}

/// `loggate access review --since 30d`: roles, who holds and uses them, grants of the period,
/// break-glass grants awaiting review (admins).
pub async fn access_review(
    config: &ClientConfig,
    since: Duration,
    output: ReviewOutput,
) -> CliResult {
    let json = output == ReviewOutput::Json;
    let since_unix = loggate_core::grant::unix_now()
        .saturating_sub(i64::try_from(since.as_secs()).unwrap_or(i64::MAX));
    // Each of the review's two lists of grants holds at most about 16 MiB of text (the
    // controller's bound): accept both, beyond the 4 MiB default.
    let mut client = controller(config)
        .await?
        .max_decoding_message_size(64 << 20);
    let review = client
        .access_review(pb::AccessReviewRequest { since_unix })
        .await
        .or_explain(config, &the_controller(config))
        .await?
        .into_inner();
    // A list cut at the controller's bound is said on stderr whatever the output format.
    for note in &review.truncated {
        eprintln!("loggate: access review truncated: {note}");
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if output == ReviewOutput::Csv {
        review_csv(&mut out, &review)?;
        return out.flush().map_err(Failure::from);
    }
    if json {
        let value = serde_json::json!({
            "since": since_unix, "policy_sha256": review.policy_sha256,
            "roles": review.roles.iter().map(|r| serde_json::json!({
                "name": r.name, "approval": r.approval, "holders": r.holders,
                "requesters": r.requesters, "never_requested": r.never_requested,
                "requests": r.requests, "grants": r.grants,
                "certificate_groups": r.certificate_groups,
            })).collect::<Vec<_>>(),
            "unused_roles": review.unused_roles,
            "grants": review.grants.iter().map(reviewed_grant_json).collect::<Vec<_>>(),
            "unreviewed_break_glass":
                review.unreviewed_break_glass.iter().map(reviewed_grant_json).collect::<Vec<_>>(),
            "truncated": review.truncated,
        });
        writeln!(out, "{value}")?;
        return out.flush().map_err(Failure::from);
    }
    writeln!(
        out,
        "access review since {} (policy sha256 {})",
        format_time(since_unix),
        review.policy_sha256
    )?;
    writeln!(out, "roles:")?;
    for r in &review.roles {
        writeln!(
            out,
            "  {} ({}): {} requests, {} grants; holders {}; never requested: {}",
            r.name,
            r.approval,
            r.requests,
            r.grants,
            r.holders.join(", "),
            if r.never_requested.is_empty() {
                "-".to_string()
            } else {
                r.never_requested.join(", ")
            }
        )?;
        if !r.certificate_groups.is_empty() {
            writeln!(
                out,
                "    members of {} named only by their certificates are not known until they request",
                r.certificate_groups.join(", ")
            )?;
        }
    }
    writeln!(
        out,
        "roles never used: {}",
        if review.unused_roles.is_empty() {
            "-".to_string()
        } else {
            review.unused_roles.join(", ")
        }
    )?;
    writeln!(out, "grants issued ({}):", review.grants.len())?;
    for g in &review.grants {
        print_reviewed_grant(&mut out, g)?;
    }
    writeln!(
        out,
        "break-glass grants not reviewed ({}): acknowledge with `loggate access ack GRANT --comment …`",
        review.unreviewed_break_glass.len()
    )?;
    for g in &review.unreviewed_break_glass {
        print_reviewed_grant(&mut out, g)?;
    }
    for note in &review.truncated {
        writeln!(out, "TRUNCATED: {note}")?;
    }
    out.flush().map_err(Failure::from)
}

/// A writer that prints each `write!` with [`crate::policy::text::escaped`] applied.
struct EscapedLines<'a, W: Write>(&'a mut W);

impl<W: Write> Write for EscapedLines<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        // Line ends are the printer's own; everything else is escaped.
        let shown: Vec<String> = text.split('\n').map(crate::policy::text::escaped).collect();
        self.0.write_all(shown.join("\n").as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// `loggate access ack GRANT --comment …`: a break-glass grant reviewed (admins).
pub async fn access_ack(config: &ClientConfig, grant_id: String, comment: String) -> CliResult {
    let mut client = controller(config).await?;
    let ack = client
        .ack_break_glass(pb::AckBreakGlassRequest { grant_id, comment })
        .await
        .or_explain(config, &the_controller(config))
        .await?
        .into_inner();
    writeln!(
        std::io::stdout().lock(),
        "break-glass grant {} reviewed by {} at {}",
        ack.grant_id,
        ack.reviewed_by,
        format_time(ack.reviewed_at_unix)
    )
    .map_err(Failure::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("INC-42"), "INC-42");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_field("line\nbreak"), "\"line\nbreak\"");
        assert_eq!(csv_field("\t=1+1"), "'\t=1+1");
        assert_eq!(csv_field("\r=1+1"), "\"'\r=1+1\"");
    }
}
