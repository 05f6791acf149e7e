"""Typed configs of the training stages."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

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
    """The layout of the training workers on a DeviceMesh: world = pp x dp_replicate x dp_shard x tp."""

    RENAMED: ClassVar[dict[str, str]] = {
        "dp": "dp_replicate (full copies, DDP-like) or dp_shard (sharded, FSDP2)"}

    dp_replicate: int = 1              # data parallel, full copies (DDP-like; with dp_shard > 1: HSDP)
    dp_shard: int = 1                  # data parallel with sharded weights/grads/optimizer state (FSDP2)
    tp: int = 1                        # tensor parallel (Megatron column/row-wise + sequence-parallel norms)
    pp: int = 1                        # pipeline stages' ranks
    pp_schedule: str = "1f1b"          # gpipe | 1f1b | interleaved_1f1b
    pp_microbatches: int = 0           # 0: one per stage (the fewest that keeps every stage busy)
    stages_per_rank: int = 0           # 0: 2 for interleaved_1f1b, else 1
    activation_checkpointing: str = "none"  # none | selective (recompute pointwise ops) | full (whole layers)
    compile: bool = False              # torch.compile each layer (off on CPU: compile time beats the gain)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0       # fractions allowed: 8 workers x 0.25 CPU fit a 2-core machine
    gpus_per_worker: float = 1.0       # with use_gpu
    threads_per_worker: int = 1        # torch intra-op threads per worker
    # the data-parallel engine: fsdp (FSDP2 over dp_shard, HSDP with dp_replicate) or deepspeed (ZeRO over all
    # dp_replicate x dp_shard ranks; tp = pp = 1), the same loop and loss functions either way
    backend: str = "fsdp"
    zero_stage: int = 2                # deepspeed: 1 optimizer state, 2 + gradients, 3 + parameters sharded
    offload_optimizer: bool = False    # deepspeed: optimizer state and step on the CPU (ZeRO-Offload)
    offload_params: bool = False       # deepspeed: ZeRO-3 parameters kept on the CPU between uses

    def __post_init__(self):
        for k in ("dp_replicate", "dp_shard", "tp", "pp", "threads_per_worker"):
            check(getattr(self, k) >= 1, f"parallel.{k}", f"must be >= 1, got {getattr(self, k)}")
        check(self.pp_schedule in ("gpipe", "1f1b", "interleaved_1f1b"), "parallel.pp_schedule",
              f"{self.pp_schedule!r}: use gpipe, 1f1b or interleaved_1f1b")
        check(self.activation_checkpointing in ("none", "selective", "full"), "parallel.activation_checkpointing",
              f"{self.activation_checkpointing!r}: use none, selective or full")
        check(self.pp_microbatches >= 0, "parallel.pp_microbatches", "must be >= 0 (0 = one per stage)")
        check(self.stages_per_rank >= 0, "parallel.stages_per_rank", "must be >= 0 (0 = automatic)")
        if self.stages_per_rank == 0:
            self.stages_per_rank = 2 if self.pp_schedule == "interleaved_1f1b" else 1
        check(self.pp_schedule == "interleaved_1f1b" or self.stages_per_rank == 1, "parallel.stages_per_rank",
              f"{self.pp_schedule} runs one stage per rank; set stages_per_rank=1 or pp_schedule=interleaved_1f1b")
        check(self.pp_schedule != "interleaved_1f1b" or self.stages_per_rank >= 2, "parallel.stages_per_rank",
              "interleaved_1f1b needs >= 2 stages per rank")
        check(self.cpus_per_worker > 0, "parallel.cpus_per_worker", "must be > 0 (fractions like 0.25 are fine)")
        check(not self.use_gpu or self.gpus_per_worker > 0, "parallel.gpus_per_worker", "must be > 0 with use_gpu")
        if self.pp_microbatches == 0:
            self.pp_microbatches = self.num_stages if self.pp > 1 else 1
        check(self.backend in ("fsdp", "deepspeed"), "parallel.backend",
              f"{self.backend!r}: use fsdp (FSDP2) or deepspeed (ZeRO)")
        check(self.zero_stage in (1, 2, 3), "parallel.zero_stage", f"{self.zero_stage}: use 1, 2 or 3")
        if self.backend == "deepspeed":
            check(self.tp == 1 and self.pp == 1, "parallel.backend",
                  f"deepspeed runs ZeRO data parallelism only ({self.describe()} asked): set tp=1 and pp=1, or "
                  "use backend=fsdp for tensor and pipeline parallel layouts")
            check(not self.compile, "parallel.compile", "compile is not wired for backend=deepspeed; set false")
        check(not self.offload_params or (self.backend == "deepspeed" and self.zero_stage == 3),
              "parallel.offload_params", "parameter offload is ZeRO-3's: set backend=deepspeed, zero_stage=3")
        check(not self.offload_optimizer or self.backend == "deepspeed", "parallel.offload_optimizer",
              "optimizer offload is DeepSpeed's: set backend=deepspeed")

    @property
    def world_size(self) -> int:
        return self.pp * self.dp_replicate * self.dp_shard * self.tp

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def num_stages(self) -> int:
        return self.pp * self.stages_per_rank

    def describe(self) -> str:
        if self.backend == "deepspeed":
            return (f"deepspeed zero{self.zero_stage} x dp{self.dp}"
                    + (" + optimizer offload" if self.offload_optimizer else "")
                    + (" + param offload" if self.offload_params else ""))
        return f"pp{self.pp} x dp_replicate{self.dp_replicate} x dp_shard{self.dp_shard} x tp{self.tp}"

    def check_model(self, mcfg, seq_len: int, batch_size: int, key: str = "pretrain") -> None:
        """The layout against the model and batch shapes, before any worker starts."""
        check(mcfg.num_attention_heads % self.tp == 0 and mcfg.num_key_value_heads % self.tp == 0,
              f"{key}.parallel.tp", f"tp={self.tp} must divide the model's {mcfg.num_attention_heads} attention "
              f"heads and {mcfg.num_key_value_heads} KV heads; choose tp in "
              f"{[t for t in range(1, mcfg.num_key_value_heads + 1) if mcfg.num_key_value_heads % t == 0 and mcfg.num_attention_heads % t == 0]}")
        check(seq_len % self.tp == 0, f"{key}.parallel.tp",
              f"tp={self.tp} must divide seq_len={seq_len} (sequence-parallel norms split the sequence)")
        check(self.num_stages <= mcfg.num_hidden_layers, f"{key}.parallel.pp",
              f"pp x stages_per_rank = {self.num_stages} stages but the model has {mcfg.num_hidden_layers} "
              "layers; use fewer stages")
        check(batch_size % self.pp_microbatches == 0, f"{key}.parallel.pp_microbatches",
              f"{self.pp_microbatches} microbatches must divide {key}.batch_size={batch_size}")
        check(self.pp_schedule != "interleaved_1f1b" or self.pp_microbatches % self.pp == 0,
              f"{key}.parallel.pp_microbatches",
              f"interleaved_1f1b needs a multiple of pp={self.pp} microbatches, got {self.pp_microbatches}")


@dataclass
class CheckpointConfig:
    """Sharded training checkpoints (torch.distributed.checkpoint) under the stage dir's `checkpoints/`: every
    rank writes its own shards, `step_N.tmp` is renamed `step_N` once complete and `latest` moves last."""
    every: int = 0                       # steps between checkpoints (0: only when stopped or preempted)
    keep: int = 2                        # newest complete checkpoints kept
    async_save: bool = True              # copy the state, then write it from a background thread
    export_every: int = 0                # an HF folder (exports/step_N) every M steps (0: only the final one)
    # auto: continue from this stage's `latest` when it was written by the same training config; never: start
    # fresh; or a checkpoint folder (step_N, or a checkpoints/ root) to load on any layout
    resume: str = "auto"
    # after a load, write resume.json with a sha256 of every loaded tensor gathered whole (costs a gather)
    verify_resume: bool = False
    # a pyarrow.fs URI (s3://bucket/prefix, gs://..., file:///abs) each complete checkpoint is uploaded to in the
    # background; `auto` resumes from it when the local checkpoints are gone. Drivers default it to
    # <FULLCHAIN_STORAGE>/<run>/<stage>/checkpoints when the storage root is remote.
    mirror: str = ""

    def __post_init__(self):
        check(self.every >= 0, "checkpoint.every", f"must be >= 0 (0 = only on stop), got {self.every}")
        check(self.keep >= 1, "checkpoint.keep", f"must be >= 1, got {self.keep}")
        check(self.export_every >= 0, "checkpoint.export_every", "must be >= 0 (0 = only the final export)")
        check(isinstance(self.resume, str) and self.resume.strip() != "", "checkpoint.resume",
              "use auto, never, or the path of a checkpoint folder")
        check(not self.mirror or "://" in self.mirror, "checkpoint.mirror",
              f"{self.mirror!r}: a pyarrow.fs URI such as s3://bucket/prefix or file:///absolute/path")


@dataclass
class FaultConfig:
    """Fault injection for tests and `bench.chaos`; each fires once per stage dir (a marker under .faults/)."""
    kill_writer_at_save: int = 0         # the n-th checkpoint write SIGKILLs its last rank after its first shard
    nan_at_step: int = 0                 # that step's loss (and so its gradients) becomes NaN
    spike_at_step: int = 0               # that step's loss is multiplied by 10
    slow_step: int = 0                   # that step sleeps `slow_s` more seconds
    slow_s: float = 0.0
    hang_at_step: int = 0                # the last rank never joins that step's collectives

    def __post_init__(self):
        for k in ("kill_writer_at_save", "nan_at_step", "spike_at_step", "slow_step", "hang_at_step"):
            check(getattr(self, k) >= 0, f"resilience.fault.{k}", "must be >= 0 (0 = off)")


@dataclass
class ResilienceConfig:
    """What a training run survives: worker loss (restart from `latest`), stop requests, bad steps, stalls."""
    # restarts of the worker group after a worker or node dies (Ray Train's FailureConfig); each resumes from
    # the last checkpoint, so set checkpoint.every too
    max_failures: int = 0
    # elastic: run on as few as this many workers when nodes are lost (0: the layout's exact count); data
    # parallelism shrinks and gradient accumulation grows so the global batch stays the same
    min_workers: int = 0
    stop_file: str = "STOP"              # created in the stage dir: save at the next step boundary and stop
    on_nan: str = "skip"                 # a NaN/inf loss or gradient: skip (no update) | rollback | raise
    spike_factor: float = 0.0            # a loss above factor x the median of the last 20 steps is treated as
    #                                      on_nan (0: off)
    stall_factor: float = 3.0            # a step slower than factor x the median step time is reported
    collective_timeout_s: float = 600.0  # a rank that does not join a collective fails the group after this
    fault: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self):
        check(self.max_failures >= -1, "resilience.max_failures", "must be >= 0, or -1 for unlimited restarts")
        check(self.min_workers >= 0, "resilience.min_workers", "must be >= 0 (0 = not elastic)")
        check(self.on_nan in ("skip", "rollback", "raise"), "resilience.on_nan",
              f"{self.on_nan!r}: use skip, rollback or raise")
        check(self.spike_factor == 0 or self.spike_factor > 1, "resilience.spike_factor",
              f"must be 0 (off) or > 1, e.g. 3.0; got {self.spike_factor}")
        check(self.stall_factor > 1, "resilience.stall_factor", f"must be > 1, e.g. 3.0; got {self.stall_factor}")
        check(self.collective_timeout_s > 0, "resilience.collective_timeout_s", "must be > 0 seconds")
        check(bool(self.stop_file) and "/" not in self.stop_file, "resilience.stop_file",
              f"{self.stop_file!r}: a file name inside the stage dir, e.g. STOP")


@dataclass
class PretrainConfig:
    model: str = "debug"                 # shape from actors.model.config.list_configs() (random init)
    # continued pretraining: start from this model's weights and shape instead (registry name, HF folder or
    # .gguf); the data stage must tokenize with its tokenizer (data.tokenizer: the same model)
    init_from: str = ""
    seq_len: int = 256                   # must equal the data stage's packed length
    batch_size: int = 8                  # sequences per worker per step
    max_steps: int = 150
    eval_every: int = 50
    eval_max_batches: int = 8
    log_every: int = 5
    seed: int = 0
    grad_accum_steps: int = 1            # micro-batches per optimizer step on each data-parallel rank
    # compute dtype; weights, gradients' reduction and optimizer state stay fp32 (mixed precision). auto:
    # bfloat16 on a GPU and on a CPU with native bf16 (AVX512_BF16/AMX: a bf16 matmul ~4x fp32), else float32
    # (emulated bf16 is ~65x slower); cluster.hardware decides. float32 is the parity reference.
    dtype: str = "auto"
    # rows are packed from several documents: with this on, tokens attend only within their own document and
    # positions restart per document (as if each had its own row); off, a row is one causal sequence
    document_mask: bool = False
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resilience: ResilienceConfig = field(default_factory=ResilienceConfig)

    def __post_init__(self):
        from actors.model.config import get_config, list_configs

        check(self.model in list_configs(), "pretrain.model", f"unknown model {self.model!r}; choose one of "
              f"{list_configs()}")
        for k in ("seq_len", "batch_size", "max_steps", "eval_every", "log_every", "grad_accum_steps"):
            check(getattr(self, k) >= 1, f"pretrain.{k}", f"must be >= 1, got {getattr(self, k)}")
        check(self.dtype in ("auto", "float32", "bfloat16"), "pretrain.dtype",
              f"{self.dtype!r}: use auto (the hardware's), float32 or bfloat16")
        check(not (self.document_mask and self.parallel.pp > 1), "pretrain.document_mask",
              "document masks do not pass between pipeline stages yet; set document_mask=false or parallel.pp=1")
        if self.init_from:
            from actors.model.registry import spec_problem

            why = spec_problem(self.init_from)
            check(why is None, "pretrain.init_from", f"{why}; use '' (random init of pretrain.model), a registry "
                                                     "name, a .gguf file or an HF folder")
        else:  # with init_from the driver checks the layout against the base's own shape
            self.parallel.check_model(get_config(self.model), self.seq_len, self.batch_size)


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    use_dora: bool = False               # DoRA: a learned magnitude per output row over the normalised W + BA
    use_rslora: bool = False             # scale alpha / sqrt(r) instead of alpha / r (stable at large r)
    # peft's `layers_to_transform`: adapters only in these decoder layers (empty: all). With only the top layers
    # adapted, backward stops at the lowest adapted layer: on the top half of 30 layers a step costs ~3/4.
    layers_to_transform: list[int] = field(default_factory=list)

    def __post_init__(self):
        check(self.r >= 1, "finetune.lora.r", "must be >= 1 (e.g. 8 or 16)")
        if isinstance(self.layers_to_transform, int) and not isinstance(self.layers_to_transform, bool):
            self.layers_to_transform = [self.layers_to_transform]
        ok = isinstance(self.layers_to_transform, list) and all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers_to_transform)
        check(ok and len(set(ok and self.layers_to_transform or [])) == len(self.layers_to_transform or []),
              "finetune.lora.layers_to_transform",
              f"{self.layers_to_transform!r}: give distinct layer indices >= 0, e.g. [12, 13, 14], or [] for all")
        check(0 <= self.dropout < 1, "finetune.lora.dropout", "must be in [0, 1)")
        allowed = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        bad = [m for m in self.target_modules if m not in allowed]
        check(not bad and self.target_modules, "finetune.lora.target_modules",
              f"{bad or 'empty'}: choose from {sorted(allowed)}")


@dataclass
class DatasetConfig:
    """One fine-tuning dataset: a registry name (configs/datasets.yaml) or a file `path` (json / jsonl / parquet,
    relative to the data root or absolute) in `format`, with `columns` mapping our field names to the file's."""
    name: str = ""
    path: str = ""
    format: str = "auto"                 # auto | alpaca | sharegpt | messages
    columns: dict[str, str] = field(default_factory=dict)
    max_rows: int = 0                    # the file's first rows only (0: all)
    ratio: float = 0.0                   # share of the training mix (0 for all datasets: every row once)

    def __post_init__(self):
        from actors.common.formats import FORMATS

        where = f"finetune.datasets[{self.name or self.path}]"
        check(bool(self.name or self.path), "finetune.datasets[]", "each dataset needs a `name` (registry: "
              "configs/datasets.yaml) or a `path`")
        check(self.format in FORMATS, f"{where}.format", f"{self.format!r}: use one of {list(FORMATS)}")
        check(self.max_rows >= 0, f"{where}.max_rows", "must be >= 0 (0 = all rows)")
        check(self.ratio >= 0, f"{where}.ratio", "must be >= 0")


