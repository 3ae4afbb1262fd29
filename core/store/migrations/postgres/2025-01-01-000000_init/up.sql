-- Ids are BIGSERIAL; timestamps are Unix milliseconds.
CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    is_admin BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    expires_at BIGINT
);
CREATE INDEX api_tokens_user_id ON api_tokens (user_id);

CREATE TABLE ssh_keys (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    public_key TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX ssh_keys_user_id ON ssh_keys (user_id);

CREATE TABLE projects (
    id BIGSERIAL PRIMARY KEY,
    owner_id BIGINT NOT NULL REFERENCES users (id),
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE INDEX projects_owner_id ON projects (owner_id);

CREATE TABLE env_vars (
    project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    "key" TEXT NOT NULL,
    "value" TEXT NOT NULL,
    PRIMARY KEY (project_id, "key")
);

CREATE TABLE process_scale (
    project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    process_type TEXT NOT NULL,
    "count" BIGINT NOT NULL,
    PRIMARY KEY (project_id, process_type)
);

CREATE TABLE builds (
    id BIGSERIAL PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    "commit" TEXT NOT NULL,
    status TEXT NOT NULL,
    artifact TEXT,
    processes TEXT NOT NULL,
    log TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX builds_project_id ON builds (project_id);

CREATE TABLE deployments (
    id BIGSERIAL PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    version BIGINT NOT NULL,
    status TEXT NOT NULL,
    build_id BIGINT REFERENCES builds (id) ON DELETE SET NULL,
    "commit" TEXT,
    config TEXT NOT NULL,
    scale TEXT NOT NULL,
    cause TEXT NOT NULL,
    failure TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (project_id, version)
);
CREATE INDEX deployments_status ON deployments (status);
