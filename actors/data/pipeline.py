"""Curation pipelines: stages over Arrow batches of documents, run by a local executor or on Ray Data.

NeMo Curator's shape: a `Stage` declares its `resources`, may load what it needs once per worker in `setup`,
and maps `process_batch(table) -> table`. A stage drops a document by writing the name of the rule into the
`drop` column (`""` keeps it); the executor takes dropped rows out after every stage and writes them, with the
stage and rule, to `<out>/dropped/<stage>/part-<shard>.parquet`, so every document read is either in
`<out>/docs/part-<shard>.parquet` or in exactly one dropped file. The unit of work is an input shard (a group of
files); a shard is complete when its `docs/part-<shard>.parquet` exists (written to a temporary name, then
renamed), and a rerun skips complete shards: a killed run resumes where it stopped.

    LocalExecutor   one process, shard after shard (tests, small folders, the reference)
    RayExecutor     Ray Data: a stage with `setup` runs in an actor pool of `resources.workers` actors (its
                    model loaded once per actor), a stage without runs as tasks; blocks stream through the
                    stages with Ray Data's backpressure. The same shards give the same files as LocalExecutor.

Documents follow one schema (`SCHEMA`): id, text, title, url, source, lang, lang_score, extractor, meta (a JSON
object as text), plus `shard` and `drop`.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from actors.common.config import check

SCHEMA = pa.schema([
    ("id", pa.string()), ("text", pa.string()), ("title", pa.string()), ("url", pa.string()),
    ("source", pa.string()), ("lang", pa.string()), ("lang_score", pa.float32()), ("extractor", pa.string()),
    ("meta", pa.string()), ("shard", pa.int64()), ("drop", pa.string()),
])
DROPPED_COLUMNS = ["id", "source", "shard", "stage", "rule", "preview"]
TIMING = "_timing"   # a stage's documents in and seconds, per shard, beside its counters
PREVIEW_CHARS = 160


@dataclass
class Resources:
    cpus: float = 1.0          # per worker (task or actor)
    workers: int = 1           # actors in the pool of a stage with setup (tasks: Ray Data decides)
    memory_gb: float = 0.0     # per worker, 0: not declared

    def __post_init__(self):
        check(self.cpus > 0, "resources.cpus", f"must be > 0, got {self.cpus}")
        check(self.workers >= 1, "resources.workers", f"must be >= 1, got {self.workers}")
        check(self.memory_gb >= 0, "resources.memory_gb", f"must be >= 0, got {self.memory_gb}")


class Stage:
    """One step of a pipeline. Subclasses set `name`, may override `setup` (called once per worker before its
    first batch) and must override `process_batch`."""

    name: str = "stage"
    resources: Resources = Resources()

    def setup(self) -> None:
        """Load models or tables once per worker."""

    @classmethod
    def has_setup(cls) -> bool:
        return cls.setup is not Stage.setup

    def process_batch(self, batch: pa.Table) -> pa.Table:
        raise NotImplementedError

    def counters(self) -> dict[str, int]:
        """Per-worker counts a stage keeps beyond drops (e.g. PII replacements); summed over workers."""
        return {}


def empty_docs() -> pa.Table:
    return SCHEMA.empty_table()


def docs_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts with some of SCHEMA's fields) -> a table of SCHEMA, missing fields filled."""
    defaults = {"title": "", "url": "", "source": "", "lang": "", "lang_score": 0.0, "extractor": "",
                "meta": "{}", "shard": 0, "drop": ""}
    full = [{**defaults, **{k: v for k, v in r.items() if k in SCHEMA.names}} for r in rows]
    return pa.Table.from_pylist(full, schema=SCHEMA) if full else empty_docs()


def set_drop(batch: pa.Table, rules: list[str]) -> pa.Table:
    """Mark rows dropped by the rule named in `rules` (one per row, "" keeps), without un-dropping any."""
    new = pa.array(rules, type=pa.string())
    old = batch.column("drop")
    merged = pc.if_else(pc.equal(old, ""), new, old)
    return batch.set_column(batch.schema.get_field_index("drop"), "drop", merged)


def split_dropped(batch: pa.Table, stage: str) -> tuple[pa.Table, pa.Table]:
    """(kept rows, dropped rows in DROPPED_COLUMNS) of a stage's output."""
    drop = batch.column("drop")
    kept_mask = pc.equal(drop, "")
    kept = batch.filter(kept_mask)
    gone = batch.filter(pc.invert(kept_mask))
    dropped = pa.table({
        "id": gone.column("id"), "source": gone.column("source"), "shard": gone.column("shard"),
        "stage": pa.array([stage] * gone.num_rows, type=pa.string()), "rule": gone.column("drop"),
        "preview": pc.utf8_slice_codeunits(gone.column("text"), 0, PREVIEW_CHARS),
    })
    return kept, dropped