@dataclass
class DPOConfig:
    beta: float = 0.1                    # strength of the KL anchor to the reference (TRL's default)
    label_smoothing: float = 0.0         # conservative DPO: assumed rate of flipped preference labels

    def __post_init__(self):
        check(self.beta > 0, "finetune.dpo.beta", "must be > 0 (0.1 is the usual)")
        check(0 <= self.label_smoothing < 0.5, "finetune.dpo.label_smoothing", "must be in [0, 0.5)")


@dataclass
class KTOConfig:
    beta: float = 0.1
    desirable_weight: float = 1.0        # λ_D; raise it when desirable rows are rarer (λ_D n_D ≈ λ_U n_U)
    undesirable_weight: float = 1.0

    def __post_init__(self):
        check(self.beta > 0, "finetune.kto.beta", "must be > 0 (0.1 is the usual)")
        check(self.desirable_weight > 0 and self.undesirable_weight > 0, "finetune.kto",
              "desirable_weight and undesirable_weight must be > 0")


OBJECTIVE_KINDS = {"sft": ("sft",), "dpo": ("preference",), "rm": ("preference",), "kto": ("kto",)}


@dataclass
class FinetuneConfig:
    RENAMED: ClassVar[dict[str, str]] = {"save_every": "checkpoint.every",
                                         "resume": "checkpoint.resume (auto | never | a checkpoint path)"}

    # What to fine-tune: "pretrain" (this run's pretrain stage output), a registry name
    # (`python -m jobs.models list`), a .gguf file, or a Llama-family Hugging Face folder.
    base: str = "pretrain"
    # after training, the job driver loads the adapter into a running Serve app (its base URL, e.g.
    # http://127.0.0.1:8000) through /v1/load_lora_adapter with load_inplace: a hot swap, no restart; the name
    # clients then send as "<model>:<publish_name>" ('' = the run's name)
    publish: str = ""
    publish_name: str = ""
    objective: str = "sft"               # sft | dpo | kto | rm (reward model: scalar head, pairwise loss)
    method: str = "lora"                 # lora | qlora (4-bit frozen base) | full
    # dtype of the frozen base weights under LoRA. auto: bfloat16 on a GPU or a CPU with native bf16 (a bf16
    # matmul ~4x fp32 there, ~65x slower where it is emulated), else float32; the adapter trains in fp32 and is
    # merged into an fp32 copy of the base at export.
    # Full fine-tuning keeps fp32 master weights; bfloat16 there runs the forward under autocast.
    # QLoRA computes in this dtype from its 4-bit weights.
    base_dtype: str = "auto"
    lora: LoraConfig = field(default_factory=LoraConfig)
    quant_group: int = 64                # QLoRA: weights per int4 scale/min group
    dpo: DPOConfig = field(default_factory=DPOConfig)
    kto: KTOConfig = field(default_factory=KTOConfig)
    template: str = ""                   # chat template by name (ours, chatml, internlm2, llama3); '' = the base's
    datasets: list[DatasetConfig] = field(default_factory=list)
    mix_rows: int = 0                    # with ratios: rows in the mix (0 = as many as the datasets hold)
    val_size: float = 0.0                # held out of the mix: a fraction (< 1) or a row count
    train_on_prompt: bool = False        # SFT loss on every token, prompts included
    mask_history: bool = False           # SFT loss on the last assistant turn only
    packing: bool = False                # SFT: several samples per row (per-sample masks), max_len tokens a row
    group_by_length: int = 16            # length-grouped batches: windows of this many batches (1: off)
    max_len: int = 1024                  # tokens per sample; longer SFT rows are cut from the right, longer
    #                                      pairs / KTO rows keep the prompt's end and the answers' start (counted)
    batch_size: int = 8                  # conversations (pairs) per worker per micro-batch
    grad_accum_steps: int = 1
    max_steps: int = 200
    log_every: int = 5
    eval_every: int = 0                  # validation loss (+ preference accuracy) every N steps; 0: at the end
    sample_every: int = 0                # a greedy generation sample every N steps (0: never)
    sample_prompt: str = "What is 17 + 25?"
    synthetic_max_rows: int = 4000       # pipeline: the data stage's synthetic tool task (0 disables)
    sft_max_rows: int = 500              # pipeline: per data.sft_sources file (Alpaca, glaive tool calls...)
    sft_rows: dict = field(default_factory=dict)   # per SFT set by name, instead of sft_max_rows (0 disables)
    seed: int = 0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, warmup_steps=10, weight_decay=0.0))
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resilience: ResilienceConfig = field(default_factory=ResilienceConfig)

    def __post_init__(self):
        check(self.objective in OBJECTIVE_KINDS, "finetune.objective",
              f"{self.objective!r}: use one of {list(OBJECTIVE_KINDS)}")
        check(self.method in ("lora", "qlora", "full"), "finetune.method",
              f"{self.method!r}: use 'lora', 'qlora' or 'full'")
        check(isinstance(self.base, str) and self.base.strip() != "", "finetune.base",
              "must be 'pretrain', a registry name (python -m jobs.models list), a .gguf file or an HF folder")
        check(not self.publish or self.publish.startswith(("http://", "https://")), "finetune.publish",
              f"{self.publish!r}: give the Serve app's base URL, e.g. http://127.0.0.1:8000 ('' = do not publish)")
        check(not self.publish or self.method != "full", "finetune.publish",
              "publishes a LoRA adapter; method 'full' makes none (serve its merged folder instead)")
        check(not self.publish_name or (":" not in self.publish_name and "/" not in self.publish_name),
              "finetune.publish_name", f"{self.publish_name!r}: a name without ':' or '/', e.g. sql-v2")
        if self.base != "pretrain":
            from actors.model.registry import spec_problem

            why = spec_problem(self.base)
            check(why is None, "finetune.base", f"{why}; use 'pretrain' (this run's pretrain output), a registry "
                                                "name, a .gguf file or an HF folder")
        check(self.base_dtype in ("auto", "float32", "bfloat16"), "finetune.base_dtype",
              f"{self.base_dtype!r}: use auto (the hardware's), float32 or bfloat16")
        check(self.quant_group >= 2 and self.quant_group % 2 == 0, "finetune.quant_group",
              "must be an even number >= 2 (64 is the usual)")
        if self.template:
            from actors.model.chat import TEMPLATES

            check(self.template in TEMPLATES, "finetune.template",
                  f"{self.template!r}: use one of {list(TEMPLATES)} or '' (the base's own template)")
        for k in ("max_len", "batch_size", "max_steps", "log_every", "grad_accum_steps", "group_by_length"):
            check(getattr(self, k) >= 1, f"finetune.{k}", f"must be >= 1, got {getattr(self, k)}")
        for k in ("eval_every", "sample_every", "mix_rows"):
            check(getattr(self, k) >= 0, f"finetune.{k}", f"must be >= 0 (0 = off), got {getattr(self, k)}")
        check(self.val_size >= 0 and (self.val_size < 1 or float(self.val_size).is_integer()), "finetune.val_size",
              f"{self.val_size}: a fraction in [0, 1) or a whole number of rows")
        check(not self.packing or self.objective == "sft", "finetune.packing",
              f"packing is for SFT; {self.objective} compares whole sequences: set packing=false")
        self.datasets = [d if isinstance(d, DatasetConfig) else DatasetConfig(**d) for d in self.datasets]
        ratios = [d.ratio for d in self.datasets]
        check(all(ratios) or not any(ratios), "finetune.datasets",
              f"ratios {ratios}: give every dataset a ratio, or none (every row once)")
        p = self.parallel
        check(p.tp == 1 and p.pp == 1, "finetune.parallel",
              f"fine-tuning runs data parallel ({p.describe()} asked): use parallel.dp_replicate=N (whole copies) "
              f"and/or parallel.dp_shard=N (FSDP2: weights, gradients and optimizer state sharded) with tp=1, pp=1")
        check(not self.lora.use_dora or self.method == "lora", "finetune.lora.use_dora",
              f"DoRA needs the base weights' norms, which a {self.method} base does not keep: use method=lora")
        for k, v in self.sft_rows.items():
            check(isinstance(v, int) and v >= 0, f"finetune.sft_rows.{k}", f"must be a row count >= 0 (0 leaves the set out), got {v!r}")
        check(self.objective != "sft" or self.datasets or self.synthetic_max_rows + self.sft_max_rows > 0,
              "finetune.datasets", "no data: name datasets (configs/datasets.yaml), or keep the pipeline's "
              "synthetic_max_rows / sft_max_rows > 0")
        check(self.objective == "sft" or self.datasets, "finetune.datasets",
              f"{self.objective} trains on {' / '.join(OBJECTIVE_KINDS[self.objective])} rows: name such a "
              "dataset, e.g. datasets: [{name: dpo_en_demo}] or [{name: kto_en_demo}]")
