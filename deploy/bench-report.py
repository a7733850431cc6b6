#!/usr/bin/env python3
"""Turns deploy/bench.sh's JSON lines into one table of medians, spreads and
ratios, checks the performance targets, prints it and writes
docs/benchmarks.md (with docs/bench/analysis.md, the hand-written reading of
the figures, appended when it exists)."""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOMS = "rooms"
BASE = "rust-min"


def load(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    by = defaultdict(list)
    for r in rows:
        by[(r["scenario"], r["target"])].append(r)
    return rows, by


# ---- derived figures per run ---------------------------------------------

def cpu_per_delivery_us(r):
    return r["server_cpu_s"] * 1e6 / r["delivered"] if r.get("delivered") else None


def idle_bytes_per_conn(r):
    before, during = r["gateway_rss_kb"]
    return (during - before) * 1024 / r["clients"] if r.get("clients") else None


def whole_idle_bytes_per_conn(r):
    # Every process of the cluster: gateways, roomhosts and Redis (a peer is
    # all "gateway"). Runs from before Redis was counted have no redis_rss_kb.
    gw_before, gw_during = r["gateway_rss_kb"]
    rh_before, rh_during = r["roomhost_rss_kb"][:2]
    rd_before, rd_during = r.get("redis_rss_kb", [0, 0])
    grown = (gw_during - gw_before) + (rh_during - rh_before) + (rd_during - rd_before)
    return grown * 1024 / r["clients"] if r.get("clients") else None


def roomhost_idle_bytes_per_conn(r):
    # The roomhosts' growth per connection: what a room member costs there.
    before, during = r["roomhost_rss_kb"][:2]
    return (during - before) * 1024 / r["clients"] if r.get("clients") else None


def steady_cpu_us_per_message(r, tier=None):
    # Steady phase of the many-rooms load: CPU per message of one tier, or
    # of the whole server (a peer's process counts as its "gateways").
    tiers = r.get("steady_cpu_s_per_s")
    if not tiers or not r.get("rate"):
        return None
    cpu = tiers[tier] if tier else sum(tiers.values())
    return cpu * 1e6 / r["rate"]


def roomhost_cpu_per_room_us(r):
    # CPU microseconds per second, per active room, in the steady phase.
    return r["roomhost_steady_cpu_s_per_s"] * 1e6 / r["rooms"] if r["rooms"] else None


def roomhost_bytes_per_room(r):
    before, during, _ = r["roomhost_rss_kb"]
    return (during - before) * 1024 / r["rooms"] if r["rooms"] else None


def events_per_commit(r):
    return r["redis_events"] / r["redis_commits"] if r.get("redis_commits") else None


FIGURES = {
    "idle": [("gateway bytes/conn", idle_bytes_per_conn, "{:,.0f}"),
             ("roomhost bytes/conn", roomhost_idle_bytes_per_conn, "{:,.0f}"),
             ("whole cluster bytes/conn", whole_idle_bytes_per_conn, "{:,.0f}"),
             ("connect s", lambda r: r["connect_s"], "{:.2f}")],
    "fanout": [("deliveries/s", lambda r: r["delivered_per_s"], "{:,.0f}"),
               ("CPU µs/delivery", cpu_per_delivery_us, "{:.3f}"),
               ("p50 ms", lambda r: r["latency_ms"]["p50"], "{:.1f}"),
               ("events/commit", events_per_commit, "{:.1f}")],
    "latency": [("p50 ms", lambda r: r["latency_ms"]["p50"], "{:.2f}"),
                ("p99 ms", lambda r: r["latency_ms"]["p99"], "{:.2f}"),
                ("p99.9 ms", lambda r: r["latency_ms"]["p999"], "{:.2f}"),
                ("CPU µs/delivery", cpu_per_delivery_us, "{:.2f}"),
                ("events/commit", events_per_commit, "{:.2f}")],
    "rooms": [("p50 ms", lambda r: r["latency_ms"]["p50"], "{:.2f}"),
              ("p99 ms", lambda r: r["latency_ms"]["p99"], "{:.2f}"),
              ("server CPU µs/message", lambda r: r["server_cpu_s"] * 1e6 / max(r["sent"], 1), "{:.0f}"),
              ("steady CPU µs/message", steady_cpu_us_per_message, "{:.0f}"),
              ("… gateways", lambda r: steady_cpu_us_per_message(r, "gateways"), "{:.0f}"),
              ("… roomhosts", lambda r: steady_cpu_us_per_message(r, "roomhosts"), "{:.0f}"),
              ("… Redis", lambda r: steady_cpu_us_per_message(r, "redis"), "{:.0f}"),
              ("roomhost CPU µs/s per room", roomhost_cpu_per_room_us, "{:.2f}"),
              ("roomhost bytes/room", roomhost_bytes_per_room, "{:,.0f}"),
              ("rooms in memory after idle", lambda r: r["roomhost_rooms_active_after_idle"], "{:.0f}"),
              ("events/commit", events_per_commit, "{:.2f}"),
              ("connect s", lambda r: r["connect_s"], "{:.2f}")],
    "cold": [("rooms loaded from Redis", lambda r: r.get("rooms_loaded"), "{:.0f}"),
             ("join p50 ms", lambda r: r["join_ms"]["p50"], "{:.2f}"),
             ("join p99 ms", lambda r: r["join_ms"]["p99"], "{:.2f}"),
             ("join max ms", lambda r: r["join_ms"]["max"], "{:.2f}")],
}

SCENARIO_TEXT = {
    "idle": "9,000 idle connections in 90 rooms (fresh server): memory per connection (RSS "
            "growth / connections) of the gateways, of the roomhosts and of the whole cluster "
            "(gateways + roomhosts + Redis; for peers the whole server), time to connect them",
    "fanout": "1 room, 1,000 clients, 10 senders as fast as they can (16 in flight each)",
    "latency": "1 room, 100 clients, 10 senders, 100 msg/s in all = 10k deliveries/s",
    "rooms": "5,000 rooms × 2 clients, 1 msg/s per room; server CPU per message over the "
             "whole run (connecting included) and in the steady phase, whole cluster and per "
             "tier (for peers the whole server); roomhost CPU and memory per active room in "
             "the steady phase; rooms in memory once the clients left and the idle timeout "
             "passed",
    "cold": "200 rooms with 100 stored events each, evicted from memory, then joined once "
            "each: connect → welcome + history",
}


def stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def fmt(s, pattern):
    if s is None:
        return "–"
    med, lo, hi = s
    text = pattern.format(med)
    if len([lo, hi]) and lo != hi:
        text += f" <sub>({pattern.format(lo)}–{pattern.format(hi)})</sub>"
    return text


def median_of(by, scenario, target, fn):
    s = stats([fn(r) for r in by.get((scenario, target), [])])
    return s[0] if s else None


# ---- targets ---------------------------------------------------------------

def targets(by):
    checks = []

    def ratio(a, b):
        return a / b if a is not None and b else None

    def add(what, value, goal, ok):
        checks.append((what, value, goal, "met" if ok else ("**missed**" if ok is False else "–")))

    cpu = lambda s, t: median_of(by, s, t, cpu_per_delivery_us)
    rate = lambda t: median_of(by, "fanout", t, lambda r: r["delivered_per_s"])
    r_cpu = ratio(cpu("fanout", ROOMS), cpu("fanout", BASE))
    add("fan-out CPU per delivery vs rust-min", f"{r_cpu:.2f}×" if r_cpu else "–", "≤ 1.0×",
        r_cpu <= 1.0 if r_cpu else None)
    # Many small rooms: CPU per message, whole cluster against each peer's process.
    small = lambda t: median_of(by, "rooms", t, lambda r: r["server_cpu_s"] * 1e6 / max(r["sent"], 1))
    steady = lambda t: median_of(by, "rooms", t, steady_cpu_us_per_message)
    if small(ROOMS) is not None and small(BASE) is not None:
        r = small(ROOMS) / small(BASE)
        add("many small rooms: CPU per message vs rust-min (whole run)", f"{r:.2f}×", "≤ 2×", r <= 2)
    if steady(ROOMS) is not None and steady(BASE):
        r = steady(ROOMS) / steady(BASE)
        add("many small rooms: CPU per message vs rust-min (steady)", f"{r:.2f}×", "≤ 2×", r <= 2)
    if small(ROOMS) is not None and small("node-ws") is not None:
        add("many small rooms: CPU per message vs node-ws (whole run)",
            f"{small(ROOMS):.0f} vs {small('node-ws'):.0f} µs", "below", small(ROOMS) < small("node-ws"))
    for peer, goal in ((BASE, 0.8), ("node-ws", 10), ("workerd", 30)):
        r = ratio(rate(ROOMS), rate(peer))
        add(f"fan-out deliveries/s vs {peer}", f"{r:.2f}×" if r else "–", f"≥ {goal}×",
            r >= goal if r else None)
    p = lambda t, q: median_of(by, "latency", t, lambda r: r["latency_ms"][q])
    if p(ROOMS, "p50") is not None and p(BASE, "p50") is not None:
        d = p(ROOMS, "p50") - p(BASE, "p50")
        add("latency p50 at 10k deliveries/s, minus rust-min's", f"{d:+.2f} ms", "≤ +0.5 ms", d <= 0.5)
        r = p(ROOMS, "p99") / p(BASE, "p99")
        add("latency p99 at 10k deliveries/s vs rust-min", f"{r:.2f}×", "≤ 1.5×", r <= 1.5)
    mem = lambda t: median_of(by, "idle", t, idle_bytes_per_conn)
    if mem(ROOMS) is not None:
        m = mem(ROOMS)
        peers = [t for (s, t) in by if s == "idle" and t != ROOMS]
        least = min((mem(t) for t in peers if mem(t) is not None), default=None)
        add("gateway memory per idle connection", f"{m / 1024:.1f} KiB", "≤ 6 KiB", m <= 6 * 1024)
        if least is not None:
            add("… less than every peer", f"{m / 1024:.1f} vs {least / 1024:.1f} KiB (least peer)",
                "less", m < least)
        whole = median_of(by, "idle", ROOMS, whole_idle_bytes_per_conn)
        node = median_of(by, "idle", "node-ws", whole_idle_bytes_per_conn)
        if whole is not None and node is not None:
            add("whole-cluster memory per idle connection vs node-ws",
                f"{whole / 1024:.1f} vs {node / 1024:.1f} KiB", "at or below", whole <= node)
        member = median_of(by, "idle", ROOMS, roomhost_idle_bytes_per_conn)
        if member is not None:
            add("roomhost memory per room member (idle)", f"{member:,.0f} B", "≤ 512 B", member <= 512)
        c = ratio(median_of(by, "idle", ROOMS, lambda r: r["connect_s"]),
                  median_of(by, "idle", BASE, lambda r: r["connect_s"]))
        add("connecting 9,000 clients vs rust-min", f"{c:.2f}×" if c else "–", "≤ 1.2×",
            c <= 1.2 if c else None)
    for target in (ROOMS, "rooms-cluster"):
        after = median_of(by, "rooms", target, lambda r: r["roomhost_rooms_active_after_idle"])
        if after is not None:
            add(f"rooms in roomhost memory after idle ({target})", f"{after:.0f}", "0", after == 0)
        cold = median_of(by, "cold", target, lambda r: r["join_ms"]["p99"])
        if cold is not None:
            add(f"cold room welcome + history p99 ({target})", f"{cold:.2f} ms", "≤ 5 ms", cold <= 5)
    checks += class_checks(by, rate, ratio)
    for scenario in ("fanout", "rooms"):
        e = median_of(by, scenario, ROOMS, events_per_commit)
        if e is not None:
            add(f"Redis round trips: events per group commit ({scenario})", f"{e:.2f}",
                "≥ 1 (one round trip per burst per room)", e >= 1)
    return checks


def class_checks(by, rate, ratio):
    """The workerd peer's ChatRoom class on rooms (rooms-class) against the
    same file on workerd."""
    checks = []

    def add(name, measured, goal, met):
        checks.append((name, measured, goal, "met" if met else ("missed" if met is not None else "–")))

    CLASS, PEER = "rooms-class", "workerd"
    if (("fanout", CLASS) not in by) or (("fanout", PEER) not in by):
        return checks
    r = ratio(rate(CLASS), rate(PEER))
    add("class fan-out deliveries/s vs workerd", f"{r:.1f}×" if r else "–", "≥ 10×",
        r >= 10 if r else None)
    c = ratio(median_of(by, "fanout", CLASS, cpu_per_delivery_us),
              median_of(by, "fanout", PEER, cpu_per_delivery_us))
    add("class CPU per delivery vs workerd", f"{c:.3f}×" if c else "–", "≤ 0.1×",
        c <= 0.1 if c else None)
    p = lambda t: median_of(by, "latency", t, lambda r: r["latency_ms"]["p99"])
    if p(CLASS) is not None and p(PEER) is not None:
        add("class p99 at 10k deliveries/s vs workerd", f"{p(CLASS):.2f} vs {p(PEER):.2f} ms",
            "below", p(CLASS) < p(PEER))
    mem = lambda t: median_of(by, "idle", t, lambda r: whole_idle_bytes_per_conn(r))
    if mem(CLASS) is not None and mem(PEER) is not None:
        add("class memory per idle connection (whole cluster) vs workerd",
            f"{mem(CLASS) / 1024:.1f} vs {mem(PEER) / 1024:.1f} KiB", "below", mem(CLASS) < mem(PEER))
    after = median_of(by, "rooms", CLASS, lambda r: r["roomhost_rooms_active_after_idle"])
    if after is not None:
        add("class rooms in roomhost memory after idle", f"{after:.0f}", "0", after == 0)
    per_room = median_of(by, "rooms", CLASS, roomhost_bytes_per_room)
    if per_room is not None:
        add("roomhost memory per active class room", f"{per_room / 1024:.0f} KiB", "≤ 256 KiB",
            per_room <= 256 * 1024)
    cold = median_of(by, "cold", CLASS, lambda r: r["join_ms"]["p99"])
    if cold is not None:
        add("cold class room: handshake answered by a new instance, p99", f"{cold:.2f} ms",
            "≤ 5 ms", cold <= 5)
    return checks


# ---- output ----------------------------------------------------------------

def machine():
    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), "?")
    mem_gib = next((int(line.split()[1]) / 2**20 for line in open("/proc/meminfo")
                    if line.startswith("MemTotal")), 0)
    return (f"{os.cpu_count()} cores ({model}), {mem_gib:.0f} GiB, Linux {platform.release()}; "
            f"{run(['redis-server', '--version']).split(' sha')[0]}, node {run(['node', '--version'])}, "
            f"{run(['rustc', '--version'])}")


