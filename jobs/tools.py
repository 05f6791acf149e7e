"""`python -m jobs.tools`: the agent's tools served to other programs (MCP clients, OpenAPI clients).

    python -m jobs.tools list                             the tools, as OpenAI `tools` JSON
    python -m jobs.tools mcp                              an MCP server on stdin/stdout
    python -m jobs.tools mcp --http --port 8765           an MCP server over streamable HTTP, 127.0.0.1:8765/mcp
    python -m jobs.tools openapi --port 8766              an OpenAPI tool server, 127.0.0.1:8766/openapi.json

`--tools calculator,python` picks the tools; `--index DIR` adds search_docs over a retrieval index. Servers listen
on 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import json
import sys


def build_registry(names: list[str] | None = None, index: str = ""):
    from actors.agent.registry import ToolRegistry
    from actors.agent.tools import TOOL_CLASSES, make_tool

    names = names or ["calculator", "python"] + (["search_docs"] if index else [])
    unknown = [n for n in names if n not in TOOL_CLASSES]
    if unknown:
        raise SystemExit(f"--tools: unknown {unknown}; available: {sorted(TOOL_CLASSES)}")
    if "search_docs" in names and not index:
        raise SystemExit("--tools search_docs needs --index DIR (python -m jobs.index builds one)")
    return ToolRegistry(make_tool(n, **({"index": index} if n == "search_docs" else {})) for n in names)


def main(argv: list[str] | None = None, prog: str = "python -m jobs.tools") -> None:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["list", "mcp", "openapi"])
    ap.add_argument("--tools", default="", help="comma-separated tool names (default: calculator, python, and "
                                                  "search_docs with --index)")
    ap.add_argument("--index", default="", help="a retrieval index folder for search_docs (python -m jobs.index)")
    ap.add_argument("--http", action="store_true", help="mcp: streamable HTTP instead of stdio")
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args(argv)
    registry = build_registry([t for t in args.tools.split(",") if t], args.index)
    if args.what == "list":
        print(json.dumps(registry.openai_tools(), indent=2, ensure_ascii=False))
        return
    if args.what == "mcp" and not args.http:
        import anyio

        from actors.agent.registry import serve_mcp_stdio

        anyio.run(serve_mcp_stdio, registry)
        return
    import uvicorn

    app = registry.mcp_server().streamable_http_app() if args.what == "mcp" else registry.openapi_app()
    where = "/mcp" if args.what == "mcp" else "/openapi.json"
    print(f"[tools] {args.what} server on http://127.0.0.1:{args.port}{where}: {registry.names()}",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
