-- Runs minted from external tokens (`tailpass revoke --fed`, `tailpass audit --fed`): the run
-- id, the table matched and the run token's `fed` claims as JSON, kept until the run token
-- expires.
CREATE TABLE federated_runs (
    run_id     TEXT PRIMARY KEY,
    table_name TEXT NOT NULL,
    claims     TEXT NOT NULL,
    iat        INTEGER NOT NULL,
    exp        INTEGER NOT NULL
);
CREATE INDEX federated_runs_table ON federated_runs (table_name, exp);
-- New trades refused: external tokens of a table whose claims match `claims` (JSON, name →
-- value as text) get no run token until `until`.
CREATE TABLE federation_blocks (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    table_name TEXT NOT NULL,
    claims     TEXT NOT NULL,
    since      INTEGER NOT NULL,
    until      INTEGER NOT NULL
);
CREATE INDEX federation_blocks_table ON federation_blocks (table_name, until);
