"""Our tasks (configs/tasks/*.yaml through the registry) against lm-evaluation-harness itself (`lm-eval==0.4.13`,
a pinned dev dependency): the debug model exported as a Hugging Face folder, the shared ARC-Easy, HellaSwag and
PIQA slices and one MMLU subject 5-shot from its dev rows, lm-eval's `hf` backend on its own task definitions
(arc_easy.yaml's templates, hellaswag's `process_docs`, piqa.yaml, mmlu's default template and first_n
exemplars) pointed at the same local rows. Prompts must be the same strings, accuracies equal, and every
choice's log-likelihood within 1e-4."""
from __future__ import annotations

import json
import math

from actors.common.metrics import read_jsonl

LIMIT = 40  # rows per task: enough for a non-trivial accuracy, a few seconds of scoring per side

MMLU_YAML = """task: local_mmlu_anatomy
dataset_path: json
dataset_kwargs:
  data_files: {test: "%s", dev: "%s"}
output_type: multiple_choice
test_split: test
fewshot_split: dev
fewshot_config: {sampler: first_n}
num_fewshot: 5
description: "The following are multiple choice questions (with answers) about anatomy.\\n\\n"
doc_to_text: "{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - {metric: acc, aggregation: mean, higher_is_better: true}
  - {metric: acc_norm, aggregation: mean, higher_is_better: true}
"""


def test_acc_and_loglikelihoods_equal_lm_eval(debug_smollm2, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from actors.eval.backend import LocalModelBackend
    from actors.eval.config import EvalConfig
    from actors.eval.runner import run_tasks
    from actors.eval.tasks import build_tasks

    from bench.eval_throughput import lmeval_files

    # lm-eval's own task definitions over the shared rows in its schemas (the bench's, one place for both)
    tasks_dir = lmeval_files(data_root, LIMIT, tmp_path)
    # MMLU in HF cais/mmlu's schema (answer = the index), one subject
    for split in ("test_first5_per_subject", "dev_all"):
        rows = [dict(subject=r["subject"], question=r["question"], choices=r["choices"], answer=r["answer_index"])
                for r in read_jsonl(data_root / "mmlu" / f"{split}.jsonl") if r["subject"] == "anatomy"]
        (tmp_path / f"mmlu_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks_dir / "local_mmlu.yaml").write_text(MMLU_YAML % (tmp_path / "mmlu_test_first5_per_subject.jsonl",
                                                            tmp_path / "mmlu_dev_all.jsonl"))

    pairs = {"local_arc_easy": "arc_easy", "local_hellaswag": "hellaswag", "local_piqa": "piqa",
             "local_mmlu_anatomy": "mmlu_anatomy"}
    out = simple_evaluate(model="hf", model_args=f"pretrained={debug_smollm2},dtype=float32",
                          tasks=list(pairs), batch_size=8, device="cpu",
                          task_manager=TaskManager(include_path=str(tasks_dir)), log_samples=True)

    # ours: the built-in task definitions, rows from the same files (--data), the lm-eval schema rows
    cfg = EvalConfig(tasks=list(pairs.values()), data={
        **{t: str(tmp_path / f"{t}.jsonl") for t in ("arc_easy", "hellaswag", "piqa")},
        "mmlu": str(tmp_path / "mmlu_test_first5_per_subject.jsonl")})
    tasks = build_tasks(cfg.tasks, cfg, data_root)
    # exemplars from the same dev rows: the registry's file is the full dev split, of which these are anatomy's
    backend = LocalModelBackend(debug_smollm2, device="cpu", dtype="float32", batch_size=8, progress=False)
    ours = run_tasks(backend, tasks)
    for lm_name, name in pairs.items():
        mine = ours[name]
        samples = sorted(out["samples"][lm_name], key=lambda s: s["doc_id"])
        assert len(samples) == len(mine["samples"]) == mine["n"] > 0
        task = next(t for t in tasks if t.name == name)
        for s, m, doc in zip(samples, mine["samples"], task.docs()):
            theirs = [float(r[0]) for r in s["filtered_resps"]]
            lls = [ll for ll, _ in m["resps"]]
            assert s["arguments"][0][0] == task.context(doc)  # the same prompt text on both sides
            assert len(theirs) == len(lls)
            assert max(abs(a - b) for a, b in zip(theirs, lls)) <= 1e-4, (name, s["doc_id"], theirs, lls)
            assert m["acc"] == s["acc"], (name, s["doc_id"], m, s["acc"])
            if "acc_norm" in m:
                assert m["acc_norm"] == s["acc_norm"], (name, s["doc_id"], m, s["acc_norm"])
        res = out["results"][lm_name]
        for metric in mine["metrics"]:
            if metric in ("acc", "acc_norm"):
                assert math.isclose(mine["metrics"][metric], res[f"{metric},none"], abs_tol=1e-6), (name, metric, res)
