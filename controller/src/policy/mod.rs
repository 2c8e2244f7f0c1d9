//! The access policy: who may request read access to which logs, on which hosts, for how long,
//! with which redaction, and whose approval that takes. One TOML file (`policy` in the
//! controller's configuration, see docs/policy.md), loaded at start, on SIGHUP and on
//! `loggate policy reload`.
//!
//! Contract:
//! - A file is taken whole or not at all: [`Policy::load`] refuses any file with an error that
//!   names `file:line` and the reason, and the caller keeps the policy in force.
//! - [`Policy::evaluate`] is the one decision, used by `grant request` and by `policy check`
//!   (which prints what it decided), so what an operator checks is what the controller does.
//! - Nothing is allowed that no role allows (no role matches: refused, with each role's reason).
//!   A redaction profile is allowed only when the role lists it (`raw` never by default), a path
//!   only when a role's glob is requested as written or a plain path the glob matches (a glob is
//!   never compared to another glob by what it might match), a host only by its id or by labels
//!   the controller holds for it (never by labels an agent reports about itself).
//! - Break-glass roles are used only when the requester asks for break-glass explicitly, so
//!   nobody gets unreviewed access by accident.
//! - Separation of duties: the requester is never among a request's eligible approvers, and a
//!   role whose approver groups hold fewer eligible approvers than it needs refuses the request
//!   instead of leaving it pending for ever.

mod handle;
pub mod notify;
pub mod selector;
pub mod text;

pub use handle::{reload_on_sighup, DecisionGuard, PolicyHandle, ReloadError};
#[cfg(test)]
mod tests;

use loggate_core::grant::compile_path_glob;
use loggate_core::identity::is_valid_name;
use selector::Selector;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// The longest a pending request may wait for its approvals (`settings.pending_ttl`).
pub const MAX_PENDING_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The default wait of a pending request.
pub const DEFAULT_PENDING_TTL: Duration = Duration::from_secs(3600);
/// The default of `settings.max_pending_per_requester`.
pub const DEFAULT_MAX_PENDING: u32 = 20;
/// The largest `settings.max_pending_per_requester`.
pub const MAX_MAX_PENDING: u32 = 1000;
/// The largest policy file read (bytes).
pub const MAX_POLICY_BYTES: u64 = 1 << 20;
/// A `[groups]` entry starting with this names an IdP group (`"idp:payments-oncall"`): every
/// person whose verified sign-in carried that group is a member. The controller adds the groups
/// of a caller's sign-in to the caller's groups with this prefix; a certificate's OU can never
/// carry it (an OU counts only when it is a valid name, which has no `:`), so no certificate
/// can claim an IdP group.
pub const IDP_GROUP_PREFIX: &str = "idp:";
/// The longest IdP group name a policy may name (the verifier keeps no longer ones).
pub const MAX_IDP_GROUP_BYTES: usize = 256;

/// Whether `name` may be an IdP group of the policy: 1 to [`MAX_IDP_GROUP_BYTES`] bytes, no
/// control or format character (IdPs name groups freely: `Payments On-Call`, `/team/sre`, an
/// Entra object id), no surrounding space.
fn is_valid_idp_group(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IDP_GROUP_BYTES
        && name.trim() == name
        && !name.chars().any(text::is_hidden_or_control)
}

/// How a role's requests are decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approval {
    /// Granted at once.
    Auto,
    /// Granted when `count` distinct members of `groups` other than the requester approve.
    Approvers { count: u32, groups: Vec<String> },
    /// Granted at once with a mandatory reason, the members of `groups` notified, and the grant
    /// flagged for review afterwards.
    BreakGlass { groups: Vec<String> },
}

impl Approval {
    pub fn as_str(&self) -> &'static str {
        match self {
            Approval::Auto => "auto",
            Approval::Approvers { .. } => "approvers",
            Approval::BreakGlass { .. } => "break_glass",
        }
    }

    /// The groups whose members approve (or are notified of) a request.
    pub fn groups(&self) -> &[String] {
        match self {
            Approval::Auto => &[],
            Approval::Approvers { groups, .. } | Approval::BreakGlass { groups } => groups,
        }
    }

    /// Approvals a request needs (0: granted at once).
    pub fn needed(&self) -> u32 {
        match self {
            Approval::Approvers { count, .. } => *count,
            _ => 0,
        }
    }

    /// Ranks the rules a requester would rather go through: at once, then fewest approvers.
    fn rank(&self) -> u32 {
        match self {
            Approval::Auto => 0,
            Approval::Approvers { count, .. } => *count,
            Approval::BreakGlass { .. } => u32::MAX,
        }
    }

    /// "auto", "2 approvers from sre, security", "break_glass (notifies sre)".
    pub fn describe(&self) -> String {
        match self {
            Approval::Auto => "auto".into(),
            Approval::Approvers { count, groups } => format!(
                "{count} approver{} from {}",
                if *count == 1 { "" } else { "s" },
                groups.join(", ")
            ),
            Approval::BreakGlass { groups } if groups.is_empty() => "break_glass".into(),
            Approval::BreakGlass { groups } => {
                format!("break_glass (notifies {})", groups.join(", "))
            }
        }
    }
}

