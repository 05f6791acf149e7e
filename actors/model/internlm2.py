"""InternLM2 / InternLM2.5 checkpoints (`InternLM2ForCausalLM`, the trust_remote_code format) <-> HF Llama names.

One place for the format. An InternLM2 folder has config.json (`architectures: ["InternLM2ForCausalLM"]`,
`model_type: internlm2`), weights under InternLM2's names and a SentencePiece `tokenizer.model` (no
tokenizer.json). The architecture is Llama's (RMSNorm, RoPE with rotate_half, GQA, SwiGLU); only the names differ
and q/k/v are one packed `attention.wqkv` whose rows are grouped per key/value head:
    (num_kv_heads, q_per_kv + 2, head_dim, hidden) = [q_per_kv query heads, 1 key head, 1 value head] per group
(modeling_internlm2.py: `rearrange(qkv, "b q (h gs d) -> b q h gs d", gs=2 + num_key_value_groups)`), so query
head h * q_per_kv + j belongs to kv head h, as in Llama's grouped-query attention: splitting needs no permutation.

- `load_hf` reads an InternLM2 folder directly (names converted on the fly);
- `registry.resolve_model` (every place a model spec is accepted) converts it once into an HF Llama folder under
  the model cache (`import_internlm2`: config.json as LlamaForCausalLM, safetensors, tokenizer.json from
  tokenizer.model, tokenizer_config.json with the chat template, fullchain.json with the provenance), reused
  while the source's files are unchanged;
- `save_internlm2` writes our model in InternLM2's layout and names.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch

from actors.model.config import ModelConfig
from actors.model.registry import ModelSpecError, sha256_file

ARCHITECTURE = "InternLM2ForCausalLM"
MODEL_TYPE = "internlm2"
IMPORT_FORMAT = 1  # bump when the conversion's output changes, so cached conversions are rebuilt
TEMPLATE = Path(__file__).parent / "templates" / "internlm2.jinja"
# InternLM2's tokenizer_config.json names these (ids 92538-92543 of its 92544-piece tokenizer.model, where
# the SentencePiece pieces are placeholders such as [UNUSED_TOKEN_145]).
CHAT_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|action_start|>", "<|action_end|>", "<|interpreter|>",
                       "<|plugin|>")

_TOP = {"model.tok_embeddings.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
        "model.norm.weight": "model.norm.weight"}
_LAYER = {"attention_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
          "attention.wo.weight": "self_attn.o_proj.weight", "feed_forward.w1.weight": "mlp.gate_proj.weight",
          "feed_forward.w3.weight": "mlp.up_proj.weight", "feed_forward.w2.weight": "mlp.down_proj.weight"}
_TOP_BACK = {v: k for k, v in _TOP.items()}
_LAYER_BACK = {v: k for k, v in _LAYER.items()}
_QKV = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")


class InternLM2FormatError(ModelSpecError):
    """An InternLM2 folder we cannot convert; the message names the file or field and the fix."""


# ---------------------------------------------------------------------------------------------------- config


def is_internlm2_config(d: dict) -> bool:
    return d.get("model_type") == MODEL_TYPE or ARCHITECTURE in (d.get("architectures") or [])


def is_internlm2_folder(path: str | Path) -> bool:
    f = Path(path) / "config.json"
    if not f.is_file():
        return False
    try:
        return is_internlm2_config(json.loads(f.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def config_from_internlm2(d: dict, name: str = "internlm2", where: str = "config.json") -> ModelConfig:
    """Our ModelConfig from an InternLM2 config.json (InternLM2Config's keys and defaults)."""
    from actors.model.hf import rope_scaling_from_hf

    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if k not in d]
    if missing:
        raise InternLM2FormatError(f"{where}: InternLM2 config lacks {missing}; copy config.json from the "
                                   "original checkpoint")
    if d.get("bias"):
        raise InternLM2FormatError(f"{where}: bias=true (biases on wqkv/wo) is not supported: our model, like "
                                   "Llama, has no attention biases; InternLM2/2.5 releases set bias=false")
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise InternLM2FormatError(f"{where}: hidden_act={act!r} is not supported; only silu (SwiGLU)")
    try:
        rtype, factor = rope_scaling_from_hf(d, where)
    except ValueError as e:
        raise InternLM2FormatError(str(e)) from None
    nh, hidden = d["num_attention_heads"], d["hidden_size"]
    if hidden % nh:
        raise InternLM2FormatError(f"{where}: hidden_size={hidden} is not divisible by num_attention_heads={nh}")
    nkv = d.get("num_key_value_heads") or nh
    if nh % nkv:
        raise InternLM2FormatError(f"{where}: num_key_value_heads={nkv} does not divide num_attention_heads={nh}")
    eos = d.get("eos_token_id", 2)
    if isinstance(eos, list):
        eos = eos[0]
    pad = d.get("pad_token_id", 0)
    return ModelConfig(
        name=name, vocab_size=d["vocab_size"], hidden_size=hidden, intermediate_size=d["intermediate_size"],
        num_hidden_layers=d["num_hidden_layers"], num_attention_heads=nh, num_key_value_heads=nkv,
        head_dim=hidden // nh, max_position_embeddings=d.get("max_position_embeddings", 2048),
        rope_theta=float(d.get("rope_theta") or 10000.0), rope_type=rtype, rope_factor=factor,
        rms_norm_eps=d.get("rms_norm_eps", 1e-6), tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        initializer_range=d.get("initializer_range", 0.02), bos_token_id=d.get("bos_token_id", 1),
        eos_token_id=eos if eos is not None else 2, pad_token_id=pad if pad is not None else 0,
    )


