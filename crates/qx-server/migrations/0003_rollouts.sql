-- Staged rollouts (docs/spec.md §10): one row per rollout the server learned from a signed
-- channel state, one row per host offered its version, and the operators' pins. The same SQL
-- for both engines; times are Unix milliseconds of the server's clock, JSON is text.

CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    product TEXT NOT NULL,
    channel TEXT NOT NULL,
    version TEXT NOT NULL,
    -- The signed plan as JSON (waves, salt, policy).
    plan TEXT NOT NULL,
    -- The plan's stage deadlines, in milliseconds (copied out of the plan for the event path).
    download_ms BIGINT NOT NULL,
    install_ms BIGINT NOT NULL,
    confirm_ms BIGINT NOT NULL,
    -- running, paused, halted, aborted, completed.
    state TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    -- JSON array: when each wave opened, in wave order.
    opened TEXT NOT NULL DEFAULT '[]',
    -- JSON: the halt in force, if any; every halt so far.
    halt TEXT,
    halts TEXT NOT NULL DEFAULT '[]',
    acknowledged_failures BIGINT NOT NULL DEFAULT 0,
    acknowledged_finished BIGINT NOT NULL DEFAULT 0,
    ended_reason TEXT
);
-- At most one unfinished rollout per product and channel.
CREATE UNIQUE INDEX rollouts_unfinished ON rollouts (product, channel) WHERE state IN ('running', 'paused', 'halted');
CREATE INDEX rollouts_listed ON rollouts (product, channel, started_at);

CREATE TABLE rollout_hosts (
    rollout_id TEXT NOT NULL REFERENCES rollouts (id),
    host_id TEXT NOT NULL REFERENCES hosts (id),
    wave BIGINT NOT NULL,
    stage TEXT NOT NULL,
    since BIGINT NOT NULL,
    -- When the stage times out; NULL when it is not timed (offered, final stages).
    deadline BIGINT,
    message TEXT,
    PRIMARY KEY (rollout_id, host_id)
);
CREATE INDEX rollout_hosts_deadline ON rollout_hosts (deadline) WHERE deadline IS NOT NULL;
CREATE INDEX rollout_hosts_counts ON rollout_hosts (rollout_id, wave, stage);
CREATE INDEX rollout_hosts_host ON rollout_hosts (host_id);

CREATE TABLE pins (
    id TEXT PRIMARY KEY,
    product TEXT NOT NULL,
    channel TEXT NOT NULL,
    host_id TEXT,
    selector TEXT,
    version TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX pins_channel ON pins (product, channel, created_at);
