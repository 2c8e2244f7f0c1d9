//! Table-driven tests of the policy's validation and of its one decision.

use super::*;

const POLICY: &str = r#"
[settings]
pending_ttl = "30m"

[groups]
sre = ["bob", "carol"]
payments = ["alice", "dave"]
security = ["erin"]

[agents.web-1]
labels = { env = "prod", team = "payments" }
[agents.web-2]
labels = { env = "staging", team = "payments" }
[agents.db-1]
labels = { env = "prod", team = "data" }

[[roles]]
name = "payments-prod"
groups = ["payments"]
selectors = ["env=prod,team=payments"]
paths = ["/var/log/app/*.log"]
max_ttl = "2h"
approval = "approvers"
approvers = 1
approver_groups = ["sre"]

[[roles]]
name = "payments-staging"
groups = ["payments"]
selectors = ["env in (staging,dev)"]
paths = ["/var/log/app/*.log", "/var/log/nginx/**"]
max_ttl = "8h"
redaction = ["default", "raw"]
approval = "auto"

[[roles]]
name = "sre-oncall"
groups = ["sre"]
hosts = ["web-1", "db-1"]
paths = ["/var/log/**"]
max_ttl = "1h"
approval = "break_glass"
approver_groups = ["security"]

[[roles]]
name = "two-person"
users = ["frank"]
hosts = ["db-1"]
paths = ["/var/log/db/*.log"]
max_ttl = "4h"
approval = "approvers"
approvers = 2
approver_groups = ["sre", "security"]
"#;

fn policy() -> Policy {
    Policy::parse(POLICY).unwrap_or_else(|(line, e)| panic!("line {line}: {e}"))
}

fn hours(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}

struct Case {
    name: &'static str,
    subject: &'static str,
    hosts: &'static [&'static str],
    paths: &'static [&'static str],
    ttl: Duration,
    profile: &'static str,
    break_glass: bool,
    /// `Ok((role, approval kind, granted ttl))` or `Err(the refusal code of every role)`.
    expect: Result<(&'static str, &'static str, Duration), &'static [&'static str]>,
}

const fn case(
    name: &'static str,
    subject: &'static str,
    hosts: &'static [&'static str],
    paths: &'static [&'static str],
    ttl: Duration,
    expect: Result<(&'static str, &'static str, Duration), &'static [&'static str]>,
) -> Case {
    Case {
        name,
        subject,
        hosts,
        paths,
        ttl,
        profile: "default",
        break_glass: false,
        expect,
    }
}

const API: &[&str] = &["/var/log/app/api.log"];
const H1: Duration = Duration::from_secs(3600);
const H3: Duration = Duration::from_secs(3 * 3600);
const H2: Duration = Duration::from_secs(2 * 3600);

