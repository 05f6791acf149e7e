"""Group-wise 4-bit weights (QLoRA's frozen base; the serving kernels read the same format).

Format of a (out, in) weight with group size g (in % g == 0, g even):
  qweight  uint8 (out, in / 2)   two 4-bit codes per byte: column 2j in the low nibble, 2j+1 in the high one
  scales   fp16  (out, in / g)   w ~= code * scale + min, code in 0..15 (asymmetric: min/max of each group)
  mins     fp16  (out, in / g)
4.56 bits per weight at g = 64 (0.5 byte + two fp16 per 64 weights) against 16 for bf16.

`dequantize_int4` is the Triton kernel `_dequant_kernel` on CUDA (one program per row block x column block) and
`dequantize_int4_reference` in torch elsewhere; both are tested against each other under `TRITON_INTERPRET=1`.
`int4_linear(x, qweight, scales, mins, g)` is y = x @ W^T with W dequantized in forward and again in backward
(only the packed weight is kept between them), gradients to x only: the base is frozen.
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # noqa: BLE001 - triton missing or broken on this platform
    HAVE_TRITON = False


def quantize_int4(w: torch.Tensor, group: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(qweight, scales, mins) of `w` (out, in); rounding to the nearest code of each group's 16 levels."""
    out, n = w.shape
    if n % group or group % 2:
        raise ValueError(f"int4 group size {group} must be even and divide the input dim {n}")
    wg = w.float().reshape(out, n // group, group)  # (out, G, g)
    lo, hi = wg.amin(-1), wg.amax(-1)
    scales = ((hi - lo) / 15).clamp(min=1e-8).half()
    mins = lo.half()
    codes = ((wg - mins.float()[..., None]) / scales.float()[..., None]).round().clamp(0, 15).to(torch.uint8)
    codes = codes.reshape(out, n)
    qweight = codes[:, 0::2] | (codes[:, 1::2] << 4)  # (out, in / 2)
    return qweight.contiguous(), scales, mins


def dequantize_int4_reference(qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group: int,
                              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    out, half = qweight.shape
    codes = torch.stack([qweight & 0xF, qweight >> 4], dim=-1).reshape(out, half * 2)  # (out, in)
    # fp32 arithmetic, one rounding to `dtype` at the end (as the kernel does)
    w = codes.reshape(out, -1, group).float() * scales.float()[..., None] + mins.float()[..., None]
    return w.reshape(out, half * 2).to(dtype)


if HAVE_TRITON:

    @triton.jit
    def _dequant_kernel(Q, S, M, W, out, n, group, BR: tl.constexpr, BC: tl.constexpr):
        rows = tl.program_id(0) * BR + tl.arange(0, BR)
        cols = tl.program_id(1) * BC + tl.arange(0, BC)  # columns of the full-width weight
        mask = (rows[:, None] < out) & (cols[None, :] < n)
        byte = tl.load(Q + rows[:, None] * (n // 2) + cols[None, :] // 2, mask=mask, other=0).to(tl.int32)
        code = tl.where(cols[None, :] % 2 == 0, byte & 0xF, byte >> 4).to(tl.float32)
        g = cols[None, :] // group
        s = tl.load(S + rows[:, None] * (n // group) + g, mask=mask, other=0.0).to(tl.float32)
        m = tl.load(M + rows[:, None] * (n // group) + g, mask=mask, other=0.0).to(tl.float32)
        tl.store(W + rows[:, None] * n + cols[None, :], (code * s + m).to(W.dtype.element_ty), mask=mask)


def dequantize_int4_triton(qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group: int,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if not HAVE_TRITON:
        raise RuntimeError("triton is not importable here; use dequantize_int4_reference")
    out, half = qweight.shape
    n = half * 2
    w = torch.empty(out, n, dtype=dtype, device=qweight.device)
    BR, BC = 16, 64
    _dequant_kernel[(triton.cdiv(out, BR), triton.cdiv(n, BC))](qweight, scales, mins, w, out, n, group,
                                                               BR=BR, BC=BC)
    return w


def dequantize_int4(qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Triton on CUDA, the torch reference elsewhere (same contract)."""
    if HAVE_TRITON and qweight.is_cuda:
        return dequantize_int4_triton(qweight, scales, mins, group, dtype)
    return dequantize_int4_reference(qweight, scales, mins, group, dtype)


class _Int4Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, qweight, scales, mins, group: int):
        ctx.save_for_backward(qweight, scales, mins)
        ctx.group = group
        return x @ dequantize_int4(qweight, scales, mins, group, x.dtype).t()

    @staticmethod
    def backward(ctx, grad_out):
        qweight, scales, mins = ctx.saved_tensors
        w = dequantize_int4(qweight, scales, mins, ctx.group, grad_out.dtype)  # again: not kept since forward
        return grad_out @ w, None, None, None, None


def int4_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor,
                group: int) -> torch.Tensor:
    return _Int4Linear.apply(x, qweight, scales, mins, group)


def int4_linear_reference(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor,
                          group: int) -> torch.Tensor:
    return x @ dequantize_int4_reference(qweight, scales, mins, group, x.dtype).t()
