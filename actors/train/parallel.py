"""Parallelism on a DeviceMesh (torchtitan style), Ray-free.

The mesh has four named axes, outermost first: `pp`, `dp_replicate`, `dp_shard`, `tp`; world = their product.
Ranks are laid out so a tensor-parallel group (innermost, consecutive) sits on one node: the workers are ordered
by node before the mesh is built.

`parallelize` applies, in this order: tensor parallel -> activation checkpointing -> compile -> FSDP2. Pipeline
parallelism splits the model into stages first (`pipeline_stages`); each stage is parallelized the same way and
driven by a `torch.distributed.pipelining` schedule (GPipe, 1F1B, interleaved 1F1B).

Models are built on the meta device, parallelized there, then materialised shard by shard (`materialize`): every
rank creates only its own slice of each parameter, from a deterministic full-tensor value (a seeded init keyed by
the parameter's name, or a checkpoint tensor), so every layout starts from the same weights.
"""
from __future__ import annotations

import copy
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
import torch.nn as nn

from actors.train.config import ParallelConfig

MESH_AXES = ("pp", "dp_replicate", "dp_shard", "tp")
# wrappers that prefix parameter names; checkpoint names are those of the bare model
_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def canonical_name(name: str) -> str:
    for p in _WRAPPER_PREFIXES:
        name = name.replace(p, "")
    return name


# ---------------------------------------------------------------------------------------------------------------
# mesh


@dataclass
class Dist:
    """Where this rank sits: the mesh (None on a single process) and its coordinates."""

    mesh: object | None = None
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    tied_group: object | None = None  # first and last pipeline stage of this rank's pipeline
    nodes: list | None = None         # the Ray node of every rank (rank order)

    def size(self, axis: str) -> int:
        return 1 if self.mesh is None else self.mesh[axis].size()

    def coord(self, axis: str) -> int:
        return 0 if self.mesh is None else self.mesh[axis].get_local_rank()

    @property
    def dp_size(self) -> int:
        return self.size("dp_replicate") * self.size("dp_shard")

    @property
    def dp_rank(self) -> int:
        return self.coord("dp_replicate") * self.size("dp_shard") + self.coord("dp_shard")

    def group(self, axis: str):
        """The process group of one axis, or of the flattened data-parallel axes ("dp")."""
        if self.mesh is None:
            return None
        if axis == "dp":
            return self._dp_mesh().get_group()
        return self.mesh[axis].get_group()

    def _dp_mesh(self):
        if not hasattr(self, "_dp"):
            self._dp = self.mesh["dp_replicate", "dp_shard"]._flatten("dp")
        return self._dp

    def all_reduce(self, values: list[float], axis: str) -> list[float]:
        """Sum over one axis (or "dp"); float64 so token counts stay exact."""
        if self.mesh is None or (self.dp_size if axis == "dp" else self.size(axis)) == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, group=self.group(axis))
        return t.tolist()


def rank_order(node_of_rank: list[str]) -> list[int]:
    """Ranks grouped by node (stable): consecutive mesh positions - the tensor-parallel groups - share a node
    whenever each node's worker count is a multiple of tp."""
    first_seen: dict[str, int] = {}
    for n in node_of_rank:
        first_seen.setdefault(n, len(first_seen))
    return sorted(range(len(node_of_rank)), key=lambda r: (first_seen[node_of_rank[r]], r))


