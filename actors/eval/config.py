"""`EvalConfig`: which tasks run on which data with which options, and how the eval workers are sized.

Task names are resolved by the registry (actors/eval/spec.py: configs/tasks/*.yaml plus `include_paths`);
nothing here is specific to one task: a task's data file is `data[TASK]`, its row cap `limits[TASK]`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from actors.common.config import ConfigError, check


@dataclass
class EvalConfig:
    RENAMED = {k: "eval.limits: {TASK: N} (or eval.limit for every task)" for k in
               ("arc_limit", "hellaswag_limit", "arith_limit", "bfcl_limit", "ppl_max_rows")}
    RENAMED.update({k: "eval.data: {TASK: PATH}" for k in
                    ("arc_easy_path", "arc_challenge_path", "hellaswag_path", "bfcl_simple_path", "val_dir",
                     "arith_path")})
    RENAMED.update(max_new_tokens="eval.gen_kwargs: {max_gen_toks: N}",
                   bfcl_max_new_tokens="eval.gen_kwargs: {max_gen_toks: N} (or max_new_tokens in the task's args)",
                   gen_batch_size="eval.max_num_seqs")

    # tasks of the fine-tune base and the fine-tuned model (names, groups such as mmlu, or task .yaml paths)
    tasks: list[str] = field(default_factory=lambda: ["arc_easy", "arith_tool", "bfcl_simple"])
    # tasks of the pretrain stage's output when it is not the fine-tune base (perplexity needs its tokenizer)
    pretrain_tasks: list[str] = field(default_factory=lambda: ["perplexity", "arc_easy"])
    data: dict[str, str] = field(default_factory=dict)      # TASK -> file (or folder) replacing its test split
    include_paths: list[str] = field(default_factory=list)   # more task YAML folders or files
    # Relative data paths resolve against data_root; the runner fills it from cluster.data_root()
    # (only cluster/ reads environment variables).
    data_root: str | None = None
    limit: int | None = None                 # docs per task (per subject for mmlu/cmmlu); None = all
    limits: dict[str, int] = field(default_factory=dict)     # TASK -> docs, over `limit`
    num_fewshot: int | None = None           # None: each task's own
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    gen_kwargs: dict[str, Any] = field(default_factory=dict)  # until / max_gen_toks for every generation task
    log_samples: bool = True                 # samples_<model>_<task>.jsonl beside results.json
    num_samples: int = 3                     # samples kept inside results.json per generation task
    batch_size: int = 16                     # loglikelihood rows per forward pass (a question + its choices = 1)
    workers: int = 1                         # eval worker actors per model (requests sharded over them)
    # rows one worker's engine decodes together: a CPU decode step of a 135M model costs about the same for 1 or
    # 32 rows (it reads every weight once), so more rows cut generation time until compute catches up
    max_num_seqs: int = 32
    kv_cache_memory: str = "1GiB"            # the engine's KV pool per worker
    cache_dir: str | None = None             # request cache: an interrupted run resumes from it
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bfloat16 on a GPU or a CPU with native bf16, else float32 (cluster.hardware); float32 for parity
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    num_cpus: float = 1.0                    # Ray CPUs (and torch threads) of one eval worker
    num_gpus: float = 0.0
    progress: bool = True                    # a bar over requests

    def __post_init__(self):
        from actors.eval.spec import TaskRegistry

        check(isinstance(self.tasks, (list, tuple)) and len(self.tasks) > 0, "eval.tasks",
              "must be a non-empty list of task names, e.g. [arc_easy, mmlu]")
        try:
            registry = TaskRegistry(self.include_paths)
        except ConfigError as e:
            raise ConfigError(f"eval.include_paths: {e}") from None
        for key in ("tasks", "pretrain_tasks"):
            names = getattr(self, key)
            check(isinstance(names, (list, tuple)), f"eval.{key}", "must be a list of task names")
            check(len(set(names)) == len(names), f"eval.{key}", f"lists a task twice: {names}")
            for n in names:
                try:
                    registry.resolve(n)
                except ConfigError as e:
                    raise ConfigError(f"eval.{key}: {e}") from None
        for k, v in list(self.limits.items()) + [("limit", self.limit)]:
            check(v is None or (isinstance(v, int) and v > 0), f"eval.limits.{k}" if k != "limit" else "eval.limit",
                  f"must be an integer > 0 or null (all docs), got {v!r}")
        check(self.num_fewshot is None or self.num_fewshot >= 0, "eval.num_fewshot",
              f"must be >= 0 or null (each task's own), got {self.num_fewshot}")
        check(not self.fewshot_as_multiturn or self.apply_chat_template, "eval.fewshot_as_multiturn",
              "needs apply_chat_template: true (exemplars become user/assistant turns)")
        unknown = [k for k in self.gen_kwargs if k not in ("until", "max_gen_toks")]
        check(not unknown, "eval.gen_kwargs", f"unknown key(s) {unknown}; use until and max_gen_toks (greedy only)")
        if "max_gen_toks" in self.gen_kwargs:
            check(int(self.gen_kwargs["max_gen_toks"]) > 0, "eval.gen_kwargs.max_gen_toks", "must be > 0")
        check(self.batch_size > 0, "eval.batch_size", f"must be > 0, e.g. 16, got {self.batch_size}")
        check(self.workers >= 1, "eval.workers", f"must be >= 1, got {self.workers}")
        check(self.max_num_seqs > 0, "eval.max_num_seqs", f"must be > 0, e.g. 32, got {self.max_num_seqs}")
        check(self.num_samples >= 0, "eval.num_samples", f"must be >= 0, got {self.num_samples}")
        check(self.num_cpus > 0, "eval.num_cpus", f"must be > 0 (Ray CPUs per eval worker), got {self.num_cpus}")
        check(self.num_gpus >= 0, "eval.num_gpus", f"must be >= 0, got {self.num_gpus}")
        self.engine_config()  # the engine validates its own settings; errors name eval.<key>

    def engine_config(self):
        """The `EngineConfig` of each eval worker's engine (actors.engine validates max_num_seqs and
        kv_cache_memory, once, here)."""
        from actors.engine import EngineConfig

        try:
            return EngineConfig(max_num_seqs=self.max_num_seqs, kv_cache_memory=self.kv_cache_memory)
        except ConfigError as e:
            raise ConfigError(str(e).replace("engine.", "eval.", 1)) from None
