#!/usr/bin/env bash
# Benchmark: voltar backup vs the reference pipeline `tar -cf - | zstd -3 -T0` on the same data, same run.
# Prints both times, the ratio, compressed sizes and voltar's peak RSS; then the S3 case (throughput against the
# local S3 test server, peak RSS at two dataset sizes to show memory stays flat).
#
#   scripts/bench.sh [SCALE]      # SCALE 1.0 ≈ 1.7 GiB (default 1.0); BENCH_S3=0 skips the S3 case
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-1.0}
eval "$(scripts/env.sh all)"
apt-get install -y -q zstd time >/dev/null 2>&1 || true
cargo build --release -q
bin=$PWD/target/release/voltar
work=$(mktemp -d /var/tmp/voltar-bench.XXXXXX)
vol=voltar-bench-$$
export VOLTAR_STATE_DIR=$work/state
cleanup() { docker volume rm -f "$vol" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

docker volume create "$vol" >/dev/null
mp=$(docker volume inspect -f '{{.Mountpoint}}' "$vol")
echo "generating dataset (scale $scale) in volume $vol ..." >&2
python3 scripts/gen_dataset.py "$mp" "$scale"
size=$(du -sb "$mp" | cut -f1)
echo "dataset: $(numfmt --to=iec "$size") in $(find "$mp" -type f | wc -l) files" >&2
sync

measure() { # name, command...: prints "seconds maxrss_kb"
  local name=$1; shift
  # Start each run with no dirty pages from the previous one: voltar fsyncs its archive (durability), so it would
  # otherwise also pay for writing back the reference's output.
  sync
  /usr/bin/time -f "%e %M" -o "$work/$name.time" "$@" >/dev/null 2>"$work/$name.err" || { cat "$work/$name.err" >&2; exit 1; }
  cat "$work/$name.time" | tail -1
}

# Warm the page cache once so both read the same way, then alternate runs and keep the best of each.
tar -cf - -C "$mp" . >/dev/null
best_ref=999999; best_refsync=999999; best_v=999999; rss_v=0
for round in 1 2; do
  read -r t m < <(measure ref sh -c "tar -cf - -C '$mp' . | zstd -3 -T0 -q > '$work/ref.tar.zst'")
  best_ref=$(python3 -c "print(min($best_ref, $t))")
  # The same, made durable as voltar makes its archive (fsync before it counts as written).
  read -r t m < <(measure refsync sh -c "tar -cf - -C '$mp' . | zstd -3 -T0 -q > '$work/ref.tar.zst' && sync '$work/ref.tar.zst'")
  best_refsync=$(python3 -c "print(min($best_refsync, $t))")
  rm -rf "$work/target"
  read -r t m < <(measure voltar "$bin" --quiet backup --only "$vol" --target "$work/target")
  best_v=$(python3 -c "print(min($best_v, $t))"); rss_v=$(( m > rss_v ? m : rss_v ))
done
ref_size=$(stat -c %s "$work/ref.tar.zst")
v_size=$(find "$work/target" -name '*.tar.zst' -exec stat -c %s {} +)
echo
echo "== local target (dataset $(numfmt --to=iec "$size"))"
printf '%-28s %8s s  %10s\n' "tar | zstd -3 -T0" "$best_ref" "$(numfmt --to=iec "$ref_size")"
printf '%-28s %8s s\n' "  same + fsync of the output" "$best_refsync"
printf '%-28s %8s s  %10s  peak RSS %s MiB\n' "voltar backup" "$best_v" "$(numfmt --to=iec "$v_size")" "$((rss_v / 1024))"
python3 -c "print(f'ratio voltar/reference time: {$best_v/$best_ref:.2f} ({$best_v/$best_refsync:.2f} against the fsynced reference); size ratio {$v_size/$ref_size:.3f}')"

if [ "${BENCH_S3:-1}" = 1 ]; then
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_ENDPOINT_URL=$VOLTAR_TEST_S3_ENDPOINT
  bucket=voltar-bench-$$
  python3 - "$bucket" <<'PY'
import sys, urllib.request, os
req = urllib.request.Request(os.environ["AWS_ENDPOINT_URL"] + "/" + sys.argv[1], method="PUT")
urllib.request.urlopen(req).read()
PY
  echo
  echo "== S3 target (local moto server; in-memory, so sizes are kept modest)"
  read -r t m < <(measure s3 "$bin" --quiet backup --only "$vol" --target "s3://$bucket/big")
  python3 -c "print(f'voltar -> s3: {$t} s, {$size/$t/2**20:.0f} MiB/s of source, peak RSS {$m//1024} MiB')"
  # Same again on a dataset a quarter the size: RSS must not scale with the data.
  small=voltar-bench-small-$$
  docker volume create "$small" >/dev/null
  python3 scripts/gen_dataset.py "$(docker volume inspect -f '{{.Mountpoint}}' "$small")" "$(python3 -c "print($scale/4)")"
  read -r t2 m2 < <(measure s3small "$bin" --quiet backup --only "$small" --target "s3://$bucket/small")
  docker volume rm -f "$small" >/dev/null
  echo "peak RSS: $((m2 / 1024)) MiB at 1/4 size, $((m / 1024)) MiB at full size"
fi
