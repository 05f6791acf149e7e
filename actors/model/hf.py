"""Hugging Face checkpoint I/O: `config.json` as LlamaForCausalLM + `model.safetensors` (+ tokenizer files).

Our parameter names equal HF Llama's, so export is a dtype cast and import is a shape check; an InternLM2 folder
(InternLM2ForCausalLM: other names, packed wqkv) loads through `actors.model.internlm2`.
Each folder also carries `fullchain.json`: our model config, the step, and the lineage of stages that made it.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch

from actors.model.config import ROPE_TYPES, ModelConfig
from actors.model.transformer import Transformer

LINEAGE_FILE = "fullchain.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "internlm2", "fullchain")


def hf_config_dict(cfg: ModelConfig, dtype: str = "float32") -> dict:
    scaling = {"factor": cfg.rope_factor} if cfg.rope_type != "default" else {}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta, **scaling},
        "rope_scaling": {"rope_type": cfg.rope_type, **scaling} if scaling else None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "initializer_range": cfg.initializer_range,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": dtype,
        "dtype": dtype,
        "use_cache": True,
    }


def rope_scaling_from_hf(d: dict, where: str = "config.json") -> tuple[str, float]:
    """(rope_type, factor) from HF's `rope_scaling` / `rope_parameters` ({"type"|"rope_type": ..., "factor": ...})."""
    rope = d.get("rope_parameters") or {}
    scaling = d.get("rope_scaling") or {}
    rtype = scaling.get("rope_type") or scaling.get("type") or rope.get("rope_type") or "default"
    if rtype not in ROPE_TYPES:
        raise ValueError(f"{where}: rope_scaling type {rtype!r} is not supported; supported: {ROPE_TYPES} "
                         "(HF's `dynamic` is InternLM2.5's NTK scaling); remove rope_scaling to use plain RoPE "
                         "up to max_position_embeddings")
    factor = scaling.get("factor", rope.get("factor", 1.0))
    if rtype != "default" and (not isinstance(factor, int | float) or factor < 1.0):
        raise ValueError(f"{where}: rope_scaling factor {factor!r} must be a number >= 1.0")
    return rtype, float(factor) if rtype != "default" else 1.0


def config_from_hf(d: dict, name: str = "hf") -> ModelConfig:
    from actors.model import internlm2

    if internlm2.is_internlm2_config(d):
        return internlm2.config_from_internlm2(d, name=name)
    mt = d.get("model_type", "llama")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"config.json model_type={mt!r} is not a Llama-family model we can load; "
                         f"supported: {SUPPORTED_MODEL_TYPES}")
    if d.get("attention_bias") or d.get("mlp_bias"):
        raise ValueError("config.json: attention_bias/mlp_bias=true is not supported (Llama has no biases)")
    rope = d.get("rope_parameters") or {}
    rtype, factor = rope_scaling_from_hf(d)
    theta = d.get("rope_theta") or rope.get("rope_theta") or 10000.0
    eos = d.get("eos_token_id", 0)
    if isinstance(eos, list):
        eos = eos[0]
    nh = d["num_attention_heads"]
    return ModelConfig(
        name=name, vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"], num_hidden_layers=d["num_hidden_layers"],
        num_attention_heads=nh, num_key_value_heads=d.get("num_key_value_heads") or nh,
        head_dim=d.get("head_dim") or d["hidden_size"] // nh,
        max_position_embeddings=d.get("max_position_embeddings", 2048), rope_theta=float(theta),
        rope_type=rtype, rope_factor=factor, rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        initializer_range=d.get("initializer_range", 0.02), bos_token_id=d.get("bos_token_id"),
        eos_token_id=eos if eos is not None else 0,
        pad_token_id=d.get("pad_token_id") if d.get("pad_token_id") is not None else (eos or 0),
    )


def save_hf(model: Transformer, out_dir: str | Path, tokenizer_dir: str | Path | None = None,
            dtype: torch.dtype = torch.float32, lineage: list[dict] | None = None, step: int | None = None,
            extra: dict | None = None) -> Path:
    """Write a transformers-loadable folder; copies tokenizer files from `tokenizer_dir` when given."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    sd = {k: v.detach().to(dtype).contiguous().cpu() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)  # tied: HF re-ties from embed_tokens
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_hf_meta(cfg, out, dtype, lineage, step, extra)
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, out)
    return out


def write_hf_meta(cfg: ModelConfig, out: Path, dtype: torch.dtype = torch.float32, lineage: list[dict] | None = None,
                  step: int | None = None, extra: dict | None = None, hf_overrides: dict | None = None) -> None:
    """config.json (+ `hf_overrides`, e.g. a sequence-classification head), generation_config.json and our
    provenance file."""
    dname = str(dtype).replace("torch.", "")
    (out / "config.json").write_text(json.dumps({**hf_config_dict(cfg, dname), **(hf_overrides or {})}, indent=2))
    gen = {"eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}
    if cfg.bos_token_id is not None:
        gen["bos_token_id"] = cfg.bos_token_id
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    (out / LINEAGE_FILE).write_text(json.dumps({
        "model_config": dataclasses.asdict(cfg), "step": step, "lineage": lineage or [], **(extra or {}),
    }, indent=2))


class ShardWriter:
    """Tensors written one by one into safetensors shards of at most `shard_bytes` (HF's sharded layout:
    model-0000i-of-0000n.safetensors + model.safetensors.index.json); only one shard is ever in memory."""

    def __init__(self, out: str | Path, shard_bytes: int = 256 << 20):
        self.out, self.limit = Path(out), shard_bytes
        self.out.mkdir(parents=True, exist_ok=True)
        self.buf: dict[str, torch.Tensor] = {}
        self.size, self.files, self.where = 0, [], {}

    def add(self, name: str, t: torch.Tensor) -> None:
        n = t.numel() * t.element_size()
        if self.buf and self.size + n > self.limit:
            self._flush()
        self.buf[name] = t.contiguous()
        self.size += n

    def _flush(self) -> None:
        from safetensors.torch import save_file

        f = f"part-{len(self.files):05d}.safetensors"
        save_file(self.buf, str(self.out / f), metadata={"format": "pt"})
        self.where.update({k: f for k in self.buf})
        self.files.append(f)
        self.buf, self.size = {}, 0

    def close(self) -> None:
        if self.buf:
            self._flush()
        if len(self.files) == 1:
            (self.out / self.files[0]).rename(self.out / "model.safetensors")
            return
        n = len(self.files)
        names = {f: f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i, f in enumerate(self.files)}
        total = 0
        for f, new in names.items():
            (self.out / f).rename(self.out / new)
            total += (self.out / new).stat().st_size
        (self.out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": {k: names[f] for k, f in self.where.items()}},
            indent=2))


def tensor_names(path: str | Path) -> list[str]:
    """The tensor names of a folder's safetensors, in file order."""
    from safetensors import safe_open

    d = Path(path)
    if (d / "model.safetensors").exists():
        with safe_open(str(d / "model.safetensors"), framework="pt") as f:
            return list(f.keys())
    return list(json.loads((d / "model.safetensors.index.json").read_text())["weight_map"])


