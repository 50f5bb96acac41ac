"""Loading syncline-bench result files and the figures taken from them (medians, formats), shared by
results.py (the tables and plots) and goals.py (the goals each issue set)."""

import json
import os
import re
import statistics
import sys
from collections import defaultdict

PEERS = ["go", "node", "python"]
ORDER = ["syncline", "go", "node", "python", "notify"]
LABEL = {
    "syncline": "Syncline",
    "go": "Go 1.19 + gorilla + lib/pq",
    "node": "Node 20 + ws + pg",
    "python": "Python websockets + asyncpg",
    "notify": "raw NOTIFY floor",
}


def fanout_key(name):
    """Orders fan-out scenarios: flat out by S, then rate-limited by S."""
    m = re.match(r"[a-z]+-(\d+)x(\d+)(?:-r(\d+))?", name)
    if not m:
        return (9, 0, name)
    return (1 if m.group(3) else 0, int(m.group(1)), name)


def load(paths):
    runs = defaultdict(list)  # (kind, server, scenario) -> [result]
    machine = None
    for path in paths:
        try:
            with open(path) as f:
                o = json.load(f)
        except (OSError, ValueError):
            print(f"(skipping unreadable {path})", file=sys.stderr)
            continue
        kind = o.get("scenario")
        if kind not in ("fanout", "idle", "resume", "subscribe"):
            continue
        if kind == "fanout" and o.get("feeds") == "many":
            kind = "feeds"
        machine = machine or o.get("machine")
        server = o.get("server") or "syncline"
        name = o.get("name") or os.path.basename(path)
        name = name.split(":", 1)[1] if ":" in name else name
        name = re.sub(r"-run\d+$", "", name)
        runs[(kind, server, name)].append(o)
    return runs, machine


def med(results, *keys):
    vals = []
    for o in results:
        v = o
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals.append(float(v))
    return statistics.median(vals) if vals else None


def big(v):
    return "–" if v is None else f"{v:,.0f}"


def ms(v):
    return "–" if v is None else f"{v:.2f}"


def kib(v):
    return "–" if v is None else f"{v:.1f}"


def floor_for(rate, runs):
    """The floor result matching a fan-out rate (flat out ↔ floor-1x…, r500 ↔ floor-r500)."""
    for (kind, server, name), rs in runs.items():
        if server != "notify":
            continue
        if rate > 0 and name == f"floor-r{rate:.0f}":
            return rs
        if rate == 0 and name.startswith("floor-1x"):
            return rs
    return None


def fanout_scenarios(runs, kind="fanout"):
    names = {name for (k, server, name) in runs if k == kind and server != "notify"}
    return sorted(names, key=fanout_key)


def incomplete(rs):
    """' (incomplete in k of n runs)' when some run missed deliveries or lost clients."""
    bad = sum(1 for o in rs if o.get("complete") is False)
    return f" **incomplete in {bad} of {len(rs)}**" if bad else ""


def servers_of(runs, kind):
    present = {server for (k, server, _) in runs if k == kind}
    return [s for s in ORDER if s in present] + sorted(present - set(ORDER))


def delivery_cells(rs):
    """The fan-out and many-feeds columns from commits/s to deliveries per server CPU-s (medians)."""
    dropped = med(rs, "dropped_connections") or 0
    missing = big(med(rs, "missing")) + (f" ({dropped:.0f} dropped)" if dropped else "") + incomplete(rs)
    return (f"{big(med(rs, 'commits_per_s'))} | {big(med(rs, 'deliveries_per_s'))} | "
            f"{missing} | {ms(med(rs, 'latency_ms', 'p50'))} | {ms(med(rs, 'latency_ms', 'p99'))} | "
            f"{ms(med(rs, 'latency_ms', 'p999'))} | {ms(med(rs, 'server_cpu_s'))} | "
            f"{big(med(rs, 'deliveries_per_server_cpu_s'))}")


def results_of(runs, kind, names, servers):
    """(name, server, runs) for every scenario name and server that has results, in table order."""
    for name in names:
        for server in servers:
            rs = runs.get((kind, server, name))
            if rs:
                yield name, server, rs
