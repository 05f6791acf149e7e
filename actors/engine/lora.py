"""Many LoRA adapters in one batch (Punica / S-LoRA style), over the engine's inference copy of a model.

Every projection of the engine's twin is a `Proj`: one matmul over its (fused) base weight, then, for each adapter
that rows of this step use, the low-rank update of those rows only:

    y = x W^T;   y[run_a] += (x[run_a] A_a^T) B_a^T          (scale folded into B_a; DoRA: y[run_a] *= g_a)

A fused projection (q|k|v, gate|up) keeps one A per adapter stacked over its slices, (k r, in), and B compact,
(out, r), each slice's rows against its own r columns of x A^T (kernels.lora). The runner orders each step's rows by
adapter, so an adapter's rows are contiguous runs (`LoRABatch`, shared by every projection) updated in place by one
`kernels.lora.lora_apply` call per projection; a step without adapters costs nothing extra.

`LoRAManager` keeps at most `max_loras` adapters loaded (LRU over those no unfinished request uses), each read once
from a peft folder (actors.model.lora). A request names its adapter by `AdapterRef` (name, path, version): a new
version of a name is another adapter, so requests in flight finish on the version they started with (hot swap).
"""
from __future__ import annotations

import collections
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels.lora import lora_apply


@dataclass(frozen=True)
class AdapterRef:
    """Which adapter a request runs with: `name` as clients send it, the peft folder, and a version that changes
    when a new adapter is published under the same name."""

    name: str
    path: str
    version: int = 0

    @property
    def key(self) -> tuple[str, int]:
        return self.name, self.version


class LoRABatch:
    """This step's rows per adapter, shared by every `Proj` of the engine's twin (set by the runner). The runner
    orders a step's requests by adapter, so each adapter's rows are a few contiguous runs."""

    def __init__(self):
        self.active: list[tuple[int, int, "LoadedAdapter"]] = []   # (first row, end row, adapter), runs merged
        self._per_proj: dict[int, tuple | None] = {}

    def set(self, spans: list[tuple[int, int, "LoadedAdapter"]]) -> None:
        """`spans`: (first row, rows, adapter) of the step's requests that use an adapter, in row order."""
        runs: list[list] = []
        for start, n, a in spans:
            if runs and runs[-1][2] is a and runs[-1][1] == start:
                runs[-1][1] = start + n
            else:
                runs.append([start, start + n, a])
        self.active = [tuple(r) for r in runs]
        self._per_proj = {}

    def runs_for(self, pid: int) -> tuple | None:
        """(bounds, A, B, g) lists over this step's runs whose adapter adapts projection `pid`; None for none."""
        got = self._per_proj.get(pid, False)
        if got is False:
            bounds, a, b, g = [], [], [], []
            for start, end, adapter in self.active:
                w = adapter.weights.get(pid)
                if w is not None:
                    bounds += (start, end)
                    a.append(w[0])
                    b.append(w[1])
                    g.append(w[2])
            got = self._per_proj[pid] = (bounds, a, b, g) if a else None
        return got


def adapter_order(adapter) -> tuple[int, int]:
    """Sort key that puts requests of one adapter next to each other (base requests first)."""
    return (0, 0) if adapter is None else (1, id(adapter))


