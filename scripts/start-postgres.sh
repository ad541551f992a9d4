#!/usr/bin/env bash
# Start a throwaway PostgreSQL on 127.0.0.1 for the tests and print its URL.
# Uses Debian's server binaries; runs as the `postgres` user because the server refuses root.
set -euo pipefail
port="${SERATIO_PG_PORT:-55432}"
root="${SERATIO_PG_DIR:-/tmp/seratio-pg-$port}"
bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if ! as_postgres "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
  rm -rf "$root"
  mkdir -p "$root"
  [ "$(id -u)" = 0 ] && chown postgres "$root"
  as_postgres "$bin/initdb" -D "$root/data" -U postgres --auth=trust >/dev/null
  as_postgres "$bin/pg_ctl" -D "$root/data" -l "$root/server.log" -w \
    -o "-p $port -k $root -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >/dev/null
fi
echo "postgresql://postgres@127.0.0.1:$port/postgres"
