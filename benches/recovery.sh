#!/usr/bin/env bash
# Recovery speed benchmark (issue 5): how fast a 3-node Basalt cluster (release blockd
# processes on 127.0.<net>.1-4) brings data back to full redundancy, next to the raw
# sequential write speed of the disk it runs on.
#
#   (a) disk        fio, 1 MiB sequential writes (direct, fsync at the end) to a plain file in
#                   the scratch directory: the reference MB/s
#   (b) recovery    node 3 is stopped, $SIZE is written to a 3-replica volume through node 1's
#                   NBD export (fio, 1 MiB sequential), node 3 is started again; timed from its
#                   start until `GET /v1/pgs` shows every PG active with nothing left to copy
#   (c) backfill    a fresh node 4 joins, node 3 is marked out (`basalt node out 3`); timed
#                   until every PG is active again with a full acting set and nothing left
#
# Recovery and backfill MB/s are the volume's written bytes over that time (every PG of the
# volume has one member to fill). Prints a Markdown table.
#
# Environment:
#   BASALT_BENCH_SIZE   bytes written while node 3 is down and the volume size (default 1G;
#                       e.g. 128M for a quick run)
#   BASALT_BENCH_DIR    parent of the scratch directory (default /var/tmp; needs 4 drives of
#                       2 × SIZE + 1 GiB and the fio file of SIZE free)
#   BASALT_BENCH_NET    third octet of the loopback addresses (default 93)
#   BASALT_BENCH_TIMEOUT seconds to wait for each phase to finish (default 900)
#   BASALT_BENCH_KEEP=1 keep the scratch directory (logs, fio JSON)
#   BASALT_BIN_DIR      directory with blockd and basalt (default: build target/release)
#
# Needs fio and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE=${BASALT_BENCH_SIZE:-1G}
NET=${BASALT_BENCH_NET:-93}
TIMEOUT=${BASALT_BENCH_TIMEOUT:-900}
TOKEN=bench-admin-token-0123456789
SECRET=bench-cluster-secret-0123456789abcdef

for tool in fio python3; do
    command -v "$tool" >/dev/null || { echo "recovery.sh: $tool is required" >&2; exit 1; }
done

size_bytes() {
    python3 -c '
import sys
t = sys.argv[1].strip().upper().rstrip("IB").rstrip("B")
m = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
print(int(t[:-1]) * m[t[-1]] if t and t[-1] in m else int(t))' "$1"
}
SIZE_BYTES=$(size_bytes "$SIZE")
SIZE_MIB=$((SIZE_BYTES >> 20))
DRIVE_MIB=$((2 * SIZE_MIB + 1024))

if [ -z "${BASALT_BIN_DIR:-}" ]; then
    cargo build --release --quiet -p blockd --bin blockd -p basalt --bin basalt
    BIN=$PWD/target/release
else
    BIN=$(cd "$BASALT_BIN_DIR" && pwd)
fi

PARENT=${BASALT_BENCH_DIR:-/var/tmp}
need_mib=$((4 * DRIVE_MIB + SIZE_MIB))
free_kib=$(df --output=avail -k "$PARENT" | tail -1)
if [ "$free_kib" -lt $((need_mib * 1024)) ]; then
    echo "recovery.sh: $PARENT has $((free_kib / 1024)) MiB free; $need_mib MiB needed" >&2
    exit 1
fi
WORK=$(mktemp -d "$PARENT/basalt-recovery-bench.XXXXXX")
mkdir -p "$WORK/results"
declare -A PIDS=()

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
    for n in "${!PIDS[@]}"; do stop_pid "${PIDS[$n]}"; done
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
    echo "recovery.sh: timed out waiting for $what" >&2
    exit 1
}

now() { date +%s.%N; }

# ----------------------------------------------------------------------------- (a) disk
log "disk: fio 1 MiB sequential write of $SIZE to a plain file"
fio --name=disk --filename="$WORK/disk.img" --rw=write --bs=1m --iodepth=8 \
    --ioengine=libaio --direct=1 --end_fsync=1 --size="$SIZE_BYTES" \
    --output-format=json --output="$WORK/results/disk.json" >/dev/null
rm -f "$WORK/disk.img"

# ----------------------------------------------------------------------------- cluster
basalt_cli() { "$BIN/basalt" --api "http://127.0.$NET.1:9640" --token "$TOKEN" "$@"; }

# start_node N: writes node N's config (on first use) and starts it.
start_node() {
    local n=$1
    if [ ! -f "$WORK/node$n.toml" ]; then
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
size = "${DRIVE_MIB}M"

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
    fi
    RUST_LOG=${BASALT_BENCH_LOG:-warn} "$BIN/blockd" --config "$WORK/node$n.toml" \
        >>"$WORK/node$n.log" 2>&1 &
    PIDS[$n]=$!
}

# nodes_up N: the cluster has a leader and N nodes up.
nodes_up() {
    basalt_cli --json cluster status |
        python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["nodes"]["up"]==int(sys.argv[1]) and s.get("leader") else 1)' "$1"
}

# node_state ID STATE: the map has node ID in STATE.
node_state() {
    basalt_cli --json node show "$1" |
        python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["state"]==sys.argv[1] else 1)' "$2"
}

