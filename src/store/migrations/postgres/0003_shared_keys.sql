-- Shared keys: the signing keys' manifest and their sealed blobs, and the sealed HMAC secrets
-- every replica uses. Blobs are sealed under the key-encryption key before they reach the
-- database; nothing here is in clear.
--
-- `key_manifest` is one row, written compare-and-swap on `version` (and announced with
-- NOTIFY tailpass_keys); `generation` names the set of blobs (`key_blobs`, `shared_secrets`)
-- it reads, so a rewrap swaps the whole set at once.
CREATE TABLE key_manifest (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    version    BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    data       TEXT NOT NULL
);
CREATE TABLE key_blobs (
    kid        TEXT NOT NULL,
    generation BIGINT NOT NULL,
    blob       BYTEA NOT NULL,
    PRIMARY KEY (kid, generation)
);
CREATE TABLE shared_secrets (
    name       TEXT NOT NULL,
    generation BIGINT NOT NULL,
    blob       BYTEA NOT NULL,
    PRIMARY KEY (name, generation)
);
