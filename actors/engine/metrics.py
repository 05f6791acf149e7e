"""The engine's request metrics under vLLM's names, per model (the base or a LoRA adapter): token counters, finished
requests by reason, and time-to-first-token / inter-token / end-to-end latency histograms with vLLM's buckets.

Plain counts (no Prometheus client here): `snapshot()` is a picklable dict that the serving layer gathers from every
replica and renders as Prometheus text (actors.serve.metrics), each replica's series labelled by its `engine`.
"""
from __future__ import annotations

import bisect
import collections
from dataclasses import dataclass, field

# vLLM's buckets (vllm/v1/metrics/loggers.py), seconds
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
HISTOGRAMS = {"time_to_first_token_seconds": TTFT_BUCKETS, "inter_token_latency_seconds": ITL_BUCKETS,
              "e2e_request_latency_seconds": E2E_BUCKETS}


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)     # per bucket (not cumulative), + the +Inf one
    sum: float = 0.0

    def __post_init__(self):
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.sum += v


class EngineMetrics:
    """Per model name ("" = the base model; an adapter's name otherwise)."""

    def __init__(self):
        self.prompt_tokens: collections.Counter[str] = collections.Counter()
        self.generation_tokens: collections.Counter[str] = collections.Counter()
        self.success: collections.Counter[tuple[str, str]] = collections.Counter()   # (model, finished_reason)
        self.hist: dict[tuple[str, str], Histogram] = {}

    def observe(self, name: str, model: str, value: float) -> None:
        h = self.hist.get((name, model))
        if h is None:
            h = self.hist[(name, model)] = Histogram(HISTOGRAMS[name])
        h.observe(value)

    def snapshot(self) -> dict:
        return {"prompt_tokens": dict(self.prompt_tokens), "generation_tokens": dict(self.generation_tokens),
                "request_success": [[m, r, n] for (m, r), n in self.success.items()],
                "histograms": [[name, m, list(h.buckets), list(h.counts), h.sum]
                               for (name, m), h in self.hist.items()]}
