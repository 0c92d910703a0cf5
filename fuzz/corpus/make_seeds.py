#!/usr/bin/env python3
"""Writes the seed corpora of jwt_verify and key_file, and the dictionaries.

Run from anywhere: `python3 fuzz/corpus/make_seeds.py`. The keys and the
clock are those of fuzz/src/lib.rs (NOW = 1700000000), so the valid seed
tokens verify in the targets. Standard library only; HMAC and base64url are
done here independently of tessera. (jwt_structured's seeds are arbitrary
bytes picked from fuzzing runs; see README.md next to this file.)
"""
import base64, hashlib, hmac, json, os

HERE = os.path.dirname(os.path.abspath(__file__))
FUZZ = os.path.dirname(HERE)
NOW = 1_700_000_000
SINGLE = "tessera-fuzz-single-key-0123456789abcdef"
K2 = "tessera-fuzz-key-k2-0123456789abcdef0123"
K1 = "tessera-fuzz-key-k1-0123456789abcdef0123"
FOREIGN = "tessera-fuzz-foreign-key-0123456789abcdef"


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def compact(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def token(header, claims, key=SINGLE, sig=None) -> str:
    h = header if isinstance(header, str) else compact(header)
    c = claims if isinstance(claims, str) else compact(claims)
    head = b64(h.encode()) + "." + b64(c.encode())
    if sig is None:
        sig = b64(hmac.new(key.encode(), head.encode(), hashlib.sha256).digest())
    return head + "." + sig


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


HS = {"alg": "HS256", "typ": "JWT"}
# What `tessera token --sub agent-7 --clearance 2 --channels ops,briefing --publish` makes.
CLI = {"sub": "agent-7", "exp": NOW + 3600, "iat": NOW, "clearance": 2, "channels": ["ops", "briefing"], "publish": True}
# What /auth/login issues (with a session id), under --issuer/--audience.
LOGIN = {"sub": "field-3", "exp": NOW + 3600, "iat": NOW, "iss": "https://hub.example", "aud": "tessera",
         "clearance": 1, "channels": ["ops", "ops.*", "@field-3"], "sid": "s-6f1c", "jti": "t-91ab"}

# jwt_verify: first byte '0'..'3' selects key set (bit 0: kids) and options (bit 1: strict).
V = "jwt_verify"
write(V, "valid-cli-token", "0" + token(HS, CLI))
write(V, "valid-minimal", "0" + token(HS, {"sub": "agent-7", "exp": NOW + 3600}))
write(V, "valid-float-exp", "0" + token(HS, {"sub": "agent-7", "exp": NOW + 3600.25, "iat": NOW - 0.5}))
write(V, "valid-kid-k2", "1" + token({**HS, "kid": "k2"}, CLI, K2))
write(V, "valid-kid-k1-old-key", "1" + token({**HS, "kid": "k1"}, CLI, K1))
write(V, "valid-no-kid-kid-keyset", "1" + token(HS, CLI, K2))
write(V, "valid-strict-login", "2" + token(HS, LOGIN))
write(V, "valid-strict-aud-array-leeway", "3" + token({**HS, "kid": "k2"},
      {**LOGIN, "aud": ["other", "tessera"], "iat": NOW + 20, "nbf": NOW + 25}, K2))
write(V, "valid-typ-at-jwt", "0" + token({"typ": "at+jwt", "alg": "HS256"}, CLI))
write(V, "valid-no-typ-extra-header", "0" + token({"alg": "HS256", "cty": "x"}, CLI))
write(V, "valid-spaced-json", "0" + token('{ "alg": "HS256", "typ": "JWT" }', '{ "sub": "agent-7", "exp": 1700003600 }'))
write(V, "valid-escaped-names", "0" + token('{"\\u0061lg":"HS256"}', '{"s\\u0075b":"\\u00e9t\\u00e9","exp":1700003600}'))
write(V, "alg-none", "0" + token({"alg": "none", "typ": "JWT"}, CLI, sig=""))
write(V, "alg-hs512", "0" + token({"alg": "HS512", "typ": "JWT"}, CLI,
      sig=b64(hmac.new(SINGLE.encode(), b"x", hashlib.sha512).digest())))
write(V, "alg-rs256", "0" + token({"alg": "RS256", "typ": "JWT"}, CLI))
write(V, "alg-lowercase", "0" + token({"alg": "hs256", "typ": "JWT"}, CLI))
write(V, "crit-header", "0" + token({**HS, "crit": ["exp"]}, CLI))
write(V, "typ-jose", "0" + token({"alg": "HS256", "typ": "JOSE"}, CLI))
write(V, "unknown-kid", "1" + token({**HS, "kid": "k3"}, CLI, K2))
write(V, "kid-on-single-key", "0" + token({**HS, "kid": "k2"}, CLI))
write(V, "foreign-key", "0" + token(HS, CLI, FOREIGN))
write(V, "expired", "0" + token(HS, {**CLI, "exp": NOW - 1}))
write(V, "not-yet-valid", "0" + token(HS, {**CLI, "nbf": NOW + 600}))
write(V, "exp-string", "0" + token(HS, {**CLI, "exp": str(NOW + 3600)}))
write(V, "exp-negative", "0" + token(HS, {**CLI, "exp": -1}))
write(V, "exp-huge", "0" + token(HS, '{"sub":"agent-7","exp":1e400}'))
write(V, "clearance-too-big", "0" + token(HS, {**CLI, "clearance": 2**32}))
write(V, "duplicate-sub", "0" + token(HS, '{"sub":"a","sub":"b","exp":1700003600}'))
write(V, "wrong-issuer-strict", "2" + token(HS, {**LOGIN, "iss": "https://evil.example"}))
write(V, "padded", "0" + token(HS, CLI) + "=")
write(V, "std-alphabet", "0" + token(HS, CLI).replace("-", "+").replace("_", "/"))
write(V, "four-segments", "0" + token(HS, CLI) + ".e30")
write(V, "bearer-with-space", "0 " + token(HS, CLI) + "\n")
write(V, "claims-not-object", "0" + token(HS, "[1,2]"))

# key_file: both forms, comments, blank lines, CRLF, and refused files.
K = "key_file"
write(K, "single-keygen", "ZmFrZS1rZXktZm9yLWZ1enppbmctb25seS0wMTIzNDU\n")
write(K, "single-with-comment", "# tessera key, made by tessera keygen\n\n  " + SINGLE + "  \n")
write(K, "kids-rotation", "# newest first: it signs\nk2:" + K2 + "\nk1:" + K1 + "\n")
write(K, "kids-spaced-crlf", "# rotated 2024-05\r\n\r\n old.v1 : " + K1 + "\r\nnew_2-x: " + K2 + "\r\n")
write(K, "kid-with-colon-in-key", "k1:abc:" + K1 + "\n")
write(K, "kid-64-chars", "k" * 64 + ":" + K1 + "\n")
write(K, "short-key", "k1:too-short\n")
write(K, "mixed-forms", SINGLE + "\nk1:" + K1 + "\n")
write(K, "two-unnamed", SINGLE + "\n" + K1 + "\n")
write(K, "duplicate-kid", "k1:" + K1 + "\nk1:" + K2 + "\n")
write(K, "bad-kid", "key one:" + K1 + "\n")
write(K, "only-comments", "# no key yet\n\n")
write(K, "empty", "")

# Dictionaries: JSON and JOSE words, and the same as base64url at each of
# the three alignments a JSON fragment can take inside a segment.
words = ['"alg"', '"typ"', '"kid"', '"crit"', '"HS256"', '"JWT"', '"at+jwt"', '"application/jwt"', '"none"',
         '"k1"', '"k2"', '"sub"', '"exp"', '"nbf"', '"iat"', '"iss"', '"aud"', '"clearance"', '"channels"',
         '"publish"', '"sid"', '"jti"', "true", "false", "null", "1700003600", "1e400", "9007199254740993",
         "4294967296", '"https://hub.example"', '"tessera"', "\\u0000"]
fragments = ['{"alg":"HS256","typ":"JWT"}', '{"alg":"HS256","typ":"JWT","kid":"k2"}', '{"alg":"none"}',
             '"kid":"k1"', '"sub":"', '"exp":', '"nbf":', '"iat":', '"iss":"', '"aud":"', '"aud":[',
             '"clearance":', '"channels":[', '"publish":true', '"sid":"', '"jti":"', '"crit":[', '"typ":"at+jwt"',
             '":1700003600', '":1700003600.5', '"}', '],"']


def aligned(fragment):
    out = set()
    for lead in range(3):
        raw = b"\0" * lead + fragment.encode()
        enc = b64(raw)
        start = -(-8 * lead // 6)
        end = 8 * len(raw) // 6
        if end - start >= 3:
            out.add(enc[start:end])
    return sorted(out)


def dict_line(s):
    out = ""
    for b in s.encode():
        c = chr(b)
        if c in '\\"':
            out += "\\" + c
        elif 0x20 <= b < 0x7F:
            out += c
        else:
            out += "\\x%02X" % b
    return '"' + out + '"'


lines = ["# JSON and JOSE words (jwt_structured strings, jwt_verify after a decode).",
         *map(dict_line, words),
         "# Token punctuation and look-alikes.",
         *map(dict_line, [".", "=", "+", "/", "eyJ", "e30"]),
         "# base64url of common header and claim fragments, three alignments each."]
for f in fragments:
    lines += map(dict_line, aligned(f))
os.makedirs(os.path.join(FUZZ, "dict"), exist_ok=True)
with open(os.path.join(FUZZ, "dict", "jwt.dict"), "w") as fh:
    fh.write("# Generated by fuzz/corpus/make_seeds.py; libFuzzer -dict format.\n" + "\n".join(lines) + "\n")

key_words = ["#", ":", "\n", "\r\n", " ", "\t", "k1:", "k2:", ".", "_", "-", "0123456789abcdef0123456789abcdef"]
with open(os.path.join(FUZZ, "dict", "key_file.dict"), "w") as fh:
    fh.write("# Generated by fuzz/corpus/make_seeds.py; libFuzzer -dict format.\n"
             + "\n".join(dict_line(w) for w in key_words) + "\n")
