#!/usr/bin/env python3
"""Trains the same LoRA with peft (transformers + peft) and with pipe, and compares them (issue 5).

Both sides start from the same things:
  * base weights: pipe's `random-model` node writes a Hugging Face folder (shape `--shape`, in
    `--dtype`), which transformers loads and pipe trains on;
  * LoRA init: peft's `get_peft_model` initialises A and B (peft's default init) and saves the
    adapter before training; pipe's lora-train starts from it through its `init` input;
  * batches: the dataset is the first `--records` fortune records tokenized by pipe (max_length
    64), and `batch_size` is the record count with `grad_accum: 1`, so every step is the whole
    dataset (pipe's shuffle does not matter: the per-token mean loss is order-free). peft's side
    reads pipe's dataset file and right-pads as pipe does (id 0, label -100);
  * optimizer: AdamW (0.9, 0.999, eps 1e-8, weight decay 0), constant learning rate, no warmup,
    no gradient clipping (pipe `max_grad_norm: 0`), dropout 0, `--steps` steps.

Then it checks:
  1. the per-step loss curves agree: max |pipe - peft| / |peft| <= `--curve-tol`
     (default 1e-4 in f32, 1e-2 in bf16);
  2. pipe's final adapter loads with `PeftModel.from_pretrained` and its logits on the training
     batch equal those of peft's own trained model: max |diff| / max |logit| <= `--logits-tol`
     (default 1e-4 in f32, 2e-2 in bf16), while training moved the logits by more than that.

Prints a table and one JSON line (`"parity": {...}`); exits 1 when a check fails.

    python3 scripts/peft_train_parity.py --pipe target/release/pipe --device cpu --dtype f32 --shape tiny
"""
import argparse
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parent.parent
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TORCH_DTYPE = {"f32": torch.float32, "bf16": torch.bfloat16}


def read_pipetok(path):
    """The PIPETOK layout from src/dataset/mod.rs: records of (ids, labels), labels -100 where untrained."""
    b = Path(path).read_bytes()
    assert b[:8] == b"PIPETOK\0", "not a pipe token dataset"
    version, _flags, n_rec, n_tok = struct.unpack_from("<IIQQ", b, 8)
    assert version == 1
    off = 32
    offsets = np.frombuffer(b, dtype="<u8", count=n_rec + 1, offset=off)
    off += 8 * (n_rec + 1)
    ids = np.frombuffer(b, dtype="<u4", count=n_tok, offset=off)
    off += 4 * n_tok
    trained = np.frombuffer(b, dtype="u1", count=n_tok, offset=off)
    out = []
    for r in range(n_rec):
        s, e = int(offsets[r]), int(offsets[r + 1])
        i = ids[s:e].astype(np.int64)
        out.append((i, np.where(trained[s:e] == 1, i, -100)))
    return out


def pad_batch(records):
    """One batch as pipe's `Batch::with_len` builds it: right-padded with id 0 and label -100."""
    t = max(len(i) for i, _ in records)
    ids = torch.zeros((len(records), t), dtype=torch.long)
    labels = torch.full((len(records), t), -100, dtype=torch.long)
    for k, (i, l) in enumerate(records):
        ids[k, : len(i)] = torch.from_numpy(i)
        labels[k, : len(l)] = torch.from_numpy(l)
    return ids, labels


def pipe(args, *cmd):
    r = subprocess.run([args.pipe, *cmd], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"FAIL: pipe {' '.join(cmd)} exited {r.returncode}:\n{r.stderr}")
    return r.stdout


def output_path(args, yaml, node, output):
    v = json.loads(pipe(args, "show", str(yaml), node, "--cache", str(args.work / "cache"), "--json"))
    return Path(v["outputs"][output]["path"])


