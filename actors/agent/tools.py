"""Tool protocol and the two arithmetic tools (Ray-free; `actor.py` wraps them in Ray actors).

A tool is a name, a description and a JSON-schema of its arguments (`spec()` is the OpenAI tool dict),
`validate(args)` and `call(args) -> ToolResult`. `call` never raises: a model's bad arguments or an
expression the evaluator refuses come back as `ToolResult(ok=False, error=...)`, so the agent loop can
hand the error to the model as a `tool` message instead of crashing a whole evaluation.

The evaluators walk the `ast` of the expression and only interpret a whitelist of nodes; nothing is ever
passed to eval()/exec(). Sizes are bounded *before* computing (`9**9**9` is refused at once, not after
minutes of bignum work).
"""
from __future__ import annotations

import ast
import math
import operator
from dataclasses import asdict, dataclass
from typing import Any, Callable


class ToolArgumentError(ValueError):
    """The arguments of a tool call do not match the tool's JSON schema."""

    def __init__(self, tool: str, argument: str | None, message: str):
        self.tool, self.argument = tool, argument
        super().__init__(f"{tool}: {message}")


class ToolError(ValueError):
    """The tool understood its arguments but refuses or cannot compute them (unsafe syntax, x/0, ...)."""


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


# ---------------------------------------------------------------------------------------------------------
# Safe arithmetic evaluation
# ---------------------------------------------------------------------------------------------------------
_BINOPS: dict[type, tuple[Callable[[Any, Any], Any], str]] = {
    ast.Add: (operator.add, "+"), ast.Sub: (operator.sub, "-"), ast.Mult: (operator.mul, "*"),
    ast.Div: (operator.truediv, "/"), ast.FloorDiv: (operator.floordiv, "//"), ast.Mod: (operator.mod, "%"),
    ast.Pow: (operator.pow, "**"),
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_OP_SYMBOL = {ast.BitXor: "^", ast.BitAnd: "&", ast.BitOr: "|", ast.LShift: "<<", ast.RShift: ">>",
              ast.MatMult: "@", ast.Invert: "~", ast.Not: "not"}


def _check_args(name: str, n: int, lo: int, hi: int | None) -> None:
    if n < lo or (hi is not None and n > hi):
        want = f"{lo}" if hi == lo else f"{lo} or more" if hi is None else f"{lo} to {hi}"
        raise ToolError(f"{name}() takes {want} arguments, got {n}")


def _round(*a):
    _check_args("round", len(a), 1, 2)
    if len(a) == 2:
        if not isinstance(a[1], int):
            raise ToolError("round(): ndigits must be an integer")
        if abs(a[1]) > 100:
            raise ToolError("round(): ndigits must be between -100 and 100")
    return round(*a)


def _abs(*a):
    _check_args("abs", len(a), 1, 1)
    return abs(a[0])


def _min(*a):
    _check_args("min", len(a), 2, None)   # min(x) would need an iterable; only numbers exist here
    return min(a)


def _max(*a):
    _check_args("max", len(a), 2, None)
    return max(a)


SAFE_FUNCTIONS: dict[str, Callable] = {"abs": _abs, "min": _min, "max": _max, "round": _round}


class SafeArithmetic:
    """Interpret a whitelisted arithmetic subset of Python expressions.

    max_bits bounds every integer (and the predicted size of `a ** b` before computing it);
    max_length bounds the source text (and with it the AST depth).
    """

    def __init__(self, functions: dict[str, Callable] | None = None, max_bits: int = 4096,
                 max_length: int = 500):
        self.functions = dict(functions or {})
        self.max_bits = max_bits
        self.max_length = max_length

    def evaluate(self, source: str) -> int | float:
        if not isinstance(source, str):
            raise ToolError(f"expected an expression string, got {type(source).__name__}")
        src = source.strip()
        if not src:
            raise ToolError("empty expression")
        if len(src) > self.max_length:
            raise ToolError(f"expression too long ({len(src)} characters, limit {self.max_length})")
        try:
            tree = ast.parse(src, mode="eval")
        except (SyntaxError, ValueError) as e:
            raise ToolError(f"invalid expression {src!r}: {getattr(e, 'msg', e)}") from None
        except (RecursionError, MemoryError):
            raise ToolError("expression nested too deeply") from None
        try:
            value = self._eval(tree.body)
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("result too large") from None
        except RecursionError:
            raise ToolError("expression nested too deeply") from None
        return self._check_value(value)

    def _check_value(self, v: Any) -> int | float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            # e.g. (-8) ** 0.5 is a complex number in Python
            raise ToolError(f"result is not a real number ({type(v).__name__})")
        if isinstance(v, int) and v.bit_length() > self.max_bits:
            raise ToolError(f"result too large (more than {self.max_bits} bits)")
        if isinstance(v, float) and not math.isfinite(v):
            raise ToolError("result is not finite (overflow)")
        return v

    def _eval(self, node: ast.AST) -> int | float:
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                kind = "string literals" if isinstance(v, (str, bytes)) else f"{type(v).__name__} literals"
                raise ToolError(f"{kind} are not allowed; only int and float numbers")
            return self._check_value(v)
        if isinstance(node, ast.BinOp):
            op = _BINOPS.get(type(node.op))
            if op is None:
                sym = _OP_SYMBOL.get(type(node.op), type(node.op).__name__)
                raise ToolError(f"operator {sym!r} is not supported; use + - * / // % **")
            left, right = self._eval(node.left), self._eval(node.right)
            if op[1] == "**":
                self._check_power(left, right)
            return self._check_value(op[0](left, right))
        if isinstance(node, ast.UnaryOp):
            fn = _UNARY.get(type(node.op))
            if fn is None:
                sym = _OP_SYMBOL.get(type(node.op), type(node.op).__name__)
                raise ToolError(f"operator {sym!r} is not supported; only unary - and +")
            return self._check_value(fn(self._eval(node.operand)))
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Name):
            raise ToolError(f"names are not allowed (got {node.id!r}); write numbers only")
        if isinstance(node, ast.Attribute):
            raise ToolError(f"attribute access is not allowed (got .{node.attr})")
        if isinstance(node, ast.Lambda):
            raise ToolError("lambda is not allowed")
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            raise ToolError("comprehensions are not allowed")
        if isinstance(node, ast.JoinedStr):
            raise ToolError("string literals are not allowed; only int and float numbers")
        raise ToolError(f"{type(node).__name__} is not allowed; only numbers, + - * / // % ** and parentheses"
                        + (f" and {', '.join(sorted(self.functions))}()" if self.functions else ""))

    def _call(self, node: ast.Call) -> int | float:
        if not self.functions:
            raise ToolError("function calls are not allowed; only numbers, + - * / // % ** and parentheses")
        fname = node.func.id if isinstance(node.func, ast.Name) else None
        if fname not in self.functions:
            shown = fname or ast.unparse(node.func)
            raise ToolError(f"calling {shown!r} is not allowed; only {', '.join(sorted(self.functions))}")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise ToolError(f"{fname}(): only plain positional arguments are allowed")
        return self._check_value(self.functions[fname](*[self._eval(a) for a in node.args]))

    def _check_power(self, base: int | float, exp: int | float) -> None:
        # Predict the size of an exact integer power before computing it; float powers overflow on
        # their own (OverflowError, caught above) and are cheap.
        if isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1:
            if exp > self.max_bits or exp * math.log2(abs(base)) > self.max_bits:
                raise ToolError(f"exponent too large: {base} ** {exp} would exceed {self.max_bits} bits")


