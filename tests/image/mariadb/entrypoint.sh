#!/bin/sh
# voltar-test-mariadb entrypoint: the official mariadb image's conventions, enough for voltar's tests.
# MARIADB_ROOT_PASSWORD (or MYSQL_ROOT_PASSWORD, or *_FILE). The data directory is initialised on the first
# start (an empty /var/lib/mysql); the server listens on its unix socket only (/run/mysqld/mysqld.sock).
set -eu
datadir=/var/lib/mysql
if [ "${1:-mariadbd}" != "mariadbd" ]; then
  exec "$@"
fi
[ $# -gt 0 ] && shift
pw=${MARIADB_ROOT_PASSWORD:-${MYSQL_ROOT_PASSWORD:-}}
f=${MARIADB_ROOT_PASSWORD_FILE:-${MYSQL_ROOT_PASSWORD_FILE:-}}
[ -n "$f" ] && pw=$(cat "$f")
if [ ! -d "$datadir/mysql" ]; then
  mariadb-install-db --datadir="$datadir" --skip-test-db --auth-root-authentication-method=normal \
    --skip-name-resolve >/tmp/install.log 2>&1 || { cat /tmp/install.log >&2; exit 1; }
  mariadbd --datadir="$datadir" --skip-networking --socket=/tmp/init.sock >/tmp/init-server.log 2>&1 &
  pid=$!
  i=0
  until mariadb --socket=/tmp/init.sock -uroot -e 'SELECT 1' >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -gt 300 ] && { cat /tmp/init-server.log >&2; exit 1; }
    sleep 0.1
  done
  if [ -n "$pw" ]; then
    mariadb --socket=/tmp/init.sock -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED BY '$pw'; FLUSH PRIVILEGES;"
  fi
  kill "$pid"
  wait "$pid" || true
  echo "voltar-test-mariadb: data directory initialised in $datadir" >&2
fi
exec mariadbd --datadir="$datadir" --skip-networking --socket=/run/mysqld/mysqld.sock "$@"
