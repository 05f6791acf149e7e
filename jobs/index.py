"""`python -m jobs.index --docs PATH --out DIR`: a retrieval index (actors/agent/retrieval.py) built by a Ray Data
job over documents: the curation run's `data/curated/dedup/docs/*.parquet`, or any folder or glob of Parquet or
JSONL files with a text column. Passages are cut and embedded in an actor pool (the model loaded once per
actor); BM25 and the vector index are assembled on the driver and written to DIR (passages.jsonl, vectors.npy).
"""
from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

import numpy as np


def _files(docs: str) -> list[str]:
    p = Path(docs)
    if p.is_dir():
        found = sorted(glob.glob(str(p / "**" / "*.parquet"), recursive=True)) or \
            sorted(glob.glob(str(p / "**" / "*.jsonl"), recursive=True))
    else:
        found = sorted(glob.glob(docs))
    if not found:
        raise SystemExit(f"--docs {docs!r}: no .parquet or .jsonl file there")
    return found


class _EmbedPassages:
    """Ray Data actor: documents -> passages with their vectors."""

    def __init__(self, text_field: str, id_field: str, chars: int):
        from actors.agent.retrieval import Embedder

        self.embedder, self.text_field, self.id_field, self.chars = Embedder(), text_field, id_field, chars

    def __call__(self, batch: dict) -> dict:
        from actors.agent.retrieval import passages

        docs = [{"id": i, "text": t} for i, t in zip(batch[self.id_field], batch[self.text_field])
                if isinstance(t, str) and t.strip()]
        ps = passages(docs, self.chars)
        vecs = self.embedder.encode([p["text"] for p in ps]) if ps else np.zeros((0, 384), np.float32)
        return {"doc_id": np.array([p["doc_id"] for p in ps], dtype=object), "i": np.array([p["i"] for p in ps]),
                "text": np.array([p["text"] for p in ps], dtype=object), "vector": list(vecs)}


def build_index(docs: str, out: str, text_field: str = "text", id_field: str = "id", chars: int = 600,
                workers: int = 1) -> dict:
    import ray

    from actors.agent.retrieval import HybridIndex

    files = _files(docs)
    t0 = time.perf_counter()
    read = ray.data.read_parquet if files[0].endswith(".parquet") else ray.data.read_json
    ds = read(files)
    if id_field not in ds.schema().names:   # documents without ids: their row number, as a string
        ds = ds.add_column(id_field, lambda b: [f"doc:{k}" for k in range(len(b))], batch_format="pandas")
    rows = (ds.select_columns([id_field, text_field])
            .map_batches(_EmbedPassages, batch_size=64, batch_format="numpy",
                         fn_constructor_kwargs={"text_field": text_field, "id_field": id_field, "chars": chars},
                         compute=ray.data.ActorPoolStrategy(size=workers))
            .take_all())
    psgs = [{"doc_id": str(r["doc_id"]), "i": int(r["i"]), "text": str(r["text"])} for r in rows]
    vecs = np.stack([np.asarray(r["vector"], np.float32) for r in rows]) if rows else np.zeros((0, 384), np.float32)
    HybridIndex(psgs, vecs).save(out)
    return {"files": len(files), "passages": len(psgs), "documents": len({p["doc_id"] for p in psgs}),
            "seconds": round(time.perf_counter() - t0, 1), "out": str(out)}


def main(argv: list[str] | None = None, prog: str = "python -m jobs.index") -> None:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", required=True, help="a folder, file or glob of .parquet / .jsonl documents")
    ap.add_argument("--out", required=True)
    ap.add_argument("--text-field", default="text")
    ap.add_argument("--id-field", default="id")
    ap.add_argument("--chars", type=int, default=600, help="passage length")
    ap.add_argument("--workers", type=int, default=1, help="embedding actors")
    args = ap.parse_args(argv)
    import cluster

    cluster.connect()
    res = build_index(args.docs, args.out, args.text_field, args.id_field, args.chars, args.workers)
    print(res, file=sys.stderr)


if __name__ == "__main__":
    main()
