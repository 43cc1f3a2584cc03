-- Deployments and their events. Portable SQL: SQLite and PostgreSQL run
-- the same statements. Times are Unix milliseconds.
CREATE TABLE deployments (
    id TEXT PRIMARY KEY,
    -- The caller's idempotency key; NULLs do not collide.
    request_id TEXT UNIQUE,
    request_digest TEXT NOT NULL,
    project TEXT NOT NULL,
    region TEXT NOT NULL,
    service TEXT NOT NULL,
    state TEXT NOT NULL,
    stage TEXT,
    caller TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    ended_ms BIGINT,
    -- The daemon holding the lease, and until when.
    owner TEXT,
    lease_until_ms BIGINT NOT NULL,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    resumed BIGINT NOT NULL DEFAULT 0,
    -- The pipeline's progress (JSON), from which a run resumes.
    progress TEXT NOT NULL,
    -- The outcome (JSON) once ended.
    outcome TEXT
);

-- One running deployment per Cloud Run service, across every daemon.
CREATE UNIQUE INDEX deployments_one_running
    ON deployments (project, region, service) WHERE state = 'RUNNING';
CREATE INDEX deployments_newest ON deployments (created_ms, id);
CREATE INDEX deployments_leases ON deployments (state, lease_until_ms);

CREATE TABLE events (
    deployment_id TEXT NOT NULL,
    -- From 1 without gaps; the key makes a second writer of a seq fail.
    seq BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (deployment_id, seq)
);
