-- The host's enrollment key (docs/spec.md §9): a secret the host keeps before it enrolls, so
-- that an enrollment whose answer was lost is answered again with the same host instead of
-- enrolling it twice. Stored as its SHA-256 in hex; cleared when the host is decommissioned.

ALTER TABLE hosts ADD COLUMN enroll_key_hash TEXT;
CREATE UNIQUE INDEX hosts_enroll_key_hash ON hosts (enroll_key_hash);
