-- Custom domains: each names one project and is unique on the platform, stored in its
-- canonical form (ASCII, lowercase, no trailing dot). Certificate state per domain will be
-- added as columns here.
CREATE TABLE domains (
    id BIGSERIAL PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE INDEX domains_project_id ON domains (project_id);
