"""The fine-tune stage's datasets (Ray-free): registry names -> files -> records, mixed, split, checked.

`prepare(specs, registry, data_root, ...)` reads every dataset through `actors.common.formats` (one place per
format), quarantines bad rows with their row numbers and reasons, mixes the datasets by their ratios (seeded),
holds out `val_size` and writes train/val JSONL for the workers. `check_dataset` is the same reading plus the
tokenizer: it reports each problem row (missing field, empty turn, unknown role, over-long sample) without
training.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from actors.common.formats import FORMATS, convert_sft_file, kind_of

DEFAULT_REGISTRY = Path(__file__).resolve().parents[2] / "configs" / "datasets.yaml"


@dataclass
class DatasetEntry:
    name: str
    path: Path
    format: str = "auto"
    columns: dict | None = None
    max_rows: int = 0
    ratio: float = 0.0


def load_registry(path: str | Path | None = None) -> dict[str, dict]:
    p = Path(path) if path else DEFAULT_REGISTRY
    if not p.exists():
        return {}
    reg = yaml.safe_load(p.read_text()) or {}
    if not isinstance(reg, dict):
        raise ValueError(f"{p}: the dataset registry must map names to {{path, format, columns}}")
    for name, e in reg.items():
        if not isinstance(e, dict) or not isinstance(e.get("path"), str):
            raise ValueError(f"{p}: dataset {name!r} needs a `path` (a file under the data root)")
        if e.get("format", "auto") not in FORMATS:
            raise ValueError(f"{p}: dataset {name!r} format {e['format']!r}: use one of {list(FORMATS)}")
    return reg


def resolve(spec, registry: dict[str, dict], data_root: str | Path) -> DatasetEntry:
    """A `finetune.datasets` item (DatasetConfig) -> the file to read and how."""
    e = dict(registry.get(spec.name, {})) if spec.name else {}
    if spec.name and not e and not spec.path:
        raise ValueError(f"finetune.datasets: {spec.name!r} is not in the dataset registry ({sorted(registry)}); "
                         "add it to configs/datasets.yaml or give its `path`")
    path = Path(spec.path or e["path"])
    if not path.is_absolute():
        path = Path(data_root) / path
    if not path.is_file():
        raise FileNotFoundError(f"finetune.datasets[{spec.name or spec.path}]: {path} does not exist")
    fmt = spec.format if spec.format != "auto" else e.get("format", "auto")
    return DatasetEntry(spec.name or path.stem, path, fmt, spec.columns or e.get("columns"), spec.max_rows,
                        spec.ratio)


def read_entry(e: DatasetEntry) -> tuple[list[dict], list[dict], dict]:
    return convert_sft_file(e.path, e.name, e.format, e.max_rows, e.columns)


def mix(parts: list[tuple[DatasetEntry, list[dict]]], seed: int, total: int = 0) -> list[dict]:
    """The datasets' records as one shuffled list. Without ratios every record once; with ratios dataset i
    contributes round(ratio_i / sum(ratios) * total) records (total: `total` or all records), drawn without
    repetition while it has enough and repeated (a whole extra pass first) when it has fewer."""
    rng = random.Random(seed)
    if not any(e.ratio for e, _ in parts):
        out = [r for _, recs in parts for r in recs]
    else:
        total = total or sum(len(recs) for _, recs in parts)
        wsum = sum(e.ratio for e, _ in parts)
        out = []
        for e, recs in parts:
            want = round(e.ratio / wsum * total)
            if not recs:
                continue
            idx = list(range(len(recs))) * (want // len(recs))
            idx += rng.sample(range(len(recs)), want % len(recs))
            out += [recs[i] for i in idx]
    rng.shuffle(out)
    return out


def split(records: list[dict], val_size: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out `val_size` (a fraction < 1, or a row count >= 1) of the records, seeded."""
    if not val_size:
        return records, []
    n_val = int(val_size) if val_size >= 1 else max(1, round(len(records) * val_size))
    order = list(range(len(records)))
    random.Random(seed + 1).shuffle(order)
    val = set(order[:n_val])
    return [r for i, r in enumerate(records) if i not in val], [records[i] for i in sorted(val)]


def prepare(entries: list[DatasetEntry], out_dir: str | Path, seed: int, val_size: float = 0.0,
            mix_rows: int = 0, kinds: tuple[str, ...] = ("sft",)) -> dict:
    """Read, quarantine, mix and split the datasets into `out_dir/{train,val,quarantine}.jsonl`; returns the
    paths and counts per dataset. Rows of another kind than the objective takes (an SFT row for DPO) are
    quarantined too, with that reason."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts, counts, quarantine = [], {}, []
    for e in entries:
        recs, bad, c = read_entry(e)
        keep = []
        for r in recs:
            k = kind_of(r)
            if k in kinds:
                keep.append(r)
            else:
                bad.append({"stage": "finetune", "source": str(e.path), "doc_id": r["id"],
                            "row": int(r["id"].rsplit("-", 1)[1]), "reason_kind": "wrong_kind",
                            "reason": f"wrong_kind: a {k} row; this objective trains on {' / '.join(kinds)} rows",
                            "raw_preview": json.dumps(r, ensure_ascii=False)[:160]})
        c = {"read": c["read"], "kept": len(keep), "quarantined": c["quarantined"] + len(recs) - len(keep)}
        parts.append((e, keep))
        counts[e.name] = c
        quarantine += bad
    records = mix(parts, seed, mix_rows)
    train, val = split(records, val_size, seed)
    paths = {"train": out / "train.jsonl", "val": out / "val.jsonl", "quarantine": out / "quarantine.jsonl"}
    for key, rows in (("train", train), ("val", val), ("quarantine", quarantine)):
        with open(paths[key], "w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return {"paths": {k: str(v) for k, v in paths.items()}, "counts": counts,
            "train_rows": len(train), "val_rows": len(val), "quarantined": len(quarantine)}


def check_dataset(e: DatasetEntry, tok=None, max_len: int = 0, template: str = "") -> dict:
    """Every problem row of one dataset: format problems (from reading) and, with a tokenizer, samples the
    chat template cannot render or that are longer than `max_len` tokens. Nothing is trained."""
    from actors.model.chat import ChatTemplateError, use_template

    recs, bad, counts = read_entry(e)
    problems = [{"row": b["row"], "reason": b["reason"]} for b in bad]
    kinds: dict[str, int] = {}
    lengths = []
    if tok is not None:
        use_template(tok, template)
        from actors.train.sft import tokenize_record

        for r in recs:
            row = int(r["id"].rsplit("-", 1)[1])
            kinds[kind_of(r)] = kinds.get(kind_of(r), 0) + 1
            try:
                ex = tokenize_record(tok, r, 1 << 30)
            except (ChatTemplateError, ValueError) as err:
                problems.append({"row": row, "reason": f"template: {err}"})
                continue
            n = ex["length"] if ex else 0
            lengths.append(n)
            if ex is None:
                problems.append({"row": row, "reason": "no_trained_tokens: nothing to learn after masking"})
            elif max_len and n > max_len:
                problems.append({"row": row, "reason": f"too_long: {n} tokens > max_len={max_len} (training "
                                                       "truncates it)"})
    problems.sort(key=lambda p: (p["row"] is None, p["row"] or 0))
    lengths.sort()
    return {"dataset": e.name, "path": str(e.path), "format": e.format, **counts, "kinds": kinds,
            "tokens_p50": lengths[len(lengths) // 2] if lengths else None,
            "tokens_max": lengths[-1] if lengths else None, "problems": problems}