#[test]
fn evaluation_picks_the_role_and_rule_or_says_why_none() {
    let cases = [
        case(
            "label selector match needs an approver",
            "alice",
            &["web-1"],
            API,
            H1,
            Ok(("payments-prod", "approvers", H1)),
        ),
        case(
            "ttl is capped at the role's max_ttl",
            "alice",
            &["web-1"],
            API,
            H3,
            Ok(("payments-prod", "approvers", H2)),
        ),
        case(
            "an `in` selector auto-approves staging",
            "alice",
            &["web-2"],
            API,
            H3,
            Ok(("payments-staging", "auto", H3)),
        ),
        case(
            "the role's glob as written is allowed",
            "dave",
            &["web-2"],
            &["/var/log/app/*.log"],
            H1,
            Ok(("payments-staging", "auto", H1)),
        ),
        case(
            "a wider glob than the role's is refused",
            "dave",
            &["web-2"],
            &["/var/log/app/**"],
            H1,
            Err(&[
                "host_not_covered",
                "path_not_covered",
                "not_a_member",
                "not_a_member",
            ]),
        ),
        case(
            "a host whose labels match no selector",
            "alice",
            &["db-1"],
            API,
            H1,
            Err(&[
                "host_not_covered",
                "host_not_covered",
                "not_a_member",
                "not_a_member",
            ]),
        ),
        case(
            "an unknown host has no labels",
            "alice",
            &["web-9"],
            API,
            H1,
            Err(&[
                "host_not_covered",
                "host_not_covered",
                "not_a_member",
                "not_a_member",
            ]),
        ),
        case(
            "every host must be covered",
            "alice",
            &["web-1", "web-2"],
            API,
            H1,
            Err(&[
                "host_not_covered",
                "host_not_covered",
                "not_a_member",
                "not_a_member",
            ]),
        ),
        case(
            "a non-member is refused",
            "mallory",
            &["web-1"],
            API,
            H1,
            Err(&[
                "not_a_member",
                "not_a_member",
                "not_a_member",
                "not_a_member",
            ]),
        ),
        case(
            "break-glass roles need --break-glass",
            "bob",
            &["web-1"],
            API,
            H1,
            Err(&[
                "not_a_member",
                "not_a_member",
                "break_glass_only",
                "not_a_member",
            ]),
        ),
        case(
            "a path outside the role",
            "alice",
            &["web-1"],
            &["/etc/shadow"],
            H1,
            Err(&[
                "path_not_covered",
                "host_not_covered",
                "not_a_member",
                "not_a_member",
            ]),
        ),
        case(
            "two approvers from two groups",
            "frank",
            &["db-1"],
            &["/var/log/db/pg.log"],
            H1,
            Ok(("two-person", "approvers", H1)),
        ),
    ];
    let p = policy();
    for c in cases.iter().chain(
        [
            Case {
                profile: "raw",
                ..case(
                    "raw only where listed",
                    "alice",
                    &["web-1"],
                    API,
                    H1,
                    Err(&[
                        "profile_not_allowed",
                        "host_not_covered",
                        "not_a_member",
                        "not_a_member",
                    ]),
                )
            },
            Case {
                profile: "raw",
                ..case(
                    "raw where listed",
                    "alice",
                    &["web-2"],
                    API,
                    H1,
                    Ok(("payments-staging", "auto", H1)),
                )
            },
            Case {
                break_glass: true,
                ..case(
                    "break-glass when asked",
                    "bob",
                    &["web-1"],
                    API,
                    H3,
                    Ok(("sre-oncall", "break_glass", H1)),
                )
            },
            Case {
                break_glass: true,
                ..case(
                    "break-glass asked of a normal role",
                    "alice",
                    &["web-1"],
                    API,
                    H1,
                    Err(&[
                        "not_break_glass",
                        "host_not_covered",
                        "not_a_member",
                        "not_a_member",
                    ]),
                )
            },
        ]
        .iter(),
    ) {
        let hosts: Vec<String> = c.hosts.iter().map(|s| s.to_string()).collect();
        let paths: Vec<String> = c.paths.iter().map(|s| s.to_string()).collect();
        let decision = p.evaluate(&Query {
            subject: c.subject,
            cert_groups: &[],
            hosts: &hosts,
            paths: &paths,
            units: &[],
            ttl: c.ttl,
            profile: c.profile,
            break_glass: c.break_glass,
            sign_in: SignInStrength::NotChecked,
        });
        match (&decision, &c.expect) {
            (Decision::Allowed(a), Ok((role, rule, ttl))) => {
                assert_eq!(
                    (a.role.as_str(), a.approval.as_str(), a.ttl),
                    (*role, *rule, *ttl),
                    "{}",
                    c.name
                );
                assert_eq!(a.ttl_capped, a.ttl < c.ttl, "{}", c.name);
                assert!(!a.approvers.iter().any(|x| x == c.subject), "{}", c.name);
            }
            (Decision::Refused(r), Err(codes)) => {
                let got: Vec<&str> = r.iter().map(|(_, x)| x.as_str()).collect();
                assert_eq!(&got, codes, "{}", c.name);
            }
            _ => panic!("{}: got {decision:?}, expected {:?}", c.name, c.expect),
        }
    }
}

