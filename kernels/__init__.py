"""Triton kernels, each with a host/autograd wrapper and a torch `*_reference`.

Dispatch: the Triton kernel on CUDA tensors (or anywhere when TRITON_INTERPRET=1 is forced by a test),
the torch reference otherwise. The reference is both the CPU fallback and the test oracle. Two operations also have
a C++ CPU operator (csrc/, built by `cpu_ops`) that their dispatcher prefers on CPU: paged decode attention in fp32
and the many-adapter LoRA update.
"""
from kernels.fused_linear_ce import (linear_cross_entropy, linear_cross_entropy_reference, linear_token_losses,
                                     linear_token_losses_reference)
from kernels.rmsnorm import rms_norm, rms_norm_reference, rms_norm_triton

__all__ = ["rms_norm", "rms_norm_reference", "rms_norm_triton", "linear_cross_entropy",
           "linear_cross_entropy_reference", "linear_token_losses", "linear_token_losses_reference"]
