"""The fine-tune sample hook's generation (Ray-free): the model being trained, greedy, through the serving engine
(`actors.engine.LLMEngine`, the one decode path), never through the training model itself.

`plain_copy` builds a plain `Transformer` with the current weights: FSDP shards gathered (a collective, on every
rank), LoRA / DoRA adapters merged as the export merges them (`actors.model.lora.merged_weight`), QLoRA's int4
projections dequantised, wrapper prefixes dropped; then rank 0 runs a small engine on it. The trained model is only
read: its parameters, modules and train mode stay as they are.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from actors.model.config import ModelConfig
from actors.model.transformer import Transformer
from actors.train.parallel import Dist, canonical_name, is_sharded

_PEFT_PREFIX = "base_model.model."


def _full_state(model: nn.Module, d: Dist) -> dict[str, torch.Tensor]:
    """Whole tensors by canonical name. Under FSDP a collective (every rank calls it) that leaves them on rank 0's
    CPU only (the others get {}); otherwise the live tensors themselves (detached, not copied)."""
    if any(hasattr(p, "ds_tensor") for p in model.parameters()):  # DeepSpeed ZeRO-3 partitions
        from actors.train.zero import full_state

        sd = full_state(model)
        return sd if d.rank == 0 else {}
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        sd = model.state_dict()
    return {canonical_name(k): v for k, v in sd.items()}


def _lora_scale(model: nn.Module) -> float | None:
    cfg = getattr(model, "peft_config", {}).get("default")
    if cfg is None:
        return None
    return cfg.lora_alpha / (cfg.r ** 0.5 if cfg.use_rslora else cfg.r)


def _dequantize(parts: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    from actors.model.quant import Int4Linear

    qweight, scales, mins = parts["qweight"], parts["scales"], parts["mins"]
    in_features = qweight.shape[1] * 2
    lin = Int4Linear(in_features, qweight.shape[0], in_features // scales.shape[1], dtype)
    lin.qweight, lin.scales, lin.mins = qweight, scales, mins
    return lin.weight


def plain_state(state: dict[str, torch.Tensor], lora_scale: float | None,
                dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A model's state (plain, peft-wrapped, with int4 base layers) as the plain model's HF-named weights."""
    from actors.model.lora import merged_weight

    out: dict[str, torch.Tensor] = {}
    adapters: dict[str, dict[str, torch.Tensor]] = {}
    packed: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        k = k.removeprefix(_PEFT_PREFIX).replace(".base_layer.", ".")
        if ".lora_" in k:  # <module>.lora_A.default.weight, lora_B..., lora_magnitude_vector.default.weight (DoRA)
            mod, part = k.rsplit(".lora_", 1)
            key = "magnitude" if part.startswith("magnitude_vector") else part.split(".")[0]
            adapters.setdefault(mod + ".weight", {})[key] = v.float()
        elif k.endswith((".qweight", ".scales", ".mins")):  # an Int4Linear (QLoRA's base)
            mod, part = k.rsplit(".", 1)
            packed.setdefault(mod + ".weight", {})[part] = v
        else:
            out[k] = v
    for name, parts in packed.items():
        out[name] = _dequantize(parts, dtype)
    if adapters and lora_scale is None:
        raise ValueError("the model has LoRA weights but no peft config to read their scale from")
    for name, entry in adapters.items():
        out[name] = merged_weight(out[name], entry, lora_scale)
    return out


@torch.no_grad()
def plain_copy(model: nn.Module, d: Dist, dtype: torch.dtype) -> Transformer | None:
    """A plain `Transformer` with `model`'s current weights in `dtype` on `d.device`, on rank 0; None on the other
    ranks. Under FSDP every rank must call it (the shards are gathered)."""
    state = _full_state(model, d)
    if d.rank != 0:
        return None
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg: ModelConfig = inner.config
    weights = plain_state(state, _lora_scale(model), dtype)
    with torch.device("meta"):
        plain = Transformer(cfg)
    names = {k for k in plain.state_dict() if "rotary_emb" not in k}
    if cfg.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
        names.discard("lm_head.weight")
    missing, unexpected = sorted(names - set(weights)), sorted(set(weights) - names)
    if missing or unexpected:
        raise ValueError(f"sample: the trained model's weights do not map onto a plain Transformer (missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]})")
    plain.load_state_dict({k: v.to(device=d.device, dtype=dtype) for k, v in weights.items()}, strict=False,
                          assign=True)
    plain.tie_weights()
    rope = plain.model.rotary_emb
    rope.inv_freq = rope._inv_freq().to(d.device)  # a non-persistent buffer: not in any state, still on meta
    return plain.eval()


def greedy_sample(model: nn.Module, tok, prompt_ids: list[int], d: Dist, dtype: torch.dtype,
                  max_new_tokens: int = 48) -> str:
    """The greedy continuation of `prompt_ids` (stop token and special tokens left out) by `model`'s current
    weights, through `actors.engine.LLMEngine` on rank 0 ("" on the other ranks, which under FSDP must still call
    it: the weights are gathered)."""
    from actors.engine import EngineConfig, LLMEngine, SamplingParams
    from actors.engine.runner import kv_bytes_per_block

    plain = plain_copy(model, d, dtype)
    if plain is None:
        return ""
    ctx = int(plain.config.max_position_embeddings)
    budget = max(1, min(max_new_tokens, ctx - 1))
    prompt = list(prompt_ids)[-(ctx - budget):]  # left-truncated so the budget fits the context
    max_len = len(prompt) + budget
    block = 16
    kv = kv_bytes_per_block(plain, block, dtype) * (-(-max_len // block) + 2)  # one sequence + the padding block
    engine = LLMEngine(plain, tok, EngineConfig(max_num_seqs=1, block_size=block, kv_cache_memory=kv,
                                                max_model_len=max_len, enable_prefix_caching=False))
    return engine.generate(prompt, SamplingParams(temperature=0.0, max_tokens=budget)).text
