"""Ray Train worker functions (the shell): build model, parallelize, loop with `Trainer`, report a checkpoint."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from actors.common.config import from_dict
from actors.common.metrics import MetricsWriter
from actors.model import Transformer, get_config, load_hf, save_hf
from actors.model.tokenizer import load_tokenizer
from actors.train.config import FinetuneConfig, PretrainConfig
from actors.train.parallel import parallelize, unwrap
from actors.train.sft import load_examples, sft_batches
from actors.train.trainer import Trainer, repeat_epochs


def _context():
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def _val_batches(val_dir: str, batch_size: int, max_batches: int, rank: int, world: int) -> list[dict]:
    """This rank's rows (rank::world) of the small held-out shard, read once and kept, so every evaluation
    scores the same rows. Read with pyarrow, not Ray Data: starting a Ray Data pipeline for ~100 rows cost
    ~20 s of worker start-up on 2 CPU cores."""
    import pyarrow.parquet as pq

    rows = pq.read_table(val_dir, columns=["input_ids"]).column("input_ids").to_pylist()[rank::world]
    rows = rows[: batch_size * max_batches]
    return [{"input_ids": torch.tensor(rows[i: i + batch_size], dtype=torch.long)}
            for i in range(0, len(rows), batch_size)]


def _read_shard(shard) -> torch.Tensor:
    """This worker's whole shard as one int32 tensor (the driver decided it fits: pretrain.cache_max_rows)."""
    return torch.cat([b["input_ids"] for b in shard.iter_torch_batches(batch_size=1024,
                                                                       dtypes={"input_ids": torch.int32})])


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


def pretrain_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    cfg = from_dict(PretrainConfig, config["pretrain"])
    tok_dir, out_dir = config["tokenizer_dir"], Path(config["out_dir"])
    torch.set_num_threads(cfg.parallel.threads_per_worker)
    torch.manual_seed(cfg.seed)  # same init on every rank; DDP also broadcasts rank 0's weights
    rank, world = _context()
    mcfg = get_config(cfg.model, **config.get("model_overrides", {}))
    model = parallelize(Transformer(mcfg), cfg.parallel, prepare=ray.train.torch.prepare_model)
    trainer = Trainer(model, cfg.optim, cfg.max_steps, world)

    train_shard = ray.train.get_dataset_shard("train")
    val_batches = _val_batches(config["val_dir"], cfg.batch_size, cfg.eval_max_batches, rank, world)

    def stream_epoch(epoch: int):
        return train_shard.iter_torch_batches(batch_size=cfg.batch_size, dtypes={"input_ids": torch.long},
                                              drop_last=True, local_shuffle_buffer_size=cfg.shuffle_buffer_rows,
                                              local_shuffle_seed=cfg.seed + 1000 * rank + epoch)

    cached = _read_shard(train_shard) if config.get("cache_shard") else None

    def cached_epoch(epoch: int):
        g = torch.Generator().manual_seed(cfg.seed + 1000 * rank + epoch)
        order = torch.randperm(len(cached), generator=g)
        for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size):
            yield {"input_ids": cached[order[i: i + cfg.batch_size]].long()}

    epoch_iter = cached_epoch if cached is not None else stream_epoch
    if rank == 0:
        print(f"[pretrain] train shard {'in memory, ' + str(len(cached)) + ' rows' if cached is not None else 'streaming'}",
              flush=True)

    writer = MetricsWriter(out_dir) if rank == 0 else None
    t_start, tokens, last = time.perf_counter(), 0.0, {}
    for batch in repeat_epochs(epoch_iter, cfg.max_steps):
        m = trainer.train_step({"input_ids": batch["input_ids"]})
        tokens += m["tokens"]
        if trainer.step % cfg.eval_every == 0 or trainer.step == cfg.max_steps:
            m.update(trainer.evaluate(val_batches))
        if writer and (trainer.step % cfg.log_every == 0 or "val_loss" in m or trainer.step == 1):
            writer.log({**m, "elapsed_s": time.perf_counter() - t_start})
            print(f"[pretrain] step {m['step']}/{cfg.max_steps} loss {m['loss']:.4f} lr {m['lr']:.2e} "
                  f"tok/s {m['tokens_per_s']:.0f}" + (f" val {m['val_loss']:.4f}" if "val_loss" in m else ""),
                  flush=True)
        last = m
    elapsed = time.perf_counter() - t_start
    final = {"step": trainer.step, "loss": last["loss"], "val_loss": last.get("val_loss"),
             "tokens": tokens, "tokens_per_s": tokens / elapsed, "train_s": elapsed,
             "num_params": unwrap(model).num_params(), "world_size": world}
    with tempfile.TemporaryDirectory() as tmp:
        if rank == 0:
            writer.close()
            save_hf(unwrap(model), tmp, tokenizer_dir=tok_dir, step=trainer.step,
                    lineage=config.get("lineage", []) + [{"stage": "pretrain", "steps": trainer.step,
                                                          "tokens": tokens}])
        _report(final, tmp if rank == 0 else None)