def build_mesh(cfg: ParallelConfig, device_type: str = "cpu", node_of_rank: list[str] | None = None) -> Dist:
    """The 4-axis mesh over the initialised default process group (Ray Train's)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if world != cfg.world_size:
        raise ValueError(f"parallel layout pp{cfg.pp} x dp_replicate{cfg.dp_replicate} x dp_shard{cfg.dp_shard} x "
                         f"tp{cfg.tp} needs {cfg.world_size} workers, this job has {world}")
    from torch.distributed.device_mesh import DeviceMesh

    order = rank_order(node_of_rank) if node_of_rank else list(range(world))
    shape = (cfg.pp, cfg.dp_replicate, cfg.dp_shard, cfg.tp)
    mesh = DeviceMesh(device_type, torch.tensor(order).view(shape), mesh_dim_names=MESH_AXES)
    device = torch.device(device_type, torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
    d = Dist(mesh, rank, world, device, nodes=node_of_rank)
    if cfg.pp > 1:  # first + last stage of each pipeline: where a tied embedding/head gradient is summed
        grid = mesh.mesh
        for r in range(cfg.dp_replicate):
            for s in range(cfg.dp_shard):
                for t in range(cfg.tp):
                    ranks = [int(grid[0, r, s, t]), int(grid[-1, r, s, t])]
                    g = dist.new_group(ranks)
                    if rank in ranks:
                        d.tied_group = g
    return d


# ---------------------------------------------------------------------------------------------------------------
# the ordered plan


def apply_tp(model: nn.Module, tp_mesh) -> None:
    """Megatron-style tensor parallel with sequence parallel norms (torchtitan's Llama plan): q/k/v and gate/up
    column-wise, o/down row-wise; between blocks the residual stream is split along the sequence, so the norms
    run on 1/tp of the tokens and the all-reduce of a row-wise layer becomes a reduce-scatter."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, RowwiseParallel,
                                                   SequenceParallel, parallelize_module)

    top = {}
    if model.model.embed_tokens is not None:
        top["model.embed_tokens"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1))
    if model.lm_head is not None:
        top["model.norm"] = SequenceParallel()
        # full logits on every TP rank: the loss (and any loss_fn) sees plain tensors
        top["lm_head"] = ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate(), use_local_output=True)
    parallelize_module(model, tp_mesh, top)
    model.tie_weights()  # both plans shard the (vocab, hidden) weight along vocab: one parameter serves both again
    for layer in model.model.layers.values():
        parallelize_module(layer, tp_mesh, {
            "input_layernorm": SequenceParallel(),
            "self_attn": PrepareModuleInput(input_layouts=(Shard(1), None, None),
                                            desired_input_layouts=(Replicate(), None, None)),
            "self_attn.q_proj": ColwiseParallel(),
            "self_attn.k_proj": ColwiseParallel(),
            "self_attn.v_proj": ColwiseParallel(),
            "self_attn.o_proj": RowwiseParallel(output_layouts=Shard(1)),
            "post_attention_layernorm": SequenceParallel(),
            "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "mlp.gate_proj": ColwiseParallel(),
            "mlp.up_proj": ColwiseParallel(),
            "mlp.down_proj": RowwiseParallel(output_layouts=Shard(1)),
        })
    model.sequence_parallel = tp_mesh.size()  # a later pipeline stage gets T / tp positions of hidden states


def _save_matmuls_policy():
    """Selective activation checkpointing: keep matmul and attention outputs (the expensive ops), recompute the
    pointwise ones (norms, SiLU, RoPE) in backward - most of the activation memory back for a few % compute."""
    from torch.utils.checkpoint import CheckpointPolicy

    aten = torch.ops.aten
    save = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.linear.default,
            aten._scaled_dot_product_flash_attention.default,
            aten._scaled_dot_product_flash_attention_for_cpu.default,
            aten._scaled_dot_product_efficient_attention.default}

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in save else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def apply_ac(model: nn.Module, mode: str) -> None:
    """Wrap each decoder layer (a module swap, the layer's forward is untouched): "full" recomputes the whole
    layer in backward, "selective" recomputes only its pointwise ops."""
    if mode == "none":
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

    for key, layer in list(model.model.layers.items()):
        if mode == "full":
            wrapped = checkpoint_wrapper(layer, checkpoint_fn=checkpoint, use_reentrant=False,
                                         preserve_rng_state=False)
        else:
            wrapped = checkpoint_wrapper(layer, checkpoint_fn=checkpoint, use_reentrant=False,
                                         preserve_rng_state=False,
                                         context_fn=partial(create_selective_checkpoint_contexts,
                                                            _save_matmuls_policy()))
        model.model.layers[key] = wrapped


