"""`python -m jobs.finetune`: LoRA SFT on the synthetic tool task + Alpaca demo; merged HF export.

Point it at your own model with `--input pretrain.hf=/path/to/llama_hf_dir`.
"""
from __future__ import annotations

from jobs.runner import StageContext, main_for


def run(ctx: StageContext) -> dict:
    from actors.train.stage import run_finetune

    cfg = ctx.cfg.finetune
    data = ctx.inputs("data")
    base = ctx.inputs("pretrain")["hf"]
    sources = [(data["synthetic_train"], cfg.synthetic_max_rows)]
    sources += [(p, cfg.alpaca_max_rows) for p in data.get("sft", [])]
    return run_finetune(cfg, base, sources, ctx.dir, lineage=[{"stage": "pretrain", "hf": base}])


if __name__ == "__main__":
    main_for(["finetune"], "python -m jobs.finetune")
