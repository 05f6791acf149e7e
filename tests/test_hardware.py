"""`dtype: auto`: one decision from the CPU flags and the ISA caps (no Ray)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from cluster import hardware
from cluster.env import REPO_ROOT

PROBE = ("import json; from cluster import hardware as h; print(json.dumps({'auto': h.auto_dtype('cpu'), "
         "'native': h.cpu_bf16_native(), 'cap': h.cpu_capability(), 'info': h.precision_info('auto', 'cpu')}))")


def _probe(**env) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_auto_picks_fp32_under_avx2_caps():
    """The two variables that make any newer CPU behave like an AVX2 one make `auto` pick float32."""
    r = _probe(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    assert r["auto"] == "float32" and r["native"] is False
    assert r["cap"] == "AVX2"
    assert r["info"] == {"dtype": "float32", "cpu_capability": "AVX2", "cpu_bf16_native": False}


def test_either_cap_alone_disables_native_bf16():
    assert _probe(ONEDNN_MAX_CPU_ISA="AVX512_CORE")["native"] is False
    assert _probe(ATEN_CPU_CAPABILITY="default")["native"] is False


def test_auto_follows_the_cpu_flags():
    flags = hardware._cpu_flags()
    capped = os.environ.get("ATEN_CPU_CAPABILITY") or os.environ.get("ONEDNN_MAX_CPU_ISA")
    if capped:
        pytest.skip("this session caps the ISA itself")
    native = bool({"avx512_bf16", "amx_bf16"} & flags)
    assert hardware.cpu_bf16_native() is native
    assert hardware.auto_dtype("cpu") == ("bfloat16" if native else "float32")


def test_explicit_dtypes_pass_through_and_bad_names_say_the_fix():
    assert hardware.resolve_dtype("float32", "cpu") == "float32"
    assert hardware.resolve_dtype(torch.float16, "cpu") == "float16"
    assert hardware.torch_dtype("auto", "cpu") == getattr(torch, hardware.auto_dtype("cpu"))
    with pytest.raises(ValueError, match=r"serve\.dtype: 'fp8'.*auto"):
        hardware.resolve_dtype("fp8", "cpu", field="serve.dtype")


def test_explicit_bf16_without_native_support_warns_once_with_the_slowdown(caplog, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_bf16_native", lambda: False)
    monkeypatch.setattr(hardware, "bf16_slowdown", lambda: 65.0)
    monkeypatch.setattr(hardware, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="cluster.hardware"):
        assert hardware.resolve_dtype("bfloat16", "cpu", field="finetune.base_dtype") == "bfloat16"
        hardware.resolve_dtype("bfloat16", "cpu", field="finetune.base_dtype")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "65x slower" in warnings[0] and "finetune.base_dtype=auto" in warnings[0]


def test_bf16_slowdown_is_measured():
    assert hardware.bf16_slowdown(16, 64, 64) > 0


def test_configs_default_to_auto_and_reject_bad_dtypes():
    from actors.common.config import ConfigError, from_dict
    from actors.eval.config import EvalConfig
    from actors.train.config import FinetuneConfig, PretrainConfig

    assert PretrainConfig().dtype == "auto"
    assert FinetuneConfig(base="smollm2-135m-instruct").base_dtype == "auto"
    assert EvalConfig(tasks=["arc_easy"]).dtype == "auto"
    with pytest.raises(ConfigError, match="pretrain.dtype"):
        from_dict(PretrainConfig, {"dtype": "bf16"})
    with pytest.raises(ConfigError, match="finetune.base_dtype"):
        from_dict(FinetuneConfig, {"base": "smollm2-135m-instruct", "base_dtype": "half"})


def test_no_shipped_config_hard_codes_bf16():
    import re

    for f in (REPO_ROOT / "configs").glob("*.yaml"):
        bad = [ln for ln in f.read_text().splitlines()
               if re.match(r"^[^#]*\b(dtype|base_dtype):\s*bfloat16", ln)]
        assert not bad, f"{f.name} hard-codes bfloat16: {bad}; use auto"
