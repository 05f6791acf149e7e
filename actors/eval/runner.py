"""`run_eval`: one EvalWorker actor per checkpoint, in parallel -> results.json + results.md.

`evaluate(backend, tasks, cfg)` is the Ray-free core the actor calls (and tests call directly).
results.json:
    {"checkpoints": {label: model_dir}, "tasks": [...], "config": {...}, "seconds": float,
     "results": {label: {task: {"metrics": {name: float, name_stderr: float, ...}, "n": int,
                                "seconds": float, "samples": [...] (generation tasks only)}}}}
NaN (e.g. the stderr of a single doc) is written as null.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

from actors.common.config import check
from actors.eval.backend import ModelBackend
from actors.eval.config import EvalConfig

log = logging.getLogger(__name__)


def evaluate(backend: ModelBackend, tasks: list[str], cfg: EvalConfig) -> dict:
    """Run `tasks` on `backend`; per task {"metrics", "n", "seconds"[, "samples"]}."""
    from actors.eval.tasks import build_task

    out = {}
    for name in tasks:
        t0 = time.perf_counter()
        res = build_task(name, cfg).evaluate(backend)
        res["seconds"] = round(time.perf_counter() - t0, 3)
        log.info("eval %s on %s: %s", name, getattr(backend, "name", "?"), res["metrics"])
        out[name] = res
    return out


def run_eval(checkpoints: dict[str, str], cfg: EvalConfig, out_dir: str | Path, val_dir: str | None = None,
             arith_heldout: str | None = None, tasks_for: dict[str, list[str]] | None = None) -> dict:
    """Evaluate every checkpoint (label -> HF model folder) with one EvalWorker each, on cfg.tasks or, for a
    label in `tasks_for`, on the tasks listed there (e.g. a from-scratch model on the tasks that fit it).

    The caller has connected to Ray (`cluster.connect()`). Inputs are checked before any actor starts."""
    import ray

    import cluster
    from actors.eval.actor import EvalWorkerActor

    from actors.model.registry import ModelSpecError, resolve_model

    check(bool(checkpoints), "checkpoints", "give at least one {label: model}, e.g. {'finetune': 'runs/x/sft'}")
    resolved = {}
    for label, spec in checkpoints.items():  # a registry name, a .gguf file or an HF folder
        try:
            resolved[label] = str(resolve_model(spec, cluster.model_cache()))
        except ModelSpecError as e:
            check(False, f"checkpoints.{label}", str(e))
    checkpoints = resolved
    tasks_for = {label: list((tasks_for or {}).get(label, cfg.tasks)) for label in checkpoints}
    all_tasks = [t for t in dict.fromkeys(t for ts in tasks_for.values() for t in ts)]
    needs_data_root = any(t in all_tasks for t in ("arc_easy", "arc_challenge", "hellaswag", "bfcl_simple"))
    cfg = dataclasses.replace(
        cfg, val_dir=str(val_dir) if val_dir is not None else cfg.val_dir,
        arith_path=str(arith_heldout) if arith_heldout is not None else cfg.arith_path,
        data_root=cfg.data_root or (str(cluster.data_root()) if needs_data_root else None))
    cfg.require_inputs(all_tasks)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    workers = {label: EvalWorkerActor.options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus).remote(str(path), cfg)
               for label, path in checkpoints.items()}
    try:
        refs = {w.run.remote(tasks_for[label]): label for label, w in workers.items()}
        results, pending = {}, list(refs)
        while pending:  # a finished worker gives its CPUs back at once: more workers than CPUs still all run
            done, pending = ray.wait(pending, num_returns=1)
            label = refs[done[0]]
            results[label] = ray.get(done[0])
            ray.kill(workers.pop(label))
        results = {label: results[label] for label in checkpoints}
    finally:
        for w in workers.values():
            ray.kill(w)
    report = {"checkpoints": {k: str(v) for k, v in checkpoints.items()}, "tasks": all_tasks,
              "config": dataclasses.asdict(cfg), "seconds": round(time.perf_counter() - t0, 3),
              "results": results}
    write_results(report, out)
    return report


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_results(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jp = out / "results.json"
    jp.write_text(json.dumps(_clean(report), indent=2, ensure_ascii=False, allow_nan=False))
    mp = out / "results.md"
    mp.write_text(markdown_table(report))
    return jp, mp


def _fmt(v, err=None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, int):
        s = f"{v:,}"
    else:
        s = f"{v:.4f}" if abs(v) < 1000 else f"{v:,.1f}"
    if err is not None and isinstance(err, float) and math.isfinite(err):
        s += f" ± {err:.4f}"
    return s


def markdown_table(report: dict) -> str:
    """Rows task/metric, columns checkpoint labels; a metric's `_stderr` is shown as ± beside it."""
    labels = list(report["results"])
    lines = ["| task / metric | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for task in report["tasks"]:
        keys: list[str] = []
        for lab in labels:
            for k in report["results"][lab].get(task, {}).get("metrics", {}):
                if not k.endswith("_stderr") and k not in keys:
                    keys.append(k)
        for k in keys + ["n"]:
            cells = []
            for lab in labels:
                r = report["results"][lab].get(task, {})
                if k == "n":
                    cells.append(str(r.get("n", "n/a")))
                else:
                    m = r.get("metrics", {})
                    cells.append(_fmt(m.get(k), m.get(f"{k}_stderr")))
            lines.append(f"| {task} / {k} | " + " | ".join(cells) + " |")
    secs = " | ".join(_fmt(sum(r.get("seconds", 0) for r in report["results"][lab].values())) for lab in labels)
    lines.append(f"| seconds (all tasks) | {secs} |")
    ckpts = "\n".join(f"- {lab}: `{p}`" for lab, p in report.get("checkpoints", {}).items())
    return "\n".join(lines) + "\n\n" + ckpts + "\n"


__all__ = ["evaluate", "run_eval", "write_results", "markdown_table"]
