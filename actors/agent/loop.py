"""The agent loop: talk to the served model only through the OpenAI chat API, run its tool calls on
tool actors, feed the results back, stop at a final answer or at the step cap.

One step = one `chat.completions.create` call. A reply with `tool_calls` is appended (with its calls),
every call is dispatched and answered by a `tool` message; a reply without tool calls is the final answer.
Nothing is retried: a malformed call is answered with an error message the model can read, and the
transcript records it as invalid, so evaluation numbers stay honest.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from collections.abc import Callable
from typing import Any

import openai
import ray

from actors.agent.tools import ToolArgumentError, ToolResult, validate_arguments


@dataclass
class ToolCallRecord:
    id: str
    name: str
    arguments: str                      # raw JSON text the model produced
    args: dict | None = None            # parsed arguments (None when the JSON was bad)
    known_tool: bool = False
    valid: bool = False                 # known tool + JSON object + schema-valid arguments
    ok: bool = False                    # the tool ran and returned a result
    result: str = ""                    # the tool's content when ok
    error: str | None = None

    def tool_message(self) -> dict:
        # "name" mirrors the synthetic training records' tool messages.
        return {"role": "tool", "tool_call_id": self.id, "name": self.name,
                "content": self.result if self.ok else f"error: {self.error}"}


@dataclass
class StepRecord:
    index: int
    content: str                        # the assistant text of this reply
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class Transcript:
    messages: list[dict]
    steps: list[StepRecord] = field(default_factory=list)
    stopped_reason: str = ""            # "answer" | "max_steps" | "error: ..."
    final_answer: str | None = None

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @property
    def tool_calls(self) -> list[ToolCallRecord]:
        return [c for s in self.steps for c in s.tool_calls]

    def to_dict(self) -> dict:
        return {"messages": self.messages, "steps": [asdict(s) for s in self.steps], "n_steps": self.n_steps,
                "stopped_reason": self.stopped_reason, "final_answer": self.final_answer}

    def to_text(self) -> str:
        """Readable transcript: the conversation turn by turn, tool calls with their outcome."""
        lines: list[str] = []
        for m in self.messages:
            role = m.get("role", "?")
            if role == "assistant" and m.get("tool_calls"):
                if m.get("content"):
                    lines.append(f"assistant: {m['content']}")
                for tc in m["tool_calls"]:
                    fn = tc.get("function", {})
                    lines.append(f"assistant -> {fn.get('name')}({fn.get('arguments')})")
            elif role == "tool":
                lines.append(f"tool[{m.get('name', '?')}]: {m.get('content')}")
            else:
                lines.append(f"{role}: {m.get('content')}")
        lines.append(f"[{self.n_steps} step(s), stopped: {self.stopped_reason}]")
        return "\n".join(lines)

    __str__ = to_text

    def to_markdown(self) -> str:
        """The conversation as Markdown: a line per turn, tool calls and results as code."""
        out: list[str] = []
        for m in self.messages:
            role = m.get("role", "?")
            text = str(m.get("content") or "").strip()
            if role == "tool":
                out.append(f"- **tool `{m.get('name', '?')}`** → `{text}`")
                continue
            if text:
                block = f"\n\n```\n{text}\n```" if "\n" in text or "```" in text else f" {text}"
                out.append(f"- **{role}**:{block}")
            for tc in m.get("tool_calls") or []:
                fn = tc.get("function", {})
                out.append(f"- **{role}** calls `{fn.get('name')}({fn.get('arguments')})`")
        out.append(f"\n_{self.n_steps} step(s), stopped: {self.stopped_reason}_")
        return "\n".join(out)


def _tool_call_fields(tc: Any, fallback_id: str) -> tuple[str, str, str, Any]:
    """(id, type, name, arguments) from an OpenAI tool-call object or a plain dict of the same shape."""
    d = tc.model_dump() if hasattr(tc, "model_dump") else dict(tc)
    fn = d.get("function") or {}
    return (d.get("id") or fallback_id, d.get("type") or "function", fn.get("name") or "", fn.get("arguments"))


def make_client(base_url: str, timeout_s: float = 60.0, api_key: str = "EMPTY") -> openai.OpenAI:
    """An OpenAI client for our OpenAI-compatible server. max_retries=0: a failing request is reported,
    never silently retried."""
    return openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)


class Agent:
    """Native function calling: the tools go to the server as OpenAI `tools`, their calls come back as
    `tool_calls`. Subclasses (actors.agent.styles: ReAct, code) change how a reply is asked for and acted on
    (`complete`, `act`); the loop, the dispatch of calls to tool actors, memory and hooks are shared.

    Memory: `run(prompt, history=messages)` continues an earlier conversation (its transcript's `messages`).
    Hooks: callables `hook(event, payload)` called on "reply" (each model reply), "tool_call" (each call's
    record, after it ran) and "stop" (the transcript, at the end)."""

    def __init__(self, client: openai.OpenAI, model: str, tools: dict[str, Any], max_steps: int = 4,
                 temperature: float = 0.0, max_tokens: int = 64, tool_timeout_s: float = 10.0,
                 hooks: list[Callable[[str, Any], None]] | None = None, tool_choice: str = "auto"):
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if not tools:
            raise ValueError("tools must map at least one tool name to a ToolActor handle")
        if tool_choice not in ("auto", "required", "none", *tools):
            raise ValueError(f"tool_choice must be auto, required, none or a tool's name {list(tools)}, got "
                             f"{tool_choice!r}")
        # the first reply to a user turn; after a tool answered, always "auto" ("required" would never stop)
        self.tool_choice = tool_choice
        self.client, self.model = client, model
        self.tools = dict(tools)
        self.max_steps, self.temperature, self.max_tokens = max_steps, temperature, max_tokens
        self.tool_timeout_s = tool_timeout_s
        self.hooks = list(hooks or [])
        # Specs come from the actors themselves (one round trip), in the order of `tools`.
        specs = ray.get([h.spec.remote() for h in self.tools.values()], timeout=60)
        for name, spec in zip(self.tools, specs):
            if spec["function"]["name"] != name:
                raise ValueError(f"tools[{name!r}] is a {spec['function']['name']!r} tool; key it by its name")
        self.specs: list[dict] = specs
        self._params = {s["function"]["name"]: s["function"]["parameters"] for s in specs}

    @classmethod
    def from_config(cls, cfg, client: openai.OpenAI, model: str, tools: dict[str, Any], **kw) -> "Agent":
        """Build from an AgentConfig and the handles `start_tools(cfg.tools, cfg.mcp_servers,
        cfg.openapi_servers)` started: every name in cfg.tools, then the servers' tools."""
        missing = [t for t in cfg.tools if t not in tools]
        if missing:
            raise ValueError(f"agent.tools lists {missing} but no ToolActor was started for them")
        return cls(client, model, tools, max_steps=cfg.max_steps,
                   temperature=cfg.temperature, max_tokens=cfg.max_tokens, tool_timeout_s=cfg.tool_timeout_s, **kw)

    def emit(self, event: str, payload: Any) -> None:
        for hook in self.hooks:
            hook(event, payload)

    # ------------------------------------------------------------------ tool dispatch (no LLM needed)
    def dispatch(self, tool_calls: list[Any], step: int = 0) -> list[ToolCallRecord]:
        """Run every tool call of one assistant reply; failures become records with an error, never raise.

        Calls are submitted to the actors first and collected after, so the tools of one reply run
        concurrently.
        """
        records: list[ToolCallRecord] = []
        pending: list[tuple[ToolCallRecord, Any]] = []
        for i, tc in enumerate(tool_calls):
            cid, ctype, name, raw = _tool_call_fields(tc, f"call_{step}_{i}")
            rec = ToolCallRecord(id=cid, name=name, arguments=raw if isinstance(raw, str) else json.dumps(raw))
            records.append(rec)
            if ctype != "function":
                rec.error = f"unsupported tool call type {ctype!r}; only 'function' tools exist"
                continue
            if name not in self.tools:
                rec.error = f"unknown tool {name!r}; available: {list(self.tools)}"
                continue
            rec.known_tool = True
            if isinstance(raw, dict):
                args = raw
            else:
                try:
                    args = json.loads(raw) if raw not in (None, "") else {}
                except (json.JSONDecodeError, TypeError) as e:
                    rec.error = f"arguments of {name!r} are not valid JSON ({e}): {raw!r}"
                    continue
            try:
                rec.args = validate_arguments(name, self._params[name], args)
            except ToolArgumentError as e:
                rec.error = str(e)
                continue
            rec.valid = True
            pending.append((rec, self.tools[name].call.remote(rec.args)))
        for rec, ref in pending:
            try:
                res = ToolResult.from_dict(ray.get(ref, timeout=self.tool_timeout_s))
            except ray.exceptions.GetTimeoutError:
                ray.cancel(ref, force=False)
                rec.error = f"tool {rec.name!r} timed out after {self.tool_timeout_s}s"
                continue
            except ray.exceptions.RayError as e:
                rec.error = f"tool {rec.name!r} failed: {type(e).__name__}: {str(e).splitlines()[0]}"
                continue
            rec.ok, rec.result, rec.error = res.ok, res.content, res.error
        for rec in records:
            self.emit("tool_call", rec)
        return records

    def execute_tool_calls(self, tool_calls: list[Any]) -> list[dict]:
        """The `tool` messages answering one assistant reply's tool calls (one per call, in order)."""
        return [r.tool_message() for r in self.dispatch(tool_calls)]

    # ------------------------------------------------------------------ one style: native function calling
    def complete(self, messages: list[dict]) -> tuple[str, list, str | None]:
        """(reply text, its tool calls, finish reason) for the conversation so far."""
        resp = self.client.chat.completions.create(
            model=self.model, messages=messages, tools=self.specs, tool_choice=self.choice_for(messages),
            temperature=self.temperature, max_tokens=self.max_tokens)
        if not resp.choices:
            raise NoReply("the server returned no choices")
        choice = resp.choices[0]
        return choice.message.content or "", list(choice.message.tool_calls or []), choice.finish_reason

    def choice_for(self, messages: list[dict]) -> str | dict:
        """`tool_choice` for the next reply: the configured one (a tool's name: that function, OpenAI's named
        choice) until a tool has answered in this turn."""
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
        if any(m.get("role") == "tool" for m in messages[last_user + 1:]):
            return "auto"
        if self.tool_choice in ("auto", "required", "none"):
            return self.tool_choice
        return {"type": "function", "function": {"name": self.tool_choice}}

    def act(self, messages: list[dict], rec: StepRecord, calls: list, session: dict) -> str | None:
        """Carry out one reply: append it and what it caused to `messages`; the final answer, or None to go on."""
        if not calls:
            messages.append({"role": "assistant", "content": rec.content})
            return rec.content
        rec.tool_calls = self.dispatch(calls, rec.index)
        messages.append({"role": "assistant", "content": rec.content, "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in rec.tool_calls]})
        messages.extend(c.tool_message() for c in rec.tool_calls)
        return None

    def open_session(self) -> dict:
        """Per-conversation state (the code agent's kernel); closed by `close_session` when the run ends."""
        return {}

    def close_session(self, session: dict) -> None:
        """Release what `open_session` made."""

    # ------------------------------------------------------------------ the loop
    def run(self, prompt: str | list[dict], history: list[dict] | None = None) -> Transcript:
        new = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
        messages = [dict(m) for m in (history or [])] + new
        tr = Transcript(messages=messages)
        session = self.open_session()
        try:
            for step in range(self.max_steps):
                try:
                    content, calls, finish = self.complete(messages)
                except (openai.OpenAIError, NoReply) as e:
                    tr.stopped_reason = f"error: {type(e).__name__}: {e}"
                    break
                rec = StepRecord(index=step, content=content, finish_reason=finish)
                tr.steps.append(rec)
                self.emit("reply", rec)
                answer = self.act(messages, rec, calls, session)
                if answer is not None:
                    tr.final_answer, tr.stopped_reason = answer, "answer"
                    break
            else:
                tr.stopped_reason = "max_steps"
        finally:
            self.close_session(session)
        self.emit("stop", tr)
        return tr


class NoReply(RuntimeError):
    """The server answered without a reply to act on."""


__all__ = ["Agent", "NoReply", "Transcript", "StepRecord", "ToolCallRecord", "make_client"]
