"""Tool protocol, the calculator and the sandboxed python tool (Ray-free; `actor.py` wraps them in Ray actors).

A tool is a name, a description and a JSON-schema of its arguments (`spec()` is the OpenAI tool dict),
`validate(args)` and `call(args) -> ToolResult`. `call` never raises: a model's bad arguments or an
expression the evaluator refuses come back as `ToolResult(ok=False, error=...)`, so the agent loop can
hand the error to the model as a `tool` message instead of crashing a whole evaluation.

The calculator's evaluator (`actors.tooltask.SafeArithmetic`, shared with eval) walks the `ast` of the expression
and only interprets a whitelist of nodes; nothing is passed to eval()/exec(), and sizes are bounded *before*
computing (`9**9**9` is refused at once, not after minutes of bignum work). The python tool runs real Python,
in the sandbox of `actors.agent.sandbox` (namespaces, seccomp, rlimits), never in this process.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from actors.tooltask import (CALCULATOR_SPEC, EXPRESSION_MAX_CHARS, PYTHON_SPEC, SafeArithmetic, ToolError,
                             format_number)


class ToolArgumentError(ValueError):
    """The arguments of a tool call do not match the tool's JSON schema."""

    def __init__(self, tool: str, argument: str | None, message: str):
        self.tool, self.argument = tool, argument
        super().__init__(f"{tool}: {message}")


@dataclass
class ToolResult:
    ok: bool
    content: str
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ToolResult":
        return cls(ok=bool(d["ok"]), content=str(d.get("content", "")), error=d.get("error"))

    def as_message_content(self) -> str:
        """What the model reads in the `tool` message: the result, or `error: ...`."""
        return self.content if self.ok else f"error: {self.error}"


# JSON-schema type -> (python types, readable name). bool is an int subclass, so it is excluded explicitly.
_JSON_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "string": ((str,), "string"),
    "number": ((int, float), "number"),
    "integer": ((int,), "integer"),
    "boolean": ((bool,), "boolean"),
    "object": ((dict,), "object"),
    "array": ((list,), "array"),
    "null": ((type(None),), "null"),
}


def validate_arguments(tool: str, parameters: dict, args: Any) -> dict:
    """Check `args` against a flat JSON object schema: required keys, property types, no unknown keys.

    Shared by `Tool.validate` and the agent loop (which validates against the spec before a round trip
    to the tool actor, so it can tell "valid call" from "the tool failed").
    """
    if not isinstance(args, dict):
        raise ToolArgumentError(tool, None, f"arguments must be a JSON object, got {type(args).__name__} {args!r}")
    props: dict = parameters.get("properties", {}) or {}
    for key in parameters.get("required", []) or []:
        if key not in args:
            want = props.get(key, {}).get("type", "any")
            raise ToolArgumentError(tool, key, f"missing required argument {key!r} (expected {want})")
    for key, value in args.items():
        if key not in props:
            raise ToolArgumentError(tool, key, f"unknown argument {key!r}; expected arguments: {sorted(props)}")
        allowed = props[key].get("enum")
        if allowed is not None and value not in allowed:
            raise ToolArgumentError(tool, key, f"argument {key!r} must be one of {allowed}, got {value!r}")
        want = props[key].get("type")
        if want is None:
            continue
        types, label = _JSON_TYPES.get(want, ((object,), want))
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise ToolArgumentError(tool, key, f"argument {key!r} must be a {label}, got "
                                               f"{type(value).__name__} {value!r}")
    return args


class Tool:
    """Base class: subclasses set `name`, `description`, `parameters` and implement `run(**args) -> str`."""

    name: str = ""
    description: str = ""
    parameters: dict = {"type": "object", "properties": {}, "required": []}

    def spec(self) -> dict:
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def validate(self, args: Any) -> dict:
        return validate_arguments(self.name, self.parameters, args)

    def run(self, **args: Any) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def call(self, args: Any) -> ToolResult:
        try:
            args = self.validate(args)
            return ToolResult(ok=True, content=self.run(**args))
        except (ToolArgumentError, ToolError) as e:
            return ToolResult(ok=False, content="", error=str(e))
        except Exception as e:  # noqa: BLE001 - a tool bug must reach the model as an error, not kill the loop
            return ToolResult(ok=False, content="", error=f"{type(e).__name__}: {e}")


class Calculator(Tool):
    # the spec the model was fine-tuned on, from the shared contract
    name = CALCULATOR_SPEC["function"]["name"]
    description = CALCULATOR_SPEC["function"]["description"]
    parameters = CALCULATOR_SPEC["function"]["parameters"]

    def __init__(self, max_bits: int = 4096, max_length: int = EXPRESSION_MAX_CHARS):
        self.evaluator = SafeArithmetic(functions=None, max_bits=max_bits, max_length=max_length)

    def run(self, expression: str) -> str:
        return format_number(self.evaluator.evaluate(expression))


class SandboxPython(Tool):
    """The python tool: the code runs in a sandboxed, stateful Python kernel (actors.agent.sandbox), so a
    model may write any Python, numpy included; variables persist between calls of one tool instance. A final
    expression's value is returned as the arithmetic tools format numbers (the contract the model was
    fine-tuned on: `6 / 3` -> 2), anything else as the printed output. Refuses to start where the sandbox
    cannot be built; it never runs code unsandboxed."""

    name = PYTHON_SPEC["function"]["name"]
    description = PYTHON_SPEC["function"]["description"]
    parameters = PYTHON_SPEC["function"]["parameters"]

    def __init__(self, sandbox: dict | None = None):
        from actors.agent.sandbox import PythonKernel, SandboxConfig

        self.kernel = PythonKernel(SandboxConfig(**(sandbox or {})))

    def run(self, code: str) -> str:
        r = self.kernel.run(code)
        if not r.ok:
            raise ToolError(r.text())
        if r.number is not None and r.stdout.strip() == repr(r.number) and not r.restarted:
            return format_number(r.number)
        return r.text().rstrip("\n") or "(no output)"

    def close(self) -> None:
        self.kernel.close()


def _retrieval_tool(index: str, **kw: Any) -> Tool:
    from actors.agent.retrieval import RetrievalTool

    return RetrievalTool(index, **kw)


TOOL_CLASSES: dict[str, Any] = {"calculator": Calculator, "python": SandboxPython, "search_docs": _retrieval_tool}


def make_tool(name: str, **kw: Any) -> Tool:
    if name not in TOOL_CLASSES:
        raise ValueError(f"unknown tool {name!r}; available tools: {sorted(TOOL_CLASSES)}")
    return TOOL_CLASSES[name](**kw)


__all__ = ["Tool", "ToolResult", "ToolArgumentError", "ToolError", "Calculator", "SandboxPython", "SafeArithmetic",
           "TOOL_CLASSES", "make_tool", "validate_arguments", "format_number"]
