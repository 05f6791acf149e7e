"""Near-duplicate detection with MinHash LSH (Broder 1997), datatrove's settings by default: word 5-grams of the
normalised text, 14 bands x 8 rows (112 hashes: a pair at Jaccard 0.8 shares a band with probability 0.92, at
0.5 with 0.05), 64-bit xxhash of each shingle, permutations h -> (a*h + b) mod (2^61 - 1) in wrapping uint64
arithmetic.

Then clusters: documents sharing any band key are linked, and the connected components of those links are the
clusters; the document kept from each is the one with the smallest order key (its position in the input). The
components are found by the large-star / small-star algorithm (Kiveris et al., "Connected Components in
MapReduce and Beyond", 2014), written as rounds over a partitioned edge list so no process holds the whole graph
(`large_star`, `small_star` here; the Ray rounds in actors.data.ray_executor). `union_find` is the single-process
reference the tests hold it to.
"""
from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from actors.common.config import check

MERSENNE_61 = np.uint64((1 << 61) - 1)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_PUNCT = re.compile(r"[^\w\s]|_")
_SPACE = re.compile(r"\s+")


@dataclass
class MinHashConfig:
    n_grams: int = 5
    bands: int = 14
    rows: int = 8
    seed: int = 1

    def __post_init__(self):
        check(self.n_grams >= 1, "minhash.n_grams", f"must be >= 1 (5 is usual), got {self.n_grams}")
        check(self.bands >= 1 and self.rows >= 1, "minhash.bands",
              f"bands and rows must be >= 1 (14 x 8 is usual), got {self.bands} x {self.rows}")

    @property
    def threshold(self) -> float:
        """The Jaccard similarity at which a pair is found with probability ~1/2."""
        return (1 / self.bands) ** (1 / self.rows)


def normalize(text: str) -> str:
    """Lowercase, numbers -> 0, punctuation -> space, whitespace collapsed, accents dropped."""
    text = _NUMBER.sub("0", text.lower())
    text = _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


class MinHasher:
    def __init__(self, cfg: MinHashConfig):
        self.cfg = cfg
        rng = np.random.RandomState(cfg.seed)
        n = cfg.bands * cfg.rows
        self.a = rng.randint(1, int(MERSENNE_61), size=n, dtype=np.uint64)
        self.b = rng.randint(0, int(MERSENNE_61), size=n, dtype=np.uint64)

    def shingles(self, text: str) -> np.ndarray:
        import xxhash

        toks = normalize(text).split()
        n = self.cfg.n_grams
        grams = {" ".join(toks[i:i + n]) for i in range(len(toks) - n + 1)}
        return np.fromiter((xxhash.xxh64_intdigest(g.encode()) for g in grams), dtype=np.uint64, count=len(grams))

    def signature(self, text: str) -> np.ndarray | None:
        """(bands * rows) uint64 minima, or None for a document shorter than one shingle (never a duplicate)."""
        sh = self.shingles(text)
        if not sh.size:
            return None
        with np.errstate(over="ignore"):
            phv = (sh[:, None] * self.a[None, :] + self.b[None, :]) % MERSENNE_61
        return phv.min(axis=0)

    def band_keys(self, sig: np.ndarray) -> list[int]:
        """One 64-bit key per band (xxhash of the band's rows)."""
        import xxhash

        r = self.cfg.rows
        return [xxhash.xxh64_intdigest(sig[i * r:(i + 1) * r].tobytes()) for i in range(self.cfg.bands)]


def bucket_edges(members: list[int]) -> list[tuple[int, int]]:
    """The documents of one bucket linked as a star around the smallest (enough for components)."""
    members = sorted(set(members))
    return [(members[0], m) for m in members[1:]]


# ------------------------------------------------------------------------------------ connected components

def union_find(edges: list[tuple[int, int]]) -> dict[int, int]:
    """node -> smallest node of its component (the single-process reference)."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    for u, v in edges:
        ru, rv = find(u), find(v)
        if ru != rv:
            parent[max(ru, rv)] = min(ru, rv)
            parent.setdefault(min(ru, rv), min(ru, rv))
        else:
            parent.setdefault(ru, ru)
    return {x: find(x) for x in list(parent)}


def _neighbours(edges) -> dict[int, set[int]]:
    adj: dict[int, set[int]] = defaultdict(set)
    for u, v in edges:
        if u != v:
            adj[u].add(v)
            adj[v].add(u)
    return adj


def large_star(adj: dict[int, set[int]]) -> list[tuple[int, int]]:
    """For each node u: link every larger neighbour to the smallest of u's neighbourhood (u included)."""
    out = []
    for u, ns in adj.items():
        m = min(ns | {u})
        out.extend((v, m) for v in ns if v > u)
    return out


def small_star(adj: dict[int, set[int]]) -> list[tuple[int, int]]:
    """For each node u: link u and its smaller neighbours to the smallest of them."""
    out = []
    for u, ns in adj.items():
        small = {v for v in ns if v <= u} | {u}
        m = min(small)
        out.extend((v, m) for v in small if v != m)
    return out


def partition_adjacency(edges, part: int, parts: int) -> dict[int, set[int]]:
    """The neighbourhoods of the nodes a partition owns (node % parts == part), from both edge directions."""
    adj: dict[int, set[int]] = defaultdict(set)
    for u, v in edges:
        if u == v:
            continue
        if u % parts == part:
            adj[u].add(v)
        if v % parts == part:
            adj[v].add(u)
    return adj


def star_components(edges: list[tuple[int, int]], max_rounds: int = 100) -> dict[int, int]:
    """Large-star then small-star until nothing changes, in one process (what the Ray rounds do partitioned):
    node -> smallest node of its component."""
    cur = sorted({(min(u, v), max(u, v)) for u, v in edges if u != v})
    for _ in range(max_rounds):
        nxt = sorted({(max(u, v), min(u, v)) for u, v in small_star(_neighbours(large_star(_neighbours(cur))))})
        nxt = sorted({(min(u, v), max(u, v)) for u, v in nxt})
        if nxt == cur:
            break
        cur = nxt
    else:
        raise RuntimeError(f"connected components did not converge in {max_rounds} rounds")
    return star_labels(cur, edges)


def star_labels(stars: list[tuple[int, int]], edges: list[tuple[int, int]]) -> dict[int, int]:
    """Labels from converged large/small-star edges (each joins a component's smallest node to a member), every
    node of `edges` included."""
    labels: dict[int, int] = {}
    for u, v in stars:
        a, b = min(u, v), max(u, v)
        labels[b] = min(labels.get(b, a), a)
        labels.setdefault(a, a)
    for u, v in edges:
        labels.setdefault(u, u)
        labels.setdefault(v, v)
    return labels
