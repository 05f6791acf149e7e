"""`python -m jobs.data`: raw docs -> quarantine-checked, deduped, tokenized, packed Parquet shards; or, with a
`data.curate` section (configs/data-web.yaml), a curation run: documents -> curated Parquet + data card, and with
`data.pack` the curated documents then tokenized and packed the same way, for a pretrain stage to read."""
from __future__ import annotations

import dataclasses
import sys

import cluster
from jobs.runner import StageContext, main_for


def eval_rows(tasks: list[str], eval_cfg) -> dict[str, list[str]]:
    """Every string of every row of the named eval tasks (questions, choices, answers), per task: what the
    decontam stage must not let through. Read here, in the driver: the data stage never imports actors.eval."""
    from actors.eval.tasks import build_tasks

    def strings(x) -> list[str]:
        if isinstance(x, str):
            return [x]
        if isinstance(x, dict):
            return [s for k, v in x.items() if not str(k).startswith("_") for s in strings(v)]
        if isinstance(x, (list, tuple)):
            return [s for v in x for s in strings(v)]
        return []

    out = {}
    for task in build_tasks(tasks, dataclasses.replace(eval_cfg, limit=None, limits={}), cluster.data_root()):
        out[task.name] = [" ".join(strings(doc)) for doc in task.docs()]
    return out


def run(ctx: StageContext) -> dict:
    data = ctx.cfg.data
    if data.curate is None:
        return _pack(ctx, data)
    from actors.data.config import SourceConfig, StageSpec
    from actors.data.curate import run_curation
    from actors.data.decontam import write_rows

    cfg = data.curate
    if data.decontam_tasks:
        rows = write_rows(eval_rows(data.decontam_tasks, ctx.cfg.eval), ctx.dir / "decontam_rows.json")
        cfg = dataclasses.replace(cfg, stages=[*cfg.stages, StageSpec("decontam", {"rows": str(rows)})])
    out = ctx.dir / "curated"
    res = run_curation(cfg, out, cluster.data_root())
    docs = out / ("dedup/docs" if res.get("dedup") else "docs")
    print(f"[data] read {res['read']} = kept {res['kept']} + dropped {res['dropped']}; card: {out / 'card.md'}")
    outputs = {"curated_dir": str(docs), "card": str(out / "card.md")}
    if not data.pack:
        return {"outputs": outputs, "metrics": res}
    # the curated documents, as Parquet, are the corpus the tokenizer and the packed shards are made of
    packed = _pack(ctx, dataclasses.replace(data, sources=[SourceConfig("curated", str(docs / "part-*.parquet"))]))
    return {"outputs": {**packed["outputs"], **outputs}, "metrics": {**packed["metrics"], "curation": res}}


def _pack(ctx: StageContext, data) -> dict:
    """Documents of data.sources -> tokenizer + packed train/val shards (actors.data.stage)."""
    from actors.data.stage import run_data_stage

    base = None
    if data.tokenizer:  # a base model's tokenizer: resolved (imported if need be) here, on the driver
        from actors.model.registry import resolve_model

        base = resolve_model(data.tokenizer, cluster.model_cache())
    return run_data_stage(data, ctx.dir, cluster.data_root(), base_model_dir=base)


def main(argv: list[str] | None = None, prog: str = "python -m jobs.data") -> int:
    main_for(["data"], prog, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