def internlm2_config_dict(cfg: ModelConfig, dtype: str = "float32") -> dict:
    """config.json as InternLM2 writes it (InternLM2Config's keys)."""
    if cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size:
        raise InternLM2FormatError(f"InternLM2 needs head_dim * num_attention_heads == hidden_size; got "
                                   f"{cfg.head_dim} * {cfg.num_attention_heads} != {cfg.hidden_size}")
    return {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE, "attn_implementation": "eager", "bias": False,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
        "hidden_act": "silu", "hidden_size": cfg.hidden_size, "initializer_range": cfg.initializer_range,
        "intermediate_size": cfg.intermediate_size, "max_position_embeddings": cfg.max_position_embeddings,
        "num_attention_heads": cfg.num_attention_heads, "num_hidden_layers": cfg.num_hidden_layers,
        "num_key_value_heads": cfg.num_key_value_heads, "pretraining_tp": 1, "rms_norm_eps": cfg.rms_norm_eps,
        "rope_scaling": ({"type": cfg.rope_type, "factor": cfg.rope_factor} if cfg.rope_type != "default" else None),
        "rope_theta": cfg.rope_theta, "tie_word_embeddings": cfg.tie_word_embeddings, "torch_dtype": dtype,
        "use_cache": True, "vocab_size": cfg.vocab_size,
    }


# --------------------------------------------------------------------------------------------------- weights


def split_wqkv(w: torch.Tensor, cfg: ModelConfig, name: str = "attention.wqkv.weight") -> tuple[torch.Tensor, ...]:
    """InternLM2's packed (nkv * (q_per_kv + 2) * hd, hidden) wqkv as Llama's q_proj, k_proj, v_proj."""
    nkv, hd = cfg.num_key_value_heads, cfg.head_dim
    g = cfg.num_attention_heads // nkv
    if w.dim() != 2 or w.shape[0] != nkv * (g + 2) * hd:
        raise InternLM2FormatError(f"{name}: shape {tuple(w.shape)}, expected ({nkv * (g + 2) * hd}, "
                                   f"{cfg.hidden_size}) = num_key_value_heads * (heads per group + 2) * head_dim "
                                   "rows; config.json's head counts do not match the weights")
    groups = w.reshape(nkv, g + 2, hd, w.shape[1])
    q, k, v = groups[:, :g], groups[:, g], groups[:, g + 1]
    return tuple(x.reshape(-1, w.shape[1]).contiguous() for x in (q, k, v))


