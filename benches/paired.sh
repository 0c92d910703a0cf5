#!/usr/bin/env bash
# benches/paired.sh — issue 16: server CPU per handshake, tessera against the
# kit's floor peer, in short alternating chunks. floor.sh restarts every server
# for each round of 20,000 handshakes and counts CPU in ticks; on a shared
# machine whose speed drifts over minutes, its rounds of one server differ by
# ±25 %, and so do its per-round ratios. Here every server stays up for the
# whole run (each on its own port, all pinned to CPU 0), and the load (the
# kit's wsload on CPU 1) goes to them in turn, N handshakes at a time, 50 at a
# time: the chunks of one cycle run within seconds of each other. CPU is the
# server's run time in nanoseconds (/proc/PID/schedstat, user and system
# together), read before and after its chunk; the user/system split comes
# from the utime and stime ticks of /proc/PID/stat, summed over all cycles.
#
#   bash benches/paired.sh [CYCLES] [N] [BIN|floor ...]
#       defaults: 30 cycles, 4000 handshakes, target/release/tessera and floor
#
# Prints µs per handshake per cycle, then per server the median and quartiles,
# and for each server but the floor the median of its per-cycle ratios to the
# floor's chunk of the same cycle (the issue-16 target is ≤ 1.15); with two
# or more tessera builds, also each one's per-cycle ratio to the first. The first
# cycle warms the servers up and is left out of the summary. Run it on an
# otherwise idle machine.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
CYCLES=${1:-30}; N=${2:-4000}; shift $(($# < 2 ? $# : 2))
SERVERS=("$@"); [[ ${#SERVERS[@]} -gt 0 ]] || SERVERS=("$ROOT/target/release/tessera" floor)
PORT=${PORT:-9421}
source benches/kit.sh
kit_build floor && kit_build wsload || exit 2
OUTPUT=$(mktemp)
LINES=$(mktemp)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -f "$OUTPUT" "$LINES"
}
trap cleanup EXIT

names=()
for i in "${!SERVERS[@]}"; do
  b=${SERVERS[$i]}
  port=$((PORT + i))
  kit_serve "$b" "$port" || exit 1
  pids+=("$SERVER_PID")
  names+=("$(basename "$b")#$i")
done

for c in $(seq "$CYCLES"); do
  for i in "${!SERVERS[@]}"; do
    pid=${pids[$i]}
    read -r t0 _ < "/proc/$pid/schedstat"
    read -r u0 s0 < <(cut -d' ' -f14,15 "/proc/$pid/stat")
    taskset -c 1 "$WSLOAD" handshakes --url "ws://127.0.0.1:$((PORT + i))/ws" --conns "$N" \
      --concurrency 50 >"$OUTPUT" 2>/dev/null
    read -r t1 _ < "/proc/$pid/schedstat"
    read -r u1 s1 < <(cut -d' ' -f14,15 "/proc/$pid/stat")
    ok=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("ok") or 0)' "$OUTPUT")
    [[ $ok -gt 0 ]] || { echo "paired.sh: no handshake completed on ${names[$i]}" >&2; exit 1; }
    echo "$c ${names[$i]} $ok $((t1 - t0)) $((u1 - u0)) $((s1 - s0))" | tee -a "$LINES"
  done
done

python3 - "$LINES" "$(getconf CLK_TCK)" "${names[@]}" <<'PY'
import statistics as st, sys
lines, TCK, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
per = {}  # (cycle, name) -> µs per handshake
ticks = {}  # name -> [handshakes, user ticks, system ticks] over the summed cycles
for l in open(lines):
    c, name, ok, ns, user, sys_ = l.split()
    per[(int(c), name)] = int(ns) / 1e3 / int(ok)
    if int(c) > 1:
        t = ticks.setdefault(name, [0, 0, 0])
        for k, v in enumerate((ok, user, sys_)):
            t[k] += int(v)
cycles = sorted({c for c, _ in per if c > 1})
def q(xs):
    xs = sorted(xs)
    qs = st.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return '%.2f [%.2f–%.2f]' % (qs[1], qs[0], qs[2])
print('\nµs of server CPU per handshake over %d cycles (median [quartiles]):' % len(cycles))
for n in names:
    hs, user, sys_ = ticks[n]
    split = 'user %.1f µs, system %.1f µs' % (user * 1e6 / TCK / hs, sys_ * 1e6 / TCK / hs)
    print('  %-16s %s   (all cycles, in ticks: %s)' % (n, q([per[(c, n)] for c in cycles]), split))
floor = next((n for n in names if n.startswith('floor#')), None)
if floor:
    print('per-cycle ratio to %s (median [quartiles]; target ≤ 1.15):' % floor)
    for n in names:
        if n != floor:
            print('  %-16s %s' % (n, q([per[(c, n)] / per[(c, floor)] for c in cycles])))
others = [n for n in names if n != floor]
if len(others) > 1:
    base = others[0]
    print('per-cycle ratio to %s (median [quartiles]; below 1: less CPU than it):' % base)
    for n in others[1:]:
        print('  %-16s %s' % (n, q([per[(c, n)] / per[(c, base)] for c in cycles])))
PY
