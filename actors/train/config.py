"""Typed configs of the training stages."""
from __future__ import annotations

from dataclasses import dataclass, field

from actors.common.config import check


@dataclass
class OptimConfig:
    lr: float = 3e-3
    min_lr_ratio: float = 0.1          # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 20
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0

    def __post_init__(self):
        check(self.lr > 0, "optim.lr", f"must be > 0 (e.g. 3e-4), got {self.lr}")
        check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
        check(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        check(self.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 disables clipping)")
        self.betas = tuple(self.betas)
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
              "must be two numbers in [0, 1), e.g. [0.9, 0.95]")


@dataclass
class ParallelConfig:
    """Mesh sizes. Data parallel runs (gloo on CPU, NCCL on GPU); tp/pp > 1 are rejected until implemented."""

    dp: int = 2                        # number of Ray Train workers
    tp: int = 1
    pp: int = 1
    activation_checkpointing: bool = False
    compile: bool = False
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    threads_per_worker: int = 1        # torch intra-op threads per worker (2 workers x 1 thread on 2 cores)

    def __post_init__(self):
        check(self.dp >= 1, "parallel.dp", "must be >= 1 (number of training workers)")
        check(self.tp == 1, "parallel.tp", "tensor parallelism is not implemented yet; set parallel.tp=1")
        check(self.pp == 1, "parallel.pp", "pipeline parallelism is not implemented yet; set parallel.pp=1")
        check(self.threads_per_worker >= 1, "parallel.threads_per_worker", "must be >= 1")


@dataclass
class PretrainConfig:
    model: str = "debug"                 # registry name, see actors.model.config.list_configs()
    seq_len: int = 256                   # must equal the data stage's packed length
    batch_size: int = 8                  # sequences per worker per step
    max_steps: int = 150
    eval_every: int = 50
    eval_max_batches: int = 8
    log_every: int = 5
    shuffle_buffer_rows: int = 2048      # per-worker local shuffle buffer (packed rows; 2048x256 int64 = 4 MB)
    # Rows of its shard a worker may hold in memory: a shard up to this size is read through Ray Data once and
    # reshuffled in memory every epoch (int32, 65536x256 = 64 MB), with nothing streaming while it trains
    # (streaming cost 0.16 s of a 0.73 s step on 2 CPU cores); a larger shard streams. 0 always streams.
    cache_max_rows: int = 65536
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self):
        from actors.model.config import list_configs

        check(self.model in list_configs(), "pretrain.model", f"unknown model {self.model!r}; choose one of "
              f"{list_configs()}")
        for k in ("seq_len", "batch_size", "max_steps", "eval_every", "log_every"):
            check(getattr(self, k) >= 1, f"pretrain.{k}", f"must be >= 1, got {getattr(self, k)}")
        check(self.cache_max_rows >= 0, "pretrain.cache_max_rows",
              f"must be >= 0 (0 always streams the shard), got {self.cache_max_rows}")


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    def __post_init__(self):
        check(self.r >= 1, "finetune.lora.r", "must be >= 1 (e.g. 8 or 16)")
        check(0 <= self.dropout < 1, "finetune.lora.dropout", "must be in [0, 1)")
        allowed = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        bad = [m for m in self.target_modules if m not in allowed]
        check(not bad and self.target_modules, "finetune.lora.target_modules",
              f"{bad or 'empty'}: choose from {sorted(allowed)}")


@dataclass
class FinetuneConfig:
    # What to fine-tune: "pretrain" (this run's pretrain stage output), a registry name
    # (`python -m jobs.models list`), a .gguf file, or a Llama-family Hugging Face folder.
    base: str = "pretrain"
    # dtype of the frozen base weights under LoRA: bfloat16 where the CPU has it (a bf16 matmul is ~4x fp32
    # here) or on GPU; the adapter trains in fp32 and is merged into an fp32 copy of the base at export.
    # Full fine-tuning keeps fp32 weights.
    base_dtype: str = "float32"
    method: str = "lora"
    lora: LoraConfig = field(default_factory=LoraConfig)
    max_len: int = 1024                  # tokens per conversation; longer ones are truncated from the right
    batch_size: int = 8                  # conversations per worker per step
    max_steps: int = 200
    log_every: int = 5
    synthetic_max_rows: int = 4000       # 0 disables the synthetic tool task
    sft_max_rows: int = 500              # per data.sft_sources file (Alpaca, glaive tool calls...); 0 disables
    seed: int = 0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, warmup_steps=10, weight_decay=0.0))
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self):
        check(self.method in ("lora", "full"), "finetune.method", f"{self.method!r}: use 'lora' or 'full'")
        check(isinstance(self.base, str) and self.base.strip() != "", "finetune.base",
              "must be 'pretrain', a registry name (python -m jobs.models list), a .gguf file or an HF folder")
        if self.base != "pretrain":
            from actors.model.registry import spec_problem

            why = spec_problem(self.base)
            check(why is None, "finetune.base", f"{why}; use 'pretrain' (this run's pretrain output), a registry "
                                                "name, a .gguf file or an HF folder")
        check(self.base_dtype in ("float32", "bfloat16"), "finetune.base_dtype",
              f"{self.base_dtype!r}: use float32 or bfloat16")
        check(self.method == "lora" or self.base_dtype == "float32", "finetune.base_dtype",
              "full fine-tuning trains the weights themselves in fp32; set finetune.base_dtype=float32")
        for k in ("max_len", "batch_size", "max_steps", "log_every"):
            check(getattr(self, k) >= 1, f"finetune.{k}", f"must be >= 1, got {getattr(self, k)}")
        check(self.synthetic_max_rows + self.sft_max_rows > 0, "finetune.synthetic_max_rows",
              "synthetic_max_rows and sft_max_rows are both 0: there is nothing to fine-tune on")
