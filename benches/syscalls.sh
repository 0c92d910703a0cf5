#!/usr/bin/env bash
# benches/syscalls.sh — issue 16: syscalls per WebSocket handshake, tessera
# and the kit's floor peer side by side. Each server is started under
# `strace -c -f` (the floor aborts when strace attaches to it while it runs),
# on CPU 0; the kit's wsload runs N authenticated handshakes, 50 at a time,
# on CPU 1; then the server gets SIGINT and strace's counts are divided by N.
#
#   bash benches/syscalls.sh [N] [BIN|floor ...]
#       defaults: 10000 handshakes, target/release/tessera and floor
#
# Prints per server the calls per handshake of every syscall made at least
# once per 100 handshakes, and their total. Counts, not times: strace slows
# the server down, but not what it calls.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
N=${1:-10000}; shift $(($# < 1 ? $# : 1))
SERVERS=("$@"); [[ ${#SERVERS[@]} -gt 0 ]] || SERVERS=("$ROOT/target/release/tessera" floor)
PORT=${PORT:-9431}
command -v strace >/dev/null || { echo "needs strace (apt-get install strace)" >&2; exit 2; }
source benches/kit.sh
kit_build floor && kit_build wsload || exit 2
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT

for s in "${SERVERS[@]}"; do
  kit_serve "$s" "$PORT" strace -c -f -o "$OUT" || exit 1
  ok=$(taskset -c 1 "$WSLOAD" handshakes --url "ws://127.0.0.1:$PORT/ws" --conns "$N" \
    --concurrency 50 2>/dev/null | grep -o '"ok":[0-9]*' | cut -d: -f2)
  # strace's child is the server: SIGINT it (a clean stop), then wait for
  # strace to write its table.
  pkill -INT -P "$SERVER_PID" 2>/dev/null
  sleep 0.5
  pkill -KILL -P "$SERVER_PID" 2>/dev/null
  wait "$SERVER_PID" 2>/dev/null
  echo "$(basename "$s"): $ok of $N handshakes completed; calls per handshake:"
  # strace -c columns: % time, seconds, usecs/call, calls, [errors], syscall.
  awk -v n="$N" '
    $1 ~ /^[0-9.]+$/ && $NF != "total" {
      calls = $4; if (calls / n >= 0.01) { printf "  %-14s %7.3f\n", $NF, calls / n; sum += calls / n }
    }
    END { printf "  %-14s %7.3f\n", "total", sum }' "$OUT"
  PORT=$((PORT + 1))
done
