"""Training that survives its workers being killed: the loss curve of a run whose workers are SIGKILLed equals
the uninterrupted run's.

Pretrains the `debug` model on a dp2 layout (2 Ray Train workers, fp32, a fixed data order: the seeded
permutation) twice through the real stage (`run_pretrain`): uninterrupted, and with two SIGKILLs of a training
worker process at seeded random steps, sent from outside (this process finds the live `RayTrainWorker`
processes and kills one). Ray Train's FailureConfig(max_failures=2) restarts the worker group, which resumes
from the stage's latest checkpoint (torch.distributed.checkpoint, async, every `--every` steps). Then the same
for LoRA fine-tuning of the pretrained export on Alpaca rows. Prints a table and, as the last line, JSON:

    {"final_loss_rel_diff", "curve_max_rel_diff", "restarts", "lost_steps", "ckpt_save_ms", "ckpt_blocking_ms",
     "lora_final_loss_rel_diff", "lora_restarts", "lora_lost_steps", ..., "passes"}

Baseline: the same run uninterrupted, in the same process. `passes`: both rel diffs <= 1e-6, two restarts each,
and ckpt_blocking_ms <= 0.25 x ckpt_save_ms (the save really is async).

    .venv/bin/python -m bench.chaos [--steps 40] [--every 5] [--seed 0] [--skip-lora]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import tempfile
import threading
import time
from pathlib import Path

from cluster.hardware import precision_info


def train_workers() -> list[int]:
    """Pids of the live Ray Train worker processes started from this process (the local Ray is a child)."""
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "RayTrainWorker" in " ".join(p.cmdline()):
                out.append(p.pid)
        except psutil.NoSuchProcess:
            continue
    return sorted(out)


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return out


class Killer(threading.Thread):
    """SIGKILLs one training worker when the run's logged step reaches each of `steps`; after a kill it waits for
    the restarted group to resume (a `resume` event) before arming the next."""

    def __init__(self, stage_dir: Path, steps: list[int], seed: int):
        super().__init__(daemon=True)
        self.dir, self.steps, self.rng = stage_dir, list(steps), random.Random(seed)
        self.kills: list[dict] = []
        self.stop = threading.Event()

    def _step(self) -> int:
        rows = [r for r in _rows(self.dir / "metrics.jsonl") if "loss" in r]
        return rows[-1]["step"] if rows else 0

    def _resumes(self) -> int:
        return sum(1 for e in _rows(self.dir / "events.jsonl") if e.get("event") == "resume")

    def run(self) -> None:
        for target in self.steps:
            while not self.stop.is_set() and self._step() < target:
                time.sleep(0.05)
            pids = train_workers()
            if self.stop.is_set() or not pids:
                return
            pid = self.rng.choice(pids)
            before, at = self._resumes(), self._step()
            os.kill(pid, signal.SIGKILL)
            self.kills.append({"pid": pid, "at_step": at, "workers": len(pids)})
            print(f"[chaos] SIGKILL worker pid {pid} at step {at}", flush=True)
            while not self.stop.is_set() and self._resumes() <= before:
                time.sleep(0.1)


def summarize(name: str, clean: Path, chaos: Path, killer: Killer) -> dict:
    a = {r["step"]: r["loss"] for r in _rows(clean / "metrics.jsonl") if "loss" in r}
    b = {r["step"]: r["loss"] for r in _rows(chaos / "metrics.jsonl") if "loss" in r}
    if sorted(a) != sorted(b):
        raise SystemExit(f"{name}: the interrupted run logged steps {sorted(b)}, the clean run {sorted(a)}")
    last = max(a)
    resumes = [e for e in _rows(chaos / "events.jsonl") if e.get("event") == "resume"]
    lost = sum(max(0, k["at_step"] - r["step"]) for k, r in zip(killer.kills, resumes))
    saves = _rows(clean / "checkpoints" / "checkpoints.jsonl") + _rows(chaos / "checkpoints" / "checkpoints.jsonl")
    return {"final_loss_rel_diff": abs(a[last] - b[last]) / abs(a[last]),
            "curve_max_rel_diff": max(abs(a[s] - b[s]) / abs(a[s]) for s in a),
            "restarts": len(resumes), "lost_steps": lost, "kills": killer.kills, "final_loss": a[last],
            "ckpt_save_ms": sum(s["save_ms"] for s in saves) / len(saves),
            "ckpt_blocking_ms": sum(s["blocking_ms"] for s in saves) / len(saves), "saves": len(saves)}


def run_pretrain_pair(data: dict, out: Path, steps: int, every: int, kill_steps: list[int], seed: int) -> tuple:
    from actors.common.config import from_dict
    from actors.train.config import PretrainConfig
    from actors.train.stage import run_pretrain

    def cfg(max_failures):
        return from_dict(PretrainConfig, {
            "model": "debug", "seq_len": 128, "batch_size": 4, "max_steps": steps, "eval_every": steps,
            "eval_max_batches": 1, "log_every": 1, "dtype": "float32",
            "parallel": {"dp_replicate": 2, "cpus_per_worker": 1, "threads_per_worker": 1},
            "checkpoint": {"every": every, "keep": 2}, "resilience": {"max_failures": max_failures}})

    t0 = time.perf_counter()
    clean = run_pretrain(cfg(0), data, out / "clean")
    t_clean = time.perf_counter() - t0
    killer = Killer(out / "chaos", kill_steps, seed)
    killer.start()
    t0 = time.perf_counter()
    try:
        run_pretrain(cfg(len(kill_steps)), data, out / "chaos")
    finally:
        killer.stop.set()
    t_chaos = time.perf_counter() - t0
    res = summarize("pretrain", out / "clean", out / "chaos", killer)
    return res, clean["outputs"]["hf"], t_clean, t_chaos


def run_lora_pair(base: str, out: Path, steps: int, every: int, kill_steps: list[int], seed: int) -> tuple:
    from actors.common.config import from_dict
    from actors.train.config import FinetuneConfig
    from actors.train.stage import run_finetune
    from cluster.storage import data_root

    def cfg(max_failures):
        return from_dict(FinetuneConfig, {
            "base": base, "method": "lora", "base_dtype": "float32", "max_len": 128, "batch_size": 4,
            "max_steps": steps, "log_every": 1, "synthetic_max_rows": 0, "sft_max_rows": 0,
            "datasets": [{"name": "alpaca_en_demo", "max_rows": 400}], "seed": seed,
            "optim": {"lr": 1e-3, "warmup_steps": 2},
            "parallel": {"dp_replicate": 2, "cpus_per_worker": 1, "threads_per_worker": 1},
            "checkpoint": {"every": every, "keep": 2}, "resilience": {"max_failures": max_failures}})

    t0 = time.perf_counter()
    run_finetune(cfg(0), base, [], out / "lora_clean", data_root=data_root())
    t_clean = time.perf_counter() - t0
    killer = Killer(out / "lora_chaos", kill_steps, seed + 1)
    killer.start()
    t0 = time.perf_counter()
    try:
        run_finetune(cfg(len(kill_steps)), base, [], out / "lora_chaos", data_root=data_root())
    finally:
        killer.stop.set()
    return summarize("lora", out / "lora_clean", out / "lora_chaos", killer), t_clean, time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=5, help="checkpoint every N steps")
    ap.add_argument("--seed", type=int, default=0, help="picks the kill steps and the killed worker")
    ap.add_argument("--kills", type=int, default=2)
    ap.add_argument("--skip-lora", action="store_true")
    ap.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    a = ap.parse_args(argv)
    if a.steps < 2 * a.every + 2:
        raise SystemExit(f"--steps {a.steps}: need at least 2 x --every + 2 so that kills land after checkpoints")

    from bench.parallel_parity import prepare_data
    from cluster.connect import connect

    connect()
    rng = random.Random(a.seed)
    # kills after the first checkpoint and before the last step, at distinct steps
    kill_steps = sorted(rng.sample(range(a.every + 1, a.steps - 1), a.kills))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out) if a.out else Path(tmp)
        data = prepare_data(out / "data", 128, a.steps * 8, 8)
        pre, base, tc, tx = run_pretrain_pair(data, out, a.steps, a.every, kill_steps, a.seed)
        print(f"[chaos] pretrain: clean {tc:.0f} s, with {a.kills} kills at {kill_steps} {tx:.0f} s; "
              f"restarts {pre['restarts']}, lost steps {pre['lost_steps']}, final loss rel diff "
              f"{pre['final_loss_rel_diff']:.2e}", flush=True)
        result = {k: pre[k] for k in ("final_loss_rel_diff", "curve_max_rel_diff", "restarts", "lost_steps",
                                      "ckpt_save_ms", "ckpt_blocking_ms")}
        result.update(kill_steps=kill_steps, pretrain_final_loss=pre["final_loss"], pretrain_s={"clean": tc, "chaos": tx})
        ok = (pre["final_loss_rel_diff"] <= 1e-6 and pre["restarts"] == a.kills
              and pre["ckpt_blocking_ms"] <= 0.25 * pre["ckpt_save_ms"])
        if not a.skip_lora:
            lo, lc, lx = run_lora_pair(base, out, a.steps, a.every, kill_steps, a.seed)
            print(f"[chaos] lora: clean {lc:.0f} s, chaos {lx:.0f} s; restarts {lo['restarts']}, lost steps "
                  f"{lo['lost_steps']}, final loss rel diff {lo['final_loss_rel_diff']:.2e}", flush=True)
            result.update({f"lora_{k}": lo[k] for k in ("final_loss_rel_diff", "curve_max_rel_diff", "restarts",
                                                        "lost_steps", "ckpt_save_ms", "ckpt_blocking_ms")})
            result["lora_s"] = {"clean": lc, "chaos": lx}
            ok = ok and lo["final_loss_rel_diff"] <= 1e-6 and lo["restarts"] == a.kills
    result.update(baseline="the same run uninterrupted", layout="dp_replicate2", steps=a.steps,
                  ckpt_every=a.every, passes=ok, **precision_info("float32"))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
