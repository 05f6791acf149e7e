"""The one training loop, Ray-free: a model, a loss, AdamW with warm-up + cosine, grad clipping, metrics.

Pretraining and SFT differ only in their batches' `labels` (-100 marks positions not trained on),
so both use `Trainer.train_step` with `causal_lm_loss`.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist

from actors.model.transformer import causal_lm_loss, sparse_causal_lm_loss
from actors.train.config import OptimConfig
from actors.train.schedule import lr_at


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    # no weight decay on norms/biases (1-D): decaying RMSNorm gains toward 0 hurts small models
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas)


def _all_reduce_sum(values: list[float]) -> list[float]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()
    return values


class Trainer:
    def __init__(self, model: torch.nn.Module, optim: OptimConfig, max_steps: int, world_size: int = 1):
        self.model = model
        self.cfg = optim
        self.max_steps = max_steps
        self.world_size = world_size
        self.optimizer = build_optimizer(model.parameters(), optim)
        self.step = 0

    def lr(self) -> float:
        return lr_at(self.step, self.max_steps, self.cfg.lr, self.cfg.warmup_steps, self.cfg.min_lr_ratio)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict:
        """One optimizer step; returns loss averaged over workers (weighted by trained tokens)."""
        t0 = time.perf_counter()
        self.model.train()
        lr = self.lr()
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        input_ids = batch["input_ids"]
        labels = batch.get("labels", input_ids)
        if "labels" in batch:  # SFT: logits only where a token is trained
            loss = sparse_causal_lm_loss(self.model, input_ids, labels)
        else:
            loss = causal_lm_loss(self.model(input_ids), labels)
        loss.backward()
        gnorm = (torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
                 if self.cfg.grad_clip > 0 else torch.tensor(0.0))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        n_trained = float((labels[:, 1:] != -100).sum())
        loss_sum, n, tokens = _all_reduce_sum([loss.item() * n_trained, n_trained, float(input_ids.numel())])
        self.step += 1
        dt = time.perf_counter() - t0
        return {"step": self.step, "loss": loss_sum / max(n, 1.0), "lr": lr, "grad_norm": float(gnorm),
                "tokens": tokens, "tokens_per_s": tokens / dt, "step_s": dt}

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict[str, torch.Tensor]], max_batches: int | None = None) -> dict:
        """Mean next-token NLL over every worker's share of the held-out data."""
        self.model.eval()
        loss_sum, n = 0.0, 0.0
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            input_ids = batch["input_ids"]
            labels = batch.get("labels", input_ids)
            loss = causal_lm_loss(self.model(input_ids), labels)
            k = float((labels[:, 1:] != -100).sum())
            loss_sum += loss.item() * k
            n += k
        loss_sum, n = _all_reduce_sum([loss_sum, n])
        return {"val_loss": loss_sum / max(n, 1.0), "val_tokens": n}


def repeat_epochs(make_iter, max_batches: int) -> Iterator:
    """Yield batches across as many epochs as needed; `make_iter()` starts a fresh epoch."""
    seen, epoch = 0, 0
    while seen < max_batches:
        got = 0
        for batch in make_iter(epoch):
            yield batch
            got += 1
            seen += 1
            if seen >= max_batches:
                return
        if got == 0:
            raise RuntimeError("training data is empty: the data stage produced no packed sequences for this "
                               "worker; lower data.seq_len or add sources")
        epoch += 1
