#!/usr/bin/env python3
"""What `pipe serve`'s front end costs: the same requests through pipe (OpenAI passed through, Ollama
translated) and straight to its llama-server child, interleaved, medians reported.

    scripts/bench-serve.py PIPELINE [--pipe target/release/pipe] [--rounds 10] [--tokens 64]

Starts `pipe serve PIPELINE --port 0 --json`, reads the child's port from its log, then for each
round sends, in turn: a non-streamed and a streamed greedy chat straight to llama-server, through
pipe's `/v1/chat/completions`, and through pipe's `/api/chat`; then 16 concurrent streamed chats
each way. Every request asks for exactly TOKENS new tokens (`ignore_eos`), so the runs do the same
work. Prints a Markdown table (per-request wall time, time to the first streamed piece, tokens/s).
"""
import argparse
import concurrent.futures as cf
import http.client
import json
import re
import statistics
import subprocess
import sys
import time

QUESTION = "现在你要扮演我碰到一位神秘的算命大师, 你是谁?今天我的事业运道如何?"


def request(port, path, body, stream):
    """(seconds to the first body byte, seconds in all, body text)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    first = None
    chunks = []
    while True:
        b = r.read1(65536) if stream else r.read()
        if not b:
            break
        if first is None:
            first = time.perf_counter() - t0
        chunks.append(b)
        if not stream:
            break
    total = time.perf_counter() - t0
    c.close()
    if r.status != 200:
        sys.exit(f"{path}: {r.status} {b''.join(chunks)[:300]!r}")
    return first or total, total, b"".join(chunks).decode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pipeline")
    ap.add_argument("--pipe", default="target/release/pipe")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=64)
    a = ap.parse_args()
    p = subprocess.Popen([a.pipe, "serve", a.pipeline, "--port", "0", "--json", "-q"], stdout=subprocess.PIPE, text=True)
    try:
        for line in p.stdout:
            ev = json.loads(line)
            if ev.get("event") == "serving":
                break
        else:
            sys.exit("pipe serve exited before serving")
        url, model = ev["url"], ev["models"][0]
        front = int(url.rsplit(":", 1)[1])
        log = open(model["log"]).read()
        child = int(re.search(r"listening on http://127\.0\.0\.1:(\d+)", log).group(1))
        name, n = model["name"], a.tokens
        msgs = [{"role": "user", "content": QUESTION}]

        def oai(stream):
            return {"model": name, "messages": msgs, "temperature": 0, "max_tokens": n, "ignore_eos": True, "stream": stream}

        def oll(stream):
            # ignore_eos is llama-server's, not an Ollama option: this row asks for the same tokens
            # and the count is checked (a model that stops early would do less work).
            return {"model": name, "messages": msgs, "stream": stream, "options": {"temperature": 0, "num_predict": n}}

        ways = {
            "llama-server directly, /v1/chat/completions": (child, "/v1/chat/completions", oai),
            "pipe serve, /v1/chat/completions (passed through)": (front, "/v1/chat/completions", oai),
            "pipe serve, /api/chat (translated)": (front, "/api/chat", oll),
        }
        rows = {k: {"whole": [], "first": [], "stream": []} for k in ways}
        conc = {k: [] for k in ways}
        for _ in range(a.rounds):
            for k, (port, path, body) in ways.items():
                _, total, text = request(port, path, body(False), False)
                v = json.loads(text)
                got = v["usage"]["completion_tokens"] if "usage" in v else v["eval_count"]
                if got != n:
                    sys.exit(f"{k}: {got} tokens, not {n} (the model stopped early: pick a larger prompt or fewer --tokens)")
                rows[k]["whole"].append(total)
                first, total, _ = request(port, path, body(True), True)
                rows[k]["first"].append(first)
                rows[k]["stream"].append(total)
        for k, (port, path, body) in ways.items():
            for _ in range(max(1, a.rounds // 5)):
                t0 = time.perf_counter()
                with cf.ThreadPoolExecutor(16) as ex:
                    list(ex.map(lambda _: request(port, path, body(True), True), range(16)))
                conc[k].append(time.perf_counter() - t0)
        med = statistics.median
        print(f"| way | non-streamed, {n} tokens | streamed: first piece | streamed: all | 16 streams at once |")
        print("|---|---|---|---|---|")
        for k in ways:
            r = rows[k]
            print(
                f"| {k} | {med(r['whole'])*1e3:.0f} ms ({n/med(r['whole']):.0f} tok/s) | {med(r['first'])*1e3:.1f} ms "
                f"| {med(r['stream'])*1e3:.0f} ms | {med(conc[k]):.2f} s ({16*n/med(conc[k]):.0f} tok/s) |"
            )
    finally:
        p.terminate()
        p.wait()


if __name__ == "__main__":
    main()
