"""Run folders: the one owner of their formats. `Manifest` writes and reads `manifest.json` (per stage status,
outputs, metrics, seconds, config); the functions below read a run for people and programs (`fullchain runs`, the
summary, the Serve app's console and `/v1/models`): its stages, each stage's `metrics.jsonl` curves, the eval
stage's `results.json`, the data card, and the lineage that links a model folder back to its training run, base,
data and eval scores. Ray-free and read-only outside `Manifest`.

Stages hand each other references through the manifest. A stage is skipped on re-run when it is complete and its
config and its inputs' fingerprints are unchanged; otherwise it and everything after it run again.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

STAGE_ORDER = ("data", "pretrain", "finetune", "evaluate", "serve", "agent")
# the label each model-making stage's model gets in the eval stage's results.json
EVAL_LABEL = {"finetune": "finetune", "pretrain": "pretrain"}
MANIFEST = "manifest.json"
MAX_CURVE_POINTS = 1000   # a curve is thinned to this many points (a 20k-step run stays a small JSON)


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Manifest:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / MANIFEST
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {"stages": {}}

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)  # atomic: a crash never leaves a half-written manifest

    def stage(self, name: str) -> dict:
        return self.data["stages"].get(name, {})

    def is_complete(self, name: str, fp: str) -> bool:
        s = self.stage(name)
        return s.get("status") == "complete" and s.get("fingerprint") == fp

    def outputs(self, name: str) -> dict:
        s = self.stage(name)
        if s.get("status") != "complete":
            raise RuntimeError(f"stage {name!r} has not completed in {self.run_dir} (status: "
                               f"{s.get('status', 'never run')}); run it first or pass --input {name}.KEY=PATH")
        return s["outputs"]

    def start(self, name: str, config: dict, fp: str) -> None:
        self.data["stages"][name] = {"status": "running", "config": config, "fingerprint": fp,
                                     "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.save()

    def complete(self, name: str, outputs: dict, metrics: dict, seconds: float) -> None:
        s = self.data["stages"][name]
        s.update(status="complete", outputs=outputs, metrics=metrics, seconds=round(seconds, 2),
                 finished=time.strftime("%Y-%m-%dT%H:%M:%S") + f".{time.time_ns() % 10**9:09d}")
        self.save()

    def fail(self, name: str, error: str, seconds: float) -> None:
        s = self.data["stages"].setdefault(name, {})
        s.update(status="failed", error=error, seconds=round(seconds, 2))
        self.save()

    def stopped(self, name: str, reason: str, seconds: float) -> None:
        """A stage stopped on request (stop file, SIGTERM) with a checkpoint: the next run resumes it."""
        s = self.data["stages"].setdefault(name, {})
        s.update(status="stopped", reason=reason, seconds=round(seconds, 2))
        self.save()

    def set_external(self, name: str, outputs: dict) -> None:
        """Outputs supplied from outside (a user's own HF model or JSONL) instead of a stage of this run."""
        self.data["stages"][name] = {"status": "complete", "outputs": outputs, "metrics": {}, "seconds": 0.0,
                                     "config": {"external": True}, "fingerprint": fingerprint(outputs),
                                     "finished": fingerprint(outputs)}
        self.save()


# ---------------------------------------------------------------------------------------------------- readers

def _json(path: str | Path | None) -> dict | None:
    """A JSON file's object, or None where it is missing or unreadable (a run being written, a partial copy)."""
    if not path:
        return None
    try:
        out = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return out if isinstance(out, dict) else None


def is_run(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _first_line(text: str | None) -> str | None:
    lines = (text or "").strip().splitlines()
    return lines[0][:300] if lines else None


def stage_rows(stages: dict) -> list[dict]:
    """Each stage of a manifest's `stages`, in pipeline order: status, seconds, start and finish times, error or
    stop reason."""
    rows = []
    for name in [*STAGE_ORDER, *(s for s in stages if s not in STAGE_ORDER)]:
        s = stages.get(name)
        if s:
            rows.append({"stage": name, "status": s.get("status"), "seconds": s.get("seconds"),
                         "started": s.get("started"), "finished": str(s.get("finished") or "")[:19] or None,
                         "external": bool((s.get("config") or {}).get("external")),
                         "error": _first_line(s.get("error") or s.get("reason"))})
    return rows


def list_runs(root: str | Path) -> list[dict]:
    """The run folders directly under `root` (a folder holding manifest.json), newest first."""
    out = []
    for m in Path(root).glob(f"*/{MANIFEST}"):
        data = _json(m)
        if data is None:
            out.append({"name": m.parent.name, "path": str(m.parent), "error": f"unreadable {MANIFEST}"})
            continue
        out.append({"name": m.parent.name, "path": str(m.parent.resolve()), "run": data.get("run"),
                    "modified": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(m.stat().st_mtime)),
                    "stages": stage_rows(data.get("stages") or {})})
    return sorted(out, key=lambda r: r.get("modified", ""), reverse=True)


def read_curve(path: str | Path, max_points: int = MAX_CURVE_POINTS) -> dict:
    """A metrics.jsonl as curves: {"x": "step", "series": {name: [[step, value], ...]}, "bad_lines": n}. Every
    numeric column but the x and the wall clock is a series; a line that does not parse is counted, not fatal."""
    series: dict[str, list] = {}
    bad = 0
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return {"x": "step", "series": {}, "bad_lines": 0, "missing": True}
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        x = row.get("step") if isinstance(row, dict) else None
        if not isinstance(x, (int, float)):
            bad += 1
            continue
        for k, v in row.items():
            if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
                series.setdefault(k, []).append([x, v])
    for k, pts in series.items():
        if len(pts) > max_points:   # thinned evenly, the last point kept
            stride = len(pts) / max_points
            series[k] = [pts[int(i * stride)] for i in range(max_points - 1)] + [pts[-1]]
    return {"x": "step", "series": series, "bad_lines": bad}


def curves(manifest: Manifest) -> dict[str, dict]:
    """Every stage's metrics.jsonl curves, by stage."""
    out = {}
    for name in STAGE_ORDER:
        path = manifest.stage(name).get("outputs", {}).get("metrics_jsonl")
        if path:
            out[name] = read_curve(path)
    return out


def eval_report(manifest: Manifest) -> dict:
    """The eval stage's results.json ({} where none)."""
    return _json(manifest.stage("evaluate").get("outputs", {}).get("results_json")) or {}


def eval_results(manifest: Manifest) -> dict:
    """results.json's `results`: {model label: {task: {"metrics": {...}, "n": ...}}}."""
    return eval_report(manifest).get("results", {}) or {}


def main_metric(metrics: dict) -> str | None:
    """The metric a task is shown by: the first that is not a stderr."""
    return next((k for k in metrics if not k.endswith("_stderr")), None)


def eval_table(manifest: Manifest) -> dict:
    """Tasks x models side by side: {"models": [label, ...], "rows": [{"task", "metric", "n", "values": {label:
    value}}]}; each task's every metric gets a row, its main one first."""
    results = eval_results(manifest)
    labels = list(results)
    tasks: dict[str, None] = {}
    for per in results.values():
        tasks.update(dict.fromkeys(per))
    rows = []
    for task in tasks:
        names: dict[str, None] = {}
        for label in labels:
            names.update(dict.fromkeys(k for k in results[label].get(task, {}).get("metrics", {})
                                       if not k.endswith("_stderr")))
        for metric in names:
            rows.append({"task": task, "metric": metric,
                         "n": {lb: results[lb].get(task, {}).get("n") for lb in labels},
                         "values": {lb: results[lb].get(task, {}).get("metrics", {}).get(metric) for lb in labels},
                         "stderr": {lb: results[lb].get(task, {}).get("metrics", {}).get(f"{metric}_stderr")
                                    for lb in labels}})
    return {"models": labels, "rows": rows, "models_spec": eval_report(manifest).get("models", {})}


def data_card(manifest: Manifest) -> dict:
    """The data stage's card: card.md / card.json where the stage wrote one (a curation run), and its counts
    (read = kept + dropped + quarantined, per source and rule; tokens) from the manifest."""
    s = manifest.stage("data")
    outs, metrics = s.get("outputs", {}), s.get("metrics", {})
    card = {"status": s.get("status"), "metrics": metrics, "outputs": outs, "markdown": None}
    md = outs.get("card")
    if md and Path(md).is_file():
        card["markdown"] = Path(md).read_text(encoding="utf-8")
        card["card"] = _json(Path(md).with_suffix(".json"))
    return card


def _find_run(path: Path, up: int = 4) -> Path | None:
    for p in [path, *list(path.parents)[:up]]:
        if is_run(p):
            return p
    return None


def _same(a: str | Path | None, b: Path) -> bool:
    if not a or not isinstance(a, (str, Path)):
        return False
    try:
        return Path(a).resolve() == b
    except OSError:
        return False


def lineage(model_path: str | Path) -> dict:
    """Where a model or adapter folder comes from, as links a person can follow: the checkpoint itself (its
    provenance file), the run and stage that trained it (config, final metrics, curves), its base, the data it
    was trained on (the data stage's shards and card, the fine-tune's mixed sets) and its eval scores."""
    from actors.model.hf import read_lineage

    p = Path(model_path).expanduser().resolve()
    prov = read_lineage(p)
    out: dict = {"path": str(p), "kind": "adapter" if (p / "adapter_config.json").is_file() else "model",
                 "checkpoint": {"path": str(p), "step": prov.get("step"), "lineage": prov.get("lineage", []),
                                "dtype": prov.get("dtype")}}
    run_dir = _find_run(p)
    if run_dir is None:
        return out
    m = Manifest(run_dir)
    stage = next((n for n, s in m.data.get("stages", {}).items()
                  if any(_same(v, p) for v in (s.get("outputs") or {}).values())), None)
    out["run"] = {"name": run_dir.name, "path": str(run_dir), "stage": stage}
    if stage is None:
        return out
    s = m.stage(stage)
    outs = s.get("outputs", {})
    out["training"] = {"stage": stage, "status": s.get("status"), "seconds": s.get("seconds"),
                       "started": s.get("started"), "finished": str(s.get("finished") or "")[:19] or None,
                       "config": s.get("config", {}), "metrics": {k: v for k, v in (s.get("metrics") or {}).items()
                                                                  if not isinstance(v, (dict, list))},
                       "metrics_jsonl": outs.get("metrics_jsonl")}
    if out["checkpoint"]["step"] is None:   # a peft adapter folder carries no provenance file: the stage's last step
        out["checkpoint"]["step"] = out["training"]["metrics"].get("step")
    if stage == "finetune":
        out["base"] = {"spec": outs.get("base"), "hf": outs.get("base_hf"),
                       "lineage": read_lineage(outs["base_hf"]).get("lineage", []) if outs.get("base_hf") else []}
        out["training"]["data"] = {k: outs.get(k) for k in ("train", "val", "quarantine") if outs.get(k)}
    elif stage == "pretrain":
        out["base"] = None
    d = m.stage("data")
    if d:
        douts = d.get("outputs", {})
        out["data"] = {"status": d.get("status"), "card": douts.get("card"),
                       "shards": {k: v for k, v in douts.items() if k.endswith("_dir") or k in ("synthetic_train",
                                                                                              "sft", "curated_dir")},
                       "counts": {k: d.get("metrics", {}).get(k) for k in ("read", "kept", "train_tokens",
                                                                          "val_tokens") if k in d.get("metrics", {})}}
    label = EVAL_LABEL.get(stage)
    results = eval_results(m)
    if label in results:
        scores = {}
        for task, r in results[label].items():
            key = main_metric(r.get("metrics", {}))
            scores[task] = {"metric": key, "value": r.get("metrics", {}).get(key), "n": r.get("n")}
        base_label = "base" if "base" in results else None
        out["eval"] = {"label": label, "scores": scores, "compared_with": base_label,
                       "results_json": m.stage("evaluate").get("outputs", {}).get("results_json")}
    return out


def run_view(run_dir: str | Path) -> dict:
    """Everything the console shows of one run."""
    m = Manifest(run_dir)
    if not m.path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no {MANIFEST}); `fullchain runs` lists them")
    models = {}
    for stage in ("pretrain", "finetune"):
        for key in ("hf", "adapter"):
            path = m.stage(stage).get("outputs", {}).get(key)
            if path and Path(path).exists():
                models[f"{stage}.{key}"] = lineage(path)
    summary = _json(m.run_dir / "summary.json") or {}
    return {"name": m.run_dir.name, "path": str(m.run_dir.resolve()), "run": m.data.get("run"),
            "hardware": m.data.get("hardware", {}), "pipeline_seconds": m.data.get("pipeline_seconds"),
            "stages": stage_rows(m.data.get("stages", {})), "curves": curves(m), "eval": eval_table(m),
            "data_card": data_card(m),
            "models": models, "headline": summary.get("headline", {}),
            "serve": {k: v for k, v in m.stage("serve").get("outputs", {}).items() if k != "demo_chat"},
            "agent": m.stage("agent").get("metrics", {})}
