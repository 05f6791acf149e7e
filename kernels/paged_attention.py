"""Attention of one new token per sequence over a paged KV cache (the serving engine's decode step).

The cache of one layer is a pool of fixed-size blocks shared by all sequences, stored per KV head as
`(n_kv_heads, num_blocks * block_size, head_dim)`: slot `s` of the pool is token `s % block_size` of block
`s // block_size`. A sequence owns a list of blocks (its row of `block_tables`), so sequences grow without
moving data and blocks holding a shared prefix can sit in several tables at once.

`paged_decode_attention` is the Triton kernel on CUDA (one program per (sequence, query head), an online softmax
over the sequence's blocks, grouped-query heads read their KV head's blocks directly); on CPU in fp32 a C++
kernel (csrc/paged_decode_cpu.cpp, built with the other C++ operators by kernels/cpu_ops.py) that reads each
sequence's keys and values once in place, per (sequence, KV head) for all query heads sharing it; and the torch
reference elsewhere: gather the sequences' blocks once into (n_kv, B, S, hd) and run two batched matmuls whose
batch dims are (kv head, sequence), so no repeat of K/V per query head and no further copy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.cpu_ops import cpu_ops_available

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # noqa: BLE001 - triton missing or broken on this platform
    HAVE_TRITON = False


def write_kv(k_pool: torch.Tensor, v_pool: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Store new keys/values (N, n_kv, hd) into pool slots `slot_mapping` (N,)."""
    k_pool.index_copy_(1, slot_mapping, k.transpose(0, 1).to(k_pool.dtype))  # (n_kv, N, hd) into (n_kv, slots, hd)
    v_pool.index_copy_(1, slot_mapping, v.transpose(0, 1).to(v_pool.dtype))


def gather_index(block_ids: torch.Tensor, num_kv_heads: int, num_blocks: int) -> torch.Tensor:
    """Rows of the pool viewed as (n_kv * num_blocks, block_size * hd) holding `block_ids` (B, nb), for every KV
    head: gathered in this order they form (n_kv, B, nb * block_size, hd) with no further copy."""
    heads = torch.arange(num_kv_heads, device=block_ids.device)[:, None] * num_blocks
    return (heads + block_ids.reshape(1, -1)).reshape(-1)


