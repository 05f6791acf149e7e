"""Learning-rate schedule: linear warm-up, then cosine decay to lr * min_lr_ratio."""
from __future__ import annotations

import math


def lr_at(step: int, max_steps: int, lr: float, warmup_steps: int, min_lr_ratio: float) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
