#!/usr/bin/env bash
# Benchmark voltar against the reference pipelines on the same data, in the same run:
#   backup   `voltar backup` vs `tar -cf - | zstd -3 -T0 > FILE` (and that plus an fsync of FILE, as voltar makes its
#            archive durable); compressed sizes
#   restore  `voltar restore --to-dir` and `voltar restore --source VOL --no-safety-backup` (into the volume) vs
#            `zstd -dc A | tar --xattrs --numeric-owner -xpf -` on the same archive A (voltar's own object), and that
#            plus `sync -f` (voltar's restore ends with one syncfs); and `voltar restore --to-dir --no-sync` vs the
#            reference alone (neither waits for the disk)
#   verify   `voltar verify` vs `zstd -dc A > /dev/null` (and vs that plus `sha256sum A`, what verify also does,
#            one after the other and side by side)
#   restic   when installed (Debian's `restic`): its backup and restore of the same data in the same rounds;
#            otherwise "restic not installed, skipped"
#   s3       throughput to the local S3 test server, peak RSS at two dataset sizes (memory stays flat)
#   engine   the engine data path against the host path: the same volume backed up with `data-path = "engine"`
#            (a helper container, the engine's archive API, repacked) and with `data-path = "host"`, ABBA; both
#            throughputs, CPU, peak RSS, and the engine's own CPU (dockerd builds the tar) per engine run
# Backup, restore and verify runs are ABBA-alternated (reference, voltar, voltar, reference, ...): every round's
# ratio voltar/reference is printed, wall-clock AND CPU (user + sys), then the medians and both peak RSS. The
# load average is printed at the start and the end: with it above the number of cores, wall-clock ratios are
# noise (compare the CPU ratios), and absolute times mean nothing across runs; each round's line ends with the
# 1-minute load average at its end. The backup section first prints what each side is (tar and zstd versions,
# zstd workers and job size, what voltar does on top: sha256, fsync, the target check, docker discovery).
#
#   scripts/bench.sh [SCALE]      # SCALE 1.0 ≈ 1.7 GiB (default 1.0); 0.25 is fine while iterating
#   BENCH_ONLY=restore,verify     # only these parts (backup, restore, verify, s3, engine; default all). The backup itself
#                                 # always runs once: restore and verify read its archive
#   BENCH_S3=0                    # skip the S3 case (as BENCH_ONLY without s3)
#   BENCH_ROUNDS=4                # ABBA rounds (default 4: two AB pairs, two BA pairs)
#   BENCH_BIN=path                # time this voltar binary instead of building target/release/voltar
#   BENCH_DATA=dir                # copy this tree into the volume instead of generating the dataset (SCALE unused)
#   BENCH_FRESH_FS=0              # restore --to-dir into $BENCH_TMPDIR like the rest, instead of into a new ext4
#                                 # (a loop file, made and mounted before every round, untimed). Default 1: on a
#                                 # filesystem where the previous round's tree was just deleted, ext4's inode
#                                 # allocator (recently_deleted) costs both sides far more, and by round: seen
#                                 # here, the reference restore took 5.9 s in one round and 24.9 s in the next
#   BENCH_TMPDIR=/dev/shm         # where the target and --to-dir output go (default /var/tmp). On a disk other
#                                 # processes write to, restore's syncfs also waits for their dirty pages: tmpfs
#                                 # shows voltar's own cost (the volume stays where Docker keeps it)
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-1.0}
eval "$(scripts/env.sh all)"
apt-get install -y -q zstd time >/dev/null 2>&1 || true
only=${BENCH_ONLY:-backup,restore,verify,s3,engine}
[ "${BENCH_S3:-1}" = 1 ] || only=${only//s3/}
want() { [[ ",$only," == *",$1,"* ]]; }
rounds=${BENCH_ROUNDS:-4}
if [ -n "${BENCH_BIN:-}" ]; then bin=$BENCH_BIN; else cargo build --release -q; bin=$PWD/target/release/voltar; fi
work=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/voltar-bench.XXXXXX")
vol=voltar-bench-$$
export VOLTAR_STATE_DIR=$work/state
cleanup() {
  if mountpoint -q "$work/fs" 2>/dev/null; then umount "$work/fs" || true; fi
  docker volume rm -f "$vol" >/dev/null 2>&1 || true; rm -rf "$work"
  echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
}
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores; above that, timings are noise: read the cpu ratios)"
trap cleanup EXIT

