"""The tool-task contract: the one module data, fine-tune, eval, serve and agent agree through.

It owns
- the tool specs of the arithmetic task (`CALCULATOR_SPEC`, `PYTHON_SPEC`, `TOOLS`) and which argument holds
  the expression (`TOOL_ARGUMENT`);
- the safe arithmetic evaluator (`SafeArithmetic`, AST whitelist, sizes bounded before computing) behind both
  tools (`run_tool`) and the one number format of their results (`format_number`);
- the call format `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Hermes/Qwen/InternLM2 style):
  `render_tool_call` and `parse_tool_calls`;
- how tools reach a chat template that has no tool support (`fold_tools`): they become one block appended to the
  system turn, assistant tool calls become `<tool_call>` lines of the assistant text, and tool results become a
  user turn wrapped in `<tool_response>` tags (as Hermes/Qwen2.5 put them), so any template renders them;
- prompt building (`prompt_messages`) and answer extraction (`last_number`, `same_number`).

Pure Python (no torch, no Ray): every stage may import it.

The tools block, appended to the system text after a blank line (or as the whole system turn):

    # Tools
    You may call these functions:
    calculator(expression: string) - Evaluate an arithmetic expression with + - * / and parentheses.
      expression: e.g. 12 * (3 + 4)
    python(code: string) - Run Python code (the standard library and numpy); returns the last expression's value.
      code: e.g. sum(i ** 2 for i in range(10))
    Call each as <tool_call>{"name": ..., "arguments": {...}}</tool_call>, one line per call; answer without a
    call when no function fits.

Each tool is one signature line `name(arg: type, opt?: type) - description` (enums as `"a"|"b"`, arrays as
`float[]`), as Functionary renders TypeScript-like signatures, then one indented line per described parameter:
two tools take ~330 characters instead of ~700 for their JSON schemas. The parameter lines carry what a value
must look like ("'City, Country' if the city has no state"): without them a fine-tuned 135M model answered
"CA" for every city of one BFCL live_simple function.
"""
from __future__ import annotations

import ast
import json
import math
import operator
import re
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

# ---------------------------------------------------------------------------------------------------------
# Tool specs of the arithmetic task
# ---------------------------------------------------------------------------------------------------------
# the longest expression the evaluator takes; the calculator's schema says so, and a guided call is held to it
EXPRESSION_MAX_CHARS = 500
CALCULATOR_SPEC = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression with + - * / and parentheses.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "maxLength": EXPRESSION_MAX_CHARS,
                                          "description": "e.g. 12 * (3 + 4)"}},
            "required": ["expression"],
        },
    },
}
PYTHON_SPEC = {
    "type": "function",
    "function": {
        "name": "python",
        "description": "Run Python code (the standard library and numpy); returns the last expression's value.",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "e.g. sum(i ** 2 for i in range(10))"}},
            "required": ["code"],
        },
    },
}
TOOLS = [CALCULATOR_SPEC, PYTHON_SPEC]
SEARCH_DOCS_SPEC = {
    "type": "function",
    "function": {
        "name": "search_docs",
        "description": "Search the document collection; returns passages, each with [doc id] to cite.",
        "parameters": {"type": "object", "required": ["query"], "properties": {
            "query": {"type": "string", "description": "what to look for"},
            "k": {"type": "integer", "description": "how many passages (default 3)"}}},
    },
}


PASSAGE_CHARS = 240   # of each passage search_docs shows: 3 passages then fit a 512-token training row


def format_passages(hits: list[tuple[str, str]], max_chars: int = PASSAGE_CHARS) -> str:
    """search_docs' result text: each (doc_id, passage) as "[doc_id] passage", blank-line separated."""
    return "\n\n".join(f"[{doc_id}] {text[:max_chars]}" for doc_id, text in hits) or "no passage matches"


def cites(answer: str | None, doc_id: str) -> bool:
    """Whether an answer cites `doc_id` as search_docs shows it ("[doc_id]")."""
    return f"[{doc_id}]" in (answer or "")
TOOL_ARGUMENT = {"calculator": "expression", "python": "code"}   # the argument holding the expression


