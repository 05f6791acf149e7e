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
