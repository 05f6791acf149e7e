"""The one training loop, Ray-free: model parts, a `loss_fn`, AdamW with warm-up + cosine, clipping, metrics.

Every method is a `loss_fn(model, batch) -> (loss_sum, n_tokens)`: the summed loss of the batch and how many
tokens (or pairs) it counts. The trainer turns the sums of a whole global batch - all gradient-accumulation
micro-batches on all data-parallel ranks - into their mean over all trained tokens, whatever the layout:
each rank's backward uses `loss_sum / (n_global / dp)`, and FSDP's gradient average over dp divides the rest.
Pipeline-parallel layouts compute the same loss on the last stage (`parallel.StageModel`) inside the schedule.

`run_loop(trainer, batches, hooks)` is the loop every stage uses (pretrain, SFT, and later preference methods).
"""
from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from actors.common.memory import keep_freed_memory_in_heap
from actors.train.config import OptimConfig
from actors.train.losses import CausalLMLoss, count_trained  # noqa: F401 - the default loss_fn
from actors.train.parallel import Dist, is_sharded, match_forwards, sync_tied_grads
from actors.train.schedule import lr_at


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    # no weight decay on norms/biases (1-D): decaying RMSNorm gains toward 0 hurts small models
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas)


# ---------------------------------------------------------------------------------------------------------------
# the trainer


def grad_norm_and_clip(params: list[nn.Parameter], max_norm: float, d: Dist,
                       also_clip: list[nn.Parameter] = ()) -> float:
    """Global L2 norm of the gradients over every shard and pipeline stage; clipped to `max_norm` (0: no clip)
    together with `also_clip` (copies not counted in the norm). DTensor gradients of one (mesh, placements) group
    reduce together; stages add their squares over `pp`."""
    from torch.distributed.tensor import DTensor

    groups: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            g = p.grad
            key = (id(g.device_mesh), tuple(g.placements)) if isinstance(g, DTensor) else ("local",)
            groups.setdefault(key, []).append(g)
    sq = torch.zeros((), dtype=torch.float64)
    for grads in groups.values():
        # float64 accumulation: an fp32 norm over millions of values is off by ~1e-4 relative, which would hide
        # the real differences between layouts
        norms = [torch.linalg.vector_norm(g, 2, dtype=torch.float64) for g in grads]
        n = torch.linalg.vector_norm(torch.stack(norms), 2)
        if isinstance(n, DTensor):
            n = n.full_tensor()
        sq += n ** 2
    if d.size("pp") > 1:
        import torch.distributed as dist

        dist.all_reduce(sq, group=d.group("pp"))
    total = float(sq.sqrt())
    if max_norm > 0 and total > max_norm:
        coef = max_norm / (total + 1e-6)
        for g in [g for grads in groups.values() for g in grads] + [p.grad for p in also_clip if p.grad is not None]:
            g.mul_(coef)
    return total


