"""`python -m jobs.pretrain`: Ray Train workers pretrain the model on the data stage's shards."""
from __future__ import annotations

import sys

from jobs.runner import StageContext, main_for


def run(ctx: StageContext) -> dict:
    from actors.train.stage import run_pretrain

    ckpt = ctx.cfg.pretrain.checkpoint
    ckpt.mirror = ckpt.mirror or ctx.checkpoint_mirror()
    data = ctx.inputs("data")
    baseline = ctx.metrics("data").get("unigram_entropy_nats")
    lineage = [{"stage": "data", "train_dir": data["train_dir"], "tokenizer": data["tokenizer_dir"]}]
    init_dir = None
    if ctx.cfg.pretrain.init_from:  # continued pretraining: the base's weights and shape
        import cluster
        from actors.model.registry import resolve_model

        init_dir = resolve_model(ctx.cfg.pretrain.init_from, cluster.model_cache())
        lineage.insert(0, {"stage": "base", "model": ctx.cfg.pretrain.init_from, "hf": str(init_dir)})
    return run_pretrain(ctx.cfg.pretrain, data, ctx.dir, unigram_baseline=baseline, lineage=lineage,
                        init_dir=init_dir)


def main(argv: list[str] | None = None, prog: str = "python -m jobs.pretrain") -> int:
    main_for(["pretrain"], prog, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
