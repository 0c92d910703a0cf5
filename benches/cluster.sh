#!/usr/bin/env bash
# benches/cluster.sh — issue 13 (cluster mode): 2 nodes with --reuse-port on
# one port against 1 node, with the bench kit's wsload (../shared/bench), and
# then the latency bench (benches/cluster_latency.rs: cross-node p50/p99 at 1k msg/s,
# Redis commands per publish).
#
#   cargo build --release --features cluster          # the nodes
#   cargo build --features cluster --bench cluster_latency    # the latency client (dev profile is enough)
#   bash benches/cluster.sh        (on an otherwise idle machine: nothing else compiling)
#
# Setups, each ROUNDS times (alternating), every process unpinned (2 cores:
# the nodes, Redis and wsload share them):
#   local    1 node, no Redis (the local engine)
#   redis1   1 node on Redis
#   redis2   2 nodes on Redis, --reuse-port on one port
# Scenarios per setup (fresh processes and a fresh --redis-prefix each time):
#   handshakes  HS_N authenticated handshakes, HS_K at a time;
#   fanout      FAN_C subscribers, FAN_M messages of FAN_SIZE bytes as fast
#               as acks allow (wsload's `deliveries_per_s`).
# Server CPU (all nodes' utime+stime) and Redis CPU per run come from
# /proc/PID/stat. Bounded: wsload has its own deadlines; every process
# started here is killed by PID on exit.
#
# Env: TESSERA_BIN [target/release/tessera], KIT [/tmp/bench], ROUNDS [2],
# HS_N [10000] HS_K [50], FAN_C [1000] FAN_M [200] FAN_SIZE [256],
# PORT [9317], OUT [target/cluster-bench.jsonl], LATENCY [1: run the
# latency bench after], RATE [1000] SECS [5] (latency bench).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
TESSERA_BIN=${TESSERA_BIN:-$ROOT/target/release/tessera}
KIT=${KIT:-/tmp/bench}
ROUNDS=${ROUNDS:-2}
HS_N=${HS_N:-10000}; HS_K=${HS_K:-50}
FAN_C=${FAN_C:-1000}; FAN_M=${FAN_M:-200}; FAN_SIZE=${FAN_SIZE:-256}
PORT=${PORT:-9317}
OUT=${OUT:-$ROOT/target/cluster-bench.jsonl}
LATENCY=${LATENCY:-1}
WSLOAD=$KIT/wsload/target/release/wsload
[[ -x $TESSERA_BIN ]] || { echo "cluster.sh: build first: cargo build --release --features cluster" >&2; exit 2; }
[[ -x $WSLOAD ]] || { echo "cluster.sh: no wsload at $WSLOAD" >&2; exit 2; }
command -v redis-server >/dev/null || { echo "cluster.sh: redis-server is not installed" >&2; exit 2; }
mkdir -p "$(dirname "$OUT")"
: >"$OUT"
export TESSERA_SECRET=${TESSERA_SECRET:-$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')}
CLK_TCK=$(getconf CLK_TCK)

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

RPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning >/dev/null 2>&1 &
RPID=$!; PIDS+=("$RPID")
for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

ticks() { # PID...: utime+stime summed
  local t=0 p
  for p in "$@"; do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}

wait_ready() { # URL-less: /healthz on PORT answers (and the brokers are up)
  local want=$1 i
  for i in $(seq 200); do
    local h; h=$(curl -s "http://127.0.0.1:$PORT/healthz" || true)
    if [[ -n $h && ( $want == 0 || $h == *'"broker":"up"'* ) ]]; then return 0; fi
    sleep 0.05
  done
  echo "cluster.sh: port $PORT not ready" >&2; return 1
}

FLAGS=(--listen "127.0.0.1:$PORT" --max-connections 20000 --max-sockets-per-address 20000 --log-format text)
run=0
start_setup() { # SETUP → NODES (pids)
  NODES=()
  run=$((run + 1))
  local redis=(--redis "redis://127.0.0.1:$RPORT" --redis-prefix "b$run")
  case $1 in
    local)  "$TESSERA_BIN" serve "${FLAGS[@]}" 2>/dev/null & NODES+=($!) ;;
    redis1) "$TESSERA_BIN" serve "${FLAGS[@]}" "${redis[@]}" --node-id a 2>/dev/null & NODES+=($!) ;;
    redis2) "$TESSERA_BIN" serve "${FLAGS[@]}" "${redis[@]}" --reuse-port --node-id a 2>/dev/null & NODES+=($!)
            "$TESSERA_BIN" serve "${FLAGS[@]}" "${redis[@]}" --reuse-port --node-id b 2>/dev/null & NODES+=($!) ;;
  esac
  PIDS+=("${NODES[@]}")
  wait_ready "$([[ $1 == local ]] && echo 0 || echo 1)"
  # Both nodes of redis2 answer /healthz on the shared port only by chance: give the second a moment.
  sleep 0.5
}

