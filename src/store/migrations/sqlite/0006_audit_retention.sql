-- Audit retention: old events go in whole ranges, never one by one.
--
-- `audit_horizon` holds one seq. Events (and run zones) below it may be deleted; everything at
-- or above it stays append-only. The horizon only moves forward, so history can be shortened
-- from its start and never edited in the middle. A context goes once no event refers to it.
CREATE TABLE audit_horizon (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);
INSERT INTO audit_horizon (id, seq) VALUES (1, 0);

CREATE TRIGGER audit_horizon_forward BEFORE UPDATE ON audit_horizon
WHEN NEW.seq < OLD.seq
BEGIN SELECT RAISE(ABORT, 'the audit horizon only moves forward'); END;
CREATE TRIGGER audit_horizon_no_delete BEFORE DELETE ON audit_horizon
BEGIN SELECT RAISE(ABORT, 'the audit horizon cannot be removed'); END;

DROP TRIGGER audit_no_delete;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
WHEN OLD.seq >= (SELECT seq FROM audit_horizon WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

DROP TRIGGER audit_run_zone_no_delete;
CREATE TRIGGER audit_run_zone_no_delete BEFORE DELETE ON audit_run_zone
WHEN OLD.last_seq >= (SELECT seq FROM audit_horizon WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

DROP TRIGGER audit_context_no_delete;
CREATE TRIGGER audit_context_no_delete BEFORE DELETE ON audit_context
WHEN EXISTS (SELECT 1 FROM audit WHERE context = OLD.id)
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
