-- External tokens traded for run tokens once only (`[[federation]]` tables with `single_use`):
-- a token's key (SHA-256 of its issuer and `jti`, or of the whole token) is claimed by the
-- first trade, and kept until the token has expired, when it could not be traded anyway.
CREATE TABLE federation_replay (
    key        TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX federation_replay_expires_at ON federation_replay (expires_at);