def write_atomic(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def shard_done(out: Path, shard: int) -> bool:
    return (out / "docs" / f"part-{shard:05d}.parquet").exists()


def _one_shard(batch: pa.Table) -> int | None:
    if batch.num_rows == 0:
        return None
    shards = pc.unique(batch.column("shard")).to_pylist()
    if len(shards) != 1:  # the executors keep one shard per block; a mixed batch would overwrite files
        raise RuntimeError(f"a batch holds shards {shards[:5]}: one shard per batch is required")
    return shards[0]


def apply_stage(stage: Stage, batch: pa.Table, out: Path, shard: int) -> pa.Table:
    """`stage` on one shard's batch: its dropped rows and its counters written for that shard, kept returned."""
    before = Counter(stage.counters())
    t0 = time.perf_counter()
    kept, dropped = split_dropped(stage.process_batch(batch), stage.name)
    seconds = time.perf_counter() - t0
    write_atomic(dropped, out / "dropped" / stage.name / f"part-{shard:05d}.parquet")
    delta = Counter(stage.counters())
    delta.subtract(before)
    path = out / "counters" / stage.name / f"part-{shard:05d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**dict(+delta), TIMING: {"docs": batch.num_rows, "seconds": seconds}},
                               sort_keys=True))
    return kept


def write_kept(out: Path, shard: int, kept: pa.Table) -> None:
    """Last write of a shard: its presence marks the shard complete."""
    write_atomic(kept, out / "docs" / f"part-{shard:05d}.parquet")


@dataclass
class RunReport:
    executor: str = ""
    shards: int = 0
    skipped: int = 0                                   # complete before this run (resumed)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"executor": self.executor, "shards": self.shards, "skipped": self.skipped,
                "seconds": round(self.seconds, 2)}


def start_run(executor: str, shards: list, out: Path) -> tuple[RunReport, list[int]]:
    """The report and the shards left to do (a complete shard is skipped: the run resumes)."""
    todo = [i for i in range(len(shards)) if not shard_done(out, i)]
    return RunReport(executor, len(shards), len(shards) - len(todo)), todo


class LocalExecutor:
    """Shards one after another in this process: each stage set up once, then every shard through all."""

    name = "local"

    def run(self, read_shard, shards: list, stages: list[Stage], out: str | Path) -> RunReport:
        """`read_shard(shard, index) -> docs table` (SCHEMA, `shard` = index)."""
        out = Path(out)
        rep, todo = start_run(self.name, shards, out)
        t0 = time.perf_counter()
        for st in stages:
            st.setup()
        for i in todo:
            batch = read_shard(shards[i], i)
            for st in stages:
                batch = apply_stage(st, batch, out, i)
            write_kept(out, i, batch)
        rep.seconds = time.perf_counter() - t0
        return rep


def summarize(out: str | Path) -> dict:
    """Counts from the written files: kept (after dedup when it ran), dropped per stage and rule, languages."""
    out = Path(out)
    final = out / "dedup" / "docs" if (out / "dedup" / "docs").is_dir() else out / "docs"
    kept_files = sorted(final.glob("part-*.parquet"))
    kept = pa.concat_tables([pq.read_table(f, columns=["lang"]) for f in kept_files]) if kept_files else None
    by_rule: Counter = Counter()
    by_stage: Counter = Counter()
    for f in sorted((out / "dropped").glob("*/part-*.parquet")):
        t = pq.read_table(f, columns=["stage", "rule"])
        for stage, rule in zip(t.column("stage").to_pylist(), t.column("rule").to_pylist()):
            by_rule[f"{stage}:{rule}"] += 1
            by_stage[stage] += 1
    langs = Counter(kept.column("lang").to_pylist()) if kept is not None else Counter()
    n_kept = kept.num_rows if kept is not None else 0
    counters: dict[str, Counter] = {}
    timing: dict[str, list[float]] = {}
    for f in sorted((out / "counters").glob("*/part-*.json")):
        d = json.loads(f.read_text())
        t = d.pop(TIMING, None)
        if t:
            acc = timing.setdefault(f.parent.name, [0, 0.0])
            acc[0] += t["docs"]
            acc[1] += t["seconds"]
        if d:
            counters.setdefault(f.parent.name, Counter()).update(d)
    throughput = {k: {"docs": n, "seconds": round(sec, 3), "docs_per_s": round(n / sec, 1) if sec else None}
                  for k, (n, sec) in timing.items()}
    return {"kept": n_kept, "dropped": sum(by_stage.values()), "dropped_by_stage": dict(by_stage),
            "dropped_by_rule": dict(sorted(by_rule.items())), "languages": dict(langs.most_common()),
            "counters": {k: dict(sorted(v.items())) for k, v in sorted(counters.items())},
            "throughput": throughput}

