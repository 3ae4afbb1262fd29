"""The release step of python-postgres (Procfile `release:`): brings the database's schema
up to what this version of the app reads. PaaSTech runs it once per new deployment, with the
deployment's config, before any instance starts; a failure here fails the deployment and
the previous one keeps serving. Each statement is idempotent, so running it again on a
database that has the schema changes nothing.
"""

import os
import subprocess
import sys

MIGRATIONS = [
    "CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, text text NOT NULL);",
]


def main():
    if "DATABASE_URL" not in os.environ:
        print("no DATABASE_URL: nothing to migrate (create one with `paastech addons create postgres`)")
        return 0
    argv = ["psql", os.environ["DATABASE_URL"], "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    done = subprocess.run(argv, input="\n".join(MIGRATIONS), capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        print(f"migration failed: {done.stderr.strip()}", file=sys.stderr)
        return 1
    print(f"migrated: {len(MIGRATIONS)} statement(s) applied")
    return 0


if __name__ == "__main__":
    sys.exit(main())
