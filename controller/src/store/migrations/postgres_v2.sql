-- Version 2: IdP groups and user locks (issue 22; store/signins.rs).
CREATE TABLE oidc_users (
    name TEXT PRIMARY KEY,
    key_sha256 TEXT NOT NULL,
    groups TEXT NOT NULL,
    last_sign_in BIGINT NOT NULL,
    cert_not_after BIGINT NOT NULL,
    auth_time BIGINT NOT NULL,
    amr TEXT NOT NULL
);
CREATE TABLE user_locks (
    name TEXT PRIMARY KEY,
    locked BIGINT NOT NULL,
    cutoff BIGINT NOT NULL,
    changed_at BIGINT NOT NULL,
    changed_by TEXT NOT NULL,
    reason TEXT NOT NULL
);