def pack_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Llama's q/k/v projections as InternLM2's packed wqkv (the inverse of `split_wqkv`)."""
    nkv, hd = cfg.num_key_value_heads, cfg.head_dim
    g, h = cfg.num_attention_heads // nkv, q.shape[1]
    return torch.cat([q.reshape(nkv, g, hd, h), k.reshape(nkv, 1, hd, h), v.reshape(nkv, 1, hd, h)],
                     dim=1).reshape(-1, h)


def to_llama(name: str, t: torch.Tensor, cfg: ModelConfig) -> list[tuple[str, torch.Tensor]]:
    """One InternLM2 tensor as our (HF Llama) tensors; [] for buffers that checkpoints may carry (inv_freq)."""
    if name in _TOP:
        return [(_TOP[name], t)]
    if "rotary_emb" in name:
        return []
    parts = name.split(".")
    if len(parts) > 3 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        prefix, rest = f"model.layers.{parts[2]}.", ".".join(parts[3:])
        if rest in _LAYER:
            return [(prefix + _LAYER[rest], t)]
        if rest == "attention.wqkv.weight":
            return [(prefix + n, w) for n, w in zip(_QKV, split_wqkv(t, cfg, name))]
    if name.endswith(".bias"):
        raise InternLM2FormatError(f"tensor {name}: attention biases are not supported (config.json bias=true "
                                   "checkpoints); our model, like Llama, has none")
    raise InternLM2FormatError(f"tensor {name} is not an InternLM2ForCausalLM weight we know; expected "
                               "model.tok_embeddings, model.layers.N.{attention.wqkv, attention.wo, attention_norm, "
                               "ffn_norm, feed_forward.w1/w2/w3}, model.norm, output")


def llama_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """An InternLM2 state dict under our (HF Llama) names, wqkv split into q/k/v."""
    out: dict[str, torch.Tensor] = {}
    for name in list(sd):
        out.update(to_llama(name, sd.pop(name), cfg))
    return out


def internlm2_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our (HF Llama) state dict under InternLM2's names, q/k/v packed into wqkv (the inverse of llama_state_dict)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        if name in _TOP_BACK:
            out[_TOP_BACK[name]] = t
            continue
        if "rotary_emb" in name:
            continue
        parts = name.split(".")
        prefix, rest = ".".join(parts[:3]) + ".", ".".join(parts[3:])
        if rest in _LAYER_BACK:
            out[prefix + _LAYER_BACK[rest]] = t
        elif rest == _QKV[0]:
            out[prefix + "attention.wqkv.weight"] = pack_wqkv(t, sd[prefix + _QKV[1]], sd[prefix + _QKV[2]], cfg)
        elif rest not in _QKV[1:]:
            raise InternLM2FormatError(f"tensor {name} has no InternLM2 counterpart")
    return out


def save_internlm2(model, out_dir: str | Path, tokenizer_model: str | Path | None = None,
                   tokenizer_config: dict | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Our model as an InternLM2 folder: config.json (InternLM2Config), model.safetensors under InternLM2's names
    (packed wqkv), generation_config.json, and the SentencePiece tokenizer.model (+ tokenizer_config.json) if given.
    Loading it in `transformers` needs InternLM2's modeling code (trust_remote_code), which is not shipped here."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    sd = {k: v.detach().to(dtype).contiguous().cpu() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    save_file(internlm2_state_dict(sd, cfg), str(out / "model.safetensors"), metadata={"format": "pt"})
    dname = str(dtype).replace("torch.", "")
    (out / "config.json").write_text(json.dumps(internlm2_config_dict(cfg, dname), indent=2))
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    if tokenizer_model is not None:
        shutil.copy2(tokenizer_model, out / "tokenizer.model")
    if tokenizer_config is not None:
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))
    return out


def weight_files(d: Path) -> list[Path]:
    """The folder's weight files (safetensors preferred, as transformers does), or an error naming what is
    expected."""
    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (d / single).is_file():
            return [d / single]
        if (d / index).is_file():
            shards = sorted(set(json.loads((d / index).read_text())["weight_map"].values()))
            lost = [s for s in shards if not (d / s).is_file()]
            if lost:
                raise InternLM2FormatError(f"{d}: {index} lists shards that are missing: {lost[:3]}; copy every "
                                           "shard of the checkpoint")
            return [d / s for s in shards]
    raise InternLM2FormatError(f"{d}: no weights: expected model.safetensors, model.safetensors.index.json, "
                               "pytorch_model.bin or pytorch_model.bin.index.json next to config.json")


def _tensors(d: Path):
    """(name, tensor) pairs of the folder's checkpoint, one shard in memory at a time (safetensors: one tensor)."""
    files = weight_files(d)
    if files[0].suffix == ".safetensors":
        from actors.model.hf import _SafetensorsFile

        for f in files:
            sf = _SafetensorsFile(f)
            for name in sf.keys():
                yield name, sf.get_tensor(name)
        return
    for f in files:
        try:
            shard = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (pre-zipfile) format cannot be memory-mapped
            shard = torch.load(f, map_location="cpu", weights_only=True)
        for name in list(shard):
            yield name, shard.pop(name)
        del shard


