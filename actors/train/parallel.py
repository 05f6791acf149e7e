"""Parallel plan applied in one ordered function (torchtitan style):
tensor parallel -> activation checkpointing -> compile -> data parallel.

Only data parallel exists so far; ParallelConfig rejects tp/pp > 1, and tensor/pipeline parallelism are
added here without touching the loop.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from actors.train.config import ParallelConfig


def apply_tp(model: nn.Module, tp: int) -> nn.Module:
    if tp != 1:
        raise NotImplementedError("parallel.tp > 1 is not implemented yet")
    return model


def apply_ac(model: nn.Module, cfg: ParallelConfig) -> nn.Module:
    """Recompute each decoder layer in backward: trades ~30% more compute for activation memory."""
    if not cfg.activation_checkpointing:
        return model
    from torch.utils.checkpoint import checkpoint

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in base.model.layers:
        fwd = layer.forward

        def wrapped(*args, _fwd=fwd, **kw):
            return checkpoint(_fwd, *args, use_reentrant=False, **kw)

        layer.forward = wrapped
    return model


def apply_compile(model: nn.Module, cfg: ParallelConfig) -> nn.Module:
    return torch.compile(model) if cfg.compile else model


def apply_dp(model: nn.Module, cfg: ParallelConfig, prepare=None) -> nn.Module:
    """Data parallel: `prepare` is ray.train.torch.prepare_model inside a Ray Train worker (DDP over gloo/NCCL)."""
    if prepare is None or cfg.dp == 1:
        return model
    return prepare(model, parallel_strategy="ddp")


def parallelize(model: nn.Module, cfg: ParallelConfig, prepare=None) -> nn.Module:
    model = apply_tp(model, cfg.tp)
    model = apply_ac(model, cfg)
    model = apply_compile(model, cfg)
    return apply_dp(model, cfg, prepare)


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
