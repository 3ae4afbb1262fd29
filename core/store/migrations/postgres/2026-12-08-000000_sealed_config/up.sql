-- Config vars are sealed (encrypted) at rest by the store, which holds the key; SQL cannot
-- do it. A NULL key id marks a value still in the clear: the store seals those when it
-- opens the database, in one transaction (see `SqlStore::open`).
ALTER TABLE env_vars ADD COLUMN key_id TEXT;
-- A deployment's config snapshot: a JSON object of sealed values, all with this key.
ALTER TABLE deployments ADD COLUMN config_key_id TEXT;
