#!/usr/bin/env python3
"""Writes the history_log seeds: records encoded as src/history/disk.rs
documents them (Python standard library only, independent of tessera)."""
import hashlib, os, struct

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'history_log')

def record(channel, epoch, offset, ts_ms, frame):
    c, e, f = channel.encode(), epoch.encode(), frame.encode()
    body = bytes([len(c)]) + c + bytes([len(e)]) + e + struct.pack('<QQ', offset, ts_ms) + f
    ln = struct.pack('<I', len(body))
    return ln + hashlib.sha256(ln + body).digest()[:8] + body

def msg(ch, off, data):
    return ('{"type":"message","channel":"%s","id":%d,"ts":1700000000000,"from":"hq","data":%s}'
            % (ch, off, data))

def write(name, data):
    with open(os.path.join(here, name), 'wb') as fh:
        fh.write(data)

three = b''.join(record('ops', 'Zx3kQ9_aP-2m', i, 1700000000000 + i, msg('ops', i, '{"n":%d}' % i))
                 for i in range(1, 4))
write('empty', b'')
write('three-messages', three)
write('marker', record('quiet', 'Q1w2E3r4', 42, 1700000000000, ''))
write('two-channels', record('ops', 'AAAAAAAA', 1, 1, msg('ops', 1, '1'))
      + record('@agent-7', 'BBBBBBBB', 9, 2, msg('@agent-7', 9, '"hi \\u00e9"')))
write('torn-tail', three + record('ops', 'Zx3kQ9_aP-2m', 4, 5, msg('ops', 4, '{}'))[:30])
bad = bytearray(three)
bad[len(bad) // 2] ^= 0x20
write('flipped-bit', bytes(bad))
write('huge-length', struct.pack('<I', 0xFFFFFFFF) + b'\0' * 8)
