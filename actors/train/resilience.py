"""What keeps a training run alive, Ray-free: checkpoint/resume hooks, stop requests (a stop file, SIGTERM),
the watchdog over bad steps (NaN/inf, loss spikes: skip, roll back or raise) and slow steps (stalls), and the
fault injection that tests and `bench.chaos` use. `Guardian` bundles them for one rank of a training job:

    g = Guardian(stage_dir, cfg.checkpoint, cfg.resilience, d, fingerprint, info)
    g.start(trainer)                        # resume per checkpoint.resume; returns the step it starts at
    run_loop(trainer, batches, [..., *g.hooks(position)], on_rollback=g.rollback)
    g.close(trainer, position)              # the last write lands
"""
from __future__ import annotations

import json
import math
import signal
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import torch

from actors.train.checkpoint import Checkpointer, fire_once, latest_in
from actors.train.config import CheckpointConfig, FaultConfig, ResilienceConfig
from actors.train.parallel import Dist
from actors.train.trainer import Rollback, StopTraining, Trainer

# set by the SIGTERM handler (installed on a process's main thread); read at the next step boundary
_TERM = threading.Event()


def _on_sigterm(signum, frame) -> None:
    _TERM.set()


def install_sigterm_handler() -> bool:
    """SIGTERM then asks the training loop of this process to checkpoint and stop at the next step boundary.
    Python only installs handlers from the main thread: False elsewhere (the caller finds another way)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


class Watchdog:
    """Judges each step (the trainer's guard) and reports stalls."""

    def __init__(self, cfg: ResilienceConfig, log: Callable = print, sink: Callable[[dict], None] | None = None):
        self.cfg, self.log, self.sink = cfg, log, sink
        self.losses: deque[float] = deque(maxlen=20)
        self.times: deque[float] = deque(maxlen=50)
        self.events: list[dict] = []

    def event(self, e: dict) -> None:
        self.events.append(e)
        if self.sink is not None:
            self.sink(e)

    def guard(self, loss: float, grad_norm: float, step: int = 0) -> str:
        bad = not (math.isfinite(loss) and math.isfinite(grad_norm))
        spike = (not bad and self.cfg.spike_factor > 0 and len(self.losses) >= 5
                 and loss > self.cfg.spike_factor * statistics.median(self.losses))
        if not (bad or spike):
            self.losses.append(loss)
            return "ok"
        what = "non-finite" if bad else f"spike (> {self.cfg.spike_factor} x median {statistics.median(self.losses):.4f})"
        self.event({"event": "bad_step", "action": self.cfg.on_nan, "step": step, "reason": what, "loss": loss,
                            "grad_norm": grad_norm})
        self.log(f"[watchdog] step {step}: {what} loss {loss} grad norm {grad_norm}: {self.cfg.on_nan}")
        if self.cfg.on_nan == "raise":
            raise FloatingPointError(f"training loss {loss}, grad norm {grad_norm} ({what}); set "
                                     "resilience.on_nan=skip or rollback to go on past such a step")
        return self.cfg.on_nan

    def stall(self, m: dict) -> None:
        """Marks `m` with `stall` (its step time / the median) when the step took stall_factor x the median."""
        dt = m.get("step_s")
        if dt is None:
            return
        if len(self.times) >= 5:
            med = statistics.median(self.times)
            if dt > self.cfg.stall_factor * med:
                m["stall"] = dt / med
                self.event({"event": "stall", "step": m["step"], "step_s": dt, "median_s": med})
                self.log(f"[watchdog] stall: step {m['step']} took {dt:.2f}s, {dt / med:.1f}x the median {med:.2f}s")
        self.times.append(dt)


class FaultyLoss:
    """A `loss_fn` with the configured faults injected (tests and bench.chaos): a NaN loss at one step, a loss
    spike, a slow step. Each fires once per stage dir and rank."""

    def __init__(self, loss_fn, fault: FaultConfig, step: Callable[[], int], marker_dir: Path, rank: int):
        self.inner, self.fault, self.step, self.dir, self.rank = loss_fn, fault, step, marker_dir, rank

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, model, batch):
        loss_sum, n = self.inner(model, batch)
        s = self.step()
        if s == self.fault.slow_step and fire_once(self.dir, f"slow_step.rank{self.rank}"):
            time.sleep(self.fault.slow_s)
        if s == self.fault.nan_at_step and fire_once(self.dir, f"nan_at_step.rank{self.rank}"):
            loss_sum = loss_sum * float("nan")
        if s == self.fault.spike_at_step and fire_once(self.dir, f"spike_at_step.rank{self.rank}"):
            loss_sum = loss_sum * 10.0
        return loss_sum, n


