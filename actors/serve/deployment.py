"""Ray Serve shell around the OpenAI API: an `OpenAIIngress` in front of `LLMServer` engine replicas.

    HTTP proxy -> OpenAIIngress (FastAPI app: tokenize, chat template, tools, OpenAI shapes)
               -> LLMServer replicas (model + engine; `generate` streams RequestOutput batches, `complete`)

The args are one `ServeConfig` (actors/serve/config.py; the engine's settings under `engine:`). Each `LLMServer`
loads the HF folder once and owns one engine (`make_engine`, by `engine.name`) behind an `AsyncEngine`. The
ingress holds no model: it calls the engine deployment through a handle and, when the replica serving a request
dies before the request produced any output (a non-streaming request, or a stream that has sent no byte), sends it
again to another replica. Replicas drain on shutdown: in-flight requests get `graceful_shutdown_timeout_s` to
finish.

    serve run configs/serve.yaml                           # from the repo root
    serve run actors.serve.deployment:build_app model=runs/demo/finetune/hf
    base_url = start_server(ServeConfig(model="runs/demo/finetune/hf", port=8000))  # a driver, after connect()
"""
from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from dataclasses import replace

from ray import serve

from actors.common.config import ConfigError, check, from_dict
from actors.serve.config import ServeConfig, resolve_model_dir


@serve.deployment
class LLMServer:
    """One engine replica: the model, its KV cache and the continuous-batching loop."""

    def __init__(self, cfg: ServeConfig):
        import torch

        from actors.common.memory import keep_freed_memory_in_heap
        from actors.engine import AsyncEngine, make_engine
        from actors.model.hf import load_hf
        from actors.model.tokenizer import load_tokenizer
        from cluster.hardware import precision_info, torch_dtype

        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        if cfg.device == "cpu":
            keep_freed_memory_in_heap()  # a process setting: the step's multi-MB temporaries stay in the heap
        dtype = torch_dtype(cfg.dtype, cfg.device, field="serve.dtype")
        self.precision = precision_info(dtype, cfg.device)
        model = load_hf(cfg.model, dtype=dtype, device=cfg.device)
        tokenizer = load_tokenizer(cfg.model)
        self.engine = AsyncEngine(make_engine(model, tokenizer, cfg.engine), thread_niceness=cfg.engine_niceness)
        self.replica_id = serve.get_replica_context().replica_id.unique_id

    async def generate(self, prompt_token_ids: list[int], params):
        """Streams lists of RequestOutput deltas: everything ready since the last message (a slow consumer costs
        fewer messages, not more), without the cumulative `token_ids` / `text`, which grew every message by the
        whole completion so far."""
        async for batch in self.engine.generate_batches(prompt_token_ids, params):
            yield [replace(o, token_ids=[], text="") for o in batch]

    async def complete(self, prompt_token_ids: list[int], params):
        return await self.engine.complete(prompt_token_ids, params)

    async def stats(self) -> dict:
        """The engine's counters and metrics, this replica's id and the dtype `serve.dtype` resolved to."""
        return {**await self.engine.stats(), **self.precision, "replica": self.replica_id}

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

    async def stats(self) -> list[dict]:
        """Every live replica's `stats()` (a replica that does not answer in 10 s is left out)."""
        try:
            out = await self.handle.broadcast("stats").results_async(timeout_s=10, return_exceptions=True)
        except TimeoutError:
            return []
        return [r for r in out if isinstance(r, dict)]

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
    def __init__(self, engine_handle, cfg: ServeConfig, agent_handle=None):
        from actors.model.tokenizer import load_tokenizer
        from actors.serve.openai_api import create_app

        from actors.serve.adapters import AdapterRegistry

        tokenizer = load_tokenizer(cfg.model)
        client = EngineClient(engine_handle, cfg.max_len(), cfg.request_retries)
        adapters = AdapterRegistry(cfg.model_name, cfg.model)
        for name, path in cfg.lora_modules.items():
            try:
                adapters.add(name, path)
            except ValueError as e:
                raise ConfigError(f"serve.lora_modules.{name}: {e}") from None
        # not `self.app`: the ingress wrapper owns that name (a read-only property)
        self.api = create_app(client, tokenizer, cfg.model_name, cfg.guided_tool_calls, adapters, cfg.api_keys,
                              model_dir=cfg.model, console=cfg.console, runs_root=cfg.runs_root or None,
                              agent=agent_handle)
        self.grpc = None
        if cfg.grpc_port:  # a task on this replica's event loop: the API's logic, no extra hop
            from actors.serve.grpc_api import start_grpc

            self.grpc = asyncio.get_running_loop().create_task(
                start_grpc(self.api.state.serving, cfg.api_keys, cfg.grpc_port))

    def __serve_build_asgi_app__(self):
        return self.api

    def check_health(self) -> None:
        if self.grpc is not None and self.grpc.done() and not self.grpc.cancelled() and self.grpc.exception():
            raise RuntimeError(f"the gRPC server failed: {self.grpc.exception()!r}")


def parse_args(args: ServeConfig | dict | None) -> ServeConfig:
    """A `ServeConfig` from `serve run` args (YAML `applications[].args`, nested `engine:` mapping; `key=value` on
    the command line) or a dict of its fields; errors name the key (`serve.engine.kv_cache_memory: ...`)."""
    if isinstance(args, ServeConfig):
        return args
    return from_dict(ServeConfig, _nest_dotted(dict(args or {})), prefix="serve")


