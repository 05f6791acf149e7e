"""The fine-tuning and pretraining objectives, each a `loss_fn(model, batch) -> (loss_sum, n)` for the one loop.

`n` is what the loss is a mean over (trained tokens for next-token losses, pairs for DPO and the reward model,
completions for KTO); a loss may define `count(batch)` for it (default: trained tokens) and `take_stats()`:
sums of its own metrics over the micro-batches since the last call (the trainer reports them as means over n).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from actors.model.transformer import trained_positions


def count_trained(batch: dict[str, torch.Tensor]) -> int:
    labels = batch.get("labels", batch["input_ids"])
    return int((labels[:, 1:] != -100).sum())


def _extra(batch: dict) -> dict:
    return {k: batch[k] for k in ("positions", "attn_mask") if k in batch}


class CausalLMLoss:
    """Next-token loss over every position whose label is not -100 (pretraining: all of them). With `sparse`,
    logits are computed only at trained positions: SFT trains on ~25% of them, and the vocabulary projection is
    ~30% of a step for a 135M model."""

    def __init__(self, sparse: bool = False):
        self.sparse = sparse

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """The model computes the loss itself (`targets=`: fused projection + cross-entropy)."""
        input_ids = batch["input_ids"]
        labels = batch.get("labels", input_ids)
        if self.sparse and "labels" in batch:
            mask = trained_positions(labels)
            loss = model(input_ids, logits_mask=mask, targets=labels[:, 1:][mask[:, :-1]], **_extra(batch))
        else:
            # position t is scored on label t + 1; the last position has none
            targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # (B, T)
            loss = model(input_ids, targets=targets, **_extra(batch))
        return loss, count_trained(batch)


def sequence_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of log p(token) over each row's trained tokens (R,), fp32: the fused projection scores only those
    positions, row by row, never the whole (R, T, vocab) logits."""
    labels = batch["labels"]
    mask = trained_positions(labels)  # (R, T)
    rows = mask.nonzero()[:, 0]  # the row of each selected position, in the order the model returns them
    tok_loss = model(batch["input_ids"], logits_mask=mask, targets=labels[:, 1:][mask[:, :-1]], reduction="none",
                     **_extra(batch))  # (N,) = -log p
    return -torch.zeros(labels.shape[0], dtype=tok_loss.dtype, device=tok_loss.device).index_add(0, rows, tok_loss)


class _Stats:
    def __init__(self):
        self._stats: dict[str, float] = {}

    def _add(self, **vals: torch.Tensor) -> None:
        for k, v in vals.items():
            self._stats[k] = self._stats.get(k, 0.0) + float(v)

    def take_stats(self) -> dict[str, float]:
        out, self._stats = self._stats, {}
        return out


class DPOLoss(_Stats):
    """Direct preference optimisation, sigmoid loss (Rafailov et al. 2023) with optional label smoothing
    (conservative DPO): -log σ(β((log π(c) - log π_ref(c)) - (log π(r) - log π_ref(r)))). Batches hold the B
    chosen rows then the B rejected rows, and `ref_logps` (2B,) precomputed once with the frozen reference."""

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0):
        super().__init__()
        self.beta, self.label_smoothing = beta, label_smoothing

    @staticmethod
    def count(batch) -> int:
        return batch["input_ids"].shape[0] // 2

    def __call__(self, model, batch):
        lp = sequence_logps(model, batch)
        ref = batch["ref_logps"].to(lp.dtype)
        B = lp.shape[0] // 2
        ratio_c, ratio_r = lp[:B] - ref[:B], lp[B:] - ref[B:]
        z = self.beta * (ratio_c - ratio_r)
        loss = -(1 - self.label_smoothing) * F.logsigmoid(z) - self.label_smoothing * F.logsigmoid(-z)
        rc, rr = (self.beta * ratio_c).detach(), (self.beta * ratio_r).detach()
        per_tok = lp.detach() / (batch["labels"][:, 1:] != -100).sum(1).clamp(min=1)  # mean log-prob per token
        # reward_acc: chosen log-ratio > rejected (DPO's implicit reward); pref_acc: the policy's own
        # log-probability prefers the chosen answer; pref_acc_norm: per token (length-normalised, as acc_norm)
        self._add(reward_acc=(rc > rr).sum(), reward_margin=(rc - rr).sum(), chosen_reward=rc.sum(),
                  rejected_reward=rr.sum(), pref_acc=(lp[:B] > lp[B:]).sum(),
                  pref_acc_norm=(per_tok[:B] > per_tok[B:]).sum())
        return loss.sum(), B


