#!/usr/bin/env bash
# benches/floor.sh — issue 16: tessera's server CPU per operation against the
# kit's floor peer (one thread on mio, no runtime, no limits, no logs), with
# the bench kit (../shared/bench: bench-peers.sh + wsload), server on CPU 0,
# load on CPU 1, ROUNDS alternating rounds, medians.
#
#   bash benches/floor.sh      (after cargo build --release, on an otherwise idle machine)
#
# Per round and server, one process runs two scenarios (bench-peers.sh):
#   handshakes  HS_N authenticated handshakes, HS_K at a time (connect, 101 +
#               welcome, close handshake): server CPU ÷ handshakes completed;
#   fanout      FAN_C subscribers, FAN_M messages of FAN_SIZE bytes as fast as
#               acks allow, incl. setup: server CPU ÷ deliveries.
# Server CPU is utime+stime of the server process from /proc/PID/stat
# (bench-peers.sh's server_cpu_ticks, CLK_TCK resolution: keep runs long
# enough that one tick is small against the total).
#
# Env: TESSERA_BIN [target/release/tessera], BASE_BIN [unset: another tessera
# binary measured the same way, e.g. the commit before a change], KIT
# [/tmp/bench, copied from ../shared/bench if missing], ROUNDS [3],
# HS_N [20000] HS_K [50], FAN_C [1000] FAN_M [1000] FAN_SIZE [256],
# OUT [target/floor-bench.jsonl] (this run's lines; the log is OUT.log).
# Prints one JSON line per run and a table with the medians and the ratios
# tessera ÷ floor (the issue-16 target is ≤ 1.15 for both). On a machine whose
# speed drifts, benches/paired.sh gives a steadier handshake figure (servers
# kept up, short alternating chunks, CPU in nanoseconds).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
TESSERA_BIN=${TESSERA_BIN:-$ROOT/target/release/tessera}
BASE_BIN=${BASE_BIN:-}
ROUNDS=${ROUNDS:-3}
HS_N=${HS_N:-20000}; HS_K=${HS_K:-50}
FAN_C=${FAN_C:-1000}; FAN_M=${FAN_M:-1000}; FAN_SIZE=${FAN_SIZE:-256}
OUT=${OUT:-$ROOT/target/floor-bench.jsonl}
PORT=${PORT:-9316}

source benches/kit.sh
[[ -x $TESSERA_BIN ]] || { echo "floor.sh: build first: cargo build --release" >&2; exit 2; }
[[ -z $BASE_BIN || -x $BASE_BIN ]] || { echo "floor.sh: BASE_BIN $BASE_BIN is not executable" >&2; exit 2; }
kit_build floor && kit_build wsload || exit 2
export WSLOAD
mkdir -p "$(dirname "$OUT")"
: >"$OUT"

kit() { # LABEL SERVER CMD...
  local label=$1; shift
  env LABEL="$label" SCENARIOS="handshakes fanout" BAD_N=0 HS_N="$HS_N" HS_K="$HS_K" \
    FAN_C="$FAN_C" FAN_M="$FAN_M" FAN_SIZE="$FAN_SIZE" FAN_RATE=0 PAUSE=1 \
    bash "$KIT/bench-peers.sh" "$PORT" "$@" 2>>"$OUT.log" | tee -a "$OUT"
}
tessera_cmd() { # BIN
  echo "$1 serve --listen 127.0.0.1:$PORT --max-connections 20000 --max-sockets-per-address 20000 --log-format text"
}

for r in $(seq "$ROUNDS"); do
  kit "tessera-r$r" "$(tessera_cmd "$TESSERA_BIN")"
  kit "floor-r$r" "$FLOOR --listen 127.0.0.1:$PORT"
  [[ -n $BASE_BIN ]] && kit "base-r$r" "$(tessera_cmd "$BASE_BIN")"
done

python3 - "$OUT" <<'PY'
import json, re, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')]
per = {}  # (server, scenario) -> [µs per op]
for r in rows:
    server = re.sub(r'-r\d+$', '', r['label'])
    res = r.get('result') or {}
    ops = res.get('ok') if r['scenario'] == 'handshakes' else res.get('delivered')
    ticks = r.get('server_cpu_ticks')
    if not ops or ticks is None:
        print('%s %s: no result (wsload rc %s)' % (r['label'], r['scenario'], r.get('wsload_rc')))
        continue
    per.setdefault((server, r['scenario']), []).append(ticks / (r.get('clk_tck') or 100) * 1e6 / ops)
servers = sorted({s for s, _ in per}, key=lambda s: ['tessera', 'floor', 'base'].index(s) if s in ('tessera', 'floor', 'base') else 9)
print('\nserver CPU per operation (medians of %s rounds; all rounds in brackets)' % max((len(v) for v in per.values()), default=0))
print('%-10s %-44s %-44s' % ('server', 'µs per handshake', 'µs per fan-out delivery'))
for s in servers:
    cell = lambda sc: ('%.2f [%s]' % (statistics.median(per[(s, sc)]), ' '.join('%.2f' % x for x in per[(s, sc)]))) if (s, sc) in per else '-'
    print('%-10s %-44s %-44s' % (s, cell('handshakes'), cell('fanout')))
for s in [x for x in servers if x != 'floor']:
    ratios = []
    for sc in ('handshakes', 'fanout'):
        if (s, sc) in per and ('floor', sc) in per:
            ratios.append('%s %.2f' % (sc, statistics.median(per[(s, sc)]) / statistics.median(per[('floor', sc)])))
    print('%s ÷ floor: %s   (target ≤ 1.15)' % (s, ', '.join(ratios)))
PY
