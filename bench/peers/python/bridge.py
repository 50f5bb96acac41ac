"""LISTEN/NOTIFY → WebSocket bridge, as a Python user would write it: websockets + asyncpg, asyncio.

    DATABASE_URL=postgres://… PORT=8083 python bridge.py
    ws://127.0.0.1:8083/ws?account=<account_id>   each message: one row's JSON (the NOTIFY payload)

One LISTEN connection (asyncpg add_listener); each notification is parsed for its account_id and
put on the asyncio.Queue of that account's clients. The queue holds QUEUE_LIMIT messages: a client
whose queue is full is dropped, as a real bridge must.
"""

import asyncio
import json
import os
import signal
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import asyncpg
from websockets.asyncio.server import serve

QUEUE_LIMIT = int(os.environ.get("QUEUE_LIMIT", "1024"))
CHANNEL = "bridge"

by_account: dict[str, set["Client"]] = {}
dropped = 0


class Client:
    __slots__ = ("ws", "account", "queue", "sender")

    def __init__(self, ws, account):
        self.ws = ws
        self.account = account
        self.queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_LIMIT)
        self.sender: asyncio.Task | None = None

    async def pump(self):
        while True:
            message = await self.queue.get()
            await self.ws.send(message)


def unregister(client):
    clients = by_account.get(client.account)
    if clients is not None:
        clients.discard(client)
        if not clients:
            del by_account[client.account]


def on_notification(connection, pid, channel, payload):
    global dropped
    try:
        account = json.loads(payload)["account_id"]
    except (ValueError, KeyError, TypeError):
        return
    clients = by_account.get(account)
    if not clients:
        return
    for client in list(clients):
        try:
            client.queue.put_nowait(payload)
        except asyncio.QueueFull:
            dropped += 1
            unregister(client)
            client.sender.cancel()
            asyncio.ensure_future(client.ws.close(1013, "too slow"))


async def handler(ws):
    query = parse_qs(urlsplit(ws.request.path).query)
    account = query.get("account", [""])[0]
    if not account:
        await ws.close(1008, "account required")
        return
    client = Client(ws, account)
    by_account.setdefault(account, set()).add(client)
    client.sender = asyncio.create_task(client.pump())
    try:
        async for _ in ws:  # clients send nothing; this waits for the close
            pass
    finally:
        unregister(client)
        client.sender.cancel()


def process_request(connection, request):
    path = urlsplit(request.path).path
    if path == "/healthz":
        return connection.respond(HTTPStatus.OK, "ok\n")
    if path != "/ws":
        return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
    return None


async def main():
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8083"))
    pg = await asyncpg.connect(os.environ["DATABASE_URL"])
    await pg.add_listener(CHANNEL, on_notification)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(handler, host, port, process_request=process_request):
        print(f"python bridge on ws://{host}:{port}/ws (queue {QUEUE_LIMIT})", flush=True)
        await stop
    print(f"stopping; {dropped} clients dropped for a full queue", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
