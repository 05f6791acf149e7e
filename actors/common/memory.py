"""Process-level memory settings shared by the CPU engine and trainer."""
from __future__ import annotations

import ctypes


def keep_freed_memory_in_heap() -> bool:
    """glibc hands every freed block above its mmap threshold (128 KiB, adapting up to 32 MiB) back to the OS, so a
    step's multi-MB temporaries fault their pages in again each time: raising the threshold and the trim threshold
    keeps them in the heap. Measured: the serving engine's bench 65 s instead of 73 s (gathered K/V, MLP
    activations); a 135M training step 8.9 -> see bench/pretrain_throughput.py (vocabulary-sized logits chunks and
    gradients). No-op where glibc is absent."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
