#!/usr/bin/env bash
# benches/attack.sh: does tessera hold under hostile clients? (issue #14,
# "Performance under attack")
#
# Starts `tessera serve` pinned to CPU 0 and runs the bench kit's wsload on
# CPU 1 from 127.0.0.1 twice: quiet, then while an attacker (one python3
# process) works from other 127.x addresses:
#
#   - IDLE_N     idle pre-auth TCP connections (from 127.2.x.y, about 10 per
#                address), reopened as soon as the server sheds them
#   - SLOW_N     slow readers (127.3.0.x): each pipelines SLOW_REQS `GET /`
#                and never reads; reconnects 1 s after the server closes it
#   - SUBFLOOD   sockets (valid token) subscribing to new channel names as
#                fast as they can; reconnect when closed
#   - FLOOD_ADDRS addresses (127.4.0.x) sending wrong passwords in a loop
#
# Legitimate load (wsload): `handshakes --conns HS_N --concurrency HS_K`, then
# `fanout --subscribers FAN_C --messages FAN_M --size 256`. Prints the quiet
# and attacked figures side by side, the server's peak RSS during each run,
# what happened to the attack connections, the server's CPU use (% of one
# core, all threads) and the kernel's listen-queue counters (machine-wide).
#
# Knobs (environment): HS_N [5000] HS_K [50] FAN_C [1000] FAN_M [200]
# IDLE_N [5000] SLOW_N [100] SLOW_REQS [600] SUBFLOOD [1] FLOOD_ADDRS [50]
# WARMUP [5] seconds for the attack to build up, ATTACK_NICE [19] the
# attacker's nice value: it shares CPU 1 with wsload, and at 0 it took
# half of wsload's CPU, so the attacked handshake figures measured the load
# generator (2026-11-30: same attack volume on the server at 0 and 19 --
# 20,586 vs 20,618 idle connections shed, 416k vs 360k subscribes, 95 vs
# 88 wrong passwords hashed -- but wsload's handshakes/s 5,228 vs 10,960);
# set 0 to see that, PORT [8098], KIT
# [/tmp/bench] (built wsload: see benches/login-burst.sh), TESSERA_BIN
# [target/release/tessera], ITERATIONS [600000] for the users file,
# SERVE_ARGS extra `serve` flags. Targets (issue #14): 0 failed legitimate
# handshakes, handshake p99 within 3x quiet, fan-out 0 lost, RSS bounded.
#
# Smoke run with small numbers (a busy machine):
#   HS_N=200 FAN_C=50 FAN_M=20 IDLE_N=300 SLOW_N=5 FLOOD_ADDRS=5 WARMUP=2 benches/attack.sh
set -euo pipefail

cd "$(dirname "$0")/.."
HS_N=${HS_N:-5000} HS_K=${HS_K:-50} FAN_C=${FAN_C:-1000} FAN_M=${FAN_M:-200}
IDLE_N=${IDLE_N:-5000} SLOW_N=${SLOW_N:-100} SLOW_REQS=${SLOW_REQS:-600}
SUBFLOOD=${SUBFLOOD:-1} FLOOD_ADDRS=${FLOOD_ADDRS:-50} WARMUP=${WARMUP:-5}
ATTACK_NICE=${ATTACK_NICE:-19} PORT=${PORT:-8098} ITERATIONS=${ITERATIONS:-600000} SERVE_ARGS=${SERVE_ARGS:-}
KIT=${KIT:-/tmp/bench}
WSLOAD=$KIT/wsload/target/release/wsload
BIN=${TESSERA_BIN:-target/release/tessera}
[ -x "$WSLOAD" ] || { echo "attack: no $WSLOAD (see benches/login-burst.sh)" >&2; exit 2; }
[ -x "$BIN" ] || { echo "attack: no $BIN (cargo build --release)" >&2; exit 2; }

dir=$(mktemp -d)
TESSERA_SECRET=$(head -c 32 /dev/urandom | base64 | tr -d '=+/')
export TESSERA_SECRET
password=$(head -c 18 /dev/urandom | base64 | tr -d '=+/')
printf '%s\n' "$password" | "$BIN" useradd --users "$dir/users" --name alice --iterations "$ITERATIONS" >/dev/null

# shellcheck disable=SC2086 # SERVE_ARGS is a list of flags
taskset -c 0 "$BIN" serve --listen "127.0.0.1:$PORT" --users "$dir/users" \
    --max-connections $((FAN_C + HS_K + SUBFLOOD + 100)) \
    --max-sockets-per-address $((FAN_C + HS_K + 100)) $SERVE_ARGS 2>"$dir/server.log" >/dev/null &
server=$!
attacker=
cleanup() {
    [ -n "$attacker" ] && kill "$attacker" 2>/dev/null
    kill "$server" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 50); do
    grep -q '"listening"' "$dir/server.log" && break
    sleep 0.1
done

