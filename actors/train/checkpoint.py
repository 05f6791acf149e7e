"""Training checkpoints with torch.distributed.checkpoint (DCP): sharded, async, atomic, any layout. Ray-free.

A checkpoint folder under a stage's `checkpoints/`:

    checkpoints/
      latest                     "step_00000040": moved last (write + rename), so it only names complete folders
      checkpoints.jsonl          one line per save: step, blocking_ms, save_ms, bytes
      step_00000040/
        .metadata                DCP's global index: every tensor's shape and which file holds which chunk
        __0_0.distcp ...         each rank's own shards (one file per rank)
        meta.json                step, data position, layout, world, fingerprint, config (written last)
        rng/rank{r}.pt           each rank's torch RNG state
      step_00000050.tmp/         being written: never picked, removed by the next save

Tensors are keyed by the bare model's parameter names (`model/<name>`, `optim/<name>/<state>`), whatever wraps
them (FSDP2 shards, tensor-parallel DTensors, pipeline stages, activation checkpointing, peft): a load asks for
the names this rank holds, in this rank's placements, and DCP reads exactly those slices. That is what lets a
checkpoint saved on pp2 x dp2 x tp2 resume on dp2 or on one worker. A tied head on the last pipeline stage is a
copy of the embedding: it is not saved, and loads from the embedding's entry.

Saving is async: the state is copied into fresh CPU buffers (the step waits only for that copy), then a
background thread plans and writes on its own gloo group, so its collectives never interleave with training's.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from actors.train.parallel import Dist, canonical_name

LATEST = "latest"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def is_complete(path: Path) -> bool:
    """A checkpoint folder every rank finished writing: rank 0 writes meta.json last, once every rank's shards
    (and DCP's index) are on disk, before the rename to step_N (a .tmp or .download-* folder is never one)."""
    return re.fullmatch(r"step_\d{8}", path.name) is not None and (path / "meta.json").is_file()


def latest_in(root: Path) -> Path | None:
    """The newest complete checkpoint under `root`: what `latest` names, else the highest complete step_N (a
    run killed between the rename and the pointer move)."""
    root = Path(root)
    ptr = root / LATEST
    if ptr.is_file():
        cand = root / ptr.read_text().strip()
        if is_complete(cand):
            return cand
    done = sorted(p for p in root.glob("step_*") if is_complete(p))
    return done[-1] if done else None


def resolve(spec: str | os.PathLike) -> Path:
    """A `--resume PATH`: a step_N folder, or a checkpoints root (its latest), or a stage dir holding one."""
    p = Path(spec)
    for cand in (p, p / "checkpoints"):
        if is_complete(cand):
            return cand
        found = latest_in(cand) if cand.is_dir() else None
        if found is not None:
            return found
    raise FileNotFoundError(f"checkpoint.resume={spec}: no complete checkpoint there (a step_N folder with "
                            ".metadata and meta.json, or a folder holding such); use auto, never or another path")


def fingerprint(config: dict, drop: tuple[str, ...] = (), **extra) -> str:
    """What decides the training curve, hashed: `config` without the keys in `drop` (layout, checkpointing,
    logging: a checkpoint resumes across changes to them), plus `extra` (data and base paths...)."""
    blob = json.dumps({"cfg": {k: v for k, v in config.items() if k not in drop}, **extra}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_meta(path: Path) -> dict:
    return json.loads((Path(path) / "meta.json").read_text())


# ---------------------------------------------------------------------------------------------------------------
# the tensors


def _adam_state(optimizer: torch.optim.Optimizer, p: torch.nn.Parameter) -> dict:
    """The AdamW state of `p`, created (zeros, step 0) when the optimizer has not stepped yet: a load fills it."""
    st = optimizer.state[p]
    if not st:
        if not isinstance(optimizer, torch.optim.AdamW | torch.optim.Adam):
            raise TypeError(f"checkpoint: {type(optimizer).__name__} state cannot be pre-allocated for a load; "
                            "the trainer builds AdamW")
        st["step"] = torch.tensor(0.0, dtype=torch.float32)
        st["exp_avg"] = torch.zeros_like(p.detach(), memory_format=torch.preserve_format)
        st["exp_avg_sq"] = torch.zeros_like(p.detach(), memory_format=torch.preserve_format)
    return st


def tensor_state(parts: list[torch.nn.Module], optimizer: torch.optim.Optimizer,
                 copies: list[torch.nn.Parameter] = (), for_load: bool = False) -> dict[str, torch.Tensor]:
    """Flat {key: tensor} of the trained parameters and their optimizer state, keyed by canonical name. The
    tensors are the live ones (DTensors where sharded): DCP saves from them and loads into them in place.
    `copies` (a last pipeline stage's tied head) are skipped on save and read from the embedding on load."""
    tied_key = "model.embed_tokens.weight"
    out: dict[str, torch.Tensor] = {}
    for part in parts:
        for name, p in part.named_parameters():
            if not p.requires_grad:
                continue
            is_copy = any(p is c for c in copies)
            if is_copy and not for_load:
                continue
            key = tied_key if is_copy else canonical_name(name)
            out[f"model/{key}"] = p.detach()
            for k, v in _adam_state(optimizer, p).items():
                out[f"optim/{key}/{k}"] = v
    return out


def gathered_digest(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """sha256 of each tensor's full value (DTensor shards gathered: a collective on every rank)."""
    from torch.distributed.tensor import DTensor

    out = {}
    for k in sorted(state):
        t = state[k]
        t = t.full_tensor() if isinstance(t, DTensor) else t
        out[k] = hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()
    return out


def saved_digest(path: Path, keys: list[str] | None = None) -> dict[str, str]:
    """sha256 of each tensor as saved in checkpoint `path` (read whole in this process, no process group)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    md = dcp.FileSystemReader(str(path)).read_metadata()
    names = keys or [k for k, v in md.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)]
    state = {k: torch.empty(md.state_dict_metadata[k].size, dtype=md.state_dict_metadata[k].properties.dtype)
             for k in names}
    dcp.load(state, storage_reader=dcp.FileSystemReader(str(path)), no_dist=True)
    return {k: hashlib.sha256(state[k].contiguous().numpy().tobytes()).hexdigest() for k in sorted(state)}


# ---------------------------------------------------------------------------------------------------------------
# the mirror: complete checkpoints copied to a pyarrow.fs URI (object store, HDFS, another disk)


class Mirror:
    """A copy of the complete checkpoints under a pyarrow.fs URI (s3://bucket/run/stage/checkpoints, gs://...,
    file:///abs): each is uploaded after it landed locally, files first and the mirror's own `latest` last, so
    the mirror too only ever names complete checkpoints; the newest `keep` are kept there. A run whose local
    checkpoints are gone (a new machine, a new pod) downloads the mirror's latest before resuming."""

    def __init__(self, uri: str, keep: int, log: Callable = print):
        import pyarrow.fs as pafs

        try:
            self.fs, self.path = pafs.FileSystem.from_uri(uri)
        except Exception as e:  # noqa: BLE001 - re-raised with the fix
            raise ValueError(f"checkpoint.mirror={uri!r} is not a usable pyarrow.fs URI ({e}); use s3://bucket/prefix, "
                             "gs://..., hdfs://... or file:///absolute/path") from e
        self.uri, self.keep, self.log = uri, keep, log
        self.path = self.path.rstrip("/")

    def upload(self, local: Path) -> None:
        import pyarrow.fs as pafs

        dest = f"{self.path}/{local.name}"
        self.fs.create_dir(dest, recursive=True)
        pafs.copy_files(str(local), dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
        with self.fs.open_output_stream(f"{self.path}/{LATEST}") as f:  # last: names only complete uploads
            f.write(local.name.encode())
        sel = pafs.FileSelector(self.path, allow_not_found=True)
        steps = sorted(i.base_name for i in self.fs.get_file_info(sel)
                       if i.type == pafs.FileType.Directory and i.base_name.startswith("step_")
                       and not i.base_name.endswith(".tmp"))
        for old in steps[:-self.keep]:
            if old != local.name:
                self.fs.delete_dir(f"{self.path}/{old}")

    def latest(self) -> str | None:
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(f"{self.path}/{LATEST}")
        if info.type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(f"{self.path}/{LATEST}") as f:
            return f.read().decode().strip() or None

    def download(self, name: str, root: Path) -> Path:
        """The mirror's `name` into root/name (each process downloads into its own folder and renames it into
        place; another process's finished copy wins)."""
        import pyarrow.fs as pafs

        final = root / name
        if is_complete(final):
            return final
        mine = root / f"{name}.download-{os.getpid()}"
        shutil.rmtree(mine, ignore_errors=True)
        mine.mkdir(parents=True)
        pafs.copy_files(f"{self.path}/{name}", str(mine), source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem())
        try:
            os.rename(mine, final)
        except OSError:  # another process renamed its copy first
            shutil.rmtree(mine, ignore_errors=True)
        return final


# ---------------------------------------------------------------------------------------------------------------
# fault injection


def fire_once(marker_dir: Path, name: str) -> bool:
    """True the first time `name` is asked about in `marker_dir` (a marker file): a fault injected into a run
    fires once, not again in the restarted attempt."""
    marker_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(marker_dir / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _writer(path: Path, kill_after_first_shard: bool):
    import torch.distributed.checkpoint as dcp

    class KillingWriter(dcp.FileSystemWriter):
        """Writes this rank's shards, then SIGKILLs its process: a worker dying in the middle of a checkpoint."""

        def write_data(self, plan, planner):
            fut = super().write_data(plan, planner)
            fut.wait()
            os.kill(os.getpid(), signal.SIGKILL)
            return fut

    cls = KillingWriter if kill_after_first_shard else dcp.FileSystemWriter
    return cls(str(path), thread_count=1)


# ---------------------------------------------------------------------------------------------------------------
# the checkpointer


class Checkpointer:
    """Saves and loads the trainer's state under `root` for one rank of the job (every rank calls every method).

    `extra()` gives what the state needs besides tensors (data position, ...): saved in meta.json."""

    def __init__(self, root: str | Path, d: Dist, keep: int = 2, async_save: bool = True,
                 fingerprint: str = "", info: dict | None = None, log: Callable = print,
                 kill_writer_at_save: int = 0, fault_dir: Path | None = None, mirror: str = ""):
        self.root, self.d, self.keep, self.async_save = Path(root), d, keep, async_save
        self.mirror = Mirror(mirror, keep, log) if mirror else None
        self._uploads: list[threading.Thread] = []
        self.fingerprint, self.info, self.log = fingerprint, dict(info or {}), log
        self.kill_writer_at_save, self.fault_dir = kill_writer_at_save, fault_dir
        self.saves = 0
        self._pending = None   # the future of the write in flight
        self._lock = threading.Lock()
        self.timings: list[dict] = []
        self._pg = None
        import torch.distributed as dist

        self._distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if self._distributed and async_save:
            # the background write's plan/finish collectives run on their own group (gloo: DCP stages on CPU)
            self._pg = dist.new_group(backend="gloo")

    # ------------------------------------------------------------------------------------------ save

    def _barrier(self) -> None:
        if self._distributed:
            import torch.distributed as dist

            dist.barrier()

    def save(self, trainer, extra: dict | None = None, block: bool = False) -> Path:
        """Checkpoint `trainer` at its current step: returns the folder it will have once complete. With
        async_save (and not `block`) it returns after the state is copied; the write lands in the background."""
        import torch.distributed.checkpoint as dcp

        t0 = time.perf_counter()  # a previous write still in flight blocks the step too: counted
        self.wait()  # one write in flight at a time: the previous one lands before this one starts
        step = trainer.step
        final, tmp = self.root / step_dir_name(step), self.root / (step_dir_name(step) + ".tmp")
        if self.d.rank == 0:
            for stale in self.root.glob("step_*.tmp"):  # a write that died: never complete, never picked
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        (tmp / "rng").mkdir(exist_ok=True)
        torch.save(torch.get_rng_state(), tmp / "rng" / f"rank{self.d.rank}.pt")
        self.saves += 1
        kill = (self.kill_writer_at_save == self.saves and self.d.rank == self.d.world - 1
                and fire_once(self.fault_dir or self.root, f"kill_writer_at_save_{self.saves}"))
        meta = {"step": step, "fingerprint": self.fingerprint, "world": self.d.world, **self.info,
                **(extra or {}), "saved_at": time.time()}
        if trainer.engine is not None:  # DeepSpeed's own sharded format: each rank its ZeRO partitions
            meta["format"] = "deepspeed"
            trainer.engine.save_checkpoint(str(self.root), tag=tmp.name, save_latest=False,
                                           exclude_frozen_parameters=True)
            self._barrier()
            self._finish(None, tmp, final, meta, t0, time.perf_counter() - t0)
            return final
        state = tensor_state(trainer.parts, trainer.optimizer, trainer.copies)
        writer = _writer(tmp, kill)
        if self.async_save and not block:
            fut = dcp.async_save(state, storage_writer=writer, process_group=self._pg)
            blocking = time.perf_counter() - t0
            landed = threading.Event()  # set once _finish is over: the future alone is done before its callbacks

            def finish(f):
                try:
                    self._finish(f, tmp, final, meta, t0, blocking)
                finally:
                    landed.set()

            self._pending = (fut, landed)
            fut.add_done_callback(finish)
        else:
            dcp.save(state, storage_writer=writer)
            blocking = time.perf_counter() - t0
            self._finish(None, tmp, final, meta, t0, blocking)
        return final

    def _finish(self, fut, tmp: Path, final: Path, meta: dict, t0: float, blocking: float) -> None:
        """Every rank's shards and DCP's index are written: rank 0 adds meta.json, renames the folder, moves
        `latest`, drops old checkpoints. Runs on the writer thread for an async save."""
        err = fut.exception() if fut is not None else None
        save_s = time.perf_counter() - t0
        if err is not None:
            self.log(f"[checkpoint] step {meta['step']}: the write failed ({err!r}); {tmp.name} is left "
                     "incomplete and the previous checkpoint stays current")
            return
        timing = {"step": meta["step"], "blocking_ms": blocking * 1e3, "save_ms": save_s * 1e3}
        with self._lock:
            self.timings.append(timing)
        if self.d.rank != 0:
            return
        (tmp / "meta.json").write_text(json.dumps(meta, default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        ptr = self.root / (LATEST + ".tmp")
        ptr.write_text(final.name)
        os.replace(ptr, self.root / LATEST)
        done = sorted(p for p in self.root.glob("step_*") if is_complete(p))
        for old in done[:-self.keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        timing["bytes"] = sum(f.stat().st_size for f in final.rglob("*") if f.is_file())
        with open(self.root / "checkpoints.jsonl", "a") as f:
            f.write(json.dumps({**timing, "path": str(final)}) + "\n")
        if self.mirror is not None:  # in the background: the next save waits for it, training does not
            th = threading.Thread(target=self._upload, args=(final,), daemon=True)
            th.start()
            self._uploads.append(th)

    def _upload(self, final: Path) -> None:
        t0 = time.perf_counter()
        try:
            self.mirror.upload(final)
        except Exception as e:  # noqa: BLE001 - training goes on; the local checkpoint is complete
            self.log(f"[checkpoint] upload of {final.name} to {self.mirror.uri} failed: {e!r}; the local copy "
                     "stays current, the mirror keeps its previous latest")
            return
        with open(self.root / "checkpoints.jsonl", "a") as f:
            f.write(json.dumps({"step": int(final.name[5:]), "uploaded_to": f"{self.mirror.uri}/{final.name}",
                                "upload_ms": (time.perf_counter() - t0) * 1e3}) + "\n")

    def wait(self) -> None:
        """Block until the write in flight (if any) has landed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            fut, landed = pending
            fut.result()
            landed.wait()
        for th in self._uploads:
            th.join()
        self._uploads = []

    # ------------------------------------------------------------------------------------------ load

    def find(self, resume: str) -> Path | None:
        """The checkpoint to start from: `auto` = this stage's latest when its fingerprint matches, `never` =
        none, else the given path (any fingerprint, any layout)."""
        if resume == "never":
            return None
        if resume == "auto":
            found = latest_in(self.root) if self.root.is_dir() else None
            if found is None and self.mirror is not None and (name := self.mirror.latest()):
                self.log(f"[checkpoint] no local checkpoint; downloading {name} from {self.mirror.uri}")
                found = self.mirror.download(name, self.root)
            if found is None:
                return None
            theirs = read_meta(found).get("fingerprint")
            if self.fingerprint and theirs != self.fingerprint:
                self.log(f"[checkpoint] {found} was written by another training config ({theirs} != "
                         f"{self.fingerprint}); starting fresh. To load it anyway: checkpoint.resume={found}")
                return None
            return found
        return resolve(resume)

    def load(self, trainer, path: Path) -> dict:
        """Load `path` into the trainer's live tensors (each rank reads its own slices, whatever layout wrote
        them) and its step; returns meta.json."""
        import torch.distributed.checkpoint as dcp

        path = Path(path)
        meta = read_meta(path)
        if trainer.engine is not None or meta.get("format") == "deepspeed":
            return self._load_deepspeed(trainer, path, meta)
        state = tensor_state(trainer.parts, trainer.optimizer, trainer.copies, for_load=True)
        have = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
        missing = sorted(k for k in state if k not in have)
        if missing:
            raise ValueError(f"{path}: the checkpoint has no {missing[:3]}{' ...' if len(missing) > 3 else ''} "
                             f"({len(missing)} of {len(state)} tensors missing): it was written for another model "
                             "or method; set checkpoint.resume=never or point it at a matching checkpoint")
        dcp.load(state, storage_reader=dcp.FileSystemReader(str(path)))
        trainer.step = int(meta["step"])
        rng = path / "rng" / f"rank{self.d.rank}.pt"
        if rng.is_file() and self.d.world == meta.get("world"):  # another layout: ranks are other processes
            torch.set_rng_state(torch.load(rng))
        return meta

    def _load_deepspeed(self, trainer, path: Path, meta: dict) -> dict:
        if trainer.engine is None or meta.get("format") != "deepspeed" or meta.get("world") != self.d.world:
            raise ValueError(f"{path} was written by {meta.get('layout')} on {meta.get('world')} workers; this run "
                             f"is {self.info.get('layout')} on {self.d.world}. DeepSpeed checkpoints resume on the "
                             "same backend and data-parallel size; resume with that layout, or "
                             "checkpoint.resume=never")
        trainer.engine.load_checkpoint(str(path.parent), tag=path.name, load_optimizer_states=True,
                                       load_lr_scheduler_states=False, load_module_strict=False)
        trainer.step = int(meta["step"])
        rng = path / "rng" / f"rank{self.d.rank}.pt"
        if rng.is_file():
            torch.set_rng_state(torch.load(rng))
        return meta

    def verify(self, trainer, path: Path, out: Path) -> dict:
        """After `load`: sha256 of every loaded tensor gathered whole, next to those of the checkpoint; written
        by rank 0 to `out` (resume.json). `equal` says they all match bit for bit."""
        mine = gathered_digest(tensor_state(trainer.parts, trainer.optimizer, trainer.copies))
        rep = {}
        if self.d.rank == 0:
            theirs = saved_digest(path, sorted(mine))
            rep = {"from": str(path), "step": trainer.step, "tensors": len(mine),
                   "equal": mine == theirs, "differ": sorted(k for k in mine if mine[k] != theirs.get(k))}
            Path(out).write_text(json.dumps(rep, indent=1))
        return rep
