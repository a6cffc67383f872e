-- Timestamps are milliseconds since the Unix epoch (BIGINT) so that one query text serves
-- PostgreSQL and SQLite through sqlx's Any driver. JSON documents are TEXT for the same reason.
CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    is_admin BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE models (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT,
    model_type TEXT NOT NULL,
    num_layers BIGINT NOT NULL,
    hidden_size BIGINT NOT NULL,
    num_heads BIGINT NOT NULL,
    intermediate_size BIGINT NOT NULL,
    parameters BIGINT NOT NULL,
    dtype TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    files TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX models_tenant_id ON models (tenant_id, id);

CREATE TABLE datasets (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT,
    format TEXT NOT NULL,
    task TEXT,
    num_rows BIGINT NOT NULL,
    summary TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX datasets_tenant_id ON datasets (tenant_id, id);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    kind TEXT NOT NULL,
    model_id TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    stage TEXT,
    progress DOUBLE PRECISION NOT NULL DEFAULT 0,
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    error TEXT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires_at BIGINT,
    idempotency_key TEXT,
    request_hash TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    updated_at BIGINT NOT NULL,
    CONSTRAINT jobs_idempotency UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX jobs_tenant_id ON jobs (tenant_id, id);
CREATE INDEX jobs_claim ON jobs (status, created_at);

-- Which stored models/datasets a job reads, so that deleting one in use can be refused.
CREATE TABLE job_inputs (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    resource_id TEXT NOT NULL,
    PRIMARY KEY (job_id, resource_id)
);
CREATE INDEX job_inputs_resource ON job_inputs (resource_id);

CREATE TABLE job_artifacts (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (job_id, name)
);
