-- What `paastech stop` left stopped of a project: one row per stopped process type, or one
-- row '*' for the whole project. No row: nothing stopped, so existing projects need no
-- backfill.
CREATE TABLE stopped_processes (
    project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    process_type TEXT NOT NULL,
    PRIMARY KEY (project_id, process_type)
);