def _nest_dotted(args: dict) -> dict:
    """`engine.max_num_seqs=8` on the `serve run` command line arrives as a dotted key: nest it."""
    out: dict = {}
    for k, v in args.items():
        if isinstance(k, str) and k.startswith("engine."):
            engine = out.setdefault("engine", {})
            if not isinstance(engine, dict):
                raise ConfigError(f"serve.{k}: serve.engine is not a mapping")
            engine[k.split(".", 1)[1]] = v
        elif k == "engine" and isinstance(v, dict):
            out.setdefault("engine", {}).update(v)
        else:
            out[k] = v
    return out


def check_adapters(cfg: ServeConfig) -> ServeConfig:
    """`cfg` with `lora_modules` as absolute folders, each checked against the served model by the registry the
    ingress uses (before any replica starts: an error names `serve.lora_modules.<name>` and the fix)."""
    from actors.serve.adapters import AdapterRegistry

    registry = AdapterRegistry(cfg.model_name, cfg.model)
    for name, path in cfg.lora_modules.items():
        try:
            registry.add(name, path)
        except ValueError as e:
            raise ConfigError(f"serve.lora_modules.{name}: {e}") from None
    return replace(cfg, lora_modules={name: ref.path for name, ref in registry.adapters.items()})


def build_app(args: ServeConfig | dict, agent: serve.Application | None = None) -> serve.Application:
    """Application builder for `serve run` (YAML `applications[].args` or `key=value` on the command line).
    `agent`: a bound agent deployment (actors.agent.server.AgentServer) for /v1/agent/chat, bound by the job that
    composes the app."""
    from ray.serve.config import RequestRouterConfig

    a = check_adapters(resolve_model_dir(parse_args(args)))
    opts: dict = {"num_cpus": a.num_cpus}
    if a.num_gpus:
        opts["num_gpus"] = a.num_gpus
    scaling: dict = ({"autoscaling_config": a.autoscaling} if a.autoscaling is not None
                     else {"num_replicas": a.num_replicas})
    if a.prefix_routing:
        from actors.serve.router import PrefixRouter

        scaling["request_router_config"] = RequestRouterConfig(
            request_router_class=PrefixRouter,
            request_router_kwargs={"tokens": a.prefix_routing_tokens, "imbalance": a.prefix_routing_imbalance})
    engine = LLMServer.options(
        max_ongoing_requests=a.max_ongoing_requests, ray_actor_options=opts,
        graceful_shutdown_timeout_s=a.graceful_shutdown_timeout_s, **scaling,
    ).bind(a)
    most = (a.autoscaling or {}).get("max_replicas", a.num_replicas)
    # the ingress only tokenizes and reshapes: no CPU reserved, so it never blocks an engine replica's placement
    return OpenAIIngress.options(ray_actor_options={"num_cpus": 0},
                                 max_ongoing_requests=most * a.max_ongoing_requests,
                                 ).bind(engine, a, agent)


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


def start_server(cfg: ServeConfig | dict, host: str = "127.0.0.1", app_name: str = "fullchain",
                 timeout_s: float = 180.0, agent: serve.Application | None = None) -> str:
    """Deploy the app on the connected Ray cluster (caller ran `cluster.connect()`) on `cfg.port`; returns the
    base URL. `cfg`: a `ServeConfig`, or a dict of its fields (`{"model": DIR, "engine": {...}}`). `agent`: see
    `build_app`."""
    cfg = parse_args(cfg)
    check(cfg.port != 0, "serve.port", "start_server needs a port: pick a free one first (the pipeline does)")
    port = cfg.port
    app = build_app(cfg, agent)
    if cfg.grpc_port:
        from actors.serve.grpc_api import stubs

        stubs()  # generated once here (a source checkout), not by each replica
    serve.start(http_options={"host": host, "port": port})
    actual = _proxy_port(port)
    if actual != port:
        raise RuntimeError(f"Serve is already running with its HTTP proxy on port {actual}, not {port}; "
                           f"call start_server(port={actual}) or stop_server() first")
    serve.run(app, name=app_name, route_prefix="/", blocking=False)
    base_url = f"http://{host}:{port}"
    _wait_healthy(base_url, timeout_s)
    return base_url


def _proxy_port(requested: int) -> int:
    """The port the running Serve HTTP proxy listens on (serve.start keeps an earlier proxy's options)."""
    from ray.serve.context import _get_global_client  # no public getter for the proxy's options in Ray 2.60
    from ray.serve.exceptions import RayServeException

    try:
        return int(_get_global_client().http_config.port)
    except RayServeException as e:
        raise RuntimeError(f"cannot read the Serve HTTP proxy's port after serve.start (asked for {requested}): "
                           f"{e}; is the Serve controller running (ray.serve.status())?") from e
    except AttributeError as e:  # a Ray version that moved the private attribute
        raise RuntimeError(f"cannot read the Serve HTTP proxy's port from this Ray version ({e}); update "
                           "actors.serve.deployment._proxy_port for it") from e


def stop_server(app_name: str = "fullchain", shutdown_if_empty: bool = True) -> None:
    """Delete the app; with no apps left, shut Serve down too so the next start_server may pick a new port."""
    serve.delete(app_name)
    if shutdown_if_empty and not serve.status().applications:
        serve.shutdown()
