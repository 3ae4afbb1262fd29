#!/usr/bin/env bash
# Starts a throwaway PostgreSQL 15 cluster for tests and prints exactly one line on stdout:
# its admin URL (a role with CREATEDB and CREATEROLE (for add-ons), trust auth, 127.0.0.1 only).
#
#   export PAASTECH_TEST_POSTGRES_URL="$(scripts/start-postgres.sh)"
#   scripts/start-postgres.sh --stop      # stops it and removes its files
#
# Meant for a fresh Debian 12 machine as root. The server refuses to run as root, so the
# cluster belongs to the unprivileged `postgres` user. Calling it again while the cluster runs
# prints the same URL. Everything but the URL goes to stderr.
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin
DIR="${PAASTECH_POSTGRES_DIR:-/tmp/paastech-postgres}"
ROLE=paastech

log() { echo "start-postgres: $*" >&2; }
as_postgres() { runuser -u postgres -- "$@"; }

if [ "${1:-}" = "--stop" ]; then
    if [ -d "$DIR/data" ]; then
        as_postgres "$PG_BIN/pg_ctl" -D "$DIR/data" -m immediate stop >&2 || true
    fi
    rm -rf "$DIR"
    exit 0
fi

if [ ! -x "$PG_BIN/initdb" ]; then
    log "installing postgresql"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
if ! id postgres >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/sh postgres
fi

# Reuse a cluster this script started earlier if it still answers.
if [ -f "$DIR/url" ] && [ -f "$DIR/port" ] \
    && "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$(cat "$DIR/port")" -t 2; then
    # A cluster started by an older copy of this script lacks CREATEROLE (add-on tests).
    as_postgres "$PG_BIN/psql" -h "$DIR" -p "$(cat "$DIR/port")" -U postgres -d postgres -q \
        -c "ALTER ROLE $ROLE CREATEROLE" >&2 || true
    cat "$DIR/url"
    exit 0
fi
if [ -d "$DIR/data" ]; then
    as_postgres "$PG_BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
fi
rm -rf "$DIR"
mkdir -p "$DIR"
chown postgres: "$DIR"
chmod 700 "$DIR"

as_postgres "$PG_BIN/initdb" -D "$DIR/data" -U postgres --auth=trust --encoding=UTF8 \
    --locale=C --no-sync >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log" >&2; exit 1; }
# Trust, but only over the socket in $DIR and on 127.0.0.1.
cat >"$DIR/data/pg_hba.conf" <<'HBA'
local all all trust
host  all all 127.0.0.1/32 trust
HBA

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

started=""
for _ in $(seq 1 20); do
    port=$((20000 + RANDOM % 40000))
    port_in_use "$port" && continue
    # Durability is worthless for a throwaway test cluster; speed is not.
    if as_postgres "$PG_BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
        -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$DIR \
            -c max_connections=300 -c shared_buffers=32MB -c fsync=off \
            -c synchronous_commit=off -c full_page_writes=off" start >&2; then
        started=yes
        break
    fi
    log "port $port did not work, trying another"
done
if [ -z "$started" ]; then
    log "could not start PostgreSQL; server log:"
    cat "$DIR/server.log" >&2 || true
    exit 1
fi

for _ in $(seq 1 60); do
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -t 1 && break
    sleep 0.5
done
"$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -t 5 || { log "PostgreSQL does not answer"; exit 1; }

as_postgres "$PG_BIN/psql" -h "$DIR" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -q \
    -c "CREATE ROLE $ROLE LOGIN CREATEDB CREATEROLE" >&2

url="postgres://$ROLE@127.0.0.1:$port/postgres"
echo "$port" >"$DIR/port"
echo "$url" >"$DIR/url"
log "PostgreSQL 15 running on 127.0.0.1:$port (data in $DIR)"
echo "$url"