def apply_compile(model: nn.Module) -> None:
    """Compile each decoder layer on its own (identical blocks share one graph; names are unchanged)."""
    for layer in model.model.layers.values():
        layer.compile(fullgraph=False)


def apply_fsdp(model: nn.Module, dp_mesh, param_dtype: torch.dtype | None, reshard_after_forward: bool) -> None:
    """FSDP2 over the data-parallel axes: one all-gather unit per decoder layer plus the root (embedding, final
    norm, head). On a 2-D (dp_replicate, dp_shard) mesh this is HSDP: shard within, all-reduce across."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in model.model.layers.values():
        fully_shard(layer, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)


def parallelize(model: nn.Module, cfg: ParallelConfig, d: Dist, param_dtype: torch.dtype | None) -> nn.Module:
    """tp -> ac -> compile -> fsdp, each only where the layout asks for it (on the model under a peft wrapper)."""
    outer, model = model, (model.get_base_model() if hasattr(model, "get_base_model") else model)
    if cfg.tp > 1:
        apply_tp(model, d.mesh["tp"])
    apply_ac(model, cfg.activation_checkpointing)
    if cfg.compile:
        apply_compile(model)
    if d.mesh is not None and cfg.dp_shard > 1 and cfg.backend == "fsdp":
        # FSDP2 over dp_shard, HSDP when dp_replicate > 1 too. Pure replication (dp_shard == 1) is cheaper without
        # it: whole weights, and the trainer all-reduces the gradients in a few flat buckets (DDP's scheme)
        apply_fsdp(model, d.mesh["dp_replicate", "dp_shard"], param_dtype,
                   reshard_after_forward=cfg.pp == 1)  # with PP, microbatches re-use the gathered weights
    return outer


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 holds `model`'s parameters as shards (DTensors on a data-parallel mesh axis)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) and any(a in ("dp_shard", "dp_replicate", "dp")
                                              for a in (p.device_mesh.mesh_dim_names or ()))
               for p in model.parameters())


@torch.no_grad()
def match_forwards(model: nn.Module, d: Dist, n_local: int) -> None:
    """Under FSDP every rank must run as many forwards (each all-gathers every layer's shards): a rank that had
    fewer batches than the most of any data-parallel rank runs one-token forwards until it has as many."""
    zero3 = any(hasattr(p, "ds_tensor") for p in model.parameters())  # DeepSpeed ZeRO-3 gathers per forward too
    if d.mesh is None or d.dp_size == 1 or not (is_sharded(model) or zero3):
        return
    t = torch.tensor([n_local], dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=d.group("dp"))
    was = model.training
    model.eval()
    for _ in range(int(t) - n_local):
        model(torch.zeros(1, 1, dtype=torch.long, device=d.device))
    model.train(was)


def gather_state(model: nn.Module, only_trainable: bool = False) -> dict[str, torch.Tensor]:
    """The model's state with FSDP shards gathered (a collective: every rank calls it), wrapper prefixes
    removed, on the CPU."""
    from torch.distributed.tensor import DTensor

    # state_dict() drops wrapper prefixes that named_parameters() keeps (activation checkpointing): compare both
    # by their canonical names
    names = {canonical_name(n) for n, p in model.named_parameters() if p.requires_grad} if only_trainable else None
    out = {}
    for k, v in model.state_dict().items():
        k = canonical_name(k)
        if names is not None and k not in names:
            continue
        t = v.full_tensor() if isinstance(v, DTensor) else v
        out[k] = t.detach().cpu()
    return out


# ---------------------------------------------------------------------------------------------------------------
# pipeline stages


def stage_layers(num_layers: int, num_stages: int) -> list[range]:
    """Contiguous layer ranges, the remainder going to the middle stages (the first and last also hold the
    embedding and the head)."""
    base, extra = divmod(num_layers, num_stages)
    sizes = [base] * num_stages
    for i in range(extra):
        sizes[(num_stages - extra) // 2 + i] += 1
    out, start = [], 0
    for s in sizes:
        out.append(range(start, start + s))
        start += s
    return out


def _stage_class():
    from actors.model.transformer import Transformer

    class StageModel(Transformer):
        """A pipeline stage's piece of the model (the same modules and parameter names). The last stage returns
        the microbatch's summed loss through the model's own fused head + cross-entropy, so a pipeline computes
        the loss exactly as one worker does; its targets are queued by the trainer (every rank of a pipeline
        reads the same batch) and taken in microbatch order, the order every schedule runs a stage's forwards."""

        microbatch_targets: list

        def forward(self, x):
            if self.lm_head is None:
                return super().forward(x)
            return super().forward(x, targets=self.microbatch_targets.pop(0))

    return StageModel


def pipeline_stages(model: nn.Module, cfg: ParallelConfig, pp_rank: int) -> list[tuple[int, nn.Module]]:
    """This rank's stages (index, module) of `cfg.num_stages`: rank r holds stages r, r + pp, ... (the looped
    placement interleaved 1F1B wants). Each is a copy of the (meta) model without what other stages own."""
    n = cfg.num_stages
    ranges = stage_layers(model.config.num_hidden_layers, n)
    out = []
    for s in range(pp_rank, n, cfg.pp):
        part = copy.deepcopy(model)
        keep = {str(i) for i in ranges[s]}
        for key in list(part.model.layers.keys()):
            if key not in keep:
                del part.model.layers[key]
        if s != 0:
            part.model.embed_tokens = None
        if s != n - 1:
            part.model.norm = None
            part.lm_head = None
        elif part.model.embed_tokens is None and part.lm_head is not None:
            # a tied head on the last stage is its own parameter; `sync_tied_grads` keeps it equal to the
            # embedding on stage 0 (Megatron's embedding group)
            part.lm_head.weight = nn.Parameter(part.lm_head.weight.detach().clone())
        part.__class__ = _stage_class()  # the stage calling convention; modules and names unchanged
        out.append((s, part))
    return out


SCHEDULES = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B", "interleaved_1f1b": "ScheduleInterleaved1F1B"}


def build_schedule(stages: list[tuple[int, nn.Module]], cfg: ParallelConfig, d: Dist, n_microbatches: int,
                   loss_fn: Callable):
    from torch.distributed import pipelining
    from torch.distributed.pipelining import PipelineStage

    group = d.group("pp")
    pstages = [PipelineStage(m, s, cfg.num_stages, d.device, group=group) for s, m in stages]
    cls = getattr(pipelining, SCHEDULES[cfg.pp_schedule])
    # scale_grads=False: the loss is already the mean over the global batch's tokens (see Trainer)
    if cfg.pp_schedule == "interleaved_1f1b":
        return cls(pstages, n_microbatches=n_microbatches, loss_fn=loss_fn, scale_grads=False)
    return cls(pstages[0], n_microbatches=n_microbatches, loss_fn=loss_fn, scale_grads=False)


def tied_head(cfg, stages: list[tuple[int, nn.Module]], num_stages: int) -> tuple[nn.Parameter | None, bool]:
    """(the tied weight this rank holds as first or last stage, whether it is the last stage's copy)."""
    if not cfg.tie_word_embeddings:
        return None, False
    for s, m in stages:
        if s == num_stages - 1 and m.model.embed_tokens is None:
            return m.lm_head.weight, True
        if s == 0 and m.lm_head is None:
            return m.model.embed_tokens.weight, False
    return None, False


def sync_tied_grads(weight: nn.Parameter | None, d: Dist) -> None:
    """Sum the tied embedding/head gradient of the first and last pipeline stages, so both copies take the same
    optimizer step (every (dp, tp) coordinate has its own two-rank group; shards match across the pair)."""
    if weight is None or d.tied_group is None or weight.grad is None:
        return
    from torch.distributed.tensor import DTensor

    g = weight.grad
    if isinstance(g, DTensor) and g.placements != weight.placements:
        # a vocab-sharded embedding's backward gives a replicated gradient, the head's is vocab-sharded: without
        # FSDP (which reduce-scatters to the parameter's placement) the pair would all-reduce unequal sizes
        weight.grad = g = g.redistribute(weight.device_mesh, weight.placements)
    dist.all_reduce(_local(g), group=d.tied_group)


# ---------------------------------------------------------------------------------------------------------------
# materialising weights shard by shard


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def init_value(cfg, name: str, shape: torch.Size, seed: int) -> torch.Tensor:
    """The initial value of parameter `name` (checkpoint name) - the model's own init distribution
    (`init_std`) - the same on every rank and layout: a generator seeded from (seed, name)."""
    from actors.model.transformer import init_std

    if cfg.tie_word_embeddings and name == "lm_head.weight":
        name = "model.embed_tokens.weight"
    std = init_std(cfg, name, len(shape))
    if std is None:
        return torch.ones(shape)
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return torch.randn(shape, generator=g) * std


def materialize(module: nn.Module, device: torch.device, full_value: Callable[[str, torch.Size], torch.Tensor],
                dtype: torch.dtype = torch.float32) -> None:
    """Allocate a meta-built (and possibly sharded) module on `device` and fill each parameter with its slice of
    `full_value(name, global_shape)`: a rank holds only its shards, one full tensor at a time."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    module.to_empty(device=device)
    if hasattr(module, "tie_weights"):  # to_empty gives each module its own copy of a shared parameter
        module.tie_weights()
    with torch.no_grad():
        for name, p in module.named_parameters():
            full = full_value(canonical_name(name), p.shape).to(device=device, dtype=dtype)
            if isinstance(p, DTensor):
                local = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local()
                p.to_local().copy_(local)
            else:
                p.copy_(full)
    for mod in module.modules():  # non-persistent buffers (RoPE frequencies) are recomputed, not loaded
        if hasattr(mod, "reset_buffers"):
            mod.reset_buffers()


def full_state_dict(parts: list[nn.Module], d: Dist) -> dict[str, torch.Tensor] | None:
    """The whole model's weights on global rank 0 (None elsewhere): each stage's shards are gathered, and the
    stages' dicts are sent to rank 0 over the pipeline axis."""
    from torch.distributed.tensor import DTensor

    sd: dict[str, torch.Tensor] = {}
    for m in parts:
        for name, p in m.named_parameters():
            t = p.full_tensor() if isinstance(p, DTensor) else p.detach()
            sd[canonical_name(name)] = t.float().cpu()
    if d.mesh is None:
        return sd
    first = all(d.coord(a) == 0 for a in ("dp_replicate", "dp_shard", "tp"))
    if d.size("pp") > 1:
        got = [None] * d.size("pp") if first and d.coord("pp") == 0 else None
        if first:
            dist.gather_object(sd, got, group=d.group("pp"), group_dst=0)
            if d.coord("pp") == 0:
                merged = {}
                for part in got:
                    merged.update(part)
                sd = merged
    return sd if d.rank == d.mesh.mesh.flatten()[0].item() else None


# ---------------------------------------------------------------------------------------------------------------
# everything above, in order


def build_model_parts(mcfg, pcfg: ParallelConfig, d: Dist, compute_dtype: torch.dtype,
                      full_value: Callable[[str, torch.Size], torch.Tensor]) -> list[tuple[int, nn.Module]]:
    """This rank's (stage index, module) list: built on the meta device, split into pipeline stages, parallelized
    (tp -> ac -> compile -> fsdp), then materialised shard by shard from `full_value(name, shape)`."""
    from actors.model.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(mcfg)
    stages = pipeline_stages(model, pcfg, d.coord("pp")) if pcfg.pp > 1 else [(0, model)]
    param_dtype = None if compute_dtype == torch.float32 else compute_dtype
    for _, m in stages:
        parallelize(m, pcfg, d, param_dtype)
        materialize(m, d.device, full_value)
    return stages
