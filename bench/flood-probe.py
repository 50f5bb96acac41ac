#!/usr/bin/env python3
"""Flood-isolation probe (docs/security.md, "Flood isolation"): a bystander times application pings,
unloaded and while a flooder sends N pings as fast as it can on another connection to the same
server. Usage: syncline serve --insecure-dev-auth --event-loop-threads 1 ...; bench/flood-probe.py PORT [N]."""
import base64, json, os, socket, struct, sys, threading, time

HOST, PORT = "127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8080
N = int(sys.argv[2]) if len(sys.argv) > 2 else 20000

def token(sub):
    b = lambda s: base64.urlsafe_b64encode(s.encode()).decode().rstrip("=")
    return b('{"alg":"none","typ":"JWT"}') + "." + b(json.dumps({"sub": sub})) + "."

def frame(text, opcode=1):
    p = text.encode() if isinstance(text, str) else text
    mask = b"\x12\x34\x56\x78"
    h = bytes([0x80 | opcode])
    if len(p) < 126: h += bytes([0x80 | len(p)])
    elif len(p) <= 0xFFFF: h += bytes([0x80 | 126]) + struct.pack(">H", len(p))
    else: h += bytes([0x80 | 127]) + struct.pack(">Q", len(p))
    return h + mask + bytes(c ^ mask[i & 3] for i, c in enumerate(p))

class WS:
    def __init__(self, sub):
        self.s = socket.create_connection((HOST, PORT))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.s.sendall(f"GET /v1/sync HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                       f"Sec-WebSocket-Protocol: syncline.v1\r\n\r\n".encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf: self.buf += self.s.recv(65536)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.send(json.dumps({"type": "hello", "client_id": "c" + sub, "token": token(sub)}))
        while True:
            op, p = self.recv()
            if op == 1 and json.loads(p)["type"] == "welcome": break
    def send(self, text): self.s.sendall(frame(text))
    def recv(self):
        while True:
            if len(self.buf) >= 2:
                b1 = self.buf[1] & 0x7F; off = 2
                if b1 == 126 and len(self.buf) >= 4: b1 = struct.unpack(">H", self.buf[2:4])[0]; off = 4
                elif b1 == 127 and len(self.buf) >= 10: b1 = struct.unpack(">Q", self.buf[2:10])[0]; off = 10
                if b1 < 126 or off > 2:
                    if len(self.buf) >= off + b1:
                        op = self.buf[0] & 0x0F; p = self.buf[off:off + b1]; self.buf = self.buf[off + b1:]
                        if op == 9: self.s.sendall(frame(p, 0xA)); continue
                        return op, p
            d = self.s.recv(65536)
            if not d: return None, b""
            self.buf += d

def rtts(ws, count):
    out = []
    for i in range(count):
        t0 = time.perf_counter()
        ws.send(json.dumps({"type": "ping", "t": i}))
        while True:
            op, p = ws.recv()
            if op == 1 and b'"pong"' in p: break
        out.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.006)  # under the server's 200 messages/s
    return out

def pct(xs, q):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(q * len(xs)))]

by = WS("bystander")
base = rtts(by, 300)
fl = WS("flooder")
result = {}
def flood():
    blob = frame(json.dumps({"type": "ping"})) * N
    t0 = time.perf_counter()
    def drain():
        counts = {}
        while True:
            op, p = fl.recv()
            if op is None: result["eof_ms"] = (time.perf_counter() - t0) * 1000; break
            if op == 8:
                result["close"] = struct.unpack(">H", p[:2])[0]; result["close_ms"] = (time.perf_counter() - t0) * 1000
            else:
                k = json.loads(p).get("type"); counts[k] = counts.get(k, 0) + 1
        result["received"] = counts
    r = threading.Thread(target=drain); r.start()
    try:
        fl.s.sendall(blob)
    except OSError as e:
        result["send_error"] = str(e)
    result["sent_ms"] = (time.perf_counter() - t0) * 1000
    r.join(timeout=10)
done = threading.Event()
during = []
def probe():
    while not done.is_set():
        during.extend(rtts(by, 1))
t = threading.Thread(target=probe); t.start()
time.sleep(0.05)
f = threading.Thread(target=flood); f.start(); f.join(); time.sleep(0.3); done.set(); t.join()
print(f"unloaded p50 {pct(base,.5):.2f} p99 {pct(base,.99):.2f} max {max(base):.2f} ms; "
      f"during n={len(during)} p50 {pct(during,.5):.2f} p99 {pct(during,.99):.2f} max {max(during):.2f} ms; flooder {result}")
