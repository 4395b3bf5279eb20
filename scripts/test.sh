#!/usr/bin/env bash
# The test command (README): provision the real services, then run every test.
#
#   scripts/test.sh            # env + fmt check + clippy + all tests
#   scripts/test.sh --quick    # tests only (services must be up)
#
# Under CI (CI set), a test that needs Docker or S3 fails when the service is missing instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[ "${1:-}" = "--quick" ] && quick=1

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
fi
# The database images the dump tests run (tests/integration/dump.rs); no-ops when they exist.
echo "[test] scripts/pg-image.sh scripts/mariadb-image.sh" >&2
scripts/pg-image.sh
scripts/mariadb-image.sh
echo "[test] cargo test" >&2
cargo test -q --all-targets
