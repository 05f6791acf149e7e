"""The web console and the agent route, added to the Serve app's FastAPI app.

    GET  /ui/                      the console: chat (streaming, tools inline, model and adapter picker) and runs
    GET  /ui/static/<file>         its HTML, JS and CSS, shipped in this package (console/): no CDN, no build step
    GET  /ui/api/runs              the run folders under the app's runs root
    GET  /ui/api/runs/<name>       one run: stages and times, curves (metrics.jsonl), eval table, data card, lineage
    GET  /v1/agent                 the agent's tools and style (404 where the app has no agent)
    POST /v1/agent/chat            one user turn through the agent's tool loop, run on the server; server-sent events

The page shell and its static files are open (they hold no data); every /ui/api and /v1 route is behind the app's
API key when one is set, and the page sends the key the user types (kept in the browser's localStorage). The run
data comes from actors/common/runs.py, the one reader of run folders; the agent is a deployment handle the job
that built the app passes in (the serve stage never imports the agent stage).
"""
from __future__ import annotations

import re
from pathlib import Path

from fastapi import FastAPI, Query
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from actors.serve.protocol import AgentChatRequest

STATIC = Path(__file__).resolve().parent / "console"
_RUN_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def is_open(path: str) -> bool:
    """Routes served without the API key: the health check and the console's static shell."""
    return path in ("/health", "/ui", "/ui/", "/favicon.ico") or path.startswith("/ui/static/")


def add_console(app: FastAPI, serving, runs_root: str | None, agent=None) -> None:
    """The console's routes on `app` (`serving`: the app's OpenAIServing; `agent`: an AgentServer handle or None)."""
    from actors.serve.openai_api import APIError

    root = Path(runs_root).expanduser().resolve() if runs_root else None

    def run_dir(name: str) -> Path:
        if root is None:
            raise APIError("this app has no runs folder; start it with `fullchain ui RUN_DIR` or set serve.runs_root",
                           status=404, code="not_found")
        if not _RUN_NAME.match(name) or name in (".", ".."):
            raise APIError(f"run {name!r}: a run is named by its folder (letters, digits, . _ -)", param="name")
        return root / name

    @app.get("/ui", include_in_schema=False)
    async def ui_redirect():
        return RedirectResponse("/ui/")

    @app.get("/ui/", include_in_schema=False)
    async def ui_index():
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():   # browsers ask for it on every page; no icon, and no 401/404 in their consoles
        return Response(status_code=204)

    @app.get("/ui/api/config")
    async def ui_config():
        info = await agent.info.remote() if agent is not None else None
        return {"model": serving.model_name, "runs_root": str(root) if root else None, "agent": info}

    @app.get("/ui/api/runs")
    async def ui_runs():
        from actors.common.runs import list_runs

        return {"root": str(root) if root else None, "runs": list_runs(root) if root and root.is_dir() else []}

    @app.get("/ui/api/runs/{name}")
    async def ui_run(name: str):
        from actors.common.runs import is_run, run_view

        d = run_dir(name)
        if not is_run(d):
            raise APIError(f"no run {name!r} under {root} (GET /ui/api/runs lists them)", status=404,
                           code="not_found")
        return run_view(d)

    @app.get("/ui/api/lineage")
    async def ui_lineage(model: str = Query(..., description="a model id of GET /v1/models")):
        card = next((c for c in serving.models()["data"] if c["id"] == model), None)
        if card is None:
            raise APIError(f"model {model!r} is not served here (GET /v1/models lists them)", param="model",
                           status=404, code="model_not_found")
        return {"id": model, "lineage": card.get("lineage")}

    add_agent_routes(app, serving, agent)


def add_agent_routes(app: FastAPI, serving, agent) -> None:
    from actors.serve.openai_api import APIError

    def need_agent():
        if agent is None:
            raise APIError("this app runs no agent; `fullchain ui RUN_DIR` starts one with the run's agent tools",
                           status=404, code="not_found")

    @app.get("/v1/agent")
    async def agent_info():
        need_agent()
        return await agent.info.remote()

    @app.post("/v1/agent/chat")
    async def agent_chat(req: AgentChatRequest):
        need_agent()
        serving.resolve_model(req.model)   # 404 in OpenAI's shape before the stream starts
        body = req.model_dump(exclude_none=True)
        body["model"] = req.model or serving.model_name
        tools = (await agent.info.remote())["tools"]
        unknown = [t for t in req.tools or [] if t not in tools]
        if unknown:
            raise APIError(f"tools {unknown} are not this agent's; it has {tools}", param="tools")
        offered = req.tools or tools
        if req.tool_choice not in ("auto", "required", "none", *offered):
            raise APIError(f"tool_choice {req.tool_choice!r}: use auto, required, none or one of the offered tools "
                           f"{offered}", param="tool_choice")

        async def events():
            async for ev in agent.options(stream=True).run.remote(body):
                yield ev
        return serving._stream(events())
