"""Per-channel int8 weights for serving: `W ~= q * s[:, None]`, q int8 in [-127, 127], one fp32 scale per output
row (symmetric: |W| max of the row / 127).

    y = x @ (q * s).T

Three implementations of one contract:
- `int8_linear_reference`: dequantize in torch and matmul in fp32 (the oracle and the fallback);
- `int8_linear_triton`: the Triton kernel (GPU): tiles of x and q, q dequantized by its row scale inside the loop;
- on CPU, `Int8Weight.linear` uses the kernel `INT8_CPU_KERNEL` names, both of them torch's own:
  "dynamic" - fbgemm's int8 x int8 GEMM with the activations quantized on the fly (`quantized.linear_dynamic`;
  rows scaled to one absmax first, so per row in effect), or "weight_only" - `aten._weight_int8pack_mm` (fp32 activations, int8 weights
  widened in the kernel). bench/int8_kernels.py measures both against the fp32 matmul.
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - triton is a dependency; CPU-only installs may lack it
    HAVE_TRITON = False


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 (N, K), scales fp32 (N,)): symmetric per output row; an all-zero row gets scale 1."""
    w = w.detach().float()
    amax = w.abs().amax(dim=1)
    scales = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.clamp(torch.round(w / scales[:, None]), -127, 127).to(torch.int8)
    return q, scales


def int8_linear_reference(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    w = q.float() * scales.float()[:, None]
    return (x.float() @ w.t()).to(x.dtype)


if HAVE_TRITON:
    @triton.jit
    def _int8_mm_kernel(x_ptr, q_ptr, s_ptr, y_ptr, M, N, K, sxm, sxk, sqn, sqk, sym, syn,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        pid_m, pid_n = tl.program_id(0), tl.program_id(1)
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :] * sxk,
                        mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0).to(tl.float32)
            q = tl.load(q_ptr + rn[None, :] * sqn + rk[:, None] * sqk,
                        mask=(rn[None, :] < N) & (rk[:, None] < K), other=0).to(tl.float32)  # (BK, BN)
            acc += tl.dot(x, q)
        s = tl.load(s_ptr + rn, mask=rn < N, other=0.0)
        acc = acc * s[None, :]
        tl.store(y_ptr + rm[:, None] * sym + rn[None, :] * syn, acc.to(y_ptr.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))


def int8_linear_triton(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (M, K) float, q (N, K) int8, scales (N,) -> (M, N) in x's dtype."""
    M, K = x.shape
    N = q.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    BM, BN, BK = 16, 32, 32
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN))
    _int8_mm_kernel[grid](x, q, scales.float(), y, M, N, K, x.stride(0), x.stride(1), q.stride(0), q.stride(1),
                          y.stride(0), y.stride(1), BM=BM, BN=BN, BK=BK)
    return y


INT8_CPU_KERNELS = ("dynamic", "weight_only")


class Int8Weight:
    """One projection's int8 weight, prepared for the kernel that runs it (`kernel`: on CPU one of
    INT8_CPU_KERNELS; on CUDA the Triton kernel)."""

    def __init__(self, w: torch.Tensor, kernel: str = "dynamic"):
        if kernel not in INT8_CPU_KERNELS:
            raise ValueError(f"int8 kernel {kernel!r}: use one of {INT8_CPU_KERNELS}")
        self.q, self.scales = quantize_int8(w)
        self.q, self.scales = self.q.to(w.device), self.scales.to(w.device)
        self.kernel = kernel if w.device.type == "cpu" else "triton"
        self.out_features, self.in_features = w.shape
        self.packed = None
        if self.kernel == "dynamic":
            qt = torch._make_per_channel_quantized_tensor(
                self.q, self.scales.double(), torch.zeros(self.out_features, dtype=torch.long), 0)
            self.packed = torch.ops.quantized.linear_prepack(qt, None)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.kernel == "dynamic":
            # fbgemm quantizes its input per tensor (7-bit: reduce_range keeps AVX2's u8 x s8 pair sums inside
            # int16); rows scaled to one absmax first make that per row: one token's outlier no longer coarsens
            # every other token of the batch
            r = x2.float().abs().amax(dim=1, keepdim=True).clamp_min(1e-12)  # (M, 1)
            y = (torch.ops.quantized.linear_dynamic(x2.float() / r, self.packed, True) * r).to(x.dtype)
        elif self.kernel == "weight_only":
            y = torch._weight_int8pack_mm(x2, self.q, self.scales.to(x.dtype))
        elif HAVE_TRITON:
            y = int8_linear_triton(x2.contiguous(), self.q, self.scales)
        else:
            y = int8_linear_reference(x2, self.q, self.scales)
        return y.view(*shape[:-1], self.out_features)
