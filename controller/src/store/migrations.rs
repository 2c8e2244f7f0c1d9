//! Versioned schema migrations, run at every start on both backends.
//!
//! The version is `meta.schema_version`. A database whose version is newer than
//! [`LATEST`] was written by a newer loggate: the controller refuses to start on it (it would
//! misread or damage tables it does not know) with [`SchemaTooNew`].
//!
//! - **SQLite**: version 1 is the schema as it was before versions existed, written as
//!   idempotent `CREATE … IF NOT EXISTS` statements (and `requests::migrate`'s column checks)
//!   that still run at every open, exactly as before; an unversioned database is version 0 and
//!   becomes 1 without change. A change that is not an idempotent `CREATE … IF NOT EXISTS` is a
//!   new numbered step here, on both backends. Version 2 (IdP groups and user locks) only adds
//!   tables: on SQLite they are in the idempotent schema, on PostgreSQL in `postgres_v2.sql`.
//!   Version 3 adds `agents.replica` (the controller replica an agent last connected to): on
//!   SQLite an idempotent column check (`agents::migrate_sqlite`), on PostgreSQL
//!   `postgres_v3.sql`.
//!   Version 4 (a pending request's sign-in, `request_sign_ins`) only adds a table
//!   (`postgres_v4.sql`; on SQLite in the idempotent schema).
//!   Version 5 (journal units, issue 13) adds a `units` column (a JSON list, `'[]'` for every
//!   existing row) to `grants` and `requests`: on SQLite [`sqlite_journal_units`] adds each
//!   where it is missing (idempotent), on PostgreSQL `postgres_v5.sql`.
//!   Version 6 (issue 12) adds `revision_targets`, the revision log indexed by target
//!   (`host:<agent id>`, `label:<k=v>`), filled by a trigger after each insert into
//!   `revisions` (the database indexes every writer's rows, an older replica's too) and
//!   back-filled from the existing log: on SQLite [`sqlite_revision_targets`] (the table and
//!   trigger created if missing at every open, the back-fill run when the stored version is
//!   below 6, idempotent), on PostgreSQL `postgres_v6.sql`.
//!   Version 7 (issue 12) only adds a table, `agent_former_labels` (the labels an agent held
//!   before its labels changed and the time of the change: `store/agents.rs`):
//!   `postgres_v7.sql`; on SQLite in the idempotent schema (`agents::FORMER_LABELS_SCHEMA`).
//! - **PostgreSQL**: each version is a script (`migrations/postgres_vN.sql`) run once, in one
//!   transaction, under an advisory lock: replicas starting together migrate once.

use super::db::{Connection, OptionalExtension};
use anyhow::Context;

/// The schema version this binary reads and writes.
pub const LATEST: u32 = 7;

/// PostgreSQL's scripts, by version (index 0 is version 1).
const POSTGRES: &[&str] = &[
    include_str!("migrations/postgres_v1.sql"),
    include_str!("migrations/postgres_v2.sql"),
    include_str!("migrations/postgres_v3.sql"),
    include_str!("migrations/postgres_v4.sql"),
    include_str!("migrations/postgres_v5.sql"),
    include_str!("migrations/postgres_v6.sql"),
    include_str!("migrations/postgres_v7.sql"),
];

/// The advisory lock the replicas' migrations take ("lgmigr").
const MIGRATIONS_LOCK: i64 = 0x6c67_6d69_6772;

/// The database was written by a newer loggate than this one.
#[derive(Debug, thiserror::Error)]
#[error(
    "the database's schema is version {found}, newer than this loggate knows (up to {known}): \
     run the loggate release that upgraded it (or a newer one), or restore the backup taken \
     before that upgrade"
)]
pub struct SchemaTooNew {
    pub found: u32,
    pub known: u32,
}

/// The stored schema version; 0 when none is (a new database, or SQLite's from before
/// versions). `meta_exists` says whether the `meta` table is there to ask.
fn stored_version(conn: &Connection, meta_exists: bool) -> anyhow::Result<u32> {
    if !meta_exists {
        return Ok(0);
    }
    let value: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    match value {
        None => Ok(0),
        Some(v) => v
            .parse()
            .with_context(|| format!("the database's schema_version {v:?} is not a number")),
    }
}

