#!/usr/bin/env bash
# The test command (README): provision the real services, then run every test.
#
#   scripts/test.sh            # env + image + fmt check + clippy + cargo deny + all tests
#   scripts/test.sh --quick    # tests only (services must be up)
#
# Under CI (CI set), a test that needs Docker or S3 fails when the service is missing instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[ "${1:-}" = "--quick" ] && quick=1

# cargo-deny (deny.toml): licenses, banned crates and features, sources — offline, against Cargo.lock. Installed
# from crates.io when missing (a pinned version, built from source; its build directory is removed afterwards).
# Built unoptimised, without debug info: on this 2-core machine (shared, load 10+) an optimised build took 20
# minutes and this one 7 to 9, while a check takes 7 s instead of 3.5 s — the build is paid on every fresh CI
# machine, the check is not worth optimising.
# Advisories need the RustSec database, which is a git clone (network): they are checked only when a copy is
# already in ~/.cargo/advisory-dbs (`cargo deny fetch` makes one where the network allows).
DENY_VERSION=0.20.2
supply_chain() {
  if ! cargo deny --version >/dev/null 2>&1; then
    echo "[test] installing cargo-deny $DENY_VERSION (from source: several minutes on a fresh machine)" >&2
    local build
    build=$(mktemp -d)
    CARGO_TARGET_DIR="$build" CARGO_PROFILE_DEV_DEBUG=0 \
      cargo install --locked --debug --quiet "cargo-deny@$DENY_VERSION"
    rm -rf "$build"
  fi
  echo "[test] cargo deny (licenses, bans, sources)" >&2
  cargo deny --offline check licenses bans sources
  if compgen -G "${CARGO_HOME:-$HOME/.cargo}/advisory-dbs/*" >/dev/null; then
    echo "[test] cargo deny (advisories, local database)" >&2
    cargo deny --offline check advisories
  else
    echo "[test] cargo deny advisories: skipped, no advisory database here (cargo deny fetch)" >&2
  fi
}

if [ $quick = 0 ]; then
  eval "$(scripts/env.sh all)"
fi
export VOLTAR_TEST_S3_ENDPOINT=${VOLTAR_TEST_S3_ENDPOINT:-http://127.0.0.1:9333}

if [ $quick = 0 ]; then
  # The container image the image tests run (a static release binary: the longest step on a cold machine).
  echo "[test] scripts/image.sh" >&2
  scripts/image.sh >/dev/null
  echo "[test] cargo fmt --check" >&2
  cargo fmt --all -- --check
  echo "[test] cargo clippy" >&2
  cargo clippy --all-targets -q -- -D warnings
  supply_chain
fi
# The database images the dump tests run (tests/integration/dump.rs); no-ops when they exist.
echo "[test] scripts/pg-image.sh scripts/mariadb-image.sh" >&2
scripts/pg-image.sh
scripts/mariadb-image.sh
echo "[test] cargo test" >&2
cargo test -q --all-targets
