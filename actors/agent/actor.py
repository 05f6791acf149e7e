"""`ToolActor`: a thin Ray actor around one Ray-free tool: ours from `tools.py`, or one tool of an outside MCP
server or OpenAPI server (`registry.py`), connected from inside the actor."""
from __future__ import annotations

from typing import Any

import ray

from actors.agent.tools import TOOL_CLASSES, make_tool

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
    def __init__(self, tool_name: str, source: dict | None = None, **kw: Any):
        self._conn = None
        if source is None:
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
                **kw: Any) -> dict[str, "ray.actor.ActorHandle"]:
    """One ToolActor per tool, in order (the order of the specs sent to the model): ours by name, then every
    tool of each MCP server and OpenAPI server. A name offered twice is an error, not a silent shadowing."""
    for n in names:
        # Fail here, not later inside an actor constructor where the error surfaces on first use.
        if n not in TOOL_CLASSES:
            raise ValueError(f"unknown tool {n!r}; available tools: {sorted(TOOL_CLASSES)}")
    remote = server_tools(mcp_servers, openapi_servers)
    all_names = list(names) + [n for n, _ in remote]
    dup = sorted({n for n in all_names if all_names.count(n) > 1})
    if dup:
        raise ValueError(f"tools {dup} are offered twice (agent.tools and a server, or two servers); drop one")
    actors = {n: ToolActor.remote(n, **kw) for n in names}
    actors.update({n: ToolActor.remote(n, source=src) for n, src in remote})
    return actors


__all__ = ["ToolActor", "start_tools", "server_tools", "TOOL_NUM_CPUS"]
