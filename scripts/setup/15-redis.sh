#!/usr/bin/env bash
# The Redis server of the Redis add-on tests (addons/redis/tests, tests/tests/addons_redis.rs):
# Debian's redis-server (7.0), run privately with its own argv, not as the system service:
# 127.0.0.1 only, a password for the `default` user (kept in $dir/password, made once),
# no persistence, its files under /tmp/paastech-redis, daemonized. Idempotent: a server
# already answering on the address with that password is kept. Sourced by scripts/test.sh
# (and may be run alone). Exports PAASTECH_TEST_REDIS_URL, which the tests read.

paastech_redis_setup() {
    local port="${PAASTECH_TEST_REDIS_PORT:-6390}"
    local dir=/tmp/paastech-redis
    local log="$dir/redis-$port.log"

    if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
        echo "installing redis-server"
        # redis-server's Depends are redis-tools (the binaries, redis-cli among them) and
        # lsb-base; it recommends nothing. Its package may start the system service where an
        # init runs; the tests do not use that one.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                --no-install-recommends redis-server >/dev/null; } || return 1
    fi

    mkdir -p "$dir"
    chmod 700 "$dir"
    if [[ ! -s "$dir/password" ]]; then
        (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/password")
    fi
    local password
    password="$(cat "$dir/password")"

    # REDISCLI_AUTH: the password stays out of argv (and out of `ps`).
    paastech_redis_ping() { [[ "$(REDISCLI_AUTH="$password" redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" == PONG ]]; }

    if ! paastech_redis_ping; then
        echo "starting redis-server on 127.0.0.1:$port, log in $log"
        # The password goes in through stdin as a config file, not the argv.
        printf 'requirepass %s\n' "$password" | redis-server - \
            --bind 127.0.0.1 --port "$port" --protected-mode yes \
            --daemonize yes --dir "$dir" --pidfile "$dir/redis-$port.pid" --logfile "$log" \
            --save '' --appendonly no >/dev/null || return 1
        local i
        for ((i = 0; i < 60; i++)); do
            paastech_redis_ping && break
            sleep 0.5
        done
        if ! paastech_redis_ping; then
            echo "redis-server did not answer on 127.0.0.1:$port within 30 s (another server with another password on that port?); last lines of $log:" >&2
            tail -n 30 "$log" >&2
            return 1
        fi
    fi
    PAASTECH_TEST_REDIS_URL="redis://default:$password@127.0.0.1:$port"
    export PAASTECH_TEST_REDIS_URL
    echo "redis at redis://default:***@127.0.0.1:$port"
}

paastech_redis_setup
