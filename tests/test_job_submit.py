"""`ray job submit --working-dir .` of a real stage against a local `ray start --head` on loopback."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def head():
    from cluster import head as h

    tmp = tempfile.mkdtemp(prefix="fc-head-")
    dport = free_port()
    try:
        yield h.start(port=free_port(), dashboard_port=dport, num_cpus=4, temp_dir=tmp)
    finally:  # also when start() itself failed half-way
        h.stop(temp_dir=tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def test_job_submit_runs_pretraining_from_a_fresh_run_dir(head, tmp_path):
    """`python -m jobs.pretrain` through `ray job submit` (the tiny config: 2 data-parallel workers; the 3D layout
    runs the same stage in test_resilience): the data stage runs first because this run dir has none,
    then the layout trains and exports."""
    run_dir = tmp_path / "job-run"
    env = {**os.environ, "RAY_ADDRESS": head, "RAY_AUTH_MODE": "disabled"}
    ray_cli = str(Path(sys.executable).parent / "ray")
    assert head.startswith("http://127.0.0.1:")
    cmd = [ray_cli, "job", "submit", "--working-dir", ".", "--",
           "python", "-m", "jobs.pretrain", "--config", "configs/tiny.yaml", "--run-dir", str(run_dir),
           "--set", "pretrain.max_steps=4", "--set", "pretrain.eval_every=4"]
    t0 = time.time()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)  # the CLI colours its output
    assert re.search(r"Job '\S+' succeeded", log), log[-3000:]
    assert "data: not yet run" in log
    manifest = json.loads((run_dir / "manifest.json").read_text())
    data = manifest["stages"]["data"]
    assert data["status"] == "complete"
    m = data["metrics"]
    assert m["read"] == m["kept"] + sum(m["dropped"].values()) + sum(m["quarantined"].values())
    pre = manifest["stages"]["pretrain"]
    assert pre["status"] == "complete"
    assert pre["metrics"]["world_size"] == 2 and pre["metrics"]["layout"] == "pp1 x dp_replicate2 x dp_shard1 x tp1"
    assert pre["metrics"]["step"] == 4 and pre["metrics"]["val_loss"] > 0
    assert (run_dir / "pretrain" / "hf" / "model.safetensors").exists()
    # the job's driver ran inside the head's cluster (loopback only), not a fresh embedded Ray
    status = subprocess.run([ray_cli, "job", "list"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    print(f"job submit round trip {time.time() - t0:.1f}s")


def test_job_submit_runs_dpo_finetuning(head, debug_smollm2, tmp_path):
    """`python -m jobs.finetune --config configs/finetune-dpo.yaml` through `ray job submit`, on a slice of
    dpo_en_demo with the debug shape behind SmolLM2's tokenizer as the base (the config as shipped trains the real
    base: test_models runs LoRA on it through the same stage): the reference log-probs computed, DPO trains, and
    the adapter + merged checkpoint land in the run dir with the base's held-out preference metrics."""
    run_dir = tmp_path / "dpo-run"
    env = {**os.environ, "RAY_ADDRESS": head, "RAY_AUTH_MODE": "disabled"}
    ray_cli = str(Path(sys.executable).parent / "ray")
    cmd = [ray_cli, "job", "submit", "--working-dir", ".", "--",
           "python", "-m", "jobs.finetune", "--config", "configs/finetune-dpo.yaml", "--run-dir", str(run_dir),
           "--set", f"finetune.base={debug_smollm2}", "--set", "finetune.datasets=[{name: dpo_en_demo, max_rows: 12}]", "--set", "finetune.val_size=4",
           "--set", "finetune.max_len=256", "--set", "finetune.batch_size=2", "--set", "finetune.max_steps=2",
           "--set", "finetune.eval_every=2", "--set", "finetune.checkpoint.every=2"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    log = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    assert out.returncode == 0 and re.search(r"Job '\S+' succeeded", log), log[-3000:]
    ft = json.loads((run_dir / "manifest.json").read_text())["stages"]["finetune"]
    assert ft["status"] == "complete" and ft["metrics"]["step"] == 2
    assert ft["metrics"]["data"]["dpo_en_demo"] == {"read": 12, "kept": 12, "quarantined": 0}
    assert 0 <= ft["metrics"]["base"]["val_pref_acc"] <= 1 and "val_reward_acc" in ft["metrics"]
    assert (run_dir / "finetune" / "adapter" / "adapter_model.safetensors").exists()
    assert (run_dir / "finetune" / "hf" / "config.json").exists()
    assert (run_dir / "finetune" / "checkpoints" / "step_00000002" / ".metadata").exists()
