"""`python -m bench.retrieval`: recall of the agent's retrieval (actors/agent/retrieval.py) on questions built
from the shared documents: BM25 vs dense (all-MiniLM-L6-v2) vs hybrid (reciprocal rank fusion), in one run.

A question is one sentence held out of a document (removed from the indexed text), its words shuffled and about a
third of those with an entry in SYNONYMS replaced by a synonym; its target is that document. Documents: the C4
and Wikipedia demo sets of ../shared/data (330 documents). Seeded; the synonym list is fixed here.

Last line is JSON: {"bm25_recall_at_1", "bm25_recall_at_5", "dense_recall_at_1", "dense_recall_at_5",
"hybrid_recall_at_1", "hybrid_recall_at_5", "n", ...}.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path

SYNONYMS = {
    "big": "large", "large": "big", "small": "little", "little": "small", "buy": "purchase", "help": "assist",
    "begin": "start", "start": "begin", "end": "finish", "make": "create", "use": "utilize", "show": "display",
    "get": "obtain", "give": "provide", "need": "require", "want": "desire", "find": "discover", "say": "state",
    "said": "stated", "tell": "inform", "think": "believe", "often": "frequently", "many": "numerous",
    "important": "significant", "good": "fine", "great": "excellent", "bad": "poor", "new": "novel",
    "old": "ancient", "fast": "quick", "quick": "fast", "easy": "simple", "simple": "easy", "hard": "difficult",
    "difficult": "hard", "house": "home", "home": "house", "car": "vehicle", "job": "work", "work": "labor",
    "people": "persons", "child": "kid", "children": "kids", "city": "town", "town": "city", "country": "nation",
    "nation": "country", "world": "globe", "area": "region", "region": "area", "place": "location",
    "company": "firm", "business": "enterprise", "money": "funds", "price": "cost", "cost": "price",
    "idea": "notion", "problem": "issue", "issue": "problem", "answer": "reply", "question": "query",
    "change": "alter", "choose": "select", "keep": "retain", "try": "attempt", "build": "construct",
    "built": "constructed", "live": "reside", "lived": "resided", "died": "perished", "war": "conflict",
    "king": "monarch", "famous": "renowned", "known": "recognized", "large-scale": "massive", "usually": "typically",
    "also": "additionally", "about": "regarding", "around": "approximately", "however": "nevertheless",
    "because": "since", "several": "various", "different": "distinct", "main": "principal", "first": "initial",
    "last": "final", "early": "initial", "later": "subsequently", "part": "portion", "small-scale": "minor",
    "quickly": "rapidly", "completely": "entirely", "provide": "supply", "include": "contain",
    "includes": "contains", "called": "named", "named": "called", "area's": "region's", "team": "squad",
    "game": "match", "film": "movie", "movie": "film", "book": "volume", "music": "songs", "school": "academy",
    "student": "pupil", "students": "pupils", "teacher": "instructor", "doctor": "physician", "food": "meals",
    "water": "liquid", "body": "physique", "health": "wellness", "time": "period", "year": "annum",
    "day": "date", "result": "outcome", "results": "outcomes", "shop": "store", "store": "shop",
    "customer": "client", "customers": "clients", "product": "item", "products": "items", "service": "offering",
    "services": "offerings", "website": "site", "online": "web-based", "free": "complimentary",
}
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def load_docs(data_root: Path) -> list[dict]:
    base = data_root / "pretrain_demo_llamafactory"
    docs = [{"id": f"c4:{i}", "text": json.loads(line)["text"]}
            for i, line in enumerate(open(base / "c4_demo.jsonl")) if line.strip()]
    docs += [{"id": f"wiki:{i}", "text": line.strip()} for i, line in enumerate(open(base / "wiki_demo.txt"))
             if line.strip()]
    return docs


def make_questions(docs: list[dict], n: int, seed: int, replace_frac: float = 1 / 3):
    """(documents with each question's sentence removed, questions [{"q", "target"}])."""
    rng = random.Random(seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    out_docs = [dict(d) for d in docs]
    questions = []
    for j in order:
        sents = _SENT.split(docs[j]["text"])
        cand = [s for s in sents if 12 <= len(s.split()) <= 40]
        if len(sents) < 4 or not cand:
            continue
        s = rng.choice(cand)
        out_docs[j]["text"] = docs[j]["text"].replace(s, " ", 1)      # held out of the index
        words = re.findall(r"[A-Za-z0-9'-]+", s)
        words = [SYNONYMS.get(w.lower(), w) if w.lower() in SYNONYMS and rng.random() < replace_frac else w
                 for w in words]
        rng.shuffle(words)
        questions.append({"q": " ".join(words), "target": docs[j]["id"], "sentence": s})
        if len(questions) == n:
            break
    return out_docs, questions


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.retrieval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="questions")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench/retrieval")
    args = ap.parse_args(argv)

    import torch

    import cluster
    from actors.agent.retrieval import Embedder, HybridIndex

    docs, questions = make_questions(load_docs(cluster.data_root()), args.n, args.seed)
    t0 = time.perf_counter()
    idx = HybridIndex.build(docs, Embedder())
    build_s = time.perf_counter() - t0
    res: dict = {}
    t0 = time.perf_counter()
    for mode in ("bm25", "dense", "hybrid"):
        hits = [[h.doc_id for h in idx.search(q["q"], k=50, mode=mode)] for q in questions]
        # a document's rank is that of its best passage: passages of the same document after it do not count
        ranked = [list(dict.fromkeys(h))[:5] for h in hits]
        res[f"{mode}_recall_at_1"] = round(sum(r[:1] == [q["target"]] for r, q in zip(ranked, questions))
                                           / len(questions), 4)
        res[f"{mode}_recall_at_5"] = round(sum(q["target"] in r for r, q in zip(ranked, questions))
                                           / len(questions), 4)
    search_s = time.perf_counter() - t0
    res.update(n=len(questions), documents=len(docs), passages=len(idx.psgs), build_s=round(build_s, 1),
               search_s=round(search_s, 1), dtype="float32", cpu_capability=torch.backends.cpu.get_cpu_capability(),
               threads=torch.get_num_threads(),
               passes=bool(res["hybrid_recall_at_5"] >= max(res["bm25_recall_at_5"], res["dense_recall_at_5"])
                           and res["hybrid_recall_at_5"] >= 0.8))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "questions.jsonl").write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions))
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