def load_state_dict(d: str | Path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """An InternLM2 folder's weights under our names (what `hf.load_hf` loads)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in _tensors(Path(d)):
        out.update(to_llama(name, t, cfg))
    return out


# ------------------------------------------------------------------------------------------------- tokenizer


def _token_str(v) -> str | None:
    return v.get("content") if isinstance(v, dict) else v


def convert_tokenizer(src: str | Path, out: str | Path, model_max_length: int = 2048) -> dict:
    """tokenizer.json from InternLM2's SentencePiece BPE `tokenizer.model` (what InternLM2's own fast-tokenizer
    converter builds: byte fallback, "▁" for spaces with a dummy prefix, the pieces that tokenizer_config.json's
    added_tokens_decoder renames as special tokens), and tokenizer_config.json with the chat template (the source's
    own, else templates/internlm2.jinja). Returns what was used, for the provenance."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import import_protobuf

    src, out = Path(src), Path(out)
    spm = src / "tokenizer.model"
    if not spm.is_file():
        raise InternLM2FormatError(f"{src}: no tokenizer.model (InternLM2's SentencePiece tokenizer); copy "
                                   "tokenizer.model from the original checkpoint into the folder")
    src_cfg = {}
    if (src / "tokenizer_config.json").is_file():
        src_cfg = json.loads((src / "tokenizer_config.json").read_text())
    proto = import_protobuf().ModelProto()
    try:
        proto.ParseFromString(spm.read_bytes())
    except Exception as e:  # protobuf's DecodeError
        raise InternLM2FormatError(f"{spm}: not a SentencePiece model ({type(e).__name__}: {e})") from None
    ts, ns = proto.trainer_spec, proto.normalizer_spec
    if ts.model_type != 2:  # 1 unigram, 2 bpe, 3 word, 4 char
        raise InternLM2FormatError(f"{spm}: a SentencePiece model of type {ts.model_type} (1 unigram, 3 word, "
                                   "4 char); InternLM2's tokenizer.model is BPE (2)")
    if ns.name not in ("identity", "") and not ns.precompiled_charsmap:
        raise InternLM2FormatError(f"{spm}: normalizer {ns.name!r} has no precompiled charsmap to convert")
    if ts.treat_whitespace_as_suffix:
        raise InternLM2FormatError(f"{spm}: treat_whitespace_as_suffix=true is not supported")

    # id -> (content, special) for the tokens tokenizer_config.json declares (InternLM2 renames placeholders)
    declared = {}
    for i, t in (src_cfg.get("added_tokens_decoder") or {}).items():
        content = _token_str(t)
        if content is not None:
            declared[int(i)] = (content, bool(t.get("special", True)) if isinstance(t, dict) else True)
    n = len(proto.pieces)
    bad = sorted(i for i in declared if i >= n)
    if bad:
        raise InternLM2FormatError(f"{src / 'tokenizer_config.json'}: added_tokens_decoder ids {bad[:4]} are "
                                   f"beyond tokenizer.model's {n} pieces; the two files are from different models")
    pieces = [declared[i][0] if i in declared else p.piece for i, p in enumerate(proto.pieces)]
    vocab: dict[str, int] = {}
    for i, p in enumerate(pieces):
        if p in vocab:
            raise InternLM2FormatError(f"{src}: token {p!r} is both id {vocab[p]} and id {i} (tokenizer.model + "
                                       "tokenizer_config.json added_tokens_decoder)")
        vocab[p] = i
    # BPE merges: SentencePiece merges the adjacent pair whose concatenation is the best-scoring normal piece
    ranked = []
    for i, p in enumerate(proto.pieces):
        if p.type != 1 or i in declared or len(p.piece) < 2:  # 1 = NORMAL
            continue
        for cut in range(1, len(p.piece)):
            a, b = p.piece[:cut], p.piece[cut:]
            if a in vocab and b in vocab:
                ranked.append((-p.score, i, vocab[a], a, b))
    merges = [(a, b) for *_, a, b in sorted(ranked)]
    unk = pieces[ts.unk_id] if 0 <= ts.unk_id < n else None
    tok = Tokenizer(BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=ts.byte_fallback, dropout=None))
    norm = [normalizers.Precompiled(ns.precompiled_charsmap)] if ns.precompiled_charsmap else []
    if ns.remove_extra_whitespaces:
        norm += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if ns.add_dummy_prefix:
        norm.append(normalizers.Prepend("▁"))
    if ns.escape_whitespaces:
        norm.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(norm)
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if ns.add_dummy_prefix:
        dec.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(dec)
    # atomic tokens: control/unknown pieces (special), user-defined pieces, and the declared ones
    added = []
    for i, p in enumerate(proto.pieces):
        if i in declared:
            added.append((i, pieces[i], declared[i][1]))
        elif p.type in (2, 3, 4):  # UNKNOWN, CONTROL, USER_DEFINED
            added.append((i, p.piece, p.type != 4))
    tok.add_special_tokens([AddedToken(c, normalized=False, special=True) for _, c, s in added if s])
    tok.add_tokens([AddedToken(c, normalized=False, special=False) for _, c, s in added if not s])

    bos = _token_str(src_cfg.get("bos_token")) or (pieces[ts.bos_id] if 0 <= ts.bos_id < n else None)
    eos = _token_str(src_cfg.get("eos_token")) or (pieces[ts.eos_id] if 0 <= ts.eos_id < n else None)
    pad = _token_str(src_cfg.get("pad_token")) or eos
    add_bos, add_eos = bool(src_cfg.get("add_bos_token", True)), bool(src_cfg.get("add_eos_token", False))
    if (add_bos and bos is None) or (add_eos and eos is None):
        raise InternLM2FormatError(f"{spm}: add_bos_token/add_eos_token is set but the model has no bos/eos piece")
    if add_bos or add_eos:
        single = ([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else [])
        pair = single + ([f"{bos}:1"] if add_bos else []) + ["$B:1"] + ([f"{eos}:1"] if add_eos else [])
        specials = [(t, vocab[t]) for t, on in ((bos, add_bos), (eos, add_eos)) if on]
        tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))

    template, template_from = src_cfg.get("chat_template"), "tokenizer_config.json"
    if not isinstance(template, str) or not template:
        template, template_from = TEMPLATE.read_text(), "templates/internlm2.jinja"
    extra = [c for _, c, s in added if s and c not in (bos, eos, pad, unk)]
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos, "pad_token": pad,
        "unk_token": unk, "model_max_length": model_max_length, "clean_up_tokenization_spaces": False,
        "add_bos_token": add_bos, "add_eos_token": add_eos,
        "added_tokens_decoder": {str(i): {"content": c, "lstrip": False, "rstrip": False, "normalized": False,
                                          "single_word": False, "special": s} for i, c, s in added},
        "extra_special_tokens": extra, "chat_template": template,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("pad_token", pad), ("unk_token", unk)) if v},
        indent=2, ensure_ascii=False))
    return {"chat_template_from": template_from, "vocab_pieces": n, "renamed_tokens": len(declared)}