docker volume create "$vol" >/dev/null
mp=$(docker volume inspect -f '{{.Mountpoint}}' "$vol")
if [ -n "${BENCH_DATA:-}" ]; then
  echo "copying $BENCH_DATA into volume $vol ..." >&2
  cp -a "$BENCH_DATA/." "$mp/"
else
  echo "generating dataset (scale $scale) in volume $vol ..." >&2
  python3 scripts/gen_dataset.py "$mp" "$scale"
fi
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

# ABBA comparison of one voltar command with its reference, both preceded by an untimed setup.
#   abba LABEL REF_SETUP REF_CMD V_SETUP V_CMD [X_LABEL X_SETUP X_CMD]...
# Prints each round's ratio voltar/reference (wall, and CPU = user + sys), the medians and both peak RSS. Each
# extra X (e.g. the reference plus what voltar also guarantees, or restic) runs once per round after the pair and
# is reported as a ratio voltar/X too.
abba() {
  local label=$1 ref_setup=$2 ref_cmd=$3 v_setup=$4 v_cmd=$5; shift 5
  local xs=("$@") nx=$(( $# / 3 ))
  local ratios=() cratios=() rss=0 rss_ref=0 t_ref t_v m m_ref c_ref c_v i t c line
  local -a xr xc xrss
  for round in $(seq 1 "$rounds"); do
    # ABBA: rounds 1 and 4 run the reference first, rounds 2 and 3 voltar first.
    if [ $(( round % 4 )) -le 1 ]; then
      eval "$ref_setup"; read -r t_ref m_ref c_ref < <(measure ref sh -c "$ref_cmd")
      eval "$v_setup"; read -r t_v m c_v < <(measure voltar sh -c "$v_cmd")
    else
      eval "$v_setup"; read -r t_v m c_v < <(measure voltar sh -c "$v_cmd")
      eval "$ref_setup"; read -r t_ref m_ref c_ref < <(measure ref sh -c "$ref_cmd")
    fi
    rss=$(( m > rss ? m : rss )); rss_ref=$(( m_ref > rss_ref ? m_ref : rss_ref ))
    ratios+=("$(python3 -c "print(f'{$t_v/max($t_ref, 0.01):.2f}')")")
    cratios+=("$(python3 -c "print(f'{$c_v/max($c_ref, 0.01):.2f}')")")
    line=""
    for (( i = 0; i < nx; i++ )); do
      eval "${xs[3*i+1]}"; read -r t m c < <(measure "x$i" sh -c "${xs[3*i+2]}")
      xr[i]="${xr[i]:-} $(python3 -c "print(f'{$t_v/max($t, 0.01):.2f}')")"
      xc[i]="${xc[i]:-} $(python3 -c "print(f'{$c_v/max($c, 0.01):.2f}')")"
      xrss[i]=$(( m > ${xrss[i]:-0} ? m : ${xrss[i]:-0} ))
      line+="  (${xs[3*i]} $t s, cpu $c s)"
    done
    printf '  round %d: reference %6.2f s  voltar %6.2f s  ratio %s  (cpu %s s / %s s: %s)%s  load %s\n' "$round" "$t_ref" \
      "$t_v" "${ratios[-1]}" "$c_ref" "$c_v" "${cratios[-1]}" "$line" "$(cut -d' ' -f1 /proc/loadavg)"
  done
  local extra=()
  for (( i = 0; i < nx; i++ )); do extra+=("${xs[3*i]}" "${xr[i]}" "${xc[i]}" "${xrss[i]}"); done
  python3 - "$label" "$rss" "$rss_ref" "${ratios[*]}" "${cratios[*]}" "${extra[@]}" <<'PY'
import statistics, sys
label, rss, rss_ref, r, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(), sys.argv[5].split()
med = lambda v: statistics.median(map(float, v.split() if isinstance(v, str) else v))
print(f"{label}: median ratio voltar/reference wall {med(r):.2f}, cpu {med(c):.2f}; peak RSS voltar {rss // 1024} MiB, reference {rss_ref // 1024} MiB")
x = sys.argv[6:]
for i in range(0, len(x), 4):
    print(f"  against {x[i]}: wall {med(x[i+1]):.2f}, cpu {med(x[i+2]):.2f}; its peak RSS {int(x[i+3]) // 1024} MiB")
PY
}

# restic (Debian's `restic`), when installed: the same data through it, in the same rounds.
restic_ok=0
if command -v restic >/dev/null; then
  restic_ok=1
  export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$work/restic RESTIC_CACHE_DIR=$work/restic-cache
  echo "restic: $(restic version | head -1)" >&2
else
  echo "restic not installed (apt-get install restic), skipped" >&2
fi
restic_backup=(); restic_restore=()
if [ "$restic_ok" = 1 ]; then
  restic_backup=("restic backup" 'rm -rf "$RESTIC_REPOSITORY" "$RESTIC_CACHE_DIR"; restic init -q >/dev/null' "restic -q backup '$mp'")
  restic_restore=("restic restore" 'rm -rf "$work/out"' "restic -q restore latest --target '$work/out'")
fi

# Warm the page cache once so every run reads the same way.
tar -cf - -C "$mp" . >/dev/null
if want backup; then
  echo
  echo "== backup to a local target (dataset $(numfmt --to=iec "$size")): voltar backup vs tar -cf - | zstd -3 -T0 > FILE"
  # What the two sides are, so that figures from different runs (or machines) can be compared: the compressor's
  # version and worker count differ between the CLI and voltar's built-in zstd, and only voltar hashes (sha256)
  # and fsyncs what it writes (the "reference + fsync" line adds the fsync to the reference).
  zstd_cli=$(zstd -V | sed -n 's/.* v\([0-9.]*\),.*/\1/p')
  zstd_ref_threads=$(echo | zstd -vv -3 -T0 -c 2>&1 >/dev/null | sed -n 's/.*--threads=\([0-9]*\).*/\1/p')
  echo "   reference: $(tar --version | head -1), no -S | zstd $zstd_cli -3 -T0 = ${zstd_ref_threads:-?} workers, its default" \
    "job size (8 MiB at level 3), frame checksum on; output not fsynced"
  echo "   voltar:    zstd $(sed -n 's/^version = "\(.*+zstd\.\)\(.*\)"/\2/p' Cargo.lock | head -1) (built in) level 3," \
    "$(( $(nproc) + 1 )) workers (cores + 1), 2 MiB jobs, overlap log 3, frame checksum on; + sha256 of the stored" \
    "bytes, the archive fsynced, the target checked first; wall time includes docker discovery"
  abba "backup" \
    ':' "tar -cf - -C '$mp' . | zstd -3 -T0 -q > '$work/ref.tar.zst'" \
    'rm -rf "$work/target"' "'$bin' --quiet backup --only '$vol' --target '$work/target'" \
    "reference + fsync" ':' "tar -cf - -C '$mp' . | zstd -3 -T0 -q > '$work/ref.tar.zst' && sync '$work/ref.tar.zst'" \
    "${restic_backup[@]}"
  ref_size=$(stat -c %s "$work/ref.tar.zst")
  v_size=$(find "$work/target" -name '*.tar.zst' -exec stat -c %s {} +)
  python3 -c "print(f'size: voltar {$v_size} bytes, reference {$ref_size} bytes, ratio {$v_size/$ref_size:.3f}')"
elif want restore || want verify; then
  # Only the archive restore and verify read.
  measure voltar "$bin" --quiet backup --only "$vol" --target "$work/target" >/dev/null
fi
if [ "$restic_ok" = 1 ] && ! want backup && want restore; then
  restic init -q >/dev/null && restic -q backup "$mp" >/dev/null
fi

if want engine; then
  echo
  echo "== engine data path vs host path: voltar backup with data-path = \"engine\" vs = \"host\" (same volume, ABBA), load average $(cut -d' ' -f1-3 /proc/loadavg)"
  printf '[docker]\ndata-path = "engine"\nhelper-image = "voltar-test:latest"\n' > "$work/engine.toml"
  printf '[docker]\ndata-path = "host"\n' > "$work/host.toml"
  dpid=$(cat /var/run/docker.pid)
  # dockerd's CPU (user + sys, its own and its reaped children's), in clock ticks.
  dcpu() { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$dpid/stat"; }
  hz=$(getconf CLK_TCK)
  eng_t=(); host_t=(); eng_c=(); host_c=(); eng_d=(); eng_rss=0; host_rss=0
  for round in $(seq 1 "$rounds"); do
    if [ $(( round % 4 )) -le 1 ]; then order="host engine"; else order="engine host"; fi
    for side in $order; do
      rm -rf "$work/t-$side"
      d0=$(dcpu)
      read -r t m c < <(measure "$side" "$bin" --quiet -c "$work/$side.toml" backup --only "$vol" --target "$work/t-$side")
      d1=$(dcpu)
      if [ "$side" = engine ]; then
        eng_t+=("$t"); eng_c+=("$c"); eng_rss=$(( m > eng_rss ? m : eng_rss ))
        eng_d+=("$(python3 -c "print(f'{($d1 - $d0) / $hz:.2f}')")")
      else
        host_t+=("$t"); host_c+=("$c"); host_rss=$(( m > host_rss ? m : host_rss ))
      fi
    done
    printf '  round %d: host path %6.2f s (cpu %s s)  engine %6.2f s (cpu %s s, dockerd cpu %s s)\n' "$round" \
      "${host_t[-1]}" "${host_c[-1]}" "${eng_t[-1]}" "${eng_c[-1]}" "${eng_d[-1]}"
  done
  python3 - "$size" "$host_rss" "$eng_rss" "${host_t[*]}" "${eng_t[*]}" "${host_c[*]}" "${eng_c[*]}" "${eng_d[*]}" <<'PY'
import statistics, sys
size, host_rss, eng_rss = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ht, et, hc, ec, ed = (list(map(float, a.split())) for a in sys.argv[4:9])
med = statistics.median
mib = size / 2**20
print(f"engine vs host: host path {mib / med(ht):.0f} MiB/s (median {med(ht):.2f} s, cpu {med(hc):.2f} s, peak RSS {host_rss // 1024} MiB); "
      f"engine {mib / med(et):.0f} MiB/s (median {med(et):.2f} s, cpu {med(ec):.2f} s + dockerd {med(ed):.2f} s, peak RSS {eng_rss // 1024} MiB); "
      f"ratio engine/host wall {med(et) / med(ht):.2f}")
PY
  for side in host engine; do
    printf '  %s: ' "$side"; python3 -c "import json,glob; m=json.load(open(glob.glob('$work/t-$side/*/manifest.json')[0])); s=m['sources'][0]; print(s['counts'], s.get('read-via'))"
  done
fi

archive=$(find "$work/target" -name '*.tar.zst' 2>/dev/null | head -1 || true)
tarx="tar --xattrs --numeric-owner -xpf -"
# Where restore --to-dir writes: a new ext4 per round (see BENCH_FRESH_FS), or $work/out.
fresh_fs() {
  if mountpoint -q "$work/fs"; then umount "$work/fs"; fi
  mkdir -p "$work/fs"
  rm -f "$work/fs.img"
  truncate -s $(( size * 3 + (1 << 30) )) "$work/fs.img"
  mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$work/fs.img"
  mount -o loop "$work/fs.img" "$work/fs"
}
if [ "${BENCH_FRESH_FS:-1}" = 1 ]; then
  out=$work/fs/out; fresh='fresh_fs'
else
  out=$work/out; fresh='rm -rf "$work/out"'
fi
[ "$restic_ok" = 1 ] && restic_restore=("restic restore" "$fresh" "restic -q restore latest --target '$out'")
if want restore; then
  echo
  echo "== restore (archive $(numfmt --to=iec "$(stat -c %s "$archive")"), load average $(cut -d' ' -f1-3 /proc/loadavg))"
  echo "-- into a directory$([ "${BENCH_FRESH_FS:-1}" = 1 ] && echo " (a new ext4 each round)"): voltar restore latest --to-dir vs zstd -dc A | $tarx -C DIR"
  abba "restore --to-dir" \
    "$fresh; mkdir '$out'" "zstd -dc '$archive' | $tarx -C '$out'" \
    "$fresh" "'$bin' --quiet restore latest --target '$work/target' --to-dir '$out'" \
    "reference + syncfs" "$fresh; mkdir '$out'" "zstd -dc '$archive' | $tarx -C '$out' && sync -f '$out'" \
    "${restic_restore[@]}"
  # Like for like: neither side waits for the disk (voltar --no-sync, where nothing is replaced, flushes nothing).
  echo "-- into a directory, not flushed: voltar restore latest --to-dir --no-sync vs zstd -dc A | $tarx -C DIR"
  abba "restore --to-dir --no-sync" \
    "$fresh; mkdir '$out'" "zstd -dc '$archive' | $tarx -C '$out'" \
    "$fresh" "'$bin' --quiet restore latest --target '$work/target' --to-dir '$out' --no-sync"
  if mountpoint -q "$work/fs"; then umount "$work/fs"; fi
  rm -rf "$work/out" "$work/fs" "$work/fs.img"
  echo "-- into the volume: voltar restore latest --source VOL --no-safety-backup vs emptying it + zstd -dc A | $tarx -C MOUNTPOINT"
  abba "restore into a volume" \
    ':' "find '$mp' -mindepth 1 -delete && zstd -dc '$archive' | $tarx -C '$mp'" \
    ':' "'$bin' --quiet restore latest --target '$work/target' --source '$vol' --no-safety-backup" \
    "reference + syncfs" ':' "find '$mp' -mindepth 1 -delete && zstd -dc '$archive' | $tarx -C '$mp' && sync -f '$mp'"
fi
if want verify; then
  echo
  echo "== verify, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  abba "verify" \
    ':' "zstd -dc '$archive' > /dev/null" \
    ':' "'$bin' --quiet verify latest --target '$work/target'" \
    "zstd -dc + sha256sum" ':' "sha256sum '$archive' > /dev/null && zstd -dc '$archive' > /dev/null" \
    "zstd -dc and sha256sum side by side" ':' "sha256sum '$archive' > /dev/null & zstd -dc '$archive' > /dev/null; wait"
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
  # And back: restore --to-dir from each, streamed from the server (get, sha256 aside, zstd -d, unpack).
  rm -rf "$work/s3out"
  read -r rt rm_ _ < <(measure s3restore "$bin" --quiet restore latest --source "$vol" --target "s3://$bucket/big" --to-dir "$work/s3out")
  rm -rf "$work/s3out"
  read -r rt2 rm2 _ < <(measure s3restoresmall "$bin" --quiet restore latest --target "s3://$bucket/small" --to-dir "$work/s3out")
  rm -rf "$work/s3out"
  python3 -c "print(f's3 -> voltar restore --to-dir: {$rt} s, {$size/$rt/2**20:.0f} MiB/s of source; peak RSS {$rm2//1024} MiB at 1/4 size, {$rm_//1024} MiB at full size')"
fi
