-- What each stage of a job found (experiment jobs: metrics, sparsity, timings), recorded as the
-- stage ends, in order. A job claimed again starts its record over.
CREATE TABLE job_stages (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    position BIGINT NOT NULL,
    name TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    result TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (job_id, position)
);
