"""`python -m jobs.data`: raw docs -> quarantine-checked, deduped, tokenized, packed Parquet shards."""
from __future__ import annotations

import cluster
from jobs.runner import StageContext, main_for


def run(ctx: StageContext) -> dict:
    from actors.data.stage import run_data_stage

    return run_data_stage(ctx.cfg.data, ctx.dir, cluster.data_root())


if __name__ == "__main__":
    main_for(["data"], "python -m jobs.data")
