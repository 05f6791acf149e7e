"""Per-channel int8 weights for serving: `W ~= q * s[:, None]`, q int8 in [-127, 127], one fp32 scale per output
row (symmetric: |W| max of the row / 127).

    y = x @ (q * s).T

Three implementations of one contract:
- `int8_linear_reference`: dequantize in torch and matmul in fp32 (the oracle and the fallback);
- `int8_linear_triton`: the Triton kernel (GPU): tiles of x and q, q dequantized by its row scale inside the loop;
- on CPU, `Int8Weight.linear` uses one of `INT8_CPU_KERNELS`, all of them torch's own: "int_mm" - oneDNN's
  int8 x int8 GEMM (`aten._int_mm`) on activations quantized symmetrically per row; "dynamic" - fbgemm's
  (`quantized.linear_dynamic`; rows scaled to one absmax first, so per row in effect); "weight_only" -
  `aten._weight_int8pack_mm` (fp32 activations, int8 weights widened in the kernel); "auto" - the faster of
  the first two, measured here once. bench/int8_kernels.py measures them all against the fp32 matmul.
- `outliers`: a few input channels kept in the compute dtype (see `Int8Weight`).
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - triton is a dependency; CPU-only installs may lack it
    HAVE_TRITON = False


def quantize_int8(w: torch.Tensor, qmax: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 (N, K) in [-qmax, qmax], scales fp32 (N,)): symmetric per output row; an all-zero row gets
    scale 1."""
    w = w.detach().float()
    amax = w.abs().amax(dim=1)
    scales = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    q = torch.clamp(torch.round(w / scales[:, None]), -qmax, qmax).to(torch.int8)
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


INT8_CPU_KERNELS = ("auto", "int_mm", "dynamic", "weight_only")


def _seconds(fn, reps: int) -> float:
    import time

    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


_AUTO: str | None = None


def auto_cpu_kernel() -> str:
    """The faster of the two int8 x int8 kernels on this CPU, measured once per process at a decode-sized matmul
    (64 x 576 -> 1536): `_int_mm` is oneDNN's (on 2 Sapphire Rapids cores with AMX ~1.3 TFLOP/s, 5x the fp32
    matmul; on AVX2 ~3 GFLOP/s), fbgemm's `dynamic` ~2.8x the fp32 matmul on AVX2."""
    global _AUTO
    if _AUTO is None:
        weight, x = torch.randn(1536, 576), torch.randn(64, 576)
        dyn, mm = Int8Weight(weight, "dynamic"), Int8Weight(weight, "int_mm")
        dyn.linear(x), mm.linear(x)
        t_dyn = _seconds(lambda: dyn.linear(x), 5)
        t_mm = _seconds(lambda: mm.linear(x), 1)
        if t_mm < 2 * t_dyn:     # only a close call is worth more repetitions (AVX2's one call is ~20 ms)
            t_mm = _seconds(lambda: mm.linear(x), 5)
        _AUTO = "int_mm" if t_mm < t_dyn else "dynamic"
    return _AUTO


def _vnni() -> bool:
    return bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())


class Int8Weight:
    """One projection's int8 weight, prepared for the kernel that runs it (`kernel`: on CPU one of
    INT8_CPU_KERNELS; on CUDA the Triton kernel).

    `outliers`: input channels kept out of the int8 product, (k,) indices. A few channels of a transformer's
    activations run 10-100x the rest (the massive activations at the down projection's input above all); one
    scale per token then spends most of the 8 bits on them. Those channels go through a small fp32 matmul
    instead (LLM.int8()'s decomposition, with the channels fixed ahead by calibration), and the int8 part sees
    the rest: on SmolLM2-135M, 32 channels of 576/1536 take the perplexity cost from +3.7% to +0.9%."""

    def __init__(self, w: torch.Tensor, kernel: str = "auto", outliers: torch.Tensor | None = None):
        if kernel not in INT8_CPU_KERNELS:
            raise ValueError(f"int8 kernel {kernel!r}: use one of {INT8_CPU_KERNELS}")
        w = w.detach()
        self.outliers = self.w_out = self.keep = None
        if outliers is not None and len(outliers):
            self.outliers = outliers.to(device=w.device, dtype=torch.long)
            self.w_out = w.index_select(1, self.outliers).contiguous()     # (N, k) in the compute dtype
            self.keep = torch.ones(w.shape[1], dtype=w.dtype, device=w.device).index_fill_(0, self.outliers, 0)
            w = w.index_fill(1, self.outliers, 0)
        if w.device.type != "cpu":
            self.kernel = "triton"
        else:
            self.kernel = auto_cpu_kernel() if kernel == "auto" else kernel
        # fbgemm without VNNI sums pairs of u8 x s8 products in int16 (vpmaddubsw): 255 x 127 x 2 overflows it.
        # Its usual cure, 7-bit activations (reduce_range), costs +3.0% perplexity here; 7-bit weights
        # (255 x 63 x 2 = 32130 fits) keep the activations' 8 bits and cost less (weights have no outliers)
        self.weight_bits = 7 if self.kernel == "dynamic" and not _vnni() else 8
        self.q, self.scales = quantize_int8(w, 2 ** (self.weight_bits - 1) - 1)
        self.q, self.scales = self.q.to(w.device), self.scales.to(w.device)
        self.out_features, self.in_features = w.shape
        self.packed = self.q_t = None
        self.q_t = self.q.t()                    # (K, N) column-major, as _int_mm takes it
        if self.kernel == "dynamic":
            qt = torch._make_per_channel_quantized_tensor(
                self.q, self.scales.double(), torch.zeros(self.out_features, dtype=torch.long), 0)
            self.packed = torch.ops.quantized.linear_prepack(qt, None)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        xo = None
        if self.outliers is not None:
            xo = x2.index_select(1, self.outliers)
            x2 = x2 * self.keep                  # the row scales then come from the other channels
        if self.kernel == "dynamic":
            # fbgemm quantizes its input per tensor; rows scaled to one absmax first make that per row: one
            # token's outlier no longer coarsens every other token of the batch
            r = x2.float().abs().amax(dim=1, keepdim=True).clamp_min(1e-12)  # (M, 1)
            y = torch.ops.quantized.linear_dynamic(x2.float() / r, self.packed, False) * r
        elif self.kernel == "int_mm":
            # symmetric per row: x ~= xq * r / 127;  y = (xq @ q^T) * r / 127 * s
            xf = x2.float()
            r = xf.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
            xq = torch.round(xf / r).to(torch.int8)
            y = torch._int_mm(xq, self.q_t).float().mul_(r).mul_(self.scales)
        elif self.kernel == "weight_only":
            y = torch._weight_int8pack_mm(x2, self.q, self.scales.to(x.dtype))
        elif HAVE_TRITON:
            y = int8_linear_triton(x2.contiguous(), self.q, self.scales)
        else:
            y = int8_linear_reference(x2, self.q, self.scales)
        y = y.to(x.dtype)
        if xo is not None:
            y.addmm_(xo, self.w_out.t())         # every kernel above returns a fresh contiguous (M, out)
        return y.view(*shape[:-1], self.out_features)
