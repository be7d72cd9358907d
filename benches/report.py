#!/usr/bin/env python3
"""Print the criterion results of `cargo bench` as markdown tables, with each benchmark's ratio to its
group's baseline (measured in the same run), and the machine it ran on.

    cargo bench && python3 benches/report.py [target/criterion]
"""

import json
import os
import platform
import subprocess
import sys

# Each group's baseline: the ratio column is median / baseline's median, for the same parameter.
BASELINES = {
    "alloc_free_1t": "pool",
    "alloc_free_2t": "pool",
    "kv_alloc_free": "pool_block",
    "kv_translate": "arithmetic",
    "grow_chunk": "raw_malloc_map_unmap_free",
    "attach": "raw_import_reserve_map",
    "round_trip": "pipe",
    "rendezvous": "unix_connect_one_message",
}


def fmt_ns(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns:.1f} ns"


def machine():
    cpu = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, {rustc}"


def results(root):
    """{group: {(bench, param): median ns}}"""
    out = {}
    for dirpath, _, files in os.walk(root):
        if "estimates.json" in files and os.path.basename(dirpath) == "new":
            bench = json.load(open(os.path.join(dirpath, "benchmark.json")))
            med = json.load(open(os.path.join(dirpath, "estimates.json")))["median"]["point_estimate"]
            group = bench["group_id"]
            fn = bench.get("function_id") or ""
            param = bench.get("value_str") or ""
            out.setdefault(group, {})[(fn, param)] = med
    return out


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
    res = results(root)
    if not res:
        sys.exit(f"no criterion results under {root}: run `cargo bench` first")
    print(f"Machine: {machine()}\n")
    for group in sorted(res):
        base = BASELINES.get(group)
        print(f"### {group}\n")
        print(f"| benchmark | parameter | median | × {base or 'baseline'} |")
        print("|---|---|---|---|")
        rows = res[group]
        for (fn, param), med in sorted(rows.items(), key=lambda kv: (kv[0][1].zfill(12), kv[0][0])):
            b = rows.get((base, param))
            ratio = f"{med / b:.3g}" if b else "–"
            print(f"| {fn} | {param} | {fmt_ns(med)} | {ratio} |")
        print()


if __name__ == "__main__":
    main()
