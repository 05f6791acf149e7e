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


# ---- generation: answer-extraction filters and text metrics ----------------------------------------------
NUMBER = r"-?[$0-9.,]*[0-9]"  # a number as written in answers: "-1,234.5", "$18"


def apply_filter(steps: list[dict], text: str, fallback: str = "[invalid]") -> str:
    """Run one filter pipeline over a generated text (lm-eval filter semantics).

    regex: findall(pattern); a match picks `group_select` (default 0; -1 = last); a match of several groups
    keeps the first non-empty group; no match -> fallback. first_number / last_number: the first / last number.
    choice_letter: the first standalone letter among `letters` (default ABCD). take_first: a no-op (one sample).
    """
    import re

    for step in steps:
        fn = step["function"]
        if fn == "regex":
            found = re.findall(step["pattern"], text)
            if not found:
                text = step.get("fallback", fallback)
                continue
            m = found[int(step.get("group_select", 0))]
            if isinstance(m, tuple):
                m = next((g for g in m if g), "")
            text = m.strip() if m else step.get("fallback", fallback)
        elif fn in ("first_number", "last_number"):
            found = re.findall(NUMBER, text)
            text = (found[0] if fn == "first_number" else found[-1]) if found else step.get("fallback", fallback)
        elif fn == "choice_letter":
            letters = step.get("letters", "ABCD")
            m = re.search(rf"\b([{letters}])\b", text)
            text = m.group(1) if m else step.get("fallback", fallback)
        elif fn == "lowercase":
            text = text.lower()
        elif fn == "strip":
            text = text.strip()
        elif fn == "take_first":
            pass
        else:
            raise ValueError(f"unknown filter function {fn!r}")
    return text


def exact_match(pred: str, ref: str, ignore_case: bool = False, ignore_punctuation: bool = False,
                regexes_to_ignore: list[str] | None = None) -> float:
    """HF `evaluate`'s exact_match as lm-eval calls it: each regex removed from both strings, then optional
    lower-casing and punctuation removal, then string equality."""
    import re
    import string

    for pat in regexes_to_ignore or []:
        pred, ref = re.sub(pat, "", pred), re.sub(pat, "", ref)
    if ignore_case:
        pred, ref = pred.lower(), ref.lower()
    if ignore_punctuation:
        table = str.maketrans("", "", string.punctuation)
        pred, ref = pred.translate(table), ref.translate(table)
    return float(pred == ref)


def f1_score(pred: str, ref: str) -> float:
    """SQuAD token F1: lower case, punctuation and articles removed, whitespace tokens."""
    import collections
    import re
    import string

    def norm(s: str) -> list[str]:
        s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
        return re.sub(r"\b(a|an|the)\b", " ", s).split()

    p, r = norm(pred), norm(ref)
    common = sum((collections.Counter(p) & collections.Counter(r)).values())
    if not p or not r:
        return float(p == r)
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def weighted_perplexities(per_doc: list[dict]) -> dict[str, float]:
    """lm-eval's loglikelihood_rolling aggregates: exp(-sum ll / sum words), exp(-sum ll / sum bytes), and
    bits per byte = -sum ll / sum bytes / ln 2."""
    ll = sum(d["ll"] for d in per_doc)
    words = sum(d["words"] for d in per_doc)
    nbytes = sum(d["bytes"] for d in per_doc)
    return {"word_perplexity": math.exp(-ll / words) if words else math.nan,
            "byte_perplexity": math.exp(-ll / nbytes) if nbytes else math.nan,
            "bits_per_byte": -ll / nbytes / math.log(2) if nbytes else math.nan}
