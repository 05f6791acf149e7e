"""`EvalConfig`: which tasks to run on which data, and how the eval workers are sized."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from actors.common.config import check

# Every task name `EvalConfig.tasks` accepts; tasks.py registers one builder per name.
TASK_NAMES = ("perplexity", "arc_easy", "arc_challenge", "hellaswag", "arith_tool", "bfcl_simple")


@dataclass
class EvalConfig:
    # tasks of the fine-tune base and the fine-tuned model
    tasks: list[str] = field(default_factory=lambda: ["arc_easy", "arith_tool", "bfcl_simple"])
    # tasks of the pretrain stage's output when it is not the fine-tune base (perplexity needs its tokenizer)
    pretrain_tasks: list[str] = field(default_factory=lambda: ["perplexity", "arc_easy"])
    # Relative benchmark paths resolve against data_root; runner.run_eval fills data_root from
    # cluster.data_root() (only cluster/ reads environment variables).
    data_root: str | None = None
    arc_easy_path: str = "arc/arc_easy_test_rows0-199.jsonl"
    arc_challenge_path: str = "arc/arc_challenge_test_rows0-199.jsonl"
    hellaswag_path: str = "hellaswag/val_rows0-199.jsonl"
    bfcl_simple_path: str = "bfcl/BFCL_v4_simple_python_rows0-49.jsonl"
    bfcl_limit: int | None = None          # first N rows (None = all 50 shared rows)
    bfcl_max_new_tokens: int = 128         # a call with a few arguments is ~40-80 tokens
    arc_limit: int | None = None           # first N docs of each ARC slice; None = all (200 in shared)
    hellaswag_limit: int | None = None
    val_dir: str | None = None             # folder of packed *.parquet (column input_ids) for perplexity
    ppl_max_rows: int = 256                # rows of the validation shards scored (in file order)
    arith_path: str | None = None          # held-out synthetic JSONL (actors/data/synthetic.py format)
    arith_limit: int | None = 100
    max_new_tokens: int = 48               # per generated turn; a tool call is ~25 tokens with our BPE
    batch_size: int = 16                   # loglikelihood / rolling windows per forward pass
    # rows decoded together: a CPU decode step of a 135M model costs about the same for 1 or 32 rows (it reads
    # every weight once), so larger batches cut generation time until compute catches up
    gen_batch_size: int = 32
    num_samples: int = 3                   # transcripts kept per generation task in results.json
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    num_cpus: float = 1.0                  # Ray resources of one EvalWorker
    num_gpus: float = 0.0
    progress: bool = True                  # tqdm bars over long loops

    def __post_init__(self):
        check(isinstance(self.tasks, (list, tuple)) and len(self.tasks) > 0, "eval.tasks",
              f"must be a non-empty list of task names; allowed: {list(TASK_NAMES)}")
        for key in ("tasks", "pretrain_tasks"):
            names = getattr(self, key)
            check(isinstance(names, (list, tuple)), f"eval.{key}", f"must be a list of task names from {list(TASK_NAMES)}")
            unknown = [t for t in names if t not in TASK_NAMES]
            check(not unknown, f"eval.{key}", f"unknown task(s) {unknown}; allowed: {list(TASK_NAMES)}")
            check(len(set(names)) == len(names), f"eval.{key}", f"lists a task twice: {names}")
        check(self.bfcl_max_new_tokens > 0, "eval.bfcl_max_new_tokens", f"must be > 0, got {self.bfcl_max_new_tokens}")
        for k in ("arc_limit", "hellaswag_limit", "arith_limit", "bfcl_limit"):
            v = getattr(self, k)
            check(v is None or v > 0, f"eval.{k}", f"must be > 0 or null (all docs), got {v}")
        check(self.ppl_max_rows > 0, "eval.ppl_max_rows", f"must be > 0, got {self.ppl_max_rows}")
        check(self.max_new_tokens > 0, "eval.max_new_tokens", f"must be > 0, e.g. 48, got {self.max_new_tokens}")
        check(self.batch_size > 0, "eval.batch_size", f"must be > 0, e.g. 16, got {self.batch_size}")
        check(self.gen_batch_size > 0, "eval.gen_batch_size", f"must be > 0, e.g. 32, got {self.gen_batch_size}")
        check(self.num_samples >= 0, "eval.num_samples", f"must be >= 0, got {self.num_samples}")
        check(self.num_cpus > 0, "eval.num_cpus", f"must be > 0 (Ray CPUs per eval worker), got {self.num_cpus}")
        check(self.num_gpus >= 0, "eval.num_gpus", f"must be >= 0, got {self.num_gpus}")

    def resolve(self, path: str) -> Path:
        """A benchmark path: absolute as given, relative ones under data_root."""
        p = Path(path)
        if p.is_absolute():
            return p
        check(self.data_root is not None, "eval.data_root",
              f"relative path {path!r} needs data_root (run_eval sets it from cluster.data_root()); "
              "or give an absolute path")
        return Path(self.data_root) / p

    def require_inputs(self, tasks: list[str] | None = None) -> None:
        """Fail before any model loads when a requested task has no data."""
        tasks = self.tasks if tasks is None else tasks
        if "perplexity" in tasks:
            check(self.val_dir is not None, "eval.val_dir",
                  "task 'perplexity' needs the packed validation folder; pass val_dir=... to run_eval")
            check(Path(self.val_dir).is_dir() and any(Path(self.val_dir).glob("*.parquet")), "eval.val_dir",
                  f"{self.val_dir!r} holds no *.parquet shards; point it at the data stage's val folder")
        if "arith_tool" in tasks:
            check(self.arith_path is not None, "eval.arith_path",
                  "task 'arith_tool' needs the held-out synthetic JSONL; pass arith_heldout=... to run_eval")
            check(Path(self.arith_path).is_file(), "eval.arith_path", f"{self.arith_path!r} does not exist")
        for task, key in (("arc_easy", "arc_easy_path"), ("arc_challenge", "arc_challenge_path"),
                          ("hellaswag", "hellaswag_path"), ("bfcl_simple", "bfcl_simple_path")):
            if task in tasks:
                p = self.resolve(getattr(self, key))
                check(p.is_file(), f"eval.{key}", f"{str(p)!r} does not exist; set eval.{key} or eval.data_root")
