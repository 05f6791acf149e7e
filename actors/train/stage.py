"""Driver side of the training stages: one `TorchTrainer` per stage, checkpoint exported as an HF folder."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from actors.common.metrics import plot_curves, read_jsonl
from actors.model import get_config
from actors.model.tokenizer import load_tokenizer
from actors.train.config import OBJECTIVE_KINDS, FinetuneConfig, ParallelConfig, PretrainConfig
from actors.train.sft import check_sources_fit


def check_cluster(p: ParallelConfig, resources: dict | None = None, workers: int | None = None) -> None:
    """Fail before any worker starts when the cluster cannot hold the layout (or, elastic, its `workers`
    minimum), naming the fix."""
    import ray

    res = ray.cluster_resources() if resources is None else resources
    n = workers or p.world_size
    need_cpu = n * p.cpus_per_worker
    have_cpu = res.get("CPU", 0)
    if need_cpu > have_cpu + 1e-9:
        fit = have_cpu / n
        raise ValueError(f"parallel layout {p.describe()} needs {n} workers x {p.cpus_per_worker:g} CPU "
                         f"= {need_cpu:g} CPUs; the cluster has {have_cpu:g} CPUs: set parallel.cpus_per_worker <= "
                         f"{fit:g}, or use a smaller layout")
    if p.use_gpu:
        need_gpu, have_gpu = n * p.gpus_per_worker, res.get("GPU", 0)
        if need_gpu > have_gpu + 1e-9:
            raise ValueError(f"parallel layout {p.describe()} needs {need_gpu:g} GPUs; the cluster has "
                             f"{have_gpu:g}: use a smaller layout or parallel.use_gpu=false")


def _scaling(p: ParallelConfig, min_workers: int = 0):
    from ray.train import ScalingConfig

    res = {"CPU": p.cpus_per_worker}
    if p.use_gpu:
        res["GPU"] = p.gpus_per_worker
    # elastic: Ray Train runs on as many of the layout's workers as the cluster holds, down to min_workers
    workers = (min_workers, p.world_size) if 0 < min_workers < p.world_size else p.world_size
    # PACK: workers fill one node before the next, so consecutive ranks - a tensor-parallel group once the mesh
    # orders ranks by node - share a node; pipeline and data-parallel groups span nodes
    return ScalingConfig(num_workers=workers, use_gpu=p.use_gpu, resources_per_worker=res,
                         placement_strategy="PACK", elastic_resize_monitor_interval_s=5.0)


class TrainingStopped(Exception):
    """A stop file or SIGTERM ended a training stage early, with a checkpoint: re-running resumes it."""


class _Progress:
    """A driver-side progress bar over the steps rank 0 appends to metrics.jsonl (shared storage), so the
    driver shows progress without a message per step from the workers."""

    def __init__(self, metrics: Path, total: int | None, desc: str):
        import threading

        self.metrics, self.total, self.desc = metrics, total, desc
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import json

        from tqdm import tqdm

        bar = tqdm(total=self.total, desc=self.desc, unit="step", dynamic_ncols=True, mininterval=2.0)
        seen, done = 0, 0
        while not self._stop.wait(2.0):
            if not self.metrics.exists():
                continue
            with open(self.metrics) as f:
                lines = f.readlines()[seen:]
            seen += len(lines)
            for line in lines:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                step = int(row.get("step", 0))
                if step > done:
                    bar.update(step - done)
                    done = step
                post = {k: f"{row[k]:.4f}" for k in ("loss", "val_loss") if isinstance(row.get(k), float)}
                if post:
                    bar.set_postfix(post)
        bar.close()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


def _fit(worker_fn, config: dict, parallel: ParallelConfig, out_dir: Path, name: str, total_steps: int | None = None,
         resilience=None):
    """Run `worker_fn` on the layout's Ray Train workers. With resilience.max_failures, a dead worker or node
    restarts the group (each attempt resumes from the stage's latest checkpoint); SIGTERM to this driver asks the
    workers, through the stop file, to checkpoint and stop at their next step boundary."""
    import signal
    import threading

    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from actors.train.config import ResilienceConfig

    res = resilience or ResilienceConfig()
    check_cluster(parallel, workers=res.min_workers or None)
    trainer = TorchTrainer(
        worker_fn,
        train_loop_config=config,
        scaling_config=_scaling(parallel, res.min_workers),
        torch_config=TorchConfig(backend="nccl" if parallel.use_gpu else "gloo",
                                 timeout_s=int(res.collective_timeout_s)),
        run_config=RunConfig(name=name, storage_path=str((out_dir / "ray").resolve()),
                             failure_config=FailureConfig(max_failures=res.max_failures)),
    )
    stop_file = out_dir / res.stop_file
    previous = None
    if threading.current_thread() is threading.main_thread():
        def on_sigterm(signum, frame):
            print(f"[{name}] SIGTERM: asking the workers to checkpoint and stop ({stop_file})", flush=True)
            stop_file.touch()

        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with _Progress(out_dir / "metrics.jsonl", total_steps, name):
            result = trainer.fit()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if result.error:
        raise result.error
    if (result.metrics or {}).get("stopped"):
        stop_file.unlink(missing_ok=True)
        raise TrainingStopped(f"{name} stopped at step {result.metrics.get('step')} with a checkpoint in "
                              f"{out_dir / 'checkpoints'}; run the same command again to resume")
    return result


def run_pretrain(cfg: PretrainConfig, data_outputs: dict, out_dir: str | Path, unigram_baseline: float | None = None,
                 model_overrides: dict | None = None, lineage: list | None = None,
                 init_dir: str | Path | None = None) -> dict:
    """Pretrain on the data stage's packed shards (from `init_dir`'s weights when given: continued pretraining);
    returns {"outputs": {"hf": dir, ...}, "metrics": {...}}."""
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.checkpoint.resume == "never" or not (out / "checkpoints").is_dir():
        (out / "metrics.jsonl").unlink(missing_ok=True)  # a resumed run keeps (and truncates) its metrics
    train_dir, val_dir = data_outputs["train_dir"], data_outputs["val_dir"]
    first = next(Path(train_dir).glob("*.parquet"), None)
    if first is None:
        raise FileNotFoundError(f"{train_dir}: no parquet shards; run the data stage first")
    if next(Path(val_dir).glob("*.parquet"), None) is None:
        raise FileNotFoundError(f"{val_dir}: no held-out parquet shard; run the data stage with data.val_fraction > 0")
    row_len = len(pq.read_table(first, columns=["input_ids"]).column("input_ids")[0])
    if row_len != cfg.seq_len:
        raise ValueError(f"pretrain.seq_len={cfg.seq_len} but the data stage packed rows of {row_len} tokens; "
                         f"set pretrain.seq_len={row_len} or re-run data with data.seq_len={cfg.seq_len}")
    vocab = len(load_tokenizer(data_outputs["tokenizer_dir"]))
    if init_dir is not None:
        from actors.model.hf import read_config

        mcfg = read_config(init_dir)
        if mcfg.vocab_size < vocab:
            raise ValueError(f"{init_dir} has a {mcfg.vocab_size}-token vocabulary but the data was tokenized with "
                             f"{vocab}: set data.tokenizer to the base model so both agree")
    else:
        mcfg = get_config(cfg.model, **{"vocab_size": vocab, **(model_overrides or {})})
    cfg.parallel.check_model(mcfg, cfg.seq_len, cfg.batch_size)
    config = {"pretrain": dataclasses.asdict(cfg), "tokenizer_dir": str(data_outputs["tokenizer_dir"]),
              "out_dir": str(out.resolve()), "model_config": dataclasses.asdict(mcfg), "lineage": lineage or [],
              "train_dir": str(Path(train_dir).resolve()), "val_dir": str(Path(val_dir).resolve()),
              "init_dir": str(Path(init_dir).resolve()) if init_dir else None}
    result = _fit(_pretrain_fn(), config, cfg.parallel, out, "pretrain", cfg.max_steps, cfg.resilience)
    hf_dir = out / "hf"
    shutil.rmtree(hf_dir, ignore_errors=True)
    result.checkpoint.to_directory(str(hf_dir))
    rows = read_jsonl(out / "metrics.jsonl")
    hl = {"unigram baseline": unigram_baseline} if unigram_baseline else None
    plot_curves(rows, "step", ["loss", "val_loss"], out / "loss.png", title="pretrain loss (nats/token)", hlines=hl)
    metrics = dict(result.metrics)
    if unigram_baseline:
        metrics["unigram_baseline"] = unigram_baseline
        metrics["val_vs_unigram"] = metrics["val_loss"] / unigram_baseline
    return {"outputs": {"hf": str(hf_dir), "metrics_jsonl": str(out / "metrics.jsonl"),
                        "loss_png": str(out / "loss.png"), "tensorboard": str(out / "tb")}, "metrics": metrics}


def run_finetune(cfg: FinetuneConfig, base_model_dir: str | Path, sources: list[tuple[str, int]],
                 out_dir: str | Path, lineage: list | None = None, data_root: str | Path | None = None,
                 registry: str | Path | None = None) -> dict:
    """Fine-tune `base_model_dir` with `cfg.objective` / `cfg.method` on `cfg.datasets` (registry names or files
    under `data_root`) plus the pipeline's own JSONL record files `sources` [(path, max_rows), ...].

    Here, on the driver: every dataset is read and checked (bad rows quarantined with row numbers and reasons),
    mixed and split into `out/data/{train,val}.jsonl`; then the workers tokenize their shares and train."""
    from actors.model.chat import use_template
    from actors.train.datasets import DatasetEntry, load_registry, prepare, resolve

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = [DatasetEntry(Path(p).stem, Path(p).resolve(), "messages", max_rows=int(n)) for p, n in sources
               if n > 0]
    for e in entries:
        if not e.path.is_file():
            raise FileNotFoundError(f"finetune source {e.path} does not exist; run the data stage first")
    if cfg.datasets:
        reg = load_registry(registry)
        entries += [resolve(spec, reg, data_root or ".") for spec in cfg.datasets]
    prep = prepare(entries, out / "data", cfg.seed, cfg.val_size, cfg.mix_rows, OBJECTIVE_KINDS[cfg.objective])
    if prep["train_rows"] == 0:
        raise ValueError(f"finetune: no usable {cfg.objective} rows in {[e.name for e in entries]} (quarantined "
                         f"{prep['quarantined']}: see {prep['paths']['quarantine']})")
    print(f"[finetune] data: {prep['train_rows']} train / {prep['val_rows']} val rows; quarantined "
          f"{prep['quarantined']} ({prep['paths']['quarantine']}); per dataset {prep['counts']}", flush=True)
    train = [(prep["paths"]["train"], 0)]
    val = [(prep["paths"]["val"], 0)] if prep["val_rows"] else []
    check_sources_fit(use_template(load_tokenizer(base_model_dir), cfg.template), train, cfg.max_len)
    metrics_file = out / "metrics.jsonl"
    if cfg.checkpoint.resume == "never" or not (out / "checkpoints").is_dir():
        metrics_file.unlink(missing_ok=True)
    config = {"finetune": dataclasses.asdict(cfg), "base_model_dir": str(Path(base_model_dir).resolve()),
              "out_dir": str(out.resolve()), "sources": train, "val_sources": val, "lineage": lineage or []}
    result = _fit(_finetune_fn(), config, cfg.parallel, out, "finetune", cfg.max_steps, cfg.resilience)
    ckpt = out / "checkpoint"
    shutil.rmtree(ckpt, ignore_errors=True)
    result.checkpoint.to_directory(str(ckpt))
    for sub in ("hf", "adapter"):
        shutil.rmtree(out / sub, ignore_errors=True)
        if (ckpt / sub).exists():
            shutil.move(str(ckpt / sub), str(out / sub))
    shutil.rmtree(ckpt, ignore_errors=True)
    rows = read_jsonl(metrics_file)
    ys = ["loss", "val_loss"] + (["val_pref_acc", "val_reward_acc"] if cfg.objective in ("dpo", "rm") else [])
    plot_curves(rows, "step", ys, out / "loss.png", title=f"fine-tune ({cfg.objective}, {cfg.method})")
    outputs = {"metrics_jsonl": str(metrics_file), "loss_png": str(out / "loss.png"), **prep["paths"]}
    for sub in ("hf", "adapter"):
        if (out / sub).exists():
            outputs[sub] = str(out / sub)
    metrics = {**dict(result.metrics), "data": prep["counts"], "quarantined": prep["quarantined"]}
    base_row = next((r for r in rows if r.get("step") == 0), None)
    if base_row:
        metrics["base"] = {k: v for k, v in base_row.items() if k.startswith("val_")}
    return {"outputs": outputs, "metrics": metrics}


def _pretrain_fn():
    from actors.train.workers import pretrain_worker

    return pretrain_worker


def _finetune_fn():
    from actors.train.workers import finetune_worker

    return finetune_worker
