"""Typed tools and one registry of them, exported three ways and imported back (AgentLego / MCP shaped).

    FunctionTool(fn)           a tool from a Python function: the JSON Schema from its signature and type hints,
                               the description and argument docs from its docstring (Google or reST style)
    SchemaTool(name, ...)      a tool from a JSON Schema and a callable taking the arguments
    ToolRegistry               name -> Tool; exported as
        .openai_tools()            OpenAI `tools`
        .mcp_server()              an MCP server (the `mcp` SDK's low-level Server; stdio or streamable HTTP)
        .openapi_app()             an OpenAPI tool server (FastAPI; POST /tools/{name}, spec at /openapi.json)
    RemoteTool.from_openapi    the tools of any OpenAPI server (ours or another) as Tool objects
    MCPToolset                 the tools of any MCP server (a URL, or a command speaking stdio) as Tool objects

Every Tool here has the protocol of `actors.agent.tools` (`spec`, `validate`, `call -> ToolResult`), so a tool
actor, the agent loop and the three exports treat a local function, a sandboxed interpreter and an outside
server's tool alike.
"""
from __future__ import annotations

import inspect
import json
import logging
import re
import types
import typing
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

from actors.agent.tools import Tool, ToolError, ToolResult

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------- schema from Python

_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array",
           type(None): "null"}


