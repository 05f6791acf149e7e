"""Batched greedy decoding over left-padded prompts with a KV cache (offline: evaluation).

On a CPU a decode step of a 135M model is bound by reading its weights (~0.27 GB in bf16), so one step for
16 rows costs little more than one step for one row: batching the eval's generation turns ~N x T forwards into
~N/16 x T. Rows are sorted by prompt length so a batch holds similar lengths (little padding); a finished row
keeps its slot until the whole batch is done (a static batch: the continuous-batching serving engine is the
place for mixed lengths under load).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


@torch.no_grad()
def greedy_generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], stop_ids: Iterable[int],
                    max_length: int, batch_size: int = 16, pad_id: int = 0, progress=None) -> list[list[int]]:
    """For each prompt, the greedy continuation (stop token excluded) until a token of `stop_ids`, its own
    `max_new_tokens`, or `max_length` positions. Prompts are left-truncated so one new token always fits."""
    device = next(model.parameters()).device
    stops = set(int(t) for t in stop_ids)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in (progress(batches) if progress else batches):
        budgets = [max_new_tokens[i] for i in batch]
        keep = max(1, max_length - max(budgets))
        rows = [list(prompts[i])[-keep:] for i in batch]
        B, T = len(rows), max(len(r) for r in rows)
        pad = torch.tensor([T - len(r) for r in rows], device=device)  # (B,) left padding per row
        ids = torch.full((B, T), pad_id, dtype=torch.long, device=device)
        for r, row in enumerate(rows):
            ids[r, T - len(row):] = torch.tensor(row, dtype=torch.long)
        ar = torch.arange(T, device=device)
        positions = (ar[None, :] - pad[:, None]).clamp(min=0)  # (B, T): real tokens start at position 0
        valid = ar[None, :] >= pad[:, None]  # (B, S) keys that are real tokens
        causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        # a pad query sees only itself: an all-masked row would give NaN, which its K/V would then spread
        mask = (causal[None] & valid[:, None, :]) | torch.eye(T, dtype=torch.bool, device=device)[None]
        steps = min(max(budgets), max_length - T)
        cache = model.new_cache(capacity=T + steps)
        last = torch.zeros(B, T, dtype=torch.bool, device=device)
        last[:, -1] = True  # only the last position's logits: the vocabulary projection is ~20% of a prefill
        logits = model(ids, positions=positions, cache=cache, attn_mask=mask[:, None], logits_mask=last)  # (B, V)
        done = [False] * B
        pos = positions[:, -1]
        for step in range(steps):
            nxt = logits.float().argmax(-1)  # (B,)
            for r, t in enumerate(nxt.tolist()):
                if done[r]:
                    continue
                if t in stops:
                    done[r] = True
                    continue
                out[batch[r]].append(t)
                if len(out[batch[r]]) >= budgets[r]:
                    done[r] = True
            if all(done) or step == steps - 1:
                break
            pos = pos + 1
            valid = torch.cat([valid, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)  # (B, S+1)
            logits = model(nxt[:, None], positions=pos[:, None], cache=cache,
                           attn_mask=valid[:, None, None, :])[:, -1]
    return out