# Peak VmRSS (kB) of the server, and the longest listen queue (connections
# the kernel holds for accept), while $dir/sampling exists.
sample_rss() {
    local peak=0 q=0 v
    while [ -e "$dir/sampling" ]; do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$server/status" 2>/dev/null || echo 0)
        [ "${v:-0}" -gt "$peak" ] && peak=$v
        v=$(ss -Hltn "sport = :$PORT" 2>/dev/null | awk '{print $2; exit}')
        [ "${v:-0}" -gt "$q" ] && q=$v
        sleep 0.2
    done
    echo "$peak" >"$dir/rss_$1"
    echo "$q" >"$dir/listenq_$1"
}

# CPU ticks (user + system, all threads) the server has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$server/stat" 2>/dev/null || echo 0; }

legit() { # $1 = quiet | attacked
    touch "$dir/sampling"
    sample_rss "$1" &
    local sampler=$! t0 c0
    t0=$(date +%s.%N) c0=$(cpu_ticks)
    taskset -c 1 "$WSLOAD" handshakes --url "ws://127.0.0.1:$PORT/ws" --conns "$HS_N" \
        --concurrency "$HS_K" 2>/dev/null >"$dir/hs_$1.json" || true
    taskset -c 1 "$WSLOAD" fanout --url "ws://127.0.0.1:$PORT/ws" --subscribers "$FAN_C" \
        --messages "$FAN_M" --size 256 --rate 0 2>/dev/null >"$dir/fan_$1.json" || true
    echo "$t0 $(date +%s.%N) $c0 $(cpu_ticks) $(getconf CLK_TCK)" >"$dir/cpu_$1"
    rm -f "$dir/sampling"
    wait "$sampler"
}

legit quiet

taskset -c 1 nice -n "$ATTACK_NICE" python3 - "$PORT" "$dir" "$IDLE_N" "$SLOW_N" "$SLOW_REQS" "$SUBFLOOD" "$FLOOD_ADDRS" \
    >"$dir/attack.json" 2>"$dir/attack.err" <<'EOF' &
import base64, hashlib, hmac, json, os, resource, selectors, socket, sys, threading, time
port, d = int(sys.argv[1]), sys.argv[2]
idle_n, slow_n, slow_reqs, sub_n, flood_addrs = map(int, sys.argv[3:8])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
stop = threading.Event()
stats = {"idle_opened": 0, "idle_shed": 0, "idle_connect_failed": 0, "idle_open_at_end": 0,
         "slow_opened": 0, "slow_closed_by_server": 0,
         "sub_sent": 0, "sub_connections": 0, "sub_closed_by_server": 0, "sub_replies": {},
         "login_status": {}}
lock = threading.Lock()
def bump(k, n=1, sub=None):
    with lock:
        if sub is None: stats[k] += n
        else: stats[k][sub] = stats[k].get(sub, 0) + n

