-- The fleet store (docs/spec.md §9), PostgreSQL dialect. The SQLite file beside this one has
-- the same tables, columns and indexes; a test compares them. Times are Unix milliseconds of
-- the server's clock, JSON is text, tokens are stored as their SHA-256 in hex.

CREATE TABLE operator_tokens (
    token_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE UNIQUE INDEX operator_tokens_active_name ON operator_tokens (name) WHERE revoked_at IS NULL;

CREATE TABLE enrollment_tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    name TEXT,
    product TEXT NOT NULL,
    labels TEXT NOT NULL,
    uses BIGINT NOT NULL,
    uses_left BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE hosts (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    enrollment_token TEXT REFERENCES enrollment_tokens (id),
    product TEXT NOT NULL,
    hostname TEXT,
    enrolled_at BIGINT NOT NULL,
    decommissioned_at BIGINT,
    channel TEXT,
    agent_version TEXT,
    booted_slot TEXT,
    slots TEXT NOT NULL DEFAULT '[]',
    pending TEXT,
    report TEXT,
    last_checkin BIGINT,
    next_due BIGINT,
    state TEXT NOT NULL DEFAULT 'idle',
    state_seq BIGINT,
    last_message TEXT,
    message_seq BIGINT,
    last_seq BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX hosts_product ON hosts (product, id);
CREATE INDEX hosts_channel ON hosts (channel, id);
CREATE INDEX hosts_state ON hosts (state, id);
CREATE INDEX hosts_next_due ON hosts (next_due);
CREATE INDEX hosts_counts ON hosts (decommissioned_at, product, state);

CREATE TABLE host_versions (
    host_id TEXT NOT NULL REFERENCES hosts (id),
    component TEXT NOT NULL,
    version TEXT NOT NULL,
    PRIMARY KEY (host_id, component)
);
CREATE INDEX host_versions_version ON host_versions (version, host_id);
CREATE INDEX host_versions_counts ON host_versions (component, version, host_id);

CREATE TABLE host_labels (
    host_id TEXT NOT NULL REFERENCES hosts (id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (host_id, key)
);
CREATE INDEX host_labels_selector ON host_labels (key, value, host_id);

CREATE TABLE events (
    host_id TEXT NOT NULL REFERENCES hosts (id),
    seq BIGINT NOT NULL,
    type TEXT NOT NULL,
    message TEXT,
    received BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (host_id, seq)
);
CREATE INDEX events_failures ON events (type, received);
