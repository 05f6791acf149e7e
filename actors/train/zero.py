"""DeepSpeed ZeRO as the data-parallel engine (`parallel.backend: deepspeed`), Ray-free.

The model and our torch AdamW (the same param groups as under FSDP2) go to `deepspeed.initialize`; ZeRO-1/2/3
shards the optimizer state / + gradients / + parameters over every data-parallel rank, optionally offloading
optimizer state (and ZeRO-3 parameters) to the CPU. The trainer keeps its loop: it sets the learning rate,
normalises each micro-batch's loss by the global token count (as under FSDP2, whose gradient mean over dp
DeepSpeed's matches), calls `engine.backward` per micro-batch with the accumulation boundary on the last one,
and `engine.step()` once, which clips by `optim.grad_clip` and updates. On a machine without CUDA, DeepSpeed's
CPU accelerator runs its collectives over the job's gloo process group; passing a torch optimizer means no
DeepSpeed op is JIT-compiled for it (what is compiled is cached under .venv, see cluster.env.deepspeed_env).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from actors.train.config import OptimConfig, ParallelConfig


def ds_config(pc: ParallelConfig, optim: OptimConfig, micro_batch: int, compute_dtype: torch.dtype) -> dict:
    zero: dict = {"stage": pc.zero_stage, "contiguous_gradients": True, "overlap_comm": False}
    if pc.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if pc.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        # the trainer marks the accumulation boundary itself (its last micro-batch) and normalises the loss
        "gradient_accumulation_steps": 1,
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": compute_dtype == torch.bfloat16},
        "zero_allow_untested_optimizer": True,   # a torch AdamW: nothing to build
        "zero_force_ds_cpu_optimizer": False,    # offload keeps the torch AdamW (DeepSpeedCPUAdam would compile)
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def deepspeed_engine(model: nn.Module, optimizer: torch.optim.Optimizer, pc: ParallelConfig, optim: OptimConfig,
                     micro_batch: int, compute_dtype: torch.dtype = torch.float32):
    """The DeepSpeed engine over `model` and `optimizer` (torch.distributed is already initialised)."""
    from cluster.hardware import import_deepspeed

    deepspeed = import_deepspeed()
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           config=ds_config(pc, optim, micro_batch, compute_dtype),
                                           dist_init_required=False)
    if pc.zero_stage == 3:
        # the fused head + cross-entropy reads lm_head.weight inside the model's own forward, not through the
        # head module's: ZeRO-3 must gather it for the root module
        head = getattr(engine.module, "lm_head", None)
        if head is not None:
            deepspeed.zero.register_external_parameter(engine.module, head.weight)
    return engine


def local_numel(engine) -> tuple[int, int]:
    """(parameter elements this rank holds, elements of the whole model): under ZeRO-3 each rank holds 1/dp."""
    held = total = 0
    for p in engine.module.parameters():
        if hasattr(p, "ds_tensor"):
            held += p.ds_tensor.numel()
            total += p.ds_numel
        else:
            held += p.numel()
            total += p.numel()
    return held, total


def is_zero3(module: nn.Module) -> bool:
    return any(hasattr(p, "ds_tensor") for p in module.parameters())


def full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's whole state on every rank, by canonical name (ZeRO-3 partitions gathered: a collective,
    every rank calls it)."""
    from cluster.hardware import import_deepspeed

    from actors.train.parallel import canonical_name

    deepspeed = import_deepspeed()
    with deepspeed.zero.GatheredParameters(list(module.parameters()), enabled=is_zero3(module)):
        return {canonical_name(k): v.detach().clone().cpu() for k, v in module.state_dict().items()}
