"""Running tasks on models, and the reports.

`run_tasks(backend, tasks)` is the Ray-free core: the requests of every pooled task go to the backend in one
call per request kind (so it can sort, batch and shard them across tasks), then each task scores its docs; a
multi-turn task runs on its own. `run_eval(models, cfg, out_dir)` gives each model a pool of `cfg.workers`
EvalWorker actors and writes, under out_dir:

    results.json   {"models": {label: spec}, "tasks": [...], "groups": {group: [subtasks]}, "config": {...},
                    "versions": {...}, "seconds": float,
                    "results": {label: {task: {"metrics": {name: v, name_stderr: v}, "n": int, "quarantined": int,
                                               "config": {...}, "samples": [first num_samples, generation]}}}}
    summary.md / summary.csv   tasks and groups x models side by side (results.md: the same table)
    results.png    the main metric of every task and group, one bar per model
    samples_<label>_<task>.jsonl   every doc's prompt arguments, responses, filtered answer and metrics
NaN (e.g. the stderr of a single doc) is written as null.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import time
from pathlib import Path

from actors.common.config import check
from actors.eval.backend import ModelBackend
from actors.eval.config import EvalConfig
from actors.eval.metrics import aggregate_mean

log = logging.getLogger(__name__)
KINDS = ("loglikelihood", "loglikelihood_rolling", "generate")


def run_tasks(backend: ModelBackend, tasks: list) -> dict[str, dict]:
    """Per task {"metrics", "n", "samples", "per_doc", "quarantined", "config"}, then one entry per group."""
    from actors.eval.tasks import dispatch

    pooled = [t for t in tasks if t.pooled]
    docs = {t.name: t.docs() for t in pooled}
    reqs: dict[str, list] = {k: [] for k in KINDS}
    spans: dict[str, list[tuple[int, int]]] = {}
    for t in pooled:
        spans[t.name] = []
        for d in docs[t.name]:
            r = t.requests(d)
            spans[t.name].append((len(reqs[t.kind]), len(reqs[t.kind]) + len(r)))
            reqs[t.kind].extend(r)
    answers = {}
    for k in KINDS:
        t0 = time.perf_counter()
        answers[k] = dispatch(backend, k, reqs[k])
        if reqs[k]:
            log.info("%s: %d %s requests in %.1f s", getattr(backend, "name", "?"), len(reqs[k]), k,
                     time.perf_counter() - t0)
    out = {}
    for t in tasks:
        t0 = time.perf_counter()
        if t.pooled:
            res = t.finish(docs[t.name], [answers[t.kind][a:b] for a, b in spans[t.name]])
        else:
            res = t.evaluate(backend)
        res["config"] = t.config()
        res["group"] = t.group
        log.info("eval %s on %s: %s (%.1fs)", t.name, getattr(backend, "name", "?"), res["metrics"],
                 time.perf_counter() - t0)
        out[t.name] = res
    for group, members in groups_of(tasks).items():
        per_doc = [d for m in members for d in out[m]["per_doc"]]
        keys = [k for k in out[members[0]]["metrics"] if not k.endswith("_stderr")]
        # the docs of all subjects pooled: lm-eval's weight_by_size mean, with the pooled docs' stderr
        out[group] = {"metrics": aggregate_mean(per_doc, keys), "n": len(per_doc), "subtasks": members,
                      "quarantined": sum(out[m]["quarantined"] for m in members),
                      "config": {"group": group, "aggregation": "mean weighted by size",
                                 "num_fewshot": out[members[0]]["config"].get("num_fewshot")}}
    return out


def groups_of(tasks: list) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for t in tasks:
        if t.group:
            groups.setdefault(t.group, []).append(t.name)
    return groups


def evaluate(backend: ModelBackend, names: list[str], cfg: EvalConfig, data_root: str | Path | None = None) -> dict:
    """Build `names` with cfg's options and run them on one backend (no Ray): {task: result}."""
    from actors.eval.tasks import build_tasks

    return run_tasks(backend, build_tasks(names, cfg, data_root))


