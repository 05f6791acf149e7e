"""Ray Serve shell around the OpenAI API: `LLMServer` replicas, `build_app` for `serve run`, start/stop helpers.

Each replica loads the HF folder once (`load_hf` + `load_tokenizer`), owns one engine behind an
`AsyncEngine` (which serializes all engine access), and serves the FastAPI app from `openai_api.create_app`.
The app is built per replica (`__serve_build_asgi_app__`, Serve's late-bound ingress) because its routes
close over that replica's engine.

    serve run configs/serve.yaml                           # from the repo root
    serve run actors.serve.deployment:build_app model_dir=runs/demo/finetune/hf
    base_url = start_server("runs/demo/finetune/hf", port=8000)  # from a job driver after cluster.connect()
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from ray import serve

from actors.common.config import ConfigError, check, from_dict

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class ServeArgs:
    model_dir: str                    # HF folder (config.json, model.safetensors, tokenizer.json), registry name or .gguf
    model_cache: str = "runs/models"  # where a registry name / .gguf is imported (once)
    model_name: str = "fullchain"     # the `model` clients must send
    num_replicas: int = 1
    num_cpus: float = 1.0             # per replica
    num_gpus: float = 0.0             # per replica; > 0 also puts the model on cuda
    max_ongoing_requests: int = 64    # per replica; the engine interleaves them token by token
    max_num_seqs: int = 16            # requests the engine advances at once; the rest wait in its queue
    max_model_len: int = 0            # 0 = the model's max_position_embeddings
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    torch_threads: int = 0            # 0 = torch's default (Ray sets OMP threads = num_cpus)

    def __post_init__(self):
        check(isinstance(self.model_dir, str) and self.model_dir != "", "model_dir",
              "is required: the model to serve, e.g. model_dir=runs/demo/finetune/hf, a registry name such as "
              "smollm2-135m-instruct, or a .gguf file")
        from actors.model.registry import REGISTRY, ModelSpecError, resolve_model

        if self.model_dir in REGISTRY or self.model_dir.endswith(".gguf"):
            try:  # imported once into model_cache, then served from there
                self.model_dir = str(resolve_model(self.model_dir, self.model_cache))
            except ModelSpecError as e:
                check(False, "model_dir", str(e))
        p = Path(self.model_dir).expanduser()
        check(p.is_dir(), "model_dir", f"{str(p)!r} is not a directory; run the finetune stage first or point "
                                       "at a Hugging Face model folder")
        check((p / "config.json").exists(), "model_dir", f"{str(p)!r} has no config.json; not an HF model folder")
        check((p / "tokenizer.json").exists(), "model_dir",
              f"{str(p)!r} has no tokenizer.json; export with save_hf(..., tokenizer_dir=...)")
        # replicas may start in another working directory than the caller's
        self.model_dir = str(p.resolve())
        check(isinstance(self.model_name, str) and self.model_name.strip() != "", "model_name",
              "must be a non-empty string (clients send it as `model`), e.g. fullchain")
        check(self.num_replicas >= 1, "num_replicas", f"must be >= 1, got {self.num_replicas}")
        check(self.num_cpus >= 0, "num_cpus", f"must be >= 0, got {self.num_cpus}")
        check(self.num_gpus >= 0, "num_gpus", f"must be >= 0, got {self.num_gpus}")
        check(self.max_ongoing_requests >= 1, "max_ongoing_requests",
              f"must be >= 1, got {self.max_ongoing_requests}")
        check(self.max_num_seqs >= 1, "max_num_seqs", f"must be >= 1, got {self.max_num_seqs}")
        check(self.max_model_len >= 0, "max_model_len", f"must be >= 0 (0 = the model's), got {self.max_model_len}")
        check(self.torch_threads >= 0, "torch_threads", f"must be >= 0, got {self.torch_threads}")


@serve.deployment
@serve.ingress()
class LLMServer:
    def __init__(self, args: dict):
        import torch

        from actors.model.hf import load_hf
        from actors.model.tokenizer import load_tokenizer
        from actors.serve.engine import AsyncEngine, PlainEngine
        from actors.serve.openai_api import create_app

        a = ServeArgs(**args)
        if a.torch_threads:
            torch.set_num_threads(a.torch_threads)
        device = "cuda" if a.num_gpus > 0 else "cpu"
        model = load_hf(a.model_dir, dtype=getattr(torch, a.dtype), device=device)
        tokenizer = load_tokenizer(a.model_dir)
        self.engine = AsyncEngine(PlainEngine(model, tokenizer, max_num_seqs=a.max_num_seqs,
                                              max_model_len=a.max_model_len or None))
        # not `self.app`: the ingress wrapper owns that name (a read-only property)
        self.api = create_app(self.engine, tokenizer, a.model_name)

    def __serve_build_asgi_app__(self):
        return self.api

    def check_health(self) -> None:
        """Serve restarts a replica whose engine loop died (it would hang every request)."""
        err = self.engine.loop_error()
        if err is not None:
            raise RuntimeError(f"engine loop died: {err!r}")


def parse_args(args: dict | None) -> ServeArgs:
    try:
        return from_dict(ServeArgs, dict(args or {}))
    except ConfigError as e:
        raise ConfigError(f"serve args: {e}") from None


def build_app(args: dict) -> serve.Application:
    """Application builder for `serve run` (YAML `applications[].args` or `key=value` on the command line)."""
    a = parse_args(args)
    opts: dict = {"num_cpus": a.num_cpus}
    if a.num_gpus:
        opts["num_gpus"] = a.num_gpus
    return LLMServer.options(
        num_replicas=a.num_replicas, max_ongoing_requests=a.max_ongoing_requests, ray_actor_options=opts,
    ).bind(asdict(a))


def _wait_healthy(base_url: str, timeout_s: float) -> None:
    """serve.run returns when replicas are up; the HTTP proxy may need a moment more to route."""
    deadline, last = time.time() + timeout_s, None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=5) as r:
                if r.status == 200 and json.loads(r.read()).get("status") == "ok":
                    return
        except (urllib.error.URLError, OSError, ValueError) as e:
            last = e
        time.sleep(0.25)
    raise TimeoutError(f"Serve app at {base_url} not healthy after {timeout_s:.0f}s (last error: {last!r})")


def start_server(model_dir: str, model_name: str = "fullchain", port: int = 8000, host: str = "127.0.0.1",
                 num_replicas: int = 1, app_name: str = "fullchain", timeout_s: float = 180.0,
                 **serve_args) -> str:
    """Deploy the app on the connected Ray cluster (caller ran `cluster.connect()`); returns the base URL.

    `serve_args` are further `ServeArgs` fields (num_cpus, max_num_seqs, dtype, ...).
    """
    app = build_app({"model_dir": str(model_dir), "model_name": model_name, "num_replicas": num_replicas,
                     **serve_args})
    serve.start(http_options={"host": host, "port": port})
    actual = _proxy_port(port)
    if actual != port:
        raise RuntimeError(f"Serve is already running with its HTTP proxy on port {actual}, not {port}; "
                           f"call start_server(port={actual}) or stop_server() first")
    serve.run(app, name=app_name, route_prefix="/", blocking=False)
    base_url = f"http://{host}:{port}"
    _wait_healthy(base_url, timeout_s)
    return base_url


def _proxy_port(default: int) -> int:
    try:  # no public getter for the running proxy's options in Ray 2.60
        from ray.serve.context import _get_global_client

        return int(_get_global_client().http_config.port)
    except Exception:
        return default


def stop_server(app_name: str = "fullchain", shutdown_if_empty: bool = True) -> None:
    """Delete the app; with no apps left, shut Serve down too so the next start_server may pick a new port."""
    serve.delete(app_name)
    if shutdown_if_empty and not serve.status().applications:
        serve.shutdown()
