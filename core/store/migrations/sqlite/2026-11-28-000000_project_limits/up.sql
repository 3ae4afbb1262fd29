-- Per-project instance limits, overriding the runtime's server-wide defaults.
CREATE TABLE project_limits (
    project_id INTEGER PRIMARY KEY NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    memory_mb BIGINT,
    cpus DOUBLE
);