# ---------------------------------------------------------------------------------------------------------
# Safe arithmetic
# ---------------------------------------------------------------------------------------------------------
class ToolError(ValueError):
    """The tool understood its arguments but refuses or cannot compute them (unsafe syntax, x/0, ...)."""


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
    """Interpret a whitelisted arithmetic subset of Python expressions by walking the AST (never eval()).

    max_bits bounds every integer (and the predicted size of `a ** b` before computing it, so `9**9**9` is
    refused at once); max_length bounds the source text (and with it the AST depth).
    """

    def __init__(self, functions: dict[str, Callable] | None = None, max_bits: int = 4096,
                 max_length: int = EXPRESSION_MAX_CHARS):
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
    """Integers (and integral floats such as 6 / 3) without '.0'; other floats to 12 significant digits
    (1/3 -> 0.333333333333)."""
    if isinstance(v, int):
        return str(v)
    if v.is_integer() and abs(v) < 2 ** 53:
        return str(int(v))
    return format(v, ".12g")


# calculator: operators only; python: operators plus abs/min/max/round
EVALUATORS = {"calculator": SafeArithmetic(functions=None), "python": SafeArithmetic(functions=SAFE_FUNCTIONS)}


def run_tool(name: str, expression: str) -> str:
    """What the arithmetic tool `name` returns for `expression` (raises ToolError when it refuses)."""
    if name not in EVALUATORS:
        raise ToolError(f"unknown tool {name!r}; available: {sorted(EVALUATORS)}")
    return format_number(EVALUATORS[name].evaluate(expression))


def tool_result_text(name: str, expression: str) -> str:
    """The `tool` message content for a call: the result, or `error: <why>` (never raises)."""
    try:
        return run_tool(name, expression)
    except ToolError as e:
        return f"error: {e}"


def valid_call(calls: list[dict]) -> tuple[dict, str] | None:
    """The first call to a known arithmetic tool whose expression argument is a string, with that string."""
    for c in calls:
        key = TOOL_ARGUMENT.get(c["name"])
        if key is not None and isinstance(c["arguments"].get(key), str):
            return c, c["arguments"][key]
    return None


# ---------------------------------------------------------------------------------------------------------
# Call format: render and parse
# ---------------------------------------------------------------------------------------------------------
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
_TOOL_CALL_RE = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.S)


def _arguments(args: Any) -> Any:
    """OpenAI sends arguments as a JSON string; templates and records may hold the object."""
    if isinstance(args, str):
        try:
            return json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return args
    return args


def render_tool_call(name: str, arguments: Any) -> str:
    """One call as the model writes it: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`."""
    body = json.dumps({"name": name, "arguments": _arguments(arguments)}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"


def call_grammar(tools: list[dict], loose: bool = False) -> str:
    """The grammar (llguidance's Lark, `%json` for a JSON schema) of one call after TOOL_CALL_OPEN through
    TOOL_CALL_CLOSE, exactly as `render_tool_call` writes it: `{"name": <an offered name>, "arguments": <an
    object of that function's parameters schema>}`. The serving engine guides a call with it once the model
    opens one (llama.cpp's lazy tool-call grammars; OpenAI's strict function calling), so a name is always
    offered, every required argument is there, no unknown one is, and values have their schema's types and
    enums. Top-level extra keys are refused unless the schema allows them; `loose` keeps the names but lets
    arguments be any object (a schema the matcher cannot compile)."""
    alts, rules = [], []
    for i, t in enumerate(tools):
        f = _fn(t)
        params = f.get("parameters") if isinstance(f.get("parameters"), dict) else {}
        schema = {"type": "object"} if loose else {"type": "object", "additionalProperties": False, **params}
        # render_tool_call's json.dumps spacing; unknown keywords (BFCL's "default"s, formats) are ignored
        schema["x-guidance"] = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False,
                                "lenient": True}
        head = '{"name": ' + json.dumps(f["name"], ensure_ascii=False) + ', "arguments": '
        rules += [f'call_{i}: {json.dumps(head)} args_{i} "}}" close', f"args_{i}: %json {json.dumps(schema)}"]
        alts.append(f"call_{i}")
    # the close tag is its own rule: where a tokenizer has it as one added token, the engine adds that token
    return "start: " + " | ".join(alts) + "\n" + "\n".join(rules) + f"\nclose: {json.dumps(TOOL_CALL_CLOSE)}\n"


