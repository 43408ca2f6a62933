#!/usr/bin/env bash
# NBD benchmark (issue 4): fio's nbd engine against
#   (a) basalt-r3   a 3-node Basalt cluster (release blockd processes on 127.0.<net>.1-3),
#                   1 GiB volume with 3 replicas, through node 1's export
#   (b) basalt-r1   the same cluster, a 1 GiB volume with 1 replica
#   (c) nbdkit      `nbdkit file` (cache=none) serving a plain 1 GiB file
#   (d) qemu-nbd    `qemu-nbd -t --cache=none --aio=io_uring` serving the same file
# Every target is prefilled (1 GiB written sequentially) before its jobs run. Jobs: 4 KiB
# randread and randwrite at iodepth 1 and 32, 1 MiB sequential read and write at iodepth 8,
# one fio job (one NBD connection) each, all over TCP on loopback.
#
# Prints one Markdown table: IOPS, MB/s, p50/p99 latency (submission to completion) and, for
# the Basalt rows, the ratio to nbdkit. nbdkit's and qemu-nbd's writes are neither replicated
# nor synced; Basalt acknowledges a write once every replica has it durable.
#
# Environment:
#   BASALT_BENCH_SECS   seconds per job (default 10; plus 1 s ramp)
#   BASALT_BENCH_DIR    parent of the scratch directory (default /var/tmp; needs ~8 GiB free)
#   BASALT_BENCH_NET    third octet of the loopback addresses (default 90)
#   BASALT_BENCH_ONLY   space-separated subset of targets, e.g. "basalt-r3 nbdkit"
#   BASALT_BENCH_KEEP=1 keep the scratch directory (logs, fio JSON)
#   BASALT_BIN_DIR      directory with blockd and basalt (default: build target/release)
#
# Needs fio, nbdkit, qemu-nbd (scripts/test installs them) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${BASALT_BENCH_SECS:-10}
NET=${BASALT_BENCH_NET:-90}
ONLY=${BASALT_BENCH_ONLY:-basalt-r3 basalt-r1 nbdkit qemu-nbd}
TOKEN=bench-admin-token-0123456789
SECRET=bench-cluster-secret-0123456789abcdef
SIZE=1G

for tool in fio nbdkit qemu-nbd python3; do
    command -v "$tool" >/dev/null || { echo "nbd.sh: $tool is required" >&2; exit 1; }
done

if [ -z "${BASALT_BIN_DIR:-}" ]; then
    cargo build --release --quiet -p blockd --bin blockd -p basalt --bin basalt
    BIN=$PWD/target/release
else
    BIN=$(cd "$BASALT_BIN_DIR" && pwd)
fi

PARENT=${BASALT_BENCH_DIR:-/var/tmp}
# Three preallocated 2 GiB drives and a 1 GiB file, with some room to spare.
free_kib=$(df --output=avail -k "$PARENT" | tail -1)
if [ "$free_kib" -lt $((8 * 1024 * 1024)) ]; then
    echo "nbd.sh: $PARENT has $((free_kib / 1024)) MiB free; 8 GiB needed" >&2
    exit 1
fi
WORK=$(mktemp -d "$PARENT/basalt-nbd-bench.XXXXXX")
mkdir -p "$WORK/results"
PIDS=()

stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [ "${BASALT_BENCH_KEEP:-0}" = 1 ]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

log() { echo "[$(date +%T)] $*" >&2; }

# name rw bs iodepth
JOBS=(
    "randread-4k-qd1 randread 4k 1"
    "randread-4k-qd32 randread 4k 32"
    "randwrite-4k-qd1 randwrite 4k 1"
    "randwrite-4k-qd32 randwrite 4k 32"
    "read-1m-qd8 read 1m 8"
    "write-1m-qd8 write 1m 8"
)

# fill TARGET URI: writes the whole 1 GiB region once.
fill() {
    fio --name=prefill --ioengine=nbd --uri="$2" --rw=write --bs=1m --iodepth=8 --size=$SIZE \
        --output-format=json --output="$WORK/results/$1.prefill.json" >/dev/null
}

# run_jobs TARGET URI: every job, one JSON file each.
run_jobs() {
    local target=$1 uri=$2 job rw bs qd
    for spec in "${JOBS[@]}"; do
        read -r job rw bs qd <<<"$spec"
        log "$target: $job"
        fio --name="$job" --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" --iodepth="$qd" \
            --size=$SIZE --time_based --runtime="$SECS" --ramp_time=1 --lat_percentiles=1 \
            --output-format=json --output="$WORK/results/$target.$job.json" >/dev/null
    done
}

wanted() { [[ " $ONLY " == *" $1 "* ]]; }

# waits (bounded) until CMD succeeds
wait_until() {
    local what=$1; shift
    for _ in $(seq 300); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "nbd.sh: timed out waiting for $what" >&2
    exit 1
}

# ----------------------------------------------------------------------------- Basalt
basalt_cli() { "$BIN/basalt" --api "http://127.0.$NET.1:9640" --token "$TOKEN" "$@"; }

# create_volume NAME REPLICAS (or find it: an earlier attempt may have succeeded unseen)
create_volume() {
    basalt_cli volume create "$1" --size $SIZE --replicas "$2" || basalt_cli volume show "$1"
}

cluster_up() {
    basalt_cli --json cluster status |
        python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["nodes"]["up"]==3 and s.get("leader") else 1)'
}

