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


def test_dispatch_uses_reference_on_cpu_tensors():
    x = torch.randn(4, 8)
    w = torch.ones(8)
    torch.testing.assert_close(rms_norm(x, w, 1e-6), rms_norm_reference(x, w, 1e-6))