# ---------------------------------------------------------------------------------------- folder conversion


_META_FILES = ("config.json", "tokenizer.model", "tokenizer_config.json", "generation_config.json")


def fingerprint(src: str | Path) -> str:
    """Identity of an InternLM2 folder for the conversion cache: the bytes of its config/tokenizer files and each
    weight file's name, size and modification time (hashing ~15 GB of weights on every resolve would cost minutes;
    the conversion itself records their sha256)."""
    d = Path(src)
    h = hashlib.sha256(f"internlm2-import-{IMPORT_FORMAT}".encode())
    for f in _META_FILES:
        h.update(f.encode() + b"\0" + ((d / f).read_bytes() if (d / f).is_file() else b"-") + b"\0")
    for f in weight_files(d):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def folder_problem(src: str | Path) -> str | None:
    """Why an InternLM2 folder cannot be converted (checked when a config loads, before any stage runs), or None."""
    d = Path(src)
    try:
        config_from_internlm2(json.loads((d / "config.json").read_text()), where=str(d / "config.json"))
        weight_files(d)
    except (InternLM2FormatError, ValueError) as e:
        return str(e)
    if not (d / "tokenizer.model").is_file() and not (d / "tokenizer.json").is_file():
        return (f"{d}: no tokenizer.model (InternLM2's SentencePiece tokenizer); copy tokenizer.model from the "
                "original checkpoint into the folder")
    return None


