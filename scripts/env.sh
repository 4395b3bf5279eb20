#!/usr/bin/env bash
# Provision the test environment idempotently: Docker Engine, the local test image, an S3 server on loopback.
# Safe to run again and again; each step is skipped when already done. Needs root (apt, dockerd).
#
#   scripts/env.sh          # everything
#   scripts/env.sh docker   # engine + test image only
#   scripts/env.sh s3       # S3 server only
#
# Prints the environment the tests use (VOLTAR_TEST_S3_*) to stdout as `export` lines when done.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
what=${1:-all}

log() { printf '[env] %s\n' "$*" >&2; }

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${missing[@]}" >/dev/null; }
  fi
}

start_docker() {
  apt_install docker.io busybox-static zstd attr python3-venv curl openssl time docker-compose ca-certificates file strace \
    openssh-client openssh-server
  if ! docker info >/dev/null 2>&1; then
    log "starting dockerd (no bridge network: test containers get only loopback)"
    setsid dockerd --bridge=none --iptables=false >/var/log/dockerd.log 2>&1 < /dev/null &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { log "dockerd did not answer within 60 s; see /var/log/dockerd.log"; tail -20 /var/log/dockerd.log >&2; exit 1; }
  fi
  if ! docker image inspect voltar-test:latest >/dev/null 2>&1; then
    log "building the local test image voltar-test:latest (FROM scratch + busybox-static)"
    local ctx; ctx=$(mktemp -d)
    cp /bin/busybox "$ctx/busybox"
    cp "$top/tests/image/Dockerfile" "$ctx/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q -t voltar-test:latest "$ctx" >/dev/null
    rm -rf "$ctx"
  fi
  log "docker ready: $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"
}

S3_PORT=${VOLTAR_TEST_S3_PORT:-9333}
S3_VENV=${VOLTAR_S3_VENV:-/opt/voltar-moto}

start_s3() {
  # moto's server is a real S3 HTTP server (in memory) that installs in seconds from PyPI; garage would
  # take ~9 minutes to build on this 2-core machine in every clean CI run.
  if [ ! -x "$S3_VENV/bin/moto_server" ]; then
    log "installing moto[server] into $S3_VENV"
    python3 -m venv "$S3_VENV"
    "$S3_VENV/bin/pip" install -q 'moto[server]>=5,<6' >/dev/null
  fi
  if ! curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/"; then
    log "starting moto S3 server on 127.0.0.1:$S3_PORT"
    setsid "$S3_VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >/var/log/voltar-moto.log 2>&1 < /dev/null &
    for _ in $(seq 1 60); do curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/" && break; sleep 0.5; done
    curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/" || { log "S3 server did not answer; see /var/log/voltar-moto.log"; exit 1; }
  fi
  log "s3 ready on http://127.0.0.1:$S3_PORT"
  echo "export VOLTAR_TEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT"
}

case "$what" in
  docker) start_docker ;;
  s3) start_s3 ;;
  all) start_docker; start_s3 ;;
  *) echo "usage: $0 [all|docker|s3]" >&2; exit 2 ;;
esac