def parse_call_json(raw: str) -> tuple[dict | None, str | None]:
    """One call body (the JSON between the tags, or a dataset's function_call) as ({"name", "arguments": dict},
    None) or (None, reason); arguments given as a JSON string are decoded."""
    raw = raw.strip()
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        return None, f"tool call is not valid JSON ({e.msg} at char {e.pos}): {raw[:80]!r}"
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None, f"tool call has no string 'name': {raw[:80]!r}"
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None, f"tool call arguments are not a JSON object: {args[:80]!r}"
    if not isinstance(args, dict):
        return None, f"tool call arguments must be an object, got {type(args).__name__}"
    return {"name": obj["name"], "arguments": args}, None


def parse_tool_calls(text: str) -> tuple[str, list[dict], list[str]]:
    """Split model output into (content, tool_calls, errors).

    Each tool call is {"name": str, "arguments": dict}; a malformed one (bad JSON, no name) is reported in
    `errors` with the reason and left out, so callers can count valid vs invalid calls honestly.
    A last `<tool_call>` left open counts when the rest of the text is one complete call (the model
    stopped right after the JSON), as vLLM's Hermes parser reads `<tool_call>(.*)` at the end; one cut
    off mid-JSON (out of tokens) is an error.
    """
    calls, errors = [], []

    def take(body: str, why: str = "") -> None:
        call, err = parse_call_json(body)
        if call is not None:
            calls.append(call)
        else:
            errors.append(why + err)

    for m in _TOOL_CALL_RE.finditer(text):
        take(m.group(1))
    content = _TOOL_CALL_RE.sub("", text)
    if TOOL_CALL_OPEN in content:
        content, _, tail = content.partition(TOOL_CALL_OPEN)
        take(tail, "unterminated tool call: ")
    return content.strip(), calls, errors


# ---------------------------------------------------------------------------------------------------------
# Tools for templates without tool support
# ---------------------------------------------------------------------------------------------------------
def _fn(tool: dict) -> dict:
    return tool["function"] if "function" in tool else tool


def _type_label(schema: dict, deep: bool = True) -> str:
    """`string`, `"a"|"b"`, `float[]`; an object parameter with properties spells its keys one level down
    (`{mode: "cool"|"dry", temp?: integer}`): a nested key is otherwise nowhere in the prompt."""
    if "enum" in schema:
        return "|".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    t = schema.get("type", "any")
    if t == "array" and isinstance(schema.get("items"), dict) and "type" in schema["items"]:
        return f"{schema['items']['type']}[]"
    props = schema.get("properties")
    if deep and t == "object" and isinstance(props, dict) and props:
        req = set(schema.get("required") or [])
        return "{" + ", ".join(f"{k}{'' if k in req else '?'}: {_type_label(v if isinstance(v, dict) else {}, False)}"
                               for k, v in props.items()) + "}"
    return t if isinstance(t, str) else "|".join(t)


def tool_signature(tool: dict) -> str:
    """`name(arg: type, opt?: type) - description` for one OpenAI tool spec (or a bare function spec), then
    `  arg: description` for each described parameter."""
    f = _fn(tool)
    params = f.get("parameters") or {}
    req = set(params.get("required") or [])
    args = ", ".join(f"{k}{'' if k in req else '?'}: {_type_label(v if isinstance(v, dict) else {})}"
                     for k, v in (params.get("properties") or {}).items())
    desc = (f.get("description") or "").strip()
    lines = [f"{f['name']}({args})" + (f" - {desc}" if desc else "")]
    for k, v in (params.get("properties") or {}).items():   # what a value looks like ("City, State (abbr)")
        d = " ".join(str(v.get("description") or "").split()) if isinstance(v, dict) else ""
        if d:
            lines.append(f"  {k}: {d}")
    return "\n".join(lines)


def tools_block(tools: list[dict]) -> str:
    lines = ["# Tools", "You may call these functions:", *(tool_signature(t) for t in tools),
             f'Call each as {TOOL_CALL_OPEN}{{"name": ..., "arguments": {{...}}}}{TOOL_CALL_CLOSE}, one line per '
             f'call; answer without a call when no function fits.']
    return "\n".join(lines)