def pipeline(args, with_train):
    vocab = ", vocab: 1024" if args.shape == "tiny" else ""
    y = f"""name: peft-train-parity
nodes:
  base:
    kind: random-model
    inputs: {{ tokenizer: tok/tokenizer.json }}
    params: {{ shape: {args.shape}{vocab}, seed: {args.seed}, dtype: {args.dtype} }}
  fix: {{ kind: fix-json, inputs: {{ records: data/records.jsonl }} }}
  tok: {{ kind: tokenize, inputs: {{ records: fix.records, tokenizer: base.model }}, params: {{ max_length: 64 }} }}
"""
    if with_train:
        y += f"""  train:
    kind: lora-train
    device: {args.device}
    inputs: {{ model: base.model, dataset: tok.dataset, init: peft-init }}
    params:
      r: {args.r}
      alpha: {args.alpha}
      dropout: 0.0
      targets: [{", ".join(TARGETS)}]
      lr: {args.lr}
      schedule: constant
      warmup_steps: 0
      weight_decay: 0.0
      batch_size: {args.records}
      grad_accum: 1
      max_steps: {args.steps}
      max_grad_norm: 0
      dtype: {args.dtype}
      logging_steps: 1
      save_steps: 0
"""
    path = args.work / "parity.yaml"
    path.write_text(y)
    return path


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pipe", required=True, help="the pipe binary (a CUDA build for --device cuda)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    p.add_argument("--shape", default="tiny", help="a random-model shape: tiny, smollm2-135m, ...")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--records", type=int, default=8, help="records in the dataset = the batch size")
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--lr", type=float, default=1e-4, help="constant learning rate (default: the tutorial's 1e-4)")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--curve-tol", type=float, help="default 1e-4 (f32), 1e-2 (bf16)")
    p.add_argument("--logits-tol", type=float, help="default 1e-4 (f32), 2e-2 (bf16)")
    p.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed after)")
    args = p.parse_args()
    args.pipe = str(Path(args.pipe).resolve())
    curve_tol = args.curve_tol or (1e-4 if args.dtype == "f32" else 1e-2)
    logits_tol = args.logits_tol or (1e-4 if args.dtype == "f32" else 2e-2)
    keep = args.work is not None
    args.work = (args.work or Path(tempfile.mkdtemp(prefix="peft-parity-"))).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    dtype, device = TORCH_DTYPE[args.dtype], torch.device(args.device)
    torch.manual_seed(args.seed)
    try:
        # 1. pipe makes the base model and the dataset.
        (args.work / "tok").mkdir(exist_ok=True)
        for f in ["tokenizer.json", "tokenizer_config.json"]:
            shutil.copy(REPO / "tests/data/tiny-tokenizer" / f, args.work / "tok" / f)
        (args.work / "data").mkdir(exist_ok=True)
        lines = (REPO / "pipelines/data/fortune.jsonl").read_text(encoding="utf-8").splitlines()[: args.records]
        (args.work / "data/records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        yaml = pipeline(args, with_train=False)
        pipe(args, "-q", "run", str(yaml), "--cache", str(args.work / "cache"))
        base_dir = output_path(args, yaml, "base", "model")
        records = read_pipetok(output_path(args, yaml, "tok", "dataset"))
        assert len(records) == args.records, f"the dataset has {len(records)} records, expected {args.records}"
        ids, labels = pad_batch(records)

        # 2. peft's initial adapter, saved before training: pipe's `init`.
        base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=dtype)
        cfg = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
        model = get_peft_model(base, cfg)
        model.save_pretrained(args.work / "peft-init")
        model.to(device)

        # 3. pipe trains from it (on its own, while peft trains here).
        yaml = pipeline(args, with_train=True)
        t0 = time.time()
        pipe(args, "-q", "run", str(yaml), "--cache", str(args.work / "cache"))
        pipe_secs = time.time() - t0
        pipe_log = [json.loads(l) for l in output_path(args, yaml, "train", "log").read_text().splitlines() if l.strip()]
        pipe_loss = {int(v["step"]): float(v["loss"]) for v in pipe_log}

        # 4. peft trains: AdamW, constant lr, no clipping, the whole dataset each step.
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        model.train()
        ids_d, labels_d = ids.to(device), labels.to(device)
        peft_loss = []
        t0 = time.time()
        for _ in range(args.steps):
            loss = model(input_ids=ids_d, labels=labels_d).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            peft_loss.append(loss.item())
        peft_secs = time.time() - t0
        model.eval()

        # 5. Compare the curves step by step.
        missing = [s for s in range(1, args.steps + 1) if s not in pipe_loss]
        assert not missing, f"pipe's log has no loss for steps {missing}"
        diffs = [abs(pipe_loss[s + 1] - q) / abs(q) for s, q in enumerate(peft_loss)]
        worst = max(range(args.steps), key=lambda s: diffs[s])

        # 6. pipe's adapter in peft vs peft's trained model, on the training batch.
        peft_logits = logits(model, ids_d)
        base2 = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=dtype)
        pipe_model = PeftModel.from_pretrained(base2, output_path(args, yaml, "train", "adapter")).to(device).eval()
        pipe_logits = logits(pipe_model, ids_d)
        with pipe_model.disable_adapter():
            base_logits = logits(pipe_model, ids_d)
        logits_rel = rel(pipe_logits, peft_logits)
        moved = rel(base_logits, peft_logits)
        theirs = dict(model.named_parameters())
        weight_rel = max(rel(p.detach().float(), theirs[n].detach().float())
                         for n, p in pipe_model.named_parameters() if "lora_" in n)
    finally:
        if not keep:
            shutil.rmtree(args.work, ignore_errors=True)

    curve_ok, logits_ok, moved_ok = diffs[worst] <= curve_tol, logits_rel <= logits_tol, moved > logits_tol
    ok = curve_ok and logits_ok and moved_ok
    case = f"{args.shape} {args.dtype} {args.device}"
    print("| case | steps | loss start -> end (peft) | worst loss rel diff (step) | logits rel diff | adapter weights rel diff | training moved logits | pipe s | peft s |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {case} | {args.steps} | {peft_loss[0]:.4f} -> {peft_loss[-1]:.4f} | {diffs[worst]:.2e} ({worst + 1}) "
          f"| {logits_rel:.2e} | {weight_rel:.2e} | {moved:.2e} | {pipe_secs:.1f} | {peft_secs:.1f} |")
    summary = {
        "shape": args.shape, "dtype": args.dtype, "device": args.device, "steps": args.steps,
        "curve_rel": diffs[worst], "curve_worst_step": worst + 1, "curve_tol": curve_tol,
        "logits_rel": logits_rel, "logits_tol": logits_tol, "logits_moved": moved, "adapter_weights_rel": weight_rel,
        "pipe_loss": [pipe_loss[s] for s in range(1, args.steps + 1)], "peft_loss": peft_loss, "ok": ok,
    }
    print(json.dumps({"parity": summary}))
    for good, what in [(curve_ok, f"loss curves differ by {diffs[worst]:.2e} > {curve_tol:.0e} at step {worst + 1}"),
                       (logits_ok, f"logits of pipe's adapter in peft differ by {logits_rel:.2e} > {logits_tol:.0e}"),
                       (moved_ok, f"training moved the logits by only {moved:.2e}: the comparison proves nothing")]:
        if not good:
            print(f"FAIL: {what}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
