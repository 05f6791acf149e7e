"""Ray Train worker functions (the shell): build model, parallelize, loop with `Trainer`, report a checkpoint."""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from actors.common.config import from_dict
from cluster.hardware import precision_info, torch_dtype
from actors.common.metrics import MetricsWriter, truncate_metrics
from actors.model import ModelConfig, Transformer, save_hf
from actors.train.config import FinetuneConfig, ParallelConfig, PretrainConfig
from actors.train.data import document_mask, packed_batches, read_rows, val_batches
from actors.train.parallel import (Dist, build_mesh, build_model_parts, build_schedule, full_state_dict, init_value,
                                   parallelize, tied_head)
from actors.train.finetune import Finetuner
from actors.train.trainer import CausalLMLoss, Trainer, device_peak_flops, run_loop


def _take_sigterm() -> None:
    """SIGTERM to this worker process checkpoints and stops the run at the next step boundary (all ranks agree
    there). The train function runs on a thread of the worker actor and Python installs signal handlers only on
    the main thread: the actor's main thread runs the installation as an actor task."""
    import ray

    from actors.train.resilience import install_sigterm_handler

    if install_sigterm_handler():
        return
    try:
        actor = ray.get_runtime_context().current_actor
        ray.get(actor.__ray_call__.remote(lambda self: install_sigterm_handler()), timeout=30)
    except Exception as e:  # noqa: BLE001 - a worker without the handler still stops through the stop file
        print(f"[resilience] SIGTERM handler not installed on this worker ({e!r}); the stop file still works",
              flush=True)


def setup_dist(pcfg) -> Dist:
    """The mesh over Ray Train's process group, ranks ordered by node so a tensor-parallel group shares one."""
    import ray
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return Dist()
    nodes: list = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    return build_mesh(pcfg, "cuda" if pcfg.use_gpu else "cpu", nodes)


def _sum_over_ranks(stats: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Per-source counts of all ranks (each rank tokenized its own rows)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return stats
    keys = [(s, k) for s in sorted(stats) for k in sorted(stats[s])]
    t = torch.tensor([stats[s][k] for s, k in keys], dtype=torch.long)
    dist.all_reduce(t)
    out: dict[str, dict[str, int]] = {}
    for (s, k), v in zip(keys, t.tolist()):
        out.setdefault(s, {})[k] = v
    return out


def _report(metrics: dict, ckpt_dir: str | None) -> None:
    import ray.train

    ckpt = ray.train.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None
    ray.train.report(metrics, checkpoint=ckpt)


def _report_stopped(final: dict, rank: int) -> None:
    """A stopped run's result: Ray Train keeps the metrics of checkpointed reports only, so rank 0 reports a
    marker folder (the resumable checkpoint itself is the stage's own, under checkpoints/)."""
    import json

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "stopped.json").write_text(json.dumps(final, default=str))
        _report(final, tmp if rank == 0 else None)


def initial_values(mcfg, seed: int, init_dir: str | None):
    """`full_value(name, shape)` for materialising: a checkpoint's tensors (continued pretraining) or the seeded
    init. A tied head missing from the checkpoint is the embedding."""
    if not init_dir:
        return lambda name, shape: init_value(mcfg, name, shape, seed)
    from actors.model.hf import tensor_reader

    get = tensor_reader(init_dir)

    def value(name, shape):
        t = get(name)
        if t is None and name == "lm_head.weight":
            t = get("model.embed_tokens.weight")
        if t is None:
            raise ValueError(f"{init_dir}: the checkpoint has no tensor {name}")
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{init_dir}: {name} has shape {tuple(t.shape)}, the model wants {tuple(shape)}")
        return t.float()

    return value


# what a pretraining checkpoint resumes across: the layout, checkpointing, logging and the run's length (the
# global batch is fingerprinted instead of its per-rank split)
_PRETRAIN_FREE = ("parallel", "checkpoint", "resilience", "log_every", "eval_every", "eval_max_batches",
                  "batch_size", "grad_accum_steps", "max_steps")


def elastic_layout(pc: ParallelConfig, world: int, grad_accum: int, min_workers: int) -> tuple[ParallelConfig, int]:
    """The layout for the `world` workers Ray Train gave this attempt, and its gradient accumulation: fewer
    workers than the layout names (an elastic run after a node loss) shrink data parallelism - dp_shard when the
    layout shards, else dp_replicate - and accumulate more micro-batches, so the global batch is unchanged."""
    if world == pc.world_size:
        return pc, grad_accum
    fixed = pc.pp * pc.tp
    dp_new = world // fixed
    if min_workers == 0 or world < min_workers or world % fixed or (pc.dp * grad_accum) % dp_new:
        raise ValueError(f"{world} workers cannot run layout {pc.describe()} ({pc.world_size} workers): an elastic "
                         f"run (resilience.min_workers > 0) needs a multiple of pp x tp = {fixed} workers whose "
                         f"data-parallel size divides dp x grad_accum_steps = {pc.dp * grad_accum}")
    # a sharded layout (FSDP2, HSDP) shards over every remaining data-parallel rank; replicas stay replicas
    shrunk = dataclasses.replace(pc, dp_shard=dp_new if pc.dp_shard > 1 else 1,
                                 dp_replicate=1 if pc.dp_shard > 1 else dp_new)
    return shrunk, pc.dp * grad_accum // dp_new


