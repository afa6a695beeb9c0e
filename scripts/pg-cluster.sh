#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the store's tests.
#
#   eval "$(scripts/pg-cluster.sh start DIR [PORT])"   # prints the exports to make
#   scripts/pg-cluster.sh stop DIR
#
# `start` runs initdb in DIR (which must not exist yet), as the `postgres` user when run as
# root (initdb and postgres refuse to run as root), and starts the server on 127.0.0.1:PORT
# (default 55432) with its unix socket in DIR. Password authentication over TCP, for the role
# `tailpass`. It prints `export TAILPASS_TEST_POSTGRES=…`. `stop` stops it and removes DIR.
# Tests run with fsync off (they check behaviour, not durability against power loss);
# benchmarks set PG_FSYNC=on, with synchronous commit on as it is by default.
set -euo pipefail

bin() {
  # Debian installs the binaries under /usr/lib/postgresql/<version>/bin, off PATH.
  if command -v "$1" >/dev/null; then command -v "$1"; return; fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  [ -n "$found" ] && [ -x "$found/$1" ] || { echo "no $1: install postgresql" >&2; exit 1; }
  echo "$found/$1"
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cmd=${1:?start|stop}
dir=${2:?cluster directory}
case "$cmd" in
  start)
    port=${3:-55432}
    password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    chmod 0700 "$dir"
    pwfile="$dir/.pw"
    printf '%s\n' "$password" | as_owner tee "$pwfile" >/dev/null
    as_owner "$(bin initdb)" -D "$dir/data" -U tailpass --pwfile="$pwfile" -A scram-sha-256 \
      --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    # Tests create a database each and run in parallel: room for their pools.
    as_owner "$(bin pg_ctl)" -D "$dir/data" -l "$dir/log" -w \
      -o "-k $dir -p $port -h 127.0.0.1 -c max_connections=400 -c fsync=${PG_FSYNC:-off}" start >/dev/null \
      || { cat "$dir/log" >&2; exit 1; }
    echo "export TAILPASS_TEST_POSTGRES='postgres://tailpass:$password@127.0.0.1:$port/postgres?sslmode=disable'"
    ;;
  stop)
    [ -d "$dir/data" ] && as_owner "$(bin pg_ctl)" -D "$dir/data" -m fast -w stop >/dev/null || true
    rm -rf "$dir"
    ;;
  *) echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2 ;;
esac
