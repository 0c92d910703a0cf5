#!/usr/bin/env bash
# benches/delivery.sh — the delivery benchmarks of issue 11, with the bench kit
# (../shared/bench: wsload + the rust-tokio peer), server on CPU 0, load on CPU 1.
#
#   bash benches/delivery.sh [burst] [cost] [floor] [disk] [memory]   (default: all five)
#
#   burst   FAN_M=10000 FAN_RATE=0, 1000 subscribers: tessera, then rust-tokio,
#           ROUNDS times, alternating. Reports delivered, lost, closed, deliveries/s.
#   cost    server CPU per delivery (server_cpu_ticks / deliveries, FAN_M=1000):
#           tessera with history on (defaults), with --history 0, rust-tokio,
#           and the kit's floor peer (peers/floor: the least work one thread
#           can do for the job, the physical reference), ROUNDS alternating rounds.
#   floor   server CPU per fan-out delivery including set-up (C=1000, M=200,
#           the kit's default fan-out, issue 16): tessera against the kit's
#           floor peer (peers/floor), ROUNDS alternating rounds.
#   disk    --history-dir: publishes/s with 1 and with 1000 subscribers
#           (FAN_M=5000, rate 0) and bytes written per message (the server's
#           /proc/PID/io write_bytes, and the directory's size).
#   memory  VmRSS per retained message: one channel with --history 100000,
#           100000 messages of 256 B published with one subscriber; RSS after
#           minus RSS before, per message, minus the 256 B payload.
#
# Env: TESSERA_BIN [target/release/tessera, relative to the checkout], BASE_BIN [unset: another
# tessera binary measured in `cost` too, e.g. the commit before a change], KIT [/tmp/bench, copied from
# ../shared/bench if missing], ROUNDS [3], OUT [target/delivery-bench.jsonl].
# Prints one JSON line per run (also appended to OUT) and a summary table.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
# Relative on purpose: a renicing helper used on the shared development machines
# (BENCHMARKS.md) matched every process whose command line held a worktree's
# /target/ path, the server under test included.
TESSERA_BIN=${TESSERA_BIN:-target/release/tessera}
KIT=${KIT:-/tmp/bench}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-$ROOT/target/delivery-bench.jsonl}
WHAT=${*:-burst cost floor disk memory}

if [[ ! -d $KIT ]]; then
  cp -r "$ROOT/../shared/bench" "$KIT" && chmod -R u+w "$KIT"
fi
[[ -x $TESSERA_BIN ]] || { echo "delivery.sh: build first: cargo build --release" >&2; exit 2; }
TOKIO=$KIT/peers/rust-tokio/target/release/rust-tokio-peer
[[ -x $TOKIO ]] || (cd "$KIT/peers/rust-tokio" && cargo build --release --quiet) || exit 2
FLOOR=$KIT/peers/floor/target/release/floor-peer
if [[ ( " $WHAT " == *" floor "* || " $WHAT " == *" cost "* ) && ! -x $FLOOR ]]; then
  (cd "$KIT/peers/floor" && cargo build --release --quiet) || exit 2
