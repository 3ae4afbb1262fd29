ALTER TABLE users DROP COLUMN disabled;
DROP INDEX collaborators_user_id;
DROP TABLE collaborators;
