"""peft LoRA adapter folders (Ray-free): read the low-rank pairs, merge them into a base in memory or tensor by
tensor. The fine-tune stage's export and `jobs.chat` (talking to an adapter) both read adapters through here."""
from __future__ import annotations

import json
from pathlib import Path

import torch


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model the adapter was trained on (`base_model_name_or_path`, which the fine-tune stage sets to
    the base's folder)."""
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    base = cfg.get("base_model_name_or_path") or ""
    if not base:
        raise ValueError(f"{adapter_dir}/adapter_config.json names no base_model_name_or_path: pass the base "
                         "model explicitly")
    return base


def lora_deltas(adapter_dir: str | Path) -> tuple[float, dict[str, dict[str, torch.Tensor]]]:
    """(scale, {base weight name: {"A": (r, in), "B": (out, r), "magnitude": (out,) with DoRA}}) of a peft LoRA
    adapter (fp32); `merged_weight` turns a base weight and its entry into the merged one."""
    from safetensors.torch import load_file

    adir = Path(adapter_dir)
    acfg = json.loads((adir / "adapter_config.json").read_text())
    if acfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{adir}: peft_type {acfg.get('peft_type')!r} is not a LoRA adapter")
    r, alpha = acfg["r"], acfg["lora_alpha"]
    scale = alpha / (r ** 0.5 if acfg.get("use_rslora") else r)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    # base_model.model.<module>.lora_A.weight, .lora_B.weight, .lora_magnitude_vector (DoRA)
    for k, v in load_file(str(adir / "adapter_model.safetensors")).items():
        if ".lora_" not in k:
            continue
        mod, part = k.removeprefix("base_model.model.").rsplit(".lora_", 1)
        key = "magnitude" if part.startswith("magnitude_vector") else part.split(".")[0]
        pairs.setdefault(mod + ".weight", {})[key] = v.float()
    return scale, pairs


def merged_weight(w: torch.Tensor, entry: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
    """W + scale B A in fp32; with DoRA each output row of that is rescaled to its learned magnitude
    (m / ||W + scale B A||, row-wise, as peft merges)."""
    t = w.float() + scale * (entry["B"] @ entry["A"])
    if "magnitude" in entry:
        t *= (entry["magnitude"] / torch.linalg.norm(t, dim=1))[:, None]
    return t


@torch.no_grad()
def merge_lora_(model: torch.nn.Module, adapter_dir: str | Path) -> torch.nn.Module:
    """Merge the adapter into `model`'s weights in place (each weight rounded once, from fp32)."""
    scale, pairs = lora_deltas(adapter_dir)
    params = dict(model.named_parameters())
    missing = [n for n in pairs if n not in params]
    if missing:
        raise ValueError(f"{adapter_dir}: adapted weights {missing[:3]} are not in this base model")
    for name, entry in pairs.items():
        w = params[name]
        w.copy_(merged_weight(w, entry, scale).to(w.dtype))
    return model
