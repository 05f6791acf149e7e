"""4-bit frozen linear layers (QLoRA's base): `kernels.int4`'s group-wise format inside an nn.Module.

`quantize_linears(model, names, group)` swaps the matching `nn.Linear`s for `Int4Linear`s in place; LoRA (peft)
then wraps them like any linear layer (`peft_custom_modules`) and trains its adapters in full precision while the
base weights stay packed (4.56 bits per weight; a bf16 copy of one layer's weight exists only inside its matmul).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from kernels.int4 import dequantize_int4, int4_linear, quantize_int4


class Int4Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, group: int, compute_dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features, self.group = in_features, out_features, group
        self.compute_dtype = compute_dtype
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(out_features, in_features // group, dtype=torch.float16))
        self.register_buffer("mins", torch.zeros(out_features, in_features // group, dtype=torch.float16))

    @classmethod
    def from_linear(cls, lin: nn.Linear, group: int, compute_dtype: torch.dtype) -> "Int4Linear":
        if lin.bias is not None:
            raise ValueError("Int4Linear holds bias-free projections (Llama's)")
        m = cls(lin.in_features, lin.out_features, group, compute_dtype)
        m.qweight, m.scales, m.mins = quantize_int4(lin.weight.detach(), group)
        return m

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (compute dtype), for code that inspects `.weight` (peft's dtype/device
        checks, merging); the forward never materialises it outside its matmul."""
        return dequantize_int4(self.qweight, self.scales, self.mins, self.group, self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.compute_dtype)
        return int4_linear(x, self.qweight, self.scales, self.mins, self.group)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int4 group={self.group}"


def quantize_linears(model: nn.Module, names: list[str], group: int = 64,
                     compute_dtype: torch.dtype = torch.bfloat16) -> int:
    """Replace every `nn.Linear` whose attribute name is in `names` (q_proj, ..., down_proj) by an Int4Linear;
    returns how many. The model's other weights (embeddings, norms, head) keep their dtype."""
    targets = [(parent, attr, child) for parent in model.modules() for attr, child in parent.named_children()
               if attr in names and isinstance(child, nn.Linear)]
    for parent, attr, child in targets:
        setattr(parent, attr, Int4Linear.from_linear(child, group, compute_dtype))
    return len(targets)


def peft_custom_modules() -> dict:
    """peft's LoRA layer for Int4Linear (it wraps any module with in/out_features and a forward)."""
    from peft.tuners.lora.layer import Linear

    return {Int4Linear: Linear}
