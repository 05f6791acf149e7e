"""Eval throughput on SmolLM2-135M-Instruct: our eval (`run_eval`: the requests of all tasks pooled, a question's
choices scored as one tree row over their shared context, logits only where a token is scored, sharded over
eval-worker actors) against lm-evaluation-harness 0.4.13's `hf` backend with `--batch_size 16`.

Same rows (the shared ARC-Easy, ARC-Challenge, HellaSwag and PIQA slices, 200 each), same prompts (lm-eval's
task templates: its side reads the rows through local task YAMLs, ours through configs/tasks), same dtype, and
each side uses the whole machine: lm-eval one process with all cores as torch threads, ours `--workers` actors
of `cores / workers` threads. Each side runs in a fresh subprocess; the time is its whole evaluation including
model load (not the interpreter or Ray start). acc_equal: every task's acc and acc_norm are equal.
Last line JSON: {"ours_s", "lmeval_s", "ratio" (= lmeval_s / ours_s), "acc_equal", ...}

    .venv/bin/python -m bench.eval_throughput [--rows 200] [--dtype float32] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster.hardware import precision_info, resolve_dtype

REPO = Path(__file__).resolve().parent.parent
TASKS = ["arc_easy", "arc_challenge", "hellaswag", "piqa"]

MC = """task: local_{name}
dataset_path: json
dataset_kwargs:
  data_files: {{test: "{path}"}}
output_type: multiple_choice
test_split: test
{body}
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
  - {{metric: acc_norm, aggregation: mean, higher_is_better: true}}
"""
BODIES = {  # lm-eval 0.4.13's own task definitions (arc_easy.yaml, hellaswag.yaml, piqa.yaml)
    "arc": 'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_target: "{{choices.label.index(answerKey)}}"\n'
           'doc_to_choice: "{{choices.text}}"',
    "hellaswag": 'process_docs: !function hs_utils.process_docs\ndoc_to_text: "{{query}}"\n'
                 'doc_to_target: "{{label}}"\ndoc_to_choice: "choices"',
    "piqa": 'doc_to_text: "Question: {{goal}}\\nAnswer:"\ndoc_to_target: label\ndoc_to_choice: "{{[sol1, sol2]}}"',
}


def lmeval_files(data_root: Path, rows: int, work: Path) -> Path:
    """The shared rows in the HF schemas lm-eval's templates read, and one local task YAML per task."""
    from actors.common.metrics import read_jsonl

    def arc(r):
        q = r["question"]
        return {"id": r["id"], "question": q["stem"], "answerKey": r["answerKey"],
                "choices": {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]}}

    src = {"arc_easy": ("arc/arc_easy_test_rows0-199.jsonl", arc, "arc"),
           "arc_challenge": ("arc/arc_challenge_test_rows0-199.jsonl", arc, "arc"),
           "hellaswag": ("hellaswag/val_rows0-199.jsonl",
                         lambda r: {**r, "ctx_a": r["ctx"], "ctx_b": "", "label": str(r["label"])}, "hellaswag"),
           "piqa": ("piqa/dev_rows0-199.jsonl", lambda r: r, "piqa")}
    tasks = work / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    for name, (rel, conv, body) in src.items():
        f = work / f"{name}.jsonl"
        f.write_text("".join(json.dumps(conv(r)) + "\n" for r in read_jsonl(data_root / rel, rows)))
        (tasks / f"local_{name}.yaml").write_text(MC.format(name=name, path=f, body=BODIES[body]))
    (tasks / "hs_utils.py").write_text("from lm_eval.tasks.hellaswag.utils import process_docs  # noqa: F401\n")
    return tasks


def run_lmeval(a) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    out = simple_evaluate(model="hf", model_args=f"pretrained={a.model_dir},dtype={a.dtype}",
                          tasks=[f"local_{t}" for t in TASKS], batch_size=16, device="cpu",
                          task_manager=TaskManager(include_path=a.tasks_dir))
    secs = time.perf_counter() - t0
    return {"seconds": secs, "acc": {t: {m: out["results"][f"local_{t}"][f"{m},none"] for m in ("acc", "acc_norm")}
                                     for t in TASKS}}


def run_ours(a) -> dict:
    import cluster
    from actors.eval.config import EvalConfig
    from actors.eval.runner import run_eval

    cluster.connect(num_cpus=a.threads)
    cfg = EvalConfig(tasks=TASKS, pretrain_tasks=[], limit=a.rows, workers=a.workers, num_cpus=a.threads / a.workers,
                     dtype=a.dtype, batch_size=a.batch_size, log_samples=False, device="cpu")
    t0 = time.perf_counter()
    rep = run_eval({"smollm2": a.model_dir}, cfg, Path(a.work) / "ours", data_root=cluster.data_root(),
                   model_cache=cluster.model_cache())
    secs = time.perf_counter() - t0
    res = rep["results"]["smollm2"]
    return {"seconds": secs, "acc": {t: {m: res[t]["metrics"][m] for m in ("acc", "acc_norm")} for t in TASKS}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto (default): bfloat16 where the hardware computes it natively, else float32")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16, help="our tree rows per forward pass")
    p.add_argument("--side", default="", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default="", help=argparse.SUPPRESS)
    p.add_argument("--tasks-dir", default="", help=argparse.SUPPRESS)
    p.add_argument("--work", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.dtype = resolve_dtype(a.dtype, field="--dtype")
    if a.side:
        res = run_lmeval(a) if a.side == "lmeval" else run_ours(a)
        print("RESULT " + json.dumps(res))
        return

    import cluster
    from actors.model.registry import resolve_model

    model_dir = str(resolve_model("smollm2-135m-instruct", cluster.model_cache()))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tasks_dir = lmeval_files(cluster.data_root(), a.rows, work)
        res = {}
        for side in ("lmeval", "ours"):
            cmd = [sys.executable, "-m", "bench.eval_throughput", "--side", side, "--model-dir", model_dir,
                   "--tasks-dir", str(tasks_dir), "--work", str(work), "--rows", str(a.rows), "--dtype", a.dtype,
                   "--threads", str(a.threads), "--workers", str(a.workers), "--batch-size", str(a.batch_size)]
            r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            line = next((x for x in r.stdout.splitlines()[::-1] if x.startswith("RESULT ")), None)
            if r.returncode != 0 or line is None:
                sys.exit(f"{side} failed:\n{r.stderr[-4000:]}")
            res[side] = json.loads(line[len("RESULT "):])
            print(f"{side}: {res[side]['seconds']:.1f} s  {res[side]['acc']}", flush=True)
    equal = all(res["ours"]["acc"][t][m] == res["lmeval"]["acc"][t][m] for t in TASKS for m in ("acc", "acc_norm"))
    print(json.dumps({"ours_s": round(res["ours"]["seconds"], 2), "lmeval_s": round(res["lmeval"]["seconds"], 2),
                      "ratio": round(res["lmeval"]["seconds"] / res["ours"]["seconds"], 3), "acc_equal": equal,
                      "tasks": TASKS, "rows": a.rows, **precision_info(a.dtype), "threads": a.threads, "workers": a.workers,
                      "baseline": "lm-eval 0.4.13 hf backend, batch_size 16", "acc_ours": res["ours"]["acc"],
                      "acc_lmeval": res["lmeval"]["acc"]}))


if __name__ == "__main__":
    main()
