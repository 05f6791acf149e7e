"""The C++ CPU operators in kernels/csrc (torch.ops.fullchain.*), built by torch's extension loader on first use
and cached per machine (~20 s once): the paged decode attention and the many-adapter LoRA update."""
from __future__ import annotations

import logging
import platform
from pathlib import Path

log = logging.getLogger(__name__)
SOURCES = ("paged_decode_cpu.cpp", "lora_cpu.cpp")
_BUILT: bool | None = None    # None = not tried yet


def cpu_ops_available() -> bool:
    """Build and load the operators; False, logged, where they cannot be built (no compiler): every caller then
    runs its torch reference."""
    global _BUILT
    if _BUILT is None:
        try:
            from torch.utils.cpp_extension import load

            # -fopenmp: at::parallel_for is an OpenMP pragma in the header, serial without it (2.4 vs 4.0 ms a
            # layer for 64 sequences of ~350 tokens on 2 threads)
            flags = ["-O3", "-fopenmp"] + (["-mavx2", "-mfma", "-mf16c"]
                                           if platform.machine() in ("x86_64", "AMD64") else [])
            load(name="fullchain_cpu_ops", sources=[str(Path(__file__).parent / "csrc" / s) for s in SOURCES],
                 extra_cflags=flags, is_python_module=False, verbose=False)
            _BUILT = True
        except (OSError, RuntimeError, ImportError) as e:
            log.warning("the C++ CPU operators could not be built (%s); their torch references run instead", e)
            _BUILT = False
    return _BUILT
