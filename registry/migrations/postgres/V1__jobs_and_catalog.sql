-- The registry's job store and catalog on PostgreSQL (the same columns as SQLite's).
CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    repo TEXT NOT NULL,
    revision TEXT NOT NULL,
    targets TEXT NOT NULL,
    origin TEXT NOT NULL,
    state TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'auto',
    base TEXT,
    waits_on BIGINT,
    note TEXT,
    stage TEXT NOT NULL DEFAULT '',
    progress DOUBLE PRECISION NOT NULL DEFAULT 0,
    attempts BIGINT NOT NULL DEFAULT 0,
    error TEXT,
    companion TEXT NOT NULL,
    published_commit TEXT,
    upload TEXT,
    lease_owner TEXT,
    lease_until DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION
);
CREATE INDEX jobs_state ON jobs(state, id);
CREATE INDEX jobs_repo ON jobs(repo, revision);
CREATE TABLE deliveries (
    id BIGSERIAL PRIMARY KEY,
    received_at DOUBLE PRECISION NOT NULL,
    webhook_id TEXT,
    scope TEXT,
    repo TEXT,
    decision TEXT NOT NULL,
    job_id BIGINT
);
CREATE TABLE artifacts (
    id TEXT PRIMARY KEY,
    job_id BIGINT NOT NULL,
    repo TEXT NOT NULL,
    path TEXT NOT NULL,
    size BIGINT NOT NULL,
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    bits_per_weight DOUBLE PRECISION NOT NULL,
    sha256 TEXT NOT NULL,
    pieces TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    private BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE TABLE repo_revisions (
    seq BIGSERIAL PRIMARY KEY,
    repo TEXT NOT NULL,
    commit_id TEXT NOT NULL,
    files TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    private BOOLEAN NOT NULL DEFAULT FALSE,
    UNIQUE(repo, commit_id)
);
