"""The pipeline config: one typed section per stage, loaded from YAML with `--set a.b=c` overrides."""
from __future__ import annotations

from dataclasses import dataclass, field

from actors.agent.config import AgentConfig
from actors.common.config import check, load
from actors.data.config import DataConfig
from actors.eval.config import EvalConfig
from actors.serve.config import ServeConfig
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
