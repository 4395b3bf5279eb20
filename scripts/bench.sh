#!/usr/bin/env bash
# Benchmark voltar against the reference pipelines on the same data, in the same run:
#   backup   `voltar backup` vs `tar -cf - | zstd -3 -T0` (time, compressed size, voltar's peak RSS)
#   restore  `voltar restore --to-dir` and `voltar restore --source VOL --no-safety-backup` (into the volume) vs
#            `zstd -dc A | tar --xattrs --numeric-owner -xpf -` on the same archive A (voltar's own object)
#   verify   `voltar verify` vs `zstd -dc A > /dev/null` (and vs that plus `sha256sum A`, what verify also does)
#   s3       throughput to the local S3 test server, peak RSS at two dataset sizes (memory stays flat)
# Restore and verify runs are ABBA-alternated (reference, voltar, voltar, reference, ...): every pair's ratio is
# printed, then the median. Timings on a shared 2-core machine are noisy: compare ratios, never absolute times.
#
#   scripts/bench.sh [SCALE]      # SCALE 1.0 ≈ 1.7 GiB (default 1.0); 0.25 is fine while iterating
#   BENCH_ONLY=restore,verify     # only these parts (backup, restore, verify, s3; default all). The backup itself
#                                 # always runs once: restore and verify read its archive
#   BENCH_S3=0                    # skip the S3 case (as BENCH_ONLY without s3)
#   BENCH_ROUNDS=4                # ABBA rounds for restore and verify (default 4: two AB pairs, two BA pairs)
#   BENCH_BIN=path                # time this voltar binary instead of building target/release/voltar
#   BENCH_TMPDIR=/dev/shm         # where the target and --to-dir output go (default /var/tmp). On a disk other
#                                 # processes write to, restore's syncfs also waits for their dirty pages: tmpfs
#                                 # shows voltar's own cost (the volume stays where Docker keeps it)
# Next to each wall-clock ratio the CPU ratio (user + sys) is printed: on a machine busy with other work it moves
# much less than wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-1.0}
eval "$(scripts/env.sh all)"
apt-get install -y -q zstd time >/dev/null 2>&1 || true
only=${BENCH_ONLY:-backup,restore,verify,s3}
[ "${BENCH_S3:-1}" = 1 ] || only=${only//s3/}
want() { [[ ",$only," == *",$1,"* ]]; }
rounds=${BENCH_ROUNDS:-4}
if [ -n "${BENCH_BIN:-}" ]; then bin=$BENCH_BIN; else cargo build --release -q; bin=$PWD/target/release/voltar; fi
work=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/voltar-bench.XXXXXX")
vol=voltar-bench-$$
export VOLTAR_STATE_DIR=$work/state
cleanup() { docker volume rm -f "$vol" >/dev/null 2>&1 || true; rm -rf "$work"; }
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
trap cleanup EXIT

docker volume create "$vol" >/dev/null
mp=$(docker volume inspect -f '{{.Mountpoint}}' "$vol")
echo "generating dataset (scale $scale) in volume $vol ..." >&2
python3 scripts/gen_dataset.py "$mp" "$scale"
size=$(du -sb "$mp" | cut -f1)
echo "dataset: $(numfmt --to=iec "$size") in $(find "$mp" -type f | wc -l) files" >&2
sync

measure() { # name, command...: prints "seconds maxrss_kb cpu_seconds" (cpu: user + sys)
  local name=$1; shift
  # Start each run with no dirty pages from the previous one: voltar fsyncs its archive (durability), so it would
  # otherwise also pay for writing back the reference's output.
  sync
  /usr/bin/time -f "%e %M %U %S" -o "$work/$name.time" "$@" >/dev/null 2>"$work/$name.err" || { cat "$work/$name.err" >&2; exit 1; }
  tail -1 "$work/$name.time" | awk '{ printf "%s %s %.2f\n", $1, $2, $3 + $4 }'
}

# Warm the page cache once so both read the same way, then alternate runs and keep the best of each.
tar -cf - -C "$mp" . >/dev/null
best_ref=999999; best_refsync=999999; best_v=999999; rss_v=0
rounds_backup=2; want backup || rounds_backup=1
for round in $(seq 1 $rounds_backup); do
  if ! want backup; then # only the archive restore and verify read
    rm -rf "$work/target"; measure voltar "$bin" --quiet backup --only "$vol" --target "$work/target" >/dev/null; break
  fi
  read -r t m _ < <(measure ref sh -c "tar -cf - -C '$mp' . | zstd -3 -T0 -q > '$work/ref.tar.zst'")
  best_ref=$(python3 -c "print(min($best_ref, $t))")
  # The same, made durable as voltar makes its archive (fsync before it counts as written).
  read -r t m _ < <(measure refsync sh -c "tar -cf - -C '$mp' . | zstd -3 -T0 -q > '$work/ref.tar.zst' && sync '$work/ref.tar.zst'")
  best_refsync=$(python3 -c "print(min($best_refsync, $t))")
  rm -rf "$work/target"
  read -r t m _ < <(measure voltar "$bin" --quiet backup --only "$vol" --target "$work/target")
  best_v=$(python3 -c "print(min($best_v, $t))"); rss_v=$(( m > rss_v ? m : rss_v ))
done
if want backup; then
ref_size=$(stat -c %s "$work/ref.tar.zst")
v_size=$(find "$work/target" -name '*.tar.zst' -exec stat -c %s {} +)
echo
echo "== local target (dataset $(numfmt --to=iec "$size"))"
printf '%-28s %8s s  %10s\n' "tar | zstd -3 -T0" "$best_ref" "$(numfmt --to=iec "$ref_size")"
printf '%-28s %8s s\n' "  same + fsync of the output" "$best_refsync"
printf '%-28s %8s s  %10s  peak RSS %s MiB\n' "voltar backup" "$best_v" "$(numfmt --to=iec "$v_size")" "$((rss_v / 1024))"
python3 -c "print(f'ratio voltar/reference time: {$best_v/$best_ref:.2f} ({$best_v/$best_refsync:.2f} against the fsynced reference); size ratio {$v_size/$ref_size:.3f}')"
fi

# ABBA comparison of one voltar command with its reference, both preceded by an untimed setup.
#   abba LABEL REF_SETUP REF_CMD V_SETUP V_CMD [REF2_LABEL REF2_CMD]
# Prints each round's ratio voltar/reference, the medians and voltar's peak RSS. REF2 (optional) is a second
# reference run in the same rounds (e.g. the reference plus what voltar also guarantees), reported as a ratio too.
abba() {
  local label=$1 ref_setup=$2 ref_cmd=$3 v_setup=$4 v_cmd=$5 ref2_label=${6:-} ref2_cmd=${7:-}
  local ratios=() ratios2=() cratios=() rss=0 t_ref t_v t_ref2 m c_ref c_v line=""
  for round in $(seq 1 "$rounds"); do
    t_ref2=""
    # ABBA: rounds 1 and 4 run the reference first, rounds 2 and 3 voltar first.
    if [ $(( round % 4 )) -le 1 ]; then
      eval "$ref_setup"; read -r t_ref m c_ref < <(measure ref sh -c "$ref_cmd")
      eval "$v_setup"; read -r t_v m c_v < <(measure voltar sh -c "$v_cmd")
    else
      eval "$v_setup"; read -r t_v m c_v < <(measure voltar sh -c "$v_cmd")
      eval "$ref_setup"; read -r t_ref _ c_ref < <(measure ref sh -c "$ref_cmd")
    fi
    rss=$(( m > rss ? m : rss ))
    if [ -n "$ref2_cmd" ]; then
      eval "$ref_setup"; read -r t_ref2 _ _ < <(measure ref2 sh -c "$ref2_cmd")
      ratios2+=("$(python3 -c "print(f'{$t_v/$t_ref2:.2f}')")")
    fi
    ratios+=("$(python3 -c "print(f'{$t_v/$t_ref:.2f}')")")
    cratios+=("$(python3 -c "print(f'{$c_v/max($c_ref, 0.01):.2f}')")")
    printf '  round %d: reference %6.2f s  voltar %6.2f s  ratio %s  (cpu %s s / %s s: %s)%s\n' "$round" "$t_ref" "$t_v" \
      "${ratios[-1]}" "$c_ref" "$c_v" "${cratios[-1]}" \
      "${t_ref2:+  ($ref2_label $t_ref2 s: ${ratios2[-1]})}"
  done
  python3 - "$label" "$rss" "$ref2_label" "${ratios[*]}" "${ratios2[*]:-}" "${cratios[*]}" <<'PY'
import statistics, sys
label, rss, ref2, r, r2, c = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split(), sys.argv[5].split(), sys.argv[6].split()
extra = f"; against {ref2}: {statistics.median(map(float, r2)):.2f}" if r2 else ""
print(f"{label}: median ratio voltar/reference {statistics.median(map(float, r)):.2f}{extra}; cpu ratio {statistics.median(map(float, c)):.2f}; voltar peak RSS {rss // 1024} MiB")
PY
}

archive=$(find "$work/target" -name '*.tar.zst' | head -1)
tarx="tar --xattrs --numeric-owner -xpf -"
if want restore; then
  echo
  echo "== restore (archive $(numfmt --to=iec "$(stat -c %s "$archive")"), load average $(cut -d' ' -f1-3 /proc/loadavg))"
  echo "-- into a directory: voltar restore latest --to-dir vs zstd -dc A | $tarx -C DIR"
  abba "restore --to-dir" \
    'rm -rf "$work/out"; mkdir "$work/out"' "zstd -dc '$archive' | $tarx -C '$work/out'" \
    'rm -rf "$work/out"' "'$bin' --quiet restore latest --target '$work/target' --to-dir '$work/out'" \
    "reference + syncfs" "zstd -dc '$archive' | $tarx -C '$work/out' && sync -f '$work/out'"
  rm -rf "$work/out"
  echo "-- into the volume: voltar restore latest --source VOL --no-safety-backup vs emptying it + zstd -dc A | $tarx -C MOUNTPOINT"
  abba "restore into a volume" \
    ':' "find '$mp' -mindepth 1 -delete && zstd -dc '$archive' | $tarx -C '$mp'" \
    ':' "'$bin' --quiet restore latest --target '$work/target' --source '$vol' --no-safety-backup" \
    "reference + syncfs" "find '$mp' -mindepth 1 -delete && zstd -dc '$archive' | $tarx -C '$mp' && sync -f '$mp'"
fi
if want verify; then
  echo
  echo "== verify, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  abba "verify" \
    ':' "zstd -dc '$archive' > /dev/null" \
    ':' "'$bin' --quiet verify latest --target '$work/target'" \
    "zstd -dc + sha256sum" "sha256sum '$archive' > /dev/null && zstd -dc '$archive' > /dev/null"
fi
if want s3; then
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_ENDPOINT_URL=$VOLTAR_TEST_S3_ENDPOINT
  bucket=voltar-bench-$$
  python3 - "$bucket" <<'PY'
import sys, urllib.request, os
req = urllib.request.Request(os.environ["AWS_ENDPOINT_URL"] + "/" + sys.argv[1], method="PUT")
urllib.request.urlopen(req).read()
PY
  echo
  echo "== S3 target (local moto server; in-memory, so sizes are kept modest)"
  read -r t m _ < <(measure s3 "$bin" --quiet backup --only "$vol" --target "s3://$bucket/big")
  python3 -c "print(f'voltar -> s3: {$t} s, {$size/$t/2**20:.0f} MiB/s of source, peak RSS {$m//1024} MiB')"
  # Same again on a dataset a quarter the size: RSS must not scale with the data.
  small=voltar-bench-small-$$
  docker volume create "$small" >/dev/null
  python3 scripts/gen_dataset.py "$(docker volume inspect -f '{{.Mountpoint}}' "$small")" "$(python3 -c "print($scale/4)")"
  read -r t2 m2 _ < <(measure s3small "$bin" --quiet backup --only "$small" --target "s3://$bucket/small")
  docker volume rm -f "$small" >/dev/null
  echo "peak RSS: $((m2 / 1024)) MiB at 1/4 size, $((m / 1024)) MiB at full size"
fi
