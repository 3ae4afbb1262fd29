-- A project has at most one live deployment, and the database says which: the orchestrator
-- asks for it by status instead of scanning recent rows. Older duplicates (which earlier
-- versions could leave when a step failed half-way) are superseded first.
UPDATE deployments SET status = 'superseded'
WHERE status = 'live'
  AND version < (SELECT MAX(d.version) FROM deployments d
                 WHERE d.project_id = deployments.project_id AND d.status = 'live');
CREATE UNIQUE INDEX deployments_one_live ON deployments (project_id) WHERE status = 'live';
