"""The curation pipeline of a folder of web documents (HTML, PDF, Markdown, text, JSONL): declared in YAML,
run by either executor (actors.data.pipeline).

    read (extract + quarantine) -> normalize -> filters -> language ID -> quality rules -> PII
    -> decontamination against eval rows                                                   per shard
    -> exact + MinHash near-dedup (actors.data.dedup)                                         all shards
(the default `stages`; `quality` is the web-text rule set and is added where the input is web text). The
result is `<out>/dedup/docs/` (or `<out>/docs/` with dedup switched off).

Each entry of `stages` names a stage of STAGES with its parameters, e.g.

    curate:
      inputs: [{name: web, path: "crawl/**/*", format: auto}]
      files_per_shard: 16
      stages:
        - {stage: normalize}
        - {stage: language, params: {keep: [en, zh], min_score: 0.65}}
        - {stage: pii}
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pyarrow as pa

from actors.common.config import ConfigError, check
from actors.data import extract
from actors.data import transforms as T
from actors.data.config import CurateConfig, SourceConfig, StageSpec
from actors.data.decontam import DecontamStage
from actors.data.pipeline import Resources, Stage, docs_table, set_drop

QUARANTINE = "quarantine"


# ------------------------------------------------------------------------------------------------ reading

def read_shard(tasks: list[dict], index: int) -> pa.Table:
    """The documents of one shard's files; a quarantined record is a row dropped by the `read` stage with
    the rule `quarantine:<kind>` and its reason in `meta`."""
    rows = []
    for task in tasks:
        for r in extract.read_task(task):
            meta = json.loads(r.get("meta") or "{}")
            row = {"id": r["doc_id"], "text": r["text"], "title": r.get("title", ""), "url": r.get("url", ""),
                   "source": r["source_name"], "extractor": r.get("extractor", ""), "shard": index, "drop": ""}
            if r["status"] == "quarantined":
                meta.update(reason=r["reason"], raw_preview=r["raw_preview"], path=r["source"])
                row["drop"] = f"{QUARANTINE}:{r['reason_kind']}"
            row["meta"] = json.dumps(meta, ensure_ascii=False, sort_keys=True)
            rows.append(row)
    return docs_table(rows)


def plan_shards(sources: list[SourceConfig], data_root: str | Path, files_per_shard: int,
                timeout_s: float, shard_mb: float = float("inf")) -> list[list[dict]]:
    """File tasks in a fixed order, cut into shards of at most `files_per_shard` files and, past the first
    file, `shard_mb` MB of input; a source's files may share a shard with the next source's."""
    shards: list[list[dict]] = []
    size = 0.0
    for s in sources:
        for t in extract.expand_source(s, data_root):
            mb = os.path.getsize(t["path"]) / 2**20
            if not shards or len(shards[-1]) >= files_per_shard or (shards[-1] and size + mb > shard_mb):
                shards.append([])
                size = 0.0
            shards[-1].append({**t, "timeout_s": timeout_s})
            size += mb
    return shards


class ReadStage(Stage):
    """The reader's quarantine, as a stage: rows read_shard marked go to dropped/read/ with their reason."""

    name = "read"

    def process_batch(self, batch: pa.Table) -> pa.Table:
        return batch


# ------------------------------------------------------------------------------------------------ stages

class NormalizeStage(Stage):
    """NFC, control characters, whitespace (actors.data.transforms.normalize); drops documents left empty."""

    name = "normalize"

    def process_batch(self, batch: pa.Table) -> pa.Table:
        texts = [T.normalize(t) for t in batch.column("text").to_pylist()]
        batch = batch.set_column(batch.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))
        return set_drop(batch, ["empty" if not t else "" for t in texts])


class FiltersStage(Stage):
    """The data stage's rule filters (data.filters: min/max chars, letter fraction, symbol ratio, repeated
    lines), each drop named by its rule."""

    name = "filters"

    def __init__(self, **params):
        from actors.common.config import from_dict
        from actors.data.config import FilterConfig

        self.cfg = from_dict(FilterConfig, params, prefix="curate.stages[filters].params")

    def process_batch(self, batch: pa.Table) -> pa.Table:
        return set_drop(batch, [T.first_failing_rule(t, self.cfg) or "" for t in batch.column("text").to_pylist()])


class QualityStage(Stage):
    """Gopher quality + repetition, C4 and FineWeb rules for space-delimited languages, Chinese rules for CJK
    (actors.data.quality), routed by `lang`; C4 also removes lines. Params per rule set: a dict of thresholds,
    or false to switch the set off, e.g. {c4: false, gopher_quality: {min_doc_words: 30}}."""

    name = "quality"

    def __init__(self, **params):
        from actors.common.config import from_dict
        from actors.data import quality as Q

        where = "curate.stages[quality].params"
        sets = {"gopher_quality": Q.GopherQuality, "gopher_repetition": Q.GopherRepetition, "c4": Q.C4Rules,
                "fineweb": Q.FineWebRules, "chinese": Q.ChineseRules}
        unknown = sorted(set(params) - set(sets) - {"max_chars"})
        check(not unknown, where, f"unknown {unknown}: use {sorted(sets)} or max_chars")
        kw = {}
        for name, cls in sets.items():
            v = params.get(name, {})
            kw[name] = None if v is False or v is None else from_dict(cls, v or {}, prefix=f"{where}.{name}")
        self.cfg = Q.QualityConfig(**kw, max_chars=int(params.get("max_chars", 1_000_000)))

    def process_batch(self, batch: pa.Table) -> pa.Table:
        from actors.data.quality import apply_rules

        rules, texts = [], []
        for text, lang in zip(batch.column("text").to_pylist(), batch.column("lang").to_pylist()):
            rule, new = apply_rules(text, lang, self.cfg)
            rules.append(rule or "")
            texts.append(new)
        batch = batch.set_column(batch.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))
        return set_drop(batch, rules)


