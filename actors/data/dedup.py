"""Global deduplication of a curated folder (the per-shard stages' `docs/`): exact (same normalised text) and
near (MinHash LSH, actors.data.minhash), one pass over all shards after them.

    signatures  per shard: each document's order key (shard << 32 | row), content hash and band keys
    buckets     documents grouped by content hash and by (band, key); each group of 2+ linked as a star
    clusters    connected components of those links (union-find here; distributed rounds on Ray)
    filter      per shard: a document whose component's smallest order key is not its own is dropped
                (`exact_duplicate` when its text equals the kept one's, else `near_duplicate`), recorded with
                its cluster id; the rest is written to `<out>/dedup/docs/part-<shard>.parquet`

The kept document of a cluster is the earliest in input order (datatrove keeps its cluster's root, the earliest
for clusters built from equal-size merges).
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from actors.data.minhash import MinHashConfig, MinHasher, bucket_edges, union_find
from actors.data.pipeline import PREVIEW_CHARS, write_atomic

ORDER_BITS = 32


@dataclass
class DedupConfig:
    exact: bool = True
    near: bool = True
    minhash: MinHashConfig = None  # type: ignore[assignment]

    def __post_init__(self):
        if self.minhash is None:
            self.minhash = MinHashConfig()


def order_key(shard: int, row: int) -> int:
    return (shard << ORDER_BITS) | row


def shard_files(out: Path) -> list[tuple[int, Path]]:
    return [(int(p.stem.split("-")[1]), p) for p in sorted((out / "docs").glob("part-*.parquet"))]


def signature_rows(table: pa.Table, shard: int, cfg: DedupConfig, hasher: MinHasher | None) -> list[dict]:
    """One row per bucket a document falls in: {"kind": "exact"|band index, "key", "order"}."""
    rows = []
    for i, text in enumerate(table.column("text").to_pylist()):
        o = order_key(shard, i)
        if cfg.exact:
            rows.append({"band": -1, "key": hashlib.blake2b(text.encode(), digest_size=8).hexdigest(), "order": o})
        if cfg.near and hasher is not None:
            sig = hasher.signature(text)
            if sig is not None:
                rows.extend({"band": b, "key": f"{k:016x}", "order": o} for b, k in enumerate(hasher.band_keys(sig)))
    return rows


def edges_from_buckets(rows: list[dict]) -> tuple[list[tuple[int, int]], set[int]]:
    """(links of every bucket of 2+ documents, the documents with an identical earlier one)."""
    groups: dict[tuple[int, str], list[int]] = defaultdict(list)
    for r in rows:
        groups[(r["band"], r["key"])].append(r["order"])
    edges, exact = [], set()
    for (band, _), members in groups.items():
        if len(members) > 1:
            edges.extend(bucket_edges(members))
            if band == -1:
                exact.update(sorted(set(members))[1:])
    return edges, exact


def filter_shard(table: pa.Table, shard: int, labels: dict[int, int], exact: set[int]
                 ) -> tuple[pa.Table, pa.Table]:
    """(kept rows, dropped rows in the pipeline's dropped-file columns plus `cluster`) of one shard."""
    keep, gone = [], []
    for i in range(table.num_rows):
        o = order_key(shard, i)
        root = labels.get(o, o)
        (keep if root == o else gone).append((i, root))
    kept = table.take(pa.array([i for i, _ in keep], pa.int64()))
    rows = table.take(pa.array([i for i, _ in gone], pa.int64()))
    rules = ["exact_duplicate" if order_key(shard, i) in exact else "near_duplicate" for i, _ in gone]
    dropped = pa.table({
        "id": rows.column("id"), "source": rows.column("source"), "shard": rows.column("shard"),
        "stage": pa.array(["dedup"] * rows.num_rows, pa.string()), "rule": pa.array(rules, pa.string()),
        "preview": pa.array([t[:PREVIEW_CHARS] for t in rows.column("text").to_pylist()], pa.string()),
        "cluster": pa.array([root for _, root in gone], pa.int64()),
    })
    return kept, dropped


def filter_write(out: Path, shard: int, path: Path, labels: dict[int, int], exact: set[int]) -> dict:
    """The filter step for one shard; its counts."""
    table = pq.read_table(path)
    kept, dropped = filter_shard(table, shard, labels, exact)
    write_atomic(dropped, out / "dropped" / "dedup" / f"part-{shard:05d}.parquet")
    write_atomic(kept, out / "dedup" / "docs" / f"part-{shard:05d}.parquet")
    n_exact = sum(r == "exact_duplicate" for r in dropped.column("rule").to_pylist())
    return {"documents": table.num_rows, "exact": n_exact, "near": dropped.num_rows - n_exact}


def write_stats(out: Path, labels: dict[int, int], counts: list[dict]) -> dict:
    clusters: dict[int, int] = defaultdict(int)
    for root in labels.values():
        clusters[root] += 1
    n_in = sum(c["documents"] for c in counts)
    n_exact, n_near = sum(c["exact"] for c in counts), sum(c["near"] for c in counts)
    sizes = sorted((n for n in clusters.values() if n > 1), reverse=True)
    stats = {"documents": n_in, "exact_duplicates": n_exact, "near_duplicates": n_near,
             "kept": n_in - n_exact - n_near, "dedup_rate": round((n_exact + n_near) / n_in, 4) if n_in else 0.0,
             "clusters": len(sizes), "largest_clusters": sizes[:20],
             "size_histogram": {str(k): sizes.count(k) for k in sorted(set(sizes))}}
    (out / "dedup").mkdir(parents=True, exist_ok=True)
    (out / "dedup" / "stats.json").write_text(json.dumps(stats, indent=1))
    return stats


def dedup_local(out: str | Path, cfg: DedupConfig) -> dict:
    out = Path(out)
    hasher = MinHasher(cfg.minhash) if cfg.near else None
    files = shard_files(out)
    rows = []
    for shard, path in files:
        rows.extend(signature_rows(pq.read_table(path, columns=["text"]), shard, cfg, hasher))
    edges, exact = edges_from_buckets(rows)
    labels = union_find(edges)
    return write_stats(out, labels, [filter_write(out, shard, path, labels, exact) for shard, path in files])