#[test]
fn the_requester_is_never_an_eligible_approver() {
    let p = Policy::parse(
        r#"
[groups]
sre = ["bob", "carol"]
[[roles]]
name = "sre-self"
groups = ["sre"]
hosts = ["web-1"]
paths = ["/var/log/*.log"]
max_ttl = "1h"
approval = "approvers"
approvers = 2
approver_groups = ["sre"]
"#,
    )
    .unwrap();
    let hosts = vec!["web-1".to_string()];
    let paths = vec!["/var/log/syslog.log".to_string()];
    let q = Query {
        subject: "bob",
        cert_groups: &[],
        hosts: &hosts,
        paths: &paths,
        units: &[],
        ttl: H1,
        profile: "default",
        break_glass: false,
        sign_in: SignInStrength::NotChecked,
    };
    // Two approvers needed, only carol is left besides bob: refused, never pending for ever.
    match p.evaluate(&q) {
        Decision::Refused(r) => assert_eq!(
            r[0].1,
            Refusal::TooFewApprovers {
                needed: 2,
                eligible: 1
            }
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(p.approvers(&p.roles[0].approval, "bob"), vec!["carol"]);
}

#[test]
fn the_least_friction_allowing_role_is_chosen() {
    let p = Policy::parse(
        r#"
[groups]
sre = ["bob", "carol"]
[[roles]]
name = "approved"
users = ["alice"]
hosts = ["web-1"]
paths = ["/var/log/*.log"]
max_ttl = "1h"
approval = "approvers"
approver_groups = ["sre"]
[[roles]]
name = "at-once"
users = ["alice"]
hosts = ["web-1"]
paths = ["/var/log/*.log"]
max_ttl = "10m"
approval = "auto"
"#,
    )
    .unwrap();
    let hosts = vec!["web-1".to_string()];
    let paths = vec!["/var/log/a.log".to_string()];
    let q = Query {
        subject: "alice",
        cert_groups: &[],
        hosts: &hosts,
        paths: &paths,
        units: &[],
        ttl: H1,
        profile: "default",
        break_glass: false,
        sign_in: SignInStrength::NotChecked,
    };
    let Decision::Allowed(a) = p.evaluate(&q) else {
        panic!("refused")
    };
    assert_eq!(a.role, "at-once");
    assert_eq!(a.ttl, Duration::from_secs(600));
    assert!(a.ttl_capped);
}

#[test]
fn relabelling_a_host_changes_what_selects_it() {
    let before = policy();
    let after = Policy::parse(&POLICY.replace(
        "labels = { env = \"prod\", team = \"payments\" }",
        "labels = { env = \"prod\", team = \"search\" }",
    ))
    .unwrap();
    let sel = Selector::parse("team=payments").unwrap();
    assert_eq!(before.select_agents(&sel), vec!["web-1", "web-2"]);
    assert_eq!(after.select_agents(&sel), vec!["web-2"]);
    assert_ne!(before.digest, after.digest);
    assert_eq!(before.pending_ttl, Duration::from_secs(1800));
}

#[test]
fn invalid_policies_are_refused_with_line_and_reason() {
    let role = |body: &str| {
        format!(
            "[groups]\nsre = [\"bob\"]\n\n[[roles]]\nname = \"r\"\nusers = [\"alice\"]\n{body}\n"
        )
    };
    let base = "hosts = [\"web-1\"]\npaths = [\"/var/log/*.log\"]\nmax_ttl = \"1h\"\n";
    for (text, line, expect) in [
        ("[groups\n".to_string(), 1, "unclosed table"),
        ("unknown = 1\n".to_string(), 1, "unknown field"),
        ("\n\n[groups]\nsre = [\"Bob\"]\n".to_string(), 4, "not a valid user name"),
        (role(&format!("{base}approval = \"sometimes\"")), 4, "is not \"auto\""),
        (role(&format!("{base}approval = \"approvers\"\napprover_groups = [\"nobody\"]")), 4, "which [groups] does not define"),
        (role(&format!("{base}approval = \"approvers\"")), 4, "needs approver_groups"),
        (role(&format!("{base}approval = \"approvers\"\napprovers = 2\napprover_groups = [\"sre\"]")), 4, "needs 2 approvers but its approver_groups hold 1"),
        (role(&format!("{base}approval = \"auto\"\napprovers = 1")), 4, "takes no approvers"),
        (role(&format!("{base}approval = \"break_glass\"")), 4, "needs approver_groups: they are notified"),
        (role("hosts = [\"web-1\"]\npaths = [\"var/log\"]\nmax_ttl = \"1h\"\napproval = \"auto\""), 4, "absolute"),
        (role("hosts = [\"web-1\"]\npaths = [\"/a/*.log\"]\nmax_ttl = \"400d\"\napproval = \"auto\""), 4, "out of range"),
        (role("selectors = [\"env in prod\"]\npaths = [\"/a/*.log\"]\nmax_ttl = \"1h\"\napproval = \"auto\""), 4, "parentheses"),
        (role("paths = [\"/a/*.log\"]\nmax_ttl = \"1h\"\napproval = \"auto\""), 4, "name the hosts"),
        (role(&format!("{base}approval = \"auto\"\nredaction = [\"RAW\"]")), 4, "not a profile name"),
        (format!("{}\n[[roles]]\nname = \"r\"\nusers = [\"alice\"]\n{base}approval = \"auto\"\n", role(&format!("{base}approval = \"auto\""))), 12, "defined twice"),
        ("[settings]\npending_ttl = \"0s\"\n".to_string(), 1, "out of range"),
        ("[agents.web-1]\nlabels = { env = \"a b\" }\n".to_string(), 1, "is not a label"),
    ] {
        let (got_line, reason) = Policy::parse(&text).expect_err(&text);
        assert!(reason.contains(expect), "{text}\n=> {reason}");
        assert_eq!(got_line, line, "{text}\n=> {reason}");
    }
}

#[test]
fn a_refused_file_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, "[groups]\nsre = [\"bob\"]\nbad = 3\n").unwrap();
    let err = Policy::load(&path).unwrap_err();
    assert_eq!(err.line, 3);
    assert!(
        err.to_string()
            .starts_with(&format!("{}:3: ", path.display())),
        "{err}"
    );
    let err = Policy::load(&dir.path().join("missing.toml")).unwrap_err();
    assert!(err.to_string().contains("cannot read"), "{err}");
}