def _is_endpoint(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def run_eval(models: dict[str, str], cfg: EvalConfig, out_dir: str | Path,
             tasks_for: dict[str, list[str]] | None = None, model_names: dict[str, str] | None = None, *,
             data_root: str | Path, model_cache: str | Path) -> dict:
    """Evaluate every model (label -> registry name, .gguf, HF folder, our checkpoint, or an OpenAI endpoint
    URL with its served name in `model_names`) on cfg.tasks or, for a label in `tasks_for`, on the tasks listed
    there (e.g. a from-scratch model on the tasks that fit it). Models run one after another, each on a pool of
    cfg.workers actors that load it once.

    The caller has connected to Ray (`cluster.connect()`) and passes the shared data root (for tasks whose
    cfg.data_root is unset) and the model cache (where registry names / .gguf files are imported once). Tasks and
    their data are checked before any model loads, and every model spec is resolved first."""
    import ray

    from actors.eval.actor import EvalWorkerActor
    from actors.eval.pool import CachedBackend, WorkerPool
    from actors.eval.tasks import build_tasks
    from actors.model.registry import ModelSpecError, resolve_model

    check(bool(models), "models", "give at least one {label: model}, e.g. {'finetune': 'runs/x/sft'}")
    cfg = dataclasses.replace(cfg, data_root=cfg.data_root or str(data_root))
    tasks_for = {label: list((tasks_for or {}).get(label, cfg.tasks)) for label in models}
    built = {label: build_tasks(names, cfg) for label, names in tasks_for.items()}
    resolved = {}
    for label, spec in models.items():
        if _is_endpoint(spec):
            resolved[label] = spec
            continue
        try:
            resolved[label] = str(resolve_model(spec, model_cache))
        except ModelSpecError as e:
            check(False, f"models.{label}", str(e))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    results, seconds, precision = {}, {}, {}
    for label, path in resolved.items():
        t1 = time.perf_counter()
        workers = []
        try:
            if _is_endpoint(path):
                from actors.eval.openai_backend import OpenAIBackend

                backend: ModelBackend = OpenAIBackend(path, (model_names or {}).get(label, label),
                                                      batch_size=cfg.batch_size, progress=cfg.progress,
                                                      concurrency=cfg.workers * cfg.max_num_seqs)
            else:
                def spawn(path=path):
                    return EvalWorkerActor.options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus).remote(path, cfg)

                pool = WorkerPool([spawn() for _ in range(cfg.workers)], label, cfg.batch_size, cfg.max_num_seqs,
                                  cfg.progress, spawn=spawn)
                workers = pool.workers  # the live list: replacements of dead workers included
                backend = pool
                info = ray.get(workers[0].info.remote())  # the dtype `auto` resolved to where the model runs
                precision[label] = {k: info[k] for k in ("dtype", "cpu_capability", "device")}
            if cfg.cache_dir:
                backend = CachedBackend(backend, Path(cfg.cache_dir) / f"{_safe(label)}.jsonl", model_key=path)
            results[label] = run_tasks(backend, built[label])
        finally:
            for w in workers:
                ray.kill(w)
        seconds[label] = round(time.perf_counter() - t1, 3)
    all_tasks = list(dict.fromkeys(t.name for ts in built.values() for t in ts))
    groups: dict[str, list[str]] = {}
    for ts in built.values():
        for g, members in groups_of(ts).items():
            groups.setdefault(g, list(members))
    report = {"models": {k: str(v) for k, v in resolved.items()}, "tasks": all_tasks, "groups": groups,
              "config": dataclasses.asdict(cfg), "versions": versions(built), "seconds": round(time.perf_counter()
                                                                                              - t0, 3),
              "model_seconds": seconds, "precision": precision, "results": results}
    write_results(report, out, log_samples=cfg.log_samples, num_samples=cfg.num_samples)
    return report


def versions(built: dict[str, list]) -> dict:
    import importlib.metadata as md

    v = {t.name: t.version for ts in built.values() for t in ts}
    try:
        v["fullchain"] = md.version("fullchain")
    except md.PackageNotFoundError:
        v["fullchain"] = "source"
    import torch

    v["torch"] = torch.__version__
    return v


