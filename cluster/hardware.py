"""The one place that picks a compute dtype from the hardware (`dtype: auto`).

bf16 is the right compute dtype only where the hardware computes it natively: on CUDA devices that support it,
and on CPUs whose oneDNN kernels may use AVX512_BF16 or AMX. On an AVX2-only CPU a bf16 matmul is emulated:
a 512x576 @ 576x1536 product runs at 1.2 GFLOP/s there against 78 GFLOP/s in fp32 (65x slower). The CPU's own
flags are not enough: `ATEN_CPU_CAPABILITY` and `ONEDNN_MAX_CPU_ISA` cap what torch and oneDNN dispatch to (an
AVX-512 machine set to `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` behaves like an AVX2 one), and torch's
private cpuinfo checks ignore those caps, so the decision reads both.
"""
from __future__ import annotations

import functools
import logging
import time

import torch

from cluster.env import apply_deepspeed_env, settings

log = logging.getLogger(__name__)

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")

# oneDNN ISA names in increasing order; bf16 runs natively from avx512_core_bf16 on.
_ONEDNN_ISA_ORDER = ("sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core", "avx512_core_vnni",
                     "avx512_core_bf16", "avx10_1_512", "avx512_core_fp16", "avx10_1_512_amx",
                     "avx512_core_amx", "avx10_1_512_amx_fp16", "avx512_core_amx_fp16", "all", "default")
_ONEDNN_BF16_FROM = _ONEDNN_ISA_ORDER.index("avx512_core_bf16")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:  # no /proc (macOS): torch's own check below decides
        return set()
    return set()


def cpu_capability() -> str:
    """torch's dispatch level (`DEFAULT`, `AVX2`, `AVX512`, ...), which honours `ATEN_CPU_CAPABILITY`."""
    return torch.backends.cpu.get_cpu_capability()


@functools.cache
def cpu_bf16_native() -> bool:
    """True where a bf16 matmul on this CPU runs on bf16 hardware (AVX512_BF16 or AMX) under the ISA caps."""
    s = settings()
    aten_cap, onednn_cap = s.aten_cpu_capability, s.onednn_max_cpu_isa
    if aten_cap in ("default", "avx2", "zvector", "vsx"):
        return False
    if onednn_cap in _ONEDNN_ISA_ORDER and _ONEDNN_ISA_ORDER.index(onednn_cap) < _ONEDNN_BF16_FROM:
        return False
    flags = _cpu_flags()
    if flags:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def _device_type(device) -> str:
    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def auto_dtype(device=None) -> str:
    """The compute dtype `auto` means on `device` (None: the device this process would use)."""
    kind = _device_type(device)
    if kind == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if kind == "cpu":
        return "bfloat16" if cpu_bf16_native() else "float32"
    return "float32"


@functools.cache
def bf16_slowdown(m: int = 64, k: int = 576, n: int = 1536) -> float:
    """Measured time of a bf16 matmul over the same fp32 matmul on this CPU (the model's MLP shape, ~0.1 s)."""
    a, b = torch.randn(m, k), torch.randn(k, n)

    def clock(x, y, reps=3):
        x @ y
        t = time.perf_counter()
        for _ in range(reps):
            x @ y
        return (time.perf_counter() - t) / reps

    return clock(a.bfloat16(), b.bfloat16()) / max(clock(a, b), 1e-9)


_warned: set[str] = set()


def resolve_dtype(spec: str | torch.dtype | None, device=None, field: str = "dtype") -> str:
    """`auto` (or None) -> the hardware's dtype; an explicit name passes through. An explicit bf16 on a CPU
    without native bf16 runs, but logs one warning with the measured slowdown and the fix."""
    if isinstance(spec, torch.dtype):
        spec = str(spec).removeprefix("torch.")
    if spec in (None, "", "auto"):
        return auto_dtype(device)
    if spec not in DTYPE_CHOICES:
        raise ValueError(f"{field}: {spec!r} is not a dtype; use one of {list(DTYPE_CHOICES)} "
                         "(auto picks bfloat16 where the hardware computes it natively, else float32)")
    if spec == "bfloat16" and _device_type(device) == "cpu" and not cpu_bf16_native() and field not in _warned:
        _warned.add(field)
        log.warning("%s=bfloat16 on a CPU without native bf16 (capability %s): a bf16 matmul measured %.0fx "
                    "slower than fp32 here; set %s=auto (or float32)", field, cpu_capability(), bf16_slowdown(),
                    field)
    return spec


def torch_dtype(spec: str | torch.dtype | None, device=None, field: str = "dtype") -> torch.dtype:
    return getattr(torch, resolve_dtype(spec, device, field))


def precision_info(dtype: str | torch.dtype | None = None, device=None) -> dict:
    """What every manifest, summary, checkpoint and bench JSON records about the precision it ran at."""
    return {"dtype": resolve_dtype(dtype, device), "cpu_capability": cpu_capability(),
            "cpu_bf16_native": cpu_bf16_native()}


def import_deepspeed():
    """`deepspeed`, imported with its accelerator chosen from the hardware (CPU without CUDA) and its JIT ops
    cached under .venv (cluster.env.deepspeed_env)."""
    apply_deepspeed_env()
    import deepspeed
    import deepspeed.ops

    # On the CPU accelerator DeepSpeed JIT-compiles a shared-memory all-reduce (~100 s on 2 cores) when its comm
    # backend starts; only its inference all-reduce calls it, training's collectives go through torch's gloo.
    # Marked unavailable, nothing is compiled at all (the torch AdamW needs no op either).
    if not torch.cuda.is_available():
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed
