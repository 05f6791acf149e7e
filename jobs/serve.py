"""`python -m jobs.serve`: Ray Serve replicas expose the fine-tuned model as an OpenAI-compatible API."""
from __future__ import annotations

import socket
import sys
import time

from jobs.runner import StageContext, main_for

APP_NAME = "fullchain"


def _port(requested: int) -> int:
    if requested:
        return requested
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_env_keys(cfg):
    """`cfg` (a ServeConfig) with the API keys of FULLCHAIN_API_KEY added to its `api_keys`."""
    from dataclasses import replace

    from cluster.env import settings

    extra = [k for k in settings().api_keys if k not in cfg.api_keys]
    return replace(cfg, api_keys=[*cfg.api_keys, *extra]) if extra else cfg


def build_app(args):
    """`serve run configs/serve.yaml`'s builder: `actors.serve.deployment.build_app` with FULLCHAIN_API_KEY's
    keys added."""
    from actors.serve.deployment import build_app as build, parse_args

    return build(with_env_keys(parse_args(args)))


def _start(ctx: StageContext, port: int) -> str:
    from dataclasses import replace

    from actors.serve.deployment import start_server

    # the console at /ui/ lists the runs beside this one
    cfg = with_env_keys(replace(ctx.cfg.serve, model=served_model(ctx), port=port,
                                runs_root=ctx.cfg.serve.runs_root or str(ctx.run_dir.resolve().parent)))
    root = start_server(cfg, host="127.0.0.1", app_name=APP_NAME)
    return root.rstrip("/") + "/v1"  # OpenAI clients take the /v1 root as base_url


def served_model(ctx: StageContext) -> str:
    spec = ctx.cfg.serve.model
    if spec == "finetune":
        return ctx.inputs("finetune")["hf"]
    import cluster
    from actors.model.registry import resolve_model

    return str(resolve_model(spec, cluster.model_cache()))


def run(ctx: StageContext) -> dict:
    import openai

    cfg = ctx.cfg.serve
    t0 = time.perf_counter()
    base_url = _start(ctx, _port(cfg.port))
    startup = time.perf_counter() - t0
    keys = with_env_keys(cfg).api_keys
    client = openai.OpenAI(base_url=base_url, api_key=keys[0] if keys else "EMPTY", max_retries=0, timeout=120)
    tools = _demo_tools(ctx) if cfg.demo_with_tools else None
    t1 = time.perf_counter()
    resp = client.chat.completions.create(
        model=cfg.model_name, messages=[{"role": "user", "content": cfg.demo_prompt}],
        max_tokens=cfg.demo_max_tokens, temperature=0.0, **({"tools": tools} if tools else {}))
    latency = time.perf_counter() - t1
    choice = resp.choices[0]
    demo = {"request": {"messages": [{"role": "user", "content": cfg.demo_prompt}], "temperature": 0.0,
                        "max_tokens": cfg.demo_max_tokens,
                        "tools": [t["function"]["name"] for t in tools] if tools else None},
            "response": {"content": choice.message.content, "finish_reason": choice.finish_reason,
                         "tool_calls": [tc.model_dump() for tc in (choice.message.tool_calls or [])],
                         "usage": resp.usage.model_dump() if resp.usage else None}}
    from ray import serve

    replica = serve.get_deployment_handle("LLMServer", app_name=APP_NAME).stats.remote().result()
    return {"outputs": {"base_url": base_url, "model_name": cfg.model_name, "model_dir": served_model(ctx),
                        "app_name": APP_NAME, "demo_chat": demo},
            "metrics": {"startup_s": round(startup, 2), "demo_latency_s": round(latency, 3),
                        "demo_completion_tokens": resp.usage.completion_tokens if resp.usage else None,
                        "dtype": replica.get("dtype"), "cpu_capability": replica.get("cpu_capability")}}


def _demo_tools(ctx: StageContext) -> list[dict] | None:
    """The tool specs of the synthetic task (what the model was fine-tuned with): the shared contract's."""
    from actors.tooltask import TOOLS

    return TOOLS


def on_skip(ctx: StageContext, todo: list[str]) -> None:
    """A completed serve stage from an earlier process has no live endpoint: bring it back for the agent."""
    from jobs.runner import stage_fingerprint

    later = todo[todo.index("serve") + 1:]
    agent_pending = "agent" in later and not ctx.manifest.is_complete(
        "agent", stage_fingerprint(ctx.cfg, ctx.manifest, "agent"))
    if agent_pending and not _alive(ctx):
        url = ctx.inputs("serve")["base_url"]
        port = int(url.split("://", 1)[1].split("/")[0].rsplit(":", 1)[1])
        new_url = _start(ctx, port)
        ctx.manifest.data["stages"]["serve"]["outputs"]["base_url"] = new_url
        ctx.manifest.save()


def _alive(ctx: StageContext) -> bool:
    import httpx

    url = ctx.inputs("serve")["base_url"]
    try:
        return httpx.get(url.rstrip("/") + "/models", timeout=2).status_code == 200
    except httpx.HTTPError:  # refused, timed out, reset: not serving
        return False


def stop() -> None:
    from actors.serve.deployment import stop_server

    stop_server(APP_NAME)


def main(argv: list[str] | None = None, prog: str = "python -m jobs.serve") -> int:
    main_for(["serve"], prog, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
