"""Agent styles beyond native function calling (`loop.Agent`), sharing its loop, dispatch, memory and hooks:

    ReActAgent   plain text for models without a tools template (Yao et al. 2023; Lagent's ReAct): the tools are
                 described in the system turn, a reply is `Thought: ... Action: <tool> Action Input: {json}`
                 (several actions in one reply run in parallel) or `Final Answer: ...`; results come back as
                 `Observation: ...` user turns.
    CodeAgent    actions are Python (smolagents' CodeAgent): a reply's ```python block runs in the session's
                 sandboxed kernel (actors.agent.sandbox), where every tool is a Python function that calls the
                 tool actor through the kernel's one channel to the host; `final_answer(x)` ends the run, the
                 printed output is the observation. The kernel lives as long as the conversation.
Both prompts are the shared contract's (actors.tooltask), which the fine-tuning rows of both styles also use.
"""
from __future__ import annotations

import json
import re
from typing import Any

from actors.agent.loop import Agent, NoReply, StepRecord
from actors.tooltask import CODE_PROMPT, REACT_PROMPT, code_tool_lines, python_identifier, react_tool_lines

_ACTION = re.compile(r"Action:\s*([\w.-]+)\s*\n\s*Action Input:\s*", re.I)
_FINAL = re.compile(r"Final Answer:\s*(.*)", re.I | re.S)
_CODE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.S)


def _with_system(messages: list[dict], text: str) -> list[dict]:
    """`text` as the system turn, after the conversation's own system text if it has one."""
    if messages and messages[0].get("role") == "system":
        return [{"role": "system", "content": f"{messages[0].get('content') or ''}\n\n{text}".strip()},
                *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _json_object(text: str) -> str:
    """The first balanced {...} of `text` (the JSON may itself contain braces and newlines), else its first line."""
    start = text.find("{")
    if start < 0:
        return text.split("\n", 1)[0].strip()
    depth, in_str, esc = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return text[start:]


def parse_react(text: str) -> tuple[list[dict], str | None]:
    """(the reply's actions as OpenAI-shaped tool calls, its final answer or None)."""
    calls = []
    for i, m in enumerate(_ACTION.finditer(text)):
        args = _json_object(text[m.end():])
        calls.append({"id": f"react_{i}", "type": "function", "function": {"name": m.group(1), "arguments": args}})
    final = _FINAL.search(text)
    return calls, (final.group(1).strip() if final else None)


class ReActAgent(Agent):
    def complete(self, messages: list[dict]) -> tuple[str, list, str | None]:
        prompt = REACT_PROMPT.format(tools=react_tool_lines(self.specs))
        resp = self.client.chat.completions.create(
            model=self.model, messages=_with_system(messages, prompt), temperature=self.temperature,
            max_tokens=self.max_tokens, stop=["Observation:"])
        if not resp.choices:
            raise NoReply("the server returned no choices")
        choice = resp.choices[0]
        content = choice.message.content or ""
        calls, _ = parse_react(content)
        return content, calls, choice.finish_reason

    def act(self, messages: list[dict], rec: StepRecord, calls: list, session: dict) -> str | None:
        messages.append({"role": "assistant", "content": rec.content})
        if not calls:   # a final answer, or a model that simply answered
            final = _FINAL.search(rec.content)
            return final.group(1).strip() if final else rec.content.strip()
        rec.tool_calls = self.dispatch(calls, rec.index)
        obs = "\n".join(f"Observation: {c.result if c.ok else 'error: ' + str(c.error)}" for c in rec.tool_calls)
        messages.append({"role": "user", "content": obs})
        return None




def tool_functions(specs: list[dict]) -> str:
    """Python source defining one function per tool spec, each calling the host through `__tool__`."""
    out = []
    for spec in specs:
        f = spec["function"]
        props = (f.get("parameters") or {}).get("properties") or {}
        req = set((f.get("parameters") or {}).get("required") or [])
        names = [k for k in props if k in req] + [k for k in props if k not in req]
        sig = ", ".join(k if k in req else f"{k}=None" for k in names)
        body = "{" + ", ".join(f"{k!r}: {k}" for k in names) + "}"
        out.append(f"def {python_identifier(f['name'])}({sig}):\n    {json.dumps(f.get('description', ''))}\n"
                   f"    return __tool__({f['name']!r}, {{k: v for k, v in {body}.items() if v is not None}})\n")
    return "\n".join(out)


class CodeAgent(Agent):
    """Python actions in a sandbox kernel per conversation (`sandbox` is a SandboxConfig or None: defaults)."""

    def __init__(self, *args: Any, sandbox=None, **kw: Any):
        super().__init__(*args, **kw)
        self.sandbox = sandbox

    def open_session(self) -> dict:
        from actors.agent.sandbox import PythonKernel

        kernel = PythonKernel(self.sandbox)
        setup = kernel.run(tool_functions(self.specs))
        if not setup.ok:
            kernel.close()
            raise RuntimeError(f"the code agent's tool functions did not load: {setup.error}")
        return {"kernel": kernel}

    def close_session(self, session: dict) -> None:
        if "kernel" in session:
            session["kernel"].close()

    def complete(self, messages: list[dict]) -> tuple[str, list, str | None]:
        tools = code_tool_lines(self.specs)
        resp = self.client.chat.completions.create(
            model=self.model, messages=_with_system(messages, CODE_PROMPT.format(tools=tools)),
            temperature=self.temperature, max_tokens=self.max_tokens)
        if not resp.choices:
            raise NoReply("the server returned no choices")
        choice = resp.choices[0]
        return choice.message.content or "", [], choice.finish_reason

    def act(self, messages: list[dict], rec: StepRecord, calls: list, session: dict) -> str | None:
        messages.append({"role": "assistant", "content": rec.content})
        block = _CODE.search(rec.content)
        if block is None:   # no code: the reply is the answer
            final = _FINAL.search(rec.content)
            return final.group(1).strip() if final else rec.content.strip()

        def bridge(name: str, args: Any) -> dict:
            """A tool call from inside the kernel: validated and run on the tool actor like a native one."""
            [r] = self.dispatch([{"id": f"code_{rec.index}_{len(rec.tool_calls)}", "type": "function",
                                  "function": {"name": name, "arguments": args if isinstance(args, dict) else
                                               json.dumps(args)}}], rec.index)
            rec.tool_calls.append(r)
            return {"ok": r.ok, "content": r.result, "error": r.error}

        res = session["kernel"].run(block.group(1), tools=bridge)
        if res.ok and res.final is not None:
            return res.final
        obs = res.text().strip() or "(no output)"
        messages.append({"role": "user", "content": f"Observation:\n{obs}"})
        return None


STYLES = {"function_calling": Agent, "react": ReActAgent, "code": CodeAgent}
