"""The tool registry (actors/agent/registry.py): tools from signatures and JSON Schema, exported as OpenAI tools,
an OpenAPI tool server and an MCP server (stdio and streamable HTTP), and outside servers' tools imported back.
Servers are real (uvicorn on 127.0.0.1, a `python -m jobs.tools mcp` subprocess) and the MCP client is the
official `mcp` SDK's."""
from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Literal

import pytest

from conftest import REPO, free_port


def weather(city: str, days: int = 1, units: Literal["c", "f"] = "c", hours: list[int] | None = None) -> dict:
    """Forecast for a city.

    Args:
        city: the city's name,
            e.g. Paris
        days (int): how many days ahead
        units: c or f
    """
    if days > 7:
        raise ValueError("at most 7 days ahead")
    return {"city": city, "days": days, "units": units, "hours": hours or []}


def area(width: float, height: float) -> float:
    """Area of a rectangle.

    :param width: in metres
    :param height: in metres
    """
    return width * height


@pytest.fixture(scope="module")
def registry():
    from actors.agent.registry import SchemaTool, ToolRegistry
    from actors.agent.tools import Calculator

    reg = ToolRegistry([Calculator()])
    reg.add(weather)
    reg.add(area)
    reg.add(SchemaTool("shout", "Upper-case a text.", {"type": "object", "properties": {"text": {"type": "string"}},
                                                       "required": ["text"]}, lambda a: a["text"].upper()))
    return reg


class _Uvicorn:
    """An ASGI app served on 127.0.0.1 from a thread of this process."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def test_schemas_come_from_signatures_and_docstrings(registry):
    from actors.agent.registry import FunctionTool, ToolRegistry

    w = registry["weather"].parameters
    assert w["required"] == ["city"]
    assert w["properties"]["city"] == {"type": "string", "description": "the city's name, e.g. Paris"}
    assert w["properties"]["days"] == {"type": "integer", "description": "how many days ahead", "default": 1}
    assert w["properties"]["units"]["enum"] == ["c", "f"]
    assert w["properties"]["hours"]["type"] == "array" and w["properties"]["hours"]["items"] == {"type": "integer"}
    assert registry["weather"].description == "Forecast for a city."
    assert registry["area"].parameters["properties"]["width"] == {"type": "number", "description": "in metres"}
    assert [t["function"]["name"] for t in registry.openai_tools()] == ["calculator", "weather", "area", "shout"]
    assert registry.call("weather", {"city": "Oslo", "days": 2}).content == \
        '{"city": "Oslo", "days": 2, "units": "c", "hours": []}'
    bad = registry.call("weather", {"days": 2})
    assert not bad.ok and "missing required argument 'city'" in bad.error
    assert "at most 7 days" in registry.call("weather", {"city": "Oslo", "days": 9}).error
    assert "unknown tool 'nope'" in registry.call("nope", {}).error
    with pytest.raises(ValueError, match="registered twice"):
        registry.add(weather)
    with pytest.raises(ValueError, match="docstring"):
        FunctionTool(lambda x: x)
    with pytest.raises(TypeError, match=r"\*args"):
        FunctionTool(print)   # no signature a model could fill
    with pytest.raises(ValueError, match="tool name"):
        ToolRegistry([FunctionTool(area, name="has space")])


def test_openapi_server_is_valid_and_its_tools_match_direct_calls(registry):
    from openapi_spec_validator import validate

    from actors.agent.registry import RemoteTool

    validate(registry.openapi_spec())
    with _Uvicorn(registry.openapi_app()) as srv:
        import urllib.request

        import json

        served = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/openapi.json").read())
        validate(served)
        remote = {t.name: t for t in RemoteTool.from_openapi(f"http://127.0.0.1:{srv.port}")}
        assert list(remote) == registry.names()
        assert remote["weather"].parameters == registry["weather"].parameters
        for name, args in (("calculator", {"expression": "6 * 7"}), ("calculator", {"expression": "1 / 0"}),
                           ("weather", {"city": "Lima", "units": "f"}), ("area", {"width": 2.5, "height": 4}),
                           ("shout", {"text": "hi"}), ("weather", {"city": "Lima", "days": 30})):
            assert remote[name].call(args) == registry.call(name, args), (name, args)


def _official_client_session(target):
    from mcp import Client

    async def go():
        async with Client(target) as c:
            listed = await c.list_tools()
            ok = await c.call_tool("calculator", {"expression": "(2 + 3) * 4"})
            bad = await c.call_tool("calculator", {"expression": "1 / 0"})
            return listed, ok, bad

    return asyncio.run(go())


def test_official_mcp_client_over_http(registry):
    from actors.agent.registry import MCPToolset

    with _Uvicorn(registry.mcp_server().streamable_http_app()) as srv:
        url = f"http://127.0.0.1:{srv.port}/mcp"
        listed, ok, bad = _official_client_session(url)
        assert [t.name for t in listed.tools] == registry.names()
        assert listed.tools[1].input_schema == registry["weather"].parameters
        assert ok.content[0].text == "20" and not ok.is_error
        assert bad.is_error and "division by zero" in bad.content[0].text
        with MCPToolset(url) as ts:     # and ours, as an agent would use an outside server
            tools = {t.name: t for t in ts.tools}
            assert tools["area"].call({"width": 3, "height": 2}).content == "6"
            assert tools["weather"].call({"city": "Rome"}) == registry.call("weather", {"city": "Rome"})


def test_official_mcp_client_over_stdio():
    from mcp.client.stdio import StdioServerParameters

    from actors.agent.registry import MCPToolset

    cmd = [sys.executable, "-m", "jobs.tools", "mcp", "--tools", "calculator,python"]
    params = StdioServerParameters(command=cmd[0], args=cmd[1:], cwd=str(REPO))
    listed, ok, bad = _official_client_session(params)
    assert [t.name for t in listed.tools] == ["calculator", "python"]
    assert ok.content[0].text == "20" and bad.is_error
    with MCPToolset(cmd, env={"PYTHONPATH": str(REPO)}) as ts:
        py = {t.name: t for t in ts.tools}["python"]
        assert py.call({"code": "sum(range(10))"}).content == "45"       # the sandboxed tool, served over MCP
        assert "PermissionError" in py.call({"code": "import os\nos.fork()"}).error
