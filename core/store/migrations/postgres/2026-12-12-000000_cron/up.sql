-- Scheduled jobs (issue #15): the jobs a build's app.json declared (a JSON list, checked
-- at build time), kept with the build so a rollback runs the jobs of its version.
CREATE TABLE build_cron (
    build_id BIGINT PRIMARY KEY REFERENCES builds (id) ON DELETE CASCADE,
    jobs TEXT NOT NULL
);
-- The last runs of each job of a project (pruned to the newest on each insert). A job is
-- its index in app.json; its command and schedule are kept with each run.
CREATE TABLE cron_runs (
    id BIGSERIAL PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    job BIGINT NOT NULL,
    command TEXT NOT NULL,
    schedule TEXT NOT NULL,
    version BIGINT NOT NULL,
    scheduled_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    outcome TEXT NOT NULL,
    exit_code BIGINT,
    error TEXT
);
CREATE INDEX cron_runs_project_job ON cron_runs (project_id, job, id);
