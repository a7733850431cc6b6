#!/usr/bin/env python3
"""Turns scripts/bench.sh's JSON lines into a Markdown table per scenario,
with each target's figures also as a ratio to the first target (rooms)."""
import json
import sys
from collections import defaultdict

path = sys.argv[1] if len(sys.argv) > 1 else "target/bench/results.jsonl"
rows = [json.loads(line) for line in open(path) if line.strip()]
by_scenario = defaultdict(list)
for r in rows:
    target, scenario = r["label"].split("/", 1)
    by_scenario[scenario].append((target, r))

for scenario, results in by_scenario.items():
    base = results[0][1]
    print(f"\n**{scenario}**: {base['rooms']} room(s), {base['clients']} clients, "
          f"{base['senders']} senders, rate {base['rate'] or 'as fast as possible'}, "
          f"{base['duration_s']} s\n")
    print("| server | deliveries/s | p50 ms | p99 ms | p99.9 ms | server CPU µs/delivery | connect s | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for target, r in results:
        lat = r["latency_ms"]
        cpu = r.get("server_cpu_us_per_delivery")
        print(f"| {target} | {r['delivered_per_s']:,.0f} | {lat['p50']:.2f} | {lat['p99']:.2f} | "
              f"{lat['p999']:.2f} | {cpu if cpu is not None else '–'} | {r['connect_s']} | {r['errors']} |")
