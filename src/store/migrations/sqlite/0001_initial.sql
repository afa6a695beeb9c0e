-- tailpass state, version 1. Times are seconds since the Unix epoch. Secrets never appear:
-- codes, refresh tokens and client secrets are stored as SHA-256 hex.

CREATE TABLE clients (
    client_id   TEXT PRIMARY KEY NOT NULL,
    created_at  INTEGER NOT NULL,
    data        TEXT NOT NULL            -- the Client record, JSON
);

CREATE TABLE codes (
    code_hash   TEXT PRIMARY KEY NOT NULL,
    client_id   TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    redeemed_at INTEGER,
    data        TEXT NOT NULL            -- the AuthCode record, JSON
);
CREATE INDEX codes_expires_at ON codes (expires_at);

CREATE TABLE refresh_families (
    family_id   TEXT PRIMARY KEY NOT NULL,
    client_id   TEXT NOT NULL,
    user_login  TEXT,
    node_id     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER,
    data        TEXT NOT NULL            -- the RefreshFamily record, JSON
);
CREATE INDEX refresh_families_user ON refresh_families (user_login);
CREATE INDEX refresh_families_node ON refresh_families (node_id);
CREATE INDEX refresh_families_expires_at ON refresh_families (expires_at);

CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY NOT NULL,
    family_id   TEXT NOT NULL REFERENCES refresh_families (family_id) ON DELETE CASCADE,
    issued_at   INTEGER NOT NULL,
    spent_at    INTEGER
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

CREATE TABLE revocations (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    value       TEXT NOT NULL,
    revoked_at  INTEGER NOT NULL,
    until       INTEGER,
    lifted_at   INTEGER
);
CREATE INDEX revocations_kind_value ON revocations (kind, value);

CREATE TABLE consents (
    client_id   TEXT NOT NULL,
    user_key    TEXT NOT NULL,
    granted_at  INTEGER NOT NULL,
    PRIMARY KEY (client_id, user_key)
);

CREATE TABLE audit (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    time          INTEGER NOT NULL,
    event         TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    user_login    TEXT,
    node_id       TEXT,
    client_id     TEXT,
    run_id        TEXT,
    parent_run_id TEXT,
    root_run_id   TEXT,
    jti           TEXT,
    data          TEXT NOT NULL          -- the AuditEvent record, JSON
);
CREATE INDEX audit_time ON audit (time);
CREATE INDEX audit_run ON audit (run_id);
CREATE INDEX audit_root_run ON audit (root_run_id);
CREATE INDEX audit_parent_run ON audit (parent_run_id);
CREATE INDEX audit_node ON audit (node_id);

-- The audit log is append-only: the database itself refuses edits.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
