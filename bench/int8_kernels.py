"""Which CPU kernel serves int8 weights: torch's fp32 matmul (the baseline) against oneDNN's int8 x int8 GEMM
(`_int_mm`), fbgemm's dynamic one, aten's weight-only int8 kernel, and what the engine runs (the faster of the
first two with 32 outlier channels in fp32), on SmolLM2-135M's projection shapes at decode (64 rows) and prefill (2048
rows) batch sizes, same threads. Last line: JSON with each kernel's GFLOP/s-equivalent and its ratio to fp32.

    .venv/bin/python -m bench.int8_kernels --threads 2
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from cluster.hardware import precision_info
from actors.engine.runner import OUTLIER_CHANNELS
from kernels.int8 import INT8_CPU_KERNELS, Int8Weight, auto_cpu_kernel

SHAPES = {"qkv": (576, 960), "o": (576, 576), "gate_up": (576, 3072), "down": (1536, 576), "head": (576, 49152)}


def timeit(fn, reps: int) -> float:
    for _ in range(2):
        fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, nargs="+", default=[64, 2048])
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    names = ["fp32", *INT8_CPU_KERNELS, "auto+outliers"]
    rows, total = [], {k: {m: 0.0 for m in a.rows} for k in names}
    for name, (k, n) in SHAPES.items():
        w = torch.randn(n, k) * 0.02
        kernels = {"fp32": lambda x, w=w: x @ w.t()}
        for kern in INT8_CPU_KERNELS:
            kernels[kern] = Int8Weight(w, kern).linear
        # what the engine serves: the auto kernel with OUTLIER_CHANNELS input channels in fp32
        kernels["auto+outliers"] = Int8Weight(w, "auto", torch.randperm(k)[:OUTLIER_CHANNELS]).linear
        for m in a.rows:
            if name == "head" and m > 64:
                continue  # logits are computed only for sampled rows
            x = torch.randn(m, k)
            reps = max(3, int(2e9 / (2 * m * k * n)))
            for kern, fn in kernels.items():
                s = timeit(lambda: fn(x), reps)
                total[kern][m] += s
                rows.append({"shape": name, "rows": m, "kernel": kern, "ms": round(1e3 * s, 3),
                             "gflops": round(2 * m * k * n / s / 1e9, 1)})
                print(rows[-1], flush=True)
    summary = {f"{kern}_vs_fp32_rows{m}": round(total["fp32"][m] / total[kern][m], 3)
               for kern in names[1:] for m in a.rows}
    summary.update(auto_kernel=auto_cpu_kernel(), threads=a.threads, **precision_info(torch.float32))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
