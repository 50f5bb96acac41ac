#!/usr/bin/env python3
"""Writes bench/RESULTS.md (tables, goals, PNG plots) from syncline-bench JSON result files.

    bench/.peers/venv/bin/python bench/peers/results.py [--out bench/RESULTS.md] [--plots DIR]
        [--machine TEXT] [--mutations mutations.md] [--wall-seconds S] [--runs N] FILE...

Reads the fan-out, many-feeds, resume and idle results of Syncline (bench/run:
bench/results/<scenario>[-runK].json) and of the peers (bench/peers/run:
bench/results/peer-<server>-<scenario>[-runK].json). A result's server is its "server" field (absent
in older files: syncline) and its scenario the name without a "server:" prefix or "-runK" suffix.
Repeated runs of one (server, scenario) are reduced to the median of each figure separately; a
scenario in which any run was incomplete (a bridge that could not keep up and timed out, or dropped
clients) is marked so. Goals (issue 5) are reported, not asserted. The mutation table
(syncline-bench report's, already medians over repeats) is included as is. Plots need matplotlib
(bench/peers/install puts it in the venv); without it the tables are still written.
"""

import argparse
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


def write(runs, machine, out, plots_dir, args):
    lines = []
    add = lines.append
    cores = (machine or {}).get("cores", "?")
    cpu = (machine or {}).get("cpu", "?")
    n_runs = max((len(v) for v in runs.values()), default=0)
    min_runs = min((len(v) for v in runs.values()), default=0)
    stamp = max((o.get("time", "") for rs in runs.values() for o in rs), default="")
    add("# Syncline benchmarks: Syncline and the bridges users write instead")
    add("")
    add(f"Machine: **{args.machine or f'{cores} cores, {cpu}'}**; server, PostgreSQL and the load client share "
        "these cores, loopback only. "
        f"Run finished {stamp}" + (f", `bench/run` took {args.wall_seconds / 60:.1f} min{args.wall_note}"
                                   if args.wall_seconds else "") + ". "
        f"Figures are medians of {min_runs}–{n_runs} runs per scenario (each figure separately). "
        "Peers: bench/peers/ (one LISTEN connection, a per-row `pg_notify(row_to_json)` trigger, "
        "a bounded per-client queue of 1,024 messages); see bench/README.md for the scenarios and "
        "bench/scenarios.sh for the sizes.")
    add("")

    fan_servers = [s for s in servers_of(runs, "fanout") if s != "notify"]
    scen = fanout_scenarios(runs)
    if scen:
        add("## Fan-out")
        add("")
        add("| scenario | server | commits/s | deliveries/s | missing | p50 ms | p99 ms | p99.9 ms | server CPU s | deliveries / server CPU-s | runs |")
        add("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in scen:
            for _, server, rs in results_of(runs, "fanout", [name], fan_servers):
                add(f"| {name} | {LABEL.get(server, server)} | {delivery_cells(rs)} | {len(rs)} |")
            # The floor once per scenario, after the servers: same rate, one listener.
            rate = med(runs.get(("fanout", fan_servers[0], name), [{}]), "rate") if fan_servers else None
            fl = floor_for(rate or 0, runs) if rate is not None else None
            if fl:
                add(f"| {name} | {LABEL['notify']} (1 listener) | {big(med(fl, 'commits_per_s'))} | {big(med(fl, 'deliveries_per_s'))} | "
                    f"{big(med(fl, 'missing'))} | {ms(med(fl, 'latency_ms', 'p50'))} | {ms(med(fl, 'latency_ms', 'p99'))} | "
                    f"{ms(med(fl, 'latency_ms', 'p999'))} | – | – | {len(fl)} |")
        add("")

    feed_scen = fanout_scenarios(runs, "feeds")
    if feed_scen:
        add("## Many feeds")
        add("")
        per_commit = sorted({str(r.get("rows_per_commit")) for (k, _, _), rs in runs.items() if k == "feeds"
                             for r in rs if r.get("rows_per_commit")})
        k = " or ".join(per_commit) or "K"
        add("Each subscriber on its own account's feed (user `bench<n>`, account `bench-<n>`); the writer commits "
            f"{k} rows per transaction over consecutive accounts, so every commit reaches {k} feeds. "
            "rows/s is the writer's.")
        add("")
        add("| scenario | server | rows/s | deliveries/s | missing | p50 ms | p99 ms | p99.9 ms | server CPU s | deliveries / server CPU-s | setup s | runs |")
        add("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, server, rs in results_of(runs, "feeds", feed_scen, servers_of(runs, "feeds")):
            add(f"| {name} | {LABEL.get(server, server)} | {delivery_cells(rs)} | {ms(med(rs, 'setup_s'))} | {len(rs)} |")
        add("")

    resumes = sorted(name for (k, server, name) in runs if k == "resume")
    if resumes:
        add("## Resume storm (Syncline)")
        add("")
        add("C clients on their own feeds save their snapshot cursor and disconnect; M rows are committed over their "
            "accounts (numbered per account); all reconnect at once with `after` = their cursor. *live*: until every "
            "client has `subscribed` (mode resume); *caught up*: until the last missed row arrived. Gaps and "
            "duplicates are checked per client on the per-account numbers (must be 0).")
        add("")
        add("| scenario | clients | changes | write s | live s | caught up s | server CPU s | rows received | gaps | duplicates | resets | runs |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, server, rs in results_of(runs, "resume", resumes, servers_of(runs, "resume")):
            add(f"| {name} | {big(med(rs, 'clients'))} | {big(med(rs, 'changes'))} | {ms(med(rs, 'write_s'))} | "
                f"{ms(med(rs, 'live_s'))} | {ms(med(rs, 'caught_up_s'))} | {ms(med(rs, 'server_cpu_s'))} | "
                f"{big(med(rs, 'deliveries'))} | {sum(o.get('gaps', 0) for o in rs)} (all runs) | "
                f"{sum(o.get('duplicates', 0) for o in rs)} (all runs) | {sum(o.get('resets', 0) for o in rs)} | {len(rs)} |")
        add("")

    subs = sorted({name for (k, _, name) in runs if k == "subscribe"})
    if subs:
        add("## Subscribing at once (issue 13)")
        add("")
        add("N clients connect and subscribe at once (the load client sets up 256 at a time): time until every one "
            "has its snapshot (`done: true`). The bridges have no snapshot: until every WebSocket is open.")
        add("")
        add("| scenario | server | all have their snapshot s | subscribes/s | server CPU s | runs |")
        add("|---|---|---:|---:|---:|---:|")
        for name, server, rs in results_of(runs, "subscribe", subs, servers_of(runs, "subscribe")):
            add(f"| {name} | {LABEL.get(server, server)} | {ms(med(rs, 'setup_s'))} | {big(med(rs, 'subscribes_per_s'))} | "
                f"{ms(med(rs, 'server_cpu_s'))} | {len(rs)} |")
        add("")

    idle_servers = servers_of(runs, "idle")
    idle_names = sorted({name for (k, _, name) in runs if k == "idle"},
                        key=lambda n: (int(re.sub(r"\D", "", n) or 0), n))
    if idle_names:
        add("## Idle connections")
        add("")
        add("| scenario | server | setup s | RSS before MiB | RSS open MiB | KiB / idle connection | runs |")
        add("|---|---|---:|---:|---:|---:|---:|")
        for name, server, rs in results_of(runs, "idle", idle_names, idle_servers):
            before = med(rs, "rss_before_kib")
            opened = med(rs, "rss_open_kib")
            add(f"| {name} | {LABEL.get(server, server)} | {ms(med(rs, 'setup_s'))} | "
                f"{kib(before / 1024 if before else None)} | {kib(opened / 1024 if opened else None)} | "
                f"{ms(med(rs, 'rss_per_connection_kib'))}{incomplete(rs)} | {len(rs)} |")
        add("")

    if args.mutations and os.path.exists(args.mutations):
        add("## Mutations (issue 3: group commit vs batching off vs pgbench)")
        add("")
        with open(args.mutations) as f:
            for line in f.read().splitlines():
                if not line.startswith("Machine:"):
                    add(line.replace("## ", "### ", 1) if line.startswith("## ") else line)
        add("")

    add("## Goals (issue 5; reported, not asserted)")
    add("")
    add_goals(runs, add)
    add("")

    baseline = load(args.baseline_files)[0] if args.baseline_files else None
    add("## Goals (issue 13: the fan-out core; reported, not asserted)")
    add("")
    add_issue13_goals(runs, baseline, args.baseline_note, add)
    add("")

    images = plot(runs, scen, fan_servers, plots_dir, os.path.dirname(os.path.abspath(out)))
    if images:
        add("## Plots")
        add("")
        for title, rel in images:
            add(f"![{title}]({rel})")
            add("")
    with open(out, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {out}" + (f" and {len(images)} plots in {plots_dir}" if images else ""))


def add_goals(runs, add):
    # 1. deliveries per server CPU-second: Syncline vs the best peer, per flat-out scenario.
    for name in fanout_scenarios(runs) + fanout_scenarios(runs, "feeds"):
        kind = "feeds" if name.startswith("feeds-") else "fanout"
        s = runs.get((kind, "syncline", name))
        if not s or (med(s, "rate") or 0) > 0:
            continue
        peers = {p: med(runs[(kind, p, name)], "deliveries_per_server_cpu_s")
                 for p in PEERS if (kind, p, name) in runs}
        peers = {p: v for p, v in peers.items() if v}
        if not s or not peers:
            continue
        sv = med(s, "deliveries_per_server_cpu_s")
        best = max(peers, key=peers.get)
        if sv:
            ratio = sv / peers[best]
            verdict = "met" if ratio >= 2 else f"missed by {2 - ratio:.2f}× (needs {2 * peers[best]:,.0f})"
            add(f"- **Efficiency, {name}**: Syncline {sv:,.0f} deliveries per server CPU-s vs best peer "
                f"{LABEL[best]} {peers[best]:,.0f} → **{ratio:.2f}×** (goal ≥ 2×: {verdict}).")
    # 2. p99 within 2 ms of the NOTIFY floor at 1k subscribers, 500 changes/s.
    s = next((rs for (k, srv, n), rs in runs.items()
              if k == "fanout" and srv == "syncline" and med(rs, "subscribers") == 1000 and med(rs, "rate") == 500), None)
    fl = floor_for(500, runs)
    if s and fl:
        sp, fp = med(s, "latency_ms", "p99"), med(fl, "latency_ms", "p99")
        if sp is not None and fp is not None:
            gap = sp - fp
            verdict = "met" if gap <= 2 else f"missed by {gap - 2:.2f} ms"
            add(f"- **Latency, 1,000 subscribers at 500 changes/s**: Syncline p99 {sp:.2f} ms, NOTIFY floor p99 "
                f"{fp:.2f} ms → {gap:+.2f} ms (goal ≤ +2 ms: {verdict}). Commits/s reached: Syncline "
                f"{big(med(s, 'commits_per_s'))}, floor {big(med(fl, 'commits_per_s'))}.")
    # 3. RSS per idle connection at the largest idle size.
    idle = [(int(re.sub(r'\D', '', n) or 0), n) for (k, srv, n) in runs if k == "idle" and srv == "syncline"]
    if idle:
        _, name = max(idle)
        v = med(runs[("idle", "syncline", name)], "rss_per_connection_kib")
        if v is not None:
            verdict = "met" if v <= 8 else f"missed by {v - 8:.2f} KiB"
            others = ", ".join(f"{p} {med(runs[('idle', p, name)], 'rss_per_connection_kib'):.1f}"
                               for p in PEERS if ("idle", p, name) in runs)
            add(f"- **Memory, {name}**: Syncline {v:.2f} KiB per idle connection (goal ≤ 8 KiB: {verdict})"
                + (f"; peers: {others} KiB." if others else "."))
    # 4. Resume storm gap-free.
    for (k, srv, name), rs in sorted(runs.items()):
        if k != "resume":
            continue
        gaps = sum(o.get("gaps", 0) for o in rs)
        dups = sum(o.get("duplicates", 0) for o in rs)
        ok = gaps == 0 and dups == 0 and all(o.get("complete") for o in rs)
        add(f"- **Resume storm, {name}**: {len(rs)} runs, {gaps} gaps and {dups} duplicates in total, every client caught up: "
            f"{'yes' if all(o.get('complete') for o in rs) else 'no'} (goal gap-free: {'met' if ok else 'missed'}); "
            f"all live after {ms(med(rs, 'live_s'))} s, all caught up after {ms(med(rs, 'caught_up_s'))} s (medians).")


def issue13_rows(runs):
    """(goal, Syncline figure, Go figure, ratio, target, met) for issue 13's reported goals."""
    def fig(kind, server, name, *keys):
        rs = runs.get((kind, server, name))
        return med(rs, *keys) if rs else None

    rows = []
    for name, label in (("fanout-100x1000", "100 subscribers flat out"), ("fanout-1000-r50", "1,000 subscribers at 50 commits/s"),
                        ("feeds-10000x50000", "10,000 subscribers on their own feeds")):
        kind = "feeds" if name.startswith("feeds-") else "fanout"
        s, g = fig(kind, "syncline", name, "deliveries_per_server_cpu_s"), fig(kind, "go", name, "deliveries_per_server_cpu_s")
        rows.append((f"{label} ({name}): deliveries / server CPU-s", big(s), big(g),
                     s / g if s and g else None, "≥ 2× Go", (s / g >= 2) if s and g else None))
    s, g = fig("fanout", "syncline", "fanout-1000-r50", "latency_ms", "p99"), fig("fanout", "go", "fanout-1000-r50", "latency_ms", "p99")
    rows.append(("fanout-1000-r50: p99 ms", ms(s), ms(g), s / g if s and g else None, "≤ 0.5× Go",
                 (s / g <= 0.5) if s and g else None))
    fl = floor_for(50, runs)
    f = med(fl, "latency_ms", "p99") if fl else None
    rows.append(("fanout-1000-r50: p99 ms above the NOTIFY floor's", f"{s - f:+.2f}" if s is not None and f is not None else "–",
                 f"floor {ms(f)}", None, "≤ +10 ms", (s - f <= 10) if s is not None and f is not None else None))
    for name, target in (("subscribe-10000-one-feed", 1.5), ("subscribe-10000-own-feeds", 3)):
        s, g = fig("subscribe", "syncline", name, "setup_s"), fig("subscribe", "go", name, "setup_s")
        rows.append((f"{name}: s until all have their snapshot (Go: all open)", ms(s), ms(g),
                     s / g if s and g else None, f"≤ {target}× Go", (s / g <= target) if s and g else None))
    return rows


def add_issue13_goals(runs, baseline, note, add):
    """Issue 13's goals, this run beside the baseline run (the code before issue 13), each with its ratio to
    the Go bridge measured in the same run: absolute figures move with the machine's load, ratios less so."""
    now = issue13_rows(runs)
    before = issue13_rows(baseline) if baseline else None
    if before:
        add("Baseline: " + (note or "an earlier full run") + ". Each ratio compares Syncline with the Go bridge "
            "of the same run.")
        add("")
        add("| goal | target | baseline Syncline | baseline Go | baseline ratio | Syncline | Go | ratio | met |")
        add("|---|---|---:|---:|---:|---:|---:|---:|---|")
    else:
        add("| goal | target | Syncline | Go | ratio | met |")
        add("|---|---|---:|---:|---:|---|")
    ratio = lambda r: "–" if r is None else f"{r:.2f}×"
    verdict = lambda m: "–" if m is None else ("met" if m else "**missed**")
    for i, (goal, s, g, r, target, met) in enumerate(now):
        if before:
            _, bs, bg, br, _, _ = before[i]
            add(f"| {goal} | {target} | {bs} | {bg} | {ratio(br)} | {s} | {g} | {ratio(r)} | {verdict(met)} |")
        else:
            add(f"| {goal} | {target} | {s} | {g} | {ratio(r)} | {verdict(met)} |")


def plot(runs, scen, servers, plots_dir, out_dir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not available: no plots)", file=sys.stderr)
        return []
    os.makedirs(plots_dir, exist_ok=True)
    images = []
    colors = {"syncline": "#1f77b4", "go": "#2ca02c", "node": "#ff7f0e", "python": "#9467bd", "notify": "#7f7f7f"}

    # Latency percentiles per fan-out scenario, one group of bars per server (log scale).
    if scen:
        fig, axes = plt.subplots(1, len(scen), figsize=(4.2 * len(scen), 4), squeeze=False)
        for ax, name in zip(axes[0], scen):
            rate = med(runs.get(("fanout", servers[0], name), [{}]), "rate") or 0
            rows = [(s, runs.get(("fanout", s, name))) for s in servers]
            fl = floor_for(rate, runs)
            if fl:
                rows.append(("notify", fl))
            rows = [(s, rs) for s, rs in rows if rs]
            pcts = [("p50", "p50"), ("p99", "p99"), ("p99.9", "p999")]
            width = 0.8 / max(1, len(rows))
            for i, (s, rs) in enumerate(rows):
                vals = [med(rs, "latency_ms", k) or 0 for _, k in pcts]
                ax.bar([j + i * width for j in range(len(pcts))], vals, width, label=s, color=colors.get(s))
            ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(pcts))])
            ax.set_xticklabels([p for p, _ in pcts])
            ax.set_yscale("log")
            ax.set_title(name, fontsize=9)
            ax.set_ylabel("commit → receive, ms")
            ax.legend(fontsize=7)
        fig.suptitle("Latency percentiles (2 cores, shared with PostgreSQL and the load client)", fontsize=10)
        fig.tight_layout()
        path = os.path.join(plots_dir, "latency.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        images.append(("latency percentiles", os.path.relpath(path, out_dir)))

    # Throughput and efficiency vs S, flat-out scenarios (rate 0).
    flat = [n for n in scen if servers and (med(runs.get(("fanout", servers[0], n), [{}]), "rate") or 0) == 0]
    if flat:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for s in servers:
            pts = sorted((med(runs[("fanout", s, n)], "subscribers"), med(runs[("fanout", s, n)], "deliveries_per_s"),
                          med(runs[("fanout", s, n)], "deliveries_per_server_cpu_s"))
                         for n in flat if ("fanout", s, n) in runs)
            pts = [p for p in pts if p[0]]
            if not pts:
                continue
            a1.plot([p[0] for p in pts], [p[1] or 0 for p in pts], "o-", label=s, color=colors.get(s))
            a2.plot([p[0] for p in pts], [p[2] or 0 for p in pts], "o-", label=s, color=colors.get(s))
        for ax, title in ((a1, "deliveries/s (flat out)"), (a2, "deliveries per server CPU-second")):
            ax.set_xscale("log")
            ax.set_xlabel("subscribers S")
            ax.set_title(title, fontsize=10)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle("Fan-out throughput vs S (2 cores)", fontsize=10)
        fig.tight_layout()
        path = os.path.join(plots_dir, "throughput.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        images.append(("throughput vs S", os.path.relpath(path, out_dir)))
    return images


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/RESULTS.md")
    ap.add_argument("--plots", default=None, help="folder for the PNGs (default: <out's folder>/plots)")
    ap.add_argument("--machine", default=None, help="machine description (default: from the result files)")
    ap.add_argument("--mutations", default=None, help="the mutation table (bench/results/mutations.md) to include")
    ap.add_argument("--wall-seconds", type=float, default=None, help="how long bench/run took, to state it")
    ap.add_argument("--wall-note", default="", help="what the wall time includes, appended to it")
    ap.add_argument("--runs", type=int, default=None, help="(informational) runs per scenario")
    ap.add_argument("--baseline", dest="baseline_files", action="append", default=[],
                    help="a result file of the baseline run (repeatable), shown beside this run in issue 13's goals")
    ap.add_argument("--baseline-note", default="", help="what the baseline run was (commit, date)")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    runs, machine = load(args.files)
    if not runs:
        sys.exit("no fan-out or idle results in the given files")
    plots = args.plots or os.path.join(os.path.dirname(os.path.abspath(args.out)), "plots")
    write(runs, machine, args.out, plots, args)


if __name__ == "__main__":
    main()
