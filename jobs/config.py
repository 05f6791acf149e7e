"""The pipeline config: one typed section per stage, loaded from YAML with `--set a.b=c` overrides."""
from __future__ import annotations

from dataclasses import dataclass, field

from actors.agent.config import AgentConfig
from actors.common.config import check, load
from actors.data.config import DataConfig
from actors.eval.config import EvalConfig
from actors.train.config import FinetuneConfig, PretrainConfig

STAGES = ("data", "pretrain", "finetune", "evaluate", "serve", "agent")


@dataclass
class RunSection:
    name: str = "demo"
    stages: list[str] = field(default_factory=lambda: list(STAGES))

    def __post_init__(self):
        bad = [s for s in self.stages if s not in STAGES]
        check(not bad, "run.stages", f"unknown stage(s) {bad}; allowed (in order): {list(STAGES)}")


@dataclass
class ServeConfig:
    # what to serve: "finetune" (this run's fine-tuned model), a registry name, a .gguf file or an HF folder
    model: str = "finetune"
    model_name: str = "fullchain"
    port: int = 8000                   # 0: pick a free port on 127.0.0.1
    num_replicas: int = 1
    # bfloat16 on a CPU with avx512_bf16 (or a GPU): decode reads half the bytes per token
    dtype: str = "float32"
    kv_cache_memory: str = "2GiB"      # the engine's KV pool per replica (bytes or a fraction of free memory)
    max_num_seqs: int = 64             # requests one replica advances together
    keep_alive: bool = False           # leave the endpoint up after the pipeline (Ctrl-C stops it)
    demo_prompt: str = "What is 4821 + 937?"
    demo_with_tools: bool = True       # send the synthetic task's tool specs with the demo chat
    demo_max_tokens: int = 48

    def __post_init__(self):
        check(0 <= self.port < 65536, "serve.port", "must be a TCP port (0 = any free port)")
        if self.model != "finetune":
            from actors.model.registry import spec_problem

            why = spec_problem(self.model)
            check(why is None, "serve.model", f"{why}; use 'finetune' (this run's fine-tuned model), a registry "
                                              "name, a .gguf file or an HF folder")
        check(self.num_replicas >= 1, "serve.num_replicas", "must be >= 1")
        check(self.dtype in ("float32", "bfloat16", "float16"), "serve.dtype",
              f"{self.dtype!r}: use float32, bfloat16 or float16")
        check(self.demo_max_tokens >= 1, "serve.demo_max_tokens", "must be >= 1")
        check(self.max_num_seqs >= 1, "serve.max_num_seqs", "must be >= 1")
        from actors.serve.engine import parse_memory

        try:
            parse_memory(self.kv_cache_memory)
        except ValueError as e:
            check(False, "serve.kv_cache_memory", str(e))


@dataclass
class PipelineConfig:
    run: RunSection = field(default_factory=RunSection)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)

    def __post_init__(self):
        check(self.pretrain.seq_len == self.data.seq_len, "pretrain.seq_len",
              f"{self.pretrain.seq_len} differs from data.seq_len={self.data.seq_len}; set both to the same value")


def load_config(path: str | None, overrides: list[str] | None = None) -> PipelineConfig:
    return load(PipelineConfig, path, overrides)
