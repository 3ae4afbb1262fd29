-- The audit log (issue #16): who changed what, when, from which address. Actor and project
-- are kept by id (what decides who may read a record) and by name as they were then (what
-- is shown), with no foreign key: a record outlives the user or project it names.
CREATE TABLE audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at BIGINT NOT NULL,
    actor_id BIGINT,
    actor TEXT,
    address TEXT,
    project_id BIGINT,
    project TEXT,
    action TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_project ON audit_events (project_id, id);
CREATE INDEX audit_events_actor ON audit_events (actor_id, id);
