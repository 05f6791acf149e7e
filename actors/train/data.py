"""Packed pretraining rows for one data-parallel rank, Ray-free.

The data stage writes fixed-length rows (parquet, `input_ids: list<int32>`). Every rank memory-maps the same
files and walks the same seeded permutation per epoch; a step's global batch is the next
`batch_size x grad_accum x dp` rows, and data-parallel rank r takes its contiguous share. Ranks that differ only
in their tensor- or pipeline-parallel coordinate read identical rows, and the global batch of a step does not
depend on the layout, which is what makes losses comparable across layouts.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch


def read_rows(path: str | Path) -> np.ndarray:
    """All rows of a parquet file or folder as an (N, T) int32 array (memory-mapped where the layout allows)."""
    import pyarrow.parquet as pq

    table = pq.read_table(str(path), columns=["input_ids"], memory_map=True)
    col = table.column("input_ids").combine_chunks()
    if len(col) == 0:
        return np.zeros((0, 0), dtype=np.int32)
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    T = len(values) // len(col)
    if T * len(col) != len(values):
        raise ValueError(f"{path}: rows of different lengths; the data stage packs rows of one length (data.seq_len)")
    return values.reshape(len(col), T)


def packed_batches(rows: np.ndarray, batch_size: int, grad_accum: int, dp_rank: int, dp_size: int,
                   seed: int, start: int = 0) -> Iterator[list[dict[str, torch.Tensor]]]:
    """Endless: per step, this rank's `grad_accum` micro-batches of `batch_size` rows, from global batch
    `start` on (a resumed run: the position depends on the global batch only, not on the layout)."""
    per_rank = batch_size * grad_accum
    G = per_rank * dp_size
    if len(rows) < G:
        raise ValueError(f"the training data has {len(rows)} packed rows, fewer than one global batch of {G} "
                         f"(batch_size {batch_size} x grad_accum_steps {grad_accum} x data-parallel {dp_size}); "
                         "add data or lower pretrain.batch_size")
    per_epoch = len(rows) // G
    epoch, skip = divmod(start, per_epoch)
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(len(rows))
        for start in range(skip * G, len(order) - G + 1, G):
            mine = order[start + dp_rank * per_rank: start + (dp_rank + 1) * per_rank]
            block = torch.from_numpy(rows[np.sort(mine)].astype(np.int64))
            yield [{"input_ids": block[i * batch_size:(i + 1) * batch_size]} for i in range(grad_accum)]
        epoch, skip = epoch + 1, 0


def val_batches(rows: np.ndarray, batch_size: int, max_batches: int, dp_rank: int,
                dp_size: int) -> list[dict[str, torch.Tensor]]:
    """This rank's held-out rows (rank::dp), the same every evaluation; whole batches only (a pipeline splits
    each into its fixed number of microbatches)."""
    mine = rows[dp_rank::dp_size][: batch_size * max_batches]
    if len(mine) < batch_size:
        raise ValueError(f"the held-out shard gives this data-parallel rank {len(mine)} rows, fewer than one batch "
                         f"of {batch_size}; raise data.val_fraction or lower pretrain.batch_size")
    return [{"input_ids": torch.from_numpy(mine[i:i + batch_size].astype(np.int64))}
            for i in range(0, len(mine) - batch_size + 1, batch_size)]


def document_mask(input_ids: torch.Tensor, eos_id: int) -> dict[str, torch.Tensor]:
    """Positions and attention mask for rows packed from several documents (each ends with `eos_id`): a token
    attends only to earlier tokens of its own document, and positions restart at 0 with each document, as if
    every document had its own row. (B, T) ids -> positions (B, T), attn_mask bool (B, 1, T, T), True = attend."""
    B, T = input_ids.shape
    starts = torch.zeros_like(input_ids, dtype=torch.bool)
    starts[:, 1:] = input_ids[:, :-1] == eos_id  # the token after an EOS opens a document
    seg = starts.long().cumsum(dim=1)  # (B, T) document index within the row
    idx = torch.arange(T, device=input_ids.device).expand(B, T)
    first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values  # (B, T) start of own document
    causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
    same = seg[:, :, None] == seg[:, None, :]  # (B, T, T)
    return {"positions": idx - first, "attn_mask": (same & causal)[:, None]}
