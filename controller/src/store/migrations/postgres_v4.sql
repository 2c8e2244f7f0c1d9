-- Version 4: how a pending request's requester had signed in (issue 22, review finding 6;
-- store/signins.rs `request_sign_ins`): its approval judges the role's step-up with it.
CREATE TABLE request_sign_ins (
    request_id TEXT PRIMARY KEY,
    age_seconds BIGINT NOT NULL,
    mfa BIGINT NOT NULL,
    key_sha256 TEXT NOT NULL
);
