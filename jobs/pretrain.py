"""`python -m jobs.pretrain`: Ray Train workers pretrain the model on the data stage's shards."""
from __future__ import annotations

from jobs.runner import StageContext, main_for


def run(ctx: StageContext) -> dict:
    from actors.train.stage import run_pretrain

    data = ctx.inputs("data")
    baseline = ctx.metrics("data").get("unigram_entropy_nats")
    lineage = [{"stage": "data", "train_dir": data["train_dir"], "tokenizer": data["tokenizer_dir"]}]
    return run_pretrain(ctx.cfg.pretrain, data, ctx.dir, unigram_baseline=baseline, lineage=lineage)


if __name__ == "__main__":
    main_for(["pretrain"], "python -m jobs.pretrain")
