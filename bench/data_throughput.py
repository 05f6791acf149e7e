"""Curation throughput and quality on a corpus built from the shared data.

    python -m bench.data_throughput [--out DIR] [--venv DIR] [--executor ray|local] [--skip-datatrove]

The corpus (>= 5,000 documents, written under DIR/corpus): C4 and Wikipedia demo documents, classical Chinese,
tinyshakespeare cut into scenes of 20 speeches, the HTML pages (readability's and the article-extraction set),
the Alpaca SFT texts (EN and ZH), plus seeded near-duplicates of 200 English documents:
- positives: a few words replaced and a sentence added, kept only when their word 5-gram Jaccard with the source
  is >= 0.8;
- hard negatives: the source's first third (shared boilerplate) followed by the rest of its words shuffled (the
  same topic and vocabulary), kept only when the Jaccard is <= 0.5.

Both pipelines run end to end on it, on the same 2 cores, one after the other:
- ours (Ray start-up included): extraction -> language filter (English, score >= 0.65) -> Gopher repetition,
  Gopher quality, C4 -> MinHash dedup, 2 workers;
- datatrove 0.10.1's LocalPipelineExecutor (tasks=2, workers=2) with its own blocks for the same steps
  (bench/datatrove_pipeline.py), in a venv the bench creates under --venv and reuses (datatrove[processing] pins
  trafilatura < 1.12, so it never enters the project's environment); its LID model is our offline lid.176.ftz,
  its Trafilatura our options, its MinHash our n-gram, bands and rows.
ratio = datatrove's seconds / ours; kept_jaccard compares the ids each keeps. Then:
- dedup_precision / dedup_recall over pairs, on the seeded documents (sources, positives, negatives) run through
  our MinHash clustering alone (the same code the pipeline's dedup uses), so quality rules do not decide which
  pairs are left to find;
- lid_accuracy on >= 200-character snippets labelled by their source's known language (en, zh, ja).
Last line: JSON {"ours_docs_s", "datatrove_docs_s", "ratio", "kept_jaccard", "dedup_precision", "dedup_recall",
"lid_accuracy", "docs", "dtype", "cpu_capability", ...}.
"""
from __future__ import annotations

import argparse
import gzip
import re
import itertools
import json
import os
import random
import sys
import time
from pathlib import Path


PARTS = 16  # JSONL parts of each kind in the corpus
LANG_MIN_SCORE = 0.65  # datatrove's LanguageFilter default
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
    # the same documents for both pipelines, in parts so either can spread them over its workers: text as
    # JSONL parts; HTML as files for ours (extraction reads files) and as JSONL records {"id": file name, "text":
    # markup} for datatrove (its readers take records, and its Trafilatura block extracts the record's text)
    ids = {}  # (part file name, 1-based line) -> corpus id: how our reader names a JSONL record
    (out / "docs").mkdir()
    for k in range(PARTS):
        name = f"part-{k:02d}.jsonl"
        with open(out / "docs" / name, "w") as f:
            for line, (i, t) in enumerate(docs[k::PARTS], start=1):
                f.write(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n")
                ids[(name, line)] = i
    pages = [(p.name, p.read_bytes()) for p in sorted((root / "doc_extraction" / "html").glob("*__source.html"))]
    pages += [(p.name.removesuffix(".gz"), gzip.decompress(p.read_bytes()))
              for p in sorted((root / "article_extraction" / "html").glob("*.html.gz"))]
    (out / "html").mkdir()
    (out / "html_jsonl").mkdir()
    for name, b in pages:
        (out / "html" / name).write_bytes(b)
    for k in range(PARTS):
        with open(out / "html_jsonl" / f"part-{k:02d}.jsonl", "w") as f:
            for name, b in pages[k::PARTS]:
                f.write(json.dumps({"id": name, "text": b.decode("utf-8", "replace")}, ensure_ascii=False) + "\n")
    return {"docs": len(docs) + len(pages), "seeded": seeded, "negatives": negatives,
            "seeded_texts": seeded_texts, "ids": ids}


def corpus_id(doc_id: str, ids: dict) -> str:
    """Our document id ("<path>:<line>" for a JSONL record, the path for an HTML file) as the corpus id."""
    path, _, line = doc_id.rpartition(":")
    if path.endswith(".jsonl") and line.isdigit():
        return ids[(Path(path).name, int(line))]
    return Path(doc_id).name


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


DATATROVE_PINS = ("datatrove[processing]==0.10.1", "spacy==3.8.18", "lxml_html_clean==0.4.6", "orjson==3.13.0")


def datatrove_python(venv: Path) -> Path:
    """The venv's interpreter, creating the venv with DATATROVE_PINS on first use (~1 min from the package
    registry); datatrove's [processing] extras pin trafilatura < 1.12, which would move ours, so it never goes
    into the project's environment. spaCy is its English word tokenizer; lxml_html_clean is what trafilatura
    1.11's jusText import needs with lxml 6."""
    import subprocess

    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import datatrove, spacy, lxml_html_clean, fasttext, orjson"]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    print(f"creating {venv} with {' '.join(DATATROVE_PINS)}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *DATATROVE_PINS], check=True)
    subprocess.run(probe, check=True)
    return py


