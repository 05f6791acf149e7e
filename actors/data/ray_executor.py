"""The Ray Data executor of curation pipelines (actors.data.pipeline): the same shards, stages and files as
LocalExecutor, on a Ray cluster.

    from_items(shards not yet complete, one block each)
      --map_batches(read)--------------------------------> docs, one block per shard
      --map_batches(stage 1: actor pool if it has setup)--> kept (its dropped rows written per shard)
      ...
      --map_batches(write kept)--> docs/part-<shard>.parquet (the shard's completion mark)

Blocks stream through the operators under Ray Data's backpressure; nothing is collected on the driver. A block
stays one shard: every UDF maps a whole block (`batch_size=None`), and the block size limit is raised for the run
so Ray Data does not split a shard's output. The caller connects to Ray; this module never calls ray.init.
"""
from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import ray

from actors.data.pipeline import RunReport, Stage, _one_shard, apply_stage, empty_docs, start_run, write_kept


def _read(batch: pa.Table, read_shard) -> pa.Table:
    rows = batch.to_pylist()
    assert len(rows) == 1, "one shard per input block"
    return read_shard(rows[0]["shard"], rows[0]["index"])


def _stage_fn(batch: pa.Table, stage: Stage, out: str) -> pa.Table:
    shard = _one_shard(batch)
    return batch if shard is None else apply_stage(stage, batch, Path(out), shard)


class _StageActor:
    """An actor-pool worker: the stage is set up once, then maps blocks."""

    def __init__(self, stage: Stage, out: str):
        self.stage, self.out = stage, out
        self.stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _stage_fn(batch, self.stage, self.out)


def _write_fn(batch: pa.Table, out: str) -> pa.Table:
    shard = _one_shard(batch)
    if shard is not None:
        write_kept(Path(out), shard, batch)
    return pa.table({"shard": [shard if shard is not None else -1], "kept": [batch.num_rows]})


class RayExecutor:
    name = "ray"

    def __init__(self, read_workers: int = 2):
        self.read_workers = read_workers

    def run(self, read_shard, shards: list, stages: list[Stage], out: str | Path) -> RunReport:
        out = Path(out)
        rep, todo = start_run(self.name, shards, out)
        t0 = time.perf_counter()
        if todo:
            ctx = ray.data.DataContext.get_current()
            old = ctx.target_max_block_size
            ctx.target_max_block_size = max(old or 0, 1 << 31)   # a shard's block is never split
            try:
                ds = ray.data.from_items([{"shard": shards[i], "index": i} for i in todo],
                                         override_num_blocks=len(todo))
                ds = ds.map_batches(_read, batch_format="pyarrow", batch_size=None, fn_kwargs={
                    "read_shard": read_shard}, compute=ray.data.TaskPoolStrategy(size=self.read_workers))
                for st in stages:
                    cpus = st.resources.cpus
                    if st.has_setup():
                        ds = ds.map_batches(_StageActor, batch_format="pyarrow", batch_size=None,
                                            fn_constructor_kwargs={"stage": st, "out": str(out)},
                                            compute=ray.data.ActorPoolStrategy(size=st.resources.workers),
                                            num_cpus=cpus)
                    else:
                        ds = ds.map_batches(_stage_fn, batch_format="pyarrow", batch_size=None,
                                            fn_kwargs={"stage": st, "out": str(out)}, num_cpus=cpus)
                done = ds.map_batches(_write_fn, batch_format="pyarrow", batch_size=None,
                                      fn_kwargs={"out": str(out)}).take_all()
            finally:
                ctx.target_max_block_size = old
            written = {r["shard"] for r in done}
            for i in todo:  # a shard whose every document was dropped reaches the writer as an empty block
                if i not in written:
                    write_kept(out, i, empty_docs())
        rep.seconds = time.perf_counter() - t0
        return rep


# ------------------------------------------------------------------------------ connected components on Ray

@ray.remote
def _route(edges: list[tuple[int, int]], parts: int, by_min: bool):
    """Split edges by owning partition: both endpoints' owners (a star step needs every neighbour of a node),
    or, for the canonical form between rounds, the owner of the smaller endpoint."""
    out: list[list[tuple[int, int]]] = [[] for _ in range(parts)]
    for u, v in edges:
        if by_min:
            a, b = (u, v) if u < v else (v, u)
            out[a % parts].append((a, b))
        else:
            out[u % parts].append((u, v))
            if v % parts != u % parts:
                out[v % parts].append((u, v))
    return tuple(out) if parts > 1 else out[0]


