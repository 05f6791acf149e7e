"""`python -m jobs.evaluate`: eval workers score the fine-tune base and the fine-tuned model on `eval.tasks`,
and this run's from-scratch pretrain output on `eval.pretrain_tasks` (the tasks that fit it) when it is not the
fine-tune base."""
from __future__ import annotations

from jobs.runner import StageContext, main_for


def run(ctx: StageContext) -> dict:
    from actors.eval.runner import run_eval

    cfg = ctx.cfg.eval
    data = ctx.inputs("data")
    ft = ctx.inputs("finetune")
    base_spec = ft.get("base", "pretrain")
    pretrain_hf = ctx.inputs("pretrain")["hf"]
    checkpoints, tasks_for = {}, {}
    if base_spec == "pretrain":  # the pretrain output is the base: it gets both task lists
        checkpoints["pretrain"] = ft.get("base_hf", pretrain_hf)
        tasks_for["pretrain"] = list(dict.fromkeys(cfg.pretrain_tasks + cfg.tasks))
    else:
        if cfg.pretrain_tasks:
            checkpoints["pretrain"] = pretrain_hf
            tasks_for["pretrain"] = cfg.pretrain_tasks
        checkpoints["base"] = ft["base_hf"]
    checkpoints["finetune"] = ft["hf"]
    results = run_eval(checkpoints, cfg, ctx.dir, val_dir=data.get("val_dir"),
                       arith_heldout=data.get("synthetic_heldout"), tasks_for=tasks_for)
    return {"outputs": {"results_json": str(ctx.dir / "results.json"), "results_md": str(ctx.dir / "results.md"),
                        "base": base_spec},
            "metrics": results}


if __name__ == "__main__":
    main_for(["evaluate"], "python -m jobs.evaluate")