def run_datatrove(py: Path, corpus: Path, work: Path, minhash, timeout_s: float) -> dict:
    """datatrove's pipeline (bench/datatrove_pipeline.py) in its venv; the wall time includes the interpreter's
    start and imports, as ours includes Ray's start-up."""
    import subprocess

    from actors.data.lid import model_path

    work.mkdir(parents=True)
    spec = {"html": str(corpus / "html_jsonl"), "docs": str(corpus / "docs"), "out": str(work),
            "lid_model": str(model_path()), "tasks": 2, "workers": 2, "languages": ["en"],
            "language_threshold": LANG_MIN_SCORE,
            # our options (actors/data/html.py); its block always passes include_comments=False, as we do
            "trafilatura": {"favour_precision": True, "deduplicate": False, "timeout": timeout_s},
            "minhash": {"n_grams": minhash.n_grams, "bands": minhash.bands, "rows": minhash.rows,
                        "seed": minhash.seed}}
    (work / "spec.json").write_text(json.dumps(spec))
    # its LID model is copied into an HF assets cache of its own; nothing may be fetched
    env = {**os.environ, "HF_HOME": str(work / "hf"), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([str(py), str(Path(__file__).with_name("datatrove_pipeline.py")), str(work / "spec.json")],
                          capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    (work / "stderr.log").write_text(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"datatrove's pipeline failed (rc {proc.returncode}); the end of its log:\n"
                           f"{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**res, "wall_s": seconds}


def main(argv: list[str] | None = None) -> dict:
    import shutil

    import torch

    import cluster
    import pyarrow.parquet as pq

    from actors.data.config import CurateConfig, SourceConfig, StageSpec
    from actors.data.curate import run_curation
    from actors.data.dedup import DedupConfig

    ap = argparse.ArgumentParser(prog="python -m bench.data_throughput", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench/data_throughput"))
    ap.add_argument("--venv", type=Path, default=Path("runs/bench/venv-datatrove"),
                    help="datatrove's venv: created on first use, then reused")
    ap.add_argument("--executor", choices=["ray", "local"], default="ray")
    ap.add_argument("--skip-datatrove", action="store_true", help="only our pipeline and the quality figures")
    args = ap.parse_args(argv)
    args.out = args.out.resolve()  # the sources' paths must not resolve against the data root
    root = Path(cluster.data_root())
    shutil.rmtree(args.out, ignore_errors=True)
    corpus = build_corpus(root, args.out / "corpus")
    print(f"corpus: {corpus['docs']} documents, {len(corpus['seeded'])} seeded near-duplicate pairs",
          file=sys.stderr)
    # the same steps as datatrove's side: extraction -> English at score >= 0.65 -> Gopher repetition, Gopher
    # quality, C4 -> MinHash dedup (exact dedup is a separate block in datatrove: left out of both)
    cfg = CurateConfig(
        inputs=[SourceConfig("html", str(args.out / "corpus" / "html" / "*.html")),
                SourceConfig("docs", str(args.out / "corpus" / "docs" / "*.jsonl"))],
        stages=[StageSpec("language", {"keep": ["en"], "min_score": LANG_MIN_SCORE}),
                StageSpec("quality", {"fineweb": False, "chinese": False})],
        files_per_shard=8, shard_mb=1.0, executor=args.executor, dedup=DedupConfig(exact=False))
    t0 = time.perf_counter()
    if args.executor == "ray":
        cluster.connect()  # Ray start-up counts: it is part of our end-to-end time
    res = run_curation(cfg, args.out / "ours", root)
    ours_s = time.perf_counter() - t0
    ours_kept = {corpus_id(d, corpus["ids"]) for p in sorted((args.out / "ours" / "dedup" / "docs").glob("*.parquet"))
                 for d in pq.read_table(p, columns=["id"]).column("id").to_pylist()}
    out = {"docs": corpus["docs"], "ours_s": round(ours_s, 1), "ours_docs_s": round(corpus["docs"] / ours_s, 1),
           "ours_kept": len(ours_kept), "ours_dropped_by_rule": res["dropped_by_rule"],
           "datatrove_docs_s": None, "ratio": None, "kept_jaccard": None}
    if not args.skip_datatrove:
        py = datatrove_python(args.venv.resolve())
        dt = run_datatrove(py, args.out / "corpus", args.out / "datatrove", cfg.dedup.minhash,
                           cfg.extract_timeout_s)
        dt_kept = set(dt["kept_ids"])
        out.update(datatrove_s=round(dt["wall_s"], 1), datatrove_docs_s=round(corpus["docs"] / dt["wall_s"], 1),
                   ratio=round(dt["wall_s"] / ours_s, 3), datatrove_kept=len(dt_kept),
                   kept_jaccard=round(len(ours_kept & dt_kept) / max(1, len(ours_kept | dt_kept)), 4),
                   kept_only_ours=len(ours_kept - dt_kept), kept_only_datatrove=len(dt_kept - ours_kept))
        (args.out / "kept_diff.json").write_text(json.dumps(
            {"only_ours": sorted(ours_kept - dt_kept), "only_datatrove": sorted(dt_kept - ours_kept)}, indent=1))
    torch_caps = {"dtype": "n/a (no tensors)", "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                  "threads": torch.get_num_threads()}
    out.update(**dedup_quality(corpus["seeded"], corpus["negatives"], corpus["seeded_texts"]), **lid_accuracy(root),
               executor=args.executor, workers=2, **torch_caps)
    print(json.dumps(out, ensure_ascii=False))
    return out


if __name__ == "__main__":
    main()
