-- The audit table without AUTOINCREMENT and with partial indexes.
--
-- Rows are never deleted (the triggers refuse it), so the plain rowid already grows without
-- reuse and the sqlite_sequence bookkeeping on every insert bought nothing. The run and node
-- columns are indexed only where they hold a value: most events have no parent or root run, and an
-- index entry per NULL cost every insert without ever serving a query (`x = ?` implies
-- `x IS NOT NULL`, so the planner still uses these indexes).
CREATE TABLE audit_lean (
    seq           INTEGER PRIMARY KEY,
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
INSERT INTO audit_lean SELECT seq, time, event, outcome, user_login, node_id, client_id, run_id,
    parent_run_id, root_run_id, jti, data FROM audit;
DROP TRIGGER audit_no_update;
DROP TRIGGER audit_no_delete;
DROP TABLE audit;
ALTER TABLE audit_lean RENAME TO audit;
CREATE INDEX audit_time ON audit (time);
CREATE INDEX audit_run ON audit (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX audit_root_run ON audit (root_run_id) WHERE root_run_id IS NOT NULL;
CREATE INDEX audit_parent_run ON audit (parent_run_id) WHERE parent_run_id IS NOT NULL;
CREATE INDEX audit_node ON audit (node_id) WHERE node_id IS NOT NULL;

-- The audit log is append-only: the database itself refuses edits.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