/// The hosts a role covers.
#[derive(Debug, Clone)]
pub struct HostRule {
    /// Agent ids.
    pub ids: Vec<String>,
    /// Label selectors, matched against the labels this policy gives each agent.
    pub selectors: Vec<Selector>,
}

/// One validated role.
#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    pub users: BTreeSet<String>,
    pub groups: Vec<String>,
    pub hosts: HostRule,
    /// Path globs, as written (each checked with the grant verifier's own glob rules).
    pub paths: Vec<String>,
    /// systemd journal units it may grant, as written: unit names where `*` and `?` may stand
    /// for characters of a name (`app-*.service`). None: the role grants no journal unit.
    pub units: Vec<String>,
    pub max_ttl: Duration,
    pub redaction: Vec<String>,
    pub approval: Approval,
    /// A recent and/or multi-factor sign-in required to request under this role (`step_up`).
    pub step_up: Option<StepUp>,
}

/// A role's step-up rule: the requester's sign-in at the IdP must be at most `max_age` old
/// and/or multi-factor (`amr` holding `mfa`), or the role does not apply
/// (`step_up_required`: run `loggate login --fresh`); so must an approver's, to approve a
/// request under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUp {
    pub max_age: Option<Duration>,
    pub mfa: bool,
}

impl StepUp {
    /// What the rule needs, as a phrase ("a sign-in at the IdP within the last 15m and
    /// multi-factor authentication").
    pub fn needs(&self) -> String {
        let mut needs = Vec::new();
        if let Some(max) = self.max_age {
            needs.push(format!(
                "a sign-in at the IdP within the last {}",
                loggate_core::duration::format(max)
            ));
        }
        if self.mfa {
            needs.push("multi-factor authentication".to_string());
        }
        needs.join(" and ")
    }
}

/// The longest `step_up.max_age`.
pub const MAX_STEP_UP_AGE: Duration = Duration::from_secs(24 * 3600);

/// How the requester signed in, for step-up rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInStrength {
    /// Not judged here: a check about someone else (`policy check --subject`, whose sign-in
    /// is not at hand). Never for a decision that gives access: an approval judges the
    /// requester with the sign-in recorded when they asked (`Known`, or `Unknown`).
    NotChecked,
    /// No sign-in is behind the caller's key (a development certificate, an older sign-in's):
    /// no step-up rule is met.
    Unknown,
    /// The sign-in behind the caller's key: how long ago the person authenticated at the IdP,
    /// and whether the IdP reported multi-factor.
    Known { age: Duration, mfa: bool },
}

impl SignInStrength {
    /// Whether it meets `rule`.
    pub fn meets(self, rule: &StepUp) -> bool {
        match self {
            SignInStrength::NotChecked => true,
            SignInStrength::Unknown => false,
            SignInStrength::Known { age, mfa } => {
                rule.max_age.is_none_or(|max| age <= max) && (!rule.mfa || mfa)
            }
        }
    }
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub groups: BTreeMap<String, BTreeSet<String>>,
    /// The groups whose members may also be named by a user's certificate (an OU our CA
    /// wrote; `settings.certificate_groups`): opt-in per group, so a certificate's OU never
    /// makes anyone a member of any other group.
    pub certificate_groups: BTreeSet<String>,
    /// The IdP groups whose members are members of a policy group (`idp:<name>` entries of
    /// `[groups]`): policy group → IdP group names. A person is in them through the groups of
    /// their last verified sign-in, which the controller keeps server-side keyed by the
    /// certificate key it signed (see [`IDP_GROUP_PREFIX`]).
    pub idp_groups: BTreeMap<String, BTreeSet<String>>,
    /// Users who hold no role and review nothing, whatever `[groups]` or their certificate
    /// says (`settings.deny_users`): how someone whose certificate still names a group is
    /// taken out of it before the certificate expires. Deny wins.
    pub deny_users: BTreeSet<String>,
    pub agent_labels: BTreeMap<String, BTreeMap<String, String>>,
    pub roles: Vec<Role>,
    pub pending_ttl: Duration,
    /// The most pending requests one requester may have at once
    /// (`settings.max_pending_per_requester`): one person cannot flood approvers' lists or
    /// the notification queue.
    pub max_pending_per_requester: u32,
    /// The sign-in an admin needs for the actions that change who gets access
    /// (`settings.admin_step_up`: `grant issue`, `user lock|unlock`, `agent remove`,
    /// `agent token create`, `policy reload`); `None`: any admin certificate will do.
    pub admin_step_up: Option<StepUp>,
    /// Where notifications go (`[notify]`), if anywhere.
    pub notify: Option<notify::Webhook>,
    /// SHA-256 (hex) of the file's bytes, audited with every load.
    pub digest: String,
}