# wait_recovered PHASE START: polls `GET /v1/pgs` until every PG is active, with a full
# acting set, nothing left to copy and every node answering, after recovery was seen (or
# 10 s passed, for a phase that had nothing to do); prints the seconds since START.
wait_recovered() {
    local phase=$1 start=$2
    python3 - "http://127.0.$NET.1:9640" "$TOKEN" "$start" "$TIMEOUT" \
        "$WORK/results/$phase.trace" <<'EOF'
import json, sys, time, urllib.request

api, token, start, timeout, trace = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
seen_work = False
most_left = 0
with open(trace, "w") as out:
    while True:
        now = time.time()
        if now - start > timeout:
            print(f"timed out after {timeout:.0f} s", file=sys.stderr)
            sys.exit(1)
        try:
            req = urllib.request.Request(f"{api}/v1/pgs", headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=10) as r:
                pgs = json.load(r)
        except Exception as e:
            out.write(f"{now - start:.2f} error {e}\n")
            time.sleep(0.2)
            continue
        counts = {}
        left = 0
        full = True
        for pg in pgs["pgs"]:
            counts[pg["state"]] = counts.get(pg["state"], 0) + 1
            left += pg.get("remaining_bytes", 0)
            full = full and len(pg["acting"]) == len(pg["up"])
        most_left = max(most_left, left)
        out.write(f"{now - start:.2f} {json.dumps(counts, sort_keys=True)} left={left}\n")
        busy = any(s in counts for s in ("recovering", "backfilling", "peering", "degraded"))
        seen_work = seen_work or busy or left > 0
        done = (set(counts) == {"active"} and left == 0 and full
                and not pgs.get("unreachable_nodes") and pgs.get("next_offset") is None)
        if done and (seen_work or now - start > 10):
            print(f"{now - start:.3f} {most_left}")
            break
        time.sleep(0.2)
EOF
}

log "starting a 3-node cluster on 127.0.$NET.1-3 (drives ${DRIVE_MIB} MiB)"
for n in 1 2 3; do start_node "$n"; done
wait_until "the cluster" nodes_up 3
wait_until "volume rec" bash -c "\"$BIN/basalt\" --api http://127.0.$NET.1:9640 --token $TOKEN \
    volume create rec --size $SIZE_BYTES || \"$BIN/basalt\" --api http://127.0.$NET.1:9640 \
    --token $TOKEN volume show rec"
URI="nbd://127.0.$NET.1:10809/rec"
wait_until "export $URI" fio --name=probe --ioengine=nbd --uri="$URI" --rw=read --bs=4k --size=4k
# One write with every node up, so each PG of the volume has a copy on node 3 to catch up.
log "prefill: $SIZE through NBD, all nodes up"
fio --name=prefill --ioengine=nbd --uri="$URI" --rw=write --bs=1m --iodepth=8 \
    --size="$SIZE_BYTES" --output-format=json --output="$WORK/results/prefill.json" >/dev/null

# ----------------------------------------------------------------------------- (b) recovery
log "recovery: stopping node 3"
stop_pid "${PIDS[3]}"
unset 'PIDS[3]'
wait_until "node 3 down" node_state 3 down
log "recovery: writing $SIZE with node 3 down"
fio --name=degraded --ioengine=nbd --uri="$URI" --rw=write --bs=1m --iodepth=8 \
    --size="$SIZE_BYTES" --output-format=json --output="$WORK/results/degraded.json" >/dev/null
log "recovery: starting node 3"
start=$(now)
start_node 3
read -r RECOVERY_SECS RECOVERY_LEFT < <(wait_recovered recovery "$start")
log "recovery: done in $RECOVERY_SECS s (most left seen: $RECOVERY_LEFT bytes)"

# ----------------------------------------------------------------------------- (c) backfill
log "backfill: starting node 4"
start_node 4
wait_until "node 4 up" nodes_up 4
log "backfill: marking node 3 out"
start=$(now)
basalt_cli node out 3 >/dev/null
read -r BACKFILL_SECS BACKFILL_LEFT < <(wait_recovered backfill "$start")
log "backfill: done in $BACKFILL_SECS s (most left seen: $BACKFILL_LEFT bytes)"

# ----------------------------------------------------------------------------- Table
python3 - "$WORK/results/disk.json" "$SIZE_BYTES" "$RECOVERY_SECS" "$BACKFILL_SECS" \
    "$RECOVERY_LEFT" "$BACKFILL_LEFT" "$(nproc)" <<'EOF'
import json, sys

disk_path, size, rec, back, rec_left, back_left, cores = sys.argv[1:]
size, rec, back = int(size), float(rec), float(back)
with open(disk_path) as f:
    text = f.read()
disk = json.loads(text[text.index("{"):])["jobs"][0]["write"]["bw_bytes"] / 1e6

def mbs(secs):
    return size / 1e6 / secs if secs > 0 else float("inf")

print(f"{size / (1 << 20):.0f} MiB written while node 3 was down; {cores} cores; release build")
print()
print("| measurement | time | MB/s | ÷ disk | most left seen |")
print("|---|---:|---:|---:|---:|")
print(f"| disk: fio 1 MiB sequential write (direct) | {size / 1e6 / disk:.1f} s | {disk:.0f} | 1.00 | |")
print(f"| recovery: node 3 back to `active` | {rec:.1f} s | {mbs(rec):.0f} | {mbs(rec) / disk:.2f} | {int(rec_left) / 1e6:.0f} MB |")
print(f"| backfill: fresh node 4 for out node 3 | {back:.1f} s | {mbs(back):.0f} | {mbs(back) / disk:.2f} | {int(back_left) / 1e6:.0f} MB |")
EOF