fn refuse_newer(found: u32) -> anyhow::Result<()> {
    if found > LATEST {
        return Err(SchemaTooNew {
            found,
            known: LATEST,
        }
        .into());
    }
    Ok(())
}

fn set_version(conn: &Connection, version: u32) -> anyhow::Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)
         ON CONFLICT(key) DO UPDATE SET value = ?1",
        super::db::params![version.to_string()],
    )?;
    Ok(())
}

/// SQLite: refuses a newer database before touching it, then runs `baseline` (the idempotent
/// version-1 schema) and records the version.
pub(super) fn sqlite(
    conn: &Connection,
    baseline: impl FnOnce(&Connection) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let meta_exists: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
        [],
        |r| r.get(0),
    )?;
    let found = stored_version(conn, meta_exists)?;
    refuse_newer(found)?;
    baseline(conn)?;
    sqlite_revision_targets(conn, found)?;
    if found < LATEST {
        set_version(conn, LATEST)?;
    }
    Ok(())
}

/// SQLite, version 5: the `units` columns of `grants` and `requests`, added where missing (a
/// database made before them); existing grants and requests name no unit.
pub(super) fn sqlite_journal_units(conn: &Connection) -> anyhow::Result<()> {
    for table in ["grants", "requests"] {
        let has_units: bool = conn.query_row(
            &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = 'units'"),
            [],
            |r| r.get(0),
        )?;
        if !has_units {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN units TEXT NOT NULL DEFAULT '[]'"
            ))?;
        }
    }
    Ok(())
}

/// SQLite's `revision_targets` (version 6; PostgreSQL's is `postgres_v6.sql`, the same table,
/// trigger and back-fill): the table and the trigger that fills it (after each insert into
/// `revisions`, from the grant's hosts and labels, as the back-fill) created where missing, and
/// the back-fill from the revision log run when the database's version (`found`) is below 6.
/// The back-fill only inserts rows that are missing (`INSERT OR IGNORE`), so one interrupted
/// before the version was written runs again whole.
pub(super) fn sqlite_revision_targets(conn: &Connection, found: u32) -> anyhow::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS revision_targets (
             target TEXT NOT NULL,
             revision INTEGER NOT NULL,
             grant_ends INTEGER,
             PRIMARY KEY (target, revision)
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS revision_targets_live
             ON revision_targets (target, grant_ends, revision);
         CREATE TRIGGER IF NOT EXISTS revision_targets_index AFTER INSERT ON revisions
         BEGIN
             INSERT OR IGNORE INTO revision_targets (target, revision, grant_ends)
             SELECT 'host:' || h.value, NEW.revision,
                    CASE WHEN NEW.kind = 'grant' THEN g.not_after END
             FROM grants g, json_each(g.hosts) h WHERE g.id = NEW.grant_id;
             INSERT OR IGNORE INTO revision_targets (target, revision, grant_ends)
             SELECT 'label:' || l.value, NEW.revision,
                    CASE WHEN NEW.kind = 'grant' THEN g.not_after END
             FROM grants g, json_each(g.labels) l WHERE g.id = NEW.grant_id;
         END;",
    )
    .context("cannot create revision_targets")?;
    if found < 6 {
        conn.execute_batch(
            "INSERT OR IGNORE INTO revision_targets (target, revision, grant_ends)
             SELECT 'host:' || h.value, r.revision,
                    CASE WHEN r.kind = 'grant' THEN g.not_after END
             FROM revisions r JOIN grants g ON g.id = r.grant_id, json_each(g.hosts) h;
             INSERT OR IGNORE INTO revision_targets (target, revision, grant_ends)
             SELECT 'label:' || l.value, r.revision,
                    CASE WHEN r.kind = 'grant' THEN g.not_after END
             FROM revisions r JOIN grants g ON g.id = r.grant_id, json_each(g.labels) l;",
        )
        .context("cannot back-fill revision_targets from the revision log")?;
    }
    Ok(())
}

