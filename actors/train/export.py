"""Fine-tune outputs (Ray-free): the peft adapter, the adapter merged into the base shard by shard, a reward
model as LlamaForSequenceClassification, full fine-tunes as plain HF folders."""
from __future__ import annotations

from pathlib import Path

import torch

from actors.model.hf import ShardWriter, copy_tokenizer, read_config, tensor_names, tensor_reader, write_hf_meta


def merge_lora_export(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path, lineage: list,
                      step: int, shard_bytes: int = 128 << 20, tok=None) -> Path:
    """W + (alpha / r) B A (DoRA: rescaled row-wise) for every adapted weight, read from the base and written to
    the output one tensor at a time (fp32), in shards of `shard_bytes`: the peak is one shard plus the largest
    tensor, not the model (the whole-model merge of peft holds the base, the adapter wrapper and the merged copy)."""
    from actors.model.lora import lora_deltas, merged_weight

    adir, out = Path(adapter_dir), Path(out_dir)
    scale, pairs = lora_deltas(adir)
    cfg = read_config(base_dir)
    get = tensor_reader(base_dir)
    w = ShardWriter(out, shard_bytes)
    merged = 0
    for name in tensor_names(base_dir):
        t = get(name).float()
        if name in pairs:
            t = merged_weight(t, pairs[name], scale)
            merged += 1
        w.add(name, t)
        del t
    w.close()
    if merged != len(pairs):
        raise ValueError(f"{adir}: {len(pairs) - merged} adapted weights are not in the base {base_dir}")
    write_hf_meta(cfg, out, torch.float32, lineage, step)
    _tokenizer(base_dir, out, tok)
    return out


def _tokenizer(base_dir, out: Path, tok) -> None:
    """The base's tokenizer files; with `tok` (its chat template set by name) that tokenizer instead."""
    copy_tokenizer(base_dir, out)
    if tok is not None:
        tok.save_pretrained(str(out))


def export_reward_model(model, out_dir: str | Path, base_dir: str | Path, lineage: list, step: int, tok=None) -> Path:
    """A (merged) reward model as HF LlamaForSequenceClassification (num_labels 1; `score` = our scalar head)."""
    out = Path(out_dir)
    w = ShardWriter(out)
    for k, v in model.state_dict().items():
        if "rotary_emb" in k:
            continue
        w.add("score.weight" if k == "lm_head.weight" else k, v.detach().float().cpu())
    w.close()
    cfg = model.config
    pad = tok.pad_token_id if tok is not None and tok.pad_token_id is not None else cfg.eos_token_id
    write_hf_meta(cfg, out, torch.float32, lineage, step, extra={"head": "reward"}, hf_overrides={
        "architectures": ["LlamaForSequenceClassification"], "num_labels": 1, "pad_token_id": pad,
        "tie_word_embeddings": False, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}})
    _tokenizer(base_dir, out, tok)
    return out