/// A policy file that was refused, with where and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct PolicyError {
    pub file: String,
    /// 1-based; 0 when the problem is not on one line (the file cannot be read).
    pub line: usize,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    settings: Option<Spanned<RawSettings>>,
    #[serde(default)]
    groups: BTreeMap<String, Spanned<Vec<String>>>,
    #[serde(default)]
    agents: BTreeMap<String, Spanned<RawAgent>>,
    #[serde(default)]
    roles: Vec<Spanned<RawRole>>,
    notify: Option<Spanned<RawNotify>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    webhook: String,
    ca: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    pending_ttl: Option<String>,
    max_pending_per_requester: Option<u32>,
    #[serde(default)]
    certificate_groups: Vec<String>,
    #[serde(default)]
    deny_users: Vec<String>,
    admin_step_up: Option<RawStepUp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    name: String,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    selectors: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    units: Vec<String>,
    max_ttl: String,
    #[serde(default = "default_redaction")]
    redaction: Vec<String>,
    approval: String,
    approvers: Option<u32>,
    #[serde(default)]
    approver_groups: Vec<String>,
    step_up: Option<RawStepUp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStepUp {
    max_age: Option<String>,
    #[serde(default)]
    mfa: bool,
}

/// A validated step-up rule; `what` names it in the error (`role x: step_up`).
fn step_up(raw: &RawStepUp, what: &str) -> Result<StepUp, String> {
    let max_age = match &raw.max_age {
        Some(t) => Some(duration(t, &format!("{what}.max_age"), MAX_STEP_UP_AGE)?),
        None => None,
    };
    if max_age.is_none() && !raw.mfa {
        return Err(format!(
            "{what} needs max_age (e.g. \"15m\") and/or mfa = true"
        ));
    }
    Ok(StepUp {
        max_age,
        mfa: raw.mfa,
    })
}

fn default_redaction() -> Vec<String> {
    vec!["default".into()]
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn duration(text: &str, what: &str, max: Duration) -> Result<Duration, String> {
    let d = loggate_core::duration::parse(text).map_err(|e| format!("{what}: {e}"))?;
    if d.is_zero() || d > max {
        return Err(format!(
            "{what} {text:?} is out of range; give between 1s and {}",
            loggate_core::duration::format(max)
        ));
    }
    Ok(d)
}

impl Policy {
    /// Reads and validates the policy file at `path`; see the module's contract.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let file = path.display().to_string();
        let fail = |line, reason: String| PolicyError {
            file: file.clone(),
            line,
            reason,
        };
        let meta = std::fs::metadata(path)
            .map_err(|e| fail(0, format!("cannot read the policy file: {e}")))?;
        if meta.len() > MAX_POLICY_BYTES {
            return Err(fail(
                0,
                format!("the policy file is larger than {MAX_POLICY_BYTES} bytes"),
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail(0, format!("cannot read the policy file: {e}")))?;
        let mut policy = Policy::parse(&text).map_err(|(line, reason)| fail(line, reason))?;
        // A relative `notify.ca` is relative to the policy file, like the configuration's paths.
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(ca) = policy.notify.as_mut().and_then(|n| n.ca.as_mut()) {
            if ca.is_relative() {
                *ca = base.join(&*ca);
            }
        }
        Ok(policy)
    }

    /// Validates the text of a policy file; the error is (line, reason).
    pub fn parse(text: &str) -> Result<Policy, (usize, String)> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
            (line, e.message().trim().to_string())
        })?;
        let at = |span: std::ops::Range<usize>| line_of(text, span.start);
        let pending_ttl = match &raw.settings {
            Some(settings) => match &settings.get_ref().pending_ttl {
                Some(t) => duration(t, "settings.pending_ttl", MAX_PENDING_TTL)
                    .map_err(|e| (at(settings.span()), e))?,
                None => DEFAULT_PENDING_TTL,
            },
            None => DEFAULT_PENDING_TTL,
        };
        let max_pending_per_requester = match &raw.settings {
            Some(settings) => match settings.get_ref().max_pending_per_requester {
                Some(n) if (1..=MAX_MAX_PENDING).contains(&n) => n,
                Some(n) => {
                    return Err((
                        at(settings.span()),
                        format!("settings.max_pending_per_requester {n} is out of range; give between 1 and {MAX_MAX_PENDING}"),
                    ))
                }
                None => DEFAULT_MAX_PENDING,
            },
            None => DEFAULT_MAX_PENDING,
        };
        let admin_step_up = match &raw.settings {
            Some(settings) => match &settings.get_ref().admin_step_up {
                Some(rule) => Some(
                    step_up(rule, "settings.admin_step_up")
                        .map_err(|e| (at(settings.span()), e))?,
                ),
                None => None,
            },
            None => None,
        };
        let mut groups = BTreeMap::new();
        let mut idp_groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, members) in &raw.groups {
            let line = at(members.span());
            if !is_valid_name(name) {
                return Err((
                    line,
                    format!(
                        "group {name:?} is not a valid name (lowercase letters, digits, dashes)"
                    ),
                ));
            }
            let mut set = BTreeSet::new();
            for m in members.get_ref() {
                if let Some(idp) = m.strip_prefix(IDP_GROUP_PREFIX) {
                    if !is_valid_idp_group(idp) {
                        return Err((
                            line,
                            format!("group {name}: {m:?} is not an IdP group (idp: then 1 to {MAX_IDP_GROUP_BYTES} bytes, no control characters or surrounding spaces)"),
                        ));
                    }
                    idp_groups
                        .entry(name.clone())
                        .or_default()
                        .insert(idp.to_string());
                    continue;
                }
                if !is_valid_name(m) {
                    return Err((
                        line,
                        format!(
                            "group {name}: {m:?} is not a valid user name (or idp:<IdP group>)"
                        ),
                    ));
                }
                set.insert(m.clone());
            }
            groups.insert(name.clone(), set);
        }
        let mut certificate_groups = BTreeSet::new();
        let mut deny_users = BTreeSet::new();
        if let Some(settings) = &raw.settings {
            let line = at(settings.span());
            for g in &settings.get_ref().certificate_groups {
                if !groups.contains_key(g) {
                    return Err((
                        line,
                        format!("settings.certificate_groups names group {g:?}, which [groups] does not define (write `{g} = []` there if only certificates name its members)"),
                    ));
                }
                certificate_groups.insert(g.clone());
            }
            for u in &settings.get_ref().deny_users {
                if !is_valid_name(u) {
                    return Err((
                        line,
                        format!("settings.deny_users: {u:?} is not a valid user name"),
                    ));
                }
                deny_users.insert(u.clone());
            }
        }
        let mut agent_labels = BTreeMap::new();
        for (id, agent) in &raw.agents {
            let line = at(agent.span());
            if !is_valid_name(id) {
                return Err((line, format!("agents.{id}: {id:?} is not a valid agent id")));
            }
            for (k, v) in &agent.get_ref().labels {
                if !selector::is_valid_label_part(k) || !selector::is_valid_label_part(v) {
                    return Err((
                        line,
                        format!("agents.{id}: label {k:?} = {v:?} is not a label ([A-Za-z0-9._/-], 1 to 63 characters)"),
                    ));
                }
            }
            agent_labels.insert(id.clone(), agent.get_ref().labels.clone());
        }
        let mut roles: Vec<Role> = Vec::new();
        for spanned in &raw.roles {
            let line = at(spanned.span());
            let role =
                Self::role(spanned.get_ref(), &groups, &deny_users).map_err(|e| (line, e))?;
            if roles.iter().any(|r| r.name == role.name) {
                return Err((line, format!("role {:?} is defined twice", role.name)));
            }
            roles.push(role);
        }
        let notify = match &raw.notify {
            Some(n) => Some(
                notify::Webhook::parse(&n.get_ref().webhook, n.get_ref().ca.as_deref())
                    .map_err(|e| (at(n.span()), e))?,
            ),
            None => None,
        };
        Ok(Policy {
            groups,
            certificate_groups,
            idp_groups,
            deny_users,
            agent_labels,
            roles,
            pending_ttl,
            max_pending_per_requester,
            admin_step_up,
            notify,
            digest: hex::encode(Sha256::digest(text.as_bytes())),
        })
    }

    fn role(
        raw: &RawRole,
        groups: &BTreeMap<String, BTreeSet<String>>,
        deny_users: &BTreeSet<String>,
    ) -> Result<Role, String> {
        let name = &raw.name;
        if !is_valid_name(name) {
            return Err(format!(
                "role {name:?}: the name must be lowercase letters, digits and dashes"
            ));
        }
        let known_group = |g: &String, field: &str| {
            if groups.contains_key(g) {
                Ok(())
            } else {
                Err(format!(
                    "role {name}: {field} names group {g:?}, which [groups] does not define"
                ))
            }
        };
        if raw.users.is_empty() && raw.groups.is_empty() {
            return Err(format!(
                "role {name}: name who may request it (users or groups)"
            ));
        }
        for u in &raw.users {
            if !is_valid_name(u) {
                return Err(format!("role {name}: {u:?} is not a valid user name"));
            }
        }
        for g in &raw.groups {
            known_group(g, "groups")?;
        }
        if raw.hosts.is_empty() && raw.selectors.is_empty() {
            return Err(format!(
                "role {name}: name the hosts it covers (hosts = agent ids, or selectors)"
            ));
        }
        for h in &raw.hosts {
            if !is_valid_name(h) {
                return Err(format!("role {name}: host {h:?} is not a valid agent id"));
            }
        }
        let selectors = raw
            .selectors
            .iter()
            .map(|s| Selector::parse(s).map_err(|e| format!("role {name}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if raw.paths.is_empty() && raw.units.is_empty() {
            return Err(format!(
                "role {name}: name at least one path glob (paths) or journal unit (units)"
            ));
        }
        for p in &raw.paths {
            compile_path_glob(p).map_err(|e| format!("role {name}: {e}"))?;
        }
        for u in &raw.units {
            unit_pattern(u).map_err(|e| format!("role {name}: units: {e}"))?;
        }
        let max_ttl = duration(
            &raw.max_ttl,
            &format!("role {name}: max_ttl"),
            crate::config::MAX_TTL_LIMIT,
        )?;
        if raw.redaction.is_empty() {
            return Err(format!(
                "role {name}: redaction must list at least one profile (e.g. [\"default\"])"
            ));
        }
        for p in &raw.redaction {
            if !loggate_core::grant::is_valid_redaction_name(p) {
                return Err(format!(
                    "role {name}: redaction {p:?} is not a profile name ([a-z0-9_-]{{1,64}})"
                ));
            }
        }
        for g in &raw.approver_groups {
            known_group(g, "approver_groups")?;
        }
        let approval = match raw.approval.as_str() {
            "auto" => {
                if raw.approvers.is_some() || !raw.approver_groups.is_empty() {
                    return Err(format!(
                        "role {name}: approval = \"auto\" takes no approvers or approver_groups"
                    ));
                }
                Approval::Auto
            }
            "approvers" => {
                let count = raw.approvers.unwrap_or(1);
                if count == 0 || count > 16 {
                    return Err(format!("role {name}: approvers must be between 1 and 16"));
                }
                if raw.approver_groups.is_empty() {
                    return Err(format!(
                        "role {name}: approval = \"approvers\" needs approver_groups (who may approve)"
                    ));
                }
                let eligible: BTreeSet<&String> = raw
                    .approver_groups
                    .iter()
                    .filter_map(|g| groups.get(g))
                    .flatten()
                    .filter(|u| !deny_users.contains(*u))
                    .collect();
                if u32::try_from(eligible.len()).unwrap_or(u32::MAX) < count {
                    return Err(format!(
                        "role {name}: needs {count} approvers but its approver_groups hold {} people",
                        eligible.len()
                    ));
                }
                Approval::Approvers {
                    count,
                    groups: raw.approver_groups.clone(),
                }
            }
            "break_glass" => {
                if raw.approvers.is_some() {
                    return Err(format!(
                        "role {name}: a break_glass role takes no approvers count (its approver_groups are notified)"
                    ));
                }
                if raw.approver_groups.is_empty() {
                    return Err(format!(
                        "role {name}: a break_glass role needs approver_groups: they are notified at once and review the grant afterwards"
                    ));
                }
                Approval::BreakGlass {
                    groups: raw.approver_groups.clone(),
                }
            }
            other => {
                return Err(format!(
                "role {name}: approval {other:?} is not \"auto\", \"approvers\" or \"break_glass\""
            ))
            }
        };
        let step_up = match &raw.step_up {
            None => None,
            Some(s) => Some(step_up(s, &format!("role {name}: step_up"))?),
        };
        Ok(Role {
            name: name.clone(),
            step_up,
            users: raw.users.iter().cloned().collect(),
            groups: raw.groups.clone(),
            hosts: HostRule {
                ids: raw.hosts.clone(),
                selectors,
            },
            paths: raw.paths.clone(),
            units: raw.units.clone(),
            max_ttl,
            redaction: raw.redaction.clone(),
            approval,
        })
    }

    /// The labels this policy gives agent `id` (empty when it names none).
    pub fn labels_of(&self, id: &str) -> Option<&BTreeMap<String, String>> {
        self.agent_labels.get(id)
    }

    /// The agents (by id) whose labels match `selector`, in id order.
    pub fn select_agents(&self, selector: &Selector) -> Vec<String> {
        self.agent_labels
            .iter()
            .filter(|(_, labels)| selector.matches(labels))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Everyone who may approve (or is notified of) a request under `approval`, minus
    /// `requester`, in name order.
    pub fn approvers(&self, approval: &Approval, requester: &str) -> Vec<String> {
        self.members_except(approval.groups(), requester)
    }

    /// The members of `groups` listed in `[groups]` (as this policy defines them now) other
    /// than `requester` and the denied users, in name order: who may review a request with
    /// these approver groups. Members named only by their certificates
    /// (`settings.certificate_groups`) are not listed: the controller cannot know them.
    pub fn members_except(&self, groups: &[String], requester: &str) -> Vec<String> {
        let mut people: BTreeSet<&String> = BTreeSet::new();
        for g in groups {
            if let Some(members) = self.groups.get(g) {
                people.extend(members);
            }
        }
        people
            .into_iter()
            .filter(|p| p.as_str() != requester && !self.deny_users.contains(p.as_str()))
            .cloned()
            .collect()
    }

    /// Whether this policy names any IdP group: then a sign-in whose token lacks the groups
    /// claim is refused (its person's memberships could not be known).
    pub fn uses_idp_groups(&self) -> bool {
        !self.idp_groups.is_empty()
    }

    /// Whether `person` is a member of group `group`: only for a group this policy defines,
    /// never for a user of `settings.deny_users`; listed in `[groups]`, or holding the group
    /// in their certificate (`cert_groups`, see [`Query::cert_groups`]) when the group opts in
    /// (`settings.certificate_groups`), or holding (`idp:<name>` in `cert_groups`, added by
    /// the controller from the person's verified sign-in) an IdP group the group names.
    pub fn is_member(&self, group: &str, person: &str, cert_groups: &[String]) -> bool {
        let Some(listed) = self.groups.get(group) else {
            return false;
        };
        if self.deny_users.contains(person) {
            return false;
        }
        let by_idp = || {
            self.idp_groups.get(group).is_some_and(|idp| {
                cert_groups
                    .iter()
                    .filter_map(|g| g.strip_prefix(IDP_GROUP_PREFIX))
                    .any(|g| idp.contains(g))
            })
        };
        listed.contains(person)
            || (self.certificate_groups.contains(group) && cert_groups.iter().any(|g| g == group))
            || by_idp()
    }

    /// Whether `reviewer` (with the groups of their certificate) may review a request of
    /// `requester` whose approver groups are `groups`: a member of one of them, never the
    /// requester.
    pub fn may_review(
        &self,
        groups: &[String],
        requester: &str,
        reviewer: &str,
        cert_groups: &[String],
    ) -> bool {
        reviewer != requester
            && groups
                .iter()
                .any(|g| self.is_member(g, reviewer, cert_groups))
    }

    /// Why `role` does not allow `query` (None: it does).
    fn refusal(&self, role: &Role, q: &Query<'_>) -> Option<Refusal> {
        if self.deny_users.contains(q.subject) {
            return Some(Refusal::UserDenied);
        }
        let in_group = role
            .groups
            .iter()
            .any(|g| self.is_member(g, q.subject, q.cert_groups));
        if !role.users.contains(q.subject) && !in_group {
            return Some(Refusal::NotAMember);
        }
        for host in q.hosts {
            let by_id = role.hosts.ids.iter().any(|h| h == host);
            let by_label = self
                .labels_of(host)
                .is_some_and(|l| role.hosts.selectors.iter().any(|s| s.matches(l)));
            if !by_id && !by_label {
                return Some(Refusal::HostNotCovered(host.clone()));
            }
        }
        for path in q.paths {
            let as_written = role.paths.iter().any(|p| p == path);
            let plain = !path.contains(['*', '?', '[', ']', '{', '}', '\\']);
            // Compiled at load too: a glob that failed now would match nothing (fail closed).
            let matched = plain
                && role
                    .paths
                    .iter()
                    .any(|p| compile_path_glob(p).is_ok_and(|m| m.is_match(path)));
            if !as_written && !matched {
                return Some(Refusal::PathNotCovered(path.clone()));
            }
        }
        for unit in q.units {
            // Checked at load too: a pattern that failed now would match nothing (fail closed).
            let covered = role
                .units
                .iter()
                .any(|p| unit_pattern(p).is_ok_and(|m| m.is_match(unit)));
            if !covered {
                return Some(Refusal::UnitNotCovered(unit.clone()));
            }
        }
        if !role.redaction.iter().any(|p| p == q.profile) {
            return Some(Refusal::ProfileNotAllowed(q.profile.to_string()));
        }
        if let Some(rule) = &role.step_up {
            if !q.sign_in.meets(rule) {
                return Some(Refusal::StepUpRequired(rule.clone()));
            }
        }
        let is_break_glass = matches!(role.approval, Approval::BreakGlass { .. });
        if is_break_glass && !q.break_glass {
            return Some(Refusal::BreakGlassOnly);
        }
        if !is_break_glass && q.break_glass {
            return Some(Refusal::NotBreakGlass);
        }
        let needed = role.approval.needed() as usize;
        if needed > 0 {
            let eligible = self.approvers(&role.approval, q.subject).len();
            if eligible < needed {
                return Some(Refusal::TooFewApprovers { needed, eligible });
            }
        }
        None
    }

    /// The one decision: which role allows `query` (and how it is approved, for how long), or
    /// why no role does.
    pub fn evaluate(&self, q: &Query<'_>) -> Decision {
        let mut refusals = Vec::new();
        let mut best: Option<&Role> = None;
        for role in &self.roles {
            match self.refusal(role, q) {
                Some(r) => refusals.push((role.name.clone(), r)),
                None => {
                    if best.is_none_or(|b| role.approval.rank() < b.approval.rank()) {
                        best = Some(role);
                    }
                }
            }
        }
        match best {
            Some(role) => {
                let ttl = q.ttl.min(role.max_ttl);
                Decision::Allowed(Allowed {
                    role: role.name.clone(),
                    approval: role.approval.clone(),
                    ttl,
                    ttl_capped: ttl < q.ttl,
                    approvers: self.approvers(&role.approval, q.subject),
                })
            }
            None => Decision::Refused(refusals),
        }
    }
}

/// A role's journal-unit pattern: a unit name in which `*` and `?` may stand for characters
/// (`app-*.service`), compiled to a matcher over whole unit names. What stands for a wildcard
/// must leave a valid unit name, so a pattern cannot cover a name systemd would refuse, nor
/// change a unit's type (`*` alone, `nginx.*`).
pub fn unit_pattern(pattern: &str) -> Result<globset::GlobMatcher, String> {
    if pattern.contains(['[', ']', '{', '}']) {
        return Err(format!(
            "{pattern:?}: only * and ? may be used as wildcards in a unit pattern"
        ));
    }
    loggate_core::grant::UnitName::new(&pattern.replace(['*', '?'], "x"))
        .map_err(|e| format!("{pattern:?} is not a unit name pattern ({e})"))?;
    if pattern
        .rsplit_once('.')
        .is_none_or(|(_, suffix)| suffix.contains(['*', '?']))
    {
        return Err(format!(
            "{pattern:?}: the unit type (.service, .socket, …) must be written out"
        ));
    }
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(false)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("{pattern:?}: {e}"))
}

/// What is asked: `subject` (a user name) wants to read `paths` on `hosts` (agent ids) for
/// `ttl` with redaction `profile`.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    pub subject: &'a str,
    /// The groups the subject's certificate names (its subject's OU attributes), matched like
    /// `[groups]` members, and the IdP groups of the sign-in that certified its key, each as
    /// `idp:<name>` (matched against the `idp:` entries of `[groups]`). Only certificates of the configured CA reach the controller, so
    /// these are groups our CA wrote; empty for `policy check --subject` about someone else,
    /// whose certificate the controller does not have.
    pub cert_groups: &'a [String],
    pub hosts: &'a [String],
    pub paths: &'a [String],
    /// systemd journal units (checked unit names), each to be covered by the role's `units`.
    pub units: &'a [String],
    pub ttl: Duration,
    pub profile: &'a str,
    /// The requester asks for break-glass access (`grant request --break-glass`).
    pub break_glass: bool,
    /// How the requester signed in (for roles with `step_up`).
    pub sign_in: SignInStrength,
}

