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
import os
import re
import sys

from figures import (
    LABEL, big, delivery_cells, fanout_scenarios, floor_for, incomplete, kib, load, med, ms, results_of, servers_of,
)
from goals import add_goals, add_issue13_goals


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
