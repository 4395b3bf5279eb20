#!/bin/sh
# voltar-test-postgres entrypoint: the official postgres image's conventions, enough for voltar's tests.
# POSTGRES_USER (default postgres), POSTGRES_PASSWORD (optional), POSTGRES_DB (default: the user), PGDATA
# (default /var/lib/postgresql/data). The cluster is created on the first start (an empty data directory);
# the server listens on a unix socket in /tmp only (PGHOST=/tmp is set for clients), no TCP.
set -eu
PGDATA=${PGDATA:-/var/lib/postgresql/data}
POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
export PGDATA
if [ "${1:-postgres}" != "postgres" ]; then
  exec "$@"
fi
[ $# -gt 0 ] && shift
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  chmod 700 "$PGDATA"
  pwfile=
  if [ -n "${POSTGRES_PASSWORD:-}" ]; then
    pwfile=/tmp/.pwfile
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  fi
  initdb -D "$PGDATA" -U "$POSTGRES_USER" -E UTF8 --locale=C --auth-local=trust --auth-host=scram-sha-256 \
    ${pwfile:+--pwfile="$pwfile"} >/tmp/initdb.log 2>&1 || { cat /tmp/initdb.log >&2; exit 1; }
  rm -f /tmp/.pwfile
  if [ "$POSTGRES_DB" != "postgres" ]; then
    postgres -D "$PGDATA" -c listen_addresses= -k /tmp >/tmp/init-server.log 2>&1 &
    pid=$!
    i=0
    until pg_isready -q -h /tmp; do
      i=$((i + 1)); [ $i -gt 100 ] && { cat /tmp/init-server.log >&2; exit 1; }
      sleep 0.1
    done
    psql -v ON_ERROR_STOP=1 -q -h /tmp -U "$POSTGRES_USER" -d postgres -c "CREATE DATABASE \"$POSTGRES_DB\""
    kill -INT "$pid"
    wait "$pid" || true
  fi
  echo "voltar-test-postgres: database cluster initialised in $PGDATA" >&2
fi
exec postgres -D "$PGDATA" -c listen_addresses= -k /tmp "$@"
