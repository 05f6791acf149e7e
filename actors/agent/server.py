"""The agent route of a Serve app: the tool loop run server-side, on the agents' own tools (ToolActors: the
calculator, the sandboxed python, search_docs, MCP / OpenAPI servers' tools), against the app's own OpenAI API.

    POST /v1/agent/chat {"model": "fullchain:demo", "messages": [...], "tool_choice": "auto"}
      -> server-sent events: {"type": "reply", ...} per model reply (its text and the calls it makes),
         {"type": "tool_result", ...} per call once its tool answered, {"type": "done", ...} at the end

The browser never runs a tool. `AgentChat` is the Ray-free logic (one `Agent` per conversation turn, events
from its hooks); `AgentServer` is the Serve deployment the app's ingress streams from (the job that builds the
app binds it and hands its handle to the ingress: the serve stage never imports this one).
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from ray import serve

from actors.agent.config import AgentConfig
from actors.agent.loop import StepRecord, ToolCallRecord, Transcript, make_client


def _reply_event(rec: StepRecord) -> dict:
    return {"type": "reply", "step": rec.index, "content": rec.content, "finish_reason": rec.finish_reason}


def _call_event(rec: ToolCallRecord, step: int) -> dict:
    return {"type": "tool_result", "step": step, "id": rec.id, "name": rec.name, "arguments": rec.arguments,
            "valid": rec.valid, "ok": rec.ok, "result": rec.result if rec.ok else None, "error": rec.error}


class AgentChat:
    """Runs one conversation turn of the configured agent style with the given tools, calling `emit(event)` as it
    goes. `tools`: {name: ToolActor handle}."""

    def __init__(self, cfg: AgentConfig, base_url: str, tools: dict[str, Any], api_key: str = "EMPTY"):
        self.cfg, self.tools = cfg, dict(tools)
        self.client = make_client(base_url, timeout_s=cfg.request_timeout_s, api_key=api_key)

    def info(self) -> dict:
        return {"tools": list(self.tools), "style": self.cfg.style, "max_steps": self.cfg.max_steps}

    def run(self, req: dict, emit: Callable[[dict], None]) -> Transcript:
        """`req`: a validated request (actors/serve/protocol.py's AgentChatRequest as a dict): model, messages,
        temperature, max_tokens, max_steps, tool_choice, tools."""
        from actors.agent.styles import STYLES

        names = req.get("tools") or list(self.tools)
        unknown = [n for n in names if n not in self.tools]
        if unknown:
            raise ValueError(f"tools: {unknown} are not served here; this agent has {list(self.tools)}")
        steps: dict[int, int] = {}

        def hook(event: str, payload: Any) -> None:
            if event == "reply":
                steps["last"] = payload.index
                emit(_reply_event(payload))
            elif event == "tool_call":
                emit(_call_event(payload, steps.get("last", 0)))

        agent = STYLES[self.cfg.style](
            self.client, req["model"], {n: self.tools[n] for n in names},
            max_steps=req.get("max_steps") or self.cfg.max_steps, temperature=req.get("temperature", 0.0),
            max_tokens=req.get("max_tokens") or self.cfg.max_tokens, tool_timeout_s=self.cfg.tool_timeout_s,
            hooks=[hook], tool_choice=req.get("tool_choice") or "auto")
        tr = agent.run([dict(m) for m in req["messages"]])
        emit({"type": "done", "final_answer": tr.final_answer, "stopped_reason": tr.stopped_reason,
              "steps": tr.n_steps, "messages": tr.messages})
        return tr


async def stream_events(run: Callable[[Callable[[dict], None]], Any]) -> AsyncIterator[dict]:
    """The events `run(emit)` emits from a worker thread (the agent loop blocks on HTTP and tool calls), as an
    async iterator; an exception in `run` ends the stream with an `error` event."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()
    end = object()

    def work() -> None:
        try:
            run(lambda ev: loop.call_soon_threadsafe(q.put_nowait, ev))
        except Exception as e:  # noqa: BLE001 - reported in-band: the response headers are already sent
            loop.call_soon_threadsafe(q.put_nowait, {"type": "error", "message": f"{type(e).__name__}: {e}"})
        finally:
            loop.call_soon_threadsafe(q.put_nowait, end)

    threading.Thread(target=work, name="agent-turn", daemon=True).start()
    while (ev := await q.get()) is not end:
        yield ev


@serve.deployment(ray_actor_options={"num_cpus": 0})
class AgentServer:
    """The tool actors and the loop; its model calls go through the app's HTTP API (`base_url`, .../v1)."""

    def __init__(self, cfg: AgentConfig, base_url: str, api_key: str = "EMPTY"):
        from actors.agent.actor import start_tools

        self.chat = AgentChat(cfg, base_url, start_tools(cfg.tools, cfg.mcp_servers, cfg.openapi_servers,
                                                         cfg.tool_options), api_key)

    async def info(self) -> dict:
        return self.chat.info()

    async def run(self, req: dict):
        async for ev in stream_events(lambda emit: self.chat.run(req, emit)):
            yield ev


__all__ = ["AgentChat", "AgentServer", "stream_events"]
