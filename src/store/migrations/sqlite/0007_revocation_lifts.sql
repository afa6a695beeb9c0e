-- A lift is numbered too: `lift_seq` comes from the same sequence as `seq` (the row's
-- AUTOINCREMENT counter, advanced by the lift), so a reader resuming after N sees every lift
-- made after it read N, as it sees every revocation (`revocations_since`).
ALTER TABLE revocations ADD COLUMN lift_seq INTEGER;
CREATE INDEX revocations_lift_seq ON revocations (lift_seq) WHERE lift_seq IS NOT NULL;