stop_setup() {
  for p in "${NODES[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  sleep 0.3
}

one() { # SETUP ROUND SCENARIO
  local setup=$1 round=$2 scenario=$3 out rc s0 r0 s1 r1
  start_setup "$setup" || return
  s0=$(ticks "${NODES[@]}"); r0=$(ticks "$RPID")
  if [[ $scenario == handshakes ]]; then
    out=$("$WSLOAD" handshakes --url "ws://127.0.0.1:$PORT/ws" --conns "$HS_N" --concurrency "$HS_K" --timeout 120 2>/dev/null)
  else
    out=$("$WSLOAD" fanout --url "ws://127.0.0.1:$PORT/ws" --subscribers "$FAN_C" --messages "$FAN_M" --size "$FAN_SIZE" --rate 0 --timeout 120 2>/dev/null)
  fi
  rc=$?
  s1=$(ticks "${NODES[@]}"); r1=$(ticks "$RPID")
  stop_setup
  python3 - "$setup" "$round" "$scenario" "$rc" "$((s1 - s0))" "$((r1 - r0))" "$CLK_TCK" "$out" <<'PY' | tee -a "$OUT"
import json, sys
setup, rnd, scen, rc, st, rt, clk, out = sys.argv[1:]
try:
    res = json.loads(out)
except Exception:
    res = {}
print(json.dumps({"setup": setup, "round": int(rnd), "scenario": scen, "wsload_rc": int(rc),
                  "server_cpu_s": int(st) / int(clk), "redis_cpu_s": int(rt) / int(clk), "result": res}))
PY
}

for r in $(seq "$ROUNDS"); do
  for setup in local redis1 redis2; do
    one "$setup" "$r" handshakes
    one "$setup" "$r" fanout
  done
done

python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')]
def med(setup, scen, f):
    v = [f(r) for r in rows if r['setup'] == setup and r['scenario'] == scen]
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None
hs = lambda r: r['result'].get('handshakes_per_s')
fo = lambda r: r['result'].get('deliveries_per_s')
lost = lambda r: r['result'].get('lost')
print('\n| setup | handshakes/s | fan-out deliveries/s | lost | server CPU s (hs / fan-out) | Redis CPU s (hs / fan-out) |')
print('|---|---|---|---|---|---|')
base = (med('local', 'handshakes', hs), med('local', 'fanout', fo))
for s in ['local', 'redis1', 'redis2']:
    h, f = med(s, 'handshakes', hs), med(s, 'fanout', fo)
    rel = lambda x, b: '' if x is None or not b else ' (%.2f×)' % (x / b)
    print('| %s | %s%s | %s%s | %s | %s / %s | %s / %s |' % (
        s, h and round(h), rel(h, base[0]), f and round(f), rel(f, base[1]), med(s, 'fanout', lost),
        med(s, 'handshakes', lambda r: r['server_cpu_s']), med(s, 'fanout', lambda r: r['server_cpu_s']),
        med(s, 'handshakes', lambda r: r['redis_cpu_s']), med(s, 'fanout', lambda r: r['redis_cpu_s'])))
PY

if [[ $LATENCY == 1 ]]; then
  cleanup; PIDS=()
  echo
  LAT_BIN=$(ls -t target/debug/deps/cluster_latency-* 2>/dev/null | grep -v '\.d$' | head -1)
  [[ -x $LAT_BIN ]] || { echo "cluster.sh: build the latency client: cargo build --features cluster --bench cluster_latency" >&2; exit 2; }
  TESSERA_BIN=$TESSERA_BIN RATE=${RATE:-1000} SECS=${SECS:-5} "$LAT_BIN"
fi
