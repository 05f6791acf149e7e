"""Retrieval (actors/agent/retrieval.py): CJK-aware BM25 tokens, passages, the hybrid index with the packaged
MiniLM read offline, the agent tool's citations, and the Ray Data index job (jobs/index.py)."""
from __future__ import annotations

import json

import pytest


def _docs(data_root, n=24):
    base = data_root / "pretrain_demo_llamafactory"
    docs = [{"id": f"c4:{i}", "text": json.loads(line)["text"]}
            for i, line in enumerate(open(base / "c4_demo.jsonl")) if i < n]
    import gzip

    zh = [json.loads(x) for x in gzip.open(data_root / "zh_classical" / "zh_classical.jsonl.gz")]
    docs += [{"id": f"zh:{i}", "text": r["text"]} for i, r in enumerate(zh[:6])]
    return docs


@pytest.fixture(scope="module")
def index(data_root):
    from actors.agent.retrieval import Embedder, HybridIndex

    return HybridIndex.build(_docs(data_root), Embedder())


def test_bm25_tokens_and_passages():
    from actors.agent.retrieval import bm25_tokens, passages

    assert bm25_tokens("The Moon over 床前明月光, in Paris!") == ["moon", "over", "床前", "前明", "明月", "月光", "paris"]
    assert bm25_tokens("光") == ["光"]
    text = "\n".join(f"Line {i} " + "word " * 30 for i in range(20))
    ps = passages([{"id": "d", "text": text}], chars=400)
    assert len(ps) > 3 and all(len(p["text"]) <= 400 for p in ps)
    assert [p["i"] for p in ps] == list(range(len(ps))) and {p["doc_id"] for p in ps} == {"d"}
    assert " ".join(" ".join(p["text"].split()) for p in ps) == " ".join(text.split())   # nothing lost


def test_hybrid_search_finds_english_and_chinese_documents(index, data_root):
    from actors.agent.retrieval import RetrievalTool

    docs = _docs(data_root)
    en = docs[7]["text"]
    words = en.split()[10:40]
    query = " ".join(reversed(words))             # the same words, shuffled order
    for mode in ("bm25", "dense", "hybrid"):
        assert "c4:7" in [h.doc_id for h in index.search(query, k=5, mode=mode)], mode
    zh = docs[-2]["text"]
    hits = index.search(zh[20:40], k=3, mode="hybrid")
    assert hits[0].doc_id == docs[-2]["id"]       # BM25 over character bigrams carries Chinese
    out = RetrievalTool(index).call({"query": query, "k": 2})
    assert out.ok and out.content.startswith("[") and "[c4:7]" in out.content
    assert not RetrievalTool(index).call({"query": " "}).ok


@pytest.mark.ray
def test_index_job_on_ray_data_matches_the_local_build(ray_session, data_root, index, tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from actors.agent.retrieval import HybridIndex
    from jobs.index import build_index

    docs = _docs(data_root)[-10:]          # English and Chinese
    src = tmp_path / "docs"
    src.mkdir()
    pq.write_table(pa.Table.from_pylist(docs[:5]), src / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist(docs[5:]), src / "part-00001.parquet")
    res = build_index(str(src), str(tmp_path / "index"))
    ids = {d["id"] for d in docs}
    want = {(p["doc_id"], p["i"]): v for p, v in zip(index.psgs, index.vectors) if p["doc_id"] in ids}
    assert res["documents"] == len(docs) and res["passages"] == len(want)
    built = HybridIndex.load(tmp_path / "index")
    got = {(p["doc_id"], p["i"]): v for p, v in zip(built.psgs, built.vectors)}
    assert got.keys() == want.keys()         # the same passages, embedded in the actor pool as on the driver
    assert max(float(np.abs(got[k] - want[k]).max()) for k in want) < 1e-4
    q = " ".join(docs[1]["text"].split()[5:25])
    assert built.search(q, 1)[0].doc_id == docs[1]["id"]
