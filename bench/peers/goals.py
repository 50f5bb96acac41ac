"""The goals of bench/RESULTS.md: issue 5's (efficiency, latency, memory, resume storm) and issue 13's
(this run beside the baseline run, each as a ratio to the Go bridge of the same run). Reported, never asserted."""

import re

from figures import LABEL, PEERS, big, fanout_scenarios, floor_for, med, ms


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
