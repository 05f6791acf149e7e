"""Many LoRA adapters over one projection's output (Punica / S-LoRA's segmented matmul), in place:

    for each run of rows [s, e) that share adapter i:   u = x[s:e] A_i^T    (e - s, k r)
        y[s:e, slice j] += u[:, j r:(j+1) r] B_i[slice j]^T                  then, DoRA: y[s:e] *= g_i

A fused projection (q|k|v, gate|up) has k output slices; each slice's r rows of A_i are stacked into one (k r, in)
matrix, and B_i is kept compact, (out, r): slice j's output rows multiply only its own r columns of u. The runner
orders a step's rows by adapter, so runs are contiguous.

`lora_apply` picks the implementation: the C++ operator (csrc/lora_cpu.cpp: all runs in one call, tiles of rows
spread over the threads, each tile's matmuls single-threaded) on CPU; the Triton kernel on CUDA (one program per
(tile of rows, block of outputs), with block-diagonal B so each program is two dots); `lora_apply_reference`, the
per-run torch matmuls, elsewhere and as the tests' oracle.
"""
from __future__ import annotations

import torch

from kernels.cpu_ops import cpu_ops_available

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # noqa: BLE001 - triton missing or broken on this platform
    HAVE_TRITON = False

CPU_TILE = 64          # rows per task of the C++ operator: 64 decode rows over 4 adapters are 4 tasks


def lora_apply_reference(y: torch.Tensor, x: torch.Tensor, bounds: list[int], a: list[torch.Tensor],
                         b: list[torch.Tensor], g: list[torch.Tensor | None], slices: list[int]) -> None:
    """y (N, out) += each run's update, in place. bounds [s0, e0, s1, e1, ...]; a[i] (k r_i, in); b[i] (out, r_i);
    g[i] (out,) or None; slices: the k output sizes."""
    for i in range(len(a)):
        s, e = bounds[2 * i], bounds[2 * i + 1]
        u = x[s:e] @ a[i].t()  # (e - s, k r)
        r, off = b[i].shape[1], 0
        for j, n in enumerate(slices):
            y[s:e, off:off + n].addmm_(u[:, j * r:(j + 1) * r], b[i][off:off + n].t())
            off += n
        if g[i] is not None:
            y[s:e].mul_(g[i])


if HAVE_TRITON:

    @triton.jit
    def _lora_kernel(X, Y, A, B, TILE_RUN, TILE_START, TILE_ROWS, K_IN, N_OUT, KR,
                     sxm, sym, sa_run, sa_r, sb_run, sb_n,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, KR_PAD: tl.constexpr):
        t, nb = tl.program_id(0), tl.program_id(1)
        run = tl.load(TILE_RUN + t)
        start = tl.load(TILE_START + t)
        rows = tl.load(TILE_ROWS + t)
        m = tl.arange(0, BLOCK_M)
        j = tl.arange(0, KR_PAD)
        n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
        u = tl.zeros((BLOCK_M, KR_PAD), dtype=tl.float32)
        for k0 in range(0, K_IN, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(X + (start + m)[:, None] * sxm + kk[None, :],
                        mask=(m[:, None] < rows) & (kk[None, :] < K_IN), other=0.0)            # (BLOCK_M, BLOCK_K)
            a = tl.load(A + run * sa_run + j[None, :] * sa_r + kk[:, None],
                        mask=(j[None, :] < KR) & (kk[:, None] < K_IN), other=0.0)              # (BLOCK_K, KR_PAD)
            u += tl.dot(x, a)
        bt = tl.load(B + run * sb_run + n[None, :] * sb_n + j[:, None],
                     mask=(j[:, None] < KR) & (n[None, :] < N_OUT), other=0.0)                 # (KR_PAD, BLOCK_N)
        d = tl.dot(u.to(bt.dtype), bt)
        mask = (m[:, None] < rows) & (n[None, :] < N_OUT)
        yp = Y + (start + m)[:, None] * sym + n[None, :]
        y = tl.load(yp, mask=mask, other=0.0)
        tl.store(yp, (y.to(tl.float32) + d).to(y.dtype), mask=mask)


def lora_apply_triton(y: torch.Tensor, x: torch.Tensor, bounds: list[int], a: list[torch.Tensor],
                      b: list[torch.Tensor], g: list[torch.Tensor | None], slices: list[int],
                      block_m: int = 16, block_n: int = 64, block_k: int = 32) -> None:
    if not HAVE_TRITON:
        raise RuntimeError("triton is not importable here; use lora_apply_reference")
    R, k = len(a), len(slices)
    if R == 0:
        return
    kr = max(t.shape[0] for t in a)
    out, d_in = y.shape[1], x.shape[1]
    a_st = torch.zeros(R, kr, d_in, dtype=x.dtype, device=x.device)
    b_st = torch.zeros(R, out, kr, dtype=x.dtype, device=x.device)   # block-diagonal (out, k r) per run
    for i in range(R):
        a_st[i, :a[i].shape[0]] = a[i]
        r, off = b[i].shape[1], 0
        for j, n in enumerate(slices):
            b_st[i, off:off + n, j * r:(j + 1) * r] = b[i][off:off + n]
            off += n
    tiles = [(i, s, min(block_m, bounds[2 * i + 1] - s))
             for i in range(R) for s in range(bounds[2 * i], bounds[2 * i + 1], block_m)]
    if tiles:
        meta = torch.tensor(tiles, dtype=torch.int64, device=x.device).t().contiguous()  # (3, tiles)
        x, y2 = x.contiguous(), y
        assert y.stride(1) == 1, "lora_apply_triton writes rows of a row-major y"
        _lora_kernel[(len(tiles), triton.cdiv(out, block_n))](
            x, y2, a_st, b_st, meta[0], meta[1], meta[2], d_in, out, kr,
            x.stride(0), y2.stride(0), a_st.stride(0), a_st.stride(1), b_st.stride(0), b_st.stride(1),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, KR_PAD=max(16, triton.next_power_of_2(kr)))
    for i in range(R):
        if g[i] is not None:
            y[bounds[2 * i]:bounds[2 * i + 1]].mul_(g[i])


def lora_apply_cpu(y: torch.Tensor, x: torch.Tensor, bounds: list[int], a: list[torch.Tensor],
                   b: list[torch.Tensor], g: list[torch.Tensor | None], slices: list[int], tile: int = CPU_TILE) -> None:
    empty = y.new_empty(0)
    torch.ops.fullchain.lora_apply(y, x, bounds, a, b, [empty if t is None else t for t in g], slices, tile)


def lora_apply(y: torch.Tensor, x: torch.Tensor, bounds: list[int], a: list[torch.Tensor], b: list[torch.Tensor],
               g: list[torch.Tensor | None], slices: list[int]) -> None:
    """The C++ operator on CPU, Triton on CUDA, the torch reference elsewhere (same arguments, same result)."""
    if y.device.type == "cpu" and cpu_ops_available():
        lora_apply_cpu(y, x, bounds, a, b, g, slices)
    elif HAVE_TRITON and y.is_cuda:
        lora_apply_triton(y, x, bounds, a, b, g, slices)
    else:
        lora_apply_reference(y, x, bounds, a, b, g, slices)
