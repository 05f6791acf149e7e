"""`ToolActor`: a thin Ray actor around one Ray-free tool: ours from `tools.py`, or one tool of an outside MCP
server or OpenAPI server (`registry.py`), connected from inside the actor."""
from __future__ import annotations

from typing import Any

import ray

from actors.agent.tools import TOOL_CLASSES, Tool, ToolError, make_tool

# Tools are pure CPU micro-work; a fraction of a CPU lets them coexist with trainer/serve actors on 2 cores.
TOOL_NUM_CPUS = 0.1


def remote_tool(source: dict, name: str):
    """Tool `name` of an outside server: source {"mcp": url or [command, args...]} or {"openapi": url}.
    Returns (tool, what to close with it)."""
    from actors.agent.registry import MCPToolset, RemoteTool

    if "mcp" in source:
        ts = MCPToolset(source["mcp"])
        found = {t.name: t for t in ts.tools}
        if name not in found:
            ts.close()
            raise ValueError(f"MCP server {source['mcp']} has no tool {name!r}; it has {sorted(found)}")
        return found[name], ts
    found = {t.name: t for t in RemoteTool.from_openapi(source["openapi"])}
    if name not in found:
        raise ValueError(f"OpenAPI server {source['openapi']} has no tool {name!r}; it has {sorted(found)}")
    return found[name], None


@ray.remote(num_cpus=TOOL_NUM_CPUS)
class ToolActor:
    def __init__(self, tool_name: str, source: dict | None = None, tool: Tool | None = None, **kw: Any):
        self._conn = None
        if tool is not None:      # a tool built by the caller (a planner's Delegate)
            self.tool = tool
        elif source is None:
            self.tool = make_tool(tool_name, **kw)
        else:
            self.tool, self._conn = remote_tool(source, tool_name)

    def spec(self) -> dict:
        return self.tool.spec()

    def call(self, args: Any) -> dict:
        # Tool.call never raises: failures come back as {"ok": False, "error": ...}.
        return self.tool.call(args).to_dict()


def server_tools(mcp_servers: list = (), openapi_servers: list[str] = ()) -> list[tuple[str, dict]]:
    """(tool name, source) of every tool the outside servers offer, listed once here on the driver."""
    from actors.agent.registry import MCPToolset, RemoteTool

    out = []
    for server in mcp_servers:
        with MCPToolset(server) as ts:
            out += [(t.name, {"mcp": server}) for t in ts.tools]
    for url in openapi_servers:
        out += [(t.name, {"openapi": url}) for t in RemoteTool.from_openapi(url)]
    return out


def start_tools(names: list[str], mcp_servers: list = (), openapi_servers: list[str] = (),
                options: dict[str, dict] | None = None) -> dict[str, "ray.actor.ActorHandle"]:
    """One ToolActor per tool, in order (the order of the specs sent to the model): ours by name (built with
    `options[name]`), then every tool of each MCP server and OpenAPI server. A name offered twice is an error,
    not a silent shadowing."""
    options = options or {}
    for n in names:
        # Fail here, not later inside an actor constructor where the error surfaces on first use.
        if n not in TOOL_CLASSES:
            raise ValueError(f"unknown tool {n!r}; available tools: {sorted(TOOL_CLASSES)}")
    remote = server_tools(mcp_servers, openapi_servers)
    all_names = list(names) + [n for n, _ in remote]
    dup = sorted({n for n in all_names if all_names.count(n) > 1})
    if dup:
        raise ValueError(f"tools {dup} are offered twice (agent.tools and a server, or two servers); drop one")
    actors = {n: ToolActor.remote(n, **options.get(n, {})) for n in names}
    actors.update({n: ToolActor.remote(n, source=src) for n, src in remote})
    return actors




@ray.remote(num_cpus=TOOL_NUM_CPUS)
class AgentSession:
    """One agent conversation as an actor: its memory (the messages so far) lives here between `ask` calls.
    `client` is an OpenAI client (or anything with its chat.completions.create) or the server's base URL."""

    def __init__(self, style: str, client: Any, model: str, tools: dict[str, Any], **kw: Any):
        from actors.agent.loop import make_client
        from actors.agent.styles import STYLES

        client = make_client(client) if isinstance(client, str) else client
        self.agent = STYLES[style](client, model, tools, **kw)
        self.history: list[dict] = []
        self.transcripts: list[dict] = []

    def ask(self, prompt: str) -> dict:
        tr = self.agent.run(prompt, history=self.history)
        self.history = tr.messages
        self.transcripts.append(tr.to_dict())
        return {"answer": tr.final_answer, "stopped_reason": tr.stopped_reason, "steps": tr.n_steps,
                "markdown": tr.to_markdown()}

    def transcript(self) -> list[dict]:
        return self.transcripts


class Delegate(Tool):
    """A planner's tool: hand a sub-task to one of its worker agents (AgentSession actors) and return its answer.
    Multi-agent by composition: the planner is any agent whose tools include this one (in a ToolActor:
    `ToolActor.remote("delegate", tool=Delegate(workers))`)."""

    name = "delegate"
    description = "Hand a self-contained sub-task to a worker agent; returns its answer."

    def __init__(self, workers: dict[str, Any], timeout_s: float = 600.0):
        self.workers, self.timeout_s = dict(workers), timeout_s
        self.parameters = {"type": "object", "required": ["worker", "task"], "properties": {
            "worker": {"type": "string", "enum": list(self.workers), "description": "which worker"},
            "task": {"type": "string", "description": "the sub-task, with every number it needs"}}}

    def run(self, worker: str, task: str) -> str:
        if worker not in self.workers:
            raise ToolError(f"no worker {worker!r}; workers: {list(self.workers)}")
        out = ray.get(self.workers[worker].ask.remote(task), timeout=self.timeout_s)
        if out["stopped_reason"] != "answer":
            raise ToolError(f"worker {worker!r} stopped without an answer ({out['stopped_reason']})")
        return str(out["answer"])


__all__ = ["AgentSession", "Delegate", "ToolActor", "start_tools", "server_tools", "TOOL_NUM_CPUS"]
