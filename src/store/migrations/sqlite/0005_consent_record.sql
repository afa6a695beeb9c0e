-- A consent records what the person approved: the Consent record (scopes, resources,
-- redirect URIs, and the client's metadata version), JSON. Consents given before this
-- version recorded nothing of the kind; their NULL approves nothing, so those people are
-- asked again on their next login.
ALTER TABLE consents ADD COLUMN data TEXT;
