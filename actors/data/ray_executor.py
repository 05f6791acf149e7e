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

from actors.data.pipeline import RunReport, Stage, _one_shard, apply_stage, empty_docs, shard_done, write_kept


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
        rep = RunReport(self.name, len(shards))
        t0 = time.perf_counter()
        todo = [i for i in range(len(shards)) if not shard_done(out, i)]
        rep.skipped = len(shards) - len(todo)
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