def gather_blocks(pool: torch.Tensor, index: torch.Tensor, B: int, block_size: int,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """The blocks `index` (from `gather_index`) selects, as (n_kv, B, S, hd): one copy of whole blocks along dim 0
    (block_size * hd contiguous values each). Into a reused `out` buffer: a fresh multi-MB result per layer
    costs page faults that took longer than the copy itself (0.6 vs 0.25 ms for 9 MB on this CPU)."""
    nkv, slots, hd = pool.shape
    rows = pool.view(nkv * (slots // block_size), block_size * hd)
    if out is None:
        got = rows.index_select(0, index)
    else:
        got = torch.index_select(rows, 0, index, out=out.view(-1, block_size * hd))
    return got.view(nkv, B, -1, hd)


@dataclass
class DecodeMeta:
    """What every layer of one step shares for a group of one-token queries."""

    block_tables: torch.Tensor        # (B, nb) block ids, padded with the null block 0
    seq_lens: torch.Tensor            # (B,) tokens of each sequence, the new one included
    block_size: int
    valid: torch.Tensor | None = None       # (B, S) position < seq_len (reference path)
    index: torch.Tensor | None = None       # gather_index of block_tables (reference path)
    k_buf: torch.Tensor | None = None       # gather workspaces (reference path)
    v_buf: torch.Tensor | None = None


def decode_meta(block_tables: torch.Tensor, seq_lens: torch.Tensor, block_size: int,
                pool: torch.Tensor) -> DecodeMeta:
    meta = DecodeMeta(block_tables, seq_lens, block_size)
    if not (HAVE_TRITON and pool.is_cuda) and not in_place_cpu(pool):
        B, nb = block_tables.shape
        nkv, slots, hd = pool.shape
        S = nb * block_size
        meta.valid = torch.arange(S, device=pool.device)[None, :] < seq_lens[:, None]
        meta.index = gather_index(block_tables, nkv, slots // block_size)
        meta.k_buf = torch.empty(nkv, B, S, hd, dtype=pool.dtype, device=pool.device)
        meta.v_buf = torch.empty_like(meta.k_buf)
    return meta


def paged_decode_attention_reference(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                                     meta: DecodeMeta, scale: float) -> torch.Tensor:
    """q (B, nh, hd) -> out (B, nh, hd)."""
    B, nh, hd = q.shape
    nkv, slots, _ = k_pool.shape
    rep = nh // nkv
    index, valid = meta.index, meta.valid
    if index is None:  # metadata made for the Triton path
        index = gather_index(meta.block_tables, nkv, slots // meta.block_size)
        S = meta.block_tables.shape[1] * meta.block_size
        valid = torch.arange(S, device=q.device)[None, :] < meta.seq_lens[:, None]
    k = gather_blocks(k_pool, index, B, meta.block_size, meta.k_buf)  # (nkv, B, S, hd)
    v = gather_blocks(v_pool, index, B, meta.block_size, meta.v_buf)
    qg = q.reshape(B, nkv, rep, hd).transpose(0, 1)  # (nkv, B, rep, hd): query head j*rep + r uses kv head j
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * scale  # (nkv, B, rep, S)
    scores = scores.masked_fill(~valid[None, :, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    out = torch.matmul(probs, v)  # (nkv, B, rep, hd)
    return out.transpose(0, 1).reshape(B, nh, hd).to(q.dtype)


if HAVE_TRITON:

    @triton.jit
    def _paged_decode_kernel(Q, K, V, O, BT, LENS, scale,
                             stride_qb, stride_qh, stride_kh, stride_ks, stride_bt, stride_ob, stride_oh,
                             REP: tl.constexpr, HD: tl.constexpr, HD_PAD: tl.constexpr, BS: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        kvh = h // REP
        d = tl.arange(0, HD_PAD)
        dmask = d < HD
        q = tl.load(Q + b * stride_qb + h * stride_qh + d, mask=dmask, other=0.0).to(tl.float32)
        seq_len = tl.load(LENS + b)
        m_i = -float("inf")
        l_i = 0.0
        acc = tl.zeros([HD_PAD], dtype=tl.float32)
        offs = tl.arange(0, BS)
        for i in range(0, tl.cdiv(seq_len, BS)):
            blk = tl.load(BT + b * stride_bt + i)
            pos = i * BS + offs
            pmask = pos < seq_len
            slot = blk * BS + offs
            kv_off = kvh * stride_kh + slot[:, None] * stride_ks + d[None, :]
            m2 = pmask[:, None] & dmask[None, :]
            k = tl.load(K + kv_off, mask=m2, other=0.0).to(tl.float32)  # (BS, HD_PAD)
            s = tl.sum(k * q[None, :], axis=1) * scale  # (BS,)
            s = tl.where(pmask, s, -float("inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=0))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new)
            v = tl.load(V + kv_off, mask=m2, other=0.0).to(tl.float32)
            acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            m_i = m_new
        out = acc / l_i
        tl.store(O + b * stride_ob + h * stride_oh + d, out.to(O.dtype.element_ty), mask=dmask)


def paged_decode_attention_triton(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                                  meta: DecodeMeta, scale: float) -> torch.Tensor:
    if not HAVE_TRITON:
        raise RuntimeError("triton is not importable here; use paged_decode_attention_reference")
    B, nh, hd = q.shape
    nkv = k_pool.shape[0]
    q = q.contiguous()
    k_pool, v_pool = k_pool.contiguous(), v_pool.contiguous()
    bt = meta.block_tables.to(torch.int32).contiguous()
    lens = meta.seq_lens.to(torch.int32).contiguous()
    out = torch.empty_like(q)
    _paged_decode_kernel[(B, nh)](
        q, k_pool, v_pool, out, bt, lens, scale,
        q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1), bt.stride(0), out.stride(0), out.stride(1),
        REP=nh // nkv, HD=hd, HD_PAD=triton.next_power_of_2(hd), BS=meta.block_size)
    return out


def in_place_cpu(pool: torch.Tensor) -> bool:
    """Decode attention for this pool runs the C++ kernel (CPU, fp32): no gather buffers, no padding."""
    return pool.device.type == "cpu" and pool.dtype == torch.float32 and cpu_ops_available()


def paged_decode_attention_cpu(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, meta: DecodeMeta,
                               scale: float) -> torch.Tensor:
    return torch.ops.fullchain.paged_decode(q.contiguous(), k_pool, v_pool, meta.block_tables.contiguous(),
                                            meta.seq_lens.contiguous(), meta.block_size, scale)


def paged_decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, meta: DecodeMeta,
                           scale: float) -> torch.Tensor:
    """Triton on CUDA, the C++ kernel on CPU in fp32, the torch reference elsewhere (same signature, same
    result)."""
    if HAVE_TRITON and q.is_cuda:
        return paged_decode_attention_triton(q, k_pool, v_pool, meta, scale)
    if meta.index is None and in_place_cpu(k_pool):
        return paged_decode_attention_cpu(q, k_pool, v_pool, meta, scale)
    return paged_decode_attention_reference(q, k_pool, v_pool, meta, scale)
