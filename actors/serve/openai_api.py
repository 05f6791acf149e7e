"""OpenAI-compatible HTTP API over an engine client: chat + text completions (with SSE streaming, `response_format`
JSON), models and LoRA adapters (`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`), `/tokenize`, `/detokenize`,
Prometheus `/metrics`, health, and an optional Bearer API-key check on every route but /health.

`create_app(engine, tokenizer, model_name)` returns a FastAPI app; it knows nothing about Ray, so it runs
under Ray Serve (deployment.py) or plain uvicorn alike. Every client error comes back as HTTP 400 (404 for
an unknown model) with OpenAI's error body, whose `param` names the offending field — FastAPI's own 422
never leaks.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import replace

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.common.config import ConfigError
from actors.engine import GrammarSpec, RequestOutput, SamplingParams
from actors.engine import AdapterRef
from actors.engine.guide import grammar_error, json_grammar
from actors.serve.adapters import AdapterNotFound, AdapterRegistry
from actors.serve.metrics import CONTENT_TYPE as METRICS_TYPE
from actors.serve.metrics import render as render_metrics
from actors.model.chat import ChatTemplateError, encode_chat
from actors.tooltask import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, call_grammar, parse_tool_calls
from actors.serve.protocol import (
    ChatChoice, ChatCompletionRequest, ChatCompletionResponse, ChatLogprobs, CompletionChoice, CompletionLogprobs,
    CompletionRequest, CompletionResponse, DeltaFunctionCall, DeltaMessage, DeltaToolCall, DetokenizeRequest,
    ErrorInfo, ErrorResponse, FunctionCall, LoadLoRARequest, ModelCard, ModelList, NamedToolChoice, ResponseFormat,
    ResponseMessage, TokenizeRequest, TokenLogprob, ToolCall, TopLogprob, UnloadLoRARequest, Usage, new_id,
    new_tool_call_id,
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
    """The API's logic over any engine client with `generate(ids, params)` (an async iterator of RequestOutput),
    `complete(ids, params)` and `max_model_len`: an in-process `AsyncEngine` or the Serve handle of an engine
    deployment."""

    def __init__(self, engine, tokenizer, model_name: str, guided_tool_calls: bool = True,
                 adapters: AdapterRegistry | None = None, model_dir: str | None = None):
        self.engine = engine
        self.model_dir = model_dir
        self.tok = tokenizer
        self.model_name = model_name
        self.guided_tool_calls = guided_tool_calls
        self.adapters = adapters
        self.vocab_size = len(tokenizer)
        self._token_text: dict[int, str] = {}

    # -- shared --------------------------------------------------------------------------------------

    def resolve_model(self, name: str | None) -> AdapterRef | None:
        """The LoRA adapter `model` names ("base:adapter" or "adapter"), None for the base; 404 otherwise."""
        if name is None or name == self.model_name:
            return None
        try:
            if self.adapters is None:
                raise AdapterNotFound(f"model {name!r} does not exist; this server serves {self.model_name!r} "
                                      "(see GET /v1/models)")
            return self.adapters.resolve(name)
        except AdapterNotFound as e:
            raise APIError(str(e), param="model", status=404, code="model_not_found") from None

    def format_guide(self, fmt: ResponseFormat | None) -> GrammarSpec | None:
        """`response_format` json_object / json_schema: the whole output decoded under that JSON grammar."""
        if fmt is None or fmt.type == "text":
            return None
        schema = fmt.json_schema.schema_ if fmt.type == "json_schema" else None
        grammar = json_grammar(schema)
        why = grammar_error(grammar)
        if why:
            raise APIError(f"response_format.json_schema.schema cannot be decoded: {why}",
                           param="response_format.json_schema.schema")
        return GrammarSpec(grammar)

    def sampling_params(self, req, n_prompt: int, prompt_param: str, limit: int | None, limit_param: str,
                        limit_is_default: bool = False, **extra) -> SamplingParams:
        ctx = self.engine.max_model_len
        room = ctx - n_prompt
        if room < (1 if limit != 0 else 0):
            raise APIError(f"the prompt has {n_prompt} tokens but the context length is {ctx}; shorten "
                           f"'{prompt_param}'", param=prompt_param, code="context_length_exceeded")
        if limit is None or (limit_is_default and limit > room):
            limit = room
        elif limit > room:
            raise APIError(f"'{limit_param}'={limit} plus the prompt's {n_prompt} tokens exceeds the context "
                           f"length {ctx}; set {limit_param} <= {room}", param=limit_param,
                           code="context_length_exceeded")
        try:
            return SamplingParams(max_tokens=limit, **req.sampling_kwargs(), **extra)
        except ConfigError as e:
            key = str(e).split(":", 1)[0]
            raise APIError(str(e), param=key) from None

    @staticmethod
    def fan_out(params: SamplingParams, n: int) -> list[SamplingParams]:
        """n choices = n engine requests (the prefix cache shares their prompt); a seed gives seed, seed+1, ..."""
        if n == 1:
            return [params]
        return [replace(params, seed=None if params.seed is None else params.seed + i) for i in range(n)]

    def token_text(self, token_id: int) -> str:
        t = self._token_text.get(token_id)
        if t is None:
            t = self._token_text[token_id] = self.tok.decode([token_id])
        return t

    async def _gather(self, jobs: list[tuple[list[int], SamplingParams]]) -> list[RequestOutput]:
        return list(await asyncio.gather(*(self.engine.complete(ids, p) for ids, p in jobs)))

    # -- chat ------------------------------------------------------------------------------------------

    def render_chat(self, req: ChatCompletionRequest) -> list[int]:
        """Prompt ids through the model's chat template (tools folded into the system turn when the template
        has no tool support; actors.model.chat), as the fine-tune and the eval render them."""
        try:
            return encode_chat(self.tok, [m.for_template() for m in req.messages], req.template_tools(),
                               add_generation_prompt=True)
        except ChatTemplateError as e:  # a template error is the request's content, not a server fault
            raise APIError(f"cannot render messages with the chat template: {e}", param="messages") from None

    @staticmethod
    def forced_prefix(req: ChatCompletionRequest) -> str:
        """tool_choice 'required' / named: the assistant turn starts inside a call, so the model must write one."""
        tc = req.tool_choice
        if tc == "required":
            return TOOL_CALL_OPEN
        if isinstance(tc, NamedToolChoice):
            return TOOL_CALL_OPEN + '{"name": ' + json.dumps(tc.function.name, ensure_ascii=False) + ', "arguments": '
        return ""

    @staticmethod
    def tool_call_guide(tools: list[dict], prefix: str) -> GrammarSpec:
        """Each call the model opens is decoded under the offered functions' grammar (tooltask.call_grammar);
        a forced prefix (tool_choice required / named) starts inside it. A schema the matcher cannot compile
        keeps only the names guided."""
        grammar = call_grammar(tools)
        if grammar_error(grammar):
            grammar = call_grammar(tools, loose=True)
        primed = prefix[len(TOOL_CALL_OPEN):] if prefix else None
        return GrammarSpec(grammar, trigger=TOOL_CALL_OPEN, primed=primed)

    def chat_logprobs(self, lps: list) -> ChatLogprobs:
        def entry(tid: int, lp: float) -> dict:
            text = self.token_text(tid)
            return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

        return ChatLogprobs(content=[TokenLogprob(**entry(x.token_id, x.logprob),
                                                  top_logprobs=[TopLogprob(**entry(t, v)) for t, v in x.top])
                                     for x in lps])

    async def chat(self, req: ChatCompletionRequest, raw: bool = False):
        """The response body; streamed, an SSE response (`raw`: the async iterator of its chunk dicts)."""
        adapter = self.resolve_model(req.model)
        ids = self.render_chat(req)
        prefix = self.forced_prefix(req)
        if prefix:
            ids = ids + list(self.tok(prefix, add_special_tokens=False)["input_ids"])
        limit_param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        params = self.sampling_params(req, len(ids), "messages", req.token_limit(), limit_param,
                                      logprobs=req.num_logprobs(), adapter=adapter)
        tools_on = req.template_tools() is not None
        fmt = self.format_guide(req.response_format)
        if fmt is not None:
            if prefix:
                raise APIError("response_format JSON cannot be combined with tool_choice 'required' or a named "
                               "function; drop one of them", param="response_format")
            params, tools_on = replace(params, guide=fmt), False   # the answer is the JSON value itself
        elif tools_on and self.guided_tool_calls:
            params = replace(params, guide=self.tool_call_guide(req.template_tools(), prefix))
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            events = self._chat_stream(ids, self.fan_out(params, req.n), tools_on, include_usage, prefix,
                                       req.logprobs, req.model)
            return events if raw else self._stream(events)
        outs = await self._gather([(ids, p) for p in self.fan_out(params, req.n)])
        choices = []
        for i, out in enumerate(outs):
            text = prefix + out.text
            message, finish = ResponseMessage(content=text), out.finish_reason
            if tools_on:
                content, calls, _ = parse_tool_calls(text)
                if calls:  # valid calls win even if the turn hit the length limit after them
                    message = ResponseMessage(content=content or None, tool_calls=[_tool_call(c) for c in calls])
                    finish = "tool_calls"
            choices.append(ChatChoice(index=i, message=message, finish_reason=finish,
                                      logprobs=self.chat_logprobs(out.logprobs) if req.logprobs else None))
        return ChatCompletionResponse(
            model=req.model, choices=choices,
            usage=Usage.of(outs[0].prompt_tokens, sum(o.completion_tokens for o in outs), outs[0].cached_tokens),
        ).model_dump()

    async def _chat_stream(self, ids, params_list, tools_on: bool, include_usage: bool, prefix: str,
                           logprobs: bool | None, model: str) -> AsyncIterator[dict]:
        cid, created = new_id("chatcmpl"), int(time.time())

        def chunk(index: int | None, delta: DeltaMessage | None, finish=None, usage: Usage | None = None,
                  lps=None) -> dict:
            choices = [] if delta is None else [{"index": index, "delta": delta.model_dump(exclude_none=True),
                                                  "finish_reason": finish,
                                                  "logprobs": lps.model_dump() if lps is not None else None}]
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "system_fingerprint": None, "choices": choices}
            if usage is not None or include_usage:
                obj["usage"] = usage.model_dump() if usage else None
            return obj

        n = len(params_list)
        for i in range(n):
            yield chunk(i, DeltaMessage(role="assistant", content=""))
        streamers = [ToolCallStreamer() if tools_on else None for _ in range(n)]
        for i, st in enumerate(streamers):
            if st is not None and prefix:
                st.feed(prefix)  # the forced start of a call: never content
        prompt_tokens = completion = 0
        async for i, out in _merge([self.engine.generate(ids, p) for p in params_list]):
            streamer = streamers[i]
            lps = self.chat_logprobs(out.logprobs) if logprobs and out.logprobs else None
            if streamer is None:
                if out.delta_text or lps is not None:
                    yield chunk(i, DeltaMessage(content=out.delta_text), lps=lps)
            else:
                content, calls = streamer.feed(out.delta_text)
                if out.finished:
                    rest, last = streamer.finish()
                    content, calls = content + rest, calls + last
                if content or lps is not None:
                    yield chunk(i, DeltaMessage(content=content), lps=lps)
                first = streamer.calls - len(calls)  # OpenAI numbers calls across the whole turn
                for j, c in enumerate(calls):
                    tc = _tool_call(c)
                    yield chunk(i, DeltaMessage(tool_calls=[DeltaToolCall(
                        index=first + j, id=tc.id, type="function",
                        function=DeltaFunctionCall(name=tc.function.name, arguments=tc.function.arguments))]))
            if out.finished:
                finish = "tool_calls" if streamer is not None and streamer.calls else out.finish_reason
                yield chunk(i, DeltaMessage(), finish=finish)
                prompt_tokens, completion = out.prompt_tokens, completion + out.completion_tokens
        if include_usage:
            yield chunk(None, None, usage=Usage.of(prompt_tokens, completion))

    # -- text completions --------------------------------------------------------------------------------

    def completion_prompts(self, req: CompletionRequest) -> list[tuple[list[int], str]]:
        out = []
        for k, prompt in enumerate(req.prompt_list()):
            param = "prompt" if len(req.prompt_list()) == 1 else f"prompt[{k}]"
            if isinstance(prompt, str):
                ids, text = list(self.tok(prompt, add_special_tokens=False)["input_ids"]), prompt
            else:
                bad = [t for t in prompt if not (isinstance(t, int) and 0 <= t < self.vocab_size)]
                if bad:
                    raise APIError(f"'{param}' token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})",
                                   param=param)
                ids, text = list(prompt), self.tok.decode(prompt)
            if not ids:
                raise APIError(f"'{param}' encodes to zero tokens; give some text", param=param)
            out.append((ids, text))
        return out

    def completion_logprobs(self, prompt_ids: list[int], prompt_lps, token_ids: list[int], lps: list, echo: bool,
                            as_ids: bool, start: int = 0) -> CompletionLogprobs:
        """Legacy logprobs: the prompt's (echo; the first token has none) then the completion's; text_offset
        counts characters from `start`."""
        def name(t: int) -> str:
            return f"token_id:{t}" if as_ids else self.token_text(t)

        lp = CompletionLogprobs()
        offset = start
        rows: list[tuple[int, object]] = []
        if echo:
            rows += list(zip(prompt_ids, prompt_lps or [None] * len(prompt_ids)))
        rows += list(zip(token_ids, lps))
        for tid, x in rows:
            lp.tokens.append(name(tid))
            lp.text_offset.append(offset)
            offset += len(self.token_text(tid))
            if x is None:
                lp.token_logprobs.append(None)
                lp.top_logprobs.append(None)
            else:
                lp.token_logprobs.append(x.logprob)
                lp.top_logprobs.append({name(t): v for t, v in x.top})
        return lp

    async def completion(self, req: CompletionRequest, raw: bool = False):
        adapter = self.resolve_model(req.model)
        guide = self.format_guide(req.response_format)
        if req.max_tokens == 0 and not req.echo:
            raise APIError("'max_tokens' 0 returns nothing without echo; set echo: true (with logprobs to score the "
                           "prompt) or max_tokens >= 1", param="max_tokens")
        if req.max_tokens == 0 and req.stream:
            raise APIError("'max_tokens' 0 cannot be streamed; send stream: false", param="max_tokens")
        prompts = self.completion_prompts(req)
        jobs = []
        for k, (ids, _) in enumerate(prompts):
            param = "prompt" if len(prompts) == 1 else f"prompt[{k}]"
            params = self.sampling_params(
                req, len(ids), param, req.max_tokens, "max_tokens",
                limit_is_default="max_tokens" not in req.model_fields_set, logprobs=req.logprobs,
                prompt_logprobs=req.logprobs if req.echo and req.logprobs is not None else None, adapter=adapter,
                guide=guide)
            jobs += [(k, ids, p) for p in self.fan_out(params, req.n)]
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            events = self._completion_stream(req, prompts, jobs, include_usage)
            return events if raw else self._stream(events)
        outs = await self._gather([(ids, p) for _, ids, p in jobs])
        choices = []
        for i, ((k, ids, _), out) in enumerate(zip(jobs, outs)):
            echo = prompts[k][1] if req.echo else ""
            lps = None
            if req.logprobs is not None:
                lps = self.completion_logprobs(ids, out.prompt_logprobs, out.token_ids, out.logprobs, req.echo,
                                               req.return_tokens_as_token_ids)
            choices.append(CompletionChoice(index=i, text=echo + out.text, finish_reason=out.finish_reason,
                                            logprobs=lps))
        prompt_tokens = sum(len(ids) for ids, _ in prompts)
        return CompletionResponse(model=req.model, choices=choices,
                                  usage=Usage.of(prompt_tokens, sum(o.completion_tokens for o in outs),
                                                 sum(o.cached_tokens for o in outs[::req.n]))).model_dump()

    async def _completion_stream(self, req: CompletionRequest, prompts, jobs, include_usage: bool
                                 ) -> AsyncIterator[dict]:
        cid, created = new_id("cmpl"), int(time.time())

        def chunk(index: int | None, text: str | None, finish=None, usage: Usage | None = None, lps=None) -> dict:
            choices = [] if text is None else [{"index": index, "text": text, "finish_reason": finish,
                                                 "logprobs": lps.model_dump() if lps is not None else None}]
            obj = {"id": cid, "object": "text_completion", "created": created, "model": req.model,
                   "system_fingerprint": None, "choices": choices}
            if usage is not None or include_usage:
                obj["usage"] = usage.model_dump() if usage else None
            return obj

        sent = [0] * len(jobs)  # chars streamed per choice (text_offset of the next token)
        if req.echo:
            for i, (k, _, _) in enumerate(jobs):
                yield chunk(i, prompts[k][1])
                sent[i] = len(prompts[k][1])
        completion = 0
        async for i, out in _merge([self.engine.generate(ids, p) for _, ids, p in jobs]):
            lps = None
            if req.logprobs is not None and out.new_token_ids:
                lps = self.completion_logprobs([], None, out.new_token_ids, out.logprobs, False,
                                               req.return_tokens_as_token_ids, start=sent[i])
                sent[i] += sum(len(self.token_text(t)) for t in out.new_token_ids)
            if out.delta_text or out.finished or lps is not None:
                yield chunk(i, out.delta_text, finish=out.finish_reason, lps=lps)
            if out.finished:
                completion += out.completion_tokens
        if include_usage:
            yield chunk(None, None, usage=Usage.of(sum(len(ids) for ids, _ in prompts), completion))

    # -- plumbing -------------------------------------------------------------------------------------------

    @staticmethod
    def _stream(events: AsyncIterator[dict]) -> StreamingResponse:
        async def body():
            try:
                async for e in events:
                    yield _sse(e)
            except Exception as e:  # headers are gone: report in-band, as OpenAI does
                yield _sse({"error": {"message": f"generation failed: {e}", "type": "server_error",
                                      "param": None, "code": None}})
            yield SSE_DONE
        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def models(self) -> dict:
        """The base, then each adapter as "base:adapter" with its folder (`root`) and base (`parent`), as vLLM
        lists them; each with its `lineage` (where its weights come from)."""
        cards = [ModelCard(id=self.model_name, root=self.model_name, max_model_len=self.engine.max_model_len,
                           lineage=_lineage(self.model_dir))]
        for name, ref in sorted((self.adapters.adapters if self.adapters else {}).items()):
            cards.append(ModelCard(id=f"{self.model_name}:{name}", root=ref.path, parent=self.model_name,
                                   max_model_len=self.engine.max_model_len, lineage=_lineage(ref.path)))
        return ModelList(data=cards).model_dump()

    async def stream_events(self, body: dict) -> AsyncIterator[dict]:
        """The chunks a streamed HTTP request with this JSON body would send (a `prompt`: a completion, else a
        chat), for other transports (gRPC). Raises APIError as the HTTP route would answer."""
        from pydantic import ValidationError

        kind = CompletionRequest if "prompt" in body else ChatCompletionRequest
        try:
            req = kind.model_validate(body)
        except ValidationError as e:
            raise validation_error(RequestValidationError(e.errors())) from None
        return await (self.completion(req, raw=True) if kind is CompletionRequest else self.chat(req, raw=True))

    # -- tokenizer and adapters ---------------------------------------------------------------------------

    def tokenize(self, req: TokenizeRequest) -> dict:
        self.resolve_model(req.model)
        if req.messages is not None:
            tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
            try:
                ids = encode_chat(self.tok, [m.for_template() for m in req.messages], tools,
                                  add_generation_prompt=req.add_generation_prompt)
            except ChatTemplateError as e:
                raise APIError(f"cannot render messages with the chat template: {e}", param="messages") from None
        else:
            ids = list(self.tok(req.prompt, add_special_tokens=req.add_special_tokens)["input_ids"])
        out = {"count": len(ids), "max_model_len": self.engine.max_model_len, "tokens": ids}
        if req.return_token_strs:
            out["token_strs"] = self.tok.convert_ids_to_tokens(ids)
        return out

    def detokenize(self, req: DetokenizeRequest) -> dict:
        self.resolve_model(req.model)
        bad = [t for t in req.tokens if not 0 <= t < self.vocab_size]
        if bad:
            raise APIError(f"'tokens' {bad[:5]} are outside the vocabulary [0, {self.vocab_size})", param="tokens")
        return {"prompt": self.tok.decode(req.tokens)}

    def load_adapter(self, req: LoadLoRARequest) -> dict:
        if self.adapters is None:
            raise APIError("this server has no adapter registry", status=400)
        try:
            ref = self.adapters.add(req.lora_name, req.lora_path, req.load_inplace)
        except ValueError as e:
            raise APIError(str(e), param="lora_path" if "already" not in str(e) else "lora_name") from None
        return {"status": "ok", "lora_name": ref.name, "lora_path": ref.path, "version": ref.version,
                "model": f"{self.model_name}:{ref.name}"}

    def unload_adapter(self, req: UnloadLoRARequest) -> dict:
        try:
            if self.adapters is None:
                raise AdapterNotFound(f"no adapter named {req.lora_name!r} is loaded")
            ref = self.adapters.remove(req.lora_name)
        except AdapterNotFound as e:
            raise APIError(str(e), param="lora_name", status=404, code="model_not_found") from None
        return {"status": "ok", "lora_name": ref.name}

    async def metrics(self) -> str:
        replicas = await self.engine.stats() if hasattr(self.engine, "stats") else []
        return render_metrics([r for r in replicas if isinstance(r, dict)], self.model_name)


def _lineage(path: str | None) -> dict | None:
    """A model folder's lineage; a folder whose run files cannot be read says so instead of failing /v1/models."""
    if not path:
        return None
    from actors.common.runs import lineage

    try:
        return lineage(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return {"path": str(path), "error": f"lineage unreadable: {type(e).__name__}: {e}"}


async def _merge(gens: list[AsyncIterator]) -> AsyncIterator[tuple[int, object]]:
    """Items of several async iterators as they come, tagged with the iterator's index."""
    if len(gens) == 1:
        async for item in gens[0]:
            yield 0, item
        return
    q: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i, g):
        try:
            async for item in g:
                await q.put((i, item))
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            await q.put((i, e))
        finally:
            await q.put((i, done))

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(gens)]
    try:
        left = len(gens)
        while left:
            i, item = await q.get()
            if item is done:
                left -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()


