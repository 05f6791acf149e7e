"""bench/gpu_check.py cannot rot: its dry run (every section at tiny sizes on CPU, the Triton kernels under the
interpreter, bench/serve.py on an embedded Ray) passes and ends with the JSON line the GPU day reads."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("kernels", "engine", "pretrain", "serve")


@pytest.mark.e2e
def test_gpu_check_dry_run_passes_every_section(tmp_path):
    p = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--out-dir", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    lines = p.stdout.strip().splitlines()
    assert lines, f"no output; stderr: {p.stderr[-2000:]}"
    out = json.loads(lines[-1])
    logs = {s: (tmp_path / f"{s}.log").read_text()[-1500:] for s in SECTIONS if (tmp_path / f"{s}.log").exists()}
    assert p.returncode == 0 and out["ok"], (out, logs)
    assert out["mode"] == "dry-run" and out["failed"] == []
    assert out["dtype"] in ("float32", "bfloat16") and out["cpu_capability"]
    assert out["torch"] and out["device"] == "cpu"
    assert set(out["sections"]) == set(SECTIONS)
    for name, sec in out["sections"].items():
        assert sec["ok"] is True and "error" not in sec and sec["wall_s"] > 0, (name, sec)
    kern = out["sections"]["kernels"]
    assert kern["triton_kind"] == "InterpretedFunction"  # the Triton kernels themselves ran, not only references
    assert set(kern["kernels"]) == {"rmsnorm", "fused_linear_ce", "paged_attention", "int4"}
    assert all(k["cases"] > 0 and k["failed"] == 0 for k in kern["kernels"].values())
    eng = out["sections"]["engine"]
    n = eng["fp32_requests_equal"].split("/")[1]
    assert eng["fp32_requests_equal"] == f"{n}/{n}" and 0 <= eng["bf16_token_agreement"] <= 1
    pre = out["sections"]["pretrain"]
    assert pre["tokens_per_s"] > 0 and pre["loss_first"] > 0
    assert out["sections"]["serve"]["summary"]["ours_out_tok_s"] > 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())  # the full report beside the line
    assert report["sections"]["kernels"]["detail"]["cases"]