/// Why one role does not allow a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The subject is in `settings.deny_users`.
    UserDenied,
    NotAMember,
    HostNotCovered(String),
    PathNotCovered(String),
    /// The role's `units` do not cover this journal unit (a role without `units` covers none).
    UnitNotCovered(String),
    ProfileNotAllowed(String),
    /// The role is break-glass and the request did not ask for it.
    BreakGlassOnly,
    /// The request asked for break-glass and the role is not a break-glass role.
    NotBreakGlass,
    TooFewApprovers {
        needed: usize,
        eligible: usize,
    },
    /// The role needs a more recent or a multi-factor sign-in (`step_up`).
    StepUpRequired(StepUp),
}

impl Refusal {
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::UserDenied => "user_denied",
            Refusal::NotAMember => "not_a_member",
            Refusal::HostNotCovered(_) => "host_not_covered",
            Refusal::PathNotCovered(_) => "path_not_covered",
            Refusal::UnitNotCovered(_) => "unit_not_covered",
            Refusal::ProfileNotAllowed(_) => "profile_not_allowed",
            Refusal::BreakGlassOnly => "break_glass_only",
            Refusal::NotBreakGlass => "not_break_glass",
            Refusal::TooFewApprovers { .. } => "too_few_approvers",
            Refusal::StepUpRequired(_) => "step_up_required",
        }
    }

    /// The reason as a phrase ("does not cover host web-2").
    pub fn describe(&self) -> String {
        match self {
            Refusal::UserDenied => {
                "does not apply: the policy's settings.deny_users names you".into()
            }
            Refusal::NotAMember => "you are not among its users or groups".into(),
            Refusal::HostNotCovered(h) => format!("does not cover host {h}"),
            Refusal::PathNotCovered(p) => format!("does not cover path {p}"),
            Refusal::UnitNotCovered(u) => format!("does not cover journal unit {u}"),
            Refusal::ProfileNotAllowed(p) => format!("does not allow redaction profile {p:?}"),
            Refusal::BreakGlassOnly => {
                "is a break-glass role; ask again with --break-glass and a reason".into()
            }
            Refusal::NotBreakGlass => "is not a break-glass role".into(),
            Refusal::TooFewApprovers { needed, eligible } => format!(
                "needs {needed} approvers other than you, and its approver groups hold {eligible}"
            ),
            Refusal::StepUpRequired(rule) => {
                format!(
                    "needs {}: run `loggate login --fresh` and ask again",
                    rule.needs()
                )
            }
        }
    }
}

/// A role allows the query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    pub role: String,
    pub approval: Approval,
    /// The TTL granted: the one asked for, capped at the role's `max_ttl`.
    pub ttl: Duration,
    pub ttl_capped: bool,
    /// Who may approve (or is notified), never the requester.
    pub approvers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed(Allowed),
    /// No role allows it: each role's name and reason, in policy order.
    Refused(Vec<(String, Refusal)>),
}

impl Decision {
    /// One sentence for a refusal: why no role allows it.
    pub fn refusal_sentence(refusals: &[(String, Refusal)], subject: &str) -> String {
        if refusals.is_empty() {
            return format!(
                "no role of the access policy allows {subject} this access (the policy defines no roles); ask an admin to add one"
            );
        }
        let reasons: Vec<String> = refusals
            .iter()
            .map(|(role, r)| format!("role {role} {}", r.describe()))
            .collect();
        format!(
            "no role of the access policy allows {subject} this access: {}",
            reasons.join("; ")
        )
    }
}