def json_schema(tp: Any) -> dict:
    """The JSON Schema of a type hint: str/int/float/bool, list[X], dict[str, X], Literal[...], X | None."""
    if tp is inspect.Parameter.empty or tp is Any:
        return {}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return {"type": _SIMPLE.get(type(args[0]), "string"), "enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return json_schema(rest[0]) if len(rest) == 1 else {"anyOf": [json_schema(a) for a in rest]}
    if origin in (list, tuple, set, frozenset, Iterable):
        return {"type": "array", **({"items": json_schema(args[0])} if args else {})}
    if origin is dict:
        return {"type": "object", **({"additionalProperties": json_schema(args[1])} if len(args) == 2 else {})}
    if tp in _SIMPLE:
        return {"type": _SIMPLE[tp]}
    raise TypeError(f"no JSON Schema for the type {tp!r}: use str, int, float, bool, list[...], dict[str, ...], "
                    "Literal[...] or X | None")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {argument: its description}) from a Google-style `Args:` section or reST `:param x:`."""
    if not doc:
        return "", {}
    doc = inspect.cleandoc(doc)
    args: dict[str, str] = {}
    for m in re.finditer(r"^:param\s+(?:\w+\s+)?(\w+):\s*(.+)$", doc, re.M):
        args[m.group(1)] = m.group(2).strip()
    sec = re.search(r"^(?:Args|Arguments|Parameters):\s*\n((?:[ \t]+.+\n?)+)", doc, re.M)
    if sec:
        name = None
        for line in sec.group(1).splitlines():
            m = re.match(r"^\s+(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
            if m and len(line) - len(line.lstrip()) <= 4:
                name = m.group(1)
                args[name] = m.group(2).strip()
            elif name and line.strip():
                args[name] = (args[name] + " " + line.strip()).strip()
    summary = re.split(r"\n\s*\n|^(?:Args|Arguments|Parameters|Returns|Raises):|^:param", doc, maxsplit=1,
                       flags=re.M)[0]
    return " ".join(summary.split()), args


def schema_from_function(fn: Callable) -> tuple[str, dict]:
    """(description, parameters JSON Schema) of a function, from its signature, type hints and docstring."""
    hints = typing.get_type_hints(fn)
    desc, arg_docs = parse_docstring(fn.__doc__)
    props, required = {}, []
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{fn.__name__}: *args/**kwargs cannot be described to a model; name each argument")
        s = json_schema(hints.get(name, p.annotation))
        if name in arg_docs:
            s["description"] = arg_docs[name]
        if p.default is p.empty:
            required.append(name)
        elif p.default is None or isinstance(p.default, (str, int, float, bool)):
            s["default"] = p.default
        props[name] = s
    return desc, {"type": "object", "properties": props, "required": required}


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


class FunctionTool(Tool):
    """A Python function as a tool; its return value is the result (JSON-encoded unless a string)."""

    def __init__(self, fn: Callable, name: str | None = None, description: str | None = None):
        self.fn = fn
        self.name = name or fn.__name__
        desc, self.parameters = schema_from_function(fn)
        self.description = description or desc
        if not self.description:
            raise ValueError(f"tool {self.name!r}: give it a docstring or a description; a model picks tools by it")

    def run(self, **args: Any) -> str:
        return _as_text(self.fn(**args))


def tool(fn: Callable | None = None, *, name: str | None = None, description: str | None = None):
    """Decorator: `@tool` or `@tool(name=..., description=...)` turns a function into a FunctionTool."""
    if fn is None:
        return lambda f: FunctionTool(f, name, description)
    return FunctionTool(fn, name, description)


class SchemaTool(Tool):
    """A tool declared by a JSON Schema, run by `fn(args: dict)`."""

    def __init__(self, name: str, description: str, parameters: dict, fn: Callable[[dict], Any]):
        if parameters.get("type") != "object":
            raise ValueError(f"tool {name!r}: parameters must be a JSON Schema of type 'object', got "
                             f"{parameters.get('type')!r}")
        self.name, self.description, self.parameters, self.fn = name, description, parameters, fn

    def run(self, **args: Any) -> str:
        return _as_text(self.fn(args))


# --------------------------------------------------------------------------------------- the registry

class ToolRegistry:
    """Tools by name, in the order they were added (the order a model sees them in)."""

    def __init__(self, tools: Iterable[Tool] = ()):
        self.tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, t: Tool | Callable) -> Tool:
        t = t if isinstance(t, Tool) else FunctionTool(t)
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", t.name):
            raise ValueError(f"tool name {t.name!r}: use 1-64 letters, digits, '_' or '-' (OpenAI's rule)")
        if t.name in self.tools:
            raise ValueError(f"tool {t.name!r} is registered twice")
        self.tools[t.name] = t
        return t

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    def __getitem__(self, name: str) -> Tool:
        return self.tools[name]

    def names(self) -> list[str]:
        return list(self.tools)

    def openai_tools(self) -> list[dict]:
        return [t.spec() for t in self.tools.values()]

    def call(self, name: str, args: Any) -> ToolResult:
        if name not in self.tools:
            return ToolResult(False, "", f"unknown tool {name!r}; available: {self.names()}")
        return self.tools[name].call(args)

    # -- exports
    def mcp_server(self, name: str = "fullchain-tools"):
        """The registry as an MCP server (low-level `mcp.server.lowlevel.Server`): run it with `serve_mcp_stdio`
        or serve `server.streamable_http_app()` with uvicorn on 127.0.0.1."""
        import anyio
        import mcp_types as mt
        from mcp.server.lowlevel import Server

        async def list_tools(ctx, params):
            return mt.ListToolsResult(tools=[mt.Tool(name=t.name, description=t.description,
                                                     input_schema=t.parameters) for t in self.tools.values()])

        async def call_tool(ctx, params):
            res = await anyio.to_thread.run_sync(self.call, params.name, dict(params.arguments or {}))
            text = res.content if res.ok else f"error: {res.error}"
            return mt.CallToolResult(content=[mt.TextContent(type="text", text=text)], is_error=not res.ok)

        return Server(name, on_list_tools=list_tools, on_call_tool=call_tool)

    def openapi_spec(self, title: str = "fullchain tools", version: str = "1.0.0") -> dict:
        """OpenAPI 3.1: one POST /tools/{name} per tool, the body its parameters, the answer a ToolResult."""
        result = {"type": "object", "required": ["ok", "content"],
                  "properties": {"ok": {"type": "boolean"}, "content": {"type": "string"},
                                 "error": {"type": ["string", "null"]}}}
        paths = {}
        for t in self.tools.values():
            paths[f"/tools/{t.name}"] = {"post": {
                "operationId": t.name, "summary": t.description[:120], "description": t.description,
                "requestBody": {"required": True, "content": {"application/json": {"schema": t.parameters}}},
                "responses": {
                    "200": {"description": "the tool's result (ok false: the tool refused or failed)",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ToolResult"}}}},
                    "404": {"description": "no such tool"}}}}
        return {"openapi": "3.1.0", "info": {"title": title, "version": version}, "paths": paths,
                "components": {"schemas": {"ToolResult": result}}}

    def openapi_app(self, title: str = "fullchain tools"):
        """The registry as an OpenAPI tool server (FastAPI): POST /tools/{name} with the arguments as the JSON
        body, GET /tools for the OpenAI `tools` list, GET /openapi.json for the spec."""
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse

        app = FastAPI(title=title, openapi_url=None, docs_url=None, redoc_url=None)
        spec = self.openapi_spec(title)

        @app.get("/openapi.json")
        def openapi() -> dict:
            return spec

        @app.get("/tools")
        def tools() -> list:
            return self.openai_tools()

        async def call(name, request):
            if name not in self.tools:
                return JSONResponse({"ok": False, "content": "", "error": f"unknown tool {name!r}"}, 404)
            try:
                args = await request.json()
            except ValueError:
                return JSONResponse({"ok": False, "content": "", "error": "the body is not JSON"}, 400)
            import anyio

            res = await anyio.to_thread.run_sync(self.call, name, args)
            return res.to_dict()

        # real classes, not this module's postponed (string) annotations, so FastAPI injects the request
        call.__annotations__ = {"name": str, "request": Request}
        app.add_api_route("/tools/{name}", call, methods=["POST"])
        return app


async def serve_mcp_stdio(registry: ToolRegistry) -> None:
    """Serve the registry over this process's stdin/stdout until the client closes them."""
    from mcp.server.stdio import stdio_server

    server = registry.mcp_server()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


# --------------------------------------------------------------------------------------- outside tools

