-- The audit log as a dictionary of contexts and one small row per event.
--
-- An event's context (event, outcome, reason, user, node, tags, client, audience, scopes,
-- detail) repeats for every token a node mints under the same rule; only the time, the run,
-- its label and lineage, and the jti differ. Each distinct context is stored once; each event
-- is a row of those few values and a reference. That row is a fifth of the old one, and the
-- node and user queries go through the context (`audit_context_node`, `audit_by_context`).
--
-- Runs are found through zones, not a per-event index. A run id starts with its creation
-- millisecond (10 characters), and the events that name a run as `run_id` are written in the
-- few write jobs around that moment (and later ones that refer to it, such as its revocation).
-- Each job records, for every run-id prefix among its events, the range of seq it wrote them
-- in: one `audit_run_zone` row per prefix and job, a handful per job instead of one index
-- entry per event. Finding a run reads its prefix's zones and the events inside them (at most
-- one job's worth each, see audit::MAX_BATCH), then keeps those with the exact id. Exchanged
-- children name older runs as parent and root; those stay indexed, as they are few.
--
-- `seq` is also the time index: it is at least the event's time in microseconds and still
-- strictly increasing (each insert takes `max(time * 1e6, last seq + 1)`), so
-- `time >= T` implies `seq >= T * 1e6` and `--since` is a range on the primary key. Existing
-- rows are renumbered the same way, in their original order.
CREATE TABLE audit_context (
    id          INTEGER PRIMARY KEY,
    event       TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    user_login  TEXT,
    node_id     TEXT,
    client_id   TEXT,
    data        TEXT NOT NULL UNIQUE   -- the shared part of the AuditEvent, JSON
);
CREATE INDEX audit_context_node ON audit_context (node_id) WHERE node_id IS NOT NULL;
CREATE INDEX audit_context_user ON audit_context (user_login) WHERE user_login IS NOT NULL;

CREATE TABLE audit_event (
    seq           INTEGER PRIMARY KEY,   -- >= time * 1e6, increasing
    time          INTEGER NOT NULL,
    context       INTEGER NOT NULL,      -- an audit_context id (contexts are never deleted)
    run_id        TEXT,
    run_label     TEXT,
    parent_run_id TEXT,
    root_run_id   TEXT,
    jti           TEXT
);

CREATE TABLE audit_run_zone (
    prefix    TEXT NOT NULL,              -- the first 10 characters of run ids
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    PRIMARY KEY (prefix, first_seq)
) WITHOUT ROWID;

INSERT OR IGNORE INTO audit_context (event, outcome, user_login, node_id, client_id, data)
SELECT event, outcome, user_login, node_id, client_id,
       json_remove(data, '$.time', '$.run_id', '$.run_label', '$.parent_run_id',
                   '$.root_run_id', '$.jti')
FROM audit ORDER BY seq;

-- seq_i = max(t_i * 1e6, seq_{i-1} + 1) in closed form: i + max over j <= i of (t_j * 1e6 - j).
INSERT INTO audit_event (seq, time, context, run_id, run_label, parent_run_id, root_run_id, jti)
SELECT n + max(t * 1000000 - n) OVER (ORDER BY n ROWS UNBOUNDED PRECEDING),
       time, context, run_id, run_label, parent_run_id, root_run_id, jti
FROM (
    SELECT row_number() OVER (ORDER BY a.seq) AS n,
           min(max(a.time, 0), 253402300799) AS t,
           a.time, c.id AS context, a.run_id, json_extract(a.data, '$.run_label') AS run_label,
           a.parent_run_id, a.root_run_id, a.jti
    FROM audit a
    JOIN audit_context c ON c.data = json_remove(a.data, '$.time', '$.run_id', '$.run_label',
                                                 '$.parent_run_id', '$.root_run_id', '$.jti')
)
ORDER BY n;

-- Each migrated event with a run is its own zone.
INSERT INTO audit_run_zone (prefix, first_seq, last_seq)
SELECT substr(run_id, 1, 10), seq, seq FROM audit_event WHERE run_id IS NOT NULL;

DROP TRIGGER audit_no_update;
DROP TRIGGER audit_no_delete;
DROP TABLE audit;
ALTER TABLE audit_event RENAME TO audit;

CREATE INDEX audit_by_context ON audit (context);
CREATE INDEX audit_root_run ON audit (root_run_id) WHERE root_run_id IS NOT NULL;
CREATE INDEX audit_parent_run ON audit (parent_run_id) WHERE parent_run_id IS NOT NULL;

-- The audit log is append-only: the database itself refuses edits, of events and contexts.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_run_zone_no_update BEFORE UPDATE ON audit_run_zone
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_run_zone_no_delete BEFORE DELETE ON audit_run_zone
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_context_no_update BEFORE UPDATE ON audit_context
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_context_no_delete BEFORE DELETE ON audit_context
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
