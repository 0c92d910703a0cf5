#!/usr/bin/env bash
# benches/login-burst.sh [ROUNDS]: does a burst of logins slow the hub down?
#
# Starts `tessera serve --users FILE` pinned to CPU 0 with one user hashed at
# the default 600000 PBKDF2 iterations, then alternates ROUNDS (default 3)
# times between two runs of the bench kit's load generator on CPU 1:
#
#   quiet: wsload fanout --subscribers 1000 --messages 500 --rate 50 --size 256
#   burst: the same, plus 20 concurrent `POST /auth/login` fired 3 s in
#
# and prints one line per run with the delivery latency percentiles. Needs
# the kit from ../shared/bench built in $KIT (default /tmp/bench: `cp -r
# ../shared/bench /tmp/bench && (cd /tmp/bench/wsload && cargo build
# --release)`), python3, taskset, and a release build of tessera
# (`cargo build --release`; override with TESSERA_BIN).
set -euo pipefail

rounds=${1:-3}
cd "$(dirname "$0")/.."
KIT=${KIT:-/tmp/bench}
WSLOAD=$KIT/wsload/target/release/wsload
BIN=${TESSERA_BIN:-target/release/tessera}
PORT=${PORT:-8099}
[ -x "$WSLOAD" ] || { echo "login-burst: no $WSLOAD (see the header)" >&2; exit 2; }
[ -x "$BIN" ] || { echo "login-burst: no $BIN (cargo build --release)" >&2; exit 2; }

dir=$(mktemp -d)
TESSERA_SECRET=$(head -c 32 /dev/urandom | base64 | tr -d '=+/')
export TESSERA_SECRET
password=$(head -c 18 /dev/urandom | base64 | tr -d '=+/')
printf '%s\n' "$password" | "$BIN" useradd --users "$dir/users" --name burst >/dev/null
printf '{"username":"burst","password":"%s"}' "$password" >"$dir/login.json"

taskset -c 0 "$BIN" serve --listen "127.0.0.1:$PORT" --users "$dir/users" --insecure-cookies \
    --max-connections 2000 2>"$dir/server.log" >/dev/null &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do
    grep -q '"listening"' "$dir/server.log" && break
    sleep 0.1
done

# The burst comes from one Python process started before the load, so its
# start-up does not steal the load generator's CPU in the middle of the run.
burst() {
    taskset -c 1 python3 - "$PORT" "$dir/login.json" "$dir/codes" <<'EOF'
import socket, sys, threading, time
port, body, out = int(sys.argv[1]), open(sys.argv[2], "rb").read(), sys.argv[3]
req = (b"POST /auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
       b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)) + body
codes = []
def one():
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(req)
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    codes.append(data.split(b" ", 2)[1].decode())
time.sleep(3)
threads = [threading.Thread(target=one) for _ in range(20)]
for t in threads: t.start()
for t in threads: t.join()
open(out, "w").write(" ".join(f"{codes.count(c)}x{c}" for c in sorted(set(codes))))
EOF
}

for r in $(seq "$rounds"); do
    for mode in quiet burst; do
        : >"$dir/codes"
        [ $mode = burst ] && { burst & bpid=$!; }
        taskset -c 1 "$WSLOAD" fanout --url "ws://127.0.0.1:$PORT/ws" --subscribers 1000 \
            --messages 500 --rate 50 --size 256 2>/dev/null >"$dir/out.json"
        [ $mode = burst ] && wait $bpid
        python3 - "$dir/out.json" "$r" "$mode" "$(cat "$dir/codes")" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_ms"]
print(f"round {sys.argv[2]} {sys.argv[3]:5}: p50 {l['p50']:.2f} ms  p90 {l['p90']:.2f}  p99 {l['p99']:.2f}  "
      f"max {l['max']:.2f}  lost {r['lost']}  logins: {sys.argv[4] or '-'}")
EOF
    done
done
