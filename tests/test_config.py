"""Configs: YAML + --set overrides into typed dataclasses; bad keys/values fail at start naming the key."""
from __future__ import annotations

import subprocess
import sys

import pytest

from actors.common.config import ConfigError
from conftest import REPO
from jobs.config import PipelineConfig, load_config


def test_demo_and_tiny_configs_load():
    for name in ("demo", "tiny"):
        cfg = load_config(str(REPO / "configs" / f"{name}.yaml"))
        assert isinstance(cfg, PipelineConfig) and cfg.run.name == name
        assert cfg.pretrain.seq_len == cfg.data.seq_len


def test_set_overrides_nested_values():
    cfg = load_config(str(REPO / "configs" / "demo.yaml"),
                      ["pretrain.max_steps=7", "pretrain.optim.lr=1e-4", "eval.tasks=[perplexity]",
                       "serve.keep_alive=true"])
    assert cfg.pretrain.max_steps == 7 and cfg.pretrain.optim.lr == 1e-4
    assert cfg.eval.tasks == ["perplexity"] and cfg.serve.keep_alive is True


@pytest.mark.parametrize("override, needle", [
    ("pretrain.max_stepz=3", "did you mean 'max_steps'"),
    ("pretrain.optim.lr=-1", "pretrain.optim.lr: must be > 0"),
    ("pretrain.max_steps=abc", "pretrain.max_steps: expected an integer"),
    ("eval.tasks=[mmlu_pro]", "unknown task"),
    ("run.stages=[data,bogus]", "run.stages: unknown stage"),
    ("pretrain.parallel.tp=3", "pretrain.parallel.tp"),
    ("data.seq_len=64", "pretrain.seq_len"),
    ("pretrain.model=gpt5", "pretrain.model: unknown model"),
    ("finetune.lora.target_modules=[qkv]", "finetune.lora.target_modules"),
])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        load_config(str(REPO / "configs" / "demo.yaml"), [override])


def test_cli_reports_config_errors_without_traceback():
    out = subprocess.run([sys.executable, "-m", "jobs.pipeline", "--config", "configs/demo.yaml",
                          "--set", "pretrain.optim.lrr=3"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "config error: unknown config key 'pretrain.optim.lrr'" in out.stderr
    assert "Traceback" not in out.stderr
    missing = subprocess.run([sys.executable, "-m", "jobs.data", "--config", "configs/nope.yaml"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "not found" in missing.stderr
