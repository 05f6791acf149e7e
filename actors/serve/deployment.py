"""Ray Serve shell around the OpenAI API: an `OpenAIIngress` in front of `LLMServer` engine replicas.

    HTTP proxy -> OpenAIIngress (FastAPI app: tokenize, chat template, tools, OpenAI shapes)
               -> LLMServer replicas (model + engine; `generate` streams RequestOutput batches, `complete`)

Each `LLMServer` loads the HF folder once and owns one engine (from `make_engine`, by the `engine` name in the
args) behind an `AsyncEngine`. The ingress holds no model: it calls the engine deployment through a handle and,
when the replica serving a request dies before the request produced any output (a non-streaming request, or a
stream that has sent no byte), sends it again to another replica. Replicas drain on shutdown: in-flight requests
get `graceful_shutdown_timeout_s` to finish.

    serve run configs/serve.yaml                           # from the repo root
    serve run actors.serve.deployment:build_app model_dir=runs/demo/finetune/hf
    base_url = start_server("runs/demo/finetune/hf", port=8000)  # from a job driver after cluster.connect()
"""
from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from ray import serve

from actors.common.config import ConfigError, check, from_dict

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class ServeArgs:
    model_dir: str                    # HF folder (config.json, model.safetensors, tokenizer.json), registry name or .gguf
    model_cache: str = "runs/models"  # where a registry name / .gguf is imported (once)
    model_name: str = "fullchain"     # the `model` clients must send
    num_replicas: int = 1
    num_cpus: float = 1.0             # per engine replica
    num_gpus: float = 0.0             # per engine replica; > 0 also puts the model on cuda
    max_ongoing_requests: int = 256   # per engine replica; beyond max_num_seqs they wait in the engine's queue
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    torch_threads: int = 0            # 0 = torch's default (Ray sets OMP threads = num_cpus)
    # the engine (actors/serve/engine.py EngineConfig)
    engine: str = "paged"             # a key of engine.ENGINES or "package.module:Class"
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    kv_cache_memory: Any = "2GiB"     # bytes ("2GiB") or a fraction (0, 1] of free device memory
    enable_prefix_caching: bool = True
    max_model_len: int = 0            # 0 = the model's max_position_embeddings
    # failure handling
    engine_niceness: int | None = 0   # nice value of the engine's step threads (Ray starts workers at 15; null keeps it)
    request_retries: int = 3          # resends of a request whose replica died before it produced output
    graceful_shutdown_timeout_s: float = 30.0

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
        check(self.torch_threads >= 0, "torch_threads", f"must be >= 0, got {self.torch_threads}")
        check(self.request_retries >= 0, "request_retries", f"must be >= 0, got {self.request_retries}")
        check(self.engine_niceness is None or -20 <= self.engine_niceness <= 19, "engine_niceness",
              f"must be a nice value in [-20, 19] or null (keep Ray's), got {self.engine_niceness}")
        check(self.graceful_shutdown_timeout_s >= 0, "graceful_shutdown_timeout_s",
              f"must be >= 0 seconds, got {self.graceful_shutdown_timeout_s}")
        self.engine_config()  # validates the engine's fields, naming them

    def engine_config(self):
        from actors.serve.engine import EngineConfig

        names = {f.name for f in fields(EngineConfig)}
        return EngineConfig(**{k: v for k, v in asdict(self).items() if k in names})

    def max_len(self) -> int:
        ctx = int(json.loads((Path(self.model_dir) / "config.json").read_text())["max_position_embeddings"])
        return min(ctx, self.max_model_len) if self.max_model_len else ctx


