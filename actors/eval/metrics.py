"""Per-document metric functions and their aggregation (mean and its standard error)."""
from __future__ import annotations

import math


def multiple_choice_metrics(lls: list[float], choices: list[str], gold: int) -> dict[str, float]:
    """acc and acc_norm exactly as lm-evaluation-harness's ConfigurableTask.process_results
    (lm_eval/api/task.py, output_type multiple_choice, EleutherAI commit 000488380f82):

        choices = self.doc_to_choice(doc)
        completion_len = np.array([float(len(i)) for i in choices])
        pred = np.argmax(lls); pred_norm = np.argmax(lls / completion_len)

    so the normaliser is the Python `len` (Unicode code points, not bytes, not tokens) of the choice text
    as doc_to_choice returns it, i.e. WITHOUT the target_delimiter " " that construct_requests prepends to
    the scored continuation. Ties go to the lowest index, as np.argmax does.
    """
    if not 0 <= gold < len(choices):
        raise ValueError(f"gold index {gold} outside the {len(choices)} choices")
    pred = max(range(len(lls)), key=lambda i: (lls[i], -i))
    norm = [ll / float(len(c)) for ll, c in zip(lls, choices)]
    pred_norm = max(range(len(norm)), key=lambda i: (norm[i], -i))
    return {"acc": float(pred == gold), "acc_norm": float(pred_norm == gold)}


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def mean_stderr(xs: list[float]) -> float:
    """Standard error of the mean with the sample standard deviation (ddof=1), as lm-eval's
    `mean_stderr` = sample_stddev / sqrt(n)."""
    n = len(xs)
    if n < 2:
        return math.nan
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) / math.sqrt(n)


def aggregate_mean(per_doc: list[dict[str, float]], keys: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in keys:
        xs = [d[k] for d in per_doc]
        out[k] = mean(xs)
        out[f"{k}_stderr"] = mean_stderr(xs)
    return out
