"""The fine-tune stage's logic (Ray-free): one `Finetuner` per worker builds the model for the method (full,
LoRA, QLoRA; a scalar head for a reward model), the examples for the objective (SFT, DPO, KTO, RM), and runs the
one training loop (`Trainer` + `run_loop`) with the objective's `loss_fn`, evaluation / sample / checkpoint hooks
and resume. The Ray Train worker (`workers.finetune_worker`) is a thin shell around it.
"""
from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from actors.common.metrics import MetricsWriter, truncate_metrics
from actors.model import load_hf
from actors.model.chat import encode_chat, use_template
from actors.model.tokenizer import load_tokenizer
from actors.train.config import FinetuneConfig
from actors.train.losses import (CausalLMLoss, DPOLoss, KTOLoss, PairwiseRewardLoss, reference_logps,
                                 reward_head)
from actors.train.checkpoint import fingerprint
from actors.train.parallel import Dist, gather_state, is_sharded, match_forwards, parallelize
from actors.train.sft import collate_kind, load_examples, sft_batches
from actors.train.trainer import Trainer, run_loop
from cluster.hardware import precision_info, torch_dtype

LINEAR_NAMES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# config keys that do not change what is trained: a checkpoint resumes across changes to them
_RESUME_FREE = ("checkpoint", "resilience", "log_every", "eval_every", "sample_every", "sample_prompt", "parallel",
                "max_steps")


def make_loss(cfg: FinetuneConfig):
    if cfg.objective == "dpo":
        return DPOLoss(cfg.dpo.beta, cfg.dpo.label_smoothing)
    if cfg.objective == "kto":
        return KTOLoss(cfg.kto.beta, cfg.kto.desirable_weight, cfg.kto.undesirable_weight)
    if cfg.objective == "rm":
        return PairwiseRewardLoss()
    return CausalLMLoss(sparse=True)


def wrap_lora(model: nn.Module, cfg: FinetuneConfig):
    """peft LoRA on the target projections (any Int4Linear of QLoRA included); a reward model's new score head
    trains in full (`modules_to_save`)."""
    from peft import LoraConfig, get_peft_model

    from actors.model.quant import peft_custom_modules

    layers = sorted(cfg.lora.layers_to_transform)
    n_layers = model.config.num_hidden_layers
    if layers and layers[-1] >= n_layers:
        raise ValueError(f"finetune.lora.layers_to_transform: {layers[-1]} is not a layer of the base, which has "
                         f"{n_layers} (0..{n_layers - 1}); pick indices below {n_layers}")
    lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), bias="none", use_dora=cfg.lora.use_dora,
                      use_rslora=cfg.lora.use_rslora, layers_to_transform=layers or None,
                      layers_pattern="layers" if layers else None,
                      modules_to_save=["lm_head"] if cfg.objective == "rm" else None)
    if cfg.method == "qlora":
        lcfg._register_custom_module(peft_custom_modules())
    with warnings.catch_warnings():  # peft calls Int4Linear an "unsupported layer type": it wraps it as a linear
        warnings.simplefilter("ignore", UserWarning)
        return get_peft_model(model, lcfg)


def build_model(cfg: FinetuneConfig, base_dir: str | Path, device=None) -> tuple[nn.Module, torch.dtype | None]:
    """(model to train, autocast dtype). LoRA: the base frozen in `base_dtype`, adapters fp32. QLoRA: the
    projections packed to int4 (computing in `base_dtype`), the rest in `base_dtype`. Full: fp32 weights.
    With base_dtype bfloat16 (`auto` on bf16 hardware) every method runs its forward under bf16 autocast."""
    dtype = torch_dtype(cfg.base_dtype, device, field="finetune.base_dtype")
    autocast = dtype if dtype != torch.float32 else None
    if cfg.method == "full":
        model = load_hf(base_dir, dtype=torch.float32)
    else:
        model = load_hf(base_dir, dtype=dtype)
        if cfg.method == "qlora":
            from actors.model.quant import quantize_linears

            quantize_linears(model, LINEAR_NAMES, cfg.quant_group, dtype)
    if cfg.objective == "rm":
        reward_head(model)
    model.train()
    if cfg.method in ("lora", "qlora"):
        model = wrap_lora(model, cfg)
        if autocast is not None:
            # peft casts each adapter's input to the adapters' fp32 and keeps that copy for backward: 3 copies of
            # the same q/k/v input, 7 per layer. Under bf16 autocast the adapters read the bf16 input the base
            # layer already saved (SmolLM2, 4 x 512 tokens: 3.6 -> 1.5 GB saved activations; 333 -> 418 tok/s);
            # their weights and optimizer state stay fp32
            for m in model.modules():
                if hasattr(m, "lora_A"):
                    m.cast_input_dtype_enabled = False
    return model, autocast


