-- Version 7: the labels an agent held before its labels changed, kept while a grant addressed
-- to one of them may still be live (issue 12; store/agents.rs `FORMER_LABELS_SCHEMA`). The
-- revocation of a grant an agent received under a label it no longer holds is still sent to
-- it until that grant has ended. Idempotent (a database put back to an older version by a
-- test migrates again).
CREATE TABLE IF NOT EXISTS agent_former_labels (
    agent_id TEXT NOT NULL,
    label TEXT NOT NULL,
    until BIGINT NOT NULL,
    PRIMARY KEY (agent_id, label)
);