def tables(by):
    out = []
    targets_seen = []
    for (_, t) in by:
        if t not in targets_seen:
            targets_seen.append(t)
    for scenario in FIGURES:
        rows = [t for t in targets_seen if (scenario, t) in by]
        if not rows:
            continue
        rounds = max(len(by[(scenario, t)]) for t in rows)
        out.append(f"\n**{scenario}** — {SCENARIO_TEXT[scenario]}. Median of {rounds} run(s), "
                   "(min–max) when they differ.\n")
        heads = [name for name, _, _ in FIGURES[scenario]]
        base_present = (scenario, BASE) in by and scenario in ("fanout", "latency", "idle")
        out.append("| server | " + " | ".join(heads) + (" | vs rust-min |" if base_present else " |"))
        out.append("| --- |" + " ---: |" * (len(heads) + (1 if base_present else 0)))
        for t in rows:
            cells = [fmt(stats([fn(r) for r in by[(scenario, t)]]), pattern)
                     for _, fn, pattern in FIGURES[scenario]]
            if base_present:
                key = FIGURES[scenario][0][1] if scenario != "fanout" else FIGURES[scenario][1][1]
                a, b = median_of(by, scenario, t, key), median_of(by, scenario, BASE, key)
                label = {"idle": "memory", "fanout": "CPU", "latency": "p50"}[scenario]
                cells.append(f"{a / b:.2f}× {label}" if a is not None and b else "–")
            out.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--doc")
    ap.add_argument("--command", default="deploy/bench.sh")
    args = ap.parse_args()
    rows, by = load(args.results)
    table = tables(by)
    checks = targets(by)
    check_table = "\n".join(["| target | measured | goal | |", "| --- | ---: | ---: | --- |"] +
                            [f"| {w} | {v} | {g} | {ok} |" for w, v, g, ok in checks])
    print(table)
    print()
    print(check_table)
    if not args.doc:
        return
    day = datetime.date.today().isoformat()
    # Beside the document it describes: a report written elsewhere (a
    # trial run) leaves the published raw lines alone.
    raw = os.path.join(os.path.dirname(os.path.abspath(args.doc)), "bench", f"{day}.jsonl")
    os.makedirs(os.path.dirname(raw), exist_ok=True)
    shutil.copyfile(args.results, raw)
    analysis = os.path.join(ROOT, "docs", "bench", "analysis.md")
    reading = open(analysis).read() if os.path.exists(analysis) else ""
    busiest = max((r.get("busy_before_pct", 0) for r in rows), default=0)
    doc = f"""# Benchmarks

`rooms` against peer servers that speak the same chat subset (`../shared/peers/`): Cloudflare's
own runtime **workerd** running a Durable Object chat, a **node-ws** server (one Node.js process
with `ws`), and **rust-min**, a minimal single-process tokio + tungstenite broadcast server with
no persistence — close to what this machine can do at all.

`rooms` does more per message than any of them: a gRPC hop gateway → roomhost and back, a Redis
write acknowledged *before* delivery (output gate), `seq`, presence and names. It runs as the
whole local cluster of `deploy/local-cluster.sh` — Redis + 3 roomhosts + 2 gateways, clients
spread over both gateways — and its CPU and memory figures are summed over all its processes
(memory per idle connection: the gateways', the roomhosts' and the whole cluster's, Redis
included). `rooms-cluster` is the same on a local 3-master
Redis Cluster. **floor** (`deploy/floor/`, many-small-rooms scenario only) is the least any
gateway/roomhost split can do: two gateways relaying each chat over plain TCP to a hub that
appends it to Redis (one `XADD`) before sending it back, and nothing else — what rooms would
cost if its own work were free.

## How they were made

```sh
{args.command}
```

* Generated by `deploy/bench.sh` on {day}; raw lines: [`bench/{day}.jsonl`](bench/{day}.jsonl).
* Machine: {machine()}. The load generator (`roomctl bench`, release build) shares these cores,
  so every figure includes its cost: compare the ratios, which come from the same run.
* The targets take turns — rooms, each peer, rooms-cluster, floor — in every round, each started fresh;
  before each measurement the script waits until the machine is quiet (< 5 % busy; the busiest
  start was {busiest} %).
* `rooms` gateways ran with `--rate-limit 1000000 --rate-burst 1000000 --send-queue 4096` (the
  default 20 msg/s per connection would throttle saturating senders) and roomhosts with
  `--room-idle-timeout 5s` (so the idle scenarios finish quickly).
* Server CPU = user + system time from `/proc/PID/stat` over the whole run (connecting
  included) divided by deliveries; memory = `VmRSS` from `/proc/PID/status`.
* workerd does not run the 5,000-room scenario: it holds two descriptors per WebSocket, and
  10,000 clients exceed this machine's 20,000-descriptor limit. Peers keep no history, so the
  cold-room scenario is rooms' alone.

## Results
{table}

## Targets

{check_table}

{reading}"""
    open(args.doc, "w").write(doc)
    print(f"\nwrote {args.doc} and {raw}")


if __name__ == "__main__":
    main()
