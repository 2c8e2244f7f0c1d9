-- loggate controller schema, PostgreSQL, version 1: the same tables as the SQLite schema of
-- the same version (controller/src/store.rs and store/*.rs), in PostgreSQL's types. Never edit
-- a released migration: add the next version.
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE grants (
    id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    hosts TEXT NOT NULL,
    labels TEXT NOT NULL,
    paths TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    reason TEXT NOT NULL,
    issuer TEXT NOT NULL,
    profile TEXT NOT NULL,
    key_sha256 TEXT NOT NULL,
    token TEXT NOT NULL,
    revision BIGINT NOT NULL,
    revoked_at BIGINT,
    revoked_by TEXT,
    revoke_reason TEXT
);
CREATE INDEX grants_by_start ON grants (not_before);
-- Revisions are handed out as MAX + 1 under an advisory lock (store/db.rs, lock_revisions), so
-- they commit in order whichever replica writes them.
CREATE TABLE revisions (
    revision BIGINT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('grant', 'revoke')),
    grant_id TEXT NOT NULL REFERENCES grants(id)
);
CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    addr TEXT NOT NULL,
    last_seen BIGINT NOT NULL
);
CREATE TABLE user_keys (
    subject TEXT PRIMARY KEY,
    key_sha256 TEXT NOT NULL,
    updated BIGINT NOT NULL
);
CREATE TABLE checkpoint_keys (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id TEXT NOT NULL,
    key TEXT NOT NULL,
    enrolled_at BIGINT NOT NULL,
    how TEXT NOT NULL
);
CREATE TABLE checkpoints (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    origin TEXT NOT NULL,
    sealed_seq BIGINT NOT NULL,
    head TEXT NOT NULL,
    line TEXT NOT NULL,
    line_sha256 TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'sequence_went_backwards', 'head_changed')),
    UNIQUE (origin, line_sha256)
);
CREATE INDEX checkpoints_by_seq ON checkpoints (origin, sealed_seq);
-- Append-only, as SQLite's triggers: every UPDATE and DELETE (and TRUNCATE) is refused.
CREATE FUNCTION loggate_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% are append-only', TG_ARGV[0];
END;
$$;
CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION loggate_append_only('checkpoints');
CREATE TRIGGER checkpoints_append_only_truncate BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION loggate_append_only('checkpoints');
CREATE TRIGGER checkpoint_keys_append_only BEFORE UPDATE OR DELETE ON checkpoint_keys
    FOR EACH ROW EXECUTE FUNCTION loggate_append_only('checkpoint keys');
CREATE TRIGGER checkpoint_keys_append_only_truncate BEFORE TRUNCATE ON checkpoint_keys
    FOR EACH STATEMENT EXECUTE FUNCTION loggate_append_only('checkpoint keys');

-- Requests (store/requests.rs). `rowid` stands for SQLite's implicit row id, which the store's
-- queries order by (the order rows were written).
CREATE TABLE requests (
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    hosts TEXT NOT NULL,
    paths TEXT NOT NULL,
    ttl_seconds BIGINT NOT NULL,
    profile TEXT NOT NULL,
    reason TEXT NOT NULL,
    role TEXT NOT NULL,
    approval TEXT NOT NULL,
    approvals_needed BIGINT NOT NULL,
    approver_groups TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'cancelled', 'expired')),
    created BIGINT NOT NULL,
    expires BIGINT NOT NULL,
    decided_at BIGINT,
    grant_id TEXT,
    requester_groups TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX requests_by_state ON requests (state, expires);
CREATE INDEX requests_by_requester ON requests (requester, state);
CREATE INDEX requests_by_grant ON requests (grant_id);
CREATE INDEX requests_by_state_created ON requests (state, created);
CREATE INDEX requests_by_requester_created ON requests (requester, created);
CREATE TABLE pending_request_groups (
    request_id TEXT NOT NULL REFERENCES requests(id),
    grp TEXT NOT NULL,
    PRIMARY KEY (grp, request_id)
);
CREATE TABLE request_reviews (
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    request_id TEXT NOT NULL REFERENCES requests(id),
    reviewer TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
    comment TEXT NOT NULL,
    at BIGINT NOT NULL,
    reviewer_groups TEXT NOT NULL DEFAULT '[]',
    UNIQUE (request_id, reviewer)
);
CREATE TABLE break_glass (
    grant_id TEXT PRIMARY KEY REFERENCES grants(id),
    request_id TEXT,
    subject TEXT NOT NULL,
    issuer TEXT NOT NULL,
    reason TEXT NOT NULL,
    at BIGINT NOT NULL,
    reviewed_by TEXT,
    reviewed_at BIGINT,
    review_comment TEXT
);

-- Enrolment (store/agents.rs).
CREATE TABLE join_tokens (
    id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL,
    uses_left BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    reenrol BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE TABLE enrolled_agents (
    id TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    token_id TEXT NOT NULL,
    serial TEXT NOT NULL,
    not_after BIGINT NOT NULL,
    enrolled_at BIGINT NOT NULL
);
CREATE TABLE removed_agents (
    id TEXT PRIMARY KEY,
    removed_at BIGINT NOT NULL,
    removed_by TEXT NOT NULL
);

-- Sign-ins (store/signins.rs).
CREATE TABLE oidc_unbound_tokens (
    signed_sha256 TEXT PRIMARY KEY,
    forget_at BIGINT NOT NULL
);
CREATE TABLE oidc_subjects (
    name TEXT PRIMARY KEY,
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    bound_at BIGINT NOT NULL
);
