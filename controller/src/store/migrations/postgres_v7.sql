-- Version 7: the labels an agent held before its labels changed, with the time of the change
-- (issue 12; store/agents.rs `FORMER_LABELS_SCHEMA`). The revocation of a grant an agent
-- received under a label it no longer holds is still sent to it while such a grant is live.
-- Idempotent (a database put back to an older version by a test migrates again).
CREATE TABLE IF NOT EXISTS agent_former_labels (
    agent_id TEXT NOT NULL,
    label TEXT NOT NULL,
    since BIGINT NOT NULL,
    PRIMARY KEY (agent_id, label)
);