class KTOLoss(_Stats):
    """Kahneman-Tversky optimisation (Ethayarajh et al. 2024) on unpaired desirable/undesirable completions:
    desirable  λ_D (1 - σ(β(r - z))),  undesirable  λ_U (1 - σ(β(z - r))),  r = log π(y|x) - log π_ref(y|x).
    The reference point z (the policy-reference KL) is estimated from the batch itself: the detached mean of r,
    clamped at 0 (TRL estimates it from mismatched prompt/completion pairs, which costs another forward)."""

    def __init__(self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
        super().__init__()
        self.beta, self.wd, self.wu = beta, desirable_weight, undesirable_weight

    @staticmethod
    def count(batch) -> int:
        return batch["input_ids"].shape[0]

    def __call__(self, model, batch):
        lp = sequence_logps(model, batch)
        r = lp - batch["ref_logps"].to(lp.dtype)
        z = r.detach().mean().clamp(min=0)
        good = batch["kto_label"].bool()
        loss = torch.where(good, self.wd * (1 - torch.sigmoid(self.beta * (r - z))),
                           self.wu * (1 - torch.sigmoid(self.beta * (z - r))))
        rd = (self.beta * r).detach()
        self._add(desirable_reward=rd[good].sum(), undesirable_reward=rd[~good].sum(), kl=z * len(r))
        return loss.sum(), len(r)


class PairwiseRewardLoss(_Stats):
    """Reward model (InstructGPT): a scalar head scores the last token of each answer; -log σ(s(c) - s(r)).
    The model's head is (hidden -> 1) (`reward_head`), so its "logits" are the score at every position."""

    @staticmethod
    def count(batch) -> int:
        return batch["input_ids"].shape[0] // 2

    def __call__(self, model, batch):
        scores = scores_at_last_trained(model, batch)
        B = scores.shape[0] // 2
        margin = scores[:B] - scores[B:]
        self._add(reward_acc=(margin > 0).sum(), reward_margin=margin.detach().sum())
        return -F.logsigmoid(margin).sum(), B


def scores_at_last_trained(model, batch) -> torch.Tensor:
    """The reward head's score (R,) at each row's last trained token (the answer's end-of-turn marker)."""
    labels = batch["labels"]
    T = labels.shape[1]
    last = T - 1 - (labels != -100).flip(1).float().argmax(1)  # (R,)
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[torch.arange(labels.shape[0]), last] = True
    return model(batch["input_ids"], logits_mask=mask, **_extra(batch))[:, 0].float()


class ScoreHead(nn.Linear):
    """(hidden -> 1) in fp32 over a base in any dtype (the head trains in full precision)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self.weight.dtype))


def reward_head(model: nn.Module) -> nn.Module:
    """Replace the vocabulary head by a zero-initialised (hidden -> 1) score head, untied from the embedding
    (HF's LlamaForSequenceClassification `score`)."""
    import dataclasses

    model.config = dataclasses.replace(model.config, tie_word_embeddings=False)
    p = next(model.parameters())
    model.lm_head = ScoreHead(model.config.hidden_size, 1, bias=False, device=p.device, dtype=torch.float32)
    nn.init.zeros_(model.lm_head.weight)
    return model


@torch.no_grad()
def reference_logps(model, examples: list[dict], pad_id: int, batch_size: int, autocast_dtype=None,
                    log=None) -> int:
    """Attach each example's `ref_logps` (chosen, rejected) or (completion,) under `model` as it is now (the
    frozen reference: the base before training; with LoRA, adapters are zero at init so it is the base too).
    Returns the number of forwards run."""
    import contextlib

    from actors.train.sft import collate_kind

    was = model.training
    model.eval()
    dev = next(model.parameters()).device.type
    ctx = torch.autocast(dev, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    order = sorted(range(len(examples)), key=lambda i: examples[i]["length"])
    n_batches = -(-len(order) // batch_size)
    with ctx:
        for s in range(0, len(order), batch_size):
            if log and (s // batch_size) % max(1, n_batches // 10) == 0:  # ~10 progress lines
                log(f"[finetune] reference log-probs: {s}/{len(order)} examples")
            idx = order[s:s + batch_size]
            lp = sequence_logps(model, collate_kind([examples[i] for i in idx], pad_id)).double().tolist()
            for k, i in enumerate(idx):
                examples[i]["ref_logps"] = ((lp[k], lp[k + len(idx)]) if "chosen_ids" in examples[i] else lp[k])
    model.train(was)
    return n_batches
