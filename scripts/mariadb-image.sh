#!/usr/bin/env bash
# Build the MariaDB test image voltar-test-mariadb:10.11 without a registry: Debian's mariadbd, mariadb,
# mariadb-dump and mariadb-install-db, the libraries `ldd` lists, /usr/share/mysql and busybox in a FROM scratch
# image (legacy builder), user 999, with an entrypoint that initialises the data directory on the first start like
# the official image (MARIADB_ROOT_PASSWORD / MYSQL_ROOT_PASSWORD, or their *_FILE). The server listens on its unix
# socket only (/run/mysqld/mysqld.sock, the clients' default).
#
#   scripts/mariadb-image.sh     # builds it unless it exists (cheap then); FORCE=1 rebuilds
#
# Used by tests/integration/dump.rs (which skips loudly without the image, and fails under CI).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
image=voltar-test-mariadb:10.11
log() { printf '[mariadb-image] %s\n' "$*" >&2; }

if [ -z "${FORCE:-}" ] && docker image inspect "$image" >/dev/null 2>&1; then
  exit 0
fi
# Only the binaries are needed: no server package (it would install and start a service on the host).
for pkg in mariadb-server-core mariadb-client busybox-static; do
  if ! dpkg -s "$pkg" >/dev/null 2>&1; then
    log "installing $pkg (its binaries go into the image)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "$pkg" >/dev/null 2>&1 || {
      apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends "$pkg" >/dev/null; }
  fi
done

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/bin" "$root/etc/mysql" "$root/tmp" "$root/usr/local/bin" "$root/usr/bin" "$root/usr/sbin" \
  "$root/usr/share" "$ctx/data/mysql" "$ctx/run/mysqld"
chmod 1777 "$root/tmp"
bins="/usr/sbin/mariadbd /usr/bin/mariadb /usr/bin/mariadb-dump /usr/bin/mariadb-install-db /usr/bin/my_print_defaults /usr/bin/resolveip"
for b in $bins; do cp -a "$b" "$root$b"; done
ln -s mariadb "$root/usr/bin/mysql"
ln -s mariadb-dump "$root/usr/bin/mysqldump"
cp -a /usr/share/mysql "$root/usr/share/"
# Every shared library the binaries need, at the path the loader looks for it (scripts are skipped).
for f in $bins; do
  [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = "177ELF" ] || continue
  ldd "$f" 2>/dev/null | awk '/=> \//{print $3} /^\s*\/.*ld-linux/{print $1}'
done | sort -u | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
ld=$(ldd /usr/sbin/mariadbd | awk '/ld-linux/{print $1}')
mkdir -p "$root$(dirname "$ld")"; cp -L "$ld" "$root$ld"
cp /bin/busybox "$root/bin/busybox"
for tool in $("$root/bin/busybox" --list); do
  [ -e "$root/bin/$tool" ] || ln -s busybox "$root/bin/$tool"
done
printf 'root:x:0:0:root:/root:/bin/sh\nmysql:x:999:999:MariaDB:/var/lib/mysql:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nmysql:x:999:\n' >"$root/etc/group"
cp "$top/tests/image/mariadb/entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
chmod 755 "$root/usr/local/bin/docker-entrypoint.sh"
cp "$top/tests/image/mariadb/Dockerfile" "$ctx/Dockerfile"

log "docker build (legacy builder) $image"
if ! DOCKER_BUILDKIT=0 docker build -q -t "$image" "$ctx" >"$ctx/build.log" 2>&1; then
  cat "$ctx/build.log" >&2
  exit 1
fi
log "$image ($(( $(docker image inspect -f '{{.Size}}' "$image") / 1024 / 1024 )) MiB)"
