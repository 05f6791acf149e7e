"""Ray Train worker functions (the shell): build model, parallelize, loop with `Trainer`, report a checkpoint."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from actors.common.config import from_dict
from cluster.hardware import precision_info, torch_dtype
from actors.common.metrics import MetricsWriter
from actors.model import ModelConfig, Transformer, save_hf
from actors.train.config import FinetuneConfig, ParallelConfig, PretrainConfig
from actors.train.data import document_mask, packed_batches, read_rows, val_batches
from actors.train.parallel import (Dist, build_mesh, build_model_parts, build_schedule, full_state_dict, init_value,
                                   parallelize, tied_head)
from actors.train.finetune import Finetuner
from actors.train.trainer import CausalLMLoss, Trainer, device_peak_flops, run_loop


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


def pretrain_worker(config: dict) -> None:
    cfg = from_dict(PretrainConfig, config["pretrain"])
    pc = cfg.parallel
    tok_dir, out_dir = config["tokenizer_dir"], Path(config["out_dir"])
    torch.set_num_threads(pc.threads_per_worker)
    d = setup_dist(pc)
    mcfg = ModelConfig(**config["model_config"])
    dtype = torch_dtype(cfg.dtype, d.device, field="pretrain.dtype")
    precision = precision_info(dtype, d.device)
    stages = build_model_parts(mcfg, pc, d, dtype, initial_values(mcfg, cfg.seed, config.get("init_dir")))
    parts = [m for _, m in stages]
    loss_fn = CausalLMLoss()
    tied, tied_copy = tied_head(mcfg, stages, pc.num_stages) if pc.pp > 1 else (None, False)
    fsdp_mixed = pc.dp_shard > 1  # FSDP's policy casts weights to the compute dtype; elsewhere autocast does
    trainer = Trainer(parts, loss_fn, cfg.optim, cfg.max_steps, d,
                      autocast_dtype=dtype if dtype != torch.float32 and not fsdp_mixed else None,
                      tied_weight=tied, tied_copy=tied_copy, flops_per_token=mcfg.flops_per_token(cfg.seq_len),
                      peak_flops=device_peak_flops(d.device))
    if pc.pp > 1:
        trainer.attach_schedule(build_schedule(stages, pc, d, pc.pp_microbatches, trainer.pipeline_loss))

    rows = read_rows(config["train_dir"])
    batches = packed_batches(rows, cfg.batch_size, cfg.grad_accum_steps, d.dp_rank, d.dp_size, cfg.seed)
    val = val_batches(read_rows(config["val_dir"]), cfg.batch_size, cfg.eval_max_batches, d.dp_rank, d.dp_size)
    if cfg.document_mask:
        from tokenizers import Tokenizer

        from actors.model.tokenizer import document_end_id

        eos = document_end_id(Tokenizer.from_file(str(Path(tok_dir) / "tokenizer.json")))
        batches = ([{**b, **document_mask(b["input_ids"], eos)} for b in step] for step in batches)
        val = [{**b, **document_mask(b["input_ids"], eos)} for b in val]
    if d.rank == 0:
        print(f"[pretrain] {pc.describe()} on {d.world} workers; {len(rows)} packed rows of {rows.shape[1]} tokens; "
              f"{sum(p.numel() for m in parts for p in m.parameters())} parameters on rank 0; {precision['dtype']} "
              f"(cpu {precision['cpu_capability']})", flush=True)

    writer = MetricsWriter(out_dir) if d.rank == 0 else None
    t_start, tokens = time.perf_counter(), 0.0

    def evaluate(tr, m):
        if tr.step % cfg.eval_every == 0 or tr.step == cfg.max_steps:
            m.update(tr.evaluate(val))

    def log(tr, m):
        nonlocal tokens
        tokens += m["tokens"]
        m["elapsed_s"] = time.perf_counter() - t_start
        if writer and (tr.step % cfg.log_every == 0 or "val_loss" in m or tr.step == 1):
            writer.log(m)
            print(f"[pretrain] step {m['step']}/{cfg.max_steps} loss {m['loss']:.4f} lr {m['lr']:.2e} "
                  f"gnorm {m['grad_norm']:.3f} tok/s {m['tokens_per_s']:.0f}"
                  + (f" val {m['val_loss']:.4f}" if "val_loss" in m else ""), flush=True)

    if config.get("init_dir"):  # continued pretraining: where the base starts on the held-out rows
        start = trainer.evaluate(val)
        if writer:
            writer.log({"step": 0, **start, "elapsed_s": 0.0})
            print(f"[pretrain] step 0 (base) val {start['val_loss']:.4f}", flush=True)
    last = run_loop(trainer, batches, [evaluate, log])
    elapsed = time.perf_counter() - t_start
    sd = full_state_dict(parts, d)
    final = {"step": trainer.step, "loss": last["loss"], "val_loss": last.get("val_loss"),
             "tokens": tokens, "tokens_per_s": tokens / elapsed, "train_s": elapsed,
             "num_params": mcfg.num_params(), "world_size": d.world, "layout": pc.describe(), **precision}
    with tempfile.TemporaryDirectory() as tmp:
        if sd is not None:
            writer.close()
            with torch.device("meta"):
                model = Transformer(mcfg)
            model.load_state_dict(sd, strict=False, assign=True)
            model.tie_weights()
            save_hf(model, tmp, tokenizer_dir=tok_dir, step=trainer.step,
                    lineage=config.get("lineage", []) + [{"stage": "pretrain", "steps": trainer.step,
                                                          "tokens": tokens, "layout": pc.describe(),
                                                          **precision}])
        _report(final, tmp if sd is not None else None)


def finetune_worker(config: dict) -> None:
    """One data-parallel rank of the fine-tune stage: `Finetuner` does the work; rank 0 exports."""
    cfg = from_dict(FinetuneConfig, config["finetune"])
    torch.set_num_threads(cfg.parallel.threads_per_worker)
    d = setup_dist(cfg.parallel)
    ft = Finetuner(cfg, config["base_model_dir"], config["sources"], config["out_dir"],
                   config.get("val_sources", []), d, log=lambda s: d.rank == 0 and print(s, flush=True))
    stats = _sum_over_ranks(ft.stats)
    final = ft.run()
    final.update(examples=sum(st["kept"] for st in stats.values()), sources=stats, world_size=d.world)
    ft.unshard()
    with tempfile.TemporaryDirectory() as tmp:
        if d.rank == 0:
            ft.export(tmp, config.get("lineage", []))
        _report(final, tmp if d.rank == 0 else None)

