-- The values stay sealed: going down leaves them unreadable to a store that expects them
-- in the clear. Open them (an older store cannot) before running this.
ALTER TABLE deployments DROP COLUMN config_key_id;
ALTER TABLE env_vars DROP COLUMN key_id;