def format_number(v: int | float) -> str:
    """Integers (and integral floats such as 6 / 3) without '.0'; other floats to 12 significant digits."""
    if isinstance(v, int):
        return str(v)
    if v.is_integer() and abs(v) < 2 ** 53:
        return str(int(v))
    return format(v, ".12g")


class Calculator(Tool):
    # name/description/parameters must equal actors.data.synthetic.CALCULATOR_SPEC: the model was
    # fine-tuned on that exact spec (tests assert equality).
    name = "calculator"
    description = "Evaluate an arithmetic expression with + - * / and parentheses."
    parameters = {
        "type": "object",
        "properties": {"expression": {"type": "string", "description": "e.g. 12 * (3 + 4)"}},
        "required": ["expression"],
    }

    def __init__(self, max_bits: int = 4096, max_length: int = 500):
        self.evaluator = SafeArithmetic(functions=None, max_bits=max_bits, max_length=max_length)

    def run(self, expression: str) -> str:
        return format_number(self.evaluator.evaluate(expression))


class PythonEval(Tool):
    """Python expression evaluator limited to safe arithmetic (the calculator plus abs/min/max/round)."""

    # Must equal actors.data.synthetic.PYTHON_SPEC (see Calculator).
    name = "python"
    description = "Evaluate a Python arithmetic expression."
    parameters = {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "e.g. max(3, 7) ** 2"}},
        "required": ["code"],
    }

    def __init__(self, max_bits: int = 4096, max_length: int = 500):
        self.evaluator = SafeArithmetic(functions=SAFE_FUNCTIONS, max_bits=max_bits, max_length=max_length)

    def run(self, code: str) -> str:
        return format_number(self.evaluator.evaluate(code))


TOOL_CLASSES: dict[str, type[Tool]] = {"calculator": Calculator, "python": PythonEval}


def make_tool(name: str, **kw: Any) -> Tool:
    if name not in TOOL_CLASSES:
        raise ValueError(f"unknown tool {name!r}; available tools: {sorted(TOOL_CLASSES)}")
    return TOOL_CLASSES[name](**kw)


__all__ = ["Tool", "ToolResult", "ToolArgumentError", "ToolError", "Calculator", "PythonEval", "SafeArithmetic",
           "TOOL_CLASSES", "make_tool", "validate_arguments", "format_number"]