/// PostgreSQL: in one transaction under the migrations' advisory lock, refuses a newer
/// database and runs the scripts it lacks.
pub(super) fn postgres(conn: &mut Connection) -> anyhow::Result<()> {
    let tx = conn.transaction()?;
    tx.execute_batch(&format!("SELECT pg_advisory_xact_lock({MIGRATIONS_LOCK})"))?;
    let meta_exists: bool =
        tx.query_row("SELECT to_regclass('meta') IS NOT NULL", [], |r| r.get(0))?;
    let found = stored_version(&tx, meta_exists)?;
    refuse_newer(found)?;
    for (index, script) in POSTGRES.iter().enumerate() {
        let version = u32::try_from(index + 1)?;
        if version > found {
            tx.execute_batch(script)
                .with_context(|| format!("cannot apply schema version {version}"))?;
        }
    }
    if found < LATEST {
        set_version(&tx, LATEST)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{on_each_test_store, TestStore};

    /// The statements that take version 6's index away (its trigger and table), back to a
    /// version 5 database's shape on `t`'s backend.
    fn drop_revision_targets(t: &TestStore) -> &'static str {
        if t.backend() == "postgres" {
            "DROP TRIGGER revision_targets_index ON revisions;
             DROP FUNCTION revision_targets_index();
             DROP TABLE revision_targets;"
        } else {
            "DROP TRIGGER revision_targets_index;
             DROP TABLE revision_targets;"
        }
    }

    #[test]
    fn a_new_database_is_at_the_latest_version_and_reopens() {
        on_each_test_store(|t| {
            let version = |store: &crate::store::Store| {
                store
                    .conn()
                    .expect("the store's connection")
                    .query_row(
                        "SELECT value FROM meta WHERE key = 'schema_version'",
                        [],
                        |r| r.get::<_, String>(0),
                    )
                    .unwrap()
            };
            assert_eq!(version(&t.store), LATEST.to_string(), "{}", t.backend());
            t.reopen();
            assert_eq!(version(&t.store), LATEST.to_string(), "{}", t.backend());
        });
    }

    /// Version 5 (issue 13): a version-4 database, whose `grants` and `requests` have no
    /// `units` column, gains them on open; its grants name no unit and new ones keep theirs.
    #[test]
    fn a_version_4_database_gains_the_journal_units_columns() {
        on_each_test_store(|t| {
            let old = crate::store::GrantRow {
                id: "g-old".into(),
                subject: "spiffe://loggate.local/user/alice".into(),
                hosts: vec!["web-1".into()],
                labels: vec![],
                paths: vec!["/var/log/app/*.log".into()],
                units: vec![],
                not_before: 1,
                not_after: 3600,
                reason: "INC-1".into(),
                issuer: "spiffe://loggate.local/user/admin".into(),
                profile: "default".into(),
                key_sha256: "0".repeat(64),
                token: "token".into(),
                revision: 0,
                revoked: None,
            };
            t.store
                .insert_grant(|revision| {
                    Ok(crate::store::GrantRow {
                        revision,
                        ..old.clone()
                    })
                })
                .unwrap();
            // Back to version 4's shape.
            t.store
                .conn()
                .expect("the store's connection")
                .execute_batch(&format!(
                    "ALTER TABLE grants DROP COLUMN units;
                     ALTER TABLE requests DROP COLUMN units;
                     {}
                     UPDATE meta SET value = '4' WHERE key = 'schema_version';",
                    drop_revision_targets(t)
                ))
                .unwrap();
            t.reopen();
            let version: String = t
                .store
                .conn()
                .expect("the store's connection")
                .query_row(
                    "SELECT value FROM meta WHERE key = 'schema_version'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(version, LATEST.to_string(), "{}", t.backend());
            let kept = t.store.grant("g-old").unwrap().expect("kept");
            assert!(kept.units.is_empty(), "{}", t.backend());
            assert_eq!(kept.paths, old.paths);
            let units = vec!["nginx.service".to_string()];
            t.store
                .insert_grant(|revision| {
                    Ok(crate::store::GrantRow {
                        id: "g-new".into(),
                        paths: vec![],
                        units: units.clone(),
                        revision,
                        ..old.clone()
                    })
                })
                .unwrap();
            assert_eq!(
                t.store.grant("g-new").unwrap().expect("stored").units,
                units
            );
        });
    }

    /// Version 6 (issue 12): a version-5 database, which has no `revision_targets`, gains it
    /// on open, back-filled from its revision log: the same rows the store writes with each
    /// revision (a grant's under each of its hosts and labels with its end, its revocation's
    /// with none; a host named twice once), so the agents' addressed reads find the old log.
    #[test]
    fn a_version_5_database_gains_the_revision_targets_back_filled() {
        on_each_test_store(|t| {
            let grant = |id: &str, hosts: &[&str], labels: &[&str], revision| {
                crate::store::testing::grant_row(id, hosts, labels, 3600, revision)
            };
            for (id, hosts, labels) in [
                ("g-1", &["web-1", "web-1"][..], &["env=prod"][..]),
                ("g-2", &[][..], &["env=dev", "team=a"][..]),
                ("g-3", &["db-1"][..], &[][..]),
            ] {
                t.store
                    .insert_grant(|revision| Ok(grant(id, hosts, labels, revision)))
                    .unwrap();
            }
            t.store
                .revoke(
                    "g-2",
                    crate::store::Revoked {
                        at: 5,
                        by: "admin".into(),
                        reason: "done".into(),
                    },
                )
                .unwrap()
                .expect("revoked");
            let rows = |store: &crate::store::Store| {
                let conn = store.conn().expect("the store's connection");
                let mut stmt = conn
                    .prepare(
                        "SELECT target, revision, grant_ends FROM revision_targets \
                         ORDER BY revision, target",
                    )
                    .unwrap();
                stmt.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                    ))
                })
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
            };
            let written = rows(&t.store);
            let expected: Vec<(String, i64, Option<i64>)> = vec![
                ("host:web-1".into(), 1, Some(3600)),
                ("label:env=prod".into(), 1, Some(3600)),
                ("label:env=dev".into(), 2, Some(3600)),
                ("label:team=a".into(), 2, Some(3600)),
                ("host:db-1".into(), 3, Some(3600)),
                ("label:env=dev".into(), 4, None),
                ("label:team=a".into(), 4, None),
            ];
            assert_eq!(
                written,
                expected,
                "{}: as the store writes them",
                t.backend()
            );
            // Back to version 5's shape.
            t.store
                .conn()
                .expect("the store's connection")
                .execute_batch(&format!(
                    "{}
                     UPDATE meta SET value = '5' WHERE key = 'schema_version';",
                    drop_revision_targets(t)
                ))
                .unwrap();
            t.reopen();
            assert_eq!(rows(&t.store), expected, "{}: back-filled", t.backend());
            let mut seen = Vec::new();
            t.store
                .visit_addressed_changes_after(
                    0,
                    4,
                    &crate::store::agent_targets("web-9", &["team=a".to_string()]),
                    64,
                    |revision, _| {
                        seen.push(revision);
                        true
                    },
                )
                .unwrap();
            assert_eq!(seen, vec![2, 4], "{}", t.backend());
        });
    }

    /// Version 6's index is the database's own (a trigger on `revisions`): a grant and its
    /// revocation written as a version 5 controller writes them (plain SQL into `grants` and
    /// `revisions`, no index: a replica not yet upgraded during a rolling upgrade on
    /// PostgreSQL) are found by an agent's addressed catch-up, by host and by label, with the
    /// grant's end on the grant's row and none on the revocation's.
    #[test]
    fn revisions_written_as_version_5_wrote_them_are_indexed_for_the_catch_up() {
        on_each_test_store(|t| {
            let conn = t.store.conn().expect("the store's connection");
            conn.execute(
                &format!(
                    "INSERT INTO grants ({}) VALUES ('g-v5', 'spiffe://loggate.local/user/alice', \
                     '[\"web-1\"]', '[\"env=prod\"]', '[\"/var/log/app/*.log\"]', 1, 3600, \
                     'INC-1', 'spiffe://loggate.local/user/admin', 'default', ?1, 'token', 1, \
                     NULL, NULL, NULL, '[]')",
                    crate::store::GRANT_COLUMNS
                ),
                super::super::db::params!["0".repeat(64)],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO revisions (revision, kind, grant_id) VALUES (1, 'grant', 'g-v5')",
                super::super::db::params![],
            )
            .unwrap();
            conn.execute(
                "UPDATE grants SET revoked_at = 5, revoked_by = 'admin', revoke_reason = 'done' \
                 WHERE id = 'g-v5'",
                super::super::db::params![],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO revisions (revision, kind, grant_id) VALUES (2, 'revoke', 'g-v5')",
                super::super::db::params![],
            )
            .unwrap();
            drop(conn);
            for (agent, labels) in [("web-1", vec![]), ("web-9", vec!["env=prod".to_string()])] {
                let mut seen = Vec::new();
                t.store
                    .visit_addressed_changes_after(
                        0,
                        2,
                        &crate::store::agent_targets(agent, &labels),
                        64,
                        |revision, change| {
                            seen.push((
                                revision,
                                matches!(change, crate::store::Change::Revoked { .. }),
                            ));
                            true
                        },
                    )
                    .unwrap();
                // A grant revoked since is sent as its revocation at both revisions.
                assert_eq!(seen, vec![(1, true), (2, true)], "{}: {agent}", t.backend());
                let mut after_grant = Vec::new();
                t.store
                    .visit_addressed_changes_after(
                        1,
                        2,
                        &crate::store::agent_targets(agent, &labels),
                        64,
                        |revision, _| {
                            after_grant.push(revision);
                            true
                        },
                    )
                    .unwrap();
                assert_eq!(
                    after_grant,
                    vec![2],
                    "{}: {agent}'s catch-up from 1",
                    t.backend()
                );
            }
            let ends: Vec<(String, i64, Option<i64>)> = {
                let conn = t.store.conn().expect("the store's connection");
                let mut stmt = conn
                    .prepare(
                        "SELECT target, revision, grant_ends FROM revision_targets \
                         ORDER BY revision, target",
                    )
                    .unwrap();
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap()
            };
            assert_eq!(
                ends,
                vec![
                    ("host:web-1".to_string(), 1, Some(3600)),
                    ("label:env=prod".to_string(), 1, Some(3600)),
                    ("host:web-1".to_string(), 2, None),
                    ("label:env=prod".to_string(), 2, None),
                ],
                "{}",
                t.backend()
            );
        });
    }

    #[test]
    fn a_database_newer_than_the_binary_is_refused_and_left_alone() {
        on_each_test_store(|t| {
            t.store
                .conn()
                .expect("the store's connection")
                .execute(
                    "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
                    super::super::db::params![(LATEST + 1).to_string()],
                )
                .unwrap();
            let reopened = match &t.server {
                Some(server) => crate::store::Store::open_postgres(&server.url()),
                None => crate::store::Store::open(&t.dir.path().join("db.sqlite")),
            };
            let err = reopened.err().expect("a newer schema was opened");
            let too_new = err
                .chain()
                .find_map(|e| e.downcast_ref::<SchemaTooNew>())
                .unwrap_or_else(|| panic!("{}: {err:#}", t.backend()));
            assert_eq!((too_new.found, too_new.known), (LATEST + 1, LATEST));
            assert!(format!("{err:#}").contains("newer than this loggate knows"));
            let kept: String = t
                .store
                .conn()
                .expect("the store's connection")
                .query_row(
                    "SELECT value FROM meta WHERE key = 'schema_version'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(kept, (LATEST + 1).to_string(), "{}", t.backend());
        });
    }
}
