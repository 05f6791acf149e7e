"""The LoRA adapters a Serve app offers, by name (vLLM's `--lora-modules` and `/v1/load_lora_adapter`).

The ingress holds this registry; engine replicas load an adapter from its folder the first time a request names
it (actors.engine.lora, an LRU of `engine.max_loras` per replica), so a new replica serves every registered adapter
and a load reaches all replicas without a broadcast. Loading a name again with `load_inplace` publishes a new
version: requests already running finish on the version they started with, new ones get the new one.
"""
from __future__ import annotations

import itertools
import json
import types
from pathlib import Path

from actors.engine import AdapterRef, adapter_problem


class AdapterNotFound(LookupError):
    pass


class AdapterRegistry:
    def __init__(self, base_name: str, model_dir: str | Path):
        self.base_name = base_name
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        self.model_config = types.SimpleNamespace(**cfg)
        self.adapters: dict[str, AdapterRef] = {}
        self._versions = itertools.count(1)

    def add(self, name: str, path: str | Path, inplace: bool = False) -> AdapterRef:
        """Register (or, with `inplace`, replace) an adapter; ValueError naming the problem otherwise."""
        if name == self.base_name or name.startswith(f"{self.base_name}:"):
            raise ValueError(f"lora_name {name!r} is the base model's name; pick another name")
        if name in self.adapters and not inplace:
            raise ValueError(f"an adapter named {name!r} is already loaded; send load_inplace: true to replace it "
                             "or unload it first")
        p = Path(path).expanduser().resolve()
        why = adapter_problem(p, self.model_config)
        if why:
            raise ValueError(why)
        ref = self.adapters[name] = AdapterRef(name, str(p), next(self._versions))
        return ref

    def remove(self, name: str) -> AdapterRef:
        if name not in self.adapters:
            raise AdapterNotFound(f"no adapter named {name!r} is loaded; loaded: {sorted(self.adapters)}")
        return self.adapters.pop(name)

    def resolve(self, model: str) -> AdapterRef | None:
        """The adapter a request's `model` names — "base:adapter" (Ray Serve LLM) or "adapter" (vLLM) — or None
        for the base model."""
        if model == self.base_name:
            return None
        name = model.removeprefix(f"{self.base_name}:")
        ref = self.adapters.get(name)
        if ref is None:
            names = [self.base_name] + [f"{self.base_name}:{a}" for a in sorted(self.adapters)]
            raise AdapterNotFound(f"model {model!r} does not exist; this server serves {names} (see GET /v1/models)")
        return ref
