#!/usr/bin/env bash
# benches/cpu-split.sh — issue 16: server CPU per handshake split into user and
# system time, tessera against the kit's floor peer (benches/floor.sh gives only
# their sum). Per round and server: a fresh server pinned to CPU 0, N
# authenticated handshakes (50 at a time) from the kit's wsload on CPU 1, the
# server's utime and stime ticks from /proc/PID/stat before and after.
#
#   bash benches/cpu-split.sh [ROUNDS] [N] [BIN|floor ...]
#       defaults: 5 rounds, 40000 handshakes, target/release/tessera and floor
#
# Prints one line per round and server: ok, user and sys ticks (CLK_TCK), and
# µs of CPU per handshake. Run it on an otherwise idle machine; compare servers
# within one run (the rounds alternate), not across runs.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
ROUNDS=${1:-5}; N=${2:-40000}; shift $(($# < 2 ? $# : 2))
SERVERS=("$@"); [[ ${#SERVERS[@]} -gt 0 ]] || SERVERS=("$ROOT/target/release/tessera" floor)
PORT=${PORT:-9411}
source benches/kit.sh
kit_build floor && kit_build wsload || exit 2
TCK=$(getconf CLK_TCK)
OUTPUT=$(mktemp)
trap 'rm -f "$OUTPUT"' EXIT

for r in $(seq "$ROUNDS"); do
  for b in "${SERVERS[@]}"; do
    kit_serve "$b" "$PORT" || exit 1
    pid=$SERVER_PID
    read -r u0 s0 < <(cut -d' ' -f14,15 "/proc/$pid/stat")
    taskset -c 1 "$WSLOAD" handshakes --url "ws://127.0.0.1:$PORT/ws" --conns "$N" --concurrency 50 \
      >"$OUTPUT" 2>/dev/null
    read -r u1 s1 < <(cut -d' ' -f14,15 "/proc/$pid/stat")
    kill "$pid"; wait "$pid" 2>/dev/null
    python3 - "$OUTPUT" "$r" "$(basename "$b")" $((u1 - u0)) $((s1 - s0)) "$TCK" <<'PY'
import json, sys
out, r, name, user, sys_, tck = sys.argv[1:]
ok = json.load(open(out)).get('ok') or 0
per = (int(user) + int(sys_)) / int(tck) * 1e6 / ok if ok else float('nan')
print('r%s %-10s ok=%s user=%s sys=%s us/hs=%.2f' % (r, name, ok, user, sys_, per))
PY
  done
done