def create_app(engine, tokenizer, model_name: str, guided_tool_calls: bool = True,
               adapters: AdapterRegistry | None = None, api_keys: list[str] | tuple[str, ...] = (),
               model_dir: str | None = None, console: bool = False, runs_root: str | None = None,
               agent=None) -> FastAPI:
    """The API over `engine`. `adapters`: the LoRA adapters it may serve (None: the base only). `api_keys`: when
    given, every route but /health and the console's static shell needs `Authorization: Bearer <key>` (401
    otherwise, in OpenAI's error shape). `model_dir`: the served folder, for /v1/models' lineage. `console`: the web
    console under /ui (actors/serve/console.py) over the runs in `runs_root`; `agent`: an AgentServer handle for
    /v1/agent/chat."""
    from actors.serve.console import add_agent_routes, add_console, is_open

    serving = OpenAIServing(engine, tokenizer, model_name, guided_tool_calls, adapters, model_dir)
    app = FastAPI(title="fullchain OpenAI-compatible API")
    app.state.serving = serving
    keys = frozenset(api_keys)

    if keys:
        @app.middleware("http")
        async def _check_key(request: Request, call_next):
            if not is_open(request.url.path) and not key_ok(request.headers.get("authorization"), keys):
                return APIError("invalid or missing API key; send the header 'Authorization: Bearer <key>' with "
                                "one of the server's api_keys", status=401, code="invalid_api_key").response()
            return await call_next(request)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        msg = exc.detail if exc.status_code != 404 else f"no route {request.method} {request.url.path}; " \
            "use /v1/chat/completions, /v1/completions, /v1/models, /v1/agent/chat, /tokenize, /detokenize, " \
            "/metrics, /health or the console at /ui/"
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

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest):
        return serving.tokenize(req)

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest):
        return serving.detokenize(req)

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(req: LoadLoRARequest):
        return serving.load_adapter(req)

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(req: UnloadLoRARequest):
        return serving.unload_adapter(req)

    @app.get("/metrics")
    async def metrics():
        return Response(await serving.metrics(), media_type=METRICS_TYPE)

    if console:
        add_console(app, serving, runs_root, agent)
    else:
        add_agent_routes(app, serving, agent)
    return app


def key_ok(header: str | None, keys: frozenset[str]) -> bool:
    """`Authorization: Bearer <key>` with a key in `keys` (compared in constant time)."""
    if not header or not header.startswith("Bearer "):
        return False
    given = header[len("Bearer "):].strip().encode()
    return any(hmac.compare_digest(given, k.encode()) for k in keys)
