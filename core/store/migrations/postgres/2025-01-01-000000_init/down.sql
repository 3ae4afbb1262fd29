DROP TABLE deployments;
DROP TABLE builds;
DROP TABLE process_scale;
DROP TABLE env_vars;
DROP TABLE projects;
DROP TABLE ssh_keys;
DROP TABLE api_tokens;
DROP TABLE users;
