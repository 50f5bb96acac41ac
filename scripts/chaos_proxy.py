"""Loopback TCP fault proxy for scripts/chaos (asyncio, stdlib only).

One FaultProxy listens on a loopback port and forwards every connection to a target port. The
harness drives it in-process:
  latency(ms)     every chunk waits this long before it is forwarded (0: off)
  partition()     nothing is forwarded any more, connections stay open (packets "lost"); new
                  connections are accepted and hang too, as a partitioned link would behave
  heal(reset)     forwarding resumes with what was held (a short partition TCP survives), or,
                  with reset=True, every connection is aborted (TCP gave up: a long partition)
  cut(mid_frame)  abort every connection; with mid_frame the next chunk toward the client is
                  forwarded only in part first, so the peer sees a frame broken off in the middle
"""
import asyncio
import random


class _Link:
    def __init__(self, proxy, reader, writer):
        self.proxy, self.reader, self.writer = proxy, reader, writer
        self.upstream = None
        self.tasks = []
        self.truncate_next = False
        self.cut_done = asyncio.Event()

    async def run(self):
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.proxy.target)
        except OSError:
            self.writer.transport.abort()
            return
        self.upstream = up_writer
        self.tasks = [asyncio.create_task(self.pump(self.reader, up_writer, False)),
                      asyncio.create_task(self.pump(up_reader, self.writer, True))]
        await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        self.abort()

    async def pump(self, reader, writer, toward_client):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await self.proxy.flowing.wait()
                if self.proxy.delay_ms:
                    await asyncio.sleep(self.proxy.delay_ms / 1000)
                    await self.proxy.flowing.wait()
                if toward_client and self.truncate_next and len(data) > 1:
                    writer.write(data[: max(1, len(data) // 2)])
                    await writer.drain()
                    self.cut_done.set()
                    return
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            try:
                writer.write_eof() if not writer.is_closing() else None
            except (OSError, RuntimeError):
                pass

    def abort(self):
        for t in self.tasks:
            t.cancel()
        for w in (self.writer, self.upstream):
            if w is not None:
                w.transport.abort()
        self.proxy.links.discard(self)


class FaultProxy:
    def __init__(self, name, target):
        self.name, self.target = name, target
        self.port = None
        self.links = set()
        self.delay_ms = 0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server = None
        self.cuts = 0

    async def start(self, port=0):
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader, writer):
        link = _Link(self, reader, writer)
        self.links.add(link)
        try:
            await link.run()
        except asyncio.CancelledError:
            link.abort()  # the proxy is closing

    def latency(self, ms):
        self.delay_ms = ms

    def partition(self):
        self.flowing.clear()

    def heal(self, reset=False):
        if reset:
            self.abort_all()
        self.flowing.set()

    def abort_all(self):
        n = len(self.links)
        for link in list(self.links):
            link.abort()
        return n

    async def cut(self, mid_frame=True, fraction=1.0, wait=0.5):
        """Aborts a share of the connections; returns how many were cut and how many mid-frame."""
        chosen = [l for l in list(self.links) if random.random() < fraction]
        if mid_frame:
            for l in chosen:
                l.truncate_next = True
            # connections with traffic in flight break inside a frame; idle ones are cut plainly
            waits = [asyncio.create_task(l.cut_done.wait()) for l in chosen]
            if waits:
                await asyncio.wait(waits, timeout=wait)
            for w in waits:
                w.cancel()
        broken = sum(1 for l in chosen if l.cut_done.is_set())
        for l in chosen:
            l.abort()
        self.cuts += len(chosen)
        return len(chosen), broken

    async def close(self):
        if self.server:
            self.server.close()
        self.abort_all()