class Proj(nn.Module):
    """A bias-free projection over one weight (or several concatenated: `slices` output sizes), plus this step's
    adapters. `names`: the base model's weight name of each slice (what peft adapters key their pairs by)."""

    def __init__(self, weight: torch.Tensor, names: list[str], slices: list[int], batch: LoRABatch, pid: int):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.names, self.slices, self.batch, self.pid = names, slices, batch, pid
        self.int8 = None          # a kernels.int8.Int8Weight when the engine serves int8 weights

    def quantize(self, kernel: str, outliers: torch.Tensor | None = None) -> None:
        """Run the base matmul on per-channel int8 weights, the `outliers` input channels excepted (adapters stay
        in the compute dtype)."""
        from kernels.int8 import Int8Weight

        self.int8 = Int8Weight(self.weight.detach(), kernel, outliers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.int8.linear(x) if self.int8 is not None else F.linear(x, self.weight)
        runs = self.batch.runs_for(self.pid) if self.batch.active else None
        if runs is None:
            return y
        bounds, a, b, g = runs
        lora_apply(y.view(-1, y.shape[-1]), x.reshape(-1, x.shape[-1]), bounds, a, b, g, self.slices)
        return y


@dataclass(eq=False)
class LoadedAdapter:
    ref: AdapterRef
    rank: int
    # Proj id -> (A (k r, in), B (out, r) compact with the scale folded in, DoRA magnitude / norm (out,) or None)
    weights: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
    refs: int = 0                       # unfinished requests that use it
    root: int = 0                       # the prefix-cache chain's root for its requests


class AdapterError(ValueError):
    """An adapter folder that does not fit the served model (the message names the folder and the fix)."""


def adapter_problem(path: str | Path, model_config) -> str | None:
    """Why the peft folder at `path` cannot serve on a model with this config (shapes read from the safetensors
    header only), or None. The API checks this before it accepts an adapter."""
    p = Path(path)
    if not (p / "adapter_config.json").is_file():
        return f"{str(p)!r} has no adapter_config.json; give a peft LoRA adapter folder (e.g. runs/demo/finetune/adapter)"
    if not (p / "adapter_model.safetensors").is_file():
        return f"{str(p)!r} has no adapter_model.safetensors; save the adapter with safetensors"
    try:
        acfg = json.loads((p / "adapter_config.json").read_text())
    except ValueError as e:
        return f"{p}/adapter_config.json is not JSON ({e})"
    if acfg.get("peft_type", "LORA") != "LORA":
        return f"{str(p)!r} is a {acfg.get('peft_type')} adapter; only LoRA (and DoRA) adapters are served"
    from safetensors import safe_open

    c = model_config
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    shapes = {"q_proj": (c.num_attention_heads * hd, c.hidden_size),
              "k_proj": (c.num_key_value_heads * hd, c.hidden_size),
              "v_proj": (c.num_key_value_heads * hd, c.hidden_size),
              "o_proj": (c.hidden_size, c.num_attention_heads * hd),
              "gate_proj": (c.intermediate_size, c.hidden_size), "up_proj": (c.intermediate_size, c.hidden_size),
              "down_proj": (c.hidden_size, c.intermediate_size)}
    with safe_open(str(p / "adapter_model.safetensors"), "pt") as f:
        for k in f.keys():
            if ".lora_" not in k:
                continue
            mod, part = k.removeprefix("base_model.model.").rsplit(".lora_", 1)
            proj = mod.rsplit(".", 1)[-1]
            if proj not in shapes:
                return (f"{str(p)!r} adapts {mod!r}; served adapters may only target "
                        f"{', '.join(shapes)}")
            layer = mod.split(".layers.")[-1].split(".")[0] if ".layers." in mod else ""
            if not layer.isdigit() or int(layer) >= c.num_hidden_layers:
                return f"{str(p)!r} adapts {mod!r}, which this model ({c.num_hidden_layers} layers) does not have"
            out, inp = shapes[proj]
            shape = tuple(f.get_slice(k).get_shape())
            want = {"A": (None, inp), "B": (out, None)}.get(part.split(".")[0])
            if want and any(w is not None and w != s for w, s in zip(want, shape)):
                return (f"{str(p)!r}: {k} has shape {list(shape)} but this model's {proj} is {out}x{inp}; the "
                        "adapter was trained on another base model")
    return None


class LoRAManager:
    """The adapters loaded in one engine: at most `max_loras`, least recently used evicted first among those no
    unfinished request holds."""

    def __init__(self, projs: list[Proj], max_loras: int, dtype: torch.dtype, device: torch.device):
        self.projs, self.max_loras, self.dtype, self.device = projs, max_loras, dtype, device
        self.where = {name: (p.pid, i) for p in projs for i, name in enumerate(p.names)}
        self.loaded: collections.OrderedDict[tuple[str, int], LoadedAdapter] = collections.OrderedDict()
        self.loads = 0

    def acquire(self, ref: AdapterRef) -> LoadedAdapter | None:
        """The adapter loaded and held by one more request; None when `max_loras` are loaded and all in use."""
        a = self.loaded.get(ref.key)
        if a is None:
            if len(self.loaded) >= self.max_loras:
                idle = next((k for k, v in self.loaded.items() if v.refs == 0), None)
                if idle is None:
                    return None
                del self.loaded[idle]
            a = self.loaded[ref.key] = self._load(ref)
        self.loaded.move_to_end(ref.key)
        a.refs += 1
        return a

    def release(self, adapter: LoadedAdapter) -> None:
        adapter.refs -= 1

    @torch.no_grad()
    def _load(self, ref: AdapterRef) -> LoadedAdapter:
        from actors.model.lora import lora_deltas

        if not self.projs:
            raise AdapterError("this engine's model has no plain projections to adapt (a quantized base?); serve "
                               "LoRA adapters on an fp32/bf16 base")
        try:
            scale, pairs = lora_deltas(ref.path)
        except (OSError, KeyError, ValueError) as e:
            raise AdapterError(f"adapter {ref.name!r} at {ref.path!r} cannot be read: {e}") from None
        missing = [n for n in pairs if n not in self.where]
        if missing:
            raise AdapterError(f"adapter {ref.name!r} adapts {missing[:3]}, which this model does not have")
        by_proj: dict[int, dict[int, dict]] = collections.defaultdict(dict)
        for name, entry in pairs.items():
            pid, i = self.where[name]
            by_proj[pid][i] = entry
        weights, rank = {}, 0
        for pid, entries in by_proj.items():
            proj = self.projs[pid]
            r = max(e["A"].shape[0] for e in entries.values())
            rank = max(rank, r)
            k, d_in = len(proj.slices), proj.weight.shape[1]
            a = torch.zeros(k * r, d_in)
            b = torch.zeros(proj.weight.shape[0], r)   # slice i's rows use A's rows i r .. i r + r
            g = None
            row = 0
            for i, out in enumerate(proj.slices):
                e = entries.get(i)
                if e is not None:
                    ri = e["A"].shape[0]
                    a[i * r:i * r + ri] = e["A"]
                    b[row:row + out, :ri] = scale * e["B"]
                    if "magnitude" in e:
                        if g is None:
                            g = torch.ones(proj.weight.shape[0])
                        w = proj.weight[row:row + out].float() + scale * (e["B"] @ e["A"])
                        g[row:row + out] = e["magnitude"] / torch.linalg.norm(w, dim=1)
                row += out
            weights[pid] = (a.to(self.device, self.dtype), b.to(self.device, self.dtype),
                            None if g is None else g.to(self.device, self.dtype))
        self.loads += 1
        return LoadedAdapter(ref, rank, weights, root=hash(("adapter", ref.name, ref.version)))