#[test]
fn approval_rules_describe_themselves() {
    let p = policy();
    let described: Vec<String> = p.roles.iter().map(|r| r.approval.describe()).collect();
    assert_eq!(
        described,
        vec![
            "1 approver from sre",
            "auto",
            "break_glass (notifies security)",
            "2 approvers from sre, security"
        ]
    );
    assert_eq!(hours(1), H1);
}

#[test]
fn groups_from_the_certificate_count_like_group_members_for_requests_and_reviews() {
    let p = Policy::parse(
        r#"
[settings]
certificate_groups = ["payments", "sre"]

[groups]
payments = []
sre = ["bob"]

[[roles]]
name = "payments-prod"
groups = ["payments"]
hosts = ["web-1"]
paths = ["/var/log/app/*.log"]
max_ttl = "1h"
approval = "approvers"
approvers = 1
approver_groups = ["sre"]
"#,
    )
    .unwrap_or_else(|(line, e)| panic!("line {line}: {e}"));
    let hosts = vec!["web-1".to_string()];
    let paths = vec!["/var/log/app/api.log".to_string()];
    let payments = vec!["payments".to_string()];
    let ask = |cert_groups: &[String]| {
        p.evaluate(&Query {
            subject: "carol",
            cert_groups,
            hosts: &hosts,
            paths: &paths,
            units: &[],
            ttl: H1,
            profile: "default",
            break_glass: false,
            sign_in: SignInStrength::NotChecked,
        })
    };
    assert!(matches!(ask(&[]), Decision::Refused(_)));
    match ask(&payments) {
        Decision::Allowed(a) => assert_eq!(a.role, "payments-prod"),
        other => panic!("{other:?}"),
    }
    let sre = vec!["sre".to_string()];
    let groups = vec!["sre".to_string()];
    assert!(p.may_review(&groups, "carol", "dave", &sre));
    assert!(p.may_review(&groups, "carol", "bob", &[]));
    assert!(!p.may_review(&groups, "carol", "dave", &payments));
    assert!(
        !p.may_review(&groups, "carol", "carol", &sre),
        "never one's own"
    );
}

#[test]
fn the_per_requester_cap_on_pending_requests_defaults_to_20_and_is_range_checked() {
    assert_eq!(policy().max_pending_per_requester, 20);
    let set = |n: &str| Policy::parse(&format!("[settings]\nmax_pending_per_requester = {n}\n"));
    assert_eq!(set("3").unwrap().max_pending_per_requester, 3);
    for bad in ["0", "1001"] {
        let (line, e) = set(bad).unwrap_err();
        assert_eq!(line, 1);
        assert!(e.contains("out of range"), "{e}");
    }
}

