#!/usr/bin/env python3
"""RSS per idle WebSocket connection of syncline-ws-echo (the server's WebSocket layer), by
permessage-deflate mode: opens N connections (offering permessage-deflate), sends one compressed
message on each and reads its echo (so a context-takeover compressor exists), then measures the
server's RSS. Usage: bench/ws-idle-rss.py ECHO_BINARY [N]"""
import os, socket, struct, subprocess, sys, time, zlib

def rss_kib(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def frame(payload, rsv1):
    mask = b"\x01\x02\x03\x04"
    head = bytes([0x81 | (0x40 if rsv1 else 0)])
    n = len(payload)
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(("GET /autobahn HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    compressed = b"permessage-deflate" in data.split(b"\r\n\r\n")[0]
    message = (b'{"type":"changes","sub":"t","changes":[' + b'{"op":"insert","row":{"memo":"hello"}},' * 8 + b'{}]}')
    if compressed:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        payload = c.compress(message) + c.flush(zlib.Z_SYNC_FLUSH)
        s.sendall(frame(payload[:-4], True))
    else:
        s.sendall(frame(message, False))
    got = b""
    while len(got) < 2:
        got += s.recv(65536)
    return s

def main():
    binary, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    for mode, extra in [("off", []), ("shared", []), ("context-takeover", []),
                        ("context-takeover", ["--deflate-window-bits", "15", "--deflate-memory-level", "8"])]:
        port = free_port()
        server = subprocess.Popen([binary, "--port", str(port), "--websocket-compression", mode] + extra,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)
            warm = [connect(port) for _ in range(50)]
            time.sleep(0.5)
            before = rss_kib(server.pid)
            sockets = [connect(port) for _ in range(n)]
            time.sleep(1.0)
            after = rss_kib(server.pid)
            print("mode=%-16s %-45s connections=%d RSS before %d KiB, after %d KiB: %.1f KiB per idle connection"
                  % (mode, " ".join(extra) or "(defaults)", n, before, after, (after - before) / n))
            for s in sockets + warm:
                s.close()
        finally:
            server.terminate(); server.wait()

main()