class Guardian:
    """Checkpoints, resume, stop requests, the watchdog and fault injection for one rank of a training job."""

    def __init__(self, stage_dir: str | Path, ckpt: CheckpointConfig, res: ResilienceConfig, d: Dist,
                 fingerprint: str, info: dict, log: Callable = print):
        self.dir, self.cfg, self.res, self.d, self.log = Path(stage_dir), ckpt, res, d, log
        self.faults = self.dir / ".faults"
        self.ckpt = Checkpointer(self.dir / "checkpoints", d, keep=ckpt.keep, async_save=ckpt.async_save,
                                 fingerprint=fingerprint, info=info, log=log,
                                 kill_writer_at_save=res.fault.kill_writer_at_save, fault_dir=self.faults,
                                 mirror=ckpt.mirror)
        self.watch = Watchdog(res, log, self._record if d.rank == 0 else None)
        self.stop_file = self.dir / res.stop_file
        self.resumed_from: Path | None = None
        if d.rank == 0 and self.stop_file.exists():  # a stop request from an earlier run is not this run's
            self.stop_file.unlink()
            log(f"[resilience] removed a stale stop file {self.stop_file}")

    def _record(self, e: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "events.jsonl", "a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **e}) + "\n")

    def attach(self, trainer: Trainer) -> None:
        """The watchdog judges the trainer's steps; the configured faults go into its loss_fn."""
        trainer.guard = lambda loss, gnorm: self.watch.guard(loss, gnorm, trainer.step + 1)
        f = self.res.fault
        if f.nan_at_step or f.spike_at_step or f.slow_step:
            trainer.loss_fn = FaultyLoss(trainer.loss_fn, f, lambda: trainer.step + 1, self.faults, self.d.rank)

    def start(self, trainer: Trainer) -> dict | None:
        """Resume per checkpoint.resume; returns the checkpoint's meta (None: a fresh start)."""
        self.attach(trainer)
        path = self.ckpt.find(self.cfg.resume)
        if path is None:
            return None
        meta = self.ckpt.load(trainer, path)
        trainer.consumed = int(meta.get("consumed", meta["step"]))
        self.resumed_from = path
        if self.cfg.verify_resume:
            self.ckpt.verify(trainer, path, self.dir / "resume.json")
        self.watch.event({"event": "resume", "step": trainer.step, "from": str(path), "layout": meta.get("layout"),
                          "saved_world": meta.get("world"), "world": self.d.world})
        self.log(f"[resilience] resumed from {path} at step {trainer.step} (written on {meta.get('layout')}, "
                 f"{meta.get('world')} workers; now {self.d.world})")
        return meta

    def stop_requested(self) -> str:
        """Why to stop now ('' = go on): the stop file (rank 0 looks) or a SIGTERM on any rank. All ranks agree,
        so all stop at this step."""
        flags = torch.tensor([int(self.d.rank == 0 and self.stop_file.exists()), int(_TERM.is_set())])
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        file, term = flags.tolist()
        return " and ".join(([f"stop file {self.stop_file}"] if file else []) + (["SIGTERM"] if term else []))

    def hooks(self, position: Callable[[Trainer], dict], export: Callable[[Trainer], None] | None = None) -> list:
        """[watch, save, stop]: put them after evaluation and logging, stop last."""
        every = self.cfg.every

        def watch(tr, m):
            self.watch.stall(m)

        def save(tr, m):
            if every and (tr.step % every == 0 or tr.step == tr.max_steps):
                self.ckpt.save(tr, position(tr))
            if self.cfg.export_every and export and tr.step % self.cfg.export_every == 0:
                export(tr)

        def stop(tr, m):
            why = self.stop_requested() if tr.step < tr.max_steps else ""
            if why:
                path = self.ckpt.save(tr, position(tr), block=True)
                self.log(f"[resilience] {why}: checkpoint {path} at step {tr.step}; stopping")
                self.watch.event({"event": "stop", "step": tr.step, "why": why, "checkpoint": str(path)})
                if self.d.rank == 0:
                    self.stop_file.unlink(missing_ok=True)
                m["stopped_by"] = why
                raise StopTraining(why)
            if self.res.fault.hang_at_step == tr.step + 1 and self.d.rank == self.d.world - 1 and \
                    fire_once(self.faults, "hang_at_step"):
                print(f"[fault] rank {self.d.rank} hangs before step {tr.step + 1}", flush=True)
                threading.Event().wait()  # never joins the next step's collectives

        return [watch, save, stop]

    def rollback(self, trainer: Trainer, rb: Rollback) -> None:
        """Restore the last checkpoint; the data stream goes on past the rejected batch."""
        self.ckpt.wait()
        path = latest_in(self.ckpt.root)
        if path is None:
            raise RuntimeError(f"step {rb.step} was rejected ({rb}) and resilience.on_nan=rollback, but no "
                               "checkpoint exists yet: set checkpoint.every, or resilience.on_nan=skip")
        consumed = trainer.consumed
        self.ckpt.load(trainer, path)
        trainer.consumed = consumed
        self.watch.event({"event": "rollback", "to_step": trainer.step, "rejected_step": rb.step})
        self.log(f"[resilience] rolled back to {path} (step {trainer.step}); data continues past batch {consumed}")

    def close(self) -> list[dict]:
        """The write in flight lands; returns the save timings of this rank."""
        self.ckpt.wait()
        return self.ckpt.timings
