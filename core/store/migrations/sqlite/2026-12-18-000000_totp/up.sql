-- Two-factor login (issue #16): one TOTP enrolment per user, its secret sealed with the
-- secrets keyring like config vars (key_id names the key), pending until a first code
-- confirms it; last_step is the last time step a code was accepted for (a replay of it
-- is refused). Recovery codes are stored only as SHA-256 hashes, each deleted when used.
CREATE TABLE user_totp (
    user_id BIGINT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret TEXT NOT NULL,
    key_id TEXT NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT FALSE,
    last_step BIGINT,
    created_at BIGINT NOT NULL
);
CREATE TABLE recovery_codes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    UNIQUE (user_id, code_hash)
);
