-- Scale to zero (issue #18): per project, whether its web instances sleep after
-- after_minutes without a request, whether other process types running keep it awake, and
-- whether it sleeps now (so a server start leaves it asleep), with why its last wake
-- failed. No row: sleep off and awake, so existing projects need no backfill.
CREATE TABLE project_sleep (
    project_id INTEGER PRIMARY KEY NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    enabled BOOLEAN NOT NULL,
    after_minutes INTEGER NOT NULL,
    workers_keep_awake BOOLEAN NOT NULL DEFAULT TRUE,
    asleep BOOLEAN NOT NULL DEFAULT FALSE,
    wake_error TEXT
);
