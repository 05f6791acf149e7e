"""Our multiple-choice scoring against lm-evaluation-harness itself (`lm-eval==0.4.13`, a pinned dev dependency):
the debug model exported as a Hugging Face folder, the shared ARC-Easy and HellaSwag slices, lm-eval's `hf`
backend on its own task definitions (arc_easy.yaml's templates, hellaswag's `process_docs`) pointed at the same
local rows. Accuracies must be equal and every choice's log-likelihood within 1e-4."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from actors.common.metrics import read_jsonl

LIMIT = 40  # rows per task: enough for a non-trivial accuracy, a few seconds of scoring per side

ARC_YAML = """task: local_arc_easy
dataset_path: json
dataset_kwargs:
  data_files: {test: "%s"}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_target: "{{choices.label.index(answerKey)}}"
doc_to_choice: "{{choices.text}}"
metric_list:
  - {metric: acc, aggregation: mean, higher_is_better: true}
  - {metric: acc_norm, aggregation: mean, higher_is_better: true}
"""
HELLASWAG_YAML = """task: local_hellaswag
dataset_path: json
dataset_kwargs:
  data_files: {test: "%s"}
output_type: multiple_choice
test_split: test
process_docs: !function hs_utils.process_docs
doc_to_text: "{{query}}"
doc_to_target: "{{label}}"
doc_to_choice: "choices"
metric_list:
  - {metric: acc, aggregation: mean, higher_is_better: true}
  - {metric: acc_norm, aggregation: mean, higher_is_better: true}
"""


def _hf_arc_row(raw: dict) -> dict:
    """The shared AI2 rows in HF `allenai/ai2_arc`'s schema, which lm-eval's arc_easy.yaml templates read."""
    q = raw["question"]
    return {"id": raw["id"], "question": q["stem"], "answerKey": raw["answerKey"],
            "choices": {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]}}


def _hf_hellaswag_row(raw: dict) -> dict:
    """The shared rows hold the joined `ctx` only; as `ctx_a` with an empty `ctx_b` lm-eval's own
    `process_docs` builds the same query as ours."""
    return {**raw, "ctx_a": raw["ctx"], "ctx_b": "", "label": str(raw["label"])}


def test_acc_and_loglikelihoods_equal_lm_eval(debug_smollm2, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from actors.eval.backend import LocalModelBackend
    from actors.eval.tasks import MultipleChoiceTask, arc_doc, hellaswag_doc

    arc = [_hf_arc_row(r) for r in read_jsonl(data_root / "arc" / "arc_easy_test_rows0-199.jsonl", LIMIT)]
    hs = [_hf_hellaswag_row(r) for r in read_jsonl(data_root / "hellaswag" / "val_rows0-199.jsonl", LIMIT)]
    files = {}
    for name, rows in (("arc", arc), ("hellaswag", hs)):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    (tasks_dir / "local_arc_easy.yaml").write_text(ARC_YAML % files["arc"])
    (tasks_dir / "local_hellaswag.yaml").write_text(HELLASWAG_YAML % files["hellaswag"])
    (tasks_dir / "hs_utils.py").write_text("from lm_eval.tasks.hellaswag.utils import process_docs  # noqa: F401\n")

    out = simple_evaluate(model="hf", model_args=f"pretrained={debug_smollm2},dtype=float32",
                          tasks=["local_arc_easy", "local_hellaswag"], batch_size=8, device="cpu",
                          task_manager=TaskManager(include_path=str(tasks_dir)), log_samples=True)

    backend = LocalModelBackend(debug_smollm2, device="cpu", batch_size=8, progress=False)
    for lm_name, path, to_doc in (("local_arc_easy", files["arc"], arc_doc),
                                  ("local_hellaswag", files["hellaswag"], hellaswag_doc)):
        task = MultipleChoiceTask(lm_name, path, None, to_doc)
        docs = task.docs()
        reqs = [task.requests(d) for d in docs]
        flat = backend.loglikelihood([r for rs in reqs for r in rs])
        ours_lls, i = [], 0
        for rs in reqs:
            ours_lls.append([ll for ll, _ in flat[i:i + len(rs)]])
            i += len(rs)
        per_doc = [task.process(d, [(ll, False) for ll in lls]) for d, lls in zip(docs, ours_lls)]

        samples = sorted(out["samples"][lm_name], key=lambda s: s["doc_id"])
        assert len(samples) == len(docs) == LIMIT
        for s, d, lls, m in zip(samples, docs, ours_lls, per_doc):
            theirs = [float(r[0]) for r in s["filtered_resps"]]
            assert s["arguments"][0][0] == d["query"]  # the same prompt text on both sides
            assert len(theirs) == len(lls)
            assert max(abs(a - b) for a, b in zip(theirs, lls)) <= 1e-4, (d["id"], theirs, lls)
            assert m["acc"] == s["acc"] and m["acc_norm"] == s["acc_norm"], (d["id"], m, s["acc"], s["acc_norm"])
        res = out["results"][lm_name]
        for metric in ("acc", "acc_norm"):
            ours = sum(m[metric] for m in per_doc) / len(per_doc)
            assert math.isclose(ours, res[f"{metric},none"], abs_tol=1e-6), (lm_name, metric, ours, res)
