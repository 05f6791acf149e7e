"""Eval stage: tasks as data (spec.py, configs/tasks/*.yaml) over model backends, sharded over eval workers.

Ray-free: `run_tasks(backend, tasks)`, `evaluate(backend, names, cfg)`, `LocalModelBackend`, the tasks and their
registry. With Ray: `run_eval(models, cfg, out_dir)` (a `WorkerPool` of `EvalWorker` actors per model).
"""
from actors.eval.backend import (GenerateRequest, LocalModelBackend, LoglikelihoodRequest, ModelBackend,
                                 RollingRequest)
from actors.eval.config import EvalConfig
from actors.eval.runner import evaluate, run_eval, run_tasks, write_results

__all__ = ["EvalConfig", "ModelBackend", "LocalModelBackend", "LoglikelihoodRequest", "RollingRequest",
           "GenerateRequest", "evaluate", "run_eval", "run_tasks", "write_results"]