def config_fingerprint(cfg: FinetuneConfig, base_dir, sources) -> str:
    return fingerprint(dataclasses.asdict(cfg), _RESUME_FREE, base=str(base_dir), sources=sources)


class Finetuner:
    """One worker's fine-tune: `run()` trains to `cfg.max_steps` (resuming per `cfg.checkpoint.resume` from
    `out_dir/checkpoints`), `export(dir)` writes the outputs."""

    def __init__(self, cfg: FinetuneConfig, base_dir: str | Path, sources: list[tuple[str, int]], out_dir: str | Path,
                 val_sources: list[tuple[str, int]] = (), d: Dist | None = None, log: Callable = print):
        self.cfg, self.base_dir, self.out = cfg, str(base_dir), Path(out_dir)
        self.d, self.log = d or Dist(), log
        self.fingerprint = config_fingerprint(cfg, base_dir, sources)
        self.tok = use_template(load_tokenizer(base_dir), cfg.template)
        torch.manual_seed(cfg.seed)  # the same adapter / head init on every rank, and dropout from a known state
        self.model, autocast = build_model(cfg, base_dir, self.d.device)
        self.precision = precision_info(autocast or torch.float32, self.d.device)
        # activation checkpointing, compile, and FSDP2 over dp_shard (HSDP with dp_replicate) when asked; pure
        # replication keeps whole copies and the trainer all-reduces the (LoRA: tiny) gradients
        self.model = parallelize(self.model, cfg.parallel, self.d, None)
        self.sharded = is_sharded(self.model)
        opts = dict(train_on_prompt=cfg.train_on_prompt, mask_history=cfg.mask_history)
        # each rank tokenizes its own 1/dp of every source (rows rank::dp): no data crosses the network
        self.examples, self.stats = load_examples(self.tok, sources, cfg.max_len, self.d.dp_rank, self.d.dp_size,
                                                  **opts)
        self.val_examples, self.val_stats = load_examples(self.tok, list(val_sources), cfg.max_len, self.d.dp_rank,
                                                          self.d.dp_size, **opts)
        self.loss_fn = make_loss(cfg)
        self.trainer = Trainer(self.model, self.loss_fn, cfg.optim, cfg.max_steps, self.d, autocast_dtype=autocast,
                               zero=cfg.parallel, micro_batch=cfg.batch_size)
        if cfg.objective in ("dpo", "kto"):  # the frozen reference's log-probs, once, before any update
            t0 = time.perf_counter()
            # batched as the validation pass batches (sorted by length, batch_size each): at step 0 the policy's
            # held-out log-ratios are then exactly 0, not the bf16 noise of different padding
            n = sum(reference_logps(self.model, exs, self.tok.pad_token_id, cfg.batch_size, autocast, self.log)
                    for exs in (self.examples, self.val_examples))
            with self.trainer._autocast():
                match_forwards(self.model, self.d, n)
            self.log(f"[finetune] reference log-probs of {len(self.examples) + len(self.val_examples)} "
                     f"examples in {time.perf_counter() - t0:.1f}s")
        self.batches = sft_batches(self.examples, cfg.batch_size, self.tok.pad_token_id, cfg.seed + self.d.dp_rank,
                                   cfg.group_by_length, cfg.max_len if cfg.packing else 0, cfg.grad_accum_steps)
        ordered = sorted(self.val_examples, key=lambda e: e["length"])
        self.val = [collate_kind(ordered[i:i + cfg.batch_size], self.tok.pad_token_id)
                    for i in range(0, len(ordered), cfg.batch_size)]
        self.writer = MetricsWriter(self.out) if self.d.rank == 0 else None
        self.samples: list[dict] = []

    # ------------------------------------------------------------------------------------------------ hooks

    def evaluate(self) -> dict:
        return self.trainer.evaluate(self.val) if self.val or self.d.dp_size > 1 else {}

    def sample(self) -> str:
        """A greedy reply to `sample_prompt` by the current weights, through the serving engine on a plain copy
        (actors/train/sample.py): the model being trained is only read. Under FSDP every rank calls it (the
        shards are gathered); rank 0 generates, the others get ""."""
        from actors.train.sample import greedy_sample

        prompt = encode_chat(self.tok, [{"role": "user", "content": self.cfg.sample_prompt}])
        return greedy_sample(self.model, self.tok, prompt, self.d, self.trainer.autocast_dtype or torch.float32)

    def position(self, trainer: Trainer) -> dict:
        """The data position a checkpoint records: global batches taken (each rank's own shuffled stream)."""
        return {"consumed": trainer.consumed, "seed": self.cfg.seed}

    def run(self, extra_hooks=()) -> dict:
        """Train to max_steps, resuming per `checkpoint.resume` (auto: this stage dir's latest checkpoint of the
        same config), checkpointing every `checkpoint.every` steps; a stop file or SIGTERM checkpoints and
        stops (the result then has `stopped`)."""
        from actors.train.resilience import Guardian

        cfg, t_start = self.cfg, time.perf_counter()
        self.guardian = g = Guardian(self.out, cfg.checkpoint, cfg.resilience, self.d, self.fingerprint,
                                     {"stage": "finetune", "layout": cfg.parallel.describe(),
                                      "method": cfg.method, "objective": cfg.objective}, self.log)
        meta = g.start(self.trainer)
        if meta is not None:
            for _ in range(self.trainer.consumed):  # the batches an uninterrupted run would see next
                next(self.batches)
            if self.writer:  # metrics after the checkpoint are logged again by this run
                truncate_metrics(self.out / "metrics.jsonl", self.trainer.step)
        elif self.val:  # where the base starts (DPO's preference accuracy of the base, the base's val loss)
            m = self.evaluate()
            self._write({"step": 0, **m, "elapsed_s": 0.0})

        def evaluate(tr, m):
            every = cfg.eval_every or cfg.max_steps
            if self.val and (tr.step % every == 0 or tr.step == cfg.max_steps):
                m.update(self.evaluate())

        def sample(tr, m):
            if cfg.sample_every and cfg.objective != "rm" and tr.step % cfg.sample_every == 0:
                text = self.sample()
                m["sample"] = text
                self.samples.append({"step": tr.step, "prompt": cfg.sample_prompt, "output": text})

        def log(tr, m):
            if tr.step % cfg.log_every == 0 or tr.step in (1, cfg.max_steps) or {"val_loss", "stall", "skipped"} & set(m):
                self._write({**m, "elapsed_s": time.perf_counter() - t_start})

        watch, save, stop = g.hooks(self.position)
        last = run_loop(self.trainer, self.batches, [watch, evaluate, sample, log, *extra_hooks, save, stop],
                        on_rollback=g.rollback)
        g.close()
        return {"step": self.trainer.step, "loss": last.get("loss"), "train_s": time.perf_counter() - t_start,
                "stopped": bool(last.get("stopped")),
                **{k: v for k, v in last.items() if k.startswith("val_")}, **self.precision}

    def _write(self, m: dict) -> None:
        if not self.writer:
            return
        self.writer.log({k: v for k, v in m.items() if k != "sample"})
        extra = " ".join(f"{k} {v:.4f}" for k, v in m.items() if k.startswith("val_") and isinstance(v, float))
        self.log(f"[finetune] step {m['step']}/{self.cfg.max_steps}"
                 + (f" loss {m['loss']:.4f} lr {m['lr']:.2e}" if "loss" in m else "") + (f" {extra}" if extra else "")
                 + (f" sample {m['sample']!r}" if "sample" in m else ""))

    # ------------------------------------------------------------------------------------------------ outputs

    def unshard(self) -> None:
        """Whole weights on rank 0 before `export`: under FSDP every rank's shards are gathered (a collective,
        called on every rank) into a plain copy of the model on rank 0."""
        engine = self.trainer.engine
        if engine is not None and engine.zero_optimization_stage() == 3:  # DeepSpeed ZeRO-3's partitions
            from actors.train.zero import full_state

            state = full_state(engine.module)
            if self.d.rank == 0:
                model, _ = build_model(self.cfg, self.base_dir, self.d.device)
                model.load_state_dict(state, strict=False)
                self.model = model
            return
        if not self.sharded:
            return
        state = gather_state(self.model)
        if self.d.rank == 0:
            model, _ = build_model(self.cfg, self.base_dir, self.d.device)
            model.load_state_dict(state)
            self.model, self.sharded = model, False

    def export(self, out: str | Path, lineage: list) -> dict:
        """`out/adapter` (LoRA/QLoRA: a peft adapter folder) and `out/hf` (a plain HF checkpoint: the adapter merged
        into an fp32 copy of the base shard by shard; a reward model as LlamaForSequenceClassification)."""
        from actors.model.hf import save_hf
        from actors.train.export import export_reward_model, merge_lora_export

        out = Path(out)
        cfg, step = self.cfg, self.trainer.step
        lineage = lineage + [{"stage": "finetune", "objective": cfg.objective, "method": cfg.method, "steps": step,
                              "base": self.base_dir, "template": cfg.template or None, **self.precision}]
        if self.writer:
            self.writer.close()
        if self.samples:
            (self.out / "samples.jsonl").write_text("".join(json.dumps(s, ensure_ascii=False) + "\n"
                                                            for s in self.samples))
        tok = self.tok if cfg.template else None
        if cfg.objective == "rm" and cfg.method == "qlora":  # its base is 4-bit: only the adapter (+ head)
            save_adapter(self.model, out / "adapter")
            return {"adapter": str(out / "adapter")}
        if cfg.objective == "rm":
            model = self.model.merge_and_unload() if cfg.method != "full" else self.model
            export_reward_model(model, out / "hf", self.base_dir, lineage, step, self.tok)
            return {"hf": str(out / "hf")}
        if cfg.method == "full":
            save_hf(self.model, out / "hf", tokenizer_dir=self.base_dir, step=step, lineage=lineage)
            if tok is not None:
                tok.save_pretrained(str(out / "hf"))
            return {"hf": str(out / "hf")}
        save_adapter(self.model, out / "adapter")
        acfg = out / "adapter" / "adapter_config.json"  # point peft at the base folder, not our class name
        acfg.write_text(json.dumps({**json.loads(acfg.read_text()), "base_model_name_or_path": self.base_dir},
                                   indent=2))
        if tok is not None:
            tok.save_pretrained(str(out / "adapter"))
        merge_lora_export(self.base_dir, out / "adapter", out / "hf", lineage, step, tok=tok)
        return {"hf": str(out / "hf"), "adapter": str(out / "adapter")}


def save_adapter(model, out: Path) -> None:
    """peft's adapter folder, with parameter names as in the plain model. Activation checkpointing wraps each layer
    in `_checkpoint_wrapped_module`: the wrapper drops that part from `state_dict()` keys but not from module names,
    which peft matches them against (it saved no tensor at all), so peft gets the names as the modules have them
    and the file gets them without the wrapper (as a Hugging Face base names them)."""
    from safetensors.torch import load_file, save_file

    sd = {k: v.detach() for k, v in [*model.named_parameters(), *model.named_buffers()]}
    model.save_pretrained(str(out), state_dict=sd)
    f = out / "adapter_model.safetensors"
    saved = load_file(str(f))
    if not any(".lora_" in k for k in saved):
        raise RuntimeError(f"{out}: peft wrote no adapter weights (parameter names it could not match)")
    if any("_checkpoint_wrapped_module." in k for k in saved):
        save_file({k.replace("_checkpoint_wrapped_module.", ""): v for k, v in saved.items()}, str(f),
                  metadata={"format": "pt"})
