-- What replicas share beyond version 1 (only additions, as every migration here).

-- A lift is numbered from the same counter as revocations (counters.revocation, held until
-- commit), so a replica reading back `revocations_since(N)` learns of every lift committed
-- after N: new tokens for a lifted node or user are allowed on every replica, not only the
-- one that lifted. NULL: not lifted, or lifted by a release that did not number lifts.
ALTER TABLE revocations ADD COLUMN lift_seq BIGINT;
CREATE INDEX revocations_lift_seq ON revocations (lift_seq) WHERE lift_seq IS NOT NULL;

-- DPoP proofs used at any replica (RFC 9449 §11.1): a proof's (jkt, jti) is claimed once, by
-- the first request accepted with it; kept until the proof is too old to be accepted anyway.
CREATE TABLE dpop_proofs (
    jkt        TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (jkt, jti)
);
CREATE INDEX dpop_proofs_expires_at ON dpop_proofs (expires_at);

-- Requests admitted per rate-limit key and window (`bucket`: unix time / 60, a minute), summed over
-- replicas: each adds what it admitted since its last flush and reads the total back.
CREATE TABLE rate_counts (
    key     TEXT NOT NULL,
    bucket  BIGINT NOT NULL,
    count   BIGINT NOT NULL,
    PRIMARY KEY (key, bucket)
);
CREATE INDEX rate_counts_window ON rate_counts (bucket);