fi
WSLOAD=$KIT/wsload/target/release/wsload
[[ -x $WSLOAD ]] || (cd "$KIT/wsload" && cargo build --release --quiet) || exit 2
export WSLOAD
mkdir -p "$(dirname "$OUT")"
# OUT keeps every run; the summary reads this run's lines, after these.
SKIP=$(cat "$OUT" 2>/dev/null | wc -l)
export TESSERA_SECRET=${TESSERA_SECRET:-$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')}
PORT=${PORT:-9311}

kit() { # LABEL SCENARIO-ENV... -- SERVER CMD...
  local label=$1; shift
  local envs=()
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  env LABEL="$label" PAUSE=1 "${envs[@]}" bash "$KIT/bench-peers.sh" "$PORT" "$@" 2>>"$OUT.log" | tee -a "$OUT"
}

tessera_cmd() { echo "${BIN:-$TESSERA_BIN} serve --listen 127.0.0.1:$PORT --max-connections 20000 --max-sockets-per-address 20000 --log-format text $*"; }

for what in $WHAT; do
  case $what in
    burst)
      for r in $(seq "$ROUNDS"); do
        kit "burst-tessera-r$r" SCENARIOS=fanout FAN_M=10000 FAN_RATE=0 -- "$(tessera_cmd)"
        kit "burst-rust-tokio-r$r" SCENARIOS=fanout FAN_M=10000 FAN_RATE=0 -- "$TOKIO --listen 127.0.0.1:$PORT"
      done ;;
    cost)
      for r in $(seq "$ROUNDS"); do
        kit "cost-tessera-history-r$r" SCENARIOS=fanout FAN_M=1000 -- "$(tessera_cmd)"
        kit "cost-tessera-nohistory-r$r" SCENARIOS=fanout FAN_M=1000 -- "$(tessera_cmd --history 0)"
        kit "cost-rust-tokio-r$r" SCENARIOS=fanout FAN_M=1000 -- "$TOKIO --listen 127.0.0.1:$PORT"
        kit "cost-floor-peer-r$r" SCENARIOS=fanout FAN_M=1000 -- "$FLOOR --listen 127.0.0.1:$PORT"
        if [[ -n ${BASE_BIN:-} ]]; then
          kit "cost-base-r$r" SCENARIOS=fanout FAN_M=1000 -- "$(BIN=$BASE_BIN tessera_cmd)"
        fi
      done ;;
    floor)
      for r in $(seq "$ROUNDS"); do
        kit "floor-tessera-r$r" SCENARIOS=fanout FAN_M=200 -- "$(tessera_cmd)"
        kit "floor-peer-r$r" SCENARIOS=fanout FAN_M=200 -- "$FLOOR --listen 127.0.0.1:$PORT"
      done ;;
    disk)
      for c in 1 1000; do
        for r in $(seq "$ROUNDS"); do
          dir=$(mktemp -d /tmp/tessera-histdir.XXXXXX)
          # shellcheck disable=SC2046
          taskset -c 0 $(tessera_cmd --history-dir "$dir") 2>/dev/null &
          spid=$!
          for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
          wb0=$(awk '$1=="write_bytes:"{print $2}' "/proc/$spid/io")
          res=$(taskset -c 1 "$WSLOAD" fanout --url "ws://127.0.0.1:$PORT/ws" --subscribers "$c" --messages 5000 \
            --size 256 --rate 0 --timeout 180 2>/dev/null)
          wb1=$(awk '$1=="write_bytes:"{print $2}' "/proc/$spid/io")
          kill -TERM "$spid"; wait "$spid" 2>/dev/null
          du_b=$(du -sb "$dir" | cut -f1)
          printf '{"label":"disk-c%s-r%s","messages":5000,"proc_write_bytes":%s,"dir_bytes":%s,"result":%s}\n' \
            "$c" "$r" "$((wb1 - wb0))" "$du_b" "${res:-null}" | tee -a "$OUT"
          rm -rf "$dir"
        done
      done ;;
    memory)
      n=100000
      # shellcheck disable=SC2046
      taskset -c 0 $(tessera_cmd --history $n --history-max-bytes 1000000000) 2>/dev/null &
      spid=$!
      for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
      # Warm up: one small fan-out so the per-socket buffers exist before the baseline.
      taskset -c 1 "$WSLOAD" fanout --url "ws://127.0.0.1:$PORT/ws" --channel warm --subscribers 1 --messages 10 --size 256 >/dev/null 2>&1
      rss0=$(awk '$1=="VmRSS:"{print $2}' /proc/$spid/status)
      res=$(taskset -c 1 "$WSLOAD" fanout --url "ws://127.0.0.1:$PORT/ws" --subscribers 1 --messages $n --size 256 --rate 0 2>/dev/null)
      sleep 1
      rss1=$(awk '$1=="VmRSS:"{print $2}' /proc/$spid/status)
      kill -TERM $spid; wait $spid 2>/dev/null
      printf '{"label":"memory-per-retained","messages":%s,"payload_bytes":256,"vmrss_kb_before":%s,"vmrss_kb_after":%s,"bytes_per_message":%s,"result":%s}\n' \
        "$n" "$rss0" "$rss1" "$(( (rss1 - rss0) * 1024 / n ))" "${res:-null}" | tee -a "$OUT" ;;
    *) echo "delivery.sh: unknown part $what (burst cost floor disk memory)" >&2; exit 2 ;;
  esac
