-- Add-ons (issue #14): which backing services a project has, by name and kind. Their
-- credentials are config vars of the project (sealed with the env), not kept here.
CREATE TABLE addons (
    id BIGSERIAL PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (project_id, name)
);
