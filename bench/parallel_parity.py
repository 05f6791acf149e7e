"""Loss and gradient-norm parity of the pretrain stage across parallel layouts.

Trains the `debug` model for `--steps` steps on the same packed rows of tinyshakespeare (a BPE tokenizer trained
on it, seq_len 128, global batch 8) at the demo's optimizer settings, in fp32, once per layout, each through the
real stage (`run_pretrain` on Ray Train workers, 8 workers x 0.25 CPU for pp2 x dp2 x tp2 on a 2-core machine).
Every layout starts from the same weights (seeded per parameter name, materialised shard by shard) and sees the
same global batch each step, so the losses and gradient norms must agree with the single worker's up to float
reordering. Prints a table and, as the last line, JSON:
`{"max_rel_loss_diff", "max_rel_gradnorm_diff", "layouts", "loss_drop", ...}` (baseline: the single worker).

    .venv/bin/python -m bench.parallel_parity [--steps 20] [--layouts single,dp2,...]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cluster.hardware import precision_info

LAYOUTS = {
    "single": {},
    "dp2": {"dp_replicate": 2},
    "fsdp2": {"dp_shard": 2},
    "tp2": {"tp": 2},
    "pp2_gpipe": {"pp": 2, "pp_schedule": "gpipe"},
    "pp2_1f1b": {"pp": 2, "pp_schedule": "1f1b"},
    "pp2_interleaved": {"pp": 2, "pp_schedule": "interleaved_1f1b"},
    "dp2_tp2": {"dp_replicate": 2, "tp": 2},
    "pp2_tp2": {"pp": 2, "tp": 2},
    "pp2_dp2_tp2": {"pp": 2, "dp_shard": 2, "tp": 2},
    "pp2i_dp2_tp2": {"pp": 2, "dp_shard": 2, "tp": 2, "pp_schedule": "interleaved_1f1b"},  # configs/pretrain-3d.yaml
}


def world_of(layout: dict) -> int:
    w = 1
    for k in ("pp", "dp_replicate", "dp_shard", "tp"):
        w *= layout.get(k, 1)
    return w


def prepare_data(out: Path, seq_len: int, n_train: int, n_val: int) -> dict:
    """A BPE tokenizer on tinyshakespeare and packed parquet rows: the stage's own input format."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from actors.model.tokenizer import load_tokenizer, train_tokenizer
    from cluster.storage import data_root

    text = (data_root() / "tinyshakespeare" / "input.txt").read_text()
    tok_dir = train_tokenizer(text[:300_000].split("\n\n"), 1024, out / "tok")
    ids = load_tokenizer(tok_dir).encode(text[300_000:300_000 + 400_000])
    rows = [ids[i:i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
    if len(rows) < n_train + n_val:
        raise ValueError(f"only {len(rows)} rows of {seq_len} tokens; lower --steps")
    for split, part in (("train", rows[:n_train]), ("val", rows[n_train:n_train + n_val])):
        (out / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"input_ids": pa.array(part, pa.list_(pa.int32()))}), out / split / "part-0.parquet")
    return {"train_dir": str(out / "train"), "val_dir": str(out / "val"), "tokenizer_dir": str(tok_dir)}


def run_layout(name: str, layout: dict, data: dict, out: Path, steps: int, seq_len: int, global_batch: int,
               optim: dict, cpus: float) -> list[dict]:
    from actors.common.config import from_dict
    from actors.common.metrics import read_jsonl
    from actors.train.config import PretrainConfig
    from actors.train.stage import run_pretrain

    world = world_of(layout)
    dp = layout.get("dp_replicate", 1) * layout.get("dp_shard", 1)
    cfg = from_dict(PretrainConfig, {
        "model": "debug", "seq_len": seq_len, "batch_size": global_batch // dp, "max_steps": steps,
        "eval_every": steps, "eval_max_batches": 1, "log_every": 1, "dtype": "float32", "optim": optim,
        "parallel": {**layout, "cpus_per_worker": cpus / world, "threads_per_worker": 1}})
    run_pretrain(cfg, data, out / name)
    return read_jsonl(out / name / "metrics.jsonl")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma-separated, from {list(LAYOUTS)}")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    a = ap.parse_args(argv)
    names = a.layouts.split(",")
    unknown = [n for n in names if n not in LAYOUTS]
    if unknown:
        raise SystemExit(f"--layouts: unknown {unknown}; choose from {list(LAYOUTS)}")
    if names[0] != "single":
        names = ["single"] + [n for n in names if n != "single"]

    import ray

    from jobs.config import load_config
    from cluster.connect import connect
    from cluster.env import REPO_ROOT

    connect()
    # 2 CPUs shared by every layout's workers (8 x 0.25 for pp2 x dp2 x tp2), whatever the logical CPU count
    cpus = min(2.0, ray.available_resources().get("CPU", 2.0))
    optim = load_config(str(REPO_ROOT / "configs" / "demo.yaml")).pretrain.optim
    optim = {"lr": optim.lr, "warmup_steps": optim.warmup_steps, "min_lr_ratio": optim.min_lr_ratio,
             "weight_decay": optim.weight_decay, "grad_clip": optim.grad_clip}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out) if a.out else Path(tmp)
        data = prepare_data(out / "data", a.seq_len, a.steps * a.global_batch, 8)
        curves, secs = {}, {}
        for n in names:
            t0 = time.perf_counter()
            rows = [r for r in run_layout(n, LAYOUTS[n], data, out, a.steps, a.seq_len, a.global_batch, optim,
                                          cpus) if "grad_norm" in r]
            secs[n] = time.perf_counter() - t0
            curves[n] = {r["step"]: (r["loss"], r["grad_norm"]) for r in rows}
            print(f"[parity] {n}: {len(rows)} steps in {secs[n]:.0f} s, final loss {rows[-1]['loss']:.4f}", flush=True)
    ref = curves["single"]
    steps = sorted(ref)
    worst_l = worst_g = 0.0
    print(f"\n{'layout':18s} {'workers':>7s} {'loss@1':>9s} {'loss@end':>9s} {'max rel dloss':>14s} "
          f"{'max rel dgnorm':>15s} {'seconds':>8s}")
    for n in names:
        c = curves[n]
        if sorted(c) != steps:
            raise SystemExit(f"{n}: logged steps {sorted(c)} differ from the single worker's {steps}")
        dl = max(abs(c[s][0] - ref[s][0]) / abs(ref[s][0]) for s in steps)
        dg = max(abs(c[s][1] - ref[s][1]) / abs(ref[s][1]) for s in steps)
        worst_l, worst_g = max(worst_l, dl), max(worst_g, dg)
        print(f"{n:18s} {world_of(LAYOUTS[n]):7d} {c[steps[0]][0]:9.4f} {c[steps[-1]][0]:9.4f} {dl:14.2e} "
              f"{dg:15.2e} {secs[n]:8.0f}")
    drop = 1 - ref[steps[-1]][0] / ref[steps[0]][0]
    result = {"max_rel_loss_diff": worst_l, "max_rel_gradnorm_diff": worst_g, "layouts": len(names),
              "loss_drop": round(drop, 4), "steps": len(steps), "baseline": "single worker, fp32",
              "layout_names": names, **precision_info("float32")}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
