#!/usr/bin/env python3
"""Training run for scripts/pgo.sh: drives an instrumented tessera binary
through the work a deployed hub does most, so that the profile it writes on
exit tells the compiler which paths are hot.

    python3 scripts/pgo-train.py PATH/TO/INSTRUMENTED/tessera

Standard library only. Starts the server twice on a free loopback port (JSON
logs, the default, and history in memory; then text logs and history on disk
with --history-dir), each time with a users file and a random signing key in
a temporary directory, and stops it with SIGTERM: the profile is written when
the process exits normally. Paths the training does not reach (TLS, cluster,
the admin endpoints, TOTP) are still compiled, as code the profile calls
cold. Per run:

- authenticated WebSocket handshakes, 50 at a time (Bearer header; some with
  the cookie and an Origin), each reading the 101 and the welcome and closing
  with a masked close frame;
- rejected upgrades (bad signature, garbage, no token, wrong origin);
- a fan-out: subscribers on one channel, a publisher socket sending messages
  of about 230 bytes, every subscriber reading every message; resumes (since an
  offset, the last N); pings, unsubscribes, a bad command, and publishes
  over HTTP;
- HTTP: /healthz, /metrics, a login (right and wrong password), a refresh,
  a logout.

Exits non-zero when the server does not answer as expected (a trainer that
silently trains on errors would profile the error paths).
"""

import base64
import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HANDSHAKES = int(os.environ.get("PGO_HANDSHAKES", "20000"))
CONCURRENCY = 50
SUBSCRIBERS = 500
MESSAGES = 200


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fail(Exception):
    pass


