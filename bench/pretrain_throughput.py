"""Pretraining step throughput: our trainer against Hugging Face `Trainer`, same model, data, dtype and threads.

The model is the SmolLM2-135M shape (30 layers, hidden 576, GQA 9/3, vocab 49152, tied head) with one seeded
init, exported as a `LlamaForCausalLM` folder that both load. Data: packed rows of 512 tokens of tinyshakespeare
and zh_classical text tokenized with SmolLM2's own tokenizer. Both run one process with `--threads` torch threads,
batch 4, AdamW (lr 3e-4, weight decay 0.1, clip 1.0), no gradient accumulation, `dataloader_num_workers=0`; in the
bf16 run ours uses bf16 autocast over fp32 master weights and HF `bf16=True` (the same mechanism on CPU).
Tokens/s counts the timed steps after `--warmup` steps. Last line JSON:
`{"ours_tok_s", "hf_tok_s", "ratio", "dtype", ...}` (baseline: transformers Trainer).

    .venv/bin/python -m bench.pretrain_throughput [--dtype bfloat16|float32] [--steps 6]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from cluster.hardware import precision_info, resolve_dtype


def make_rows(tok_dir: Path, seq_len: int, n: int) -> torch.Tensor:
    import gzip

    from actors.model.tokenizer import load_tokenizer
    from cluster.storage import data_root

    tok = load_tokenizer(tok_dir)
    root = data_root()
    text = (root / "tinyshakespeare" / "input.txt").read_text()[:600_000]
    with gzip.open(root / "zh_classical" / "zh_classical.jsonl.gz", "rt", encoding="utf-8") as f:
        zh = "\n".join(json.loads(line).get("text", "") for _, line in zip(range(400), f))
    ids = tok.encode(text) + tok.encode(zh)
    rows = [ids[i:i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)][:n]
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} rows of {seq_len} tokens")
    return torch.tensor(rows)


def run_ours(model_dir: Path, rows: torch.Tensor, a) -> tuple[float, list[float]]:
    from actors.model.hf import read_config
    from actors.train.config import OptimConfig, ParallelConfig
    from actors.train.parallel import Dist, build_model_parts
    from actors.train.trainer import CausalLMLoss, Trainer
    from actors.train.workers import initial_values

    mcfg = read_config(model_dir)
    dtype = getattr(torch, a.dtype)
    (_, model), = build_model_parts(mcfg, ParallelConfig(), Dist(), dtype, initial_values(mcfg, 0, str(model_dir)))
    optim = OptimConfig(lr=3e-4, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.1, grad_clip=1.0)
    trainer = Trainer(model, CausalLMLoss(), optim, a.warmup + a.steps,
                      autocast_dtype=dtype if dtype != torch.float32 else None)
    losses, t0 = [], 0.0
    for i in range(a.warmup + a.steps):
        if i == a.warmup:
            t0 = time.perf_counter()
        losses.append(trainer.train_step({"input_ids": rows[i * a.batch:(i + 1) * a.batch]})["loss"])
    dt = time.perf_counter() - t0
    return a.steps * a.batch * rows.shape[1] / dt, losses


def run_hf(model_dir: Path, rows: torch.Tensor, a, out: Path) -> tuple[float, list[float]]:
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    n = (a.warmup + a.steps) * a.batch
    data = [{"input_ids": r, "labels": r} for r in rows[:n]]
    marks: dict[int, float] = {}
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == a.warmup:
                marks["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            marks["t1"] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    args = TrainingArguments(
        output_dir=str(out / "hf_trainer"), per_device_train_batch_size=a.batch, gradient_accumulation_steps=1,
        max_steps=a.warmup + a.steps, learning_rate=3e-4, weight_decay=0.1, max_grad_norm=1.0, warmup_steps=0,
        lr_scheduler_type="constant", optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.95,
        bf16=a.dtype == "bfloat16", use_cpu=True, dataloader_num_workers=0, logging_steps=1, save_strategy="no",
        report_to=[], seed=0, data_seed=0, disable_tqdm=True, remove_unused_columns=False)
    # keep the row order (ours walks the rows in order too)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[Clock()])
    trainer._get_train_sampler = lambda *x, **k: torch.utils.data.SequentialSampler(data)
    trainer.train()
    return a.steps * a.batch * rows.shape[1] / (marks["t1"] - marks["t0"]), losses


def _side(a, side: str, model_dir: Path, rows_path: Path, out: Path) -> dict:
    """One side in this process (the parent runs each side in a fresh process of its own)."""
    if a.malloc_tuned:  # the allocator setting our trainer applies, given to HF too (--hf-malloc-tuned)
        from actors.common.memory import keep_freed_memory_in_heap

        keep_freed_memory_in_heap()
    rows = torch.load(rows_path)
    tps, losses = (run_ours(model_dir, rows, a) if side == "ours" else run_hf(model_dir, rows, a, out))
    return {"tok_s": tps, "losses": losses}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                    help="auto (default): bfloat16 where the hardware computes it natively, else float32")
    ap.add_argument("--steps", type=int, default=6, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="registry name: the shape and tokenizer")
    ap.add_argument("--hf-malloc-tuned", dest="hf_malloc_tuned", action="store_true",
                    help="also measure HF with the allocator setting our trainer applies to itself")
    ap.add_argument("--side", choices=["ours", "hf"], help=argparse.SUPPRESS)
    ap.add_argument("--malloc-tuned", dest="malloc_tuned", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.dtype = resolve_dtype(a.dtype, field="--dtype")
    torch.set_num_threads(a.threads)
    if a.side:  # child process
        w = Path(a.workdir)
        res = _side(a, a.side, w / "init", w / "rows.pt", w)
        print("SIDE " + json.dumps(res))
        return res

    import subprocess
    import sys

    from actors.model import Transformer, save_hf
    from actors.model.hf import read_config
    from actors.model.registry import resolve_model
    from actors.train.parallel import init_value, materialize
    from cluster.storage import model_cache

    base = resolve_model(a.model, model_cache())
    mcfg = read_config(base)
    common = ["--dtype", a.dtype, "--steps", str(a.steps), "--warmup", str(a.warmup), "--batch", str(a.batch),
              "--seq-len", str(a.seq_len), "--threads", str(a.threads)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        with torch.device("meta"):
            init = Transformer(mcfg)
        materialize(init, torch.device("cpu"), lambda n, s: init_value(mcfg, n, s, 0))
        save_hf(init, out / "init", tokenizer_dir=base)  # the shape, freshly initialised
        del init
        torch.save(make_rows(base, a.seq_len, (a.warmup + a.steps) * a.batch), out / "rows.pt")

        def side(name: str, *extra: str) -> dict:
            # one fresh process per side: "1 process each", and no allocator state carried from one to the other
            p = subprocess.run([sys.executable, "-m", "bench.pretrain_throughput", *common, "--side", name,
                                "--workdir", str(out), *extra], capture_output=True, text=True)
            line = next((ln for ln in p.stdout.splitlines() if ln.startswith("SIDE ")), None)
            if p.returncode != 0 or line is None:
                raise SystemExit(f"{name} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
            r = json.loads(line[5:])
            print(f"[{name}{' ' + ' '.join(extra) if extra else ''}] {r['tok_s']:.1f} tok/s, losses "
                  f"{[round(x, 4) for x in r['losses']]}", flush=True)
            return r

        ours = side("ours")
        hf = side("hf")
        hf_tuned = side("hf", "--malloc-tuned") if a.hf_malloc_tuned else None
    result = {"ours_tok_s": round(ours["tok_s"], 1), "hf_tok_s": round(hf["tok_s"], 1),
              "ratio": round(ours["tok_s"] / hf["tok_s"], 3), **precision_info(a.dtype), "threads": a.threads,
              "batch": a.batch, "seq_len": a.seq_len, "timed_steps": a.steps,
              "first_loss": {"ours": round(ours["losses"][0], 4), "hf": round(hf["losses"][0], 4)},
              "baseline": "transformers Trainer (LlamaForCausalLM), same weights/data/dtype/threads, own process"}
    if hf_tuned:
        result["hf_malloc_tuned_tok_s"] = round(hf_tuned["tok_s"], 1)
        result["ratio_vs_hf_malloc_tuned"] = round(ours["tok_s"] / hf_tuned["tok_s"], 3)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
