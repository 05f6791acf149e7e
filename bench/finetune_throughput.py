"""LoRA SFT throughput on SmolLM2-135M-Instruct: our fine-tune stage (`Finetuner`: packed rows with per-sample
masks, logits only at trained positions through the fused projection + cross-entropy) against `peft` + Hugging
Face `Trainer` in its strongest CPU setting (length-grouped sampling, padding-free `DataCollatorWithFlattening`).

Both train one epoch over the same rows of `alpaca_en_demo` tokenized by the same chat template (the same token
ids and the same assistant-only labels), sequence length 512, LoRA r16/alpha32/dropout 0.05 on all seven
projections, one process each with the same torch thread count, the base in the same dtype (bf16: base weights
in bf16, adapters fp32 as peft keeps them, the forward under CPU autocast for HF as `bf16=True` does). Tokens
per second count non-padding tokens. Peak memory is each run's own process peak RSS (VmHWM): each run is a
fresh subprocess. Last line JSON:
  {"ours_tok_s", "hf_tok_s", "ratio", "ours_peak_mb", "hf_peak_mb", "dtype", ...}

    .venv/bin/python -m bench.finetune_throughput [--dtype bfloat16|float32] [--rows 256] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster.hardware import precision_info, resolve_dtype

REPO = Path(__file__).resolve().parent.parent
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peak_rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _examples(model_dir: str, train_jsonl: str, max_len: int) -> list[dict]:
    from actors.model.tokenizer import load_tokenizer
    from actors.train.sft import load_examples

    examples, _ = load_examples(load_tokenizer(model_dir), [(train_jsonl, 0)], max_len)
    return examples


def run_ours(a) -> dict:
    from actors.common.config import from_dict
    from actors.train.config import FinetuneConfig
    from actors.train.finetune import Finetuner
    from actors.train.sft import pack

    cfg = from_dict(FinetuneConfig, {
        "base": a.model_dir, "objective": "sft", "method": "lora", "base_dtype": a.dtype, "lora": LORA,
        "packing": True, "max_len": a.max_len, "batch_size": a.ours_batch, "max_steps": 1, "log_every": 1 << 20,
        "checkpoint": {"resume": "never"}, "optim": {"lr": 5e-4, "warmup_steps": 2, "weight_decay": 0.0},
        "parallel": {"threads_per_worker": a.threads}})
    ft = Finetuner(cfg, a.model_dir, [(a.train, 0)], Path(a.work) / "ours", log=lambda s: None)
    rows = pack(ft.examples, a.max_len)
    # one epoch: every packed row once (batch_order keeps full batches only)
    steps = len(rows) // a.ours_batch
    ft.cfg.max_steps = ft.trainer.max_steps = steps
    tokens = 0

    def count(tr, m):
        nonlocal tokens
        tokens += m["tokens"]

    t0 = time.perf_counter()
    ft.run([count])
    dt = time.perf_counter() - t0
    return {"tok_s": tokens / dt, "tokens": tokens, "seconds": dt, "steps": steps, "samples": len(ft.examples),
            "peak_mb": peak_rss_mb()}


def run_hf(a) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorWithFlattening, Trainer, TrainingArguments

    examples = _examples(a.model_dir, a.train, a.max_len)
    ds = Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"], "length": len(e["input_ids"])}
                            for e in examples])
    dtype = getattr(torch, a.dtype)
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=dtype, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                             target_modules=TARGETS, bias="none", task_type="CAUSAL_LM"))
    args = TrainingArguments(
        output_dir=str(Path(a.work) / "hf"), per_device_train_batch_size=a.hf_batch, num_train_epochs=1,
        learning_rate=5e-4, warmup_steps=2, weight_decay=0.0, lr_scheduler_type="cosine",
        bf16=a.dtype == "bfloat16", use_cpu=True, save_strategy="no", report_to="none", logging_strategy="no",
        dataloader_num_workers=0, train_sampling_strategy="group_by_length", length_column_name="length",
        remove_unused_columns=False, seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      data_collator=DataCollatorWithFlattening(return_position_ids=True))
    t0 = time.perf_counter()
    trainer.train()
    dt = time.perf_counter() - t0
    tokens = sum(len(e["input_ids"]) for e in examples)
    return {"tok_s": tokens / dt, "tokens": tokens, "seconds": dt, "steps": trainer.state.global_step,
            "samples": len(examples), "peak_mb": peak_rss_mb()}


def _child(a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    out = run_ours(a) if a.child == "ours" else run_hf(a)
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                    help="auto (default): bfloat16 where the hardware computes it natively, else float32")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--cache", default=str(REPO / "runs" / "models"))
    ap.add_argument("--dataset", default="sft_alpaca_demo/alpaca_en_demo.json")
    ap.add_argument("--rows", type=int, default=256, help="dataset rows trained on (one epoch each)")
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ours-batch", type=int, default=4, help="our packed rows of max-len tokens per step")
    ap.add_argument("--hf-batch", type=int, default=0, help="HF samples per step (0: the same tokens per step)")
    ap.add_argument("--only", choices=["ours", "hf"], default=None)
    # internal: one measured run in this process
    ap.add_argument("--child", choices=["ours", "hf"], default=None)
    ap.add_argument("--model-dir", default="")
    ap.add_argument("--train", default="")
    ap.add_argument("--work", default="")
    a = ap.parse_args()
    a.dtype = resolve_dtype(a.dtype, field="--dtype")
    if a.child:
        return _child(a)

    import cluster
    from actors.model.registry import resolve_model
    from actors.train.datasets import DatasetEntry, prepare

    model_dir = str(resolve_model(a.model, a.cache, dtype="float32"))
    work = tempfile.mkdtemp(prefix="ft-bench-")
    prep = prepare([DatasetEntry("alpaca", cluster.data_root() / a.dataset, "alpaca", max_rows=a.rows)],
                   Path(work) / "data", 0, 0, 0, ("sft",))
    examples = _examples(model_dir, prep["paths"]["train"], a.max_len)
    mean_len = sum(len(e["input_ids"]) for e in examples) / len(examples)
    hf_batch = a.hf_batch or max(1, round(a.ours_batch * a.max_len / mean_len))
    print(f"{len(examples)} samples, mean {mean_len:.0f} tokens; ours {a.ours_batch} packed rows x {a.max_len}, "
          f"HF {hf_batch} samples flattened per step; {a.dtype}, {a.threads} threads", flush=True)
    res = {}
    for name in ("ours", "hf"):
        if a.only and name != a.only:
            continue
        cmd = [sys.executable, "-m", "bench.finetune_throughput", "--child", name, "--model-dir", model_dir,
               "--train", prep["paths"]["train"], "--work", work, "--dtype", a.dtype, "--max-len", str(a.max_len),
               "--threads", str(a.threads), "--ours-batch", str(a.ours_batch), "--hf-batch", str(hf_batch)]
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false"}
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        if p.returncode or line is None:
            sys.exit(f"{name} run failed:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
        res[name] = json.loads(line[7:])
        r = res[name]
        print(f"{name}: {r['tokens']} tokens in {r['seconds']:.1f}s ({r['steps']} steps) -> {r['tok_s']:.1f} tok/s, "
              f"peak RSS {r['peak_mb']:.0f} MB", flush=True)
    out = {**precision_info(a.dtype), "threads": a.threads, "rows": a.rows}
    if "ours" in res:
        out.update(ours_tok_s=round(res["ours"]["tok_s"], 1), ours_peak_mb=round(res["ours"]["peak_mb"]))
    if "hf" in res:
        out.update(hf_tok_s=round(res["hf"]["tok_s"], 1), hf_peak_mb=round(res["hf"]["peak_mb"]))
    if len(res) == 2:
        out.update(ratio=round(res["ours"]["tok_s"] / res["hf"]["tok_s"], 3),
                   peak_ratio=round(res["ours"]["peak_mb"] / res["hf"]["peak_mb"], 3))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
