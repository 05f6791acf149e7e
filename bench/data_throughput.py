"""Curation throughput and quality on a corpus built from the shared data.

    python -m bench.data_throughput [--out DIR] [--executor ray|local]

The corpus (>= 5,000 documents, written under DIR/corpus): C4 and Wikipedia demo documents, classical Chinese,
tinyshakespeare cut into scenes of 20 speeches, the HTML pages (readability's and the article-extraction set),
the Alpaca SFT texts (EN and ZH), plus seeded near-duplicates of 200 English documents:
- positives: a few words replaced and a sentence added, kept only when their word 5-gram Jaccard with the source
  is >= 0.8;
- hard negatives: the source's first third (shared boilerplate) followed by the rest of its words shuffled (the
  same topic and vocabulary), kept only when the Jaccard is <= 0.5.

Our pipeline runs end to end on it (Ray start-up included): extraction -> language filter -> Gopher + C4 ->
MinHash dedup, 2 workers. Then:
- dedup_precision / dedup_recall over pairs, on the seeded documents (sources, positives, negatives) run through
  our MinHash clustering alone (the same code the pipeline's dedup uses), so quality rules do not decide which
  pairs are left to find;
- lid_accuracy on >= 200-character snippets labelled by their source's known language (en, zh, ja).

The comparison against datatrove's LocalPipelineExecutor with its own blocks (datatrove[processing] in a venv the
bench creates) is not in this version: its fields are null with the reason.
Last line: JSON {"ours_docs_s", "datatrove_docs_s", "ratio", "kept_jaccard", "dedup_precision", "dedup_recall",
"lid_accuracy", "docs", "dtype", "cpu_capability", ...}.
"""
from __future__ import annotations

import argparse
import gzip
import re
import itertools
import json
import random
import sys
import time
from pathlib import Path


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def _shingles(text: str, n: int = 5) -> set[str]:
    from actors.data.minhash import normalize

    t = normalize(text).split()
    return {" ".join(t[i:i + n]) for i in range(len(t) - n + 1)}


def jaccard(a: str, b: str) -> float:
    x, y = _shingles(a), _shingles(b)
    return len(x & y) / len(x | y) if x | y else 0.0


