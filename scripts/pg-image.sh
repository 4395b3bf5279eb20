#!/usr/bin/env bash
# Build the PostgreSQL test image voltar-test-postgres:15 without a registry: Debian's postgresql-15 binaries,
# the libraries `ldd` lists, /usr/share/postgresql/15 and busybox in a FROM scratch image (legacy builder),
# user 999, with an entrypoint that initialises a cluster on the first start like the official image does
# (POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB). The server listens on /tmp only (PGHOST=/tmp).
#
#   scripts/pg-image.sh          # builds it unless it exists (cheap then); FORCE=1 rebuilds
#
# Used by tests/integration/dump.rs (which skips loudly without the image, and fails under CI).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
image=voltar-test-postgres:15
log() { printf '[pg-image] %s\n' "$*" >&2; }

if [ -z "${FORCE:-}" ] && docker image inspect "$image" >/dev/null 2>&1; then
  exit 0
fi
for pkg in postgresql-15 postgresql-client-15 busybox-static; do
  if ! dpkg -s "$pkg" >/dev/null 2>&1; then
    log "installing $pkg (its binaries go into the image; the host's cluster is not used)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$pkg" >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$pkg" >/dev/null; }
  fi
done

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/usr/local/bin" "$root/usr/lib/postgresql/15/lib" \
  "$root/usr/share" "$ctx/data/data"
chmod 1777 "$root/tmp"
chmod 700 "$ctx/data/data"

# Binaries and server modules (not the LLVM JIT: it would pull in libLLVM for nothing).
cp -a /usr/lib/postgresql/15/bin "$root/usr/lib/postgresql/15/"
find /usr/lib/postgresql/15/lib -maxdepth 1 -name '*.so' ! -name 'llvmjit*' -exec cp -a {} "$root/usr/lib/postgresql/15/lib/" \;
cp -a /usr/share/postgresql/15 "$root/usr/share/postgresql-15"
mkdir -p "$root/usr/share/postgresql" && mv "$root/usr/share/postgresql-15" "$root/usr/share/postgresql/15"
cp -a /usr/share/zoneinfo "$root/usr/share/"
# Every shared library the binaries and modules need, at the path the loader looks for it.
for f in "$root"/usr/lib/postgresql/15/bin/* "$root"/usr/lib/postgresql/15/lib/*.so; do
  [ -f "$f" ] && ! [ -L "$f" ] || continue
  ldd "$f" 2>/dev/null | awk '/=> \//{print $3} /^\s*\/.*ld-linux/{print $1}'
done | sort -u | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
# The loader also at /lib64 (where binaries ask for it).
ld=$(ldd /usr/lib/postgresql/15/bin/postgres | awk '/ld-linux/{print $1}')
mkdir -p "$root$(dirname "$ld")"; cp -L "$ld" "$root$ld"

cp /bin/busybox "$root/bin/busybox"
for tool in $("$root/bin/busybox" --list); do
  [ -e "$root/bin/$tool" ] || ln -s busybox "$root/bin/$tool"
done
printf 'root:x:0:0:root:/root:/bin/sh\npostgres:x:999:999:PostgreSQL:/var/lib/postgresql:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\npostgres:x:999:\n' >"$root/etc/group"
cp "$top/tests/image/postgres/entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
chmod 755 "$root/usr/local/bin/docker-entrypoint.sh"
cp "$top/tests/image/postgres/Dockerfile" "$ctx/Dockerfile"

log "docker build (legacy builder) $image"
if ! DOCKER_BUILDKIT=0 docker build -q -t "$image" "$ctx" >"$ctx/build.log" 2>&1; then
  cat "$ctx/build.log" >&2
  exit 1
fi
log "$image ($(( $(docker image inspect -f '{{.Size}}' "$image") / 1024 / 1024 )) MiB)"
