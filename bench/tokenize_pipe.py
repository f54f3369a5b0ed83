#!/usr/bin/env python3
"""pipe side of the tokenize benchmark: reruns the `tok` node REPS times with --force and
records both the node's own run time (`node_finished.duration_ms` from `--json`) and the wall
time of the whole command (process start to exit, measured around subprocess.run).

usage: tokenize_pipe.py PIPE_BINARY PIPELINE.yaml CACHE_DIR [REPS=5] [--json OUT]
Extra environment (e.g. RAYON_NUM_THREADS=1) is passed through to pipe.
"""
import json
import statistics
import subprocess
import sys
import time


def main():
    args = [a for a in sys.argv[1:]]
    out_json = None
    if "--json" in args:
        i = args.index("--json")
        out_json = args[i + 1]
        del args[i : i + 2]
    pipe, pipeline, cache = args[:3]
    reps = int(args[3]) if len(args) > 3 else 5
    cmd = [pipe, "--cache", cache, "run", pipeline, "--target", "tok", "--force", "tok", "--json"]
    node_ms, wall_ms, dataset, summary = [], [], None, None
    for _ in range(reps):
        t = time.perf_counter()
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wall = (time.perf_counter() - t) * 1e3
        if p.returncode != 0:
            sys.exit(f"pipe failed ({p.returncode}):\n{p.stderr}\n{p.stdout}")
        fin = None
        for line in p.stdout.splitlines():
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if ev.get("event") == "node_finished" and ev.get("node") == "tok":
                fin = ev
        if fin is None:
            sys.exit(f"no node_finished event for `tok` in:\n{p.stdout}")
        node_ms.append(float(fin["duration_ms"]))
        wall_ms.append(wall)
        dataset = fin["outputs"]["dataset"]
        summary = fin.get("summary")
        print(f"pipe tok: node {node_ms[-1]:.0f} ms, wall {wall:.0f} ms", file=sys.stderr)
    result = {
        "node_ms": node_ms,
        "wall_ms": wall_ms,
        "node_ms_median": statistics.median(node_ms),
        "wall_ms_median": statistics.median(wall_ms),
        "dataset": dataset,
        "summary": summary,
    }
    text = json.dumps(result)
    if out_json:
        open(out_json, "w").write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
