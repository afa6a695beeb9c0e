-- tailpass state on PostgreSQL, version 1: the same records as the SQLite schema at its
-- version 6. Times are seconds since the Unix epoch. Secrets never appear: codes, refresh
-- tokens and client secrets are stored as SHA-256 hex.
--
-- The rule of every migration in this directory (rolling upgrades): a migration only adds —
-- tables, nullable columns or columns with defaults, indexes, triggers. It never drops,
-- renames or retypes anything an older release reads or writes, in the same release that
-- stops using it: an older replica keeps running against the newer schema until it is
-- replaced, and only a later release, once no replica of the old one can be left, may
-- remove what it no longer uses.

CREATE TABLE clients (
    client_id   TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL,
    data        TEXT NOT NULL            -- the Client record, JSON
);

CREATE TABLE codes (
    code_hash   TEXT PRIMARY KEY,
    client_id   TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    redeemed_at BIGINT,
    replayed_at BIGINT,
    data        TEXT NOT NULL            -- the AuthCode record, JSON
);
CREATE INDEX codes_expires_at ON codes (expires_at);

CREATE TABLE refresh_families (
    family_id   TEXT PRIMARY KEY,
    client_id   TEXT NOT NULL,
    user_login  TEXT,
    node_id     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT,
    data        TEXT NOT NULL            -- the RefreshFamily record, JSON
);
CREATE INDEX refresh_families_user ON refresh_families (user_login);
CREATE INDEX refresh_families_node ON refresh_families (node_id);
CREATE INDEX refresh_families_expires_at ON refresh_families (expires_at);

CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    family_id   TEXT NOT NULL REFERENCES refresh_families (family_id) ON DELETE CASCADE,
    issued_at   BIGINT NOT NULL,
    spent_at    BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

-- Counters whose row is locked by the transaction that takes a number, until it commits:
-- numbers are handed out in commit order, without gaps, so a reader that has seen N has seen
-- everything below N (the revocation feed resumes and the audit log pages on that).
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('revocation', 0), ('audit', 0);

CREATE TABLE revocations (
    seq         BIGINT PRIMARY KEY,      -- from counters.revocation
    kind        TEXT NOT NULL,
    value       TEXT NOT NULL,
    revoked_at  BIGINT NOT NULL,
    until       BIGINT,
    lifted_at   BIGINT
);
CREATE INDEX revocations_kind_value ON revocations (kind, value);

CREATE TABLE consents (
    client_id   TEXT NOT NULL,
    user_key    TEXT NOT NULL,
    granted_at  BIGINT NOT NULL,
    data        TEXT,                    -- the Consent record, JSON; NULL approves nothing
    PRIMARY KEY (client_id, user_key)
);

-- The audit log: one row per event, `seq` from counters.audit, at least the event's time in
-- microseconds and above every earlier seq (so a time range is a range of the key).
CREATE TABLE audit (
    seq           BIGINT PRIMARY KEY,
    time          BIGINT NOT NULL,
    event         TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    user_login    TEXT,
    node_id       TEXT,
    client_id     TEXT,
    run_id        TEXT,
    parent_run_id TEXT,
    root_run_id   TEXT,
    data          TEXT NOT NULL          -- the AuditEvent record, JSON
);
CREATE INDEX audit_run ON audit (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX audit_parent_run ON audit (parent_run_id) WHERE parent_run_id IS NOT NULL;
CREATE INDEX audit_root_run ON audit (root_run_id) WHERE root_run_id IS NOT NULL;
CREATE INDEX audit_node ON audit (node_id, seq) WHERE node_id IS NOT NULL;
CREATE INDEX audit_user ON audit (user_login, seq) WHERE user_login IS NOT NULL;

-- Audit retention: events below the horizon may be deleted; at or above it the log is
-- append-only. The horizon only moves forward.
CREATE TABLE audit_horizon (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
INSERT INTO audit_horizon (id, seq) VALUES (1, 0);

CREATE FUNCTION tailpass_audit_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.seq < (SELECT seq FROM audit_horizon WHERE id = 1) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION tailpass_audit_guard();

CREATE FUNCTION tailpass_audit_horizon_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.seq >= OLD.seq THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit horizon only moves forward';
END;
$$;
CREATE TRIGGER audit_horizon_forward BEFORE UPDATE OR DELETE ON audit_horizon
    FOR EACH ROW EXECUTE FUNCTION tailpass_audit_horizon_guard();

CREATE FUNCTION tailpass_audit_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$;
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION tailpass_audit_no_truncate();
CREATE TRIGGER audit_horizon_no_truncate BEFORE TRUNCATE ON audit_horizon
    FOR EACH STATEMENT EXECUTE FUNCTION tailpass_audit_no_truncate();