def _up_to_date(out: Path, fp: str) -> bool:
    f = out / "fullchain.json"
    has_weights = (out / "model.safetensors").is_file() or (out / "model.safetensors.index.json").is_file()
    if not (f.is_file() and has_weights and (out / "tokenizer.json").is_file() and (out / "config.json").is_file()):
        return False
    try:
        imp = json.loads(f.read_text()).get("import", {})
    except json.JSONDecodeError:
        return False
    return imp.get("source_fingerprint") == fp and imp.get("format") == IMPORT_FORMAT


def import_internlm2(src: str | Path, out: str | Path, fp: str | None = None, shard_bytes: int = 2 << 30) -> Path:
    """An InternLM2 folder as an HF Llama folder at `out` (reused while up to date): safetensors in the source's
    dtype (one tensor in memory at a time, ~2 GB shards), config.json as LlamaForCausalLM (dynamic rope_scaling
    kept), generation_config.json (the source's, if any), tokenizer.json + tokenizer_config.json converted from
    tokenizer.model, fullchain.json with the provenance (source path, fingerprint, sha256 of every file)."""
    from actors.model.hf import LINEAGE_FILE, ShardWriter, hf_config_dict

    src, out = Path(src), Path(out)
    problem = folder_problem(src)
    if problem:
        raise InternLM2FormatError(problem)
    fp = fp or fingerprint(src)
    if _up_to_date(out, fp):
        return out
    t0 = time.perf_counter()
    cfg = config_from_internlm2(json.loads((src / "config.json").read_text()), name=src.name,
                                where=str(src / "config.json"))
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        writer, seen, dtypes = ShardWriter(tmp, shard_bytes), set(), set()
        for name, t in _tensors(src):
            for new, w in to_llama(name, t, cfg):
                writer.add(new, w)
                seen.add(new)
                dtypes.add(w.dtype)
        writer.close()
        expected = {f"model.layers.{i}.{n}" for i in range(cfg.num_hidden_layers)
                    for n in (*_LAYER.values(), *_QKV)}
        expected |= {"model.embed_tokens.weight", "model.norm.weight"}
        expected |= set() if cfg.tie_word_embeddings else {"lm_head.weight"}
        missing = sorted(expected - seen)
        if missing:
            raise InternLM2FormatError(f"{src}: the checkpoint lacks {len(missing)} tensors of a "
                                       f"{cfg.num_hidden_layers}-layer InternLM2 (under our names: {missing[:4]}); "
                                       "is every weight shard there?")
        dtype = str(next(iter(dtypes))).replace("torch.", "") if len(dtypes) == 1 else "float32"
        (tmp / "config.json").write_text(json.dumps(hf_config_dict(cfg, dtype), indent=2))
        gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}
        if (src / "generation_config.json").is_file():
            gen = {**gen, **json.loads((src / "generation_config.json").read_text())}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        if (src / "tokenizer.model").is_file():
            tok_info = convert_tokenizer(src, tmp, model_max_length=cfg.max_position_embeddings)
        else:  # a folder that already ships a fast tokenizer
            from actors.model.hf import copy_tokenizer

            copy_tokenizer(src, tmp)
            tok_info = {"tokenizer": "copied tokenizer.json"}
        files = [src / f for f in _META_FILES if (src / f).is_file()] + weight_files(src)
        (tmp / LINEAGE_FILE).write_text(json.dumps({
            "model_config": dataclasses.asdict(cfg), "step": None,
            "lineage": [{"stage": "import", "internlm2": src.name}],
            "import": {"format": IMPORT_FORMAT, "source": str(src.resolve()), "source_fingerprint": fp,
                       "architecture": ARCHITECTURE, "dtype": dtype,
                       "files_sha256": {f.name: sha256_file(f) for f in files},
                       **tok_info, "seconds": round(time.perf_counter() - t0, 2)},
        }, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    try:
        tmp.rename(out)
    except OSError:  # another process converted the same folder meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        if not _up_to_date(out, fp):
            raise
    return out
