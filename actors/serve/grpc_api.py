"""gRPC for the served model: `actors/serve/proto/fullchain.proto` (service `LLM`: `Generate`, server streaming;
`ListModels`). The Python code is generated from the .proto by grpcio-tools at build time (setup.py's build_py)
and, in a source checkout, here on first use when missing or older than the .proto.

The ingress replica serves it on 127.0.0.1:`serve.grpc_port` from its own event loop, with the same logic as HTTP:
a `prompt` becomes a streamed text completion, `messages` a streamed chat, and each SSE chunk the HTTP API would
send becomes one `GenerateChunk` (its JSON kept in `json`). Not Ray Serve's gRPC proxy: in Ray 2.60 it listens on
every interface (`add_grpc_address(server, f"[::]:{port}")`, ray/serve/_private/grpc_util.py), and every server we
start listens on loopback only.
"""
from __future__ import annotations

import importlib
import threading
from pathlib import Path

PROTO = Path(__file__).parent / "proto" / "fullchain.proto"
_lock = threading.Lock()


def generate_code(out_root: Path | None = None) -> list[Path]:
    """Run grpcio-tools' protoc on the .proto: fullchain_pb2.py / fullchain_pb2_grpc.py next to it (under
    `out_root` instead, keeping the package path)."""
    from grpc_tools import protoc

    root = PROTO.parents[3]                        # the repo (or site-packages) root: imports keep the package path
    out = out_root or root
    rel = PROTO.relative_to(root)
    rc = protoc.main(["grpc_tools.protoc", f"-I{root}", f"--python_out={out}", f"--grpc_python_out={out}",
                      str(rel)])
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed on {PROTO} (exit {rc})")
    return [out / rel.with_name("fullchain_pb2.py"), out / rel.with_name("fullchain_pb2_grpc.py")]


def stubs():
    """(fullchain_pb2, fullchain_pb2_grpc), generated first when missing or older than the .proto."""
    with _lock:
        gen = [PROTO.with_name("fullchain_pb2.py"), PROTO.with_name("fullchain_pb2_grpc.py")]
        if any(not g.exists() or g.stat().st_mtime < PROTO.stat().st_mtime for g in gen):
            generate_code()
            importlib.invalidate_caches()
    return (importlib.import_module("actors.serve.proto.fullchain_pb2"),
            importlib.import_module("actors.serve.proto.fullchain_pb2_grpc"))


async def start_grpc(serving, api_keys, port: int, host: str = "127.0.0.1"):
    """Serve the `LLM` service on host:port from this process's event loop (the ingress replica's) until it is
    cancelled. Returns the started `grpc.aio` server."""
    import grpc

    _, pb2_grpc = stubs()
    server = grpc.aio.server()
    pb2_grpc.add_LLMServicer_to_server(LLMService(serving, frozenset(api_keys)), server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise RuntimeError(f"serve.grpc_port: cannot listen on {host}:{port} (in use?); pick another port")
    await server.start()
    return server


class LLMService:
    """The `LLM` servicer over `OpenAIServing`: `Generate` streams what the HTTP API streams, `ListModels` lists
    /v1/models. An API key, when set, is checked in the metadata."""

    def __init__(self, serving, keys: frozenset[str]):
        self.serving, self.keys = serving, keys
        self.pb2, _ = stubs()

    async def _auth(self, context) -> None:
        import grpc

        from actors.serve.openai_api import key_ok

        if self.keys and not key_ok(dict(context.invocation_metadata()).get("authorization"), self.keys):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "invalid or missing API key; send the metadata ('authorization', 'Bearer <key>')")

    async def Generate(self, request, context):
        import grpc

        from actors.serve.openai_api import APIError

        await self._auth(context)
        try:
            events = await self.serving.stream_events(to_http_body(request))
        except APIError as e:
            code = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND}.get(
                e.status, grpc.StatusCode.INTERNAL)
            await context.abort(code, e.message)
        async for obj in events:
            yield to_chunk(self.pb2, obj)

    async def ListModels(self, request, context):
        await self._auth(context)
        pb2 = self.pb2
        return pb2.ListModelsResponse(models=[pb2.ModelInfo(
            id=c["id"], parent=c.get("parent") or "", root=c.get("root") or "",
            max_model_len=c.get("max_model_len") or 0) for c in self.serving.models()["data"]])


def to_http_body(req) -> dict:
    """A GenerateRequest as the JSON body of the equivalent streamed HTTP request."""
    import json

    body: dict = {"model": req.model, "stream": True, "stream_options": {"include_usage": True},
                  "ignore_eos": req.ignore_eos}
    if req.messages:
        body["messages"] = [{"role": m.role, "content": m.content} for m in req.messages]
    else:
        body["prompt"] = req.prompt
    if req.max_tokens:
        body["max_tokens"] = req.max_tokens
    for name in ("temperature", "top_p", "seed"):
        if req.HasField(name):
            body[name] = getattr(req, name)
    if req.stop:
        body["stop"] = list(req.stop)
    if req.response_format_json:
        body["response_format"] = json.loads(req.response_format_json)
    return body


def to_chunk(pb2, obj: dict):
    """One HTTP stream chunk (a dict) as a GenerateChunk."""
    import json

    choice = (obj.get("choices") or [{}])[0]
    text = choice.get("text")
    if text is None:
        text = (choice.get("delta") or {}).get("content") or ""
    usage = obj.get("usage") or {}
    return pb2.GenerateChunk(id=obj.get("id", ""), model=obj.get("model", ""), index=choice.get("index") or 0,
                             text=text, finish_reason=choice.get("finish_reason") or "",
                             prompt_tokens=usage.get("prompt_tokens") or 0,
                             completion_tokens=usage.get("completion_tokens") or 0,
                             json=json.dumps(obj, ensure_ascii=False))
