#!/usr/bin/env python3
"""Timing driver of the export benchmark (bench/export.sh): runs pipe's export and llama.cpp's
path on the same merged folder, interleaved, REPS times, and writes every sample as JSON.

Each sample records the command's wall time (process start to exit, around subprocess.run),
its CPU time (user + sys of the child: the os.times() children counters around it), the 1-minute load average just before it,
and how many `rustc` processes were running (other developers' builds on a shared machine).
One untimed warm-up of every command comes first (page cache, Python bytecode). Each rep
starts one command later in the list than the one before (rotation), and every timed command
waits `settle_s` seconds first: on the VM of BENCHMARKS.md the cost of touching fresh memory
depends on what exited just before (freed guest memory goes back to the host and faults in
again slowly), so no command should always follow the same big process.

usage: export_time.py CONFIG.json OUT.json
CONFIG: {"reps": N, "gate_reps": N, "settle_s": S, "commands": {name: {"argv": [...],
         "node": NODE or null, "gate": bool}}}. `gate` commands run gate_reps times.
For pipe commands (`node` set) the node's `duration_ms` and its outputs are kept too.
"""
import json
import os
import statistics
import subprocess
import sys
import time


def load_now():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def rustc_count():
    p = subprocess.run(["pgrep", "-c", "rustc"], capture_output=True, text=True)
    return int(p.stdout.strip() or 0)


def run_once(spec, log):
    argv = spec["argv"]
    load, rustc = load_now(), rustc_count()
    t = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=spec.get("env_full"))
    out, err = p.communicate()
    wall = time.perf_counter() - t
    rc = p.returncode
    if rc != 0:
        sys.exit(f"{' '.join(argv)} failed ({rc}):\n{err[-4000:]}\n{out[-2000:]}")
    log.write(f"$ {' '.join(argv)}\n{err[-3000:]}\n")
    sample = {"wall_ms": wall * 1e3, "load1": load, "rustc": rustc}
    node = spec.get("node")
    if node:
        fin = None
        for line in out.splitlines():
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if ev.get("event") == "node_finished" and ev.get("node") == node:
                fin = ev
        if fin is None:
            sys.exit(f"no node_finished event for `{node}` in:\n{out}")
        sample["node_ms"] = float(fin["duration_ms"])
        sample["outputs"] = fin["outputs"]
        sample["summary"] = fin.get("summary")
    return sample


def timed(spec, log):
    before = os.times()
    s = run_once(spec, log)
    after = os.times()
    s["cpu_ms"] = ((after.children_user - before.children_user) + (after.children_system - before.children_system)) * 1e3
    return s


def main():
    cfg = json.load(open(sys.argv[1]))
    out_path = sys.argv[2]
    cmds = cfg["commands"]
    for spec in cmds.values():
        if spec.get("env"):
            spec["env_full"] = {**os.environ, **spec["env"]}
    log = open(out_path + ".log", "w")
    for name, spec in cmds.items():
        print(f"warm-up: {name}", file=sys.stderr)
        run_once(spec, log)
    samples = {name: [] for name in cmds}
    names = list(cmds)
    settle = float(cfg.get("settle_s", 0))
    for rep in range(max(cfg["reps"], cfg.get("gate_reps", 0))):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            spec = cmds[name]
            n = cfg.get("gate_reps", 0) if spec.get("gate") else cfg["reps"]
            if rep >= n:
                continue
            time.sleep(settle)
            s = timed(spec, log)
            samples[name].append(s)
            extra = f", node {s['node_ms']:.0f} ms" if "node_ms" in s else ""
            print(
                f"rep {rep + 1} {name}: wall {s['wall_ms']:.0f} ms, cpu {s['cpu_ms']:.0f} ms{extra}"
                f" (load {s['load1']:.2f}, rustc {s['rustc']})",
                file=sys.stderr,
            )
    summary = {}
    for name, ss in samples.items():
        summary[name] = {
            "wall_ms_median": statistics.median(x["wall_ms"] for x in ss),
            "wall_ms_min": min(x["wall_ms"] for x in ss),
            "wall_ms_max": max(x["wall_ms"] for x in ss),
            "cpu_ms_median": statistics.median(x["cpu_ms"] for x in ss),
            "load1_median": statistics.median(x["load1"] for x in ss),
            "load1_max": max(x["load1"] for x in ss),
            "rustc_max": max(x["rustc"] for x in ss),
            "n": len(ss),
        }
        if "node_ms" in ss[0]:
            summary[name]["node_ms_median"] = statistics.median(x["node_ms"] for x in ss)
    json.dump({"samples": samples, "summary": summary}, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main()
