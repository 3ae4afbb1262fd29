-- Per-project HTTPS policy; a project without a row has the default one (redirect on, no
-- HSTS), so existing projects need no backfill.
CREATE TABLE project_https (
    project_id INTEGER PRIMARY KEY NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    https_redirect BOOLEAN NOT NULL,
    hsts_max_age BIGINT
);