class Trainer:
    """One optimizer step per global batch over `parts` (one module, or this rank's pipeline stages driven by
    `schedule`). `autocast_dtype` runs the forward in bf16 where FSDP's mixed precision does not already."""

    def __init__(self, parts: list[nn.Module] | nn.Module, loss_fn: Callable, optim: OptimConfig, max_steps: int,
                 d: Dist | None = None, schedule=None, autocast_dtype: torch.dtype | None = None,
                 tied_weight: nn.Parameter | None = None, tied_copy: bool = False,
                 flops_per_token: float = 0.0, peak_flops: float = 0.0, zero=None, micro_batch: int = 1):
        self.parts = list(parts) if isinstance(parts, (list, tuple)) else [parts]
        if (d or Dist()).device.type == "cpu":
            keep_freed_memory_in_heap()
        self.model = self.parts[0]
        self.loss_fn, self.cfg, self.max_steps = loss_fn, optim, max_steps
        self.count = getattr(loss_fn, "count", count_trained)  # what the loss is a mean over
        self.d = d or Dist()
        self.schedule = schedule
        self.autocast_dtype = autocast_dtype
        self.tied_weight = tied_weight
        params = [p for m in self.parts for p in m.parameters()]
        # the last stage's copy of a tied head is not counted twice in the gradient norm
        self.norm_params = [p for p in params if not (tied_copy and p is tied_weight)]
        self.copies = [tied_weight] if tied_copy else []
        self.optimizer = build_optimizer(params, optim)
        # parallel.backend=deepspeed: a ZeRO engine owns gradient reduction, clipping and the optimizer step
        self.engine = None
        if zero is not None and zero.backend == "deepspeed":
            from actors.train.zero import deepspeed_engine

            self.engine = deepspeed_engine(self.model, self.optimizer, zero, optim, micro_batch,
                                           autocast_dtype or torch.float32)
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.fsdp = any(is_sharded(m) for m in self.parts)
        self.step = 0
        self.consumed = 0  # global batches taken from the data: the step, plus any rolled back
        # guard(loss, grad_norm) -> "ok" | "skip" (no update) | "rollback" (raise Rollback): the watchdog
        self.guard: Callable[[float, float], str] | None = None
        self._scale = 1.0
        self.first_stage = self.last_stage = True  # no pipeline: this rank runs the whole model
        if schedule is not None:
            self.attach_schedule(schedule)

    def attach_schedule(self, schedule) -> None:
        """Drive this rank's pipeline stages with `schedule` (built with `self.pipeline_loss` as its loss)."""
        self.schedule = schedule
        self.first_stage = any(s.is_first for s in self._stages())
        self.last_stage = any(s.is_last for s in self._stages())

    def _average_replicated_grads(self) -> None:
        """Data parallel without FSDP (dp_shard == 1: replicas, or LoRA on a replicated base): average every
        gradient over the data-parallel ranks, as FSDP does for its shards. Flat buckets of ~32 MB, one all-reduce
        each (a DTensor's gradient - tensor parallel - is averaged shard by shard: replicas hold the same shards)."""
        if self.d.mesh is None or self.d.dp_size == 1 or self.fsdp:
            return
        import torch.distributed as dist

        from actors.train.parallel import _local

        grads = [_local(p.grad) for p in self.norm_params + self.copies if p.grad is not None]
        group, bucket, size = self.d.group("dp"), [], 0
        for i, g in enumerate(grads):
            bucket.append(g)
            size += g.numel()
            if size >= (8 << 20) or i == len(grads) - 1:
                flat = torch.cat([b.reshape(-1).float() for b in bucket])
                dist.all_reduce(flat, group=group)
                flat /= self.d.dp_size
                offset = 0
                for b in bucket:
                    b.copy_(flat[offset:offset + b.numel()].view_as(b))
                    offset += b.numel()
                bucket, size = [], 0

    def _stages(self):
        return getattr(self.schedule, "_stages", None) or [self.schedule._stage]

    def lr(self) -> float:
        return lr_at(self.step, self.max_steps, self.cfg.lr, self.cfg.warmup_steps, self.cfg.min_lr_ratio)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.d.device.type, dtype=self.autocast_dtype)

    def pipeline_loss(self, loss_sum: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The schedule's per-microbatch loss: the last stage already returns the microbatch's summed loss (see
        `parallel.StageModel`); the same normalisation as the non-pipelined path."""
        return loss_sum / self._scale

    def _run(self, batch: dict[str, torch.Tensor], backward: bool) -> torch.Tensor:
        """Summed loss of one micro-batch (0 on pipeline stages other than the last)."""
        dev = self.d.device
        batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        if self.schedule is None:
            with self._autocast():
                loss_sum, _ = self.loss_fn(self.model, batch)
            if backward and self.engine is not None:
                self.engine.backward(loss_sum / self._scale, scale_wrt_gas=False)
            elif backward:
                (loss_sum / self._scale).backward()
            return loss_sum.detach()
        labels = batch.get("labels", batch["input_ids"])
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # position t is scored on label t + 1
        chunks = list(targets.tensor_split(self.schedule._n_microbatches))
        # the schedule first runs a metadata-inference forward of each stage when it starts, and again whenever
        # it switches between training and evaluation: that forward takes a target too (all ignored)
        sch = self.schedule
        fwd = getattr(sch, "_stage_forward_initialized", getattr(sch, "_stages_forward_initialized", True))
        bwd = getattr(sch, "_stage_backward_initialized", getattr(sch, "_stages_backward_initialized", backward))
        if not fwd or bwd != backward:
            chunks.insert(0, torch.full_like(chunks[0], -100))
        for part in self.parts:
            if part.lm_head is not None:  # the last stage: its microbatches' targets, in order
                part.microbatch_targets = list(chunks)
        args = (batch["input_ids"],) if self.first_stage else ()
        target = targets if self.last_stage else None
        losses: list[torch.Tensor] = []
        with self._autocast():
            if backward:
                self.schedule.step(*args, target=target, losses=losses, return_outputs=False)
            else:
                self.schedule.eval(*args, target=target, losses=losses, return_outputs=False)
        return torch.stack(losses).sum().detach() * self._scale if losses else torch.zeros(())

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]) -> dict:
        """One optimizer step over this rank's micro-batches of the global batch; loss = mean over all trained
        tokens of the global batch (reduced over the data-parallel axes only)."""
        if isinstance(micro_batches, dict):
            micro_batches = [micro_batches]
        t0 = time.perf_counter()
        for m in self.parts:
            m.train()
        lr = self.lr()
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        n_local = sum(self.count(b) for b in micro_batches)
        # non-padding tokens where the batch says how many (SFT batches), else every position
        tokens_local = sum(int(b["num_tokens"]) if "num_tokens" in b else b["input_ids"].numel()
                           for b in micro_batches)
        n_global, tokens = self.d.all_reduce([float(n_local), float(tokens_local)], "dp")
        self._scale = max(n_global, 1.0) / self.d.dp_size
        if self.engine is not None:
            return self._zero_step(micro_batches, lr, n_global, tokens, t0)
        loss_sum = sum(float(self._run(b, backward=True)) for b in micro_batches)
        self._average_replicated_grads()
        sync_tied_grads(self.tied_weight, self.d)
        gnorm = grad_norm_and_clip(self.norm_params, self.cfg.grad_clip, self.d, self.copies)
        (loss_sum,) = self.d.all_reduce([loss_sum], "dp")
        if self.d.size("pp") > 1:  # only the last stage computed it
            (loss_sum,) = self.d.all_reduce([loss_sum if self.last_stage else 0.0], "pp")
        loss = loss_sum / max(n_global, 1.0)
        # every rank sees the same global loss and norm, so every rank takes the same decision
        verdict = self.guard(loss, gnorm) if self.guard is not None else "ok"
        if verdict == "ok":
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.consumed += 1
        if verdict == "rollback":
            raise Rollback(self.step + 1, loss, gnorm)
        self.step += 1
        out = self._step_metrics(loss, lr, gnorm, tokens, n_global, t0)
        if verdict == "skip":
            out["skipped"] = 1
        return out

    def _step_metrics(self, loss: float, lr: float, gnorm: float, tokens: float, n_global: float,
                      t0: float) -> dict:
        dt = time.perf_counter() - t0
        out = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": gnorm,
               "tokens": tokens, "tokens_per_s": tokens / dt, "step_s": dt, **self._loss_stats(n_global)}
        if self.flops_per_token:
            achieved = self.flops_per_token * tokens / dt / self.d.world
            out["gflops_per_worker"] = achieved / 1e9
            if self.peak_flops:
                out["mfu"] = achieved / self.peak_flops
        out["peak_mem_gb"] = peak_memory_gb(self.d.device)
        return out

    def _zero_step(self, micro_batches: list[dict], lr: float, n_global: float, tokens: float, t0: float) -> dict:
        """The step under DeepSpeed: backward per micro-batch (gradients reduce at the boundary, the last one),
        then the engine's step (clip + update). The guard sees the global loss before the update; the gradient
        norm comes from the engine's step."""
        loss_sum = 0.0
        for i, b in enumerate(micro_batches):
            self.engine.set_gradient_accumulation_boundary(i == len(micro_batches) - 1)
            loss_sum += float(self._run(b, backward=True))
        (loss_sum,) = self.d.all_reduce([loss_sum], "dp")
        loss = loss_sum / max(n_global, 1.0)
        verdict = self.guard(loss, 0.0) if self.guard is not None else "ok"
        if verdict != "ok":
            raise FloatingPointError(f"step {self.step + 1}: loss {loss}: under backend=deepspeed a bad step is "
                                     "not skipped (the engine's step both reduces and updates); resume from the "
                                     "last checkpoint")
        self.engine.step()
        self.consumed += 1
        self.step += 1
        gnorm = self.engine.get_global_grad_norm()
        return self._step_metrics(loss, lr, float(gnorm) if gnorm is not None else 0.0, tokens, n_global, t0)

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict[str, torch.Tensor]], max_batches: int | None = None) -> dict:
        """Mean next-token NLL over every data-parallel rank's share of the held-out rows."""
        for m in self.parts:
            m.eval()
        loss_sum, n = 0.0, 0.0
        self._scale = 1.0
        ran = 0
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            loss_sum += float(self._run(batch, backward=False))
            n += self.count(batch)
            ran += 1
        if self.schedule is None:
            with self._autocast():
                match_forwards(self.model, self.d, ran)
        loss_sum, n = self.d.all_reduce([loss_sum, n], "dp")
        if self.d.size("pp") > 1:
            (loss_sum,) = self.d.all_reduce([loss_sum if self.last_stage else 0.0], "pp")
        stats = {f"val_{k}": v for k, v in self._loss_stats(n).items()}
        return {"val_loss": loss_sum / max(n, 1.0), "val_tokens": n, **stats}

    def _loss_stats(self, n_global: float) -> dict[str, float]:
        """The loss's own metrics (DPO reward accuracy, margins...) as means over the global batch."""
        take = getattr(self.loss_fn, "take_stats", None)
        if take is None:
            return {}
        stats = take()
        keys = sorted(stats)
        vals = self.d.all_reduce([stats[k] for k in keys], "dp") if keys else []
        return {k: v / max(n_global, 1.0) for k, v in zip(keys, vals)}