@serve.deployment
class LLMServer:
    """One engine replica: the model, its KV cache and the continuous-batching loop."""

    def __init__(self, args: dict):
        import torch

        from actors.model.hf import load_hf
        from actors.model.tokenizer import load_tokenizer
        from actors.serve.engine import AsyncEngine, make_engine

        a = ServeArgs(**args)
        if a.torch_threads:
            torch.set_num_threads(a.torch_threads)
        device = "cuda" if a.num_gpus > 0 else "cpu"
        model = load_hf(a.model_dir, dtype=getattr(torch, a.dtype), device=device)
        tokenizer = load_tokenizer(a.model_dir)
        self.engine = AsyncEngine(make_engine(a.engine, model, tokenizer, a.engine_config()),
                                  thread_niceness=a.engine_niceness)

    async def generate(self, prompt_token_ids: list[int], params):
        """Streams lists of RequestOutput deltas: everything ready since the last message (a slow consumer costs
        fewer messages, not more), without the cumulative `token_ids` / `text`, which grew every message by the
        whole completion so far."""
        async for batch in self.engine.generate_batches(prompt_token_ids, params):
            yield [replace(o, token_ids=[], text="") for o in batch]

    async def complete(self, prompt_token_ids: list[int], params):
        return await self.engine.complete(prompt_token_ids, params)

    def stats(self) -> dict:
        return self.engine.engine.stats() if hasattr(self.engine.engine, "stats") else {}

    def check_health(self) -> None:
        """Serve restarts a replica whose engine loop died (it would hang every request)."""
        err = self.engine.loop_error()
        if err is not None:
            raise RuntimeError(f"engine loop died: {err!r}")


def _replica_died(e: BaseException) -> bool:
    from ray.exceptions import ActorUnavailableError, RayActorError

    return isinstance(e, (RayActorError, ActorUnavailableError))


class EngineClient:
    """The engine interface the API needs, over the engine deployment's handle, with resends on replica death."""

    def __init__(self, handle, max_model_len: int, retries: int, backoff_s: float = 0.5):
        self.handle, self.max_model_len, self.retries, self.backoff_s = handle, max_model_len, retries, backoff_s

    async def generate(self, prompt_token_ids: list[int], params):
        for attempt in range(self.retries + 1):
            started = False
            gen = self.handle.options(stream=True).generate.remote(prompt_token_ids, params)
            try:
                async for batch in gen:
                    started = True
                    for out in batch:
                        yield out
                return
            except Exception as e:
                if started or attempt == self.retries or not _replica_died(e):
                    raise
            except BaseException:  # the consumer went away (client disconnected): stop the replica's work too
                gen.cancel()
                raise
            await asyncio.sleep(self.backoff_s * (attempt + 1))  # let Serve drop the dead replica

    async def complete(self, prompt_token_ids: list[int], params):
        for attempt in range(self.retries + 1):
            try:
                return await self.handle.complete.remote(prompt_token_ids, params)
            except Exception as e:
                if attempt == self.retries or not _replica_died(e):
                    raise
            await asyncio.sleep(self.backoff_s * (attempt + 1))


@serve.deployment
@serve.ingress()
class OpenAIIngress:
    def __init__(self, engine_handle, args: dict):
        from actors.model.tokenizer import load_tokenizer
        from actors.serve.openai_api import create_app

        a = ServeArgs(**args)
        tokenizer = load_tokenizer(a.model_dir)
        client = EngineClient(engine_handle, a.max_len(), a.request_retries)
        # not `self.app`: the ingress wrapper owns that name (a read-only property)
        self.api = create_app(client, tokenizer, a.model_name)

    def __serve_build_asgi_app__(self):
        return self.api


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
    engine = LLMServer.options(
        num_replicas=a.num_replicas, max_ongoing_requests=a.max_ongoing_requests, ray_actor_options=opts,
        graceful_shutdown_timeout_s=a.graceful_shutdown_timeout_s,
    ).bind(asdict(a))
    # the ingress only tokenizes and reshapes: no CPU reserved, so it never blocks an engine replica's placement
    return OpenAIIngress.options(ray_actor_options={"num_cpus": 0},
                                 max_ongoing_requests=a.num_replicas * a.max_ongoing_requests,
                                 ).bind(engine, asdict(a))


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
