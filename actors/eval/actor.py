"""`EvalWorker`: a Ray actor that loads one model once and answers request shards (thin shell)."""
from __future__ import annotations

import ray

from actors.common.memory import keep_freed_memory_in_heap
from actors.eval.backend import LocalModelBackend
from actors.eval.config import EvalConfig


class EvalWorker:
    def __init__(self, model_dir: str, cfg: EvalConfig):
        # a process setting (the engine's and the scoring passes' multi-MB temporaries stay in the heap)
        keep_freed_memory_in_heap()
        self.backend = LocalModelBackend(model_dir, device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size,
                                         progress=False, num_threads=max(1, int(cfg.num_cpus)),
                                         max_num_seqs=cfg.max_num_seqs, kv_cache_memory=cfg.kv_cache_memory)

    def loglikelihood(self, requests: list) -> list:
        return self.backend.loglikelihood(requests)

    def loglikelihood_rolling(self, requests: list) -> list:
        return self.backend.loglikelihood_rolling(requests)

    def generate(self, requests: list) -> list:
        return self.backend.generate(requests)

    def info(self) -> dict:
        return {"model_dir": self.backend.model_dir, "device": self.backend.device,
                "params": self.backend.model.num_params(), **self.backend.precision}


EvalWorkerActor = ray.remote(EvalWorker)
