-- Deploy webhooks (issue #15): URLs told about a project's deployments. The secret signs
-- each POST; it is sealed like config vars (`secret_key_id` names the key), never stored
-- in the clear. `events` is a comma-separated list of event names.
CREATE TABLE webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    secret_key_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX webhooks_project_id ON webhooks (project_id);
-- The last attempts of each webhook's deliveries (pruned to the newest on each insert).
CREATE TABLE webhook_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id BIGINT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    delivery TEXT NOT NULL,
    event TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    at BIGINT NOT NULL,
    status_code BIGINT,
    error TEXT,
    duration_ms BIGINT NOT NULL
);
CREATE INDEX webhook_attempts_webhook_id ON webhook_attempts (webhook_id, id);