class Ws:
    """A minimal WebSocket client on a blocking socket."""

    def __init__(self, port, headers):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        head = (
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
            "Sec-WebSocket-Version: 13\r\n%s\r\n" % (port, key, headers)
        )
        self.sock.sendall(head.encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.fill()
        end = self.buf.index(b"\r\n\r\n") + 4
        self.status = int(self.buf[9:12])
        self.buf = self.buf[end:]

    def fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise Fail("connection closed early")
        self.buf += chunk

    def frame(self):
        """(opcode, payload) of the next server frame."""
        while True:
            if len(self.buf) >= 2:
                n = self.buf[1] & 0x7F
                at = 2
                if n == 126 and len(self.buf) >= 4:
                    n, at = struct.unpack(">H", self.buf[2:4])[0], 4
                elif n == 127 and len(self.buf) >= 10:
                    n, at = struct.unpack(">Q", self.buf[2:10])[0], 10
                if n < 126 or at > 2:
                    if len(self.buf) >= at + n:
                        op, data = self.buf[0] & 0x0F, self.buf[at : at + n]
                        self.buf = self.buf[at + n :]
                        return op, data
            self.fill()

    def json(self):
        op, data = self.frame()
        if op != 1:
            raise Fail("expected a text frame, got opcode %d" % op)
        return json.loads(data)

    def send(self, payload, op=1):
        mask = secrets.token_bytes(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("BB", 0x80 | op, 0x80 | n)
        elif n < 65536:
            head = struct.pack(">BBH", 0x80 | op, 0xFE, n)
        else:
            head = struct.pack(">BBQ", 0x80 | op, 0xFF, n)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + body)

    def command(self, obj):
        self.send(json.dumps(obj).encode())

    def close(self):
        try:
            self.send(struct.pack(">H", 1000), op=8)
            while self.frame()[0] != 8:
                pass
        except (Fail, OSError):
            pass
        self.sock.close()


def http(port, method, path, body=None, headers=""):
    """(status, body) of one HTTP/1.1 request."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        data = b"" if body is None else json.dumps(body).encode()
        extra = "Content-Type: application/json\r\n" if body is not None else ""
        s.sendall(
            (
                "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n"
                "Content-Length: %d\r\n%s%s\r\n" % (method, path, port, len(data), extra, headers)
            ).encode()
            + data
        )
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    head, _, rest = out.partition(b"\r\n\r\n")
    return int(head[9:12]), rest


def expect(what, got, want):
    if got != want:
        raise Fail("%s: got %r, want %r" % (what, got, want))


def handshakes(port, tokens, count):
    """`count` handshakes with one of `tokens`, in CONCURRENCY threads."""
    errors = []

    def worker(n, token):
        try:
            for i in range(n):
                if i % 10 == 9:
                    headers = "Cookie: tessera_access=%s\r\nOrigin: http://127.0.0.1:%d\r\n" % (token, port)
                else:
                    headers = "Authorization: Bearer %s\r\n" % token
                ws = Ws(port, headers)
                expect("upgrade status", ws.status, 101)
                expect("first message", ws.json()["type"], "welcome")
                ws.close()
        except (Fail, OSError, ValueError) as e:
            errors.append(e)

    threads = [
        threading.Thread(target=worker, args=(count // CONCURRENCY, tokens[t % len(tokens)]))
        for t in range(CONCURRENCY)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise Fail("handshakes: %s" % errors[0])


def rejects(port, token):
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    cases = [
        ("Authorization: Bearer %s\r\n" % tampered, 401),
        ("Authorization: Bearer not.a.token\r\n", 401),
        ("", 401),
        ("Cookie: tessera_access=%s\r\nOrigin: http://evil.example\r\n" % token, 403),
    ]
    # Ten 401s within a minute throttle the address (SPEC §7): three here,
    # one wrong password in accounts(); the 403s do not count.
    for headers, status in cases[:3] + cases[3:] * 50:
        ws = Ws(port, headers)
        expect("rejected upgrade", ws.status, status)
        ws.sock.close()


def fanout(port, tokens, pub_token):
    subs = []
    for i in range(SUBSCRIBERS):
        ws = Ws(port, "Authorization: Bearer %s\r\n" % tokens[i // 8])
        expect("upgrade status", ws.status, 101)
        ws.json()
        ws.command({"type": "subscribe", "channel": "ops"})
        expect("subscribe", ws.json()["type"], "subscribed")
        subs.append(ws)
    pub = Ws(port, "Authorization: Bearer %s\r\n" % pub_token)
    pub.json()
    data = "x" * 200
    for i in range(MESSAGES):
        pub.command({"type": "publish", "channel": "ops", "data": {"n": i, "text": data}})
        if i % 20 == 0:
            pub.command({"type": "ping"})
    for i in range(20):
        status, _ = http(
            port, "POST", "/publish", {"channel": "ops", "data": i}, "Authorization: Bearer %s\r\n" % pub_token
        )
        expect("POST /publish", status, 202)
    want = MESSAGES + 20
    for ws in subs:
        got = 0
        while got < want:
            msg = ws.json()
            if msg.get("type") == "message":
                got += 1
    # Resume: replay from an offset, and the last N.
    for ws in subs[: SUBSCRIBERS // 10]:
        ws.command({"type": "subscribe", "channel": "ops", "since": {"last": 50}})
        sub = ws.json()
        expect("resubscribe", sub["type"], "subscribed")
        for _ in range(50):
            expect("replay", ws.json()["type"], "message")
        since = {"epoch": sub["epoch"], "offset": sub["offset"] - 30}
        ws.command({"type": "subscribe", "channel": "ops", "since": since})
        expect("resume", ws.json().get("recovered"), True)
        for _ in range(30):
            expect("replay", ws.json()["type"], "message")
    for ws in subs[: SUBSCRIBERS // 10]:
        ws.command({"type": "ping"})
        expect("ping", ws.json()["type"], "pong")
        ws.command({"type": "unsubscribe", "channel": "ops"})
        expect("unsubscribe", ws.json()["type"], "unsubscribed")
        ws.send(b"{not json")
        expect("bad command", ws.json()["type"], "error")
    for ws in subs + [pub]:
        ws.close()


def accounts(port):
    for _ in range(50):
        expect("/healthz", http(port, "GET", "/healthz")[0], 200)
    for _ in range(10):
        expect("/metrics", http(port, "GET", "/metrics")[0], 200)
    expect("wrong password", http(port, "POST", "/auth/login", {"username": "hq", "password": "nope"})[0], 401)
    status, body = http(port, "POST", "/auth/login", {"username": "hq", "password": "pgo-training"})
    expect("login", status, 200)
    refresh = json.loads(body)["refresh_token"]
    status, body = http(port, "POST", "/auth/refresh", {"refresh_token": refresh})
    expect("refresh", status, 200)
    refresh = json.loads(body)["refresh_token"]
    expect("logout", http(port, "POST", "/auth/logout", {"refresh_token": refresh})[0], 204)


def run(binary, log_format, extra, tmp, env):
    port = free_port()
    server = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:%d" % port, "--users", os.path.join(tmp, "users"),
         "--max-connections", "20000", "--max-sockets-per-address", "20000", "--insecure-cookies",
         "--log-format", log_format, *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        mint = lambda *a: subprocess.run(
            [binary, "token", *a], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        # At most 8 sockets per `sub` (--max-sockets-per-sub): one token for
        # each handshake thread and each group of 8 subscribers.
        tokens = [mint("--sub", "agent-%d" % i, "--clearance", "2") for i in range(SUBSCRIBERS // 8 + 1)]
        publisher = mint("--sub", "hq", "--clearance", "5", "--publish")
        started = time.monotonic()
        handshakes(port, tokens, HANDSHAKES)
        rejects(port, tokens[0])
        fanout(port, tokens, publisher)
        accounts(port)
        print("pgo-train: %s logs, %s: %d handshakes, %d x %d deliveries, %.1f s"
              % (log_format, "history on disk" if extra else "history in memory", HANDSHAKES, SUBSCRIBERS, MESSAGES + 20,
                 time.monotonic() - started), flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
    expect("server exit status after SIGTERM", code, 0)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: pgo-train.py PATH/TO/INSTRUMENTED/tessera")
    binary = os.path.abspath(sys.argv[1])
    env = dict(os.environ)
    env["TESSERA_SECRET"] = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [binary, "useradd", "--users", os.path.join(tmp, "users"), "--name", "hq", "--clearance", "5",
             "--publish"],
            input="pgo-training\n", env=env, check=True, capture_output=True, text=True,
        )
        try:
            run(binary, "json", [], tmp, env)
            run(binary, "text", ["--history-dir", os.path.join(tmp, "history")], tmp, env)
        except (Fail, OSError, subprocess.SubprocessError) as e:
            sys.exit("pgo-train: %s" % e)


if __name__ == "__main__":
    main()
