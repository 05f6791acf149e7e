"""Decontamination: training documents that share a 13-gram of words (13 characters for CJK text) with any
eval task's rows are dropped (or flagged), and each hit is reported per task (GPT-3's and the Llama reports'
n-gram overlap test).

The eval rows reach the data stage as plain strings per task, built by the job driver (`jobs/data.py`) from the
eval stage's task registry, so this package never imports actors.eval. Texts are lowercased, punctuation becomes
space; a word is a whitespace token, and a run of CJK characters counts one character per word.
"""
from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa

from actors.common.config import check
from actors.data.pipeline import Resources, Stage, set_drop

_PUNCT = re.compile(r"[^\w\s]|_")
_CJK = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])")
N_WORDS = 13


def tokens(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower()
    text = _CJK.sub(r" \1 ", _PUNCT.sub(" ", text))  # every CJK character its own token
    return text.split()


def ngrams(text: str, n: int = N_WORDS) -> set[int]:
    toks = tokens(text)
    return {hash(" ".join(toks[i:i + n])) for i in range(len(toks) - n + 1)}


def build_index(rows: dict[str, list[str]], n: int = N_WORDS) -> dict[int, list[str]]:
    """n-gram hash -> tasks whose rows contain it."""
    index: dict[int, set[str]] = defaultdict(set)
    for task, texts in rows.items():
        for t in texts:
            for g in ngrams(t, n):
                index[g].add(task)
    return {g: sorted(ts) for g, ts in index.items()}


def write_rows(rows: dict[str, list[str]], path: str | Path) -> Path:
    """The eval rows as JSON ({task: [text]}), the file the data stage reads (hashes are per process)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, ensure_ascii=False))
    return path


class DecontamStage(Stage):
    """params: rows (a JSON file {task: [text]} written by the driver), mode drop | flag, n (13)."""

    name = "decontam"
    resources = Resources(cpus=1, workers=1)

    def __init__(self, rows: str = "", mode: str = "drop", n: int = N_WORDS):
        check(bool(rows), "curate.stages[decontam].params.rows",
              "needs the eval rows file; the job driver writes it (data.decontam_tasks)")
        check(mode in ("drop", "flag"), "curate.stages[decontam].params.mode", f"{mode!r}: use drop or flag")
        check(n >= 1, "curate.stages[decontam].params.n", f"must be >= 1 (13 is usual), got {n}")
        self.rows_path, self.mode, self.n = rows, mode, n
        self.index: dict[int, list[str]] | None = None
        self._hits: Counter = Counter()

    def setup(self) -> None:
        self.index = build_index(json.loads(Path(self.rows_path).read_text()), self.n)

    def process_batch(self, batch: pa.Table) -> pa.Table:
        if self.index is None:
            self.setup()
        rules, metas = [], []
        for text, meta in zip(batch.column("text").to_pylist(), batch.column("meta").to_pylist()):
            tasks = sorted({t for g in ngrams(text, self.n) for t in self.index.get(g, ())})
            self._hits.update(tasks)
            if tasks:
                m = json.loads(meta or "{}")
                m["contaminated_with"] = tasks
                meta = json.dumps(m, ensure_ascii=False, sort_keys=True)
            metas.append(meta)
            rules.append("contaminated" if tasks and self.mode == "drop" else "")
        batch = batch.set_column(batch.schema.get_field_index("meta"), "meta", pa.array(metas, pa.string()))
        return set_drop(batch, rules)

    def counters(self) -> dict[str, int]:
        return dict(self._hits)
