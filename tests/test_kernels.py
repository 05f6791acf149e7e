"""Triton kernels vs their torch references (TRITON_INTERPRET=1 on CPU, compiled on a GPU)."""
from __future__ import annotations

import pytest
import torch

from kernels.rmsnorm import HAVE_TRITON, rms_norm, rms_norm_reference, rms_norm_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(not HAVE_TRITON, reason="triton not importable")


@pytest.mark.parametrize("shape", [(3, 7, 37), (5, 256), (2, 1, 1000), (1, 13)])
def test_rmsnorm_forward_and_grads_match_reference(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, device=DEVICE, requires_grad=True)
    w = torch.randn(shape[-1], device=DEVICE, requires_grad=True)
    y = rms_norm_triton(x, w, 1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    yr = rms_norm_reference(x, w, 1e-5)
    yr.backward(g)
    torch.testing.assert_close(y, yr, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, x.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gw, w.grad, atol=1e-4, rtol=1e-4)


def test_rmsnorm_reference_is_llama_definition():
    x = torch.tensor([[3.0, 4.0]])
    w = torch.tensor([1.0, 2.0])
    # rms = sqrt((9 + 16) / 2) = 3.5355; y = x / rms * w
    expected = torch.tensor([[3.0 / 3.5355339, 8.0 / 3.5355339]])
    torch.testing.assert_close(rms_norm_reference(x, w, 0.0), expected, atol=1e-5, rtol=1e-5)


def _dispatch_cases():
    """(module, dispatcher, triton fn name, reference fn name, args on DEVICE) for every dispatcher."""
    import kernels.fused_linear_ce as ce
    import kernels.int4 as i4
    import kernels.lora as lo
    import kernels.paged_attention as pa
    import kernels.rmsnorm as rn

    torch.manual_seed(0)
    q, s, m = i4.quantize_int4(torch.randn(4, 8), 4)
    pool_k, pool_v = torch.randn(1, 8, 4, device=DEVICE), torch.randn(1, 8, 4, device=DEVICE)  # 2 blocks of 4
    tables, lens = torch.tensor([[1]], device=DEVICE), torch.tensor([3], device=DEVICE)
    return [
        (rn, rn.rms_norm, "rms_norm_triton", "rms_norm_reference",
         (torch.randn(3, 8, device=DEVICE), torch.randn(8, device=DEVICE), 1e-6)),
        (ce, ce.ce_rows, "ce_rows_triton", "ce_rows_reference",
         (torch.randn(3, 11, device=DEVICE), torch.tensor([1, -100, 4], device=DEVICE), -100)),
        (i4, i4.dequantize_int4, "dequantize_int4_triton", "dequantize_int4_reference",
         (q.to(DEVICE), s.to(DEVICE), m.to(DEVICE), 4)),
        (pa, pa.paged_decode_attention, "paged_decode_attention_triton", "paged_decode_attention_reference",
         (torch.randn(1, 2, 4, device=DEVICE), pool_k, pool_v, pa.decode_meta(tables, lens, 4, pool_k), 0.5)),
        (lo, lo.lora_apply, "lora_apply_triton", "lora_apply_reference",
         (torch.zeros(5, 6, device=DEVICE), torch.randn(5, 4, device=DEVICE), [0, 2, 3, 5],
          [torch.randn(2, 4, device=DEVICE)] * 2, [torch.randn(6, 2, device=DEVICE)] * 2, [None, None], [6])),
    ]


def test_dispatch_picks_triton_on_cuda_tensors_and_the_reference_elsewhere(monkeypatch):
    """Each public entry point runs the Triton kernel for CUDA tensors and the torch reference for any other
    (TRITON_INTERPRET=1, set for this test session, must not send CPU tensors to the interpreter), except paged
    decode attention in fp32 and the LoRA update on CPU, which run their C++ operators."""
    cpu_ops = {"kernels.paged_attention": "paged_decode_attention_cpu", "kernels.lora": "lora_apply_cpu"}
    for mod, dispatch, t_name, r_name, args in _dispatch_cases():
        calls = []
        kinds = [("triton", t_name), ("reference", r_name)]
        want = "triton" if DEVICE == "cuda" else "reference"
        if mod.__name__ in cpu_ops:
            kinds.append(("cpu", cpu_ops[mod.__name__]))
            want = "cpu" if DEVICE == "cpu" else want
        for kind, name in kinds:
            real = getattr(mod, name)
            monkeypatch.setattr(mod, name, lambda *a, _k=kind, _f=real: calls.append(_k) or _f(*a))
        dispatch(*args)
        assert calls == [want], (dispatch.__name__, calls)


def test_dispatched_rms_norm_matches_a_naive_computation():
    """The path `rms_norm` takes on this device, against RMSNorm written out one row at a time in Python floats
    (independent of both the kernel and the torch reference): y_i = x_i / sqrt(mean(x^2) + eps) * w_i."""
    import math

    torch.manual_seed(3)
    x = torch.randn(5, 37, device=DEVICE) * 3
    w = torch.randn(37, device=DEVICE)
    eps = 1e-5
    y = rms_norm(x, w, eps).cpu()
    expected = []
    for row in x.cpu().tolist():
        inv = 1.0 / math.sqrt(sum(v * v for v in row) / len(row) + eps)
        expected.append([v * inv * wi for v, wi in zip(row, w.cpu().tolist())])
    torch.testing.assert_close(y, torch.tensor(expected), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n, V", [(7, 33), (19, 1000), (5, 4099)])
def test_ce_rows_triton_matches_reference(n, V):
    """The per-row softmax/loss/gradient kernel of the fused projection + cross-entropy, odd shapes, an ignored
    row, fp32 and bf16."""
    from kernels.fused_linear_ce import ce_rows_reference, ce_rows_triton

    torch.manual_seed(n)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        logits = (torch.randn(n, V) * 3).to(dtype)
        targets = torch.randint(0, V, (n,))
        targets[1] = -100
        a, b = logits.clone(), logits.clone()
        la = ce_rows_reference(a, targets, -100)
        lb = ce_rows_triton(b, targets, -100)
        torch.testing.assert_close(lb, la, atol=tol, rtol=tol)
        torch.testing.assert_close(b.float(), a.float(), atol=tol, rtol=tol)
        assert la[1] == 0 and (a[1] == 0).all()  # an ignored row: no loss, no gradient


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_linear_cross_entropy_forward_and_grads(dtype):
    """Chunked fused projection + loss against the whole-logits definition: loss sum, d/dhidden, d/dweight,
    with chunks that do not divide the rows and a scaled upstream gradient."""
    from kernels.fused_linear_ce import linear_cross_entropy, linear_cross_entropy_reference

    torch.manual_seed(0)
    h = torch.randn(37, 24).to(dtype).requires_grad_()
    w = (torch.randn(301, 24) * 0.3).requires_grad_()
    t = torch.randint(0, 301, (37,))
    t[[0, 17]] = -100
    loss = linear_cross_entropy(h, w, t, chunk=8)
    (loss * 0.5).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = linear_cross_entropy_reference(h, w, t)
    (ref * 0.5).backward()
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert loss.item() == pytest.approx(ref.item(), rel=tol)
    torch.testing.assert_close(gh.float(), h.grad.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(gw, w.grad, atol=tol * 4, rtol=tol)
    assert gw.dtype == torch.float32  # fp32 master weights get fp32 gradients


@pytest.mark.parametrize("out, n, group", [(7, 96, 32), (33, 128, 64), (1, 10, 2)])
def test_int4_dequant_triton_matches_reference_and_roundtrips(out, n, group):
    """QLoRA's group-wise int4 format: the Triton dequantizer equals the torch one (odd shapes); a weight
    round-trips to within half a step of its group, and codes fill the 16 levels."""
    from kernels.int4 import dequantize_int4_reference, dequantize_int4_triton, quantize_int4

    torch.manual_seed(out)
    w = torch.randn(out, n)
    q, s, m = quantize_int4(w, group)
    assert q.dtype == torch.uint8 and q.shape == (out, n // 2) and s.shape == m.shape == (out, n // group)
    ref = dequantize_int4_reference(q, s, m, group)
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 8e-3)):  # bf16: one unit of its last place
        torch.testing.assert_close(dequantize_int4_triton(q, s, m, group, dtype).float(),
                                   dequantize_int4_reference(q, s, m, group, dtype).float(), atol=tol, rtol=tol)
    step = s.float().repeat_interleave(group, dim=1)
    assert ((ref - w).abs() <= step / 2 + 1e-3).all()
    with pytest.raises(ValueError, match="group size"):
        quantize_int4(w, 3)


def test_int4_linear_grads_match_dequantized_reference():
    from kernels.int4 import int4_linear, int4_linear_reference, quantize_int4

    torch.manual_seed(0)
    q, s, m = quantize_int4(torch.randn(24, 64), 16)
    x = torch.randn(5, 3, 64, requires_grad=True)
    y = int4_linear(x, q, s, m, 16)
    g = torch.randn_like(y)
    y.backward(g)
    gx = x.grad.clone()
    x.grad = None
    yr = int4_linear_reference(x, q, s, m, 16)
    yr.backward(g)
    torch.testing.assert_close(y, yr, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, x.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_token_losses_forward_and_grads(dtype):
    """Per-row fused projection + cross-entropy (preference losses' sequence log-probs): rows in several chunks,
    an ignored row, a non-uniform upstream gradient (recomputed in backward)."""
    from kernels.fused_linear_ce import linear_token_losses, linear_token_losses_reference

    torch.manual_seed(1)
    h = torch.randn(37, 24, dtype=dtype, requires_grad=True)
    w = torch.randn(301, 24, requires_grad=True)
    t = torch.randint(0, 301, (37,))
    t[5] = -100
    up = torch.randn(37)
    out = linear_token_losses(h, w, t, chunk=16)
    (out * up).sum().backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = linear_token_losses_reference(h, w, t)
    (ref * up).sum().backward()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert out[5] == 0 and out.dtype == torch.float32
    torch.testing.assert_close(out, ref.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(gh.float(), h.grad.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(gw, w.grad, atol=tol * 10, rtol=tol)


@pytest.mark.parametrize("m, n, k", [(1, 7, 40), (13, 33, 96), (64, 48, 576)])
def test_int8_linear_kernels_match_the_dequantized_reference(m, n, k):
    """Per-channel int8: the Triton kernel (interpreted on CPU) and torch's weight-only kernel equal the
    dequantized fp32 matmul; the int8 x int8 kernels (activations quantized per row too) stay within their
    rounding, with and without outlier channels (those exact: a channel 100x the rest costs nothing); the round
    trip stays within half a step of each row's scale."""
    from kernels.int8 import INT8_CPU_KERNELS, Int8Weight, int8_linear_reference, int8_linear_triton, quantize_int8

    torch.manual_seed(0)
    w, x = torch.randn(n, k), torch.randn(m, k)
    w[0] = 0.0  # an all-zero row
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and s[0] == 1.0
    assert ((q.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-6).all()
    ref = int8_linear_reference(x, q, s)
    if HAVE_TRITON:
        torch.testing.assert_close(int8_linear_triton(x, q, s), ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(Int8Weight(w, "weight_only").linear(x), ref, atol=1e-4, rtol=1e-4)
    q7, s7 = quantize_int8(w, 63)
    assert q7.abs().max() <= 63 and ((q7.float() * s7[:, None] - w).abs() <= s7[:, None] / 2 + 1e-6).all()
    exact = x @ w.t()
    spiky = x.clone()
    spiky[:, [1, k - 1]] *= 100.0                          # two massive channels
    for kern in ("int_mm", "dynamic", "auto"):
        y = Int8Weight(w, kern).linear(x[None])[0]          # leading dims are kept
        assert y.shape == ref.shape and y.dtype == x.dtype
        assert (y - exact).norm() / exact.norm() < 0.03, kern
        plain = Int8Weight(w, kern).linear(spiky)
        split = Int8Weight(w, kern, torch.tensor([1, k - 1])).linear(spiky)
        want = spiky @ w.t()
        assert (split - want).norm() < (plain - want).norm(), kern
        assert (split - want).norm() / want.norm() < 0.03, kern
    with pytest.raises(ValueError, match="int8 kernel"):
        Int8Weight(w, "nope")
    assert set(INT8_CPU_KERNELS) >= {"auto", "int_mm", "dynamic", "weight_only"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("slices, runs", [([7], [3, 0, 5]), ([9, 5, 5], [1, 70, 2]), ([13, 13], [130, 4])])
def test_lora_apply_kernels_match_the_block_diagonal_update(slices, runs, dtype):
    """Many adapters over one projection, in place: the torch reference, the C++ operator (CPU) and the Triton
    kernel (interpreted on CPU, fp32) all equal the update written out with a block-diagonal B, y[run] += x[run]
    A^T Bd^T (then x g for DoRA). Odd sizes, an empty run, runs longer than a tile (C++ 64 rows, Triton 16), a fused
    projection's slices, a different rank per adapter, and rows outside every run left exactly as they were.
    Inference only: no gradients flow through served adapters."""
    from kernels.cpu_ops import cpu_ops_available
    from kernels.lora import lora_apply, lora_apply_cpu, lora_apply_reference, lora_apply_triton

    torch.manual_seed(len(runs) + sum(slices))
    k, out, d_in = len(slices), sum(slices), 11
    bounds, start = [], 2                      # rows 0-1 and the last 3 belong to no adapter (base requests)
    for n in runs:
        bounds += [start, start + n]
        start += n
    N = start + 3
    ranks = [2 + i for i in range(len(runs))]
    a = [torch.randn(k * r, d_in, dtype=dtype) for r in ranks]
    b = [torch.randn(out, r, dtype=dtype) for r in ranks]
    g = [None] * len(runs)
    g[-1] = torch.rand(out, dtype=dtype) + 0.5     # DoRA on the last adapter
    x, y0 = torch.randn(N, d_in, dtype=dtype), torch.randn(N, out, dtype=dtype)
    want = y0.double().clone()
    for i, r in enumerate(ranks):
        bd, off = torch.zeros(out, k * r, dtype=torch.float64), 0
        for j, n in enumerate(slices):
            bd[off:off + n, j * r:(j + 1) * r] = b[i][off:off + n].double()
            off += n
        s, e = bounds[2 * i], bounds[2 * i + 1]
        want[s:e] += x[s:e].double() @ a[i].double().t() @ bd.t()
        if g[i] is not None:
            want[s:e] *= g[i].double()
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=0.25, rtol=0.02)
    impls = [lora_apply_reference, lora_apply]
    assert cpu_ops_available()
    impls += [lora_apply_cpu, lambda *args: lora_apply_cpu(*args, tile=1)]
    if HAVE_TRITON and dtype == torch.float32:
        impls.append(lambda y, *args: _on_device(lora_apply_triton, y, *args))
    for impl in impls:
        y = y0.clone()
        got = impl(y, x, bounds, a, b, g, slices)
        y = y if got is None else got
        torch.testing.assert_close(y.double().cpu(), want, **tol)
        assert torch.equal(y[:2].cpu(), y0[:2]) and torch.equal(y[-3:].cpu(), y0[-3:])


def _on_device(fn, y, *args):
    """`fn` run in place on a DEVICE copy of `y`; that copy."""
    yd = y.to(DEVICE)
    fn(yd, *(_to(t) for t in args))
    return yd


def _to(t):
    if isinstance(t, torch.Tensor):
        return t.to(DEVICE)
    if isinstance(t, list):
        return [_to(v) for v in t]
    return t
