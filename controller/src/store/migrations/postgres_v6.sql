-- Version 6: the revision log indexed by whom each revision is addressed to (issue 12), so an
-- agent's catch-up reads its own rows and a resync the live grants, not the whole log. One row
-- per revision and target: `host:<agent id>` for each of the grant's hosts, `label:<k=v>` for
-- each of its labels (the addressing rule is exact string matching of a host or of one label,
-- fanout::covers). `grant_ends` is the grant's end on its grant revision and NULL on its
-- revocation's, so (target, grant_ends, revision) finds an agent's unexpired grants without
-- reading the ended ones. Written by the database itself, in the transaction of the revision it
-- indexes (the trigger below, after each insert into `revisions`): every writer of the log is
-- indexed, a replica of an older version still running during a rolling upgrade or SQL by
-- hand included. Back-filled here from the existing log by the same rule.
CREATE TABLE revision_targets (
    target TEXT NOT NULL,
    revision BIGINT NOT NULL,
    grant_ends BIGINT,
    PRIMARY KEY (target, revision)
);
CREATE INDEX revision_targets_live ON revision_targets (target, grant_ends, revision);
INSERT INTO revision_targets (target, revision, grant_ends)
SELECT 'host:' || h.value, r.revision, CASE WHEN r.kind = 'grant' THEN g.not_after END
FROM revisions r JOIN grants g ON g.id = r.grant_id
CROSS JOIN LATERAL jsonb_array_elements_text(g.hosts::jsonb) AS h(value)
ON CONFLICT DO NOTHING;
INSERT INTO revision_targets (target, revision, grant_ends)
SELECT 'label:' || l.value, r.revision, CASE WHEN r.kind = 'grant' THEN g.not_after END
FROM revisions r JOIN grants g ON g.id = r.grant_id
CROSS JOIN LATERAL jsonb_array_elements_text(g.labels::jsonb) AS l(value)
ON CONFLICT DO NOTHING;
CREATE OR REPLACE FUNCTION revision_targets_index() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO revision_targets (target, revision, grant_ends)
    SELECT 'host:' || h.value, NEW.revision, CASE WHEN NEW.kind = 'grant' THEN g.not_after END
    FROM grants g CROSS JOIN LATERAL jsonb_array_elements_text(g.hosts::jsonb) AS h(value)
    WHERE g.id = NEW.grant_id
    ON CONFLICT DO NOTHING;
    INSERT INTO revision_targets (target, revision, grant_ends)
    SELECT 'label:' || l.value, NEW.revision, CASE WHEN NEW.kind = 'grant' THEN g.not_after END
    FROM grants g CROSS JOIN LATERAL jsonb_array_elements_text(g.labels::jsonb) AS l(value)
    WHERE g.id = NEW.grant_id
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
CREATE TRIGGER revision_targets_index AFTER INSERT ON revisions
    FOR EACH ROW EXECUTE FUNCTION revision_targets_index();
