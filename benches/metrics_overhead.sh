#!/usr/bin/env bash
# Metrics overhead benchmark (issue 6): 4 KiB random reads at iodepth 32 through NBD, on a
# 3-node Basalt cluster with metrics on (scraped every second, as a busy Prometheus would)
# and on an identical cluster with `metrics.enabled = false`, in the same run.
#
# Both clusters run at once (release blockd processes on 127.0.<net>.1-3 and
# 127.0.<net+1>.1-3), each with a 512 MiB 3-replica volume written once before the jobs.
# The jobs alternate between them (on, off, on, off, ...) so drift in the machine's load
# hits both alike; the result is the ratio of the median IOPS, on ÷ off (goal ≥ 0.97).
#
# Environment:
#   BASALT_BENCH_SECS    seconds per job (default 10; plus 1 s ramp)
#   BASALT_BENCH_ROUNDS  jobs per cluster (default 3)
#   BASALT_BENCH_DIR     parent of the scratch directory (default /var/tmp; ~7 GiB free)
#   BASALT_BENCH_NET     third octet of the first cluster's addresses (default 91; +1 used)
#   BASALT_BENCH_KEEP=1  keep the scratch directory (logs, fio JSON)
#   BASALT_BIN_DIR       directory with blockd and basalt (default: build target/release)
#
# Needs fio, curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${BASALT_BENCH_SECS:-10}
ROUNDS=${BASALT_BENCH_ROUNDS:-3}
NET_ON=${BASALT_BENCH_NET:-91}
NET_OFF=$((NET_ON + 1))
TOKEN=bench-admin-token-0123456789
SECRET=bench-cluster-secret-0123456789abcdef
SIZE=512M

for tool in fio curl python3; do
    command -v "$tool" >/dev/null || { echo "metrics_overhead.sh: $tool is required" >&2; exit 1; }
done

if [ -z "${BASALT_BIN_DIR:-}" ]; then
    cargo build --release --quiet -p blockd --bin blockd -p basalt --bin basalt
    BIN=$PWD/target/release
else
    BIN=$(cd "$BASALT_BIN_DIR" && pwd)
fi

PARENT=${BASALT_BENCH_DIR:-/var/tmp}
free_kib=$(df --output=avail -k "$PARENT" | tail -1)
if [ "$free_kib" -lt $((7 * 1024 * 1024)) ]; then
    echo "metrics_overhead.sh: $PARENT has $((free_kib / 1024)) MiB free; 7 GiB needed" >&2
    exit 1
fi
WORK=$(mktemp -d "$PARENT/basalt-metrics-bench.XXXXXX")
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

# waits (bounded) until CMD succeeds
wait_until() {
    local what=$1; shift
    for _ in $(seq 300); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "metrics_overhead.sh: timed out waiting for $what" >&2
    exit 1
}

basalt_cli() { local net=$1; shift; "$BIN/basalt" --api "http://127.0.$net.1:9640" --token "$TOKEN" "$@"; }

cluster_up() {
    basalt_cli "$1" --json cluster status |
        python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["nodes"]["up"]==3 and s.get("leader") else 1)'
}

create_volume() {
    basalt_cli "$1" volume create bench --size $SIZE --replicas 3 || basalt_cli "$1" volume show bench
}

# start_cluster NET ENABLED
start_cluster() {
    local net=$1 enabled=$2 n
    for n in 1 2 3; do
        local join='bootstrap = true' dir="$WORK/c$net/node$n"
        [ "$n" = 1 ] || join="join = [\"127.0.$net.1:9641\"]"
        mkdir -p "$dir"
        cat >"$dir.toml" <<EOF
node_id = $n
data_dir = "$dir"

[nbd]
listen = "127.0.$net.$n:10809"

[api]
listen = "127.0.$net.$n:9640"

[peer]
listen = "127.0.$net.$n:9641"

[[drives]]
path = "$dir/drive0.img"
size = "1G"

[meta]
role = "voter"
$join

[metrics]
enabled = $enabled

[security]
cluster_secret = "$SECRET"

[[security.tokens]]
name = "admin"
role = "admin"
token = "$TOKEN"
EOF
        RUST_LOG=${BASALT_BENCH_LOG:-warn} "$BIN/blockd" --config "$dir.toml" >"$dir.log" 2>&1 &
        PIDS+=($!)
    done
    wait_until "cluster 127.0.$net.x" cluster_up "$net"
    wait_until "volume on 127.0.$net.x" create_volume "$net"
    local uri="nbd://127.0.$net.1:10809/bench"
    wait_until "export $uri" fio --name=probe --ioengine=nbd --uri="$uri" --rw=read --bs=4k --size=4k
    log "127.0.$net.x (metrics $enabled): prefill"
    fio --name=prefill --ioengine=nbd --uri="$uri" --rw=write --bs=1m --iodepth=8 --size=$SIZE \
        --output-format=json --output="$WORK/results/prefill-$net.json" >/dev/null
}

log "starting two 3-node clusters: metrics on (127.0.$NET_ON.x), off (127.0.$NET_OFF.x)"
start_cluster "$NET_ON" true
start_cluster "$NET_OFF" false
if curl -sf "http://127.0.$NET_OFF.1:9640/metrics" >/dev/null; then
    echo "metrics_overhead.sh: the metrics-off cluster serves /metrics" >&2
    exit 1
fi

# Scrapes every node of the metrics-on cluster every second while the jobs run.
(
    while true; do
        for n in 1 2 3; do curl -s -o /dev/null "http://127.0.$NET_ON.$n:9640/metrics" || true; done
        sleep 1
    done
) &
PIDS+=($!)

for round in $(seq "$ROUNDS"); do
    for side in on off; do
        net=$NET_ON
        [ "$side" = on ] || net=$NET_OFF
        log "round $round: metrics $side"
        fio --name="randread-4k-qd32" --ioengine=nbd --uri="nbd://127.0.$net.1:10809/bench" \
            --rw=randread --bs=4k --iodepth=32 --size=$SIZE --time_based --runtime="$SECS" \
            --ramp_time=1 --output-format=json --output="$WORK/results/$side.$round.json" >/dev/null
    done
done
scraped=$(curl -s "http://127.0.$NET_ON.1:9640/metrics")
grep -q '^basalt_volume_ops_total{volume="bench",op="read"}' <<<"$scraped" ||
    { echo "metrics_overhead.sh: the metrics-on cluster did not count the reads" >&2; exit 1; }

python3 - "$WORK/results" "$ROUNDS" "$SECS" <<'EOF'
import json, os, statistics, sys

results, rounds, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def iops(side, round_):
    with open(os.path.join(results, f"{side}.{round_}.json")) as f:
        text = f.read()
    job = json.loads(text[text.index("{"):])["jobs"][0]
    if job.get("error"):
        sys.exit(f"fio failed: {job['error']}")
    return job["read"]["iops"]

on = [iops("on", r) for r in range(1, rounds + 1)]
off = [iops("off", r) for r in range(1, rounds + 1)]
print(f"4 KiB randread QD32 through NBD, 3 replicas, {rounds} x {secs} s per side, alternating")
print("metrics on  (scraped every 1 s): " + ", ".join(f"{x:.0f}" for x in on) + " IOPS")
print("metrics off (metrics.enabled = false): " + ", ".join(f"{x:.0f}" for x in off) + " IOPS")
ratio = statistics.median(on) / statistics.median(off)
verdict = "met" if ratio >= 0.97 else "MISSED"
print(f"median on / median off = {ratio:.3f} (goal >= 0.97: {verdict})")
EOF
