"""`python -m jobs.evaluate`: eval workers score the pretrained and the fine-tuned checkpoints."""
from __future__ import annotations

from jobs.runner import StageContext, main_for


def run(ctx: StageContext) -> dict:
    from actors.eval.runner import run_eval

    data = ctx.inputs("data")
    checkpoints = {"pretrain": ctx.inputs("pretrain")["hf"], "finetune": ctx.inputs("finetune")["hf"]}
    results = run_eval(checkpoints, ctx.cfg.eval, ctx.dir, val_dir=data.get("val_dir"),
                       arith_heldout=data.get("synthetic_heldout"))
    return {"outputs": {"results_json": str(ctx.dir / "results.json"), "results_md": str(ctx.dir / "results.md")},
            "metrics": results}


if __name__ == "__main__":
    main_for(["evaluate"], "python -m jobs.evaluate")