def copy_tokenizer(src: str | Path, dst: str | Path) -> None:
    for f in TOKENIZER_FILES:
        if (Path(src) / f).exists():
            shutil.copy2(Path(src) / f, Path(dst) / f)


def read_config(path: str | Path) -> ModelConfig:
    d = Path(path)
    if not (d / "config.json").exists():
        raise FileNotFoundError(f"{d}: not a Hugging Face model folder (no config.json)")
    return config_from_hf(json.loads((d / "config.json").read_text()), name=d.name)


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


class _SafetensorsFile:
    """Reads one tensor at a time with plain file reads. safetensors' own reader maps the whole file, and every
    page it touches stays in the process's resident memory while the file is open: reading a 513 MB base through
    it for a merge raised the peak by 1.4x the model instead of one shard."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            self.header = json.loads(f.read(n))
        self.header.pop("__metadata__", None)
        self.base = 8 + n

    def keys(self) -> list[str]:
        return list(self.header)

    def get_tensor(self, name: str) -> torch.Tensor:
        h = self.header[name]
        a, b = h["data_offsets"]
        dtype = _ST_DTYPES.get(h["dtype"])
        if dtype is None:
            raise ValueError(f"{self.path}: tensor {name} has dtype {h['dtype']}, which we do not read")
        t = torch.empty(b - a, dtype=torch.uint8)
        with open(self.path, "rb") as f:
            f.seek(self.base + a)
            f.readinto(t.numpy())
        return t.view(dtype).reshape(h["shape"])


def tensor_reader(path: str | Path):
    """`get(name) -> tensor` over a folder's safetensors (one file or an index of shards), one tensor at a time:
    materialising a sharded model or merging an adapter reads each weight once without holding the checkpoint."""
    d = Path(path)
    if (d / "model.safetensors").exists():
        files = {None: d / "model.safetensors"}
        where = None
    elif (d / "model.safetensors.index.json").exists():
        where = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
        files = {f: d / f for f in set(where.values())}
    else:
        raise FileNotFoundError(f"{d}: no model.safetensors or model.safetensors.index.json")
    handles = {k: _SafetensorsFile(f) for k, f in files.items()}
    names = set(where) if where is not None else set(handles[None].keys())

    def get(name: str) -> torch.Tensor | None:
        if name not in names:
            return None
        return handles[where[name] if where is not None else None].get_tensor(name)

    return get


def _load_state_dict(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (d / "model.safetensors").exists():
        return load_file(str(d / "model.safetensors"))
    index = d / "model.safetensors.index.json"
    if index.exists():
        sd: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            sd.update(load_file(str(d / shard)))
        return sd
    if (d / "pytorch_model.bin").exists():
        return torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{d}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def load_hf(path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Transformer:
    """Load our export, any local Llama-family HF directory or an InternLM2 one (`actors.model.internlm2`)."""
    from actors.model import internlm2

    d = Path(path)
    if not (d / "config.json").exists():
        raise FileNotFoundError(f"{d}: not a Hugging Face model folder (no config.json)")
    hf_cfg = json.loads((d / "config.json").read_text())
    cfg = config_from_hf(hf_cfg, name=d.name)
    with torch.device("meta"):  # no random init of weights the checkpoint replaces (~1 s for 135M params)
        model = Transformer(cfg)
    # an InternLM2 folder: its names converted (and wqkv split) on the fly
    sd = internlm2.load_state_dict(d, cfg) if internlm2.is_internlm2_config(hf_cfg) else _load_state_dict(d)
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    model.tie_weights()
    rope = model.model.rotary_emb
    rope.inv_freq = rope._inv_freq()  # a non-persistent buffer: not in the checkpoint, still on meta
    missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    unexpected = [k for k in unexpected if "rotary_emb" not in k]
    if missing or unexpected:
        raise ValueError(f"{d}: weights do not match config.json (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]})")
    return model.to(device=device, dtype=dtype).eval()


def read_lineage(path: str | Path) -> dict:
    p = Path(path) / LINEAGE_FILE
    return json.loads(p.read_text()) if p.exists() else {}