def conn(src):
    s = socket.socket()
    s.bind((src, 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s

def idle():
    sel = selectors.DefaultSelector()
    def open_one(i):
        src = "127.2.%d.%d" % (i // 250, i % 250 + 1)
        try:
            s = conn(src)
        except OSError:
            bump("idle_connect_failed"); return
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        bump("idle_opened")
    for i in range(idle_n):
        if stop.is_set(): break
        open_one(i)
    while not stop.is_set():
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            sel.unregister(s); s.close()
            bump("idle_shed")
            open_one(key.data)
    stats["idle_open_at_end"] = len(sel.get_map())

def slow(i):
    req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * slow_reqs
    while not stop.is_set():
        try:
            s = conn("127.3.0.%d" % (i % 250 + 1))
            bump("slow_opened")
            s.settimeout(1)
            sent = 0
            while sent < len(req) and not stop.is_set():
                try:
                    sent += s.send(req[sent:sent + 65536])
                except socket.timeout:
                    continue
            # Never read; wait until the server gives up on us.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            while not stop.is_set():
                try:
                    s.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    time.sleep(0.5)
                except socket.timeout:
                    continue
                except OSError:
                    bump("slow_closed_by_server"); break
            s.close()
        except OSError:
            pass
        time.sleep(1)

def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=")
def token(sub):
    h = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    now = int(time.time())
    p = b64(json.dumps({"sub": sub, "iat": now, "exp": now + 3600, "clearance": 0}).encode())
    sig = hmac.new(os.environ["TESSERA_SECRET"].encode(), h + b"." + p, hashlib.sha256).digest()
    return (h + b"." + p + b"." + b64(sig)).decode()

def frame(text):
    data = text.encode(); mask = os.urandom(4)
    n = len(data)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))

def subflood(i):
    n = 0
    while not stop.is_set():
        try:
            s = conn("127.5.0.%d" % (i % 250 + 1))
            key = base64.b64encode(os.urandom(16)).decode()
            s.sendall(("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n"
                       % (key, token("flooder-%d" % i))).encode())
            head = s.recv(4096)
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                bump("sub_replies", sub=head.split(b" ")[1].decode() if b" " in head else "?")
                time.sleep(1); continue
            bump("sub_connections")
            def drain(s=s):
                try:
                    while s.recv(65536): pass
                except OSError: pass
            threading.Thread(target=drain, daemon=True).start()
            while not stop.is_set():
                n += 1
                s.sendall(frame(json.dumps({"type": "subscribe", "channel": "f%d-%d" % (i, n)})))
                bump("sub_sent")
        except OSError:
            bump("sub_closed_by_server"); time.sleep(0.2)

def flood(i):
    n = 0
    while not stop.is_set():
        n += 1
        body = json.dumps({"username": "guess-%d-%d" % (i, n), "password": "wrong"}).encode()
        req = (b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
        try:
            s = conn("127.4.0.%d" % (i % 250 + 1))
            s.settimeout(30)
            s.sendall(req)
            data = s.recv(64)
            bump("login_status", sub=data.split(b" ")[1].decode() if data.count(b" ") else "closed")
            s.close()
        except OSError:
            bump("login_status", sub="error")

threads = [threading.Thread(target=idle)]
threads += [threading.Thread(target=slow, args=(i,)) for i in range(slow_n)]
threads += [threading.Thread(target=subflood, args=(i,)) for i in range(sub_n)]
threads += [threading.Thread(target=flood, args=(i,)) for i in range(flood_addrs)]
for t in threads: t.daemon = True; t.start()
while not os.path.exists(os.path.join(d, "stop")):
    time.sleep(0.2)
stop.set()
time.sleep(1.5)
print(json.dumps(stats))
EOF
attacker=$!
# Kernel listen-queue counters (machine-wide) around the attacked run.
kstat() { nstat -az 2>/dev/null | awk '/TcpExt(ListenOverflows|ListenDrops|SyncookiesSent|TCPReqQFullDoCookies|TCPDeferAcceptDrop) /{print $1, $2}'; }
kstat >"$dir/kstat_before"
sleep "$WARMUP"
legit attacked
kstat >"$dir/kstat_after"
touch "$dir/stop"
wait "$attacker" || true
attacker=
[ -s "$dir/attack.json" ] || { echo "attacker failed:" >&2; tail -5 "$dir/attack.err" >&2; }

python3 - "$dir" <<'EOF'
import json, os, sys
d = sys.argv[1]
def load(n):
    try: return json.load(open(os.path.join(d, n)))
    except Exception as e: return {"error": str(e)}
def rss(m):
    try: return int(open(os.path.join(d, "rss_" + m)).read()) // 1024
    except Exception: return "?"
def cpu(m): # the server's CPU time over the run's wall time, % of one core
    try:
        t0, t1, c0, c1, hz = map(float, open(os.path.join(d, "cpu_" + m)).read().split())
        return round(100 * (c1 - c0) / hz / (t1 - t0))
    except Exception: return "?"
print(f"{'':28}{'quiet':>14}{'attacked':>14}")
rows = []
for m in ("quiet", "attacked"):
    h, f = load(f"hs_{m}.json"), load(f"fan_{m}.json")
    rows.append({
        "handshakes ok": h.get("ok"), "handshake failures": h.get("failures"),
        "handshake p50 ms": (h.get("latency_ms") or {}).get("p50"),
        "handshake p99 ms": (h.get("latency_ms") or {}).get("p99"),
        "handshakes/s": h.get("handshakes_per_s"),
        "fan-out delivered": f.get("delivered"), "fan-out lost": f.get("lost"),
        "fan-out p99 ms": (f.get("latency_ms") or {}).get("p99"),
        "server peak RSS MB": rss(m),
        "server CPU % of a core": cpu(m),
        "longest listen queue": (open(os.path.join(d, "listenq_" + m)).read().strip()
                                 if os.path.exists(os.path.join(d, "listenq_" + m)) else "?"),
    })
for k in rows[0]:
    print(f"{k:28}{str(rows[0][k]):>14}{str(rows[1][k]):>14}")
for m in ("quiet", "attacked"):
    kinds = load(f"hs_{m}.json").get("failure_kinds")
    if kinds: print(f"handshake failure kinds ({m}):", json.dumps(kinds))
print("attack:", json.dumps(load("attack.json")))
q, a = rows[0]["handshake p99 ms"], rows[1]["handshake p99 ms"]
ok = (rows[1]["handshake failures"] == 0 and rows[1]["fan-out lost"] == 0
      and isinstance(q, (int, float)) and isinstance(a, (int, float)) and a <= 3 * max(q, 0.001))
print("targets (0 failed handshakes, p99 <= 3x quiet, 0 lost):", "met" if ok else "NOT met")
EOF
echo "server accept_failed lines: $(grep -c '"accept_failed"' "$dir/server.log" || true)"
echo "kernel, during warm-up and attacked run (machine-wide):" \
    "$(join "$dir/kstat_before" "$dir/kstat_after" 2>/dev/null | awk '{printf "%s %d  ", $1, $3 - $2}')"
python3 - "$PORT" <<'EOF'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
for line in data.decode(errors="replace").splitlines():
    if line.startswith(("tessera_pending", "tessera_accept", "tessera_handshakes_total", "tessera_logins_total")):
        print(line)
EOF