@ray.remote
def _star(chunks: list, part: int, parts: int, large: bool) -> list[tuple[int, int]]:
    from actors.data.minhash import large_star, partition_adjacency, small_star

    edges = [e for c in ray.get(chunks) for e in c]  # refs inside a list are not resolved by Ray
    adj = partition_adjacency(edges, part, parts)
    return large_star(adj) if large else small_star(adj)


@ray.remote
def _canonical(chunks: list) -> tuple[list[tuple[int, int]], int]:
    edges = sorted({(min(u, v), max(u, v)) for c in ray.get(chunks) for u, v in c if u != v})
    return edges, hash(tuple(edges))  # ints hash the same in every process


def ray_connected_components(edges: list[tuple[int, int]], parts: int = 2, max_rounds: int = 100) -> dict[int, int]:
    """node -> smallest node of its component, by large-star / small-star rounds over `parts` partitions of the
    edge list (actors.data.minhash); each round is two all-to-all shuffles of object refs between Ray tasks."""
    route = _route.options(num_returns=parts)

    def shuffle(shards, by_min):
        outs = [route.remote(s, parts, by_min) for s in shards]
        outs = [o if isinstance(o, list) else [o] for o in outs]
        return [[outs[i][j] for i in range(len(shards))] for j in range(parts)]

    shards = [ray.put(edges[i::parts]) for i in range(parts)]
    prev = None
    for _ in range(max_rounds):
        for large in (True, False):
            cols = shuffle(shards, by_min=False)
            shards = [_star.remote(cols[j], j, parts, large) for j in range(parts)]
        canon = [_canonical.options(num_returns=2).remote(col) for col in shuffle(shards, by_min=True)]
        shards = [c[0] for c in canon]
        sig = ray.get([c[1] for c in canon])
        if sig == prev:
            break
        prev = sig
    else:
        raise RuntimeError(f"connected components did not converge in {max_rounds} rounds")
    from actors.data.minhash import star_labels

    return star_labels([e for part in ray.get(shards) for e in part], edges)


# ------------------------------------------------------------------------------ global dedup on Ray

def _signature_rows(row: dict, cfg) -> list[dict]:
    import pyarrow.parquet as pq

    from actors.data.dedup import signature_rows
    from actors.data.minhash import MinHasher

    hasher = MinHasher(cfg.minhash) if cfg.near else None
    return signature_rows(pq.read_table(row["path"], columns=["text"]), row["shard"], cfg, hasher)


def _bucket_links(group: pa.Table) -> pa.Table:
    """One band's rows (every document's key in that band): the links of each bucket of 2+ documents."""
    from actors.data.dedup import edges_from_buckets

    rows = group.to_pylist()
    e, _ = edges_from_buckets(rows)
    exact = rows[0]["band"] == -1
    return pa.table({"u": pa.array([a for a, _ in e], pa.int64()), "v": pa.array([b for _, b in e], pa.int64()),
                     "exact": pa.array([exact] * len(e), pa.bool_())})


@ray.remote
def _filter_task(out: str, shard: int, path: str, labels: dict, exact: set) -> dict:
    from actors.data.dedup import filter_write

    return filter_write(Path(out), shard, Path(path), labels, exact)


def dedup_ray(out: str | Path, cfg, parts: int = 2) -> dict:
    """actors.data.dedup on Ray: signatures as Ray Data tasks, buckets as a Ray Data groupby by band (a
    shuffle), clusters by distributed large-star/small-star rounds, the filter as one task per shard."""
    from actors.data.dedup import shard_files, write_stats

    out = Path(out)
    files = shard_files(out)
    ds = ray.data.from_items([{"shard": s, "path": str(p)} for s, p in files], override_num_blocks=max(1, len(files)))
    # grouped by band (15 groups with the exact-text band), each group's buckets found inside it; `parts`
    # shuffle partitions, not Ray Data's default 200 (each a task: minutes on 2 cores)
    links = (ds.flat_map(_signature_rows, fn_kwargs={"cfg": cfg})
             .groupby("band", num_partitions=parts)
             .map_groups(_bucket_links, batch_format="pyarrow").take_all())
    edges = [(r["u"], r["v"]) for r in links]
    exact = {r["v"] for r in links if r["exact"]}  # a star's leaves: each has an identical earlier document
    labels = ray_connected_components(edges, parts=parts)
    lab, ex = ray.put(labels), ray.put(exact)
    counts = ray.get([_filter_task.remote(str(out), s, str(p), lab, ex) for s, p in files])
    return write_stats(out, labels, counts)