start_cluster() {
    local n
    for n in 1 2 3; do
        local join='bootstrap = true'
        [ "$n" = 1 ] || join="join = [\"127.0.$NET.1:9641\"]"
        mkdir -p "$WORK/node$n"
        cat >"$WORK/node$n.toml" <<EOF
node_id = $n
data_dir = "$WORK/node$n"

[nbd]
listen = "127.0.$NET.$n:10809"

[api]
listen = "127.0.$NET.$n:9640"

[peer]
listen = "127.0.$NET.$n:9641"

[[drives]]
path = "$WORK/node$n/drive0.img"
size = "2G"

[meta]
role = "voter"
$join

[security]
cluster_secret = "$SECRET"

[[security.tokens]]
name = "admin"
role = "admin"
token = "$TOKEN"
EOF
        RUST_LOG=${BASALT_BENCH_LOG:-warn} "$BIN/blockd" --config "$WORK/node$n.toml" \
            >"$WORK/node$n.log" 2>&1 &
        PIDS+=($!)
    done
    wait_until "the cluster" cluster_up
}

if wanted basalt-r3 || wanted basalt-r1; then
    log "starting a 3-node cluster on 127.0.$NET.1-3"
    start_cluster
    for replicas in 3 1; do
        target=basalt-r$replicas
        wanted "$target" || continue
        wait_until "volume $target" create_volume "r$replicas" "$replicas"
        uri="nbd://127.0.$NET.1:10809/r$replicas"
        wait_until "export $uri" fio --name=probe --ioengine=nbd --uri="$uri" --rw=read --bs=4k --size=4k
        log "$target: prefill"
        fill "$target" "$uri"
        run_jobs "$target" "$uri"
    done
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    PIDS=()
fi

# ----------------------------------------------------------------------------- References
FILE=$WORK/plain.img
if wanted nbdkit || wanted qemu-nbd; then
    truncate -s $SIZE "$FILE"
fi

if wanted nbdkit; then
    nbdkit -f -i "127.0.$NET.10" -p 10809 file "$FILE" cache=none >"$WORK/nbdkit.log" 2>&1 &
    PIDS+=($!)
    uri="nbd://127.0.$NET.10:10809/"
    wait_until "nbdkit" fio --name=probe --ioengine=nbd --uri="$uri" --rw=read --bs=4k --size=4k
    log "nbdkit: prefill"
    fill nbdkit "$uri"
    run_jobs nbdkit "$uri"
    stop_pid "${PIDS[-1]}"
    unset 'PIDS[-1]'
fi

if wanted qemu-nbd; then
    qemu-nbd -t -f raw --cache=none --aio=io_uring --shared=8 -b "127.0.$NET.11" -p 10809 \
        -x plain "$FILE" >"$WORK/qemu-nbd.log" 2>&1 &
    PIDS+=($!)
    uri="nbd://127.0.$NET.11:10809/plain"
    wait_until "qemu-nbd" fio --name=probe --ioengine=nbd --uri="$uri" --rw=read --bs=4k --size=4k
    log "qemu-nbd: prefill"
    fill qemu-nbd "$uri"
    run_jobs qemu-nbd "$uri"
    stop_pid "${PIDS[-1]}"
    unset 'PIDS[-1]'
fi

# ----------------------------------------------------------------------------- Table
JOB_NAMES=$(for spec in "${JOBS[@]}"; do echo "${spec%% *}"; done)
python3 - "$WORK/results" "$SECS" "$ONLY" $JOB_NAMES <<'EOF'
import json, os, sys

results, secs, only, jobs = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4:]
order = [t for t in ["basalt-r3", "basalt-r1", "nbdkit", "qemu-nbd"] if t in only]

def load(target, job):
    path = os.path.join(results, f"{target}.{job}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        text = f.read()
    report = json.loads(text[text.index("{"):])
    j = report["jobs"][0]
    if j.get("error"):
        return {"error": j["error"]}
    side = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
    pct = side.get("lat_ns", {}).get("percentile") or side["clat_ns"].get("percentile", {})
    return {
        "iops": side["iops"],
        "mbs": side["bw_bytes"] / 1e6,
        "p50": pct.get("50.000000", 0) / 1000,
        "p99": pct.get("99.000000", 0) / 1000,
    }

def lat(us):
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"

print(f"fio nbd engine, {secs} s per job, 1 GiB region; latency = submission to completion")
print()
print("| job | target | IOPS | MB/s | p50 | p99 | IOPS ÷ nbdkit |")
print("|---|---|---:|---:|---:|---:|---:|")
failed = False
summary = {}
for job in jobs:
    base = load("nbdkit", job)
    for target in order:
        r = load(target, job)
        if r is None or "error" in r:
            failed = True
            print(f"| {job} | {target} | failed | | | | |")
            continue
        ratio = ""
        if target.startswith("basalt") and base and "error" not in base and base["iops"] > 0:
            ratio = f"{r['iops'] / base['iops']:.2f}"
            summary[(target, job)] = r["iops"] / base["iops"]
        print(f"| {job} | {target} | {r['iops']:.0f} | {r['mbs']:.1f} | {lat(r['p50'])} | {lat(r['p99'])} | {ratio} |")
print()
print("nbdkit (file, cache=none) and qemu-nbd (cache=none) write to one local file: their writes")
print("are not replicated and not synced. basalt-r3 acknowledges a write once all 3 replicas have")
print("it durable; basalt-r1 once its single copy is durable.")
targets = [("randread-4k-qd32", 0.6), ("randwrite-4k-qd32", 0.25)]
for job, goal in targets:
    got = summary.get(("basalt-r3", job))
    if got is not None:
        verdict = "met" if got >= goal else "MISSED"
        print(f"target basalt-r3 {job} >= {goal}x nbdkit: {got:.2f}x ({verdict})")
sys.exit(1 if failed else 0)
EOF
