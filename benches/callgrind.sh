#!/usr/bin/env bash
# benches/callgrind.sh — user-space work per operation, counted instead of timed
# (issues 16 and 11): the server runs under valgrind's callgrind with its cache
# simulator, the kit's wsload drives it, and the counters are zeroed after a
# warm-up and dumped after the measured run. Instructions and simulated cache
# misses do not depend on how busy the shared machine is, so a change of a few
# per cent shows here when CPU time (floor.sh, delivery.sh) cannot see it.
#
#   cargo build --profile bench          # symbols for callgrind_annotate; same code as release
#   bash benches/callgrind.sh [handshakes] [fanout]     (default: both)
#
#   handshakes  HS_N [3000] authenticated handshakes, 50 at a time, after 300;
#               per handshake: instructions, L1i misses, L1d read/write misses.
#   fanout      FAN_C [1000] subscribers, FAN_M [1000] messages of 256 B as
#               fast as acks allow, after a 20-message fan-out; per delivery.
#
# Env: TESSERA_BIN [target/release/tessera], CMD [unset: a whole server command
# instead, listening on PORT], KIT [/tmp/bench], PORT [9331], OUT
# [target/callgrind] (the callgrind files, for `callgrind_annotate
# --show=Ir,I1mr FILE`). The kit's floor peer cannot be measured this way:
# callgrind_control interrupts its epoll_wait, and it unwraps the EINTR.
# valgrind hides SHA-NI from the program, so SHA-256 runs its portable code here
# (about 16,000 instructions per handshake that the machine does not execute).
# Valgrind makes the server about 50 times slower: the fan-out's batches are
# larger than on the machine, so compare builds with each other, not with
# delivery.sh's figures.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
TESSERA_BIN=${TESSERA_BIN:-$ROOT/target/release/tessera}
PORT=${PORT:-9331}
OUT=${OUT:-$ROOT/target/callgrind}
HS_N=${HS_N:-3000}
FAN_C=${FAN_C:-1000}; FAN_M=${FAN_M:-1000}
WHAT=${*:-handshakes fanout}

command -v valgrind >/dev/null || { echo "callgrind.sh: needs valgrind (apt-get install -y valgrind)" >&2; exit 2; }
source benches/kit.sh
kit_build wsload || exit 2
[[ -n ${CMD:-} || -x $TESSERA_BIN ]] || { echo "callgrind.sh: build first: cargo build --profile bench" >&2; exit 2; }
mkdir -p "$OUT"
URL=ws://127.0.0.1:$PORT/ws
SERVER=${CMD:-$TESSERA_BIN serve --listen 127.0.0.1:$PORT --max-connections 20000 --max-sockets-per-address 20000 --log-format text}

spid=
cleanup() { [[ -n $spid ]] && kill "$spid" 2>/dev/null; wait 2>/dev/null; }
trap cleanup EXIT

# measure NAME OPS WARMUP-ARGS -- RUN-ARGS: one server under callgrind, the counters of RUN only.
measure() {
  local name=$1 ops=$2; shift 2
  local warm=()
  while [[ $1 != -- ]]; do warm+=("$1"); shift; done
  shift
  local file=$OUT/$name.out
  rm -f "$file"*
  # shellcheck disable=SC2086
  valgrind --tool=callgrind --cache-sim=yes --callgrind-out-file="$file" $SERVER >"$OUT/$name.log" 2>&1 &
  spid=$!
  local up=
  for _ in $(seq 150); do
    sleep 0.2
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then up=1; break; fi
  done
  [[ -n $up ]] || { echo "callgrind.sh: the server did not start (see $OUT/$name.log)" >&2; exit 1; }
  "$WSLOAD" "${warm[@]}" --url "$URL" >/dev/null 2>&1
  callgrind_control -z "$spid" >/dev/null 2>&1
  "$WSLOAD" "$@" --url "$URL" >"$OUT/$name.json" 2>/dev/null
  callgrind_control -d "$spid" >/dev/null 2>&1
  kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null; spid=
  local done_ops
  done_ops=$(grep -o "\"$ops\":[0-9]*" "$OUT/$name.json" | head -1 | cut -d: -f2)
  python3 - "$name" "${done_ops:-0}" "$file".* <<'PY'
import re, subprocess, sys
name, n, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
tot = None
for f in files:
    out = subprocess.run(['callgrind_annotate', f], capture_output=True, text=True).stdout
    ev = re.search(r'^Events shown:\s+(.*)$', out, re.M)
    line = next((l for l in out.splitlines() if 'PROGRAM TOTALS' in l), None)
    if not ev or not line:
        continue
    nums = [int(t.replace(',', '')) for t in line.split('PROGRAM TOTALS')[0].split()
            if not t.startswith('(')]
    vals = dict(zip(ev.group(1).split(), nums))
    tot = {k: tot.get(k, 0) + v for k, v in vals.items()} if tot else vals
if not tot or not n:
    print('%s: no counts (operations: %d)' % (name, n)); sys.exit(1)
per = lambda k: tot.get(k, 0) / n
print('%-12s %8d ops   per op: instructions %9.1f   L1i misses %7.1f   L1d read misses %6.1f   L1d write misses %6.1f'
      % (name, n, per('Ir'), per('I1mr'), per('D1mr'), per('D1mw')))
PY
}

for what in $WHAT; do
  case $what in
    handshakes)
      measure handshakes ok handshakes --conns 300 --concurrency 50 -- handshakes --conns "$HS_N" --concurrency 50 ;;
    fanout)
      measure fanout delivered fanout --subscribers "$FAN_C" --messages 20 --size 256 --timeout 300 -- \
        fanout --subscribers "$FAN_C" --messages "$FAN_M" --size 256 --timeout 600 ;;
    *) echo "callgrind.sh: unknown part $what (handshakes fanout)" >&2; exit 2 ;;
  esac
done
