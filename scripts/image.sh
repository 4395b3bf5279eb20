#!/usr/bin/env bash
# Build voltar's container image: a statically linked binary built here (profile `dist`: no debug info), CA
# certificates, FROM scratch. No registry is needed or used.
#
#   scripts/image.sh            # builds voltar:<version> and voltar:<major>.<minor>; prints the tags
#   IMAGE_BIN=path scripts/image.sh   # use an already built static binary
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
minor=${version%.*}
triple=x86_64-unknown-linux-gnu
bin=${IMAGE_BIN:-target/$triple/dist/voltar}

if [ -z "${IMAGE_BIN:-}" ]; then
  echo "[image] building a static binary (profile dist)" >&2
  # glibc, statically linked: the image has no libc of its own. (voltar resolves no host names through NSS
  # plugins it would need at run time: S3 endpoints resolve through the static resolver.)
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile dist --target "$triple" --locked -q
fi
if ! file "$bin" | grep -q "static"; then
  echo "[image] $bin is not statically linked" >&2
  exit 1
fi

certs=/etc/ssl/certs/ca-certificates.crt
if [ ! -s "$certs" ]; then
  echo "[image] installing ca-certificates (for $certs)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ca-certificates >/dev/null
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/voltar"
cp "$certs" "$ctx/ca-certificates.crt"
cp deploy/Dockerfile "$ctx/Dockerfile"
echo "[image] docker build (legacy builder) voltar:$version voltar:$minor" >&2
# (The legacy builder's deprecation notice is noise here: its output is shown only when the build fails.)
if ! DOCKER_BUILDKIT=0 docker build -q --build-arg VERSION="$version" -t "voltar:$version" -t "voltar:$minor" \
    "$ctx" >"$ctx/build.log" 2>&1; then
  cat "$ctx/build.log" >&2
  exit 1
fi
size=$(docker image inspect -f '{{.Size}}' "voltar:$version")
echo "[image] voltar:$version ($((size / 1024 / 1024)) MiB)" >&2
echo "voltar:$version"
echo "voltar:$minor"
