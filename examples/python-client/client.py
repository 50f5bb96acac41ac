#!/usr/bin/env python3
"""A minimal Syncline client: subscribe to one account's transactions and keep the feed across
restarts by saving the cursor (resume with `after`, no gaps, no duplicates).

    pip install websockets
    swift run syncline serve --demo          # in another terminal
    python3 examples/python-client/client.py --account alice-checking

Stop it (Ctrl-C), commit some rows, start it again: it prints exactly the rows it missed.
"""
import argparse
import asyncio
import json
import pathlib
import urllib.request

import websockets


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default="127.0.0.1:8080")
    parser.add_argument("--sub", default="alice")
    parser.add_argument("--account", default="alice-checking")
    parser.add_argument("--state", default=".syncline-client-cursor.json")
    args = parser.parse_args()

    state_path = pathlib.Path(args.state)
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    token = json.load(urllib.request.urlopen(f"http://{args.server}/demo/token?sub={args.sub}"))["token"]

    async with websockets.connect(f"ws://{args.server}/v1/sync", subprotocols=["syncline.v1"]) as ws:
        await ws.send(json.dumps({"type": "hello", "client_id": f"example-{args.sub}", "token": token}))
        subscribe = {"type": "subscribe", "id": "tx", "collection": "transactions",
                     "where": {"account_id": args.account}}
        if "cursor" in state:
            subscribe["after"] = state["cursor"]
        async for raw in ws:
            message = json.loads(raw, parse_float=str)  # keep numeric digits exactly
            kind = message["type"]
            if kind == "welcome":
                await ws.send(json.dumps(subscribe))
            elif kind == "subscribed":
                print(f"subscribed ({message['mode']}) at {message['cursor']}")
            elif kind == "snapshot":
                for row in message["rows"]:
                    print(f"  snapshot  {row['created_at']}  {str(row['amount']):>10}  {row['memo']}")
                if message["done"]:
                    state["cursor"] = message["cursor"]
            elif kind == "changes":
                for change in message["changes"]:
                    row = change["row"] or {}
                    print(f"  {change['op']:<8}  {row.get('created_at', '')}  {str(row.get('amount', '')):>10}  {row.get('memo', change['key'])}")
                state["cursor"] = message["cursor"]
            elif kind == "error":
                print(f"error: {message}")
            state_path.write_text(json.dumps(state))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