def export_pretrain(trainer: Trainer, d: Dist, mcfg: ModelConfig, out: Path, tok_dir: str, step: int,
                    lineage: list) -> bool:
    """The whole model as an HF folder at `out` (a collective: every rank calls it; rank 0 writes). True on the
    rank that wrote."""
    if trainer.engine is not None:  # DeepSpeed: ZeRO-3 shards gathered (ZeRO-1/2 hold whole weights)
        from actors.train.zero import full_state

        sd = full_state(trainer.engine.module)
        sd = sd if d.rank == 0 else None
    else:
        sd = full_state_dict(trainer.parts, d)
    if sd is None:
        return False
    with torch.device("meta"):
        model = Transformer(mcfg)
    model.load_state_dict(sd, strict=False, assign=True)
    model.tie_weights()
    save_hf(model, out, tokenizer_dir=tok_dir, step=step, lineage=lineage)
    return True


def pretrain_worker(config: dict) -> None:
    import torch.distributed as dist

    from actors.train.checkpoint import fingerprint
    from actors.train.resilience import Guardian

    cfg = from_dict(PretrainConfig, config["pretrain"])
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    pc, grad_accum = elastic_layout(cfg.parallel, world, cfg.grad_accum_steps, cfg.resilience.min_workers)
    tok_dir, out_dir = config["tokenizer_dir"], Path(config["out_dir"])
    torch.set_num_threads(pc.threads_per_worker)
    _take_sigterm()
    d = setup_dist(pc)
    mcfg = ModelConfig(**config["model_config"])
    dtype = torch_dtype(cfg.dtype, d.device, field="pretrain.dtype")
    precision = precision_info(dtype, d.device)
    stages = build_model_parts(mcfg, pc, d, dtype, initial_values(mcfg, cfg.seed, config.get("init_dir")))
    parts = [m for _, m in stages]
    loss_fn = CausalLMLoss()
    tied, tied_copy = tied_head(mcfg, stages, pc.num_stages) if pc.pp > 1 else (None, False)
    # FSDP's policy casts weights to the compute dtype; elsewhere autocast does
    fsdp_mixed = pc.dp_shard > 1 and pc.backend == "fsdp"
    trainer = Trainer(parts, loss_fn, cfg.optim, cfg.max_steps, d,
                      autocast_dtype=dtype if dtype != torch.float32 and not fsdp_mixed else None,
                      tied_weight=tied, tied_copy=tied_copy, flops_per_token=mcfg.flops_per_token(cfg.seq_len),
                      peak_flops=device_peak_flops(d.device), zero=pc, micro_batch=cfg.batch_size)
    if pc.pp > 1:
        trainer.attach_schedule(build_schedule(stages, pc, d, pc.pp_microbatches, trainer.pipeline_loss))

    log = (lambda s: print(s, flush=True)) if d.rank == 0 else (lambda s: None)
    global_batch = cfg.batch_size * cfg.grad_accum_steps * cfg.parallel.dp
    fp = fingerprint(config["pretrain"], _PRETRAIN_FREE, global_batch=global_batch, model=config["model_config"],
                     train=config["train_dir"], init=config.get("init_dir"))
    guard = Guardian(out_dir, cfg.checkpoint, cfg.resilience, d, fp,
                     {"stage": "pretrain", "layout": pc.describe(), "global_batch": global_batch,
                      "config": config["pretrain"]}, log)
    meta = guard.start(trainer)

    rows = read_rows(config["train_dir"])
    batches = packed_batches(rows, cfg.batch_size, grad_accum, d.dp_rank, d.dp_size, cfg.seed, trainer.consumed)
    val = val_batches(read_rows(config["val_dir"]), cfg.batch_size, cfg.eval_max_batches, d.dp_rank, d.dp_size)
    if cfg.document_mask:
        from tokenizers import Tokenizer

        from actors.model.tokenizer import document_end_id

        eos = document_end_id(Tokenizer.from_file(str(Path(tok_dir) / "tokenizer.json")))
        batches = ([{**b, **document_mask(b["input_ids"], eos)} for b in step] for step in batches)
        val = [{**b, **document_mask(b["input_ids"], eos)} for b in val]
    log(f"[pretrain] {pc.describe()} on {d.world} workers (gradient accumulation {grad_accum}); {len(rows)} "
        f"packed rows of {rows.shape[1]} tokens; {sum(p.numel() for m in parts for p in m.parameters())} "
        f"parameters on rank 0; {precision['dtype']} (cpu {precision['cpu_capability']})")

    writer = MetricsWriter(out_dir) if d.rank == 0 else None
    if writer and meta is not None:
        truncate_metrics(out_dir / "metrics.jsonl", trainer.step)
    t_start, tokens = time.perf_counter(), 0.0

    def evaluate(tr, m):
        if tr.step % cfg.eval_every == 0 or tr.step == cfg.max_steps:
            m.update(tr.evaluate(val))

    def log_row(tr, m):
        nonlocal tokens
        tokens += m["tokens"]
        m["elapsed_s"] = time.perf_counter() - t_start
        if writer and (tr.step % cfg.log_every == 0 or {"val_loss", "stall", "skipped"} & set(m) or tr.step == 1):
            writer.log(m)
            print(f"[pretrain] step {m['step']}/{cfg.max_steps} loss {m['loss']:.4f} lr {m['lr']:.2e} "
                  f"gnorm {m['grad_norm']:.3f} tok/s {m['tokens_per_s']:.0f}"
                  + (f" val {m['val_loss']:.4f}" if "val_loss" in m else ""), flush=True)

    def position(tr):
        return {"consumed": tr.consumed, "global_batch": global_batch, "seed": cfg.seed}

    lineage = config.get("lineage", [])

    def export(tr):
        export_pretrain(tr, d, mcfg, out_dir / "exports" / f"step_{tr.step:08d}", tok_dir, tr.step,
                        lineage + [{"stage": "pretrain", "steps": tr.step, "layout": pc.describe(), **precision}])

    if config.get("init_dir") and meta is None:  # continued pretraining: where the base starts on held-out rows
        start = trainer.evaluate(val)
        if writer:
            writer.log({"step": 0, **start, "elapsed_s": 0.0})
            print(f"[pretrain] step 0 (base) val {start['val_loss']:.4f}", flush=True)
    watch, save, stop = guard.hooks(position, export)
    last = run_loop(trainer, batches, [watch, evaluate, log_row, save, stop], on_rollback=guard.rollback)
    timings = guard.close()
    elapsed = time.perf_counter() - t_start
    final = {"step": trainer.step, "loss": last.get("loss"), "val_loss": last.get("val_loss"),
             "tokens": tokens, "tokens_per_s": tokens / elapsed, "train_s": elapsed, "stopped": bool(last.get("stopped")),
             "num_params": mcfg.num_params(), "world_size": d.world, "layout": pc.describe(),
             "resumed_from": str(guard.resumed_from) if guard.resumed_from else None, **precision}
    if trainer.engine is not None:  # what ZeRO left on this rank: 1/dp of the parameters under ZeRO-3
        from actors.train.zero import local_numel

        final["params_held"], final["params_total"] = local_numel(trainer.engine)
    if timings:
        final["ckpt_blocking_ms"] = sum(t["blocking_ms"] for t in timings) / len(timings)
        final["ckpt_save_ms"] = sum(t["save_ms"] for t in timings) / len(timings)
    if writer:
        writer.close()
    if final["stopped"]:
        _report_stopped(final, d.rank)
        return
    with tempfile.TemporaryDirectory() as tmp:
        wrote = export_pretrain(trainer, d, mcfg, Path(tmp), tok_dir, trainer.step,
                                lineage + [{"stage": "pretrain", "steps": trainer.step, "tokens": tokens,
                                            "layout": pc.describe(), **precision}])
        _report(final, tmp if wrote else None)


def finetune_worker(config: dict) -> None:
    """One data-parallel rank of the fine-tune stage: `Finetuner` does the work; rank 0 exports."""
    cfg = from_dict(FinetuneConfig, config["finetune"])
    torch.set_num_threads(cfg.parallel.threads_per_worker)
    _take_sigterm()
    d = setup_dist(cfg.parallel)
    ft = Finetuner(cfg, config["base_model_dir"], config["sources"], config["out_dir"],
                   config.get("val_sources", []), d, log=lambda s: d.rank == 0 and print(s, flush=True))
    stats = _sum_over_ranks(ft.stats)
    final = ft.run()
    final.update(examples=sum(st["kept"] for st in stats.values()), sources=stats, world_size=d.world)
    if final["stopped"]:
        _report_stopped(final, d.rank)
        return
    ft.unshard()
    with tempfile.TemporaryDirectory() as tmp:
        if d.rank == 0:
            ft.export(tmp, config.get("lineage", []))
        _report(final, tmp if d.rank == 0 else None)

