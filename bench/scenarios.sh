# Scenario sizes, sourced by bench/run (Syncline) and bench/peers/run (the bridges and the NOTIFY
# floor), so that both sides always run the same sizes. Set QUICK=1 before sourcing for the smoke
# sizes. Each entry is "name subscribers changes rate" (rate 0: flat out).
#
# Full sizes are chosen so that bench/run — release build from scratch (~12 min on 2 cores), peers
# install, and 3 runs of everything for Syncline and the three bridges — fits in 30 minutes. What
# bounds them is the slowest bridges: Node and Python deliver ~20–30k rows/s flat out and set up
# ~500–2,000 connections/s, so a scenario costs about deliveries / 25k + connections / 1k seconds
# for each of them, three times. Hence ~100–200k deliveries per fan-out scenario (enough for stable
# percentiles: 1,000 latency samples per subscriber-change row at S = 100) rather than millions.
if [ "${QUICK:-0}" = 1 ]; then
    FANOUT=("fanout-50x200 50 200 0")
    # "name subscribers feeds": all subscribe at once, time until every one has its snapshot;
    # feeds: one (all on alice-checking) or own (subscriber n on bench-<n>).
    SUBSCRIBE=("subscribe-200-one-feed 200 one" "subscribe-200-own-feeds 200 own")
    # "name subscribers rows rows-per-commit": subscriber n on its own account's feed.
    FEEDS=("feeds-200x400 200 400 10")
    # "name clients changes rows-per-commit"
    RESUME=("resume-200x2000 200 2000 200")
    IDLE=("idle-200 200")
    FLOOR=("floor-r500 1 200 500")
    FANOUT_TIMEOUT=30
else
    FANOUT=(
        "fanout-100x1000 100 1000 0"      # few subscribers: bounded by the writer's commit rate
        "fanout-1000x200 1000 200 0"      # 1,000 frames per change
        "fanout-10000x20 10000 20 0"      # S = 10k: 10,000 frames per change, burst of 20 changes
        "fanout-1000x500-r500 1000 500 500"  # the latency goal's load: 1k subscribers, 500 changes/s for 1 s
        "fanout-1000-r50 1000 100 50"     # issue 13: low rate, every commit its own frame (2 s at 50/s)
    )
    # Issue 13: 10,000 clients subscribe at once (after a deploy), to one feed and to their own.
    SUBSCRIBE=("subscribe-10000-one-feed 10000 one" "subscribe-10000-own-feeds 10000 own")
    # 10k feeds, 5 rows each, 100 accounts per commit: enough rows per subscriber that deliveries,
    # not the fixed costs of a batch and a connection, dominate.
    FEEDS=("feeds-10000x50000 10000 50000 100")
    # The storm: 5,000 clients miss 50,000 changes (more than the default ring holds, so
    # the catch-up starts in the change log); ~45 s per run, most of it the 5,000 snapshots.
    RESUME=("resume-5000x50000 5000 50000 1000")
    # At the file limit: the server and each client process may hold 20,000 descriptors; 19,500
    # connections leave room for the server's PostgreSQL pool, listeners and logs.
    IDLE=("idle-19500 19500")
    FLOOR=("floor-1x1000 1 1000 0" "floor-r500 1 500 500" "floor-r50 1 100 50")
    # A bridge that cannot keep up waits this long (from the first commit) and is reported incomplete.
    FANOUT_TIMEOUT=12
fi
