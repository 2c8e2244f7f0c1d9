//! `loggate user lock|unlock|list` (admins): lock a person out everywhere, let them back in,
//! and list the people the controller knows from sign-ins and locks (see
//! `service/users.rs` for what a lock does).

use super::{controller, format_time, the_controller, CliResult, Failure, OrExplain};
use crate::config::ClientConfig;
use loggate_proto as pb;
use std::io::Write;

fn out(text: std::fmt::Arguments<'_>) -> CliResult {
    writeln!(std::io::stdout().lock(), "{text}").map_err(Failure::from)
}

/// `loggate user lock NAME --reason …` (`locked`) or `unlock`.
pub async fn set_lock(
    config: &ClientConfig,
    user: String,
    locked: bool,
    reason: String,
) -> CliResult {
    let mut client = controller(config).await?;
    let answer = client
        .set_user_lock(pb::SetUserLockRequest {
            user,
            locked,
            reason,
        })
        .await
        .or_explain(config, &the_controller(config))
        .await?
        .into_inner();
    let subject = &answer.subject;
    match (locked, answer.changed) {
        (true, true) => out(format_args!(
            "{subject} locked out: every certificate of theirs is refused, {} grant(s) revoked \
             (agents cut their streams), {} pending request(s) cancelled, sign-in refused until \
             `loggate user unlock`",
            answer.grants_revoked, answer.requests_cancelled
        )),
        (true, false) => out(format_args!(
            "{subject} was locked already; nothing changed"
        )),
        (false, true) => out(format_args!(
            "{subject} unlocked: they may sign in again (`loggate login`); their certificates \
             from before the lock stay refused"
        )),
        (false, false) => out(format_args!("{subject} was not locked; nothing changed")),
    }
}

/// `loggate user list [--output json]`.
pub async fn list(config: &ClientConfig, json: bool) -> CliResult {
    let mut client = controller(config).await?;
    let answer = client
        .list_users(pb::ListUsersRequest {})
        .await
        .or_explain(config, &the_controller(config))
        .await?
        .into_inner();
    let when = |t: i64| (t != 0).then_some(t);
    for u in &answer.users {
        if json {
            out(format_args!(
                "{}",
                serde_json::json!({
                    "name": u.name,
                    "last_sign_in": when(u.last_sign_in_unix),
                    "cert_not_after": when(u.cert_not_after_unix),
                    "groups": u.groups,
                    "locked": u.locked,
                    "lock_changed": when(u.lock_changed_unix),
                    "lock_changed_by": (!u.lock_changed_by.is_empty()).then_some(&u.lock_changed_by),
                    "lock_reason": (!u.lock_reason.is_empty()).then_some(&u.lock_reason),
                })
            ))?;
        } else {
            let shown = |t: i64| when(t).map_or_else(|| "-".to_string(), format_time);
            out(format_args!(
                "{}  {}  last sign-in {}  certificate until {}  groups [{}]",
                u.name,
                if u.locked {
                    format!(
                        "LOCKED since {} by {}: {}",
                        shown(u.lock_changed_unix),
                        u.lock_changed_by,
                        crate::policy::text::escaped(&u.lock_reason)
                    )
                } else {
                    "active".to_string()
                },
                shown(u.last_sign_in_unix),
                shown(u.cert_not_after_unix),
                crate::policy::text::escaped(&u.groups.join(", "))
            ))?;
        }
    }
    if answer.truncated {
        eprintln!(
            "TRUNCATED: only the first {} people are listed",
            answer.users.len()
        );
    }
    if answer.users.is_empty() && !json {
        eprintln!("no users have signed in or been locked");
    }
    Ok(())
}