/// The policy of [`groups_from_the_certificate_count_like_group_members_for_requests_and_reviews`]
/// with `settings` of its own.
fn cert_policy(settings: &str) -> Policy {
    Policy::parse(&format!(
        r#"
[settings]
{settings}

[groups]
payments = ["alice"]
sre = ["bob", "erin"]
security = ["bob"]

[[roles]]
name = "payments-prod"
groups = ["payments"]
hosts = ["web-1"]
paths = ["/var/log/app/*.log"]
max_ttl = "1h"
approval = "approvers"
approvers = 1
approver_groups = ["sre"]
"#
    ))
    .unwrap_or_else(|(line, e)| panic!("line {line}: {e}"))
}

fn ask_as(p: &Policy, subject: &str, cert_groups: &[String]) -> Decision {
    let hosts = vec!["web-1".to_string()];
    let paths = vec!["/var/log/app/api.log".to_string()];
    p.evaluate(&Query {
        subject,
        cert_groups,
        hosts: &hosts,
        paths: &paths,
        units: &[],
        ttl: H1,
        profile: "default",
        break_glass: false,
        sign_in: SignInStrength::NotChecked,
    })
}

#[test]
fn a_certificate_group_counts_only_for_groups_that_opt_in() {
    let groups = |g: &[&str]| g.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // No opt-in: an OU of payments or sre makes nobody a member.
    let p = cert_policy("");
    assert!(matches!(
        ask_as(&p, "carol", &groups(&["payments"])),
        Decision::Refused(_)
    ));
    assert!(!p.may_review(&groups(&["sre"]), "alice", "dave", &groups(&["sre"])));
    // sre opts in, payments does not: dave reviews, carol still cannot request.
    let p = cert_policy(r#"certificate_groups = ["sre"]"#);
    assert!(p.may_review(&groups(&["sre"]), "alice", "dave", &groups(&["sre"])));
    assert!(matches!(
        ask_as(&p, "carol", &groups(&["payments"])),
        Decision::Refused(_)
    ));
    // A group the policy does not define is nobody's, whatever the certificate says.
    assert!(!p.is_member("oncall", "dave", &groups(&["oncall"])));
    // Opting in a group [groups] does not define is refused at load.
    let (_, e) = Policy::parse("[settings]\ncertificate_groups = [\"oncall\"]\n").unwrap_err();
    assert!(e.contains("which [groups] does not define"), "{e}");
}

#[test]
fn a_denied_user_holds_no_role_and_reviews_nothing_whatever_their_certificate_says() {
    let groups = |g: &[&str]| g.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let p = cert_policy(
        r#"certificate_groups = ["payments", "sre"]
deny_users = ["carol", "bob", "alice"]"#,
    );
    match ask_as(&p, "carol", &groups(&["payments"])) {
        Decision::Refused(r) => assert_eq!(r[0].1, Refusal::UserDenied),
        other => panic!("{other:?}"),
    }
    // Listed in [groups] and denied: deny wins.
    assert!(matches!(ask_as(&p, "alice", &[]), Decision::Refused(_)));
    assert!(!p.may_review(&groups(&["sre"]), "dave", "bob", &[]));
    assert!(!p.may_review(&groups(&["sre"]), "dave", "carol", &groups(&["sre"])));
    assert_eq!(p.members_except(&groups(&["sre"]), "dave"), ["erin"]);
}

#[test]
fn an_idp_group_named_in_groups_makes_its_members_members_and_no_certificate_can_claim_it() {
    let groups = |g: &[&str]| g.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let p = Policy::parse(
        r#"
[groups]
payments = ["alice", "idp:Payments On-Call"]
sre = ["bob", "idp:/team/sre"]

[[roles]]
name = "payments-prod"
groups = ["payments"]
hosts = ["web-1"]
paths = ["/var/log/app/*.log"]
max_ttl = "1h"
approval = "approvers"
approvers = 1
approver_groups = ["sre"]
"#,
    )
    .unwrap_or_else(|(line, e)| panic!("line {line}: {e}"));
    assert!(p.uses_idp_groups());
    // The IdP group (as the controller adds it from a verified sign-in) gives the role.
    match ask_as(&p, "carol", &groups(&["idp:Payments On-Call"])) {
        Decision::Allowed(a) => assert_eq!(a.role, "payments-prod"),
        other => panic!("{other:?}"),
    }
    assert!(p.may_review(
        &groups(&["sre"]),
        "alice",
        "dave",
        &groups(&["idp:/team/sre"])
    ));
    // Another IdP group, the policy group's own name, or the bare IdP name: nothing.
    for held in [&["idp:dev"][..], &["payments"], &["Payments On-Call"], &[]] {
        assert!(
            matches!(ask_as(&p, "carol", &groups(held)), Decision::Refused(_)),
            "{held:?}"
        );
    }
    // The policy's own members keep working; IdP groups are not people in approver lists.
    assert!(matches!(ask_as(&p, "alice", &[]), Decision::Allowed(_)));
    assert_eq!(p.members_except(&groups(&["sre"]), "alice"), ["bob"]);
    // A policy without idp: entries does not need the groups claim.
    assert!(!policy().uses_idp_groups());
    // Malformed IdP group names are refused at load.
    // (as written in the TOML string: a raw U+202E, an escaped newline)
    for bad in ["idp:", "idp: x", "idp:a\u{202e}b", "idp:a\\nb"] {
        let text = format!("[groups]\ng = [\"{bad}\"]\n");
        let (line, e) = Policy::parse(&text).unwrap_err();
        assert_eq!(line, 2, "{bad:?}");
        assert!(e.contains("is not an IdP group"), "{bad:?}: {e}");
    }
}

#[test]
fn a_step_up_role_needs_a_recent_and_multi_factor_sign_in() {
    let p = Policy::parse(
        r#"
[groups]
sre = ["bob"]

[[roles]]
name = "raw-logs"
users = ["carol"]
hosts = ["web-1"]
paths = ["/var/log/app/*.log"]
max_ttl = "1h"
redaction = ["raw"]
approval = "auto"
step_up = { max_age = "15m", mfa = true }
"#,
    )
    .unwrap_or_else(|(line, e)| panic!("line {line}: {e}"));
    let hosts = vec!["web-1".to_string()];
    let paths = vec!["/var/log/app/api.log".to_string()];
    let ask = |sign_in: SignInStrength| {
        p.evaluate(&Query {
            subject: "carol",
            cert_groups: &[],
            hosts: &hosts,
            paths: &paths,
            units: &[],
            ttl: H1,
            profile: "raw",
            break_glass: false,
            sign_in,
        })
    };
    let minutes = |m: u64| Duration::from_secs(m * 60);
    assert!(matches!(
        ask(SignInStrength::Known {
            age: minutes(1),
            mfa: true
        }),
        Decision::Allowed(_)
    ));
    for weak in [
        SignInStrength::Known {
            age: minutes(16),
            mfa: true,
        },
        SignInStrength::Known {
            age: minutes(1),
            mfa: false,
        },
        SignInStrength::Unknown,
    ] {
        match ask(weak) {
            Decision::Refused(r) => {
                assert_eq!(r[0].1.as_str(), "step_up_required", "{weak:?}");
                assert!(r[0].1.describe().contains("loggate login --fresh"));
            }
            other => panic!("{weak:?}: {other:?}"),
        }
    }
    // Re-evaluated at an approval: judged when the request was made.
    assert!(matches!(
        ask(SignInStrength::NotChecked),
        Decision::Allowed(_)
    ));
    // A rule that asks for nothing, or a max_age out of range, is refused at load.
    let base = "[[roles]]\nname = \"r\"\nusers = [\"carol\"]\nhosts = [\"web-1\"]\npaths = [\"/x\"]\nmax_ttl = \"1h\"\napproval = \"auto\"\n";
    for (rule, why) in [
        ("step_up = {}", "needs max_age"),
        ("step_up = { max_age = \"2d\" }", "out of range"),
        ("step_up = { mfa = true, often = 1 }", "unknown field"),
    ] {
        let (_, e) = Policy::parse(&format!("{base}{rule}\n")).unwrap_err();
        assert!(e.contains(why), "{rule}: {e}");
    }
}

#[test]
fn admin_step_up_is_read_from_settings_and_refused_when_empty_or_out_of_range() {
    let parse = |settings: &str| Policy::parse(&format!("[settings]\n{settings}\n"));
    let p = parse(r#"admin_step_up = { max_age = "15m", mfa = true }"#)
        .unwrap_or_else(|(line, e)| panic!("line {line}: {e}"));
    assert_eq!(
        p.admin_step_up,
        Some(StepUp {
            max_age: Some(Duration::from_secs(15 * 60)),
            mfa: true
        })
    );
    assert_eq!(parse("").map(|p| p.admin_step_up).ok(), Some(None));
    for (bad, why) in [
        ("admin_step_up = {}", "settings.admin_step_up needs max_age"),
        (
            r#"admin_step_up = { max_age = "2d" }"#,
            "settings.admin_step_up.max_age \"2d\" is out of range",
        ),
        (
            r#"admin_step_up = { max_age = "soon" }"#,
            "settings.admin_step_up.max_age",
        ),
        (
            r#"admin_step_up = { mfa = true, amr = "otp" }"#,
            "unknown field",
        ),
    ] {
        match parse(bad) {
            Ok(_) => panic!("{bad} was accepted"),
            Err((_, e)) => assert!(e.contains(why), "{bad}: {e}"),
        }
    }
}

/// Issue 13: journal units are a resource of their own. A role grants the units its `units`
/// patterns cover and no other; a role without `units` grants none (its paths never cover the
/// journal); a role may name units only; a pattern that could change a unit's type, or is not
/// a unit name, is refused at load.
#[test]
fn roles_grant_only_the_journal_units_they_list() {
    let p = Policy::parse(
        r#"
[[roles]]
name = "web-journal"
users = ["alice"]
hosts = ["web-1"]
units = ["nginx.service", "app-*.service"]
max_ttl = "1h"
approval = "auto"

[[roles]]
name = "files-only"
users = ["alice", "bob"]
hosts = ["web-1"]
paths = ["/var/log/**"]
max_ttl = "1h"
approval = "auto"
"#,
    )
    .unwrap();
    let hosts = vec!["web-1".to_string()];
    let ask = |subject: &str, paths: &[String], units: &[String]| {
        p.evaluate(&Query {
            subject,
            cert_groups: &[],
            hosts: &hosts,
            paths,
            units,
            ttl: H1,
            profile: "default",
            break_glass: false,
            sign_in: SignInStrength::NotChecked,
        })
    };
    let units = |list: &[&str]| list.iter().map(|u| u.to_string()).collect::<Vec<_>>();
    for granted in [
        &["nginx.service"][..],
        &["app-web.service", "nginx.service"],
    ] {
        match ask("alice", &[], &units(granted)) {
            Decision::Allowed(a) => assert_eq!(a.role, "web-journal", "{granted:?}"),
            other => panic!("{granted:?}: {other:?}"),
        }
    }
    // Another unit, or a unit of another type: no role covers it.
    for refused in [
        &["sshd.service"][..],
        &["app-web.socket"],
        &["nginx.service", "sshd.service"],
    ] {
        match ask("alice", &[], &units(refused)) {
            Decision::Refused(r) => assert!(
                r.iter().any(|(role, why)| role == "web-journal"
                    && matches!(why, Refusal::UnitNotCovered(_))),
                "{refused:?}: {r:?}"
            ),
            other => panic!("{refused:?}: {other:?}"),
        }
    }
    // bob's role covers every file but no unit.
    match ask("bob", &[], &units(&["nginx.service"])) {
        Decision::Refused(r) => assert_eq!(
            r,
            vec![
                ("web-journal".to_string(), Refusal::NotAMember),
                (
                    "files-only".to_string(),
                    Refusal::UnitNotCovered("nginx.service".into())
                ),
            ]
        ),
        other => panic!("{other:?}"),
    }
    // A role naming units only covers no path.
    match ask("alice", &["/var/log/a.log".to_string()], &[]) {
        Decision::Allowed(a) => assert_eq!(a.role, "files-only"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        Refusal::UnitNotCovered("x".into()).as_str(),
        "unit_not_covered"
    );
    for bad in [
        "*",
        "nginx.*",
        "nginx",
        "[a]pp.service",
        "ngin x.service",
        "a/b.service",
    ] {
        let text = format!(
            "[[roles]]\nname = \"r\"\nusers = [\"a\"]\nhosts = [\"web-1\"]\nunits = [{bad:?}]\nmax_ttl = \"1h\"\napproval = \"auto\"\n"
        );
        let e = Policy::parse(&text).expect_err(bad);
        assert!(e.1.contains("units"), "{bad}: {}", e.1);
    }
    let neither = "[[roles]]\nname = \"r\"\nusers = [\"a\"]\nhosts = [\"web-1\"]\nmax_ttl = \"1h\"\napproval = \"auto\"\n";
    assert!(Policy::parse(neither)
        .expect_err("neither")
        .1
        .contains("name at least one path glob (paths) or journal unit (units)"));
}
