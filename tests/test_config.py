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
    ("finetune.lora.layers_to_transform=[-1]", "finetune.lora.layers_to_transform"),
    ("finetune.sft_rows.toolmix=-5", "finetune.sft_rows.toolmix: must be a row count"),
    ("data.tool_mix.paralel=3", "unknown config key 'data.tool_mix.paralel'"),   # inside an optional section
    ("data.docs_sources=[nope]", "data.docs_sources: 'nope' is not a data.sources name"),
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


@pytest.mark.parametrize("override, needle", [
    ("serve.engine.kv_cache_memory=lots", "serve.engine.kv_cache_memory: 'lots' is not a size"),
    ("serve.engine.block_size=12", "serve.engine.block_size: must be a power of 2"),
    ("serve.engine.max_num_seqs=0", "serve.engine.max_num_seqs: must be an integer >= 1"),
    ("serve.engine.name=fast", "serve.engine.name: 'fast'"),
    ("serve.kv_cache_memory=1GiB", "replaced by serve.engine.kv_cache_memory"),
    ("serve.dtype=fp8", "serve.dtype: 'fp8'"),
    ("serve.port=70000", "serve.port"),
    ("eval.kv_cache_memory=lots", "eval.kv_cache_memory: 'lots' is not a size"),
])
def test_serve_schema_errors_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        load_config(str(REPO / "configs" / "demo.yaml"), [override])


def test_one_serve_schema_for_the_pipeline_and_serve_run(tmp_path):
    """The pipeline's `serve:` section and `serve run configs/serve.yaml`'s args are the same `ServeConfig`, the
    engine's `EngineConfig` nested as `engine` and handed to the engine as it is."""
    import yaml

    from actors.engine import EngineConfig
    from actors.serve.config import ServeConfig
    from actors.serve.deployment import parse_args

    cfg = load_config(str(REPO / "configs" / "tiny.yaml"), ["serve.engine.max_num_seqs=8"]).serve
    assert isinstance(cfg, ServeConfig) and isinstance(cfg.engine, EngineConfig)
    assert cfg.engine.kv_cache_memory == "64MiB" and cfg.engine.max_num_seqs == 8 and cfg.dtype == "auto"
    args = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())["applications"][0]["args"]
    missing = tmp_path / "no-such-run" / "finetune" / "hf"  # not runs/demo: a finished demo would exist there
    with pytest.raises(ConfigError, match=f"serve.model: '{missing}' is neither"):  # before any Ray
        parse_args({**args, "model": str(missing)})
    run = parse_args({**args, "model": str(tmp_path)})
    assert isinstance(run, ServeConfig) and run.engine == EngineConfig(**args["engine"])
    assert parse_args({"model": str(tmp_path), "engine.max_num_seqs": 4}).engine.max_num_seqs == 4  # key=value
    with pytest.raises(ConfigError, match="serve.model_dir.*replaced by serve.model"):
        parse_args({"model_dir": str(tmp_path)})