class LanguageStage(Stage):
    """fastText LID (actors.data.lid): fills `lang` / `lang_score`; with `keep`, drops other languages
    (`lang_not_kept`) and, with `min_score`, unsure ones (`lang_score_low`), as datatrove's LanguageFilter."""

    name = "language"
    resources = Resources(cpus=1, workers=1)

    def __init__(self, keep: list[str] | None = None, min_score: float = 0.0):
        self.keep, self.min_score = list(keep or []), float(min_score)
        check(0.0 <= self.min_score <= 1.0, "stages[language].params.min_score",
              f"is a probability in [0, 1], got {min_score}")

    def setup(self) -> None:
        from actors.data import lid

        lid._model()  # loaded once per worker, before the first batch

    def process_batch(self, batch: pa.Table) -> pa.Table:
        from actors.data.lid import detect

        found = [detect(t) for t in batch.column("text").to_pylist()]
        batch = batch.set_column(batch.schema.get_field_index("lang"), "lang",
                                 pa.array([f[0] for f in found], pa.string()))
        batch = batch.set_column(batch.schema.get_field_index("lang_score"), "lang_score",
                                 pa.array([f[1] for f in found], pa.float32()))
        rules = []
        for lang, score in found:
            if self.keep and lang not in self.keep:
                rules.append("lang_not_kept")
            elif score < self.min_score:
                rules.append("lang_score_low")
            else:
                rules.append("")
        return set_drop(batch, rules)


class PIIStage(Stage):
    """Emails, IP addresses, phone numbers, Chinese resident IDs, card numbers -> typed placeholders
    (actors.data.pii), counted per kind."""

    name = "pii"

    def __init__(self, regions: list[str] | None = None):
        self.regions = tuple(regions or ["US", "CN", "GB"])
        self._counts: Counter = Counter()

    def process_batch(self, batch: pa.Table) -> pa.Table:
        from actors.data.pii import redact

        texts = []
        for t in batch.column("text").to_pylist():
            new, c = redact(t, self.regions)
            texts.append(new)
            self._counts.update(c)
        return batch.set_column(batch.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))

    def counters(self) -> dict[str, int]:
        return dict(self._counts)


STAGES: dict[str, type[Stage]] = {c.name: c for c in (NormalizeStage, FiltersStage, LanguageStage, QualityStage,
                                                       PIIStage, DecontamStage)}


def build_stage(spec: StageSpec) -> Stage:
    check(spec.stage in STAGES, "curate.stages[].stage", f"{spec.stage!r}: use one of {sorted(STAGES)}")
    try:
        st = STAGES[spec.stage](**spec.params)
    except TypeError as e:
        raise ConfigError(f"curate.stages[{spec.stage}].params: {e}; see {STAGES[spec.stage].__name__} in "
                          "actors/data/curate.py") from None
    if spec.resources is not None:
        st.resources = spec.resources
    return st


def build_stages(cfg: CurateConfig) -> list[Stage]:
    return [ReadStage()] + [build_stage(s) for s in cfg.stages]


def run_curation(cfg: CurateConfig, out: str | Path, data_root: str | Path, executor=None) -> dict:
    """Run the pipeline over cfg.inputs into `out` (resuming complete shards); returns the counts."""
    from actors.data.pipeline import LocalExecutor, summarize

    shards = plan_shards(cfg.inputs, data_root, cfg.files_per_shard, cfg.extract_timeout_s, cfg.shard_mb)
    if executor is None:
        if cfg.executor == "local":
            executor = LocalExecutor()
        else:
            from actors.data.ray_executor import RayExecutor

            executor = RayExecutor()
    report = executor.run(read_shard, shards, build_stages(cfg), out)
    dedup = None
    if cfg.dedup.exact or cfg.dedup.near:  # global: redone over every shard on each run
        if executor.name == "ray":
            from actors.data.ray_executor import dedup_ray

            dedup = dedup_ray(out, cfg.dedup)
        else:
            from actors.data.dedup import dedup_local

            dedup = dedup_local(out, cfg.dedup)
    counts = summarize(out)
    read = counts["kept"] + counts["dropped"]
    result = {"read": read, **counts, "dedup": dedup, "contamination": counts["counters"].get("decontam", {}),
              "run": report.to_dict()}
    from actors.data.card import write_card

    write_card(out, result)
    return result