def build_corpus(root: Path, out: Path, seed: int = 0) -> dict:
    """Write the corpus; returns {"files", "docs", "seeded": [(source_id, positive_id)], "negatives": [...],
    "seeded_texts": {id: text}}."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    docs: list[tuple[str, str]] = []  # (id, text) of the JSONL part
    c4 = [json.loads(x)["text"] for x in (root / "pretrain_demo_llamafactory" / "c4_demo.jsonl").open()]
    wiki = [x for x in (root / "pretrain_demo_llamafactory" / "wiki_demo.txt").read_text().split("\n") if x.strip()]
    docs += [(f"c4-{i}", t) for i, t in enumerate(c4)] + [(f"wiki-{i}", t) for i, t in enumerate(wiki)]
    with gzip.open(root / "zh_classical" / "zh_classical.jsonl.gz", "rt") as f:
        docs += [(f"zh-{i}", json.loads(x)["text"]) for i, x in enumerate(f)]
    speeches = [p for p in (root / "tinyshakespeare" / "input.txt").read_text().split("\n\n") if p.strip()]
    docs += [(f"scene-{i // 20}", "\n\n".join(speeches[i:i + 20])) for i in range(0, len(speeches), 20)]
    for name in ("alpaca_en_demo.json", "alpaca_zh_demo.json"):
        for i, r in enumerate(json.loads((root / "sft_alpaca_demo" / name).read_text())):
            docs.append((f"{name[:9]}-{i}", "\n".join(x for x in (r.get("instruction"), r.get("input"),
                                                                  r.get("output")) if x)))
    # seeded near-duplicates of English documents long enough to edit
    english = [(i, t) for i, t in docs if (i.startswith(("c4-", "wiki-"))) and len(t.split()) >= 150]
    sources = rng.sample(english, min(200, len(english)))
    seeded, negatives, seeded_texts = [], [], {}
    vocab = [w for _, t in english[:50] for w in t.split()]
    for k, (sid, text) in enumerate(sources):
        words = text.split()
        for _ in range(20):
            edited = [w if rng.random() > 0.015 else rng.choice(vocab) for w in words]
            pos = " ".join(edited) + " " + "This article was updated with more details."
            if jaccard(text, pos) >= 0.8:
                break
        else:
            continue
        rest = words[len(words) // 3:]
        neg = " ".join(words[: len(words) // 3] + rng.sample(rest, len(rest)))  # same opening, same topic words
        if jaccard(text, neg) > 0.5:
            continue
        pid, nid = f"pos-{k}", f"neg-{k}"
        docs += [(pid, pos), (nid, neg)]
        seeded.append((sid, pid))
        negatives.append((sid, nid))
        seeded_texts.update({sid: text, pid: pos, nid: neg})
    rng.shuffle(docs)
    with open(out / "docs.jsonl", "w") as f:
        for i, t in docs:
            f.write(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n")
    # HTML pages as files (extraction runs on them)
    n_html = 0
    for p in sorted((root / "doc_extraction" / "html").glob("*__source.html")):
        (out / p.name).write_bytes(p.read_bytes())
        n_html += 1
    for p in sorted((root / "article_extraction" / "html").glob("*.html.gz")):
        (out / p.name.removesuffix(".gz")).write_bytes(gzip.decompress(p.read_bytes()))
        n_html += 1
    return {"docs": len(docs) + n_html, "seeded": seeded, "negatives": negatives, "seeded_texts": seeded_texts}


def dedup_quality(seeded: list, negatives: list, texts: dict) -> dict:
    """Pair precision/recall of our MinHash clustering on the seeded documents."""
    from actors.data.dedup import edges_from_buckets
    from actors.data.minhash import MinHashConfig, MinHasher, union_find

    ids = sorted(texts)
    order = {d: i for i, d in enumerate(ids)}
    mh = MinHasher(MinHashConfig())
    rows = []
    for d in ids:
        sig = mh.signature(texts[d])
        if sig is not None:
            rows += [{"band": b, "key": f"{k:016x}", "order": order[d]} for b, k in enumerate(mh.band_keys(sig))]
    edges, _ = edges_from_buckets(rows)
    labels = union_find(edges)
    clusters: dict[int, list[str]] = {}
    for d in ids:
        clusters.setdefault(labels.get(order[d], order[d]), []).append(d)
    predicted = {tuple(sorted(p)) for c in clusters.values() for p in itertools.combinations(c, 2)}
    truth = {tuple(sorted(p)) for p in seeded}
    tp = len(predicted & truth)
    return {"dedup_precision": round(tp / len(predicted), 4) if predicted else 1.0,
            "dedup_recall": round(tp / len(truth), 4) if truth else 0.0,
            "dedup_pairs_true": len(truth), "dedup_pairs_predicted": len(predicted),
            "dedup_hard_negatives": len(negatives)}


def lid_accuracy(root: Path, per_lang: int = 120, seed: int = 0) -> dict:
    from actors.data.lid import detect
    from actors.data.pdf import extract_pdf

    rng = random.Random(seed)

    def snippets(texts, n, stride=240, cjk_share=0.0):
        """240-character windows; for a CJK source only windows that are mostly CJK (an English code block
        inside a Chinese answer is English text, whatever its file)."""
        out = []
        for t in texts:
            t = " ".join(t.split())
            out += [w for i in range(0, len(t) - 240 + 1, stride) if (w := t[i:i + 240])
                    and len(_CJK.findall(w)) >= cjk_share * len(w.replace(" ", ""))]
        rng.shuffle(out)
        return out[:n]

    en = [json.loads(x)["text"] for x in (root / "pretrain_demo_llamafactory" / "c4_demo.jsonl").open()]
    with gzip.open(root / "zh_classical" / "zh_classical.jsonl.gz", "rt") as f:
        zh = [json.loads(x)["text"] for x in f]
    zh += [r["output"] for r in json.loads((root / "sft_alpaca_demo" / "alpaca_zh_demo.json").read_text())]
    ja = [extract_pdf((root / "doc_extraction" / "pdf" / "jo_japanese.pdf").read_bytes()).text.replace("\n", "")]
    # the only Japanese text in the shared data is one PDF page (~330 characters): overlapping windows
    labelled = [(s, "en") for s in snippets(en, per_lang)] + \
        [(s, "zh") for s in snippets(zh, per_lang, cjk_share=0.5)] + \
        [(s, "ja") for s in snippets(ja, per_lang, stride=15, cjk_share=0.5)]
    hits = sum(detect(s)[0] == lang for s, lang in labelled)
    by = {lang: sum(1 for _, x in labelled if x == lang) for lang in ("en", "zh", "ja")}
    return {"lid_accuracy": round(hits / len(labelled), 4), "lid_snippets": by}


def main(argv: list[str] | None = None) -> dict:
    import torch

    import cluster
    from actors.data.config import CurateConfig, SourceConfig, StageSpec
    from actors.data.curate import run_curation

    ap = argparse.ArgumentParser(prog="python -m bench.data_throughput", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench/data_throughput"))
    ap.add_argument("--executor", choices=["ray", "local"], default="ray")
    args = ap.parse_args(argv)
    args.out = args.out.resolve()  # the sources' paths must not resolve against the data root
    root = Path(cluster.data_root())
    import shutil

    shutil.rmtree(args.out, ignore_errors=True)
    corpus = build_corpus(root, args.out / "corpus")
    print(f"corpus: {corpus['docs']} documents, {len(corpus['seeded'])} seeded near-duplicate pairs",
          file=sys.stderr)
    cfg = CurateConfig(
        inputs=[SourceConfig("docs", str(args.out / "corpus" / "docs.jsonl")),
                SourceConfig("html", str(args.out / "corpus" / "*.html"))],
        stages=[StageSpec("normalize"), StageSpec("language", {"min_score": 0.65}),
                StageSpec("quality", {"fineweb": False, "chinese": False})],
        files_per_shard=16, executor=args.executor)
    t0 = time.perf_counter()
    if args.executor == "ray":
        cluster.connect()  # Ray start-up counts: it is part of our end-to-end time
    res = run_curation(cfg, args.out / "ours", root)
    ours_s = time.perf_counter() - t0
    out = {"docs": corpus["docs"], "ours_s": round(ours_s, 1), "ours_docs_s": round(corpus["docs"] / ours_s, 1),
           "ours_kept": res["kept"], "ours_dropped_by_rule": res["dropped_by_rule"],
           "datatrove_docs_s": None, "ratio": None, "kept_jaccard": None,
           "datatrove": "not run: the datatrove side (its own venv, spaCy tokenizer, offline LID model) is not "
                        "built yet",
           **dedup_quality(corpus["seeded"], corpus["negatives"], corpus["seeded_texts"]),
           **lid_accuracy(root), "executor": args.executor, "dtype": "n/a (no tensors)",
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    print(json.dumps(out, ensure_ascii=False))
    return out


if __name__ == "__main__":
    main()
