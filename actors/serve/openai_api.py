"""OpenAI-compatible HTTP API over an `AsyncEngine`: chat + text completions (with SSE streaming), models, health.

`create_app(engine, tokenizer, model_name)` returns a FastAPI app; it knows nothing about Ray, so it runs
under Ray Serve (deployment.py) or plain uvicorn alike. Every client error comes back as HTTP 400 (404 for
an unknown model) with OpenAI's error body, whose `param` names the offending field — FastAPI's own 422
never leaks.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.common.config import ConfigError
from actors.model.chat import ChatTemplateError, encode_chat
from actors.model.tokenizer import stop_token_ids
from actors.tooltask import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, parse_tool_calls
from actors.serve.engine import AsyncEngine, RequestOutput, SamplingParams
from actors.serve.protocol import (
    ChatChoice, ChatCompletionRequest, ChatCompletionResponse, CompletionChoice, CompletionRequest,
    CompletionResponse, DeltaFunctionCall, DeltaMessage, DeltaToolCall, ErrorInfo, ErrorResponse,
    FunctionCall, ModelCard, ModelList, ResponseMessage, ToolCall, Usage, new_id, new_tool_call_id,
)


class APIError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 type: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.type, self.code = message, param, status, type, code

    def response(self) -> JSONResponse:
        body = ErrorResponse(error=ErrorInfo(message=self.message, type=self.type, param=self.param,
                                             code=self.code))
        return JSONResponse(body.model_dump(), status_code=self.status)


# ----------------------------------------------------------------------------------------------------
# Validation errors -> OpenAI error bodies

_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# pydantic adds union-member / validator names to error locations; they are not fields
_NOT_FIELDS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _param(loc: tuple) -> str | None:
    parts: list[str] = []
    for item in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(item, int):
            if not parts:
                break
            parts[-1] += f"[{item}]"
        elif isinstance(item, str) and _FIELD.match(item) and item not in _NOT_FIELDS:
            parts.append(item)
        else:
            break
    return ".".join(parts) or None


def validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    err = errors[0] if errors else {"type": "invalid", "loc": ("body",), "msg": "invalid request"}
    etype, loc = err.get("type", ""), tuple(err.get("loc", ()))
    if etype == "json_invalid":
        detail = (err.get("ctx") or {}).get("error", "")
        return APIError(f"request body is not valid JSON ({detail}); send a JSON object such as "
                        '{"model": ..., "messages": [...]}', param=None)
    param = _param(loc)
    if param is None:
        if etype == "missing":
            return APIError("request body is missing; send a JSON object with Content-Type: application/json")
        return APIError(f"request body must be a JSON object: {err.get('msg')}")
    msg = str(err.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if etype == "missing":
        text = f"'{param}' is required; add it to the request"
    elif etype == "extra_forbidden":
        text = f"'{param}' is not a supported parameter; remove it (check the spelling)"
    else:
        got = err.get("input")
        shown = "" if etype.startswith("value_error") or isinstance(got, (dict, list)) else f" (got {got!r})"
        text = f"'{param}': {msg}{shown}"
    return APIError(text, param=param)


# ----------------------------------------------------------------------------------------------------
# Tool-call streaming

_CALL_RE = re.compile(re.escape(TOOL_CALL_OPEN) + r".*?" + re.escape(TOOL_CALL_CLOSE), re.S)


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `marker` (may become the marker)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


class ToolCallStreamer:
    """Splits streamed model text into content deltas and complete tool calls.

    Text is streamed as content until `<tool_call>` starts (a tail that may be the start of the marker is
    held back); from then on text is buffered and each call is sent once its `</tool_call>` arrives.
    At the end of the turn a last call left open is sent if its JSON is complete, and with no valid
    call the buffered text is sent as content: exactly what the non-streaming response shows.
    """

    def __init__(self):
        self.text = ""
        self.sent = 0          # chars of content already sent
        self.in_calls = False
        self.matched = 0       # complete <tool_call>...</tool_call> spans seen
        self.calls = 0         # valid calls sent

    def feed(self, delta: str) -> tuple[str, list[dict]]:
        self.text += delta
        content = ""
        if not self.in_calls:
            i = self.text.find(TOOL_CALL_OPEN)
            if i >= 0:
                self.in_calls, end = True, i
            else:
                end = len(self.text) - _partial_suffix(self.text, TOOL_CALL_OPEN)
            content, self.sent = self.text[self.sent:end], max(self.sent, end)
        calls = []
        if self.in_calls:
            spans = list(_CALL_RE.finditer(self.text))
            for m in spans[self.matched:]:
                _, parsed, _ = parse_tool_calls(m.group(0))
                calls.extend(parsed)
            self.matched = len(spans)
            self.calls += len(calls)
        return content, calls

    def finish(self) -> tuple[str, list[dict]]:
        """Content and calls still owed at the end of the turn."""
        calls = []
        if self.in_calls:
            # complete spans were sent by feed(); what is left can only be a last call left open
            _, calls, _ = parse_tool_calls(_CALL_RE.sub("", self.text[self.sent:]))
            self.calls += len(calls)
        if self.calls:
            return "", calls
        rest, self.sent = self.text[self.sent:], len(self.text)
        return rest, []


def _tool_call(call: dict) -> ToolCall:
    return ToolCall(id=new_tool_call_id(), function=FunctionCall(
        name=call["name"], arguments=json.dumps(call["arguments"], ensure_ascii=False)))


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


# ----------------------------------------------------------------------------------------------------
# The serving logic


class OpenAIServing:
    def __init__(self, engine: AsyncEngine, tokenizer, model_name: str):
        self.engine = engine
        self.tok = tokenizer
        self.model_name = model_name
        self.stop_ids = stop_token_ids(tokenizer)
        self.vocab_size = len(tokenizer)

    # -- shared --------------------------------------------------------------------------------------

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(f"model {name!r} does not exist; this server serves {self.model_name!r} "
                           "(see GET /v1/models)", param="model", status=404, code="model_not_found")

    def sampling_params(self, req, n_prompt: int, prompt_param: str, limit: int | None,
                        limit_param: str, limit_is_default: bool = False) -> SamplingParams:
        ctx = self.engine.max_model_len
        room = ctx - n_prompt
        if room < 1:
            raise APIError(f"the prompt has {n_prompt} tokens but the context length is {ctx}; shorten "
                           f"'{prompt_param}'", param=prompt_param, code="context_length_exceeded")
        if limit is None or (limit_is_default and limit > room):
            limit = room
        elif limit > room:
            raise APIError(f"'{limit_param}'={limit} plus the prompt's {n_prompt} tokens exceeds the context "
                           f"length {ctx}; set {limit_param} <= {room}", param=limit_param,
                           code="context_length_exceeded")
        try:
            return SamplingParams(
                temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                max_tokens=limit, stop=req.stop_list(), stop_token_ids=list(self.stop_ids), seed=req.seed)
        except ConfigError as e:
            key = str(e).split(":", 1)[0]
            raise APIError(str(e), param=key) from None

    async def _run(self, ids: list[int], params: SamplingParams) -> RequestOutput:
        final = None
        async for out in self.engine.generate(ids, params):
            final = out
        assert final is not None and final.finished
        return final

    # -- chat ------------------------------------------------------------------------------------------

    def render_chat(self, req: ChatCompletionRequest) -> list[int]:
        """Prompt ids through the model's chat template (tools folded into the system turn when the template
        has no tool support; actors.model.chat), as the fine-tune and the eval render them."""
        try:
            return encode_chat(self.tok, [m.for_template() for m in req.messages], req.template_tools(),
                               add_generation_prompt=True)
        except ChatTemplateError as e:  # a template error is the request's content, not a server fault
            raise APIError(f"cannot render messages with the chat template: {e}", param="messages") from None

    async def chat(self, req: ChatCompletionRequest):
        self.check_model(req.model)
        ids = self.render_chat(req)
        limit_param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        params = self.sampling_params(req, len(ids), "messages", req.token_limit(), limit_param)
        tools_on = req.template_tools() is not None
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return self._stream(self._chat_stream(ids, params, tools_on, include_usage))
        out = await self._run(ids, params)
        message, finish = ResponseMessage(content=out.text), out.finish_reason
        if tools_on:
            content, calls, _ = parse_tool_calls(out.text)
            if calls:  # valid calls win even if the turn hit the length limit after them
                message = ResponseMessage(content=content or None, tool_calls=[_tool_call(c) for c in calls])
                finish = "tool_calls"
        return ChatCompletionResponse(
            model=self.model_name, choices=[ChatChoice(message=message, finish_reason=finish)],
            usage=Usage.of(out.prompt_tokens, out.completion_tokens),
        ).model_dump()

    async def _chat_stream(self, ids, params, tools_on: bool, include_usage: bool) -> AsyncIterator[str]:
        cid, created = new_id("chatcmpl"), int(time.time())

        def chunk(delta: DeltaMessage | None, finish=None, usage: Usage | None = None) -> str:
            choices = [] if delta is None else [{"index": 0, "delta": delta.model_dump(exclude_none=True),
                                                  "finish_reason": finish, "logprobs": None}]
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.model_name,
                   "system_fingerprint": None, "choices": choices}
            if usage is not None or include_usage:
                obj["usage"] = usage.model_dump() if usage else None
            return _sse(obj)

        yield chunk(DeltaMessage(role="assistant", content=""))
        streamer = ToolCallStreamer() if tools_on else None
        async for out in self.engine.generate(ids, params):
            if streamer is None:
                if out.delta_text:
                    yield chunk(DeltaMessage(content=out.delta_text))
            else:
                content, calls = streamer.feed(out.delta_text)
                if out.finished:
                    rest, last = streamer.finish()
                    content, calls = content + rest, calls + last
                if content:
                    yield chunk(DeltaMessage(content=content))
                first = streamer.calls - len(calls)  # OpenAI numbers calls across the whole turn
                for j, c in enumerate(calls):
                    tc = _tool_call(c)
                    yield chunk(DeltaMessage(tool_calls=[DeltaToolCall(
                        index=first + j, id=tc.id, type="function",
                        function=DeltaFunctionCall(name=tc.function.name, arguments=tc.function.arguments))]))
            if out.finished:
                finish = "tool_calls" if streamer is not None and streamer.calls else out.finish_reason
                yield chunk(DeltaMessage(), finish=finish)
                if include_usage:
                    yield chunk(None, usage=Usage.of(out.prompt_tokens, out.completion_tokens))

    # -- text completions --------------------------------------------------------------------------------

    async def completion(self, req: CompletionRequest):
        self.check_model(req.model)
        prompt = req.single_prompt()
        if isinstance(prompt, str):
            ids, prompt_text = list(self.tok(prompt, add_special_tokens=False)["input_ids"]), prompt
        else:
            bad = [t for t in prompt if not 0 <= t < self.vocab_size]
            if bad:
                raise APIError(f"'prompt' token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})",
                               param="prompt")
            ids, prompt_text = list(prompt), self.tok.decode(prompt)
        if not ids:
            raise APIError("'prompt' encodes to zero tokens; give some text", param="prompt")
        params = self.sampling_params(req, len(ids), "prompt", req.max_tokens, "max_tokens",
                                      limit_is_default="max_tokens" not in req.model_fields_set)
        echo = prompt_text if req.echo else ""
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return self._stream(self._completion_stream(ids, params, echo, include_usage))
        out = await self._run(ids, params)
        return CompletionResponse(
            model=self.model_name,
            choices=[CompletionChoice(text=echo + out.text, finish_reason=out.finish_reason)],
            usage=Usage.of(out.prompt_tokens, out.completion_tokens),
        ).model_dump()

    async def _completion_stream(self, ids, params, echo: str, include_usage: bool) -> AsyncIterator[str]:
        cid, created = new_id("cmpl"), int(time.time())

        def chunk(text: str | None, finish=None, usage: Usage | None = None) -> str:
            choices = [] if text is None else [{"index": 0, "text": text, "finish_reason": finish,
                                                 "logprobs": None}]
            obj = {"id": cid, "object": "text_completion", "created": created, "model": self.model_name,
                   "system_fingerprint": None, "choices": choices}
            if usage is not None or include_usage:
                obj["usage"] = usage.model_dump() if usage else None
            return _sse(obj)

        if echo:
            yield chunk(echo)
        async for out in self.engine.generate(ids, params):
            if out.delta_text or out.finished:
                yield chunk(out.delta_text, finish=out.finish_reason)
            if out.finished and include_usage:
                yield chunk(None, usage=Usage.of(out.prompt_tokens, out.completion_tokens))

    # -- plumbing -------------------------------------------------------------------------------------------

    @staticmethod
    def _stream(events: AsyncIterator[str]) -> StreamingResponse:
        async def body():
            try:
                async for e in events:
                    yield e
            except Exception as e:  # headers are gone: report in-band, as OpenAI does
                yield _sse({"error": {"message": f"generation failed: {e}", "type": "server_error",
                                      "param": None, "code": None}})
            yield SSE_DONE
        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def models(self) -> dict:
        return ModelList(data=[ModelCard(id=self.model_name, max_model_len=self.engine.max_model_len)]).model_dump()


def create_app(engine: AsyncEngine, tokenizer, model_name: str) -> FastAPI:
    serving = OpenAIServing(engine, tokenizer, model_name)
    app = FastAPI(title="fullchain OpenAI-compatible API")
    app.state.serving = serving

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        msg = exc.detail if exc.status_code != 404 else f"no route {request.method} {request.url.path}; " \
            "use /v1/chat/completions, /v1/completions, /v1/models or /health"
        return APIError(str(msg), status=exc.status_code).response()

    @app.exception_handler(Exception)
    async def _server_error(_: Request, exc: Exception):
        return APIError(f"internal error: {exc!r}", status=500, type="server_error").response()

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": serving.model_name}

    @app.get("/v1/models")
    async def models():
        return serving.models()

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest):
        return await serving.chat(req)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        return await serving.completion(req)

    return app
