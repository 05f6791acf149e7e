"""`EvalWorker`: a Ray actor that loads one checkpoint once and runs eval tasks on it (thin shell)."""
from __future__ import annotations

import ray

from actors.eval.backend import LocalModelBackend
from actors.eval.config import EvalConfig
from actors.eval.runner import evaluate


class EvalWorker:
    def __init__(self, model_dir: str, cfg: EvalConfig):
        self.cfg = cfg
        self.backend = LocalModelBackend(model_dir, device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size,
                                         progress=cfg.progress, num_threads=max(1, int(cfg.num_cpus)),
                                         gen_batch_size=cfg.gen_batch_size)

    def run(self, task_names: list[str] | None = None) -> dict:
        return evaluate(self.backend, task_names or self.cfg.tasks, self.cfg)

    def info(self) -> dict:
        return {"model_dir": self.backend.model_dir, "device": self.backend.device,
                "params": self.backend.model.num_params()}


EvalWorkerActor = ray.remote(EvalWorker)