done

# Summary of this run's lines: medians per label (without the -rN round suffix).
python3 - "$OUT" "$SKIP" <<'PY'
import json, re, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]).readlines()[int(sys.argv[2]):] if l.startswith('{')]
groups = {}
for r in rows:
    key = re.sub(r'-r\d+$', '', r.get('label', '?'))
    groups.setdefault(key, []).append(r)
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
print('\n%-28s %6s %10s %8s %8s %14s %14s' % ('label', 'runs', 'delivered', 'lost', 'closed', 'deliveries/s', 'cpu us/deliv'))
for key, rs in sorted(groups.items()):
    res = [r.get('result') or {} for r in rs]
    ticks = [r.get('server_cpu_ticks') for r in rs]
    tck = rs[0].get('clk_tck') or 100
    per = [t / tck * 1e6 / x['delivered'] if t and x.get('delivered') else None for t, x in zip(ticks, res)]
    print('%-28s %6d %10s %8s %8s %14s %14s' % (key, len(rs), med([x.get('delivered') for x in res]),
          med([x.get('lost') for x in res]), med([x.get('subscribers_closed_early') for x in res]),
          med([x.get('deliveries_per_s') for x in res]), (lambda v: '%.3f' % v if v else '-')(med(per))))
    for r in rs:
        if 'proc_write_bytes' in r:
            x = r.get('result') or {}
            print('    %s: %.1f publishes/s, %.0f B written/message (proc io), dir %d B' % (r['label'],
                  x.get('publish_rate_per_s', 0), r['proc_write_bytes'] / r['messages'], r['dir_bytes']))
        if 'bytes_per_message' in r:
            print('    %s: %d B VmRSS per retained message (%d B payload)' % (r['label'], r['bytes_per_message'], r['payload_bytes']))

# cost: per-round ratios (rounds alternate, so a ratio within a round cancels the machine's drift).
# rust-tokio closes subscribers in some rounds; its CPU per *delivered* message is then higher, so
# the ratios are also given against its clean rounds only.
per_round = {}
for r in rows:
    m = re.match(r'cost-(.*)-r(\d+)$', r.get('label', ''))
    x = r.get('result') or {}
    if m and x.get('delivered') and r.get('server_cpu_ticks'):
        cpu = r['server_cpu_ticks'] / (r.get('clk_tck') or 100) * 1e6 / x['delivered']
        per_round.setdefault(int(m.group(2)), {})[m.group(1)] = (cpu, x.get('lost', 0))
def ratios(a, b, clean_only=False):
    return [t[a][0] / t[b][0] for t in per_round.values()
            if a in t and b in t and not (clean_only and t[b][1])]
def show(name, xs):
    if xs:
        print('  %-50s %.2f  [%s]' % (name, statistics.median(xs), ' '.join('%.2f' % x for x in sorted(xs))))
if per_round:
    print('\ncost, per-round ratios of CPU per delivery (median [all rounds, sorted]):')
    for who in ('tessera-history', 'base', 'floor-peer'):
        show('%s ÷ rust-tokio' % who, ratios(who, 'rust-tokio'))
        show('%s ÷ rust-tokio, its clean rounds only' % who, ratios(who, 'rust-tokio', True))
    show('tessera-history ÷ floor-peer', ratios('tessera-history', 'floor-peer'))
    show('tessera-history ÷ tessera-nohistory', ratios('tessera-history', 'tessera-nohistory'))
PY
