"""Eval stage: lm-evaluation-harness-shaped tasks over a model backend, one Ray EvalWorker per checkpoint.

Ray-free: `evaluate(backend, tasks, cfg)`, `LocalModelBackend`, the tasks. With Ray: `run_eval(...)`.
"""
from actors.eval.backend import (GenerateRequest, LocalModelBackend, LoglikelihoodRequest, ModelBackend,
                                 RollingRequest)
from actors.eval.config import TASK_NAMES, EvalConfig
from actors.eval.runner import evaluate, run_eval, write_results

__all__ = ["EvalConfig", "TASK_NAMES", "ModelBackend", "LocalModelBackend", "LoglikelihoodRequest",
           "RollingRequest", "GenerateRequest", "evaluate", "run_eval", "write_results"]
