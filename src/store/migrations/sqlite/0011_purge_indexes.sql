-- The minute's purge deletes by these columns while every write waits for it: without an index
-- each of its deletes read its whole table, and the wait grew with the table.
CREATE INDEX refresh_families_revoked_at ON refresh_families (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE INDEX revocations_revoked_at ON revocations (revoked_at);
CREATE INDEX federated_runs_exp ON federated_runs (exp);
CREATE INDEX federation_blocks_until ON federation_blocks (until);
