"""Article-body extraction: ours (actors.data.html) against trafilatura with its default settings, in one run.

    python -m bench.data_extraction [--dir DIR]

DIR has the scrapinghub article-extraction-benchmark layout: `ground-truth.json` ({key: {"articleBody", "url"}})
and `html/<key>.html.gz` (default: the shared half in <data root>/article_extraction). The score is the
benchmark's: per page, 4-gram shingles of `\\w+` tokens; true/false positives and negatives counted over the
shingle multisets and normalised by their sum so every page weighs the same; precision averaged over the pages
that predicted something, recall over the pages that have a body; F1 from the two means.
Last line: JSON {"ours_f1", "trafilatura_f1", "ours_precision", "ours_recall", "trafilatura_precision",
"trafilatura_recall", "n", "ours_s", "trafilatura_s", "delta"}.
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

_TOKEN = re.compile(r"\w+")


def shingles(text: str, n: int = 4) -> Counter:
    toks = _TOKEN.findall(text or "")
    return Counter(tuple(toks[i:i + n]) for i in range(max(1, len(toks) - n + 1)) if toks[i:i + n])


def page_counts(true: str, pred: str) -> tuple[float, float, float]:
    """(tp, fp, fn) over shingle multisets, normalised to sum to 1."""
    t, p = shingles(true), shingles(pred)
    tp = sum((t & p).values())
    fp = sum((p - t).values())
    fn = sum((t - p).values())
    s = tp + fp + fn
    return (tp / s, fp / s, fn / s) if s else (0.0, 0.0, 0.0)


def _precision(tp, fp, fn) -> float:
    return 1.0 if fp == fn == 0 else 0.0 if tp == fp == 0 else tp / (tp + fp)


def _recall(tp, fp, fn) -> float:
    return 1.0 if fp == fn == 0 else 0.0 if tp == fn == 0 else tp / (tp + fn)


def score(counts: list[tuple[float, float, float]]) -> dict:
    p = statistics.mean([_precision(*c) for c in counts if c[0] + c[1] > 0] or [0.0])
    r = statistics.mean([_recall(*c) for c in counts if c[0] + c[2] > 0] or [0.0])
    return {"f1": 2 * p * r / (p + r) if p + r else 0.0, "precision": p, "recall": r}


def load(d: Path) -> tuple[dict, dict]:
    gt_path = d / "ground-truth.json"
    if not gt_path.is_file():
        raise SystemExit(f"--dir {d}: no ground-truth.json; give a folder laid out as the article-extraction "
                         "benchmark (ground-truth.json + html/<key>.html.gz)")
    gt = json.loads(gt_path.read_text(encoding="utf-8"))
    pages = {}
    for k in gt:
        p = d / "html" / f"{k}.html.gz"
        if not p.is_file():
            raise SystemExit(f"--dir {d}: html/{k}.html.gz is missing (named in ground-truth.json)")
        pages[k] = gzip.decompress(p.read_bytes())
    return gt, pages


def main(argv: list[str] | None = None) -> dict:
    import trafilatura

    import cluster
    from actors.data.html import extract_html

    ap = argparse.ArgumentParser(prog="python -m bench.data_extraction", description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=None, help="benchmark folder (default: shared article_extraction)")
    args = ap.parse_args(argv)
    d = args.dir or Path(cluster.data_root()) / "article_extraction"
    gt, pages = load(d)
    runs = {"ours": lambda html, url: extract_html(html, url=url).text,
            "trafilatura": lambda html, url: trafilatura.extract(html, url=url) or ""}
    out: dict = {"n": len(gt), "dir": str(d)}
    for name, fn in runs.items():
        t0 = time.perf_counter()
        counts = [page_counts(gt[k].get("articleBody", ""), fn(pages[k], gt[k].get("url"))) for k in gt]
        out[f"{name}_s"] = round(time.perf_counter() - t0, 2)
        for m, v in score(counts).items():
            out[f"{name}_{m}"] = round(v, 4)
        print(f"{name:12s} F1 {out[f'{name}_f1']:.4f}  precision {out[f'{name}_precision']:.4f}  "
              f"recall {out[f'{name}_recall']:.4f}  ({out[f'{name}_s']} s)", file=sys.stderr)
    out["delta"] = round(out["ours_f1"] - out["trafilatura_f1"], 4)
    out["trafilatura_version"] = trafilatura.__version__
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
