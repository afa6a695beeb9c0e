-- A replayed authorization code is marked when the replay is detected, in the transaction
-- that detects it. The first redemption creates its refresh family (or, without one, confirms
-- its tokens) only in a transaction that finds no mark, so a replay that arrives while the
-- first redemption is still in flight can never leave a live family behind.
ALTER TABLE codes ADD COLUMN replayed_at INTEGER;
