DROP INDEX projects_preview_branch;
ALTER TABLE projects DROP COLUMN preview_branch;
ALTER TABLE projects DROP COLUMN preview_of;
ALTER TABLE projects DROP COLUMN previews_enabled;
