"""`python -m jobs.data`: raw docs -> quarantine-checked, deduped, tokenized, packed Parquet shards."""
from __future__ import annotations

import cluster
from jobs.runner import StageContext, main_for


def run(ctx: StageContext) -> dict:
    from actors.data.stage import run_data_stage

    base = None
    if ctx.cfg.data.tokenizer:  # a base model's tokenizer: resolved (imported if need be) here, on the driver
        from actors.model.registry import resolve_model

        base = resolve_model(ctx.cfg.data.tokenizer, cluster.model_cache())
    return run_data_stage(ctx.cfg.data, ctx.dir, cluster.data_root(), base_model_dir=base)


if __name__ == "__main__":
    main_for(["data"], "python -m jobs.data")