def finetune_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    cfg = from_dict(FinetuneConfig, config["finetune"])
    base_dir, out_dir = config["base_model_dir"], Path(config["out_dir"])
    torch.set_num_threads(cfg.parallel.threads_per_worker)
    torch.manual_seed(cfg.seed)
    rank, world = _context()
    tok = load_tokenizer(base_dir)
    base = load_hf(base_dir, dtype=getattr(torch, cfg.base_dtype))
    model = wrap_lora(base, cfg) if cfg.method == "lora" else base
    model = parallelize(model, cfg.parallel, prepare=ray.train.torch.prepare_model)

    # Each worker tokenizes its own 1/world of every source (rank::world), so no data crosses the network.
    examples, stats = load_examples(tok, config["sources"], cfg.max_len, rank, world)
    stats = _sum_over_ranks(stats)
    batches = sft_batches(examples, cfg.batch_size, tok.pad_token_id, cfg.seed + rank)
    trainer = Trainer(model, cfg.optim, cfg.max_steps, world)
    writer = MetricsWriter(out_dir) if rank == 0 else None
    t_start, last = time.perf_counter(), {}
    for _ in range(cfg.max_steps):
        m = trainer.train_step(next(batches))
        if writer and (trainer.step % cfg.log_every == 0 or trainer.step in (1, cfg.max_steps)):
            writer.log({**m, "elapsed_s": time.perf_counter() - t_start})
            print(f"[finetune] step {m['step']}/{cfg.max_steps} loss {m['loss']:.4f} lr {m['lr']:.2e}", flush=True)
        last = m
    final = {"step": trainer.step, "loss": last["loss"], "train_s": time.perf_counter() - t_start,
             "examples": sum(st["kept"] for st in stats.values()), "sources": stats, "world_size": world}
    with tempfile.TemporaryDirectory() as tmp:
        if rank == 0:
            writer.close()
            export_finetuned(unwrap(model), cfg, Path(tmp), base_dir, config.get("lineage", []), trainer.step)
        _report(final, tmp if rank == 0 else None)


def wrap_lora(model: torch.nn.Module, cfg: FinetuneConfig):
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), bias="none")
    return get_peft_model(model, lcfg)


def export_finetuned(model, cfg: FinetuneConfig, out: Path, base_dir: str, lineage: list, step: int) -> None:
    """`out/adapter` (peft adapter) + `out/hf` (adapter merged into the base, a plain HF checkpoint)."""
    lineage = lineage + [{"stage": "finetune", "method": cfg.method, "steps": step, "base": str(base_dir)}]
    if cfg.method == "lora":
        from peft import PeftModel

        model.save_pretrained(str(out / "adapter"))
        # merge into an fp32 copy of the base: a bf16 training base would round the merged weights
        merged = PeftModel.from_pretrained(load_hf(base_dir, dtype=torch.float32), str(out / "adapter"))
        merged = merged.merge_and_unload()
    else:
        merged = model
    save_hf(merged.float(), out / "hf", tokenizer_dir=base_dir, step=step, lineage=lineage)
