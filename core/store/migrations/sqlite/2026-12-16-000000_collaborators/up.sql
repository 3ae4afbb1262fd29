-- Project members other than the owner (projects.owner_id), one row per user and project,
-- with their role. A user or project deleted takes its rows with it.
CREATE TABLE collaborators (
    project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('owner', 'developer', 'viewer')),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (project_id, user_id)
);
CREATE INDEX collaborators_user_id ON collaborators (user_id);
-- An admin may disable an account: it cannot log in, and its tokens and SSH keys stop
-- working.
ALTER TABLE users ADD COLUMN disabled BOOLEAN NOT NULL DEFAULT FALSE;