# dense bf16 peak FLOP/s by accelerator name (MFU's denominator); a CPU reports achieved GFLOP/s only
_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12,
              "A10G": 70e12, "L4": 121e12}


def device_peak_flops(device: torch.device) -> float:
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in _PEAK_BF16.items() if k in name), 0.0)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


Hook = Callable[[Trainer, dict], None]


class Rollback(Exception):
    """The watchdog rejected step `step` (NaN/inf or a spike) and asked for the last checkpoint back."""

    def __init__(self, step: int, loss: float, grad_norm: float):
        super().__init__(f"step {step}: loss {loss}, grad norm {grad_norm}")
        self.step, self.loss, self.grad_norm = step, loss, grad_norm


class StopTraining(Exception):
    """Raised by a hook to end the loop cleanly after the current step (a stop file, SIGTERM)."""


def run_loop(trainer: Trainer, batches: Iterator, hooks: Iterable[Hook] = (),
             on_rollback: Callable[[Trainer, Rollback], None] | None = None) -> dict:
    """Train until `trainer.max_steps`; each step's metrics pass through the hooks in order (evaluation,
    logging, checkpointing...), which may add to them; a hook raising StopTraining ends the loop there.
    A step the guard rolls back goes to `on_rollback` (which restores a checkpoint; the data stream goes on
    past the bad batch). Returns the last step's metrics."""
    last: dict = {}
    while trainer.step < trainer.max_steps:
        try:
            m = trainer.train_step(next(batches))
        except Rollback as rb:
            if on_rollback is None:
                raise
            on_rollback(trainer, rb)
            continue
        last = m
        try:
            for h in hooks:
                h(trainer, m)
        except StopTraining:
            last["stopped"] = True
            break
    return last
