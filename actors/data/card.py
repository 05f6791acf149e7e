"""The data card of a curation run: `card.json` (every count), `card.md` (the same for people) and
`length_hist.png` (kept documents' lengths), written beside the run's outputs.

Counts reconcile: read = kept + dropped, where dropped is the sum over stages and rules (quarantine is the
`read` stage's rules).
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq


def _lengths(out: Path) -> list[int]:
    final = out / "dedup" / "docs" if (out / "dedup" / "docs").is_dir() else out / "docs"
    lens: list[int] = []
    for f in sorted(final.glob("part-*.parquet")):
        lens.extend(len(t) for t in pq.read_table(f, columns=["text"]).column("text").to_pylist())
    return lens


def _histogram(lengths: list[int], png: Path) -> Path | None:
    if not lengths:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.logspace(0, np.log10(max(lengths) + 1), 40)
    ax.hist(lengths, bins=bins, color="#4c72b0")
    ax.set_xscale("log")
    ax.set_xlabel("characters per kept document")
    ax.set_ylabel("documents")
    ax.set_title(f"{len(lengths)} documents, median {int(np.median(lengths))} chars")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def write_card(out: str | Path, result: dict, title: str = "curation run") -> dict:
    """`result` is run_curation's return value."""
    out = Path(out)
    lengths = _lengths(out)
    png = _histogram(lengths, out / "length_hist.png")
    card = {k: result.get(k) for k in ("read", "kept", "dropped", "dropped_by_stage", "dropped_by_rule",
                                       "languages", "counters", "throughput", "dedup", "contamination", "run")}
    card["reconciles"] = result["read"] == result["kept"] + result["dropped"]
    card["length"] = {"documents": len(lengths), "chars": sum(lengths),
                      "median": sorted(lengths)[len(lengths) // 2] if lengths else 0,
                      "max": max(lengths) if lengths else 0, "histogram": png.name if png else None}
    (out / "card.json").write_text(json.dumps(card, indent=1, ensure_ascii=False))
    md = [f"# Data card: {title}", "",
          f"read {card['read']} = kept {card['kept']} + dropped {card['dropped']}"
          f" ({'reconciles' if card['reconciles'] else 'DOES NOT reconcile'})", "",
          "## Dropped by stage and rule", "", "| stage:rule | documents |", "|---|---:|"]
    md += [f"| {k} | {v} |" for k, v in (card["dropped_by_rule"] or {}).items()]
    md += ["", "## Languages (kept)", "", "| lang | documents |", "|---|---:|"]
    md += [f"| {k or '(none)'} | {v} |" for k, v in (card["languages"] or {}).items()]
    if card.get("dedup"):
        d = card["dedup"]
        md += ["", "## Deduplication", "",
               f"exact duplicates {d['exact_duplicates']}, near duplicates {d['near_duplicates']}, "
               f"dedup rate {d['dedup_rate']:.2%}, clusters {d['clusters']}, largest {d['largest_clusters'][:10]}"]
    if card.get("counters"):
        md += ["", "## Replacements and other counts", ""]
        md += [f"- {stage}: {json.dumps(c, ensure_ascii=False)}" for stage, c in card["counters"].items()]
    if card.get("contamination"):
        md += ["", "## Contamination with eval tasks", "", "| task | documents |", "|---|---:|"]
        md += [f"| {k} | {v} |" for k, v in card["contamination"].items()]
    if card.get("throughput"):
        md += ["", "## Throughput per stage", "", "| stage | documents | seconds | docs/s |", "|---|---:|---:|---:|"]
        md += [f"| {k} | {v['docs']} | {v['seconds']} | {v['docs_per_s']} |" for k, v in card["throughput"].items()]
    md += ["", "## Lengths", "", f"median {card['length']['median']} characters, max {card['length']['max']}"]
    if png:
        md += ["", f"![lengths]({png.name})"]
    (out / "card.md").write_text("\n".join(md) + "\n")
    return card


def write_pack_card(out: str | Path, metrics: dict, outputs: dict, title: str = "pretraining data") -> dict:
    """The data card of a pack run (`run_data_stage`): `card.json` + `card.md` beside `stats.json`. Sources with
    what each kept, dropped and quarantined (read = kept + dropped + quarantined per source and in all), the rules
    that dropped, the quarantine's reasons, the tokenizer and the packed splits, and the fine-tuning sets made."""
    out = Path(out)
    dropped, quarantined = metrics.get("dropped") or {}, metrics.get("quarantined") or {}
    n_drop, n_quar = sum(dropped.values()), sum(quarantined.values())
    card = {"read": metrics.get("read"), "kept": metrics.get("kept"), "dropped": n_drop, "quarantined": n_quar,
            "dropped_by_rule": dropped, "quarantined_by_reason": quarantined,
            "reconciles": metrics.get("read") == (metrics.get("kept") or 0) + n_drop + n_quar,
            "by_source": metrics.get("by_source") or {},
            "tokens": {k: metrics.get(k) for k in ("train_tokens", "val_tokens", "train_sequences", "val_sequences",
                                                  "tokens_dropped_tail", "vocab_size", "seq_len",
                                                  "unigram_entropy_nats")},
            "sft": metrics.get("sft") or {}, "synthetic": metrics.get("synthetic") or {},
            "files": {k: v for k, v in outputs.items() if k != "card"}}
    (out / "card.json").write_text(json.dumps(card, indent=1, ensure_ascii=False))
    t = card["tokens"]
    md = [f"# Data card: {title}", "",
          f"read {card['read']} = kept {card['kept']} + dropped {n_drop} + quarantined {n_quar}"
          f" ({'reconciles' if card['reconciles'] else 'DOES NOT reconcile'})", "",
          "## Sources", "", "| source | read | kept | dropped | quarantined | kept chars |", "|---|---:|---:|---:|---:|---:|"]
    md += [f"| {name} | {s.get('read')} | {s.get('kept')} | {s.get('dropped')} | {s.get('quarantined')} | "
           f"{s.get('kept_chars')} |" for name, s in card["by_source"].items()]
    md += ["", "## Dropped by rule", "", "| rule | documents |", "|---|---:|"]
    md += [f"| {k} | {v} |" for k, v in dropped.items()] or ["| (none) | 0 |"]
    md += ["", "## Quarantined (unreadable records, with their reasons in quarantine.jsonl)", "",
           "| reason | records |", "|---|---:|"]
    md += [f"| {k} | {v} |" for k, v in quarantined.items()] or ["| (none) | 0 |"]
    md += ["", "## Tokens", "",
           f"tokenizer: BPE, vocabulary {t['vocab_size']}; rows of {t['seq_len']} tokens; train {t['train_tokens']} "
           f"tokens in {t['train_sequences']} rows, val {t['val_tokens']} in {t['val_sequences']} "
           f"({t['tokens_dropped_tail']} tail tokens dropped); unigram entropy {t['unigram_entropy_nats']} nats/token"]
    if card["synthetic"] or card["sft"]:
        md += ["", "## Fine-tuning sets", "", f"synthetic tool task: {card['synthetic']}", ""]
        md += [f"- {name}: {json.dumps(c, ensure_ascii=False)}" for name, c in card["sft"].items()]
    (out / "card.md").write_text("\n".join(md) + "\n")
    return card