def _http_json(url: str, body: Any = None, timeout_s: float = 30.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                 method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


def _resolve(schema: Any, spec: dict, depth: int = 0) -> Any:
    """`$ref`s into the spec's components, inlined (a tool's parameters must stand alone for a model)."""
    if depth > 20:
        raise ValueError("OpenAPI spec: $ref nesting deeper than 20 (a cycle?)")
    if isinstance(schema, dict):
        if "$ref" in schema:
            node: Any = spec
            for part in schema["$ref"].lstrip("#/").split("/"):
                node = node[part]
            return _resolve(node, spec, depth + 1)
        return {k: _resolve(v, spec, depth) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_resolve(v, spec, depth) for v in schema]
    return schema


class RemoteTool(Tool):
    """One operation of an OpenAPI server, called over HTTP with its JSON body."""

    def __init__(self, name: str, description: str, parameters: dict, url: str, timeout_s: float = 30.0):
        self.name, self.description, self.parameters, self.url, self.timeout_s = (
            name, description, parameters, url, timeout_s)

    def run(self, **args: Any) -> str:
        try:
            status, body = _http_json(self.url, args, self.timeout_s)
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise ToolError(f"{self.name}: {self.url} unreachable: {e}") from None
        if isinstance(body, dict) and {"ok", "content"} <= set(body):   # a ToolResult (our servers)
            if not body["ok"]:
                raise ToolError(str(body.get("error")))
            return str(body["content"])
        if status >= 400:
            raise ToolError(f"{self.name}: HTTP {status}: {_as_text(body)[:500]}")
        return _as_text(body)

    @classmethod
    def from_openapi(cls, url: str, spec: dict | None = None, timeout_s: float = 30.0) -> list["RemoteTool"]:
        """Every POST operation with a JSON object body of the spec at `url` (or `spec`, served from `url`)."""
        base = url.rsplit("/openapi.json", 1)[0].rstrip("/")
        if spec is None:
            status, spec = _http_json(base + "/openapi.json", timeout_s=timeout_s)
            if status != 200 or not isinstance(spec, dict):
                raise ValueError(f"{base}/openapi.json: HTTP {status}, not an OpenAPI document")
        server = ((spec.get("servers") or [{}])[0].get("url") or "").rstrip("/")
        root = server if server.startswith("http") else base + server
        out = []
        for path, ops in spec.get("paths", {}).items():
            op = ops.get("post") if isinstance(ops, dict) else None
            body = ((op or {}).get("requestBody") or {}).get("content", {}).get("application/json", {})
            schema = _resolve(body.get("schema"), spec) if body else None
            if not op or not isinstance(schema, dict) or schema.get("type") != "object" or "{" in path:
                continue
            name = op.get("operationId") or re.sub(r"[^A-Za-z0-9_-]", "_", path.strip("/"))
            out.append(cls(name, op.get("description") or op.get("summary") or name,
                           {"type": "object", "properties": schema.get("properties", {}),
                            "required": schema.get("required", [])}, root + path, timeout_s))
        return out


class MCPToolset:
    """The tools of one MCP server, over one connection kept open on a background event loop:
    `MCPToolset("http://127.0.0.1:PORT/mcp")` or `MCPToolset(["python", "-m", "my_server"])` (stdio)."""

    def __init__(self, server: str | list[str], timeout_s: float = 60.0, env: dict[str, str] | None = None):
        import asyncio
        import threading

        self.timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mcp-client", daemon=True)
        self._thread.start()
        self._client = None
        self._server = server
        self._env = env
        try:
            self._run(self._open())
            listed = self._run(self._client.list_tools())
        except BaseException:
            self.close()
            raise
        self.tools = [MCPTool(self, t.name, t.description or t.name, dict(t.input_schema)) for t in listed.tools]

    async def _open(self):
        from mcp import Client

        if isinstance(self._server, str):
            target = self._server
        else:
            from mcp.client.stdio import StdioServerParameters

            target = StdioServerParameters(command=self._server[0], args=list(self._server[1:]), env=self._env)
        self._client = Client(target, read_timeout_seconds=self.timeout_s)
        await self._client.__aenter__()

    def _run(self, coro):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout_s + 5)

    def call(self, name: str, args: dict) -> ToolResult:
        res = self._run(self._client.call_tool(name, args))
        text = "\n".join(getattr(c, "text", "") for c in res.content)
        if res.is_error:
            return ToolResult(False, "", text.removeprefix("error: "))
        return ToolResult(True, text)

    def close(self) -> None:
        if self._client is not None:
            try:
                self._run(self._client.__aexit__(None, None, None))
            except Exception as e:  # noqa: BLE001 - the server may already be gone; nothing is left to undo
                log.warning("closing the MCP connection to %s: %s: %s", self._server, type(e).__name__, e)
            self._client = None
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def __enter__(self) -> "MCPToolset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MCPTool(Tool):
    """One tool of an MCP server (through its MCPToolset's connection)."""

    def __init__(self, toolset: MCPToolset, name: str, description: str, parameters: dict):
        self.toolset, self.name, self.description, self.parameters = toolset, name, description, parameters

    def call(self, args: Any) -> ToolResult:
        try:
            args = self.validate(args)
            return self.toolset.call(self.name, args)
        except Exception as e:  # noqa: BLE001 - the server's failure reaches the model as an error
            return ToolResult(False, "", f"{type(e).__name__}: {e}")