# ---- reports ---------------------------------------------------------------------------------------------
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_results(report: dict, out_dir: str | Path, log_samples: bool = True, num_samples: int = 3) -> Path:
    """results.json (+ samples JSONL), summary.md (= results.md), summary.csv, results.png; returns results.json.
    Per-doc lists leave the report here: they go to the samples files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slim = dict(report, results={})
    for label, per_task in report["results"].items():
        slim["results"][label] = {}
        for task, res in per_task.items():
            samples = res.get("samples") or []
            if log_samples and samples:
                with open(out / f"samples_{_safe(label)}_{_safe(task)}.jsonl", "w", encoding="utf-8") as f:
                    for s in samples:
                        f.write(json.dumps(_clean(s), ensure_ascii=False, default=str) + "\n")
            keep = {k: v for k, v in res.items() if k not in ("per_doc", "samples")}
            if res.get("config", {}).get("output_type", "generate_until") == "generate_until" and samples:
                keep["samples"] = samples[:num_samples]
            slim["results"][label][task] = keep
    jp = out / "results.json"
    jp.write_text(json.dumps(_clean(slim), indent=2, ensure_ascii=False, allow_nan=False, default=str))
    table = markdown_table(slim)
    (out / "summary.md").write_text(table)
    (out / "results.md").write_text(table)
    (out / "summary.csv").write_text(csv_table(slim))
    bar_chart(slim, out / "results.png")
    return jp


def _rows(report: dict) -> list[tuple[str, str]]:
    """(task, metric) rows: tasks and groups first, then each group's subtasks."""
    labels = list(report["results"])
    sub = {m for ms in report.get("groups", {}).values() for m in ms}
    order = [t for t in report["tasks"] if t not in sub]
    for g, members in report.get("groups", {}).items():
        order.insert(order.index(members[0]) if members[0] in order else len(order), g)
    order = [t for t in dict.fromkeys(order)]
    order += [m for ms in report.get("groups", {}).values() for m in ms]
    rows = []
    for task in order:
        keys: list[str] = []
        for lab in labels:
            for k in report["results"][lab].get(task, {}).get("metrics", {}):
                if not k.endswith("_stderr") and k not in keys:
                    keys.append(k)
        rows += [(task, k) for k in keys]
    return rows


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
    """Rows task/metric (n beside each task), columns models; a metric's `_stderr` is shown as ± beside it."""
    labels = list(report["results"])
    lines = ["| task | metric | n | " + " | ".join(labels) + " |", "|---|---|---:|" + "---:|" * len(labels)]
    for task, k in _rows(report):
        n = next((str(report["results"][lab][task]["n"]) for lab in labels if task in report["results"][lab]), "")
        cells = []
        for lab in labels:
            m = report["results"][lab].get(task, {}).get("metrics", {})
            cells.append(_fmt(m.get(k), m.get(f"{k}_stderr")))
        lines.append(f"| {task} | {k} | {n} | " + " | ".join(cells) + " |")
    secs = report.get("model_seconds", {})
    lines.append("| seconds | | | " + " | ".join(_fmt(secs.get(lab)) for lab in labels) + " |")
    models = "\n".join(f"- {lab}: `{p}`" for lab, p in report.get("models", {}).items())
    return "\n".join(lines) + "\n\n" + models + "\n"


def csv_table(report: dict) -> str:
    import csv
    import io

    labels = list(report["results"])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["task", "metric", "n"] + labels + [f"{lab}_stderr" for lab in labels])
    for task, k in _rows(report):
        n = next((report["results"][lab][task]["n"] for lab in labels if task in report["results"][lab]), "")
        vals = [report["results"][lab].get(task, {}).get("metrics", {}).get(k) for lab in labels]
        errs = [report["results"][lab].get(task, {}).get("metrics", {}).get(f"{k}_stderr") for lab in labels]
        w.writerow([task, k, n] + ["" if v is None else v for v in vals] + ["" if e is None else e for e in errs])
    return buf.getvalue()


PRIMARY = ("acc_norm", "acc", "exact_match,flexible-extract", "exact_match", "ast_accuracy", "f1", "perplexity",
           "word_perplexity")


def bar_chart(report: dict, png: Path) -> Path | None:
    """One group of bars per task or group (subtasks left out), one bar per model: the task's main metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(report["results"])
    sub = {m for ms in report.get("groups", {}).values() for m in ms}
    tasks = [t for t in dict.fromkeys(list(report.get("groups", {})) + report["tasks"]) if t not in sub]
    cols = []
    for t in tasks:
        keys = {k for lab in labels for k in report["results"][lab].get(t, {}).get("metrics", {})}
        key = next((k for k in PRIMARY if k in keys), None)
        if key is not None and key not in ("perplexity", "word_perplexity"):  # bars share a 0..1 axis
            cols.append((t, key))
    if not cols:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cols) * max(1, len(labels)) ** 0.5), 4))
    width = 0.8 / len(labels)
    for j, lab in enumerate(labels):
        vals = [report["results"][lab].get(t, {}).get("metrics", {}).get(k) or 0.0 for t, k in cols]
        ax.bar([i + j * width for i in range(len(cols))], vals, width, label=lab)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cols))])
    ax.set_xticklabels([f"{t}\n{k}" for t, k in cols], fontsize=7, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("eval: main metric per task")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


__all__ = ["run_tasks", "evaluate", "run_eval", "write_results", "markdown_table"]
