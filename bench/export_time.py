#!/usr/bin/env python3
"""Timing driver of the export benchmark (bench/export.sh): runs pipe's export and llama.cpp's
path on the same merged folder, interleaved, REPS times, and writes every sample as JSON.

Each sample records the command's wall time (process start to exit, around subprocess.run),
its CPU time (user + sys of the child: the os.times() children counters around it), the 1-minute load average just before it,
and how many `rustc` processes were running (other developers' builds on a shared machine).
One untimed warm-up of every command comes first (page cache, Python bytecode). Each rep runs
the commands in a new seeded random order. On the VM of BENCHMARKS.md the cost of touching
fresh memory depends on what ran just before (memory a process freed a while ago faults in
again slowly, probably because the guest hands it back to the host), so before every timed
command a helper process can touch and free `churn_mib` MiB, then the driver waits `settle_s`
seconds: every command then starts from the same state, the one it meets after a big step of
a pipeline (merge, training) has exited. With churn_mib 0 and settle_s 0 the commands run back
to back, each after whichever the shuffle put before it.

usage: export_time.py CONFIG.json OUT.json
CONFIG: {"reps": N, "gate_reps": N, "settle_s": S, "churn_mib": M, "seed": K, "commands": {name: {"argv": [...],
         "node": NODE or null, "gate": bool}}}. `gate` commands run gate_reps times.
For pipe commands (`node` set) the node's `duration_ms` and its outputs are kept too.
"""
import json
import os
import random
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
    settle = float(cfg.get("settle_s", 0))
    churn = int(cfg.get("churn_mib", 0))
    rng = random.Random(cfg.get("seed", 1))
    prev = None
    for rep in range(max(cfg["reps"], cfg.get("gate_reps", 0))):
        names = list(cmds)
        rng.shuffle(names)
        for name in names:
            spec = cmds[name]
            n = cfg.get("gate_reps", 0) if spec.get("gate") else cfg["reps"]
            if rep >= n:
                continue
            if churn:
                subprocess.run([sys.executable, "-c", f"b = b'\\x01' * ({churn} << 20)"], check=True)
            time.sleep(settle)
            s = timed(spec, log)
            s["after"] = prev
            prev = name
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
