"""`python -m jobs.finetune`: LoRA SFT on the synthetic tool task + the data stage's SFT sets; merged HF export.

The base is `finetune.base`: `pretrain` (this run's pretrain output, or `--input pretrain.hf=MODEL`), a registry
name such as `smollm2-135m-instruct`, a .gguf file or a Llama-family HF folder.
"""
from __future__ import annotations

from jobs.runner import StageContext, main_for


def run(ctx: StageContext) -> dict:
    from actors.train.stage import run_finetune

    cfg = ctx.cfg.finetune
    data = ctx.inputs("data")
    base = finetune_base(ctx)
    sources = [(data["synthetic_train"], cfg.synthetic_max_rows)]
    sources += [(p, cfg.sft_max_rows) for p in data.get("sft", [])]
    res = run_finetune(cfg, base, sources, ctx.dir, lineage=[{"stage": "base", "spec": cfg.base, "hf": base}])
    res["outputs"].update(base=cfg.base, base_hf=str(base))
    return res


def finetune_base(ctx: StageContext) -> str:
    """The HF folder of `finetune.base` (imported once into the model cache for a registry name or .gguf)."""
    spec = ctx.cfg.finetune.base
    if spec == "pretrain":
        return ctx.inputs("pretrain")["hf"]
    import cluster
    from actors.model.registry import resolve_model

    return str(resolve_model(spec, cluster.model_cache()))


if __name__ == "__main__":
    main_for(["finetune"], "python -m jobs.finetune")
