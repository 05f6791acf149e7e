"""OpenAI API request/response models (pydantic v2), shaped as api.openai.com shapes them.

Requests reject unknown fields (a typo such as `max_token` would otherwise be silently ignored) and
unsupported values (suffix, a tool_choice naming an unknown tool) with messages that name the field and the fix;
the API layer turns these into OpenAI-style 400 error bodies.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------------------------------
# Requests


class FunctionCall(_Strict):
    name: str
    arguments: str = Field(description="JSON-encoded arguments, as OpenAI sends them")


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _role_rules(self):
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs tool_call_id: the id of the assistant tool call it answers")
        if self.role == "assistant":
            if self.content is None and not self.tool_calls:
                raise ValueError("an 'assistant' message needs content or tool_calls")
        elif self.content is None:
            raise ValueError(f"a {self.role!r} message needs content (a string)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"only assistant messages may carry tool_calls, not {self.role!r}")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""

    def for_template(self) -> dict:
        """Plain dict for the chat template (content parts joined, absent fields dropped)."""
        d: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            d["tool_calls"] = [tc.model_dump() for tc in self.tool_calls]
        if self.tool_call_id:
            d["tool_call_id"] = self.tool_call_id
        if self.name:
            d["name"] = self.name
        return d


class FunctionSpec(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolSpec(_Strict):
    type: Literal["function"] = "function"
    function: FunctionSpec


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaFormat(_Strict):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    """OpenAI's `response_format`: free text, any JSON object, or JSON valid under a schema (both decoded under
    the grammar, so the output always parses)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _needs_schema(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object: {\"name\": ..., \"schema\": {...}}")
        return self


class _SamplingFields(_Strict):
    """Fields shared by chat and text completions (OpenAI's, plus vLLM's sampling extensions)."""

    model: str
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=16)
    user: str | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    # vLLM extensions, accepted under the same names
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    min_tokens: int | None = Field(default=None, ge=0)
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    response_format: ResponseFormat | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError(f"at most 4 stop sequences are allowed, got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return v

    @field_validator("stop_token_ids")
    @classmethod
    def _stop_ids(cls, v):
        if v and any(t < 0 for t in v):
            raise ValueError("stop_token_ids must be token ids >= 0")
        return v

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def sampling_kwargs(self) -> dict[str, Any]:
        """The fields that map one to one onto the engine's SamplingParams (absent ones keep its defaults)."""
        kw: dict[str, Any] = {"temperature": 1.0 if self.temperature is None else self.temperature,
                              "top_p": 1.0 if self.top_p is None else self.top_p, "stop": self.stop_list(),
                              "seed": self.seed, "ignore_eos": self.ignore_eos,
                              "stop_token_ids": list(self.stop_token_ids or [])}
        for name in ("presence_penalty", "frequency_penalty", "top_k", "min_p", "repetition_penalty", "min_tokens"):
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        return kw


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"] = "function"
    function: NamedFunction


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, tc, info):
        tools = info.data.get("tools")
        if (isinstance(tc, NamedToolChoice) or tc == "required") and not tools:
            raise ValueError(f"{tc!r} needs 'tools'; send the tools the model may call" if isinstance(tc, str)
                             else "naming a function needs 'tools'; send the tools the model may call")
        if isinstance(tc, NamedToolChoice):
            names = [t.function.name for t in tools]
            if tc.function.name not in names:
                raise ValueError(f"names {tc.function.name!r}, which is not in tools {names}")
        return tc

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, v, info):
        if v is not None and not info.data.get("logprobs"):
            raise ValueError("needs logprobs: true")
        return v

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def template_tools(self) -> list[dict] | None:
        """Tools the prompt advertises; tool_choice='none' renders the prompt as if there were none."""
        if not self.tools or self.tool_choice == "none":
            return None
        return [t.model_dump(exclude_none=True) for t in self.tools]

    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=0)  # OpenAI's default; 0 scores the prompt (echo + logprobs)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    suffix: str | None = None
    return_tokens_as_token_ids: bool = False   # vLLM: logprob tokens as "token_id:123"

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v):
        if isinstance(v, list):
            if len(v) == 0:
                raise ValueError("prompt is empty; give a string, a list of strings or of token ids")
            if any(isinstance(p, (str, list)) and len(p) == 0 for p in v):
                raise ValueError("prompt has an empty entry; every prompt needs some text or tokens")
        elif v == "":
            raise ValueError("prompt is empty; give a non-empty string")
        return v

    @field_validator("suffix")
    @classmethod
    def _unsupported(cls, v):
        if v:
            raise ValueError("suffix (fill-in-the-middle) is not supported by this server; leave the field out")
        return v

    def prompt_list(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, list) and isinstance(p[0], (str, list)):
            return list(p)
        return [p]


# ----------------------------------------------------------------------------------------------------
# Responses


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0            # prompt tokens whose KV came from the prefix cache


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None

    @classmethod
    def of(cls, prompt: int, completion: int, cached: int | None = None) -> "Usage":
        details = None if cached is None else PromptTokensDetails(cached_tokens=cached)
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                   prompt_tokens_details=details)


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    """The legacy shape (`/v1/completions`), as lm-eval's local-completions reads it."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class ChatChoice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: Literal["stop", "length", "tool_calls"] | None
    logprobs: ChatLogprobs | None = None


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class DeltaFunctionCall(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "fullchain"
    max_model_len: int | None = None
    root: str | None = None           # vLLM: the base model's name, or an adapter's folder
    parent: str | None = None         # vLLM: an adapter's base model
    # where the weights come from (actors/common/runs.py `lineage`): checkpoint, training run and config, base,
    # data shards and card, eval scores
    lineage: dict | None = None


class AgentChatRequest(_Strict):
    """POST /v1/agent/chat: one user turn run through the agent's tool loop on the server."""
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1, le=8192)
    max_steps: int | None = Field(None, ge=1, le=16, description="model calls: tool rounds plus the answer")
    tool_choice: str = Field(
        "auto", description="auto, required, none or one tool's name, for the first reply of the turn; once a tool "
                            "answered the agent goes on with auto")
    tools: list[str] | None = Field(None, description="a subset of the agent's tools (GET /v1/agent lists them)")

    @model_validator(mode="after")
    def _ends_with_user(self):
        if self.messages[-1].role != "user":
            raise ValueError("the last message must be the user's turn (role 'user') for the agent to answer")
        return self


class TokenizeRequest(_Strict):
    """vLLM's /tokenize: a text prompt, or chat messages rendered through the chat template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    tools: list[ToolSpec] | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool = False
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' (text) or 'messages' (a chat)")
        return self


class DetokenizeRequest(_Strict):
    model: str | None = None
    tokens: list[int]


class LoadLoRARequest(_Strict):
    """vLLM's /v1/load_lora_adapter; `load_inplace` replaces an adapter of the same name (requests in flight
    finish on the one they started with)."""

    lora_name: str = Field(min_length=1, pattern=r"^[^:/\s]+$")
    lora_path: str = Field(min_length=1)
    load_inplace: bool = False


class UnloadLoRARequest(_Strict):
    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


def new_tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"
