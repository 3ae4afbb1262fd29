-- Preview apps: a project made for a branch of another (its parent) has the parent's id
-- and the branch; a parent says whether pushes to its other branches make previews.
-- Existing projects are no previews and have them off, the defaults.
ALTER TABLE projects ADD COLUMN previews_enabled BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE projects ADD COLUMN preview_of BIGINT REFERENCES projects (id);
ALTER TABLE projects ADD COLUMN preview_branch TEXT;
CREATE UNIQUE INDEX projects_preview_branch ON projects (preview_of, preview_branch);