def template_supports_tools(template: str | None) -> bool:
    """Does the chat template render a `tools` list itself (ours, Qwen2.5, Hermes...)? SmolLM2's does not."""
    return bool(template) and re.search(r"\btools\b", template) is not None


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def fold_tools(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """Messages any chat template can render: tools in the system turn, calls and results as text.

    - tools: `tools_block(tools)` appended to the first system message after a blank line, or a new system
      message when there is none (which also replaces a template's default system turn);
    - assistant `tool_calls`: one `render_tool_call` per line after the content;
    - `tool` messages: one user turn per run of consecutive results, each as
      `<tool_response>\\n...\\n</tool_response>`.
    """
    out: list[dict] = []
    if tools:
        block = tools_block(tools)
        if messages and messages[0].get("role") == "system":
            sys_text = _text(messages[0].get("content")).strip()
            out.append({"role": "system", "content": f"{sys_text}\n\n{block}" if sys_text else block})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": block})
    prev_role = None
    for m in messages:
        role = m.get("role")
        if role == "assistant" and m.get("tool_calls"):
            parts = [_text(m.get("content")).strip()] if _text(m.get("content")).strip() else []
            for tc in m["tool_calls"]:
                f = tc.get("function", tc)
                parts.append(render_tool_call(f["name"], f.get("arguments", {})))
            out.append({"role": "assistant", "content": "\n".join(parts)})
        elif role == "tool":
            resp = f"{TOOL_RESPONSE_OPEN}\n{_text(m.get('content'))}\n{TOOL_RESPONSE_CLOSE}"
            if prev_role == "tool":  # results of one reply's calls share one user turn
                out[-1]["content"] += "\n" + resp
            else:
                out.append({"role": "user", "content": resp})
        else:
            out.append({"role": role, "content": _text(m.get("content"))})
        prev_role = role
    return out


# ---------------------------------------------------------------------------------------------------------
# Prompts and answers
# ---------------------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------------------
# Prompts of the text agent styles (actors.agent.styles), shared with the fine-tuning rows that teach them
# ---------------------------------------------------------------------------------------------------------
REACT_PROMPT = """Answer the question. You can use these tools:
{tools}

Use this format:
Thought: what to do next
Action: the tool's name
Action Input: the tool's arguments as a JSON object
(several Action / Action Input pairs may follow one Thought; they run together)
Observation: the tool's result (written for you)
... (Thought / Action / Observation can repeat)
Thought: I know the answer
Final Answer: the answer"""

CODE_PROMPT = """Solve the task by writing Python. Reply with a short thought, then one block:
```python
# code
```
It runs in a Python session that keeps its variables between blocks; print() what you need to see. These tools
are Python functions there (they return text):
{tools}
When you have the answer, call final_answer(answer)."""


def python_identifier(name: str) -> str:
    return re.sub(r"\W", "_", name) if not name.isidentifier() else name


def code_tool_lines(specs: list[dict]) -> str:
    """The tools as the code agent's prompt lists them: Python-callable names with their signatures."""
    return "\n".join(f"{python_identifier(s['function']['name'])}{tool_signature(s)[len(s['function']['name']):]}"
                     for s in specs)


def react_tool_lines(specs: list[dict]) -> str:
    return "\n".join(tool_signature(s) for s in specs)


def prompt_messages(record: dict) -> list[dict]:
    """The messages a model sees before its first (tool-calling) turn."""
    msgs = record["messages"]
    for i, m in enumerate(msgs):
        if m.get("role") == "assistant":
            return [dict(x) for x in msgs[:i]]
    return [dict(x) for x in msgs]


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def last_number(text: str | None) -> str | None:
    """The last number written in `text` ('123 - 456 = -333' -> '-333', '答案是 -1,234。' -> '-1234'), or None."""
    found = _NUMBER.findall((text or "").replace(",", ""))
    return found[-1] if found else None


def same_number(a: str | None, b: str | None) -> bool:
    """Numeric equality of two number strings ('7.0' == '7'), exact on big integers (Decimal, not float)."""
    if a is None or b is None:
        return False
    try:
        return Decimal(a) == Decimal(b)
    except InvalidOperation:
        return a.strip() == b.strip()


def normalize_expression(expr: str | None) -> str:
    """An expression without whitespace ('4821 + 937' == '4821+937')."""
    return re.sub(r"\s+", "", expr or "")
